"""Google Street View Static API: free metadata lookup first, then one image per heading.

The metadata answer tells whether a panorama lies within ``radius`` metres of the point,
its id, position and capture month; images are then requested for that exact panorama, so
points that snap to the same panorama are fetched once. The key comes from
``GOOGLE_MAPS_API_KEY``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from .base import Located, View
from .http import AuthError, FetchError, HttpClient, Response, check_base_url, error_detail

ENV_KEY = "GOOGLE_MAPS_API_KEY"
ENV_URL = "GEOSCOPE_STREETVIEW_URL"
DEFAULT_URL = "https://maps.googleapis.com/maps/api/streetview"
NO_IMAGERY = frozenset({"ZERO_RESULTS", "NOT_FOUND"})
RETRY_STATUSES = frozenset({"OVER_QUERY_LIMIT", "UNKNOWN_ERROR"})
_SIZE_RE = re.compile(r"^\d{2,4}x\d{2,4}$")


def safe_name(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)[:120] or "_"


class StreetView:
    """The Street View Static API as an image source."""

    name = "streetview"
    terms = ("Google Maps Platform Terms of Service (https://cloud.google.com/maps-platform/terms): "
             "Street View images are Google's, licensed for display, not for redistribution")

    def __init__(self, client: HttpClient, key: str, *, base_url: str | None = None,
                 headings: Sequence[float] = (0, 90, 180), radius_m: float = 50.0,
                 size: str = "640x640", fov: float = 90.0, pitch: float = 0.0,
                 outdoor: bool = True) -> None:
        if not _SIZE_RE.match(size):
            raise FetchError(f"bad image size {size!r}: use WIDTHxHEIGHT, e.g. 640x640")
        if not 10 <= fov <= 120:
            raise FetchError(f"field of view must be within 10–120° (got {fov:g})")
        if not headings:
            raise FetchError("Street View needs at least one heading")
        self.client = client
        self.key = key
        self.base_url = check_base_url(base_url or os.environ.get(ENV_URL) or DEFAULT_URL)
        self.headings = tuple(float(h) % 360 for h in headings)
        self.radius_m = radius_m
        self.size, self.fov, self.pitch = size, fov, pitch
        self.outdoor = outdoor

    @property
    def settings(self) -> dict:
        """What shapes the dataset; a resumed fetch must use the same."""
        return {"headings": list(self.headings), "radius_m": self.radius_m, "size": self.size,
                "fov": self.fov, "pitch": self.pitch, "outdoor": self.outdoor}

    def locate(self, lat: float, lon: float, point_id: int) -> Located:
        params = {"location": f"{lat:.6f},{lon:.6f}", "radius": f"{self.radius_m:g}", "key": self.key}
        if self.outdoor:
            params["source"] = "outdoor"
        answer = self.client.get(f"{self.base_url}/metadata", params, retry_when=_metadata_retry)
        self._check_http(answer, "metadata")
        doc = answer.json()
        status = doc.get("status") if isinstance(doc, dict) else None
        if status in NO_IMAGERY:
            return Located(None)
        if status == "REQUEST_DENIED":
            raise AuthError(f"Street View refused the key (REQUEST_DENIED{error_detail(answer, [self.key])}); "
                            f"check {ENV_KEY} and that the Street View Static API is enabled")
        if status != "OK":
            raise FetchError(f"{answer.url}: unexpected metadata status {status!r}"
                             f"{error_detail(answer, [self.key])}")
        pano = str(doc.get("pano_id") or "")
        where = doc.get("location") or {}
        try:
            plat, plon = float(where["lat"]), float(where["lng"])
        except (KeyError, TypeError, ValueError):
            raise FetchError(f"{answer.url}: metadata without a location") from None
        if not pano:
            raise FetchError(f"{answer.url}: metadata without a pano_id")
        date = doc.get("date") or None
        views = tuple(
            View(
                image=f"sv_{safe_name(pano)}_{heading:g}.jpg",
                url=self._image_url(pano, heading),
                lat=plat, lon=plon, heading=heading, capture_date=date,
                source_id=pano, claim=pano,
            )
            for heading in self.headings
        )
        return Located(pano, views)

    def _image_url(self, pano: str, heading: float) -> str:
        from urllib.parse import urlencode

        params = {"size": self.size, "pano": pano, "heading": f"{heading:g}", "fov": f"{self.fov:g}",
                  "pitch": f"{self.pitch:g}", "return_error_code": "true", "key": self.key}
        return f"{self.base_url}?{urlencode(params)}"

    def download(self, view: View) -> bytes | None:
        answer = self.client.get(view.url)
        if answer.status == 404:
            return None
        self._check_http(answer, "image")
        if not answer.headers.get("content-type", "image/").startswith("image/"):
            raise FetchError(f"{answer.url}: answer is not an image "
                             f"({answer.headers.get('content-type')})")
        return answer.body

    def _check_http(self, answer: Response, what: str) -> None:
        if answer.status in (401, 403):
            raise AuthError(f"Street View refused the key (HTTP {answer.status}"
                            f"{error_detail(answer, [self.key])}); check {ENV_KEY}")
        if answer.status != 200:
            raise FetchError(f"{answer.url}: {what} request failed with HTTP {answer.status}"
                             f"{error_detail(answer, [self.key])}")


def _metadata_retry(answer: Response) -> str | None:
    if answer.status != 200:
        return None
    try:
        status = answer.json().get("status")  # type: ignore[union-attr]
    except (FetchError, AttributeError):
        return None
    return f"metadata status {status}" if status in RETRY_STATUSES else None
