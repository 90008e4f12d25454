"""data.split: places and blocks never straddle splits or folds; leakage is measured."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

from geoscope.data.manifest import read_manifest
from geoscope.data.split import (
    block_ids,
    fold_masks,
    kfold,
    leakage_report,
    spatial_groups,
    split_manifest,
)
from geoscope.errors import GeoscopeError
from geoscope.geo.sphere import haversine_km, offset_km


def _city(n_places: int = 400, views: int = 3, seed: int = 0) -> pd.DataFrame:
    """Places scattered over a 20 km square around London, ``views`` rows each."""
    rng = np.random.default_rng(seed)
    lat, lon = offset_km(51.5, -0.1, rng.uniform(-10, 10, n_places), rng.uniform(-10, 10, n_places))
    ids = [f"p{i:04d}" for i in range(n_places)]
    return pd.DataFrame({
        "image": [f"{p}_{v}.jpg" for p in ids for v in range(views)],
        "lat": np.repeat(lat, views),
        "lon": np.repeat(lon, views),
        "location_id": np.repeat(ids, views),
        "heading": np.tile(np.arange(views) * 90.0, n_places),
    })


def _single_split(frame: pd.DataFrame, keys: np.ndarray | pd.Series) -> bool:
    splits = pd.Series(frame["split"].to_numpy())
    return bool((splits.groupby(np.asarray(keys)).nunique() <= 1).all())


def test_location_split_keeps_places_whole_and_meets_fractions() -> None:
    frame = _city()
    out = split_manifest(frame, "location", val=0.15, test=0.2, seed=1)
    assert list(out.columns) == [*frame.columns, "split"]
    assert "split" not in frame  # the input is not modified
    assert _single_split(out, out["location_id"])
    shares = out["split"].value_counts(normalize=True)
    assert shares["test"] == pytest.approx(0.2, abs=0.01)
    assert shares["val"] == pytest.approx(0.15, abs=0.01)


def test_split_is_reproducible_with_a_seed() -> None:
    frame = _city()
    a = split_manifest(frame, "block", block_km=2, seed=7)["split"]
    b = split_manifest(frame.sample(frac=1, random_state=3), "block", block_km=2, seed=7)["split"]
    assert a.tolist() == b.sort_index().tolist()  # row order does not matter either
    assert a.tolist() != split_manifest(frame, "block", block_km=2, seed=8)["split"].tolist()


def test_block_split_keeps_blocks_whole() -> None:
    frame = _city()
    out = split_manifest(frame, "block", block_km=2.5, seed=0)
    assert _single_split(out, block_ids(out["lat"], out["lon"], 2.5))
    assert set(out["split"]) == {"train", "val", "test"}


def test_blocks_are_about_block_km_square_at_any_latitude() -> None:
    rng = np.random.default_rng(0)
    for lat0 in (0.0, 60.0):  # a degree of longitude is half as long at 60°
        lat, lon = rng.uniform(lat0, lat0 + 5, 3000), rng.uniform(10, 20, 3000)
        frame = pd.DataFrame({"lat": lat, "lon": lon, "block": block_ids(lat, lon, 100.0)})
        span = frame.groupby("block").agg(["min", "max"])
        tall = (span["lat", "max"] - span["lat", "min"]) * 111.195
        wide = (span["lon", "max"] - span["lon", "min"]) * 111.195 * np.cos(np.radians(lat0 + 5))
        assert tall.max() <= 100.0 and tall.median() > 90.0
        assert wide.max() <= 100.5 and wide.median() > 85.0


def test_places_merge_by_id_and_by_coordinates() -> None:
    frame = pd.DataFrame({
        "lat": [10.0, 10.0, 20.0, 30.0, 30.0],
        "lon": [10.0, 10.0, 20.0, 30.0, 30.0],
        "location_id": ["a", "b", "b", "c", None],  # a~b by coordinates, b spans two spots
    })
    groups = spatial_groups(frame)
    assert groups[0] == groups[1] == groups[2] != groups[3]
    assert groups[3] == groups[4]


def test_kfold_balanced_groups_whole_reproducible() -> None:
    frame = _city(n_places=500)
    folds = kfold(frame, 5, by="location", seed=3)
    assert folds.shape == (len(frame),) and set(folds) == set(range(5))
    assert np.bincount(folds).min() >= 0.95 * len(frame) / 5
    assert pd.Series(folds).groupby(frame["location_id"]).nunique().max() == 1
    assert np.array_equal(folds, kfold(frame, 5, by="location", seed=3))
    blocks = kfold(frame, 4, by="block", block_km=3, seed=0)
    assert pd.Series(blocks).groupby(block_ids(frame["lat"], frame["lon"], 3)).nunique().max() == 1


def test_fold_masks_with_a_gap() -> None:
    frame = _city()
    folds = kfold(frame, 5, by="block", block_km=2, seed=0)
    train, test = fold_masks(frame, folds, 0)
    assert (train ^ test).all()
    train, test = fold_masks(frame, folds, 0, gap_km=0.3)
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    d = haversine_km(lat[train][:, None], lon[train][:, None], lat[test][None], lon[test][None])
    assert d.min() > 0.3


def test_leakage_report_on_known_distances() -> None:
    frame = pd.DataFrame({
        "lat": [0.0, 0.0, 0.0, 0.0, 0.0],
        "lon": [0.0, 0.0002, 0.005, 1.0, 3.0],  # 22 m, 556 m, 111 km, 334 km from the first
        "location_id": ["a", "b", "c", "d", "a"],
        "split": ["train", "test", "test", "val", "test"],
    })
    report = leakage_report(frame)
    assert report["images"] == {"train": 1, "val": 1, "test": 3}
    assert report["nearest_train_test_km"] == pytest.approx(0.0222, abs=1e-3)
    assert report["test_within_km"] == {"0.05": 1, "1": 2}
    assert report["nearest_train_val_km"] == pytest.approx(111.2, abs=0.1)
    assert report["val_within_km"] == {"0.05": 0, "1": 0}
    assert report["test_places_in_train"] == 1


def test_gap_leaves_out_close_training_images() -> None:
    frame = _city()
    out = split_manifest(frame, "block", block_km=2, seed=0, gap_km=0.25)
    assert out["split"].isna().sum() > 0
    assert leakage_report(out)["nearest_train_test_km"] > 0.25


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"val": 0.5, "test": 0.5}, "leaves nothing to train on"),
        ({"val": -0.1}, "--val must be a fraction"),
        ({"test": float("nan")}, "--test must be a fraction"),
        ({"by": "city"}, "unknown grouping 'city'"),
        ({"by": "block", "block_km": 0}, "block size must be a positive"),
        ({"by": "block", "block_km": 50}, "too few to give"),
        ({"gap_km": -1}, "gap must be zero or a positive"),
        ({"gap_km": 100}, "a gap of 100 km leaves no training images"),
    ],
)
def test_bad_split_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(GeoscopeError, match=message):
        split_manifest(_city(n_places=50), **kwargs)


def test_bad_kfold_arguments() -> None:
    with pytest.raises(GeoscopeError, match="k ≥ 2"):
        kfold(_city(n_places=20), 1)
    with pytest.raises(GeoscopeError, match="too few for 30 folds"):
        kfold(_city(n_places=20), 30)
    lopsided = pd.DataFrame({"lat": [1.0] * 20 + [2.0, 3.0, 4.0, 5.0], "lon": 0.0})
    with pytest.raises(GeoscopeError, match="one place holds too many of the images to make 5"):
        kfold(lopsided, 5)
    with pytest.raises(GeoscopeError, match="no 'split' column"):
        leakage_report(_city(n_places=20))


# ---- the real data ----------------------------------------------------------------------


@pytest.mark.shared_data
def test_london_uk_blocks_leak_far_less_than_places() -> None:
    frame = read_manifest(shared_dataset("london-uk") / "manifest.csv", check_images=False).frame
    by_place = leakage_report(split_manifest(frame, "location", seed=0))
    by_block = split_manifest(frame, "block", block_km=1.0, seed=0)
    blocks = leakage_report(by_block)
    buffered = leakage_report(split_manifest(frame, "block", block_km=1.0, seed=0, gap_km=0.1))
    # by place, nearly every test image has a training image within 50 m (clustered panoramas)
    assert by_place["nearest_train_test_km"] < 0.005
    assert by_place["test_within_km"]["0.05"] > 0.9 * by_place["images"]["test"]
    assert by_place["test_places_in_train"] == 0
    # 1 km blocks: only the images at block edges keep a neighbour within 50 m ...
    assert _single_split(by_block, block_ids(frame["lat"], frame["lon"], 1.0))
    assert blocks["nearest_train_test_km"] > 0
    assert blocks["test_within_km"]["0.05"] < 0.1 * by_place["test_within_km"]["0.05"]
    # ... and a 100 m gap removes those: the nearest pair is far apart
    assert buffered["nearest_train_test_km"] > 0.1
    assert buffered["nearest_train_test_km"] > 50 * by_place["nearest_train_test_km"]
    assert buffered["test_within_km"]["0.05"] == 0
    assert buffered["images"]["train"] > 0.95 * blocks["images"]["train"]
    for report in (blocks, buffered):
        assert report["images"]["test"] == pytest.approx(0.1 * len(frame), rel=0.1)


@pytest.mark.shared_data
def test_us_west_views_of_a_place_never_cross_splits() -> None:
    frame = read_manifest(shared_dataset("us-west") / "manifest.csv", check_images=False).frame
    out = split_manifest(frame, "location", seed=0)
    assert _single_split(out, out["location_id"])
    assert out["split"].value_counts().to_dict() == {"train": 1895, "val": 237, "test": 237}
    assert leakage_report(out)["test_places_in_train"] == 0
    folds = kfold(frame, 5, by="location", seed=0)
    assert pd.Series(folds).groupby(frame["location_id"]).nunique().max() == 1
    assert np.bincount(folds).tolist() == pytest.approx([474] * 5, abs=2)
