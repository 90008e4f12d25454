"""Decoded images as a model's inputs, for fine-tuning the whole encoder: nothing cached, read when asked.

:class:`ImagePixels` indexes like a feature array ``(variants, images, 3·c·c)``: variant 0 is
each image preprocessed as the encoder wants it, variant 1 the same image mirrored. A batch
is decoded (on a few threads) only when the training loop asks for it, so a manifest of
millions of images costs no disk and no memory beyond the batch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..encoders.onnx_runtime import cores_per_process
from ..encoders.preprocess import Preprocess, Views
from ..errors import quote_name
from .cache import FeatureSet, load_views


def decode_into(paths: Sequence[Path], flips: Sequence[bool], preprocess: Preprocess, crops: int, out: np.ndarray,
                workers: int | None = None) -> list[str | None]:
    """Decode ``paths[k]`` (mirrored where ``flips[k]``) into row ``out[k]`` (``crops·3·c·c`` values) on a few
    threads; returns why each image could not be read (``None`` where it was: rows of the others are untouched)."""
    c = preprocess.crop_size

    def read(k: int) -> str | None:
        slots = out[k].reshape(crops, 3, c, c)
        return load_views(paths[k], preprocess, Views(hflip=bool(flips[k]), crops=crops), out=slots)[1]

    with ThreadPoolExecutor(workers or cores_per_process()) as pool:
        return list(pool.map(read, range(len(paths))))


class ImagePixels:
    """Images read on demand: ``pixels[variant, rows]`` → float32 ``(len(rows), crops·3·c·c)``."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, *, crops: int = 1,
                 variants: int = 1, workers: int | None = None) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocess, self.crops, self.variants = preprocess, crops, variants
        self.workers = workers or cores_per_process()
        c = preprocess.crop_size
        self.shape = (variants, len(self.paths), crops * 3 * c * c)
        self.ndim = 3

    def __getitem__(self, key: tuple) -> np.ndarray | ImagePixels:
        variant, rows = key
        if isinstance(variant, slice):  # pixels[:, rows]: the same images, a subset of rows
            picked = np.arange(len(self.paths))[rows]
            return ImagePixels([self.paths[i] for i in picked], self.preprocess, crops=self.crops,
                               variants=self.variants, workers=self.workers)
        rows = np.atleast_1d(np.asarray(rows))
        out = np.zeros((len(rows), self.shape[2]), dtype=np.float32)
        decode_into([self.paths[i] for i in rows], np.broadcast_to(np.asarray(variant), rows.shape), self.preprocess,
                    self.crops, out, self.workers)
        return out

    def __len__(self) -> int:
        return len(self.paths)


def read_pixels(paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, *, crops: int = 1,
                hflip: bool = False, workers: int | None = None) -> FeatureSet:
    """Every image decoded and preprocessed now, one flattened row each (NaN for unreadable ones, named)."""
    paths = [Path(p) for p in paths]
    c = preprocess.crop_size
    out = np.full((len(paths), crops * 3 * c * c), np.nan, dtype=np.float32)
    reasons = decode_into(paths, [hflip] * len(paths), preprocess, crops, out, workers)
    valid = np.array([r is None for r in reasons], dtype=bool)
    out[~valid] = np.nan
    return FeatureSet(out, valid, _named(paths, reasons), encoder_name="pixels", paths=[str(p) for p in paths],
                      output_shape=(3, c, c))


def readable(paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, *, progress: bool = True,
             workers: int | None = None, chunk: int = 64) -> tuple[np.ndarray, list[str]]:
    """Which images decode (each read once, into one reused buffer), and a line for each one that does not."""
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    scratch = np.empty((chunk, 3 * preprocess.crop_size ** 2), dtype=np.float32)
    reasons: list[str | None] = []
    with tqdm(total=len(paths), unit="img", desc="checking images", disable=not progress, dynamic_ncols=True) as bar:
        for start in range(0, len(paths), chunk):
            part = paths[start:start + chunk]
            reasons += decode_into(part, [False] * len(part), preprocess, 1, scratch, workers)
            bar.update(len(part))
    return np.array([r is None for r in reasons], dtype=bool), _named(paths, reasons)


def _named(paths: Sequence[Path], reasons: Sequence[str | None]) -> list[str]:
    """One line for each image that could not be read, naming it."""
    return [f"{quote_name(p)}: {r}" for p, r in zip(paths, reasons, strict=True) if r is not None]
