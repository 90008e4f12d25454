"""data.importers: manifests from geotagged photos (real EXIF written here) and from any CSV."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_images
from PIL import ExifTags, Image
from PIL.TiffImagePlugin import IFDRational

from geoscope.data.importers import (
    _degrees,
    import_csv,
    import_folder,
    portable_path,
    read_exif_location,
)
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.errors import GeoscopeError, ManifestError


def _dms(value: float) -> tuple[IFDRational, IFDRational, IFDRational]:
    value = abs(value)
    degrees = int(value)
    minutes = int((value - degrees) * 60)
    seconds = round(((value - degrees) * 60 - minutes) * 60 * 10_000)
    return IFDRational(degrees, 1), IFDRational(minutes, 1), IFDRational(seconds, 10_000)


def write_geotagged(
    path: Path,
    lat: float | None,
    lon: float | None,
    *,
    heading: float | None = None,
    taken: str | None = None,
    extra_gps: dict | None = None,
) -> Path:
    """A small JPEG carrying real EXIF: GPS position (DMS rationals), direction, date taken."""
    exif = Image.Exif()
    gps: dict = {}
    if lat is not None and lon is not None:
        gps.update({1: "N" if lat >= 0 else "S", 2: _dms(lat), 3: "E" if lon >= 0 else "W",
                    4: _dms(lon)})
    if heading is not None:
        gps.update({16: "T", 17: IFDRational(round(heading * 100), 100)})
    gps.update(extra_gps or {})
    if gps:
        exif[ExifTags.IFD.GPSInfo] = gps
    if taken is not None:
        exif[ExifTags.IFD.Exif] = {ExifTags.Base.DateTimeOriginal: taken}
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 24), (120, 160, 200)).save(path, exif=exif, quality=90)
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Four geotagged photos (one per hemisphere quadrant, one nested), two without GPS, junk."""
    root = tmp_path / "photos"
    write_geotagged(root / "london.jpg", 51.5007, -0.1246, heading=270.5,
                    taken="2021:03:14 15:09:26")
    write_geotagged(root / "trip" / "sydney.JPG", -33.8568, 151.2153, taken="2019:11:02 08:00:00")
    write_geotagged(root / "trip" / "deeper" / "rio.jpeg", -22.9519, -43.2105)
    write_geotagged(root / "tokyo.jpg", 35.6586, 139.7454, heading=0.0)
    write_geotagged(root / "no_gps.jpg", None, None, taken="2020:01:01 00:00:00")
    write_geotagged(root / "trip" / "null_island.jpg", 0.0, 0.0)
    (root / "broken.jpg").write_bytes(b"not really a jpeg")
    (root / "notes.txt").write_text("not an image")
    write_geotagged(root / ".hidden" / "secret.jpg", 1.0, 1.0)
    return root


def test_import_folder_reads_gps_heading_and_date(photos: Path) -> None:
    frame, skipped = import_folder(photos)
    assert list(frame.columns) == ["image", "lat", "lon", "heading", "capture_date"]
    rows = frame.set_index("image")
    assert sorted(rows.index) == ["london.jpg", "tokyo.jpg", "trip/deeper/rio.jpeg",
                                  "trip/sydney.JPG"]
    assert rows.loc["london.jpg", ["lat", "lon"]].tolist() == pytest.approx([51.5007, -0.1246],
                                                                             abs=1e-6)
    assert rows.loc["trip/sydney.JPG", ["lat", "lon"]].tolist() == pytest.approx(
        [-33.8568, 151.2153], abs=1e-6)
    assert rows.loc["trip/deeper/rio.jpeg", ["lat", "lon"]].tolist() == pytest.approx(
        [-22.9519, -43.2105], abs=1e-6)
    assert rows.loc["london.jpg", "heading"] == pytest.approx(270.5)
    assert rows.loc["tokyo.jpg", "heading"] == 0.0
    assert pd.isna(rows.loc["trip/sydney.JPG", "heading"])
    assert rows.loc["london.jpg", "capture_date"] == "2021-03-14"
    assert rows.loc["trip/sydney.JPG", "capture_date"] == "2019-11-02"
    assert rows.loc["tokyo.jpg", "capture_date"] is None
    reasons = {p.relative_to(photos).as_posix(): r for p, r in skipped}
    assert set(reasons) == {"no_gps.jpg", "trip/null_island.jpg", "broken.jpg"}
    assert reasons["no_gps.jpg"] == "no GPS position in EXIF"
    assert "no fix" in reasons["trip/null_island.jpg"]
    assert reasons["broken.jpg"] == "not a readable image"


def test_paths_are_relative_to_the_output_manifest(photos: Path, tmp_path: Path) -> None:
    output = tmp_path / "datasets" / "mine" / "manifest.csv"
    frame, _ = import_folder(photos, output=output)
    assert "../../photos/london.jpg" in frame["image"].tolist()
    write_manifest(frame, output)
    manifest = read_manifest(output)  # every image resolves from the manifest's folder
    assert len(manifest) == 4 and manifest.image_paths[0].is_file()
    inside, _ = import_folder(photos, output=photos / "manifest.parquet")
    assert "trip/sydney.JPG" in inside["image"].tolist()


def test_import_folder_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(GeoscopeError, match="not a folder"):
        import_folder(tmp_path / "missing")


def test_void_fix_and_out_of_range(tmp_path: Path) -> None:
    void = write_geotagged(tmp_path / "void.jpg", 10.0, 10.0, extra_gps={9: "V"})
    with pytest.raises(GeoscopeError, match="void"):
        read_exif_location(void)
    far = write_geotagged(tmp_path / "far.jpg", 10.0, 10.0,
                          extra_gps={2: (IFDRational(95, 1), IFDRational(0, 1), IFDRational(0, 1))})
    with pytest.raises(GeoscopeError, match="out of range"):
        read_exif_location(far)


def test_refs_and_rational_forms() -> None:
    assert _degrees(((33, 1), (51, 1), (5445, 100))) == pytest.approx(33 + 51 / 60 + 54.45 / 3600)
    rationals = (IFDRational(151, 1), IFDRational(12, 1), IFDRational(305, 10))
    assert _degrees(rationals) == pytest.approx(151 + 12 / 60 + 30.5 / 3600)
    assert _degrees(12.5) == 12.5
    assert _degrees((IFDRational(1, 0), 0, 0)) != _degrees((IFDRational(1, 0), 0, 0))  # NaN


def test_bytes_refs(tmp_path: Path) -> None:
    path = write_geotagged(tmp_path / "b.jpg", 10.0, 20.0, extra_gps={1: b"S\x00", 3: b"W\x00"})
    found = read_exif_location(path)
    assert (found["lat"], found["lon"]) == pytest.approx((-10.0, -20.0))


def test_portable_path(tmp_path: Path) -> None:
    assert portable_path(tmp_path / "a" / "b.jpg", tmp_path) == "a/b.jpg"
    assert portable_path(tmp_path / "a" / "b.jpg", tmp_path / "c") == "../a/b.jpg"
    if os.name == "posix":  # only the root in common: keep it absolute
        assert portable_path("/srv/x.jpg", "/opt/m") == "/srv/x.jpg"


# ---- import_csv -------------------------------------------------------------------------


@pytest.fixture
def csv_dataset(tmp_path: Path) -> Path:
    make_images(tmp_path / "data" / "pics", 3)
    return tmp_path / "data"


def _csv(folder: Path, text: str, name: str = "points.csv") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_import_csv_autodetects_common_names(csv_dataset: Path) -> None:
    csv = _csv(csv_dataset, "id,File Name,Latitude,LNG,note\n"
                            "0007,pics/img_000.jpg,51.5,-0.1,a\n"
                            "0008,pics/img_001.jpg,-33.9,151.2,b\n")
    manifest = import_csv(csv)
    assert list(manifest.frame.columns) == ["id", "image", "lat", "lon", "note"]
    assert manifest.frame["image"].tolist() == ["pics/img_000.jpg", "pics/img_001.jpg"]
    assert manifest.frame["lat"].tolist() == [51.5, -33.9]
    assert manifest.root == csv_dataset.resolve()
    assert manifest.image_paths[1].is_file()


def test_import_csv_named_columns_root_and_output(csv_dataset: Path, tmp_path: Path) -> None:
    csv = _csv(tmp_path, "\ufeffpicture,y,x,image\n"  # BOM as Excel writes it
                         "img_000.jpg,51.5,-0.1,http://a\nimg_002.jpg,48.8,2.3,http://b\n")
    output = tmp_path / "out" / "manifest.csv"
    manifest = import_csv(csv, image_col="picture", lat_col="y", lon_col="x",
                          root=csv_dataset / "pics", output=output)
    assert manifest.frame["image"].tolist() == ["../data/pics/img_000.jpg",
                                                "../data/pics/img_002.jpg"]
    assert manifest.frame["original_image"].tolist() == ["http://a", "http://b"]
    write_manifest(manifest, output)
    assert len(read_manifest(output)) == 2


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("path,lat,long\npics/img_000.jpg,1,2\n", {"lat_col": "latitude"},
         "no column 'latitude' for the latitude (found: path, lat, long)"),
        ("path,north,east\npics/img_000.jpg,1,2\n", {},
         "no latitude column (found: path, north, east); name it with --lat-col"),
        ("image,file,lat,lon\npics/img_000.jpg,x,1,2\n", {},
         "several columns could be the image path (image, file); pick one with --image-col"),
        ("image,lat,lon\npics/img_000.jpg,1,2\npics/img_001.jpg,95,2\n", {},
         "lat outside [-90, 90] at row 3"),
        ("image,lat,lon\npics/img_000.jpg,1,2\npics/missing.jpg,1,2\n", {},
         "image file missing at row 3"),
        ("image,lat,lon\npics/img_000.jpg,1,2\npics/img_000.jpg,1,2\n", {},
         "duplicate image at row 3"),
        ('image,lat,lon\n"pics/img_000.jpg,1,2\n', {}, "cannot parse as a table"),
    ],
)
def test_import_csv_problems(csv_dataset: Path, text: str, kwargs: dict, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        import_csv(_csv(csv_dataset, text), **kwargs)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_import_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="CSV file not found"):
        import_csv(tmp_path / "nope.csv")
