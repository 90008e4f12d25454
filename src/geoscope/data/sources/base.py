"""What every source speaks: the views to fetch near a point, and the protocol a source implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
