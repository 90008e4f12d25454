"""A trained model as a directory a person can open.

``config.json`` (encoders, preprocessing, heads, labels, training summary, metrics),
``weights.safetensors`` (tensors only, no pickles), ``labels.csv`` (the place table),
``history.json`` (per-epoch training curves) and ``README.md`` (the model card).

Large matrices may be stored as float16 to keep a bundle small; :func:`read_bundle` gives every
float16 tensor back as float32, so nothing that reads a bundle depends on how it was stored.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .answer.coverage import SCORE, TESTS, TYPICALITY_KEYS
from .errors import ModelError, one_line, quote_name
from .fileio import atomic_write_json, atomic_write_text, current_umask

FORMAT = "geoscope-bundle"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, LABELS, HISTORY, CARD = (
    "config.json", "weights.safetensors", "labels.csv", "history.json", "README.md",
)
DEFAULT_BUNDLE = Path(__file__).parent / "assets" / "default-model"
LABEL_COLUMNS = ("name", "lat", "lon")
REFINER = ("refiner.place_embeddings", "refiner.lat", "refiner.lon")
POINT_PLACE = ("place", "region", "country")
"""How a refiner's config names each of its points (``refiner.places``: one list per point)."""
GALLERY = ("gallery.features", "gallery.lat", "gallery.lon", "gallery.pca_mean", "gallery.pca_components")


@dataclass
class BundleFiles:
    """The contents of a model bundle, loaded into memory."""

    config: dict
    tensors: dict[str, np.ndarray]
    labels: pd.DataFrame
    history: list[dict]
    path: Path


def save_bundle(
    directory: str | os.PathLike[str],
    config: dict,
    tensors: dict[str, np.ndarray],
    labels: pd.DataFrame,
    history: list[dict],
    card: str,
) -> Path:
    """Write a bundle: built in a temporary sibling folder, then swapped in whole."""
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        atomic_write_json(staging / CONFIG, {"format": FORMAT, "format_version": FORMAT_VERSION, **config})
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(staging / WEIGHTS))
        labels.to_csv(staging / LABELS, index=False)
        atomic_write_json(staging / HISTORY, history)
        atomic_write_text(staging / CARD, card)
        mask = current_umask()
        staging.chmod(0o777 & ~mask)  # mkdtemp makes 0700
        (staging / WEIGHTS).chmod(0o666 & ~mask)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_bundle(directory: str | os.PathLike[str] | None = None) -> BundleFiles:
    """Read a bundle (the bundled default when ``directory`` is None) and :func:`validate` it.

    Tensors stored as float16 are given as float32 (stored small, computed with in full precision).

    Raises :class:`ModelError` in one line for a missing folder or file, a config that is not
    a JSON object of this format and version, an unreadable or truncated weights file, a
    label table that cannot be parsed, and anything :func:`validate` refuses. A broken
    optional ``history.json`` is reported once on stderr and ignored.
    """
    path = Path(directory) if directory is not None else DEFAULT_BUNDLE
    if not path.exists():
        hint = " (the default model is not installed: see README 'Retrain the default model')" \
            if directory is None else ""
        raise ModelError(f"{quote_name(path)}: model bundle not found{hint}")
    if not path.is_dir():
        raise ModelError(f"{quote_name(path)}: a model bundle is a directory holding {CONFIG} and {WEIGHTS}")
    for name in (CONFIG, WEIGHTS, LABELS):
        if not (path / name).is_file():
            raise ModelError(f"{quote_name(path)}: incomplete model bundle, {name} is missing")
    config = _read_config(path / CONFIG)
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{quote_name(path / WEIGHTS)}: truncated or corrupt weights ({exc})") from None
    tensors = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in tensors.items()}
    files = BundleFiles(config, tensors, _read_labels(path / LABELS), _read_history(path / HISTORY), path)
    validate(files)
    return files


def _read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{quote_name(path)}: not valid JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{quote_name(path)}: must hold a JSON object, not a {_json_kind(config)}")
    if config.get("format") != FORMAT:
        raise ModelError(f"{quote_name(path.parent)}: not a geoscope model bundle (format {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{quote_name(path.parent)}: bundle format version {config.get('format_version')} is not supported "
            f"by this geoscope (expects {FORMAT_VERSION})"
        )
    return config


def _read_labels(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        raise ModelError(f"{quote_name(path)}: empty file, the label table is missing") from None
    except (ValueError, OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        first = one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise ModelError(f"{quote_name(path)}: cannot parse the label table as CSV ({first})") from None


def _read_history(path: Path) -> list[dict]:
    """The per-epoch history, or ``[]`` (with one warning) when the optional file is absent or broken."""
    if not path.is_file():
        return []
    try:
        history = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        problem = f"not valid JSON ({one_line(str(exc))})"
    else:
        if isinstance(history, list) and all(isinstance(row, dict) for row in history):
            return history
        problem = f"holds a {_json_kind(history)}, not a list of epochs"
    if path not in _WARNED:
        _WARNED.add(path)
        print(f"geoscope: warning: {quote_name(path)}: {problem}; the training history is ignored", file=sys.stderr)
    return []


_WARNED: set[Path] = set()
"""Broken optional files already reported in this process (each is reported once)."""


def _json_kind(value: object) -> str:
    return {dict: "object", list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number")


def validate(files: BundleFiles) -> None:
    """Refuse, in one line, a bundle whose parts disagree or hold impossible values.

    Checks the config's sections, the label table (``name``, ``lat``, ``lon``; at least one
    row; coordinates finite and in range), that every floating-point tensor is finite (no
    NaN, no inf), that there is one place embedding per label, and that the kNN gallery's
    tensors agree in shape with each other and with the model's image features.
    """
    _check_config(files.config, files.path / CONFIG)
    _check_labels(files.labels, files.path / LABELS)
    weights = files.path / WEIGHTS
    for key, tensor in files.tensors.items():
        _check_finite(key, tensor, weights)
    places = files.tensors.get("place_embeddings")
    if places is None or places.ndim != 2:
        raise ModelError(f"{quote_name(weights)}: no 'place_embeddings' matrix (incomplete or foreign bundle)")
    if places.shape[0] != len(files.labels):
        raise ModelError(f"{quote_name(files.path / LABELS)} has {len(files.labels)} rows but "
                         f"{WEIGHTS} holds {places.shape[0]} places")
    image_dim = files.config["model"].get("place_clip", {}).get("image_dim")
    _check_gallery(files.tensors, weights, image_dim if isinstance(image_dim, int) else None)
    _check_coverage(files.config.get("coverage"), files.tensors, files.path)
    _check_refiner(files.config.get("refiner"), files.tensors, files.path)


def _check_config(config: dict, path: Path) -> None:
    for section in ("model", "image_encoder", "labels"):
        if not isinstance(config.get(section), dict):
            raise ModelError(f"{quote_name(path)}: no {section!r} section (incomplete or foreign bundle)")
    centroid = config.get("training", {}).get("centroid") if isinstance(config.get("training"), dict) else None
    if centroid is not None and not _is_coordinate(centroid):
        raise ModelError(f"{quote_name(path)}: training centroid must be [lat, lon] in range, not {centroid!r}")


def _is_coordinate(value: object) -> bool:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return False
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return False
    return abs(value[0]) <= 90 and abs(value[1]) <= 180


def _check_labels(labels: pd.DataFrame, path: Path) -> None:
    missing = [c for c in LABEL_COLUMNS if c not in labels]
    if missing:
        raise ModelError(f"{quote_name(path)}: missing column{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(repr, missing))} (found: {', '.join(map(str, labels.columns))})")
    if len(labels) == 0:
        raise ModelError(f"{quote_name(path)}: no rows, the model has no places")
    for column, limit in (("lat", 90.0), ("lon", 180.0)):
        values = pd.to_numeric(labels[column], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values) | (np.abs(np.nan_to_num(values)) > limit)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise ModelError(f"{quote_name(path)}: {column} missing, not a number or outside "
                             f"[-{limit:g}, {limit:g}] at {_rows(rows)} (e.g. {labels[column].iloc[rows[0]]!r})")
        labels[column] = values
    empty = labels["name"].isna().to_numpy()
    if empty.any():
        raise ModelError(f"{quote_name(path)}: empty place name at {_rows(np.flatnonzero(empty))}")


def _rows(rows: np.ndarray) -> str:
    """1-based CSV line numbers (the header is line 1), a few of them."""
    shown = ", ".join(str(i + 2) for i in rows[:5])
    more = f" and {len(rows) - 5} more" if len(rows) > 5 else ""
    return f"row{'s' if len(rows) > 1 else ''} {shown}{more}"


def _check_finite(key: str, tensor: np.ndarray, path: Path) -> None:
    if tensor.dtype.kind != "f" or np.isfinite(tensor).all():
        return
    nan, inf = int(np.isnan(tensor).sum()), int(np.isinf(tensor).sum())
    found = " and ".join(f"{n:,} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
    raise ModelError(f"{quote_name(path)}: tensor {key!r} holds {found} value{'s' if nan + inf > 1 else ''}: "
                     "corrupt or diverged weights")


def _check_gallery(tensors: dict[str, np.ndarray], path: Path, image_dim: int | None) -> None:
    present = [k for k in GALLERY if k in tensors]
    if not present:
        return  # a model without a kNN gallery
    if len(present) < len(GALLERY):
        missing = ", ".join(repr(k) for k in GALLERY if k not in tensors)
        raise ModelError(f"{quote_name(path)}: the kNN gallery is incomplete (no {missing})")
    features, lat, lon = tensors["gallery.features"], tensors["gallery.lat"], tensors["gallery.lon"]
    mean, components = tensors["gallery.pca_mean"], tensors["gallery.pca_components"]
    problem = None
    if features.ndim != 2 or components.ndim != 2 or mean.ndim != 1 or lat.ndim != 1 or lon.ndim != 1:
        problem = "gallery tensors have the wrong number of dimensions"
    elif not len(lat) == len(lon) == features.shape[0]:
        problem = (f"gallery.lat has {len(lat):,} values and gallery.lon {len(lon):,} "
                   f"but gallery.features has {features.shape[0]:,} rows")
    elif components.shape[0] != features.shape[1]:
        problem = (f"gallery.features has {features.shape[1]} columns but gallery.pca_components "
                   f"has {components.shape[0]} rows")
    elif components.shape[1] != mean.shape[0]:
        problem = (f"gallery.pca_components is {components.shape[0]}×{components.shape[1]} "
                   f"but gallery.pca_mean has {mean.shape[0]} values")
    elif image_dim is not None and mean.shape[0] != image_dim:
        problem = f"gallery.pca_mean has {mean.shape[0]} values but the model reads {image_dim} image features"
    elif (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
        problem = "gallery.lat or gallery.lon holds coordinates out of range"
    elif "gallery.label" in tensors and tensors["gallery.label"].shape != lat.shape:
        problem = f"gallery.label has {tensors['gallery.label'].size:,} values for {len(lat):,} gallery images"
    if problem:
        raise ModelError(f"{quote_name(path)}: {problem}")


def _check_coverage(coverage: object, tensors: dict[str, np.ndarray], path: Path) -> None:
    """A coverage of this version's kind: known tests, each with rising quantiles, and the tensors they read."""
    if not isinstance(coverage, dict) or coverage.get("score") != SCORE:
        return  # none, or an older kind: coverage unknown
    quantiles = coverage.get("quantiles")
    problem = None
    if not isinstance(coverage.get("threshold"), int | float) or not isinstance(quantiles, dict) or not quantiles:
        problem = "coverage needs a numeric 'threshold' and the 'quantiles' of its tests"
    elif unknown := sorted(set(quantiles) - set(TESTS)):
        problem = f"unknown coverage test(s) {', '.join(map(repr, unknown))} (known: {', '.join(TESTS)})"
    elif not all(isinstance(q, list) and len(q) > 1 and all(isinstance(v, int | float) for v in q)
                 and np.all(np.diff(q) >= 0) for q in quantiles.values()):
        problem = "each coverage test's 'quantiles' must be a rising list of numbers"
    elif "gallery" in quantiles and GALLERY[0] not in tensors:
        problem = "its coverage reads the kNN gallery, which the weights do not hold"
    elif "typicality" in quantiles:
        problem = _typicality_problem(tensors)
    if problem:
        raise ModelError(f"{quote_name(path / CONFIG)}: {problem}")


def _typicality_problem(tensors: dict[str, np.ndarray]) -> str | None:
    missing = [k for k in TYPICALITY_KEYS if k not in tensors]
    if missing:
        return f"its coverage reads the typicality test, but {WEIGHTS} has no {', '.join(map(repr, missing))}"
    mean, projection, root, groups = (tensors[k] for k in TYPICALITY_KEYS)
    if (mean.ndim, projection.ndim, root.ndim, groups.ndim) != (1, 2, 2, 2) or \
            projection.shape[0] != mean.shape[0] or root.shape != (projection.shape[1],) * 2 or \
            groups.shape[1] != projection.shape[1]:
        return (f"typicality tensors disagree in shape (mean {mean.shape}, projection {projection.shape}, "
                f"precision_root {root.shape}, group_means {groups.shape})")
    gallery_mean = tensors.get("gallery.pca_mean")
    if gallery_mean is not None and gallery_mean.shape != mean.shape:
        return f"typicality.mean has {mean.shape[0]} values but gallery.pca_mean {gallery_mean.shape[0]}"
    return None


def _are_places(places: object, n: int) -> bool:
    return isinstance(places, list) and len(places) == n and all(
        isinstance(p, list) and len(p) == len(POINT_PLACE) and all(isinstance(v, str) for v in p) for p in places)


def _check_refiner(refiner: object, tensors: dict[str, np.ndarray], path: Path) -> None:
    """A GPS refiner whose config names its head and whose gallery of points is whole and on Earth."""
    if refiner is None:
        return
    problem = None
    if not isinstance(refiner, dict) or refiner.get("kind") != "gps" or \
            not isinstance((refiner.get("model") or {}).get("place_clip"), dict):
        problem = "its 'refiner' must be a GPS head's section (kind 'gps', with its 'model')"
    elif missing := [k for k in REFINER if k not in tensors]:
        problem = f"its GPS refiner is incomplete ({WEIGHTS} has no {', '.join(map(repr, missing))})"
    else:
        points, lat, lon = (tensors[k] for k in REFINER)
        if points.ndim != 2 or lat.ndim != 1 or not len(lat) == len(lon) == points.shape[0]:
            problem = (f"the GPS refiner's points disagree in shape (embeddings {points.shape}, "
                       f"lat {lat.shape}, lon {lon.shape})")
        elif (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
            problem = "refiner.lat or refiner.lon holds coordinates out of range"
        elif "places" in refiner and not _are_places(refiner["places"], len(lat)):
            problem = (f"the GPS refiner's 'places' must name each of its {len(lat):,} points as "
                       f"[{', '.join(POINT_PLACE)}]")
    if problem:
        raise ModelError(f"{quote_name(path)}: {problem}")
