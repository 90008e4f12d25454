"""data.manifest: the real manifests read unchanged, one clear message per problem, safe writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import make_images, shared_dataset

from geoscope.data.manifest import Manifest, place_ids, read_manifest, summarize, write_manifest
from geoscope.errors import GeoscopeError, ManifestError
from geoscope.fileio import atomic_open

SHARED = {  # name: (images, places)
    "london-uk": (4778, 4778),
    "london-on": (4665, 4665),
    "us-west": (2369, 790),
    "croatia": (1224, 306),
}


@pytest.mark.shared_data
@pytest.mark.parametrize("name", sorted(SHARED))
def test_reads_every_shared_manifest_unchanged(name: str) -> None:
    folder = shared_dataset(name)
    raw = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    manifest = read_manifest(folder / "manifest.csv")
    frame = manifest.frame
    assert list(frame.columns) == list(raw.columns)
    assert (len(frame), manifest.place_ids.nunique()) == SHARED[name]
    assert frame["image"].tolist() == raw["image"].tolist()
    assert frame["location_id"].tolist() == raw["location_id"].tolist()  # "0000" stays a string
    np.testing.assert_array_equal(frame["lat"].to_numpy(), raw["lat"].astype(float).to_numpy())
    np.testing.assert_array_equal(frame["lon"].to_numpy(), raw["lon"].astype(float).to_numpy())
    assert manifest.root == folder.resolve()
    assert all(p.is_file() for p in manifest.image_paths[:20])


def _write(folder: Path, text: str, images: int = 3) -> Path:
    make_images(folder / "images", images)
    path = folder / "manifest.csv"
    path.write_text(text)
    return path


def _problem(path: Path) -> str:
    with pytest.raises(ManifestError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


GOOD = "image,lat,lon\nimages/img_000.jpg,51.5,-0.1\nimages/img_001.jpg,48.8,2.3\n"


def test_valid_small_manifest(tmp_path: Path) -> None:
    manifest = read_manifest(_write(tmp_path, GOOD))
    assert len(manifest) == 2
    assert manifest.image_paths[0] == tmp_path.resolve() / "images/img_000.jpg"
    assert summarize(manifest)["views_per_place"] == {"1": 2}


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")


def test_missing_column_names_it_and_lists_found(tmp_path: Path) -> None:
    message = _problem(_write(tmp_path, "image,latitude,lon\nimages/img_000.jpg,1,2\n"))
    assert "missing column 'lat'" in message and "found: image, latitude, lon" in message


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ("images/img_001.jpg,90.5,2", "lat outside [-90, 90] at row 3 (e.g. 90.5)"),
        ("images/img_001.jpg,-91,2", "lat outside [-90, 90] at row 3"),
        ("images/img_001.jpg,1,180.01", "lon outside [-180, 180] at row 3 (e.g. 180.01)"),
        ("images/img_001.jpg,,2", "lat is empty or not a number at row 3"),
        ("images/img_001.jpg,1,NaN", "lon is empty or not a number at row 3"),
        ("images/img_001.jpg,1,east", "lon is empty or not a number at row 3"),
        ("images/gone.jpg,1,2", "image file missing at row 3"),
        ("images/img_000.jpg,1,2", "duplicate image at row 3 (images/img_000.jpg)"),
        ("./images/img_000.jpg,1,2", "duplicate image at row 3"),
        (",1,2", "image path is empty at row 3"),
    ],
)
def test_each_problem_names_its_row(tmp_path: Path, row: str, expected: str) -> None:
    message = _problem(_write(tmp_path, f"image,lat,lon\nimages/img_000.jpg,1,2\n{row}\n"))
    assert expected in message
    assert message.count(";") == 0  # exactly one problem


def test_bad_split_value(tmp_path: Path) -> None:
    text = "image,lat,lon,split\nimages/img_000.jpg,1,2,train\nimages/img_001.jpg,1,2,training\n"
    assert "split must be one of train, val, test at row 3" in _problem(_write(tmp_path, text))


def test_one_message_per_problem_and_rows_capped(tmp_path: Path) -> None:
    rows = "".join(f"images/img_000.jpg,{95 + i},2\n" for i in range(8))
    message = _problem(_write(tmp_path, f"image,lat,lon\n{rows}"))
    problems = message.split(": ", 1)[1].split("; ")
    assert len(problems) == 2  # out of range, duplicate
    assert "rows 2, 3, 4, 5, 6 and 3 more" in problems[0]
    assert problems[1].startswith("duplicate image at rows 3, 4, 5, 6, 7 and 2 more")


@pytest.mark.parametrize(
    "text",
    [
        'image,lat,lon\nimages/img_000.jpg,1,2\n"unterminated,3,4\n',
        "image,lat,lon\nimages/img_000.jpg,1,2,3,4\nimages/img_001.jpg,1,2,3,4,5,6\n",
        "",
    ],
)
def test_unparsable_csv(tmp_path: Path, text: str) -> None:
    assert "cannot parse as a table" in _problem(_write(tmp_path, text))


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    path.write_bytes(bytes(range(256)) * 8)
    assert "cannot parse as a table" in _problem(path)


def test_no_rows(tmp_path: Path) -> None:
    assert "no rows" in _problem(_write(tmp_path, "image,lat,lon\n"))


def test_check_images_off(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("image,lat,lon\nnowhere.jpg,1,2\n")
    assert len(read_manifest(path, check_images=False)) == 1


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "image": ["images/img_000.jpg", "images/img_001.jpg", "images/img_002.jpg"],
        "lat": [51.5, 51.5, -33.86],
        "lon": [-0.1, -0.1, 151.2],
        "location_id": ["0007", "0007", "x"],
        "heading": [0.0, 90.0, np.nan],
        "capture_date": ["2021-03", None, "2019-11"],
        "split": ["train", "train", None],
        "grid_cell": [3, 3, 7],
    })


def _plain(frame: pd.DataFrame) -> pd.DataFrame:
    """Values only: object columns with None for missing, whatever the string dtype."""
    return frame.astype(object).where(frame.notna(), None)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    make_images(tmp_path / "images", 3)
    frame = _frame()
    path = write_manifest(Manifest(frame, tmp_path), tmp_path / f"manifest{suffix}")
    back = read_manifest(path)
    pd.testing.assert_frame_equal(_plain(back.frame), _plain(frame), check_dtype=False)
    assert back.place_ids.tolist() == ["0007", "0007", "x"]
    assert len(back.split("train")) == 2 and len(back.split("test")) == 0


def test_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 3)
    path = write_manifest(_frame(), tmp_path / "manifest.parquet")
    before = path.read_bytes()
    unwritable = _frame().assign(grid_cell=[object(), 1, "a"])  # pyarrow cannot store this
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow raises
        write_manifest(unwritable, path)
    with pytest.raises(RuntimeError), atomic_open(path) as handle:  # fails half-way through
        handle.write(b"image,lat")
        raise RuntimeError("disk full")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "manifest.parquet"]
    assert len(read_manifest(path)) == 3


def test_place_ids_fall_back_to_coordinates() -> None:
    frame = _frame().drop(columns="location_id")
    ids = place_ids(frame)
    assert ids[0] == ids[1] != ids[2]
    frame["location_id"] = ["a", None, "b"]  # incomplete ids: coordinates decide
    assert place_ids(frame)[0] == place_ids(frame)[1]


def test_split_without_split_column() -> None:
    with pytest.raises(GeoscopeError, match="geoscope data split"):
        Manifest(_frame().drop(columns="split"), Path(".")).split("train")
