"""Time to fit what predict compares a photo with: the top principal axes of the training features.

The kNN gallery's PCA and the typicality test (``geoscope.training.fit``, ``geoscope.answer.coverage``) each
need the top axes of the standardised training features. On cached features of the shared London sets (``geoscope
features`` first; plain images, no flips), a random sample of ``--images`` rows: a full SVD
(``np.linalg.svd``, what both used before) against :func:`geoscope.answer.pca.principal_axes`, one run, with how
far their singular values and axes differ. Prints one table.
Run: ``python benchmarks/references.py [--images 6000] [--encoder NAME ...] [--k 512]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from geoscope.answer.pca import principal_axes
from geoscope.data.manifest import read_manifest
from geoscope.features.cache import extract_features

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("london-uk", "london-on")


def standardised_sample(encoder: str, n: int) -> np.ndarray:
    manifests = [read_manifest(DATA / name / "manifest.csv") for name in SETS]
    paths = [p for m in manifests for p in m.image_paths]
    rows = np.sort(np.random.default_rng(0).choice(len(paths), size=min(n, len(paths)), replace=False))
    features = extract_features([paths[i] for i in rows], encoder, progress=False).embeddings
    x = np.asarray(features, dtype=np.float64)
    return (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--encoder", action="append", help="encoders to measure (default efficientnet-lite0/stats)")
    parser.add_argument("--k", type=int, default=512, help="axes kept (the typicality test's 512)")
    args = parser.parse_args()
    if not (DATA / SETS[0] / "manifest.csv").is_file():
        print(f"needs the real datasets in {DATA}", file=sys.stderr)
        return 2
    print("| encoder | images × values | full SVD | principal_axes | speed-up | max rel. error, singular values | "
          "min |cos| between axes |\n|---|---|---|---|---|---|---|")
    for encoder in args.encoder or ["efficientnet-lite0/stats"]:
        z = standardised_sample(encoder, args.images)
        start = time.perf_counter()
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        svd = time.perf_counter() - start
        start = time.perf_counter()
        top, axes = principal_axes(z, args.k)
        ours = time.perf_counter() - start
        k = len(top)
        error = np.max(np.abs(top - s[:k]) / s[:k])
        cosine = np.abs((axes * vt[:k]).sum(axis=1)).min()
        print(f"| {encoder} | {z.shape[0]:,} × {z.shape[1]:,} | {svd:.1f} s | {ours:.1f} s | {svd / ours:.1f}× | "
              f"{error:.1e} | {cosine:.6f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
