"""Where images come from: each remote source finds the imagery near a point and downloads it.

A source answers two questions: :meth:`Source.locate` (what imagery is near this point:
a place id and its views) and :meth:`Source.download` (the bytes of one view). The fetch
loop in :mod:`geoscope.data.fetch` does the rest: resume, dedupe, budget, manifest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .http import FetchError, HttpClient


@dataclass(frozen=True)
class View:
    """One image to fetch: its file name, where to get it, and the manifest fields it yields.

    ``url`` may carry a key: it is only ever shown through the client's scrubber.
    ``claim`` is what two points must not both fetch (a panorama id, an image id).
    """

    image: str
    url: str = field(repr=False)
    lat: float
    lon: float
    heading: float | None
    capture_date: str | None
    source_id: str
    claim: str


@dataclass(frozen=True)
class Located:
    """The imagery found near a point; ``location_id`` is ``None`` when there is none."""

    location_id: str | None
    views: tuple[View, ...] = ()


class Source(Protocol):
    """A remote image source; one instance serves every worker thread."""

    name: str
    terms: str
    """The provider's terms of use in one sentence, recorded in the dataset card."""

    @property
    def settings(self) -> dict:
        """The options that shape the dataset (headings, radius, image size, …)."""
        ...

    def locate(self, lat: float, lon: float, point_id: int) -> Located:
        """The imagery near a point (raises ``FetchError`` subclasses on failure)."""
        ...

    def download(self, view: View) -> bytes | None:
        """The encoded image of one view, or ``None`` when the service has none for it."""
        ...


SOURCES = ("streetview", "mapillary")


def make_source(name: str, client: HttpClient, *, headings: Sequence[float],
                base_url: str | None = None, radius_m: float = 50.0, **options) -> Source:
    """The named source (``streetview`` or ``mapillary``), its key or token read from the environment.

    Registers the secret with ``client`` so that it is scrubbed from every message.
    """
    if name == "streetview":
        from .streetview import ENV_KEY, StreetView

        key = _secret(ENV_KEY, "a Google Maps API key with the Street View Static API enabled")
        client.secrets = (*client.secrets, key)
        return StreetView(client, key, base_url=base_url, headings=headings, radius_m=radius_m, **options)
    if name == "mapillary":
        from .mapillary import ENV_TOKEN, Mapillary

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
