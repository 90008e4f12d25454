"""A trained model as a directory a person can open.

``config.json`` (encoders, preprocessing, heads, labels, training summary, metrics),
``weights.safetensors`` (tensors only, no pickles), ``labels.csv`` (the place table),
``history.json`` (per-epoch training curves) and ``README.md`` (the model card).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .errors import ModelError
from .fileio import atomic_write_json, atomic_write_text, current_umask

FORMAT = "geoscope-bundle"
FORMAT_VERSION = 1
CONFIG, WEIGHTS, LABELS, HISTORY, CARD = (
    "config.json", "weights.safetensors", "labels.csv", "history.json", "README.md",
)
DEFAULT_BUNDLE = Path(__file__).parent / "assets" / "default-model"


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
    """Read a bundle (the bundled default when ``directory`` is None), checking every part.

    Raises :class:`ModelError` in one line for a missing folder or file, a truncated or
    unreadable weights file, or a bundle of another format or version.
    """
    path = Path(directory) if directory is not None else DEFAULT_BUNDLE
    if not path.exists():
        hint = " (the default model is not installed: see README 'Retrain the default model')" \
            if directory is None else ""
        raise ModelError(f"{path}: model bundle not found{hint}")
    if not path.is_dir():
        raise ModelError(f"{path}: a model bundle is a directory holding {CONFIG} and {WEIGHTS}")
    for name in (CONFIG, WEIGHTS, LABELS):
        if not (path / name).is_file():
            raise ModelError(f"{path}: incomplete model bundle, {name} is missing")
    try:
        config = json.loads((path / CONFIG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path / CONFIG}: not valid JSON ({exc})") from None
    if config.get("format") != FORMAT:
        raise ModelError(f"{path}: not a geoscope model bundle (format {config.get('format')!r})")
    if config.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path}: bundle format version {config.get('format_version')} is not supported "
            f"by this geoscope (expects {FORMAT_VERSION})"
        )
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelError(f"{path / WEIGHTS}: truncated or corrupt weights ({exc})") from None
    labels = pd.read_csv(path / LABELS)
    history = json.loads((path / HISTORY).read_text()) if (path / HISTORY).is_file() else []
    return BundleFiles(config, tensors, labels, history, path)
