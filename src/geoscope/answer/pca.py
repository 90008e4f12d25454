"""The principal axes of a large feature matrix, from the eigenvectors of its smaller Gram matrix."""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch


def principal_axes(z: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest singular values of ``z`` ``(n, d)`` (centred by the caller) and their right singular
    vectors ``(k, d)``, as the first rows of ``np.linalg.svd(z)`` (up to sign), from the top ``k``
    eigenvectors of ``zᵀz`` or ``zzᵀ``, whichever is smaller (LAPACK's ``syevr`` through SciPy).

    A full SVD does far more than the kNN gallery and the typicality test need: on 6,000 images this is 4.7×
    (Lite0's 4,048 values) and 5.2× (a joint encoder's 8,240) faster, with the same values to 1e-13
    (``benchmarks/references.py``).
    """
    n, d = z.shape
    k = min(k, n, d)
    gram = z.T @ z if d <= n else z @ z.T
    m = len(gram)
    values, vectors = scipy.linalg.eigh(gram, subset_by_index=[m - k, m - 1], driver="evr")
    values, vectors = values[::-1], vectors[:, ::-1]
    s = np.sqrt(np.clip(values, 0.0, None))
    if d <= n:
        return s, np.ascontiguousarray(vectors.T)
    return s, (vectors.T @ z) / np.where(s > 0, s, 1.0)[:, None]


def centred_product(features: np.ndarray, mean: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """``(features − mean) @ matrix``: rows of image features onto a C-contiguous float32 ``(d, k)`` matrix (principal
    axes, whitened or not), through torch's matrix product, which at the few rows of an answer is 2–3× faster than
    numpy's on one thread (8 rows × 8,512 → 512 values in 0.78 against 2.48 ms), the same values to float32 rounding."""
    centred = np.asarray(features, dtype=np.float32) - mean
    return (torch.from_numpy(np.ascontiguousarray(centred, dtype=np.float32)) @ torch.from_numpy(matrix)).numpy()

