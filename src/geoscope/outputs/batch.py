"""Predicting many images: find them under folders, answer them in chunks, as plain records.

A *unit* is what one record answers: one image, or with ``views`` one place seen from
several images. Folders are searched recursively in name order (hidden files and folders
are passed over); files found there without an image suffix are skipped and counted, while
a file named on the command line is always tried. A manifest (``.csv``, ``.parquet``) named
alone gives one unit per row (with ``views``, one per run of rows sharing ``location_id``),
read a chunk at a time, so a manifest of millions of rows never sits in memory.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..features.cache import FeatureSet
    from ..predict import GeoModel

CHUNK_SIZE = 256
"""Images answered (and written) together: big enough that decoding overlaps encoding for most of a
chunk (within a chunk of one 64-image batch it cannot), small enough that a kill loses seconds."""


@dataclass(frozen=True)
class Unit:
    """One answer to give: ``key`` is the record's ``image`` (the first view for a place)."""

    key: str
    paths: tuple[str, ...]
    headings: tuple[float, ...] | None = None
    """Each view's compass heading in degrees (NaN where unknown), when a manifest says them."""


@dataclass(frozen=True)
class Inputs:
    """The units found, and how many files under the folders were not images."""

    units: Sequence[Unit] | ManifestUnits
    skipped: int
    unreadable: tuple[str, ...] = ()
    """One line for each folder that could not be searched (its images are not among the units)."""


MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


class ManifestUnits:
    """The rows of a manifest as units (absolute image paths), read a chunk at a time on every pass."""

    def __init__(self, path: str | os.PathLike[str], *, views: bool = False, chunk_rows: int | None = None) -> None:
        from ..data.manifest import CHUNK_ROWS

        self.path, self.views, self.chunk_rows = Path(path), views, chunk_rows or CHUNK_ROWS

    def __iter__(self) -> Iterator[Unit]:
        import pandas as pd

        from ..data.manifest import iter_manifest, place_ids
        from ..errors import ManifestError, quote_name

        place: list[str] = []
        angles: list[float] = []
        last = None
        done: set[str] = set()  # places already answered: their views must not come back further down
        row = 1
        for chunk in iter_manifest(self.path, chunk_rows=self.chunk_rows):
            ids = place_ids(chunk.frame) if self.views else None  # a row without location_id is its own place
            headings = pd.to_numeric(chunk.frame["heading"], errors="coerce").to_numpy(dtype=float).tolist() \
                if self.views and "heading" in chunk.frame else None
            for i, path in enumerate(map(str, chunk.image_paths)):
                row += 1
                if ids is None:
                    yield Unit(path, (path,))
                    continue
                if place and ids.iloc[i] != last:
                    yield Unit(place[0], tuple(place), tuple(angles) if headings is not None else None)
                    done.add(last)
                    place, angles = [], []
                if ids.iloc[i] in done:
                    raise ManifestError(f"{quote_name(self.path)}: row {row} is a view of place {ids.iloc[i]!r}, whose "
                                        "other views came on earlier rows: keep the views of a place on adjacent "
                                        "rows (sort the manifest by location_id)")
                place.append(path)
                angles.append(headings[i] if headings is not None else math.nan)
                last = ids.iloc[i]
        if place:
            yield Unit(place[0], tuple(place), tuple(angles) if headings is not None else None)


@dataclass
class Pending:
    """The units still to answer (a stream for a manifest), counted in one pass over the inputs."""

    units: Iterable[Unit]
    count: int
    """Units to answer now (at most the limit)."""
    to_go: int
    """Units not in the output yet (before the limit)."""
    held: int
    """Units the output already holds (passed over)."""
    images: int
    """Images among the units to answer now."""

    @property
    def complete(self) -> bool:
        """Whether this run answers everything that is left (no limit cuts it short)."""
        return self.count == self.to_go


def pending_units(units: Sequence[Unit] | ManifestUnits, holds: Callable[[str], bool] | None = None,
                  limit: int | None = None) -> Pending:
    """The units ``holds`` does not hold, at most ``limit`` of them; a manifest is counted in one streamed pass
    and read again, lazily, as the units are answered."""
    held = to_go = images = 0
    for unit in units:
        if holds is not None and holds(unit.key):
            held += 1
            continue
        to_go += 1
        if limit is None or to_go <= limit:
            images += len(unit.paths)
    count = to_go if limit is None else min(limit, to_go)
    todo = (u for u in units if holds is None or not holds(u.key))
    return Pending(itertools.islice(todo, count), count, to_go, held, images)


def find_inputs(arguments: Sequence[str], *, views: bool = False) -> Inputs:
    """Units for the files and folders given.

    Without ``views`` every image is a unit (an image named twice is answered once). With
    ``views`` the files named directly are the views of one place, and each folder that
    holds images is one place whose images are its views.
    """
    manifests = [a for a in arguments if a.lower().endswith(MANIFEST_SUFFIXES) and os.path.isfile(a)]
    if manifests:
        if len(arguments) > 1:
            from ..errors import GeoscopeError, quote_name

            raise GeoscopeError(f"{quote_name(manifests[0])}: a manifest is read alone, not with other images "
                                "or folders")
        return Inputs(ManifestUnits(manifests[0], views=views), 0)
    groups: list[list[str]] = []  # in the order given: a folder's images, or files named directly
    loose: list[str] | None = None
    skipped = 0
    unreadable: list[str] = []
    for argument in arguments:
        if os.path.isdir(argument):
            found, not_images = _walk(argument, unreadable)
            groups += found
            skipped += not_images
        elif not views:
            groups.append([argument])
        else:  # with views, the files named directly are one place, where the first of them stands
            if loose is None:
                loose = []
                groups.append(loose)
            loose.append(argument)
    units = [Unit(g[0], tuple(g)) for g in groups] if views else [Unit(p, (p,)) for g in groups for p in g]
    seen: set[str] = set()
    unique = []
    for unit in units:  # one file is one answer, however it is spelled (the first spelling is kept)
        identity = os.path.realpath(unit.key)
        if identity not in seen:
            seen.add(identity)
            unique.append(unit)
    return Inputs(unique, skipped, tuple(unreadable))


def _walk(top: str, unreadable: list[str]) -> tuple[list[list[str]], int]:
    """Images under ``top`` grouped by the folder holding them, in name order, and the count of other files;
    a folder that cannot be listed adds a line to ``unreadable``."""
    from ..errors import quote_name
    from ..images import is_image_path  # here: the CLI imports this module at start-up, PIL is not needed then

    def refused(exc: OSError) -> None:
        unreadable.append(f"{quote_name(exc.filename or top)}: cannot list folder ({exc.strerror or exc})")

    groups, skipped = [], 0
    for folder, subfolders, files in os.walk(top, onerror=refused):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        images = []
        for name in sorted(files):
            if name.startswith("."):
                continue
            if is_image_path(name):
                images.append(os.path.join(folder, name))
            else:
                skipped += 1
        if images:
            groups.append(images)
    return groups, skipped


def predict_chunks(
    model: GeoModel, units: Iterable[Unit], *, top_k: int = 5, views: bool = False, chunk_size: int = CHUNK_SIZE,
    features: Callable[[list[Unit]], FeatureSet] | None = None, **options: object,
) -> Iterator[tuple[list[Unit], list[dict]]]:
    """Records (``Prediction.to_dict()``) for ``units``, yielded a chunk of about ``chunk_size`` images at a time.

    ``options`` (``level``, ``allow_missing_views``, …) are passed on when set (not ``None``) and
    the model's ``predict`` (with ``views``: ``predict_places``, every place of a chunk at once) takes them.
    ``features`` gives a chunk's image features (every path of its units, in order) when they come from
    elsewhere (:mod:`geoscope.outputs.ray_jobs`); by default the model extracts them.
    """
    accepted = inspect.signature(model.predict_places if views else model.predict).parameters
    extra = {k: v for k, v in options.items() if v is not None and k in accepted}
    for chunk in unit_runs(units, chunk_size):
        yield chunk, _predict(model, chunk, top_k=top_k, views=views, extra=extra, features=features)


def unit_runs(units: Iterable[Unit], images: int) -> Iterator[list[Unit]]:
    """``units`` in runs of about ``images`` images (a run ends with the unit that reaches the count)."""
    run: list[Unit] = []
    size = 0
    for unit in units:
        run.append(unit)
        size += len(unit.paths)
        if size >= images:
            yield run
            run, size = [], 0
    if run:
        yield run


def _predict(model: GeoModel, chunk: list[Unit], *, top_k: int, views: bool, extra: dict,
             features: Callable[[list[Unit]], FeatureSet] | None) -> list[dict]:
    if features is not None:
        extra = {**extra, "features": features(chunk)}
    if views:  # every place of the chunk answered together
        headings = [u.headings for u in chunk] if any(u.headings is not None for u in chunk) else None
        predictions = model.predict_places([list(u.paths) for u in chunk], top_k=top_k, headings=headings, **extra)
    else:
        predictions = model.predict([u.key for u in chunk], top_k=top_k, **extra)
    records = []
    for unit, prediction in zip(chunk, predictions, strict=True):
        record = prediction.to_dict()
        record["image"] = unit.key  # what a rerun looks for
        records.append(record)
    return records
