"""A training run's state at the end of an epoch, written atomically, so that a stopped run resumes.

The loop (:func:`geoscope.training.loop.train`) writes one file per run: the head's and the fine-tuned
encoder's weights, the optimiser's and scheduler's state, the averaged weights, the best weights so far and
their validation loss, the history, the early-stopping count and every random generator's state. A run
started again with the same settings on the same data reads it and continues from the next epoch, ending
with what an uninterrupted run ends with. The file carries a fingerprint of the settings and data
(:func:`fingerprint`); a file of another run is refused in one line.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GeoscopeError, quote_name
from ..fileio import atomic_write_bytes

VERSION = 1
"""Layout of the file; another one is refused."""


def fingerprint(config: dict, arrays: Sequence[np.ndarray], extra: Sequence[Any] = ()) -> str:
    """SHA-256 of a run's settings ``config``, its data ``arrays`` (labels, coordinates, views: their dtype,
    shape and bytes) and ``extra`` values (JSON)."""
    digest = hashlib.sha256(json.dumps([VERSION, config, list(extra)], sort_keys=True, default=str).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def rng_state(rng: np.random.Generator, device: torch.device) -> dict:
    """The random generators' states: the loop's numpy generator, torch's CPU one and the device's."""
    state = {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(rng: np.random.Generator, state: dict, device: torch.device) -> None:
    """Inverse of :func:`rng_state`."""
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: str | os.PathLike[str], state: dict) -> None:
    """Write ``state`` (tensors, numbers, lists, dicts; its ``fingerprint`` included) to ``path`` atomically; a
    file that cannot be written (a full disk, no permission) raises :class:`GeoscopeError` naming it, and any
    earlier file stays."""
    buffer = io.BytesIO()
    torch.save({"version": VERSION, **state}, buffer)
    try:
        atomic_write_bytes(path, buffer.getbuffer())
    except OSError as exc:
        raise GeoscopeError(f"{quote_name(path)}: cannot keep the training state "
                            f"({exc.strerror or type(exc).__name__})") from None


def load(path: str | os.PathLike[str], fingerprint: str) -> dict | None:
    """The state :func:`save` wrote to ``path`` (on the CPU), or ``None`` where there is no file; a file that
    cannot be read, or one of another run (its fingerprint differs), raises :class:`GeoscopeError`."""
    path = Path(path)
    if not path.is_file():
        return None
    try:  # weights_only: tensors, numbers and containers only, nothing a file could run
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: pickle, zip and torch errors alike
        raise GeoscopeError(f"{quote_name(path)}: not a geoscope training checkpoint ({type(exc).__name__}); "
                            "remove it to start afresh") from None
    if not isinstance(state, dict) or state.get("version") != VERSION:
        raise GeoscopeError(f"{quote_name(path)}: not a geoscope training checkpoint of this version; "
                            "remove it to start afresh")
    if state.get("fingerprint") != fingerprint:
        raise GeoscopeError(f"{quote_name(path)}: a checkpoint of another training run (other settings or "
                            "data); remove it to start afresh, or rerun the command that wrote it")
    return state
