"""A local stand-in for the Street View Static API and the Mapillary Graph API v4 (test code).

Serves, on 127.0.0.1 only, the parts geoscope uses: Street View metadata (``OK`` /
``ZERO_RESULTS`` / ``REQUEST_DENIED``) and images (``return_error_code``: 404 without a
panorama, 403 for a bad key), Mapillary image search by ``bbox`` with JSON errors and
thumbnail downloads. The world is made up: coordinates snap to a grid of ``snap_deg``;
some grid cells have no imagery. Every request is logged so tests can count them; 429
and 5xx bursts and slow images can be switched on.
"""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

SV_KEY = "sv-test-KEY/with+odd=chars"
MLY_TOKEN = "MLY|4242|test-token-secret"


class FakeProviders:
    """Start with :meth:`start` (or ``with``); ``sv_url`` and ``mly_url`` are the base URLs."""

    def __init__(self, *, snap_deg: float = 0.002, image_delay_s: float = 0.0) -> None:
        self.snap_deg = snap_deg
        self.image_delay_s = image_delay_s
        self.log: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.downloads: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._faults: list[tuple[int, str]] = []
        self._active = 0
        self._images: dict[str, bytes] = {}
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> FakeProviders:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def sv_url(self) -> str:
        return f"{self.base_url}/maps/api/streetview"

    @property
    def mly_url(self) -> str:
        return f"{self.base_url}/graph"

    # -- faults and counts -----------------------------------------------------------------
    def fail_next(self, n: int, status: int = 429, retry_after: str | None = "0") -> None:
        """Answer the next ``n`` requests with ``status`` (and a ``Retry-After`` header)."""
        with self._lock:
            self._faults.extend([(status, retry_after or "")] * n)

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k, _, _ in self.log if k == kind)

    def wait_idle(self, timeout_s: float = 10.0, quiet_s: float = 0.3) -> None:
        """Wait until no request has been answered or arrived for ``quiet_s`` (e.g. those of a client just
        killed: a request it sent before dying can still sit in its socket, read a moment later)."""
        deadline = time.monotonic() + timeout_s
        last, since = None, time.monotonic()
        while time.monotonic() < deadline:
            with self._lock:
                state = (self._active, len(self.log))
            now = time.monotonic()
            if state != last or state[0]:
                last, since = state, now
            elif now - since >= quiet_s:
                return
            time.sleep(0.01)
        raise TimeoutError("fake server still busy")

    def reset_counts(self) -> None:
        with self._lock:
            self.log.clear()
            self.downloads.clear()

    # -- the made-up world -----------------------------------------------------------------
    def cell(self, lat: float, lon: float) -> tuple[int, int]:
        return round(lat / self.snap_deg), round(lon / self.snap_deg)

    def has_imagery(self, i: int, j: int) -> bool:
        return (i * 7 + j * 13) % 5 != 0

    def centre(self, i: int, j: int) -> tuple[float, float]:
        return i * self.snap_deg, j * self.snap_deg

    def pano_id(self, i: int, j: int) -> str:
        return f"pano{i}_{j}-x"

    def image_bytes(self, key: str) -> bytes:
        with self._lock:
            if key not in self._images:
                h = zlib.crc32(key.encode())
                colour = (h % 256, (h // 256) % 256, (h // 65536) % 256)
                buffer = io.BytesIO()
                Image.new("RGB", (64, 48), colour).save(buffer, format="JPEG", quality=80)
                self._images[key] = buffer.getvalue()
            return self._images[key]

    def _take_fault(self) -> tuple[int, str] | None:
        with self._lock:
            return self._faults.pop(0) if self._faults else None

    def _record(self, kind: str, params: dict[str, str], headers: dict[str, str]) -> None:
        with self._lock:
            self.log.append((kind, params, headers))


class _Handler(BaseHTTPRequestHandler):
    fake: FakeProviders
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        params = dict(urllib.parse.parse_qsl(url.query))
        headers = {k.lower(): v for k, v in self.headers.items()}
        routes = {
            "/maps/api/streetview/metadata": ("sv_meta", self._sv_metadata),
            "/maps/api/streetview": ("sv_image", self._sv_image),
            "/graph/images": ("mly_search", self._mly_search),
        }
        if url.path.startswith("/thumbs/"):
            kind, route = "mly_thumb", self._mly_thumb
        else:
            kind, route = routes.get(url.path, ("unknown", self._not_found))
        self.fake._record(kind, params, headers)
        with self.fake._lock:
            self.fake._active += 1
        try:
            fault = self.fake._take_fault()
            if fault is not None:
                status, retry_after = fault
                extra = {"Retry-After": retry_after} if retry_after else {}
                self._send(status, b'{"error": "slow down"}', "application/json", extra)
                return
            route(url.path, params, headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a test killed it)
        finally:
            with self.fake._lock:
                self.fake._active -= 1

    def _send(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, doc: object) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json; charset=UTF-8")

    def _not_found(self, *_: object) -> None:
        self._send(404, b"not found", "text/plain")

    # Street View --------------------------------------------------------------------------
    def _sv_metadata(self, path: str, params: dict, headers: dict) -> None:
        if params.get("key") != SV_KEY:
            self._json(200, {"status": "REQUEST_DENIED",
                             "error_message": "The provided API key is invalid."})
            return
        try:
            lat, lon = (float(v) for v in params["location"].split(","))
        except (KeyError, ValueError):
            self._json(200, {"status": "INVALID_REQUEST"})
            return
        i, j = self.fake.cell(lat, lon)
        if not self.fake.has_imagery(i, j):
            self._json(200, {"status": "ZERO_RESULTS"})
            return
        plat, plon = self.fake.centre(i, j)
        self._json(200, {"copyright": "© Test", "date": f"20{10 + abs(i) % 14:02d}-0{1 + abs(j) % 9}",
                         "location": {"lat": plat, "lng": plon}, "pano_id": self.fake.pano_id(i, j),
                         "status": "OK"})

    def _sv_image(self, path: str, params: dict, headers: dict) -> None:
        if params.get("key") != SV_KEY:
            self._send(403, b"The Google Maps Platform server rejected your request. "
                            b"The provided API key is invalid.", "text/plain")
            return
        pano, heading = params.get("pano", ""), params.get("heading", "0")
        i, j = self._cell_of(pano)
        if not pano or self.fake.pano_id(i, j) != pano or not self.fake.has_imagery(i, j):
            self._send(404, b"", "text/plain")
            return
        time.sleep(self.fake.image_delay_s)
        key = f"{pano}@{heading}"
        with self.fake._lock:
            self.fake.downloads[key] += 1
        self._send(200, self.fake.image_bytes(key), "image/jpeg")

    @staticmethod
    def _cell_of(pano: str) -> tuple[int, int]:
        try:
            i, j = pano.removeprefix("pano").removesuffix("-x").split("_")
            return int(i), int(j)
        except ValueError:
            return (0, 0)

    # Mapillary ----------------------------------------------------------------------------
    def _mly_error(self, status: int, message: str, code: int) -> None:
        self._json(status, {"error": {"message": message, "type": "OAuthException",
                                      "code": code, "fbtrace_id": "TEST"}})

    def _mly_search(self, path: str, params: dict, headers: dict) -> None:
        auth = headers.get("authorization", "")
        token = auth.removeprefix("OAuth ").strip() if auth else params.get("access_token", "")
        if token != MLY_TOKEN:
            self._mly_error(401, "Invalid OAuth access token - Cannot parse access token", 190)
            return
        try:
            west, south, east, north = (float(v) for v in params["bbox"].split(","))
        except (KeyError, ValueError):
            self._mly_error(400, "Invalid parameter bbox", 100)
            return
        fields = params.get("fields", "id").split(",")
        limit = int(params.get("limit", "2000"))
        data = []
        i0, j0 = self.fake.cell(south, west)
        i1, j1 = self.fake.cell(north, east)
        for i in range(i0, i1 + 1):
            for j in range(j0, j1 + 1):
                if not self.fake.has_imagery(i, j):
                    continue
                clat, clon = self.fake.centre(i, j)
                for k, angle in enumerate((10.0, 100.0, 190.0, 300.0)):
                    lat, lon = clat + 0.00001 * k, clon
                    if not (south <= lat <= north and west <= lon <= east):
                        continue
                    ident = f"{abs(i)}{abs(j)}{k}{'1' if i < 0 else '0'}{'1' if j < 0 else '0'}"
                    record = {"id": ident, "thumb_1024_url": f"{self.fake.base_url}/thumbs/{ident}.jpg?sig=abc",
                              "computed_geometry": {"type": "Point", "coordinates": [lon, lat]},
                              "captured_at": 1_600_000_000_000 + k * 86_400_000,
                              "compass_angle": angle, "is_pano": k == 3}
                    data.append({f: record[f] for f in fields if f in record})
        self._json(200, {"data": data[:limit]})

    def _mly_thumb(self, path: str, params: dict, headers: dict) -> None:
        time.sleep(self.fake.image_delay_s)
        key = path.removeprefix("/thumbs/")
        with self.fake._lock:
            self.fake.downloads[key] += 1
        self._send(200, self.fake.image_bytes(key), "image/jpeg")
