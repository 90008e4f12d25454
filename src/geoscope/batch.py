"""Predicting many images: find them under folders, answer them in chunks, as plain records.

A *unit* is what one record answers: one image, or with ``views`` one place seen from
several images. Folders are searched recursively in name order (hidden files and folders
are passed over); files found there without an image suffix are skipped and counted, while
a file named on the command line is always tried.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .predict import GeoModel

CHUNK_SIZE = 256
"""Images answered (and written) together: big enough that decoding overlaps encoding for most of a
chunk (within a chunk of one 64-image batch it cannot), small enough that a kill loses seconds."""


@dataclass(frozen=True)
class Unit:
    """One answer to give: ``key`` is the record's ``image`` (the first view for a place)."""

    key: str
    paths: tuple[str, ...]


@dataclass(frozen=True)
class Inputs:
    """The units found, and how many files under the folders were not images."""

    units: list[Unit]
    skipped: int

    @property
    def image_count(self) -> int:
        return sum(len(u.paths) for u in self.units)


def find_inputs(arguments: Sequence[str], *, views: bool = False) -> Inputs:
    """Units for the files and folders given.

    Without ``views`` every image is a unit (an image named twice is answered once). With
    ``views`` the files named directly are the views of one place, and each folder that
    holds images is one place whose images are its views.
    """
    loose: list[str] = []
    folders: list[list[str]] = []
    skipped = 0
    for argument in arguments:
        if os.path.isdir(argument):
            found, not_images = _walk(argument)
            folders += found
            skipped += not_images
        else:
            loose.append(argument)
    if views:
        groups = ([loose] if loose else []) + folders
        units = [Unit(group[0], tuple(group)) for group in groups]
    else:
        units = [Unit(p, (p,)) for p in [*loose, *(p for group in folders for p in group)]]
    unique = {u.key: u for u in reversed(units)}  # the first of each key wins
    return Inputs([unique[k] for k in dict.fromkeys(u.key for u in units)], skipped)


def _walk(top: str) -> tuple[list[list[str]], int]:
    """Images under ``top`` grouped by the folder holding them, in name order, and the count of other files."""
    from .images import is_image_path  # here: the CLI imports this module at start-up, PIL is not needed then

    groups, skipped = [], 0
    for folder, subfolders, files in os.walk(top):
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
    model: GeoModel, units: Sequence[Unit], *, top_k: int = 5, views: bool = False, chunk_size: int = CHUNK_SIZE,
    **options: object,
) -> Iterator[tuple[list[Unit], list[dict]]]:
    """Records (``Prediction.to_dict()``) for ``units``, yielded a chunk of about ``chunk_size`` images at a time.

    ``options`` (``level``, ``allow_missing_views``, …) are passed on when set (not ``None``) and
    the model's ``predict`` takes them.
    """
    accepted = inspect.signature(model.predict).parameters
    extra = {k: v for k, v in options.items() if v is not None and k in accepted}
    chunk: list[Unit] = []
    size = 0
    for unit in units:
        chunk.append(unit)
        size += len(unit.paths)
        if size >= chunk_size:
            yield chunk, _predict(model, chunk, top_k=top_k, views=views, extra=extra)
            chunk, size = [], 0
    if chunk:
        yield chunk, _predict(model, chunk, top_k=top_k, views=views, extra=extra)


def _predict(model: GeoModel, chunk: list[Unit], *, top_k: int, views: bool, extra: dict) -> list[dict]:
    if views:
        predictions = [model.predict(list(u.paths), top_k=top_k, views=True, **extra)[0] for u in chunk]
    else:
        predictions = model.predict([u.key for u in chunk], top_k=top_k, **extra)
    records = []
    for unit, prediction in zip(chunk, predictions, strict=True):
        record = prediction.to_dict()
        record["image"] = unit.key  # what a rerun looks for
        records.append(record)
    return records
