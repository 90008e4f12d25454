"""Spatially disjoint train/val/test splits and cross-validation folds, and a leakage check.

Rows are grouped so that a group never straddles two splits: ``by="location"`` keeps each
physical place (same ``location_id`` or same coordinates) whole; ``by="block"`` also keeps
each grid block of ``block_km`` kilometres whole, so near neighbours cannot leak across.
Groups are shuffled with the seed and cut to the requested fractions by image count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from ..errors import GeoscopeError
from ..geo.sphere import EARTH_RADIUS_KM, to_unit_vectors
from .manifest import SPLITS

GroupBy = Literal["location", "block"]
GROUPINGS: tuple[str, ...] = ("location", "block")
LEAK_RADII_KM: tuple[float, ...] = (0.05, 1.0)
"""Radii of the leakage counts: test images with a training image within 50 m and 1 km."""

_KM_PER_DEGREE = np.pi * EARTH_RADIUS_KM / 180.0


def spatial_groups(
    frame: pd.DataFrame, by: GroupBy = "location", *, block_km: float = 1.0
) -> NDArray:
    """An integer group per row: rows of one group must land in the same split or fold.

    Places are merged when they share a ``location_id`` or the same coordinates (to ~1 m);
    with ``by="block"`` every place is further merged into its ``block_km`` grid block.
    """
    if by not in GROUPINGS:
        raise GeoscopeError(f"unknown grouping {by!r}: use one of {', '.join(GROUPINGS)}")
    _require_coordinates(frame)
    coords = frame["lat"].round(5).astype(str) + "," + frame["lon"].round(5).astype(str)
    partitions = [pd.factorize(coords, sort=True)[0]]
    if "location_id" in frame:
        ids = frame["location_id"].astype(object).where(frame["location_id"].notna(), None)
        codes = pd.factorize(ids, sort=True)[0]  # missing ids (−1) get a group of their own
        partitions.append(np.where(codes < 0, len(frame) + np.arange(len(frame)), codes))
    if by == "block":
        partitions.append(block_ids(frame["lat"], frame["lon"], block_km))
    return _merge(partitions)


def block_ids(lat: pd.Series | NDArray, lon: pd.Series | NDArray, block_km: float) -> NDArray:
    """Equal-area-ish grid block of each point: rows ``block_km`` tall, blocks ``block_km`` wide.

    The number of blocks in a row shrinks with the cosine of the row's central latitude.
    """
    if not np.isfinite(block_km) or block_km <= 0:
        raise GeoscopeError(f"block size must be a positive number of km, not {block_km:g}")
    la = np.asarray(lat, dtype=np.float64)
    lo = np.asarray(lon, dtype=np.float64)
    rows_total = max(1, int(np.ceil(180.0 * _KM_PER_DEGREE / block_km)))
    row = np.minimum(np.floor((la + 90.0) * _KM_PER_DEGREE / block_km), rows_total - 1)
    centre = np.radians(-90.0 + (row + 0.5) * block_km / _KM_PER_DEGREE)
    width = 360.0 * _KM_PER_DEGREE * np.cos(np.clip(centre, -np.pi / 2, np.pi / 2))
    cols = np.maximum(1, np.floor(width / block_km))
    col = np.minimum(np.floor((lo + 180.0) / 360.0 * cols), cols - 1)
    return pd.factorize((row.astype(np.int64) << 32) + col.astype(np.int64), sort=True)[0]


def split_manifest(
    frame: pd.DataFrame,
    by: GroupBy = "location",
    *,
    block_km: float = 1.0,
    val: float = 0.1,
    test: float = 0.1,
    seed: int = 0,
    gap_km: float = 0.0,
) -> pd.DataFrame:
    """A copy of ``frame`` with a ``split`` column (``train``/``val``/``test``), spatially disjoint.

    No place, and with ``by="block"`` no ``block_km`` grid block, appears in two splits.
    Fractions are met by image count as closely as whole groups allow; the same data and
    seed always give the same split. With ``gap_km`` > 0, training images closer than that
    to a val or test image are left out (empty ``split``), a buffer against near-duplicates
    just across a block edge.
    """
    if not (np.isfinite(gap_km) and gap_km >= 0):
        raise GeoscopeError(f"gap must be zero or a positive number of km, not {gap_km:g}")
    for name, share in (("val", val), ("test", test)):
        if not (np.isfinite(share) and 0.0 <= share < 1.0):
            raise GeoscopeError(f"--{name} must be a fraction in [0, 1), not {share:g}")
    if val + test >= 1.0:
        raise GeoscopeError(f"val + test = {val + test:g} leaves nothing to train on; "
                            "keep it below 1")
    groups = spatial_groups(frame, by, block_km=block_km)
    parts = _assign(groups, np.array([test, val, 1.0 - val - test]), seed)
    names = np.array(["test", "val", "train"], dtype=object)[parts]
    if gap_km > 0:
        train = names == "train"
        near = _nearest_km(frame.loc[~train, ["lat", "lon"]], frame.loc[train, ["lat", "lon"]])
        names[np.flatnonzero(train)[near <= gap_km]] = None
    if gap_km > 0 and not (names == "train").any():
        raise GeoscopeError(f"a gap of {gap_km:g} km leaves no training images; use a smaller one")
    for name, share in (("train", 1.0 - val - test), ("val", val), ("test", test)):
        if share > 0 and not (names == name).any():
            raise GeoscopeError(
                f"the data hold only {_count(groups.max() + 1, by, block_km)}: too few to give "
                f"{name} {share:.0%}" + (" (use a smaller --block-km)" if by == "block" else "")
            )
    out = frame.copy()
    out["split"] = names
    return out


def kfold(
    frame: pd.DataFrame,
    k: int = 5,
    *,
    by: GroupBy = "location",
    block_km: float = 1.0,
    seed: int = 0,
) -> NDArray:
    """Fold id (0 … k−1) of each row for spatial cross-validation, groups kept whole.

    Folds hold about the same number of images; the same data and seed give the same folds.
    """
    if int(k) != k or k < 2:
        raise GeoscopeError(f"cross-validation needs k ≥ 2 folds, not {k}")
    groups = spatial_groups(frame, by, block_km=block_km)
    if groups.max() + 1 < k:
        raise GeoscopeError(f"the data hold only {_count(groups.max() + 1, by, block_km)}: "
                            f"too few for {k} folds")
    folds = _assign(groups, np.full(int(k), 1.0 / k), seed)
    if len(np.unique(folds)) < k:
        hint = " (use a smaller --block-km)" if by == "block" else ""
        raise GeoscopeError(f"one {_noun(by, block_km)} holds too many of the images "
                            f"to make {k} folds{hint}")
    return folds


def fold_masks(
    frame: pd.DataFrame, folds: NDArray, fold: int, *, gap_km: float = 0.0
) -> tuple[NDArray, NDArray]:
    """``(train, test)`` boolean masks for holding out ``fold`` of :func:`kfold`'s ``folds``.

    With ``gap_km`` > 0, training rows closer than that to a held-out row are left out.
    """
    folds = np.asarray(folds)
    if len(folds) != len(frame):
        raise GeoscopeError(f"{len(folds)} fold ids for {len(frame)} rows")
    test = folds == fold
    train = ~test
    if gap_km > 0:
        near = _nearest_km(frame.loc[test, ["lat", "lon"]], frame.loc[train, ["lat", "lon"]])
        train[np.flatnonzero(train)[near <= gap_km]] = False
    return train, test


def leakage_report(frame: pd.DataFrame, radii_km: tuple[float, ...] = LEAK_RADII_KM) -> dict:
    """How close val and test images come to training images, so leakage is visible.

    Keys: ``nearest_train_test_km`` and ``nearest_train_val_km`` (smallest distance from
    any test/val image to any train image; NaN when a split is empty), ``test_within_km``
    and ``val_within_km`` (images with a train image within each radius, keyed ``"0.05"``,
    ``"1"``), and ``test_places_in_train`` (test places whose ``location_id`` is in train).
    """
    if "split" not in frame:
        raise GeoscopeError("manifest has no 'split' column: run 'geoscope data split' first")
    _require_coordinates(frame)
    split = frame["split"].to_numpy(dtype=object)
    train = split == "train"
    report: dict = {"images": {name: int((split == name).sum()) for name in SPLITS}}
    for name in ("test", "val"):
        held = split == name
        nearest = _nearest_km(frame.loc[train, ["lat", "lon"]], frame.loc[held, ["lat", "lon"]])
        report[f"nearest_train_{name}_km"] = float(nearest.min()) if nearest.size else float("nan")
        report[f"{name}_within_km"] = {f"{r:g}": int((nearest <= r).sum()) for r in radii_km}
    if "location_id" in frame:
        ids = frame["location_id"]
        test_ids = set(ids[split == "test"].dropna())
        report["test_places_in_train"] = len(test_ids & set(ids[train].dropna()))
    return report


def _require_coordinates(frame: pd.DataFrame) -> None:
    missing = [c for c in ("lat", "lon") if c not in frame]
    if missing:
        raise GeoscopeError(f"table lacks column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(missing)}")
    if len(frame) == 0:
        raise GeoscopeError("cannot split an empty table")


def _noun(by: str, block_km: float, n: int = 1) -> str:
    plural = "" if n == 1 else "s"
    return f"block{plural} of {block_km:g} km" if by == "block" else f"place{plural}"


def _count(n: int, by: str, block_km: float) -> str:
    return f"{n} {_noun(by, block_km, n)}"


def _merge(partitions: list[NDArray]) -> NDArray:
    """Connected components of rows linked by sharing a label in any partition, numbered 0…"""
    labels = partitions[0].astype(np.int64)
    while True:
        merged = labels
        for part in partitions:
            merged = pd.Series(merged).groupby(part).transform("min").to_numpy()
        if np.array_equal(merged, labels):
            return pd.factorize(labels, sort=True)[0]
        labels = merged


def _assign(groups: NDArray, shares: NDArray, seed: int) -> NDArray:
    """Part index of each row: groups shuffled by ``seed``, then cut at the cumulative shares.

    A group goes to the part its middle image falls in, so parts match ``shares`` by image
    count to within half a group.
    """
    sizes = np.bincount(groups)
    order = np.random.default_rng(seed).permutation(len(sizes))
    ends = np.cumsum(sizes[order])
    middle = (ends - sizes[order] / 2.0) / ends[-1]
    cuts = np.cumsum(shares)[:-1]
    part_of_group = np.empty(len(sizes), dtype=np.int64)
    part_of_group[order] = np.searchsorted(cuts, middle, side="right")
    return part_of_group[groups]


def _nearest_km(reference: pd.DataFrame, queries: pd.DataFrame) -> NDArray:
    """Great-circle distance from each query point to its nearest reference point."""
    if len(queries) == 0:
        return np.empty(0)
    if len(reference) == 0:
        return np.full(len(queries), np.inf)
    ref = to_unit_vectors(reference["lat"], reference["lon"])
    qry = to_unit_vectors(queries["lat"], queries["lon"])
    try:
        from sklearn.neighbors import KDTree
    except ImportError:  # pragma: no cover - scikit-learn is a dependency; numpy fallback
        chord = np.concatenate([
            np.sqrt(((qry[i:i + 1024, None, :] - ref[None, :, :]) ** 2).sum(-1)).min(axis=1)
            for i in range(0, len(qry), 1024)
        ])
    else:
        chord = KDTree(ref).query(qry, k=1)[0][:, 0]
    return 2.0 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0))
