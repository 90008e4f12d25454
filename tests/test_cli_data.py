"""``geoscope data check | import-folder | import-csv | split`` end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, make_images, shared_dataset
from test_importers import write_geotagged

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["data", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.shared_data
def test_check_us_west(capsys: pytest.CaptureFixture[str]) -> None:
    path = shared_dataset("us-west") / "manifest.csv"
    code, out, err = _run(capsys, "check", path)
    assert (code, err) == (0, "")
    assert "images   2,369" in out
    assert "places   790  (1 with 2 views, 789 with 3 views)" in out
    assert "headings 0°, 90°, 180°" in out
    code, out, _ = _run(capsys, "check", path, "--json")
    summary = json.loads(out)
    assert (summary["images"], summary["places"]) == (2369, 790)
    assert summary["views_per_place"] == {"2": 1, "3": 789}


def _cli(*argv: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run([sys.executable, "-m", "geoscope.cli.main", "data", *argv],
                          capture_output=True, text=True, env=env, timeout=60)


BAD = {
    "missing-file": (None, "manifest not found"),
    "missing-column": ("image,lat\nimages/img_000.jpg,1\n", "missing column 'lon'"),
    "out-of-range": ("image,lat,lon\nimages/img_000.jpg,1,2\nimages/img_001.jpg,1,200\n",
                     "lon outside [-180, 180] at row 3"),
    "corrupt": ('image,lat,lon\nimages/img_000.jpg,1,2,9,9\n"open quote\n', "cannot parse"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_manifest_exits_2_with_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    make_images(tmp_path / "images", 2)
    path = tmp_path / "manifest.csv"
    if text is not None:
        path.write_text(text)
    result = _cli("check", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("geoscope: error: ") and result.stderr.count("\n") == 1
    assert expected in result.stderr and "Traceback" not in result.stderr


def test_split_error_exits_2(tmp_path: Path) -> None:
    make_images(tmp_path / "images", 2)
    path = tmp_path / "manifest.csv"
    path.write_text("image,lat,lon\nimages/img_000.jpg,1,2\nimages/img_001.jpg,3,4\n")
    result = _cli("split", str(path), "--val", "0.6", "--test", "0.5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == "geoscope: error: val + test = 1.1 leaves nothing to train on; " \
                            "keep it below 1\n"


def test_import_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    write_geotagged(photos / "a.jpg", 51.5, -0.12, heading=45.0, taken="2022:06:01 10:00:00")
    write_geotagged(photos / "sub" / "b.jpg", 48.85, 2.35)
    write_geotagged(photos / "sub" / "plain.jpg", None, None)
    output = photos / "manifest.csv"
    code, out, err = _run(capsys, "import-folder", photos, "-o", output)
    assert (code, err) == (0, "")
    assert f"wrote {output}: 2 of 3 images with GPS, 1 left out" in out
    assert f"  {Path('sub/plain.jpg')}: no GPS position in EXIF" in out
    manifest = read_manifest(output)
    assert manifest.frame["image"].tolist() == ["a.jpg", "sub/b.jpg"]
    assert manifest.frame["capture_date"].tolist() == ["2022-06-01", None]


def test_import_folder_without_gps(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_geotagged(tmp_path / "plain.jpg", None, None)
    code, _, err = _run(capsys, "import-folder", tmp_path, "-o", tmp_path / "m.csv")
    assert code == 2
    assert "none of the 1 images has a usable EXIF GPS position" in err
    code, _, err = _run(capsys, "import-folder", tmp_path / "empty", "-o", tmp_path / "m.csv")
    assert (code, err) == (2, f"geoscope: error: {tmp_path / 'empty'}: not a folder\n")
    assert not (tmp_path / "m.csv").exists()


def test_import_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "pics", 2)
    csv = tmp_path / "points.csv"
    csv.write_text("photo,Y,X,label\npics/img_000.jpg,51.5,-0.1,uk\npics/img_001.jpg,48.8,2.3,fr\n")
    output = tmp_path / "out" / "manifest.parquet"
    code, out, err = _run(capsys, "import-csv", csv, "-o", output, "--image-col", "photo",
                          "--lat-col", "Y", "--lon-col", "X")
    assert (code, err) == (0, "")
    assert "2 images at 2 places" in out
    frame = read_manifest(output).frame
    assert frame.columns.tolist() == ["image", "lat", "lon", "label"]
    assert frame["image"].tolist() == ["../pics/img_000.jpg", "../pics/img_001.jpg"]
    code, _, err = _run(capsys, "import-csv", csv, "-o", output)
    assert code == 2 and "no image path column" in err and "--image-col" in err


def _small_city(folder: Path, n: int = 60) -> Path:
    make_images(folder / "images", n, size=(8, 8))
    frame = pd.DataFrame({
        "image": [f"images/img_{i:03d}.jpg" for i in range(n)],
        "lat": [51.4 + 0.01 * (i // 2 % 10) for i in range(n)],  # places on a ~1 km grid
        "lon": [-0.2 + 0.015 * (i // 20) for i in range(n)],
        "location_id": [f"{i // 2:04d}" for i in range(n)],  # two views per place
        "season": ["spring", "fall"] * (n // 2),
    })
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


def test_split_in_place_keeps_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _small_city(tmp_path)
    code, out, err = _run(capsys, "split", path, "--val", "0.2", "--test", "0.2", "--seed", "4")
    assert (code, err) == (0, "")
    assert f"wrote {path}: split by place, seed 4" in out and "nearest" in out
    frame = read_manifest(path).frame
    assert frame.columns.tolist() == ["image", "lat", "lon", "location_id", "season", "split"]
    assert frame["location_id"].iloc[0] == "0000"
    assert frame.groupby("location_id")["split"].nunique().max() == 1
    assert frame["split"].value_counts().to_dict() == {"train": 36, "val": 12, "test": 12}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["DATASET.md", "dataset.json", "images", "manifest.csv"]


def test_split_blocks_to_other_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _small_city(tmp_path)
    before = path.read_bytes()
    output = tmp_path / "splits" / "blocks.csv"
    code, out, _ = _run(capsys, "split", path, "--by", "block", "--block-km", "2",
                        "--seed", "1", "-o", output, "--json")
    assert code == 0 and path.read_bytes() == before
    report = json.loads(out)
    assert sum(s["images"] for s in report["sizes"].values()) == 60
    assert report["leakage"]["nearest_train_test_km"] > 0.5
    manifest = read_manifest(output)  # image paths now relative to the new folder
    assert manifest.frame["image"].iloc[0] == "../images/img_000.jpg"


@pytest.mark.shared_data
def test_split_london_uk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = shared_dataset("london-uk")
    (tmp_path / "manifest.csv").write_bytes((source / "manifest.csv").read_bytes())
    (tmp_path / "images").symlink_to(source / "images")
    code, out, _ = _run(capsys, "split", tmp_path / "manifest.csv", "--by", "block",
                        "--block-km", "1", "--gap-km", "0.1")
    assert code == 0
    assert "left out" in out and "0 images within 50 m" in out
    assert len(read_manifest(tmp_path / "manifest.csv").split("test")) > 400
