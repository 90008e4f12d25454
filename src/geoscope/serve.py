"""A small HTTP service around a model: ``POST /predict`` with image bytes, a web page at ``/``.

Standard library only (``http.server``); the model is loaded once and shared by the
request threads. Meant for a trusted network or behind a reverse proxy.
"""

from __future__ import annotations

import json
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from .predict import GeoModel

MAX_UPLOAD_BYTES = 20 * 1024 * 1024

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geoscope</title>
<style>
body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
table{border-collapse:collapse;margin-top:1rem}td,th{padding:.3rem .7rem;border-bottom:1px solid #ddd;text-align:left}
img{max-width:100%;max-height:260px;margin-top:1rem;border-radius:4px}
</style></head><body>
<h1>geoscope</h1>
<p>Choose a street-level photo; the model <b>__MODEL__</b> guesses where it was taken.</p>
<input type="file" id="file" accept="image/*">
<div id="preview"></div><div id="out"></div>
<script>
const out = document.getElementById('out');
document.getElementById('file').addEventListener('change', async (ev) => {
  const file = ev.target.files[0]; if (!file) return;
  document.getElementById('preview').innerHTML = '<img src="' + URL.createObjectURL(file) + '">';
  out.textContent = 'Thinking…';
  const reply = await fetch('predict?top_k=5', {method: 'POST', body: file});
  const data = await reply.json();
  if (!reply.ok) { out.textContent = data.error; return; }
  let rows = data.guesses.map((g, i) => '<tr><td>' + (i + 1) + '</td><td>' + g.label.replace(/</g, '&lt;') +
    '</td><td>' + g.lat.toFixed(4) + ', ' + g.lon.toFixed(4) + '</td><td>' + (100 * g.probability).toFixed(1) +
    '%</td><td><a href="https://www.openstreetmap.org/?mlat=' + g.lat + '&mlon=' + g.lon +
    '#map=10/' + g.lat + '/' + g.lon + '">map</a></td></tr>').join('');
  out.innerHTML = '<table><tr><th>#</th><th>place</th><th>lat, lon</th><th>probability</th><th></th></tr>' +
    rows + '</table>';
});
</script></body></html>
"""


def make_handler(model: GeoModel) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to one loaded model."""
    lock = threading.Lock()
    page = PAGE.replace("__MODEL__", str(model.config.get("name", "model"))).encode()

    class Handler(BaseHTTPRequestHandler):
        server_version = "geoscope"

        def do_GET(self) -> None:
            path = urlparse(self.path).path
            if path in ("/", "/index.html"):
                self._send(HTTPStatus.OK, page, "text/html; charset=utf-8")
            elif path == "/health":
                self._json(HTTPStatus.OK, {"status": "ok", "model": model.config.get("name"),
                                           "labels": len(model.labels)})
            else:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {path}"})

        def do_POST(self) -> None:
            url = urlparse(self.path)
            if url.path != "/predict":
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no such path {url.path}"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length <= 0:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "send the image bytes as the request body"})
                return
            if length > MAX_UPLOAD_BYTES:
                self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                           {"error": f"image over {MAX_UPLOAD_BYTES // 2**20} MiB"})
                return
            body = self.rfile.read(length)
            try:
                top_k = int(parse_qs(url.query).get("top_k", ["5"])[0])
            except ValueError:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "top_k must be an integer"})
                return
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "upload"
                path.write_bytes(body)
                with lock:
                    prediction = model.predict([path], top_k=top_k)[0]
            if prediction.error:
                message = prediction.error.replace(str(path), "upload")
                self._json(HTTPStatus.UNPROCESSABLE_ENTITY, {"error": message})
                return
            self._json(HTTPStatus.OK, {"guesses": [g.to_dict() for g in prediction.guesses]})

        def _json(self, status: HTTPStatus, obj: dict) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


def make_server(model: GeoModel, host: str = "127.0.0.1", port: int = 8000) -> ThreadingHTTPServer:
    """An HTTP server answering predictions from ``model`` (port 0 picks a free one)."""
    return ThreadingHTTPServer((host, port), make_handler(model))
