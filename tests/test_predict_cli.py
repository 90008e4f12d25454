"""``geoscope predict``: the readable table, strict JSON, and resumable CSV / GeoJSON / JSONL outputs.

Runs the bundled default model on the example photos (real street-level images) and on
copies the tests make of them.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from geoscope.cli.main import main
from geoscope.outputs.batch import find_inputs
from geoscope.outputs.formats import (
    NON_FINITE,
    checked_record,
    feature_to_record,
    hierarchy_line,
    record_to_feature,
    render_table,
    strict_json,
)

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


def same_answers(a: object, b: object) -> bool:
    """Whether two answers agree: the same fields, names and order, numbers to float32's precision.

    An image's numbers depend a little on the other images of its batch (matrix products block
    their sums by the batch's shape), so a resumed run may differ from an uninterrupted one in
    the last digits printed.
    """
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_answers(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_answers(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4, abs_tol=2e-4)
    return type(a) is type(b) and a == b


def strict_loads(text: str) -> object:
    """json.loads that refuses NaN, Infinity and -Infinity."""
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def read_jsonl(path: Path) -> list[dict]:
    text = path.read_text("utf-8")
    assert text.endswith("\n")
    return [strict_loads(line) for line in text.splitlines()]


def check_geojson(path: Path) -> list[dict]:
    """The features of an RFC 7946 FeatureCollection of points (checked), as records."""
    document = strict_loads(path.read_text("utf-8"))
    assert document["type"] == "FeatureCollection" and "crs" not in document
    records = []
    for feature in document["features"]:
        assert feature["type"] == "Feature" and set(feature) == {"type", "geometry", "properties"}
        props = feature["properties"]
        assert {"image", "label", "place", "region", "country", "probability", "rank"} <= set(props) or props["error"]
        if feature["geometry"] is not None:
            lon, lat = feature["geometry"]["coordinates"]
            assert feature["geometry"]["type"] == "Point"
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            top = props["guesses"][0]
            assert (lon, lat) == (round(top["lon"], 6), round(top["lat"], 6))  # lon first
        records.append(feature_to_record(feature))
    return records


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of the eight example photos in two subfolders, with a text file and a hidden file beside them."""
    root = tmp_path_factory.mktemp("photos")
    for i, path in enumerate(EXAMPLES):
        folder = root / ("a" if i < 4 else "b")
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / path.name)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "b" / ".hidden.jpg").write_bytes(b"not even a jpeg")
    return root


@pytest.fixture(scope="module")
def reference(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Records of one uninterrupted run over the folder, by image."""
    out = tmp_path_factory.mktemp("reference") / "all.jsonl"
    assert main(["predict", str(photos), "-o", str(out), "--top-k", "3"]) == 0
    return {r["image"]: r for r in read_jsonl(out)}


def test_folder_to_jsonl_recurses_and_counts_what_it_skips(photos: Path, reference: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["predict", str(photos), "-o", str(out), "--top-k", "3"]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 non-image file " in err
    records = read_jsonl(out)
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in photos.rglob("[!.]*.jpg"))
    assert all(len(r["guesses"]) == 3 and not r.get("error") for r in records)
    assert records == [reference[r["image"]] for r in records]  # same answers as any other run, same batches


@pytest.mark.parametrize("suffix", ["jsonl", "csv", "geojson"])
def test_a_stopped_run_continues_without_duplicates(photos: Path, reference: dict, tmp_path: Path, suffix: str,
                                                    capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / f"out.{suffix}"
    command = ["predict", str(photos), "-o", str(out), "--top-k", "3", "--chunk-size", "2"]
    assert main([*command, "--limit", "3"]) == 0
    assert "rerun the same command to continue" in capsys.readouterr().err
    assert len(images_in(out)) == 3
    if suffix == "geojson":
        assert (tmp_path / "out.geojson.journal.jsonl").is_file()  # the run is not finished
    assert main(command) == 0
    assert "3 already in" in capsys.readouterr().err
    images = images_in(out)
    assert sorted(images) == sorted(reference) and len(set(images)) == len(images)
    assert not (tmp_path / "out.geojson.journal.jsonl").exists()
    assert main(command) == 0  # a third run: nothing to do, nothing changes
    assert sorted(images_in(out)) == sorted(images)


def images_in(path: Path) -> list[str]:
    if path.suffix == ".jsonl":
        return [r["image"] for r in read_jsonl(path)]
    if path.suffix == ".geojson":
        return [r["image"] for r in check_geojson(path)]
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return [row["image"] for row in csv.DictReader(handle)]


def test_a_cut_last_line_is_dropped_and_answered_again(photos: Path, reference: dict, tmp_path: Path) -> None:
    journal = tmp_path / "out.geojson.journal.jsonl"
    done = list(reference.values())[:2]
    cut = strict_json(list(reference.values())[2])[:40]  # a kill in the middle of a write
    journal.write_text("".join(strict_json(r) + "\n" for r in done) + cut, encoding="utf-8")
    assert main(["predict", str(photos), "-o", str(tmp_path / "out.geojson"), "--top-k", "3"]) == 0
    records = check_geojson(tmp_path / "out.geojson")
    assert sorted(r["image"] for r in records) == sorted(reference)
    assert same_answers({r["image"]: r for r in records}, {k: {"in_coverage": None, **r} for k, r in reference.items()})

    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text("".join(strict_json(r) + "\n" for r in done) + cut, encoding="utf-8")
    assert main(["predict", str(photos), "-o", str(jsonl), "--top-k", "3"]) == 0
    assert sorted(r["image"] for r in read_jsonl(jsonl)) == sorted(reference)


def test_csv_is_one_row_per_image_with_the_top_guess_first(photos: Path, reference: dict, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.csv"
    assert main(["predict", str(photos), "-o", str(out), "--top-k", "3"]) == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 names right
    with open(out, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(reference)
    for row in rows:
        record = reference[row["image"]]
        top, third = record["guesses"][0], record["guesses"][2]
        assert row["label"] == top["label"] and float(row["probability"]) == top["probability"]
        assert (float(row["lat"]), float(row["lon"])) == (top["lat"], top["lon"])
        assert row["label_3"] == third["label"] and "label_4" not in row
    capsys.readouterr()
    assert main(["predict", str(photos), "-o", str(out), "--top-k", "5"]) == 2  # the file holds 3 guesses
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--top-k 3" in errors[0]


def test_views_write_one_row_per_place(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "places.jsonl"
    assert main(["predict", str(photos / "a"), str(photos / "b"), "--views", "-o", str(out)]) == 0
    records = read_jsonl(out)
    assert len(records) == 2
    for record, folder in zip(records, ("a", "b"), strict=True):
        assert len(record["views"]) == 4 and all(Path(v).parent.name == folder for v in record["views"])


def test_json_is_strict_and_a_non_finite_answer_becomes_an_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", *map(str, EXAMPLES[:2]), "--json", "--top-k", "2"]) == 0
    answer = strict_loads(capsys.readouterr().out)
    assert [a["image"] for a in answer] == [str(p) for p in EXAMPLES[:2]]
    record = {"image": "x.jpg", "guesses": [{"lat": 1.0, "lon": 2.0, "label": "A", "probability": math.nan}]}
    with pytest.raises(ValueError):
        strict_json(record)
    checked = checked_record(record)
    assert checked["error"] == f"x.jpg: {NON_FINITE}" and strict_loads(strict_json(checked))["guesses"] == []
    assert render_table(checked).count("not answered") == 1


def test_table_never_cuts_a_name_and_shows_hierarchy_coverage_and_confidence() -> None:
    long = "Saint-Rémy-de-Provence-sur-la-Longue-Rivière, Provence-Alpes-Côte d'Azur, France"
    record = {
        "image": "photo.jpg", "in_coverage": False, "coverage_score": 0.2,
        "confidence": {"200": 0.83, "25": 0.41, "750": 0.95},
        "levels": {"country": [{"name": "United Kingdom", "probability": 0.97}],
                   "region": [{"name": "England, United Kingdom", "probability": 0.97}]},
        "guesses": [{"lat": 51.37, "lon": -0.1, "label": "Croydon, England, United Kingdom", "place": "Croydon",
                     "region": "England", "country": "United Kingdom", "probability": 0.12},
                    {"lat": 43.79, "lon": 4.83, "label": long, "probability": 0.004}],
    }
    lines = render_table(record).splitlines()
    assert lines[0] == "photo.jpg"
    assert "  United Kingdom 97 % → England 97 % → Croydon 12 %" in lines
    assert any("outside what this model knows" in line for line in lines)
    assert "P(within 25 km) 41 % · 200 km 83 % · 750 km 95 %" in [line.strip() for line in lines]
    rows = [line for line in lines if line.lstrip().startswith(("1 ", "2 "))]
    assert long in rows[1] and "Croydon, England, United Kingdom" in rows[0]
    assert rows[0].index("51.3700") + len("51.3700") == rows[1].index("43.7900") + len("43.7900")  # aligned
    assert not any("best single answer" in line for line in lines)  # the first is also the most probable
    record["guesses"][1]["probability"] = 0.2  # a best guess less probable than the next: the table says why
    assert any(line.strip().startswith("#1 is the best single answer") for line in render_table(record).splitlines())


def test_the_hierarchy_line_follows_the_first_guess_down_its_own_region() -> None:
    """The best single answer need not lie in the likeliest region: the path never jumps between branches."""
    record = {"image": "photo.jpg",
              "levels": {"country": [{"name": "Croatia", "probability": 1.0}],
                         "region": [{"name": "Sibensko-Kninska, Croatia", "probability": 0.14},
                                    {"name": "Sisacko-Moslavacka, Croatia", "probability": 0.09}]},
              "guesses": [{"lat": 45.75, "lon": 16.43, "label": "Kutina, Sisacko-Moslavacka, Croatia",
                           "place": "Ivanić-Grad", "region": "Zagrebacka", "country": "Croatia", "probability": 0.09}]}
    assert hierarchy_line(record) == "Croatia 100 % → Sisacko-Moslavacka 9.0 % → Kutina 9.0 %"
    record["guesses"][0]["label"] = "Knin, Sibensko-Kninska, Croatia"
    assert hierarchy_line(record) == "Croatia 100 % → Sibensko-Kninska 14 % → Knin 9.0 %"
    record["guesses"][0]["label"] = "Zadar, Zadarska, Croatia"  # its region is not among those listed: left out
    assert hierarchy_line(record) == "Croatia 100 % → Zadar, Zadarska 9.0 %"
    record["guesses"][0]["label"] = "Sibensko-Kninska, Croatia"  # --level region: the path ends at the guess
    assert hierarchy_line(record) == "Croatia 100 % → Sibensko-Kninska 14 %"
    record["guesses"][0]["label"] = "Croatia"  # --level country
    assert hierarchy_line(record) == "Croatia 100 %"


def test_table_names_where_a_refined_guess_points_and_the_area_it_was_guessed_in() -> None:
    london = "London, England, United Kingdom"
    record = {"image": "photo.jpg", "guesses": [
        {"lat": 51.29, "lon": -0.37, "label": london, "place": "Leatherhead", "region": "England",
         "country": "United Kingdom", "probability": 0.6},
        {"lat": 51.29, "lon": -0.24, "label": "Sutton, England, United Kingdom", "place": "Sutton",
         "region": "England", "country": "United Kingdom", "probability": 0.3}]}
    header, moved, kept = render_table(record).splitlines()[-3:]
    assert header.rstrip().endswith("in the area of")
    assert moved.split()[1] == "Leatherhead," and moved.rstrip().endswith(london)
    assert kept.split()[1] == "Sutton," and kept.rstrip().endswith("%")  # not moved: no area beside it
    for guess in record["guesses"]:
        guess["place"] = guess["label"].split(", ")[0]  # nothing moved: the plain table
    assert "in the area of" not in render_table(record) and "Leatherhead" not in render_table(record)


def test_table_of_real_photos_shows_every_label_in_full(capsys: pytest.CaptureFixture) -> None:
    paths = [str(p) for p in EXAMPLES]
    assert main(["predict", *paths, "--json", "--top-k", "5"]) == 0
    answers = strict_loads(capsys.readouterr().out)
    assert main(["predict", *paths, "--top-k", "5", "--level", "place"]) == 0
    table = capsys.readouterr().out
    sections = {block.splitlines()[0]: block.splitlines() for block in table.strip().split("\n\n")}
    assert sorted(sections) == sorted(answer["image"] for answer in answers)
    for answer in answers:
        lines = sections[answer["image"]]
        for rank, guess in enumerate(answer["guesses"], start=1):
            row = next(line for line in lines if line.split()[0] == str(rank))
            assert f"  {guess['lat']:.4f}  " in row
            assert f"  {guess['label']}" in row and f"  {guess['place']}" in row  # the area and the point, in full


def test_geojson_round_trips_a_record() -> None:
    record = {"image": "a.jpg", "views": ["a.jpg", "b.jpg"], "in_coverage": True, "confidence": {"25": 0.5},
              "guesses": [{"lat": 45.1, "lon": 15.2, "label": "Zagreb, Croatia", "place": "Zagreb", "region": None,
                           "country": "Croatia", "probability": 0.6},
                          {"lat": 45.5, "lon": 16.7, "label": "Sesvete", "probability": 0.1}],
              "warnings": ["answered from 2 of 3 views"]}
    feature = record_to_feature(record)
    assert feature["geometry"] == {"type": "Point", "coordinates": [15.2, 45.1]}
    assert feature["properties"]["label"] == "Zagreb, Croatia" and feature["properties"]["rank"] == 1
    assert feature_to_record(feature) == record
    failed = {"image": "bad.jpg", "guesses": [], "error": "bad.jpg: not an image file"}
    assert record_to_feature(failed)["geometry"] is None and feature_to_record(record_to_feature(failed)) == failed


def test_a_16_bit_png_is_answered_like_its_8_bit_twin(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gray = np.asarray(Image.open(EXAMPLES[4]).convert("L"))
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(np.full(gray.shape, 255, np.uint8)).save(tmp_path / "white.png")
    assert main(["predict", *(str(tmp_path / f"{n}.png") for n in ("eight", "sixteen", "white")), "--json"]) == 0
    eight, sixteen, white = strict_loads(capsys.readouterr().out)
    assert [g["label"] for g in sixteen["guesses"]] == [g["label"] for g in eight["guesses"]]
    assert np.allclose([g["probability"] for g in sixteen["guesses"]],
                       [g["probability"] for g in eight["guesses"]], atol=1e-4)
    assert [g["probability"] for g in white["guesses"]] != [g["probability"] for g in sixteen["guesses"]]


@pytest.mark.parametrize("case", ["bad suffix", "not ours", "no images"])
def test_bad_requests_get_one_line_and_touch_nothing(case: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("image,lat,lon\na.jpg,1,2\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no photos here")
    args = {"bad suffix": [str(EXAMPLES[0]), "-o", str(tmp_path / "out.xlsx")],
            "not ours": [str(EXAMPLES[0]), "-o", str(manifest)],
            "no images": [str(tmp_path / "empty"), "-o", str(tmp_path / "out.csv")]}[case]
    assert main(["predict", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("geoscope: error:")]
    assert len(err) == 1 and "Traceback" not in err[0]
    assert manifest.read_text() == "image,lat,lon\na.jpg,1,2\n"
    assert not (tmp_path / "out.xlsx").exists() and not (tmp_path / "out.csv").exists()


def test_a_place_with_an_unreadable_view_is_answered_only_when_allowed(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(EXAMPLES[0].read_bytes()[:300])
    views = [str(EXAMPLES[0]), str(broken), str(EXAMPLES[1])]
    assert main(["predict", *views, "--views", "--json"]) == 2
    captured = capsys.readouterr()
    (refused,) = strict_loads(captured.out)
    assert refused["guesses"] == [] and "broken.jpg" in refused["error"]
    assert "broken.jpg" in captured.err
    assert main(["predict", *views, "--views", "--allow-missing-views"]) == 0
    table = capsys.readouterr().out
    assert "warning: answered from 2 of 3 views" in table and "broken.jpg" in table


def test_inputs_keep_the_order_given_and_are_answered_once(photos: Path) -> None:
    first = str(photos / "b" / EXAMPLES[5].name)
    inputs = find_inputs([first, str(photos), first])
    keys = [u.key for u in inputs.units]
    assert keys[0] == first and len(keys) == len(set(keys)) == 8 and inputs.skipped == 1
    a0, a1 = (str(photos / "a" / p.name) for p in EXAMPLES[:2])
    places = find_inputs([a0, str(photos / "b"), a1], views=True).units
    assert [len(u.paths) for u in places] == [2, 4] and places[0].paths[1].endswith(EXAMPLES[1].name)
