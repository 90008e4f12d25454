"""Reading and writing a bundle's files (what they hold: :mod:`geoscope.bundle.stages`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from ..errors import ModelError, one_line, quote_name
from ..fileio import atomic_write_json, atomic_write_text, current_umask
from .layout import CARD, CONFIG, DEFAULT_BUNDLE, FORMAT, FORMAT_VERSION, HISTORY, LABELS, WEIGHTS, BundleFiles
from .stages import validate
from .storage import expand


def save_bundle(
    directory: str | os.PathLike[str],
    config: dict,
    tensors: dict[str, np.ndarray],
    labels: pd.DataFrame,
    history: list[dict],
    card: str,
) -> Path:
    """Write a bundle: built in a temporary sibling folder, then swapped in whole.

    A write that fails (a full disk) leaves the previous bundle as it was and no temporary folder, and is
    one :class:`ModelError`; temporary folders that a killed run left beside the bundle are removed.
    """
    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=target.parent))
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
    except (SafetensorError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else one_line(str(exc))
        raise ModelError(f"{quote_name(target)}: cannot write the bundle ({why}); the previous one is "
                         "untouched") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _remove_abandoned(target: Path) -> None:
    """Remove the temporary folders that runs killed while writing ``target`` left beside it (``.<name>.<pid>.*``
    of a process that no longer runs)."""
    for folder in target.parent.glob(f".{target.name}.*.*"):
        pid = folder.name.removeprefix(f".{target.name}.").partition(".")[0]
        if folder.is_dir() and pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def read_bundle(directory: str | os.PathLike[str] | None = None) -> BundleFiles:
    """Read a bundle (the bundled default when ``directory`` is None) and :func:`validate` it.

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
    tensors = expand(tensors)  # stored small (float16, int8 with scales), computed with in float32
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
