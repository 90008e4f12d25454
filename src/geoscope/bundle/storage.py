"""How a bundle's tensors are stored small and read back in float32.

Two compact forms, both read back by :func:`expand` (what :func:`geoscope.bundle.read_bundle` does):

- float16: a float32 matrix stored in half precision.
- int8 with scales: a matrix ``NAME`` stored as int8 (symmetric, round to nearest) beside a float32
  ``NAME.scale`` of one scale per row and run of ``GROUP`` inputs; read back as ``int8 × scale``.

:func:`compact` writes them (``scripts/compact_bundle.py``); ``docs/bundle-size.md`` measures which tensors
take which form without changing the default model's answers.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

SCALE = ".scale"
GROUP = 32
"""Inputs sharing one int8 scale: one per row alone flipped a near-tie of the test split (measured)."""


def quantize(matrix: np.ndarray, group: int = GROUP) -> tuple[np.ndarray, np.ndarray]:
    """``matrix`` as int8 and its float32 scales ``(rows, ceil(columns / group))``."""
    w = np.asarray(matrix, dtype=np.float32)
    rows, columns = w.shape
    blocks = -(-columns // group)
    padded = np.zeros((rows, blocks * group), np.float32)
    padded[:, :columns] = w
    runs = padded.reshape(rows, blocks, group)
    scale = (np.abs(runs).max(axis=2) / np.float32(127)).astype(np.float32)
    scale[scale == 0] = 1
    q = np.clip(np.rint(runs / scale[:, :, None]), -127, 127).astype(np.int8).reshape(rows, -1)[:, :columns]
    return np.ascontiguousarray(q), scale


def compact(tensors: dict[str, np.ndarray], *, int8: Collection[str] = (),
            keep: Collection[str] = ()) -> dict[str, np.ndarray]:
    """The tensors to store: those named in ``int8`` as int8 with scales, other non-empty float32 matrices as
    float16 except those in ``keep``; vectors, float64 and integers as they are."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        if key in int8:
            out[key], out[key + SCALE] = quantize(value)
        elif value.dtype == np.float32 and value.ndim == 2 and value.size and key not in keep:
            out[key] = value.astype(np.float16)
        else:
            out[key] = value
    return out


def expand(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as the model computes with them: int8 with scales and float16 back in float32."""
    out: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        base = key.removesuffix(SCALE)
        if key.endswith(SCALE) and base in tensors and tensors[base].dtype == np.int8:
            continue
        scale = tensors.get(key + SCALE)
        if value.dtype == np.int8 and scale is not None and value.ndim == 2 and scale.ndim == 2:
            group = -(-value.shape[1] // scale.shape[1])
            value = value.astype(np.float32) * np.repeat(scale.astype(np.float32), group, axis=1)[:, :value.shape[1]]
        elif value.dtype == np.float16:
            value = value.astype(np.float32)
        out[key] = value
    return out
