"""Dataset cards: every manifest geoscope writes says where its images came from, and derived
manifests carry their parent's provenance forward; their image paths stay relative and normalised."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_images
from fake_providers import SV_KEY, FakeProviders
from test_fetch import make_plan, run_fetch
from test_importers import write_geotagged

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest
from geoscope.data.provenance import card_paths, read_dataset_card


def _geoscope(capsys: pytest.CaptureFixture[str], *argv: object) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_import_split_labels_carry_provenance_forward(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos = tmp_path / "photos"
    for i in range(6):
        write_geotagged(photos / f"p{i}.jpg", 51.40 + 0.02 * i, -0.20 + 0.03 * i)
    write_geotagged(photos / "no-gps.jpg", None, None)
    manifest = tmp_path / "trip" / "manifest.csv"
    _geoscope(capsys, "data", "import-folder", photos, "-o", manifest)

    card, record_path = card_paths(manifest)
    assert (card.name, record_path.name) == ("DATASET.md", "dataset.json")
    record = read_dataset_card(manifest)
    assert record == json.loads(record_path.read_text())
    (source,) = record["sources"]
    assert source["kind"] == "folder" and source["location"] == str(photos.absolute())
    assert (source["images_found"], source["without_gps"]) == (7, 1)
    assert "consent" in source["terms"]
    assert (record["images"], record["places"]) == (6, 6)
    assert record["bbox"]["min_lat"] == pytest.approx(51.40) and record["bbox"]["max_lon"] == pytest.approx(-0.05)
    assert set(record["columns"]) == {"image", "lat", "lon", "heading", "capture_date"}
    assert [s["step"] for s in record["steps"]] == ["import-folder"]
    text = card.read_text()
    assert str(photos.absolute()) in text and "6 images at 6 places" in text and "| `lat` |" in text

    split = tmp_path / "splits" / "split.csv"
    _geoscope(capsys, "data", "split", manifest, "--val", "0.2", "--test", "0.2", "-o", split)
    derived = read_dataset_card(split)
    assert card_paths(split)[0].name == "split.DATASET.md"
    assert derived["sources"] == record["sources"]
    assert [s["step"] for s in derived["steps"]] == ["import-folder", "split"]
    assert derived["steps"][1]["manifest"] == "split.csv" and derived["steps"][1]["seed"] == 0
    assert sum(derived["splits"].values()) == 6
    assert read_dataset_card(manifest) == record  # the parent's card is left as it was

    labelled = tmp_path / "elsewhere" / "deeper" / "labelled.csv"
    _geoscope(capsys, "labels", "grid", split, "--cell-km", "5", "-o", labelled)
    frame = pd.read_csv(labelled)
    assert frame["image"].tolist() == [f"../../photos/p{i}.jpg" for i in range(6)]  # relative, no a/../b
    assert len(read_manifest(labelled)) == 6
    steps = read_dataset_card(labelled)["steps"]
    assert [s["step"] for s in steps] == ["import-folder", "split", "labels grid"]
    assert steps[-1]["labels"] == {"kind": "grid", "cell_km": 5.0} and steps[-1]["labelled"] == 6


def test_import_csv_and_a_hand_made_parent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_images(tmp_path / "pics", 2)
    csv = tmp_path / "points.csv"
    csv.write_text("file,latitude,longitude\npics/img_000.jpg,51.5,-0.1\npics/img_001.jpg,48.8,2.3\n")
    out = tmp_path / "data" / "manifest.csv"
    _geoscope(capsys, "data", "import-csv", csv, "-o", out)
    record = read_dataset_card(out)
    assert record["sources"][0]["kind"] == "csv" and record["sources"][0]["location"] == str(csv.absolute())
    assert record["images"] == 2 and "whoever made the CSV" in record["sources"][0]["terms"]

    hand = tmp_path / "hand.csv"  # a manifest geoscope did not write: its derivative says so
    hand.write_text("image,lat,lon\npics/img_000.jpg,51.5,-0.1\npics/img_001.jpg,48.8,2.3\n")
    assert read_dataset_card(hand) is None
    _geoscope(capsys, "labels", "grid", hand, "-o", tmp_path / "lab.csv")
    (source,) = read_dataset_card(tmp_path / "lab.csv")["sources"]
    assert source["kind"] == "manifest" and source["location"] == str(hand.absolute())


def test_fetch_writes_the_providers_terms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", SV_KEY)
    with FakeProviders() as fp:
        plan = make_plan(tmp_path / "plan.csv", fp, n=6)["plan"]
        result = run_fetch(plan, tmp_path / "out", fp)
        url = fp.sv_url
    record = read_dataset_card(result.manifest)
    (source,) = record["sources"]
    assert source["kind"] == "streetview" and "Google Maps Platform Terms" in source["terms"]
    assert source["location"] == url and source["plan"] == str(plan.absolute())
    assert source["settings"]["headings"] == [0.0, 90.0, 180.0]
    assert record["images"] == result.images and "source_id" in record["columns"]
    card = card_paths(result.manifest)[0].read_text()
    assert "Google Maps Platform Terms" in card and SV_KEY not in card
