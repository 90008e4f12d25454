"""The manifest: the one table that describes a dataset.

Columns: ``image`` (path relative to the manifest's folder, or absolute), ``lat``, ``lon``;
optional ``location_id`` (one id per physical place, shared by its views), ``heading``,
``capture_date``, ``split`` (``train``/``val``/``test``) and any label columns.
Read from CSV or Parquet; validated at the door; written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ManifestError, one_line, quote_name
from ..fileio import atomic_write_bytes
from ..geo.sphere import bounding_box

REQUIRED_COLUMNS = ("image", "lat", "lon")
STRING_COLUMNS = ("image", "location_id", "capture_date", "split")
SPLITS = ("train", "val", "test")
MAX_PROBLEMS_SHOWN = 5
PLACE_SPREAD_KM = 1.0
"""The views of one place (rows sharing a ``location_id``) are taken within this distance of each other."""
CHUNK_ROWS = 65536
"""Rows read at a time by :func:`iter_manifest`."""


@dataclass
class Manifest:
    """A validated dataset table and the folder its image paths are relative to."""

    frame: pd.DataFrame
    root: Path

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def image_paths(self) -> list[Path]:
        """Absolute path of every row's image."""
        return [self.root / p for p in self.frame["image"]]

    @property
    def place_ids(self) -> pd.Series:
        """One id per physical place: ``location_id`` if present, else the rounded coordinates."""
        return place_ids(self.frame)

    def subset(self, mask: np.ndarray | pd.Series) -> Manifest:
        """The rows selected by a boolean mask, re-indexed from 0."""
        return Manifest(self.frame[np.asarray(mask)].reset_index(drop=True), self.root)

    def split(self, name: str) -> Manifest:
        """The rows of one split (``train``, ``val`` or ``test``)."""
        if "split" not in self.frame:
            raise ManifestError("manifest has no 'split' column: run 'geoscope data split' first")
        return self.subset(self.frame["split"] == name)


def place_ids(frame: pd.DataFrame) -> pd.Series:
    """One string id per physical place (``location_id``, or coordinates to ~1 m)."""
    if "location_id" in frame and frame["location_id"].notna().all():
        return frame["location_id"].astype(str)
    return frame["lat"].round(5).astype(str) + "," + frame["lon"].round(5).astype(str)


def read_manifest(path: str | os.PathLike[str], *, check_images: bool = True) -> Manifest:
    """Read and validate a manifest (CSV or Parquet).

    Raises :class:`ManifestError` listing each problem (up to a few rows per problem).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{quote_name(path)}: manifest not found")
    parquet = path.suffix.lower() in {".parquet", ".pq"}
    try:
        frame = pd.read_parquet(path) if parquet else pd.read_csv(path, dtype=dict.fromkeys(STRING_COLUMNS, "string"))
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"{quote_name(path)}: cannot parse as a table ({first})") from None
    problems = _duplicate_columns(frame.columns if parquet else _csv_header(path))
    problems = problems or (column_type_problems(frame) if parquet else [])
    if not problems:
        frame, problems = normalise(frame)
        problems += validate_frame(frame, path.parent if check_images else None)
    if problems:
        raise ManifestError(f"{quote_name(path)}: " + "; ".join(problems))
    return Manifest(frame.reset_index(drop=True), path.parent.resolve())


def iter_manifest(path: str | os.PathLike[str], *, chunk_rows: int = CHUNK_ROWS) -> Iterator[Manifest]:
    """A manifest (CSV or Parquet) read ``chunk_rows`` rows at a time, for tables of millions of rows.

    Each chunk is validated as :func:`read_manifest` validates a whole table, and messages give
    the rows' numbers in the file; duplicates are found within a chunk and image files are not
    looked for. Memory holds one chunk (Parquet: ``ParquetFile.iter_batches``).
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{quote_name(path)}: manifest not found")
    parquet = path.suffix.lower() in {".parquet", ".pq"}
    root, first = path.parent.resolve(), 0
    try:
        if parquet:
            import pyarrow.parquet as pq

            chunks = (b.to_pandas() for b in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows))
        else:
            chunks = pd.read_csv(path, dtype=dict.fromkeys(STRING_COLUMNS, "string"), chunksize=chunk_rows)
        header = [] if parquet else _duplicate_columns(_csv_header(path))
        for frame in chunks:
            frame.index = pd.RangeIndex(first, first + len(frame))
            problems = header or _duplicate_columns(frame.columns)
            problems = problems or (column_type_problems(frame) if parquet else [])
            if not problems:
                frame, problems = normalise(frame)
                problems += validate_frame(frame, None)
            if problems:
                raise ManifestError(f"{quote_name(path)}: " + "; ".join(problems))
            first += len(frame)
            yield Manifest(frame.reset_index(drop=True), root)
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first_line = one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise ManifestError(f"{quote_name(path)}: cannot parse as a table ({first_line})") from None
    if not first:
        raise ManifestError(f"{quote_name(path)}: manifest has no rows")


def manifest_rows(path: str | os.PathLike[str]) -> int | None:
    """Rows of a Parquet manifest, from its footer (``None`` for a CSV: counting would read it all)."""
    path = Path(path)
    if path.suffix.lower() not in {".parquet", ".pq"}:
        return None
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (OSError, ValueError):
        return None


def column_type_problems(frame: pd.DataFrame) -> list[str]:
    """Columns of a typed table (Parquet) whose type cannot hold what they mean, one message each.

    ``lat``, ``lon`` and ``heading`` must be numbers (not text, not booleans); ``image`` must be
    text (file paths). A CSV has no types: its cells are parsed and checked row by row instead.
    """
    problems = []
    for column in ("lat", "lon", "heading"):
        if column in frame:
            dtype = frame[column].dtype
            numeric = pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)
            if not numeric and not frame[column].isna().all():
                problems.append(f"column {column!r} has type {dtype} ({_kind(frame[column])}), not numbers")
    if "image" in frame:
        values = frame["image"]
        text = values.map(lambda v: isinstance(v, str)) | values.isna()
        if not text.all():
            problems.append(f"column 'image' has type {values.dtype} ({_kind(values[~text])}), not file paths "
                            f"(text) at {_rows(~text)}")
    return problems


def _kind(values: pd.Series) -> str:
    """What the first non-missing value is, for a message: ``e.g. 'north'``, ``e.g. 3``."""
    present = values.dropna()
    if not len(present):
        return "all missing"
    first = present.iloc[0]
    return f"e.g. {(first.item() if isinstance(first, np.generic) else first)!r}"


def _csv_header(path: Path) -> list[str]:
    """The column names of a CSV file's first line, as written (pandas renames a repeated name ``name.1``)."""
    import csv

    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # pandas says what is wrong with the file


def _duplicate_columns(columns) -> list[str]:
    """One message naming the columns that appear more than once (spaces around a name do not count)."""
    names = pd.Index([str(c).strip() for c in columns])
    repeated = sorted(set(names[names.duplicated()]))
    return [f"column{'s' * (len(repeated) > 1)} {', '.join(map(repr, repeated))} appear{'s' * (len(repeated) == 1)} "
            "more than once"] if repeated else []


def normalise(frame: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Names stripped, text columns as text, coordinates and headings as float64; and the cells of ``heading``
    that hold something other than a number (``lat``/``lon`` cells are checked by :func:`validate_frame`)."""
    frame = frame.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    for col in STRING_COLUMNS:
        if col in frame:
            frame[col] = frame[col].astype("string").astype(object).where(frame[col].notna(), None)
    problems = []
    for col in ("lat", "lon", "heading"):
        if col in frame:
            given = frame[col]
            frame[col] = pd.to_numeric(given, errors="coerce").astype("float64")  # float16 would overflow in sums
            bad = given.notna() & ~np.isfinite(frame[col])
            if col == "heading" and bad.any():
                problems.append(f"heading is not a number in degrees at {_rows(bad)} (e.g. {given[bad].iloc[0]!r})")
    return frame, problems


def _rows(mask: pd.Series | np.ndarray) -> str:
    """Human row numbers (1-based, counting the header as line 1 → data starts at row 2)."""
    idx = np.flatnonzero(np.asarray(mask))
    if isinstance(mask, pd.Series) and isinstance(mask.index, pd.RangeIndex):
        idx = idx + mask.index.start  # a chunk of a larger manifest (iter_manifest) keeps its rows' numbers
    shown = ", ".join(str(i + 2) for i in idx[:MAX_PROBLEMS_SHOWN])
    more = f" and {len(idx) - MAX_PROBLEMS_SHOWN} more" if len(idx) > MAX_PROBLEMS_SHOWN else ""
    return f"row{'s' if len(idx) > 1 else ''} {shown}{more}"


def validate_frame(frame: pd.DataFrame, root: Path | None) -> list[str]:
    """Every schema problem of a manifest table, one message each (empty when valid).

    With ``root`` given, also checks that every image file exists under it.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame]
    if missing:
        return [f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                f"(found: {', '.join(map(str, frame.columns))})"]
    if len(frame) == 0:
        return ["manifest has no rows"]
    problems: list[str] = []
    for col, limit in (("lat", 90.0), ("lon", 180.0)):
        values = frame[col]
        nan = values.isna()
        if nan.any():
            problems.append(f"{col} is empty or not a number at {_rows(nan)}")
        out = ~nan & (values.abs() > limit)
        if out.any():
            first = values[out].iloc[0]
            problems.append(
                f"{col} outside [-{limit:g}, {limit:g}] at {_rows(out)} (e.g. {first:g})"
            )
    empty = frame["image"].isna() | (frame["image"].astype(str).str.strip() == "")
    if empty.any():
        problems.append(f"image path is empty at {_rows(empty)}")
    # one file under two spellings ("a.jpg", "./a.jpg") is still a duplicate
    normal = frame["image"].map(lambda p: os.path.normpath(p) if isinstance(p, str) and p else p)
    dup = normal.duplicated(keep="first") & ~empty
    if dup.any():
        problems.append(f"duplicate image at {_rows(dup)} ({quote_name(frame['image'][dup].iloc[0])})")
    if "location_id" in frame and not problems:
        problems += _spread_places(frame)
    if "split" in frame:
        bad = frame["split"].notna() & ~frame["split"].isin(SPLITS)
        if bad.any():
            problems.append(f"split must be one of {', '.join(SPLITS)} at {_rows(bad)}")
    if root is not None and not empty.all():
        exists = np.array([(root / p).is_file() if isinstance(p, str) and p else True
                           for p in frame["image"]])
        if not exists.all():
            first = frame["image"][~exists].iloc[0]
            problems.append(f"image file missing at {_rows(~exists)} ({quote_name(root / first)})")
    return problems


def _spread_places(frame: pd.DataFrame) -> list[str]:
    """A message for rows that share a ``location_id`` but lie farther apart than :data:`PLACE_SPREAD_KM` (the
    views of one place are taken at one spot: such rows are different places under one id)."""
    from ..geo.sphere import haversine_km

    ids = frame["location_id"]
    shared = ids.notna() & ids.duplicated(keep=False)
    if not shared.any():
        return []
    rows = frame[shared]
    first = rows.groupby("location_id", sort=False)[["lat", "lon"]].transform("first")
    far = pd.Series(False, index=frame.index)
    far[rows.index] = haversine_km(rows["lat"], rows["lon"], first["lat"], first["lon"]) > PLACE_SPREAD_KM
    if not far.any():
        return []
    place = ids[far].iloc[0]
    return [f"location_id {place!r} names rows {PLACE_SPREAD_KM:g}+ km apart at {_rows(far)} (views of one place "
            "share its spot: give each place its own id)"]


def write_manifest(manifest: Manifest | pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write a manifest atomically as CSV or Parquet (by suffix); returns the path."""
    path = Path(path)
    frame = manifest.frame if isinstance(manifest, Manifest) else manifest
    if path.suffix.lower() in {".parquet", ".pq"}:
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        atomic_write_bytes(path, buffer.getvalue())
    else:
        atomic_write_bytes(path, frame.to_csv(index=False, lineterminator="\n").encode("utf-8"))
    return path


def summarize(manifest: Manifest) -> dict:
    """What ``geoscope data check`` prints: counts, views per place, extent, dates, splits."""
    frame = manifest.frame
    places = manifest.place_ids
    views = places.value_counts()
    lat_min, lon_min, lat_max, lon_max = bounding_box(frame["lat"], frame["lon"])
    summary: dict = {
        "images": len(frame),
        "places": int(places.nunique()),
        "views_per_place": {str(k): int(v) for k, v in views.value_counts().sort_index().items()},
        "bbox": {"min_lat": lat_min, "min_lon": lon_min, "max_lat": lat_max, "max_lon": lon_max},
    }
    if "capture_date" in frame and frame["capture_date"].notna().any():
        dates = frame["capture_date"].dropna().astype(str)
        summary["dates"] = {"first": dates.min(), "last": dates.max()}
    if "heading" in frame and frame["heading"].notna().any():
        summary["headings"] = sorted(float(h) for h in frame["heading"].dropna().unique())
    if "split" in frame:
        summary["splits"] = {str(k): int(v) for k, v in frame["split"].value_counts().items()}
    return summary
