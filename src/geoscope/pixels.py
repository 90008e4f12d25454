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

from .encoders.onnx_runtime import cores_per_process
from .encoders.preprocess import Preprocess, Views
from .errors import quote_name
from .features import FeatureSet, load_views


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
        variants = np.broadcast_to(np.asarray(variant), rows.shape)
        out = np.zeros((len(rows), self.shape[2]), dtype=np.float32)

        def read(k: int) -> None:
            views = Views(hflip=bool(variants[k]), crops=self.crops)
            load_views(self.paths[rows[k]], self.preprocess, views, out=out[k].reshape(self.crops, 3, *(
                self.preprocess.crop_size,) * 2))

        with ThreadPoolExecutor(self.workers) as pool:
            list(pool.map(read, range(len(rows))))
        return out

    def __len__(self) -> int:
        return len(self.paths)


def read_pixels(paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, *, crops: int = 1,
                hflip: bool = False, workers: int | None = None) -> FeatureSet:
    """Every image decoded and preprocessed now, one flattened row each (NaN for unreadable ones, named)."""
    paths = [Path(p) for p in paths]
    c = preprocess.crop_size
    out = np.full((len(paths), crops, 3, c, c), np.nan, dtype=np.float32)
    views = Views(hflip=hflip, crops=crops)
    with ThreadPoolExecutor(workers or cores_per_process()) as pool:
        reasons = list(pool.map(lambda k: load_views(paths[k], preprocess, views, out=out[k])[1], range(len(paths))))
    valid = np.array([r is None for r in reasons], dtype=bool)
    out[~valid] = np.nan
    errors = [f"{quote_name(p)}: {r}" for p, r in zip(paths, reasons, strict=True) if r is not None]
    return FeatureSet(out.reshape(len(paths), -1), valid, errors, encoder_name="pixels",
                      paths=[str(p) for p in paths], output_shape=(3, c, c))


def readable(paths: Sequence[str | os.PathLike[str]], preprocess: Preprocess, *, progress: bool = True,
             workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Which images decode (each read once, nothing kept), and a line for each one that does not."""
    from tqdm import tqdm

    paths = [Path(p) for p in paths]
    c = preprocess.crop_size

    def check(path: Path) -> str | None:
        return load_views(path, preprocess, Views(), out=np.empty((1, 3, c, c), dtype=np.float32))[1]

    with ThreadPoolExecutor(workers or cores_per_process()) as pool:
        reasons = list(tqdm(pool.map(check, paths), total=len(paths), unit="img", desc="checking images",
                            disable=not progress, dynamic_ncols=True))
    errors = [f"{quote_name(p)}: {r}" for p, r in zip(paths, reasons, strict=True) if r is not None]
    return np.array([r is None for r in reasons], dtype=bool), errors
