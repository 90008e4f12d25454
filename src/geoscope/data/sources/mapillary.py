"""Mapillary Graph API v4: search the images around a point, then download their thumbnails.

Mapillary images are single photos, not panoramas: for each wanted heading the nearest
image whose compass angle lies within ``tolerance_deg`` of it is taken (with no headings,
the nearest image). The token comes from ``MAPILLARY_ACCESS_TOKEN`` and is sent in the
``Authorization`` header to the API only, never to the image host.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

import numpy as np

from ...geo.sphere import EARTH_RADIUS_KM, haversine_km
from .base import Located, View
from .http import AuthError, FetchError, HttpClient, Response, check_base_url, error_detail
from .streetview import safe_name

ENV_TOKEN = "MAPILLARY_ACCESS_TOKEN"
ENV_URL = "GEOSCOPE_MAPILLARY_URL"
DEFAULT_URL = "https://graph.mapillary.com"
FIELDS = "id,thumb_1024_url,computed_geometry,captured_at,compass_angle,is_pano"
OAUTH_ERROR_CODE = 190


class Mapillary:
    """The Mapillary Graph API v4 as an image source."""

    name = "mapillary"
    terms = ("Mapillary Terms of Use (https://www.mapillary.com/terms): images are CC BY-SA 4.0, "
             "credit Mapillary and its contributors and share derived works alike")

    def __init__(self, client: HttpClient, token: str, *, base_url: str | None = None,
                 headings: Sequence[float] = (0, 90, 180), radius_m: float = 50.0,
                 limit: int = 100, tolerance_deg: float = 45.0, panoramas: bool = False) -> None:
        if radius_m <= 0 or radius_m > 5000:
            raise FetchError(f"Mapillary search radius must be within 0–5000 m (got {radius_m:g})")
        self.client = client
        self.token = token
        self.base_url = check_base_url(base_url or os.environ.get(ENV_URL) or DEFAULT_URL)
        self.headings = tuple(float(h) % 360 for h in headings)
        self.radius_m = radius_m
        self.limit = limit
        self.tolerance_deg = tolerance_deg
        self.panoramas = panoramas

    @property
    def settings(self) -> dict:
        """What shapes the dataset; a resumed fetch must use the same."""
        return {"headings": list(self.headings), "radius_m": self.radius_m, "limit": self.limit,
                "tolerance_deg": self.tolerance_deg, "panoramas": self.panoramas}

    def locate(self, lat: float, lon: float, point_id: int) -> Located:
        dlat = np.degrees(self.radius_m / 1000 / EARTH_RADIUS_KM)
        dlon = dlat / max(np.cos(np.radians(lat)), 0.01)
        bbox = f"{lon - dlon:.6f},{lat - dlat:.6f},{lon + dlon:.6f},{lat + dlat:.6f}"
        params = {"fields": FIELDS, "bbox": bbox, "limit": str(self.limit)}
        answer = self.client.get(f"{self.base_url}/images", params,
                                 headers={"Authorization": f"OAuth {self.token}"})
        self._check(answer)
        doc = answer.json()
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise FetchError(f"{answer.url}: answer has no 'data' list")
        images = [im for im in (_image(d) for d in data) if im is not None]
        if not self.panoramas:
            images = [im for im in images if not im["is_pano"]]
        if not images:
            return Located(None)
        dist = haversine_km(lat, lon, [im["lat"] for im in images], [im["lon"] for im in images]) * 1000
        chosen = self._choose(images, dist)
        if not chosen:
            return Located(None)
        views = tuple(
            View(
                image=f"mly_{safe_name(im['id'])}.jpg",
                url=im["url"],
                lat=im["lat"], lon=im["lon"], heading=im["heading"], capture_date=im["date"],
                source_id=im["id"], claim=f"mly:{im['id']}",
            )
            for im in chosen
        )
        return Located(f"mly-{chosen[0]['id']}", views)

    def _choose(self, images: list[dict], dist: np.ndarray) -> list[dict]:
        inside = dist <= self.radius_m * 1.5
        if not self.headings:
            order = [i for i in np.argsort(dist) if inside[i]]
            return [images[order[0]]] if order else []
        chosen: list[dict] = []
        for heading in self.headings:
            best = None
            for i in np.argsort(dist):
                angle = images[i]["heading"]
                if not inside[i] or angle is None or images[i] in chosen:
                    continue
                if abs((angle - heading + 180) % 360 - 180) <= self.tolerance_deg:
                    best = images[i]
                    break
            if best is not None:
                chosen.append(best)
        return chosen

    def download(self, view: View) -> bytes | None:
        answer = self.client.get(view.url)
        if answer.status in (404, 410):
            return None
        if answer.status != 200:
            raise FetchError(f"{answer.url}: image download failed with HTTP {answer.status} "
                             "(thumbnail links expire; a rerun asks for fresh ones)")
        if not answer.headers.get("content-type", "image/").startswith("image/"):
            raise FetchError(f"{answer.url}: answer is not an image ({answer.headers.get('content-type')})")
        return answer.body

    def _check(self, answer: Response) -> None:
        if answer.status == 200:
            return
        code = None
        try:
            doc = answer.json()
            if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
                code = doc["error"].get("code")
        except FetchError:
            pass
        detail = error_detail(answer, [self.token])
        if answer.status in (401, 403) or code == OAUTH_ERROR_CODE:
            raise AuthError(f"Mapillary refused the token (HTTP {answer.status}{detail}); check {ENV_TOKEN}")
        raise FetchError(f"{answer.url}: image search failed with HTTP {answer.status}{detail}")


def _image(d: object) -> dict | None:
    """One search result as a flat dict, or ``None`` when it lacks what a view needs."""
    if not isinstance(d, dict):
        return None
    try:
        lon, lat = (float(v) for v in d["computed_geometry"]["coordinates"][:2])
        url = str(d["thumb_1024_url"])
        ident = str(d["id"])
    except (KeyError, TypeError, ValueError):
        return None
    angle = d.get("compass_angle")
    heading = float(angle) % 360 if isinstance(angle, int | float) else None
    date = None
    if isinstance(d.get("captured_at"), int | float):
        date = dt.datetime.fromtimestamp(d["captured_at"] / 1000, tz=dt.UTC).date().isoformat()
    return {"id": ident, "url": url, "lat": lat, "lon": lon, "heading": heading, "date": date,
            "is_pano": bool(d.get("is_pano"))}
