"""Where images come from: each remote source finds the imagery near a point and downloads it.

A source answers two questions: :meth:`Source.locate` (what imagery is near this point:
a place id and its views) and :meth:`Source.download` (the bytes of one view). The fetch
loop in :mod:`geoscope.data.fetch` does the rest: resume, dedupe, budget, manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .base import Located, Source, View
from .http import FetchError, HttpClient
from .mapillary import ENV_TOKEN, Mapillary
from .streetview import ENV_KEY, StreetView

SOURCES = ("streetview", "mapillary")


def make_source(name: str, client: HttpClient, *, headings: Sequence[float],
                base_url: str | None = None, radius_m: float = 50.0, **options) -> Source:
    """The named source (``streetview`` or ``mapillary``), its key or token read from the environment.

    Registers the secret with ``client`` so that it is scrubbed from every message.
    """
    if name == "streetview":
        key = _secret(ENV_KEY, "a Google Maps API key with the Street View Static API enabled")
        client.secrets = (*client.secrets, key)
        return StreetView(client, key, base_url=base_url, headings=headings, radius_m=radius_m, **options)
    if name == "mapillary":
        token = _secret(ENV_TOKEN, "a Mapillary client access token (MLY|…)")
        client.secrets = (*client.secrets, token)
        return Mapillary(client, token, base_url=base_url, headings=headings, radius_m=radius_m, **options)
    raise FetchError(f"unknown source {name!r}: choose one of {', '.join(SOURCES)}")


def _secret(variable: str, what: str) -> str:
    value = os.environ.get(variable, "").strip()
    if not value:
        raise FetchError(f"set {variable} to {what}")
    return value


__all__ = ["SOURCES", "Located", "Source", "View", "make_source"]
