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
from conftest import REPO, same_answers
from PIL import Image

from geoscope.cli.main import main
from geoscope.outputs.batch import find_inputs
from geoscope.outputs.formats import (
    NON_FINITE,
    checked_record,
    feature_to_record,
    hierarchy_line,
    percent,
    record_to_feature,
    render_table,
    strict_json,
)

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


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
        assert {"image", "name", "label", "place", "region", "country", "probability"} <= set(props) or props["error"]
        if feature["geometry"] is not None:
            lon, lat = feature["geometry"]["coordinates"]
            assert feature["geometry"]["type"] == "Point"
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            answer = props["answer"]
            assert (lon, lat) == (round(answer["lon"], 6), round(answer["lat"], 6))  # lon first, at the answer
            assert props["name"] == answer["name"]
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
    assert same_answers(records, [reference[r["image"]] for r in records])  # as any other run, to float32


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


def test_csv_is_one_row_per_image_with_the_answer_first(photos: Path, reference: dict, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out.csv"
    assert main(["predict", str(photos), "-o", str(out), "--top-k", "3"]) == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")  # Excel reads UTF-8 names right
    with open(out, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(reference)
    assert list(rows[0])[:5] == ["image", "views", "name", "lat", "lon"]
    for row in rows:
        record = reference[row["image"]]
        answer, third = record["answer"], record["guesses"][2]
        assert row["name"] == answer["name"] and row["label"] == answer["label"]
        assert float(row["probability"]) == answer["probability"]
        assert (float(row["lat"]), float(row["lon"])) == (answer["lat"], answer["lon"])
        assert row["name_1"] == record["guesses"][0]["name"]
        assert row["name_3"] == third["name"] and row["label_3"] == third["label"] and "name_4" not in row
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
    record = {"image": "x.jpg", "answer": {"name": "A", "lat": 1.0, "lon": 2.0, "probability": math.nan},
              "guesses": [{"name": "A", "lat": 1.0, "lon": 2.0, "label": "A", "probability": math.nan}]}
    with pytest.raises(ValueError):
        strict_json(record)
    checked = checked_record(record)
    assert checked["error"] == f"x.jpg: {NON_FINITE}" and strict_loads(strict_json(checked))["guesses"] == []
    assert checked["answer"] is None
    assert render_table(checked).count("not answered") == 1


def _croydon() -> dict:
    long = "Saint-Rémy-de-Provence-sur-la-Longue-Rivière, Provence-Alpes-Côte-d’Azur, France"
    return {
        "image": "photo.jpg", "in_coverage": False, "coverage_score": 0.2,
        "answer": {"name": "Croydon, England, United Kingdom", "lat": 51.37, "lon": -0.1, "place": "Croydon",
                   "region": "England", "country": "United Kingdom", "probability": 0.12, "expected_geoscore": 4210.4,
                   "confidence": {"200": 0.83, "25": 0.41, "750": 0.95}, "label": "Croydon, England, United Kingdom",
                   "hierarchy": [{"level": "country", "name": "United Kingdom", "probability": 0.97},
                                 {"level": "region", "name": "England", "probability": 0.97},
                                 {"level": "place", "name": "Croydon", "probability": 0.12}]},
        "confidence": {"200": 0.83, "25": 0.41, "750": 0.95},
        "levels": {"country": [{"name": "United Kingdom", "probability": 0.97}],
                   "region": [{"name": "England, United Kingdom", "probability": 0.97}]},
        "guesses": [{"name": long, "lat": 43.79, "lon": 4.83, "label": "Arles, Provence-Alpes-Côte-d’Azur, France",
                     "probability": 0.2},
                    {"name": "Croydon, England, United Kingdom", "lat": 51.37, "lon": -0.1,
                     "label": "Croydon, England, United Kingdom", "place": "Croydon", "region": "England",
                     "country": "United Kingdom", "probability": 0.12}],
    }


def test_table_never_cuts_a_name_and_shows_the_answer_its_hierarchy_coverage_and_confidence() -> None:
    record = _croydon()
    lines = render_table(record).splitlines()
    assert lines[0] == "photo.jpg"
    assert lines[1] == "  answer: Croydon, England, United Kingdom (51.3700, -0.1000) · expected GeoScore 4,210"
    assert lines[2] == "  United Kingdom 97 % → England 97 % → Croydon 12 %"  # the answer's own path
    assert any("outside what this model knows" in line for line in lines)
    assert "P(within 25 km) 41 % · 200 km 83 % · 750 km 95 %" in [line.strip() for line in lines]
    rows = [line for line in lines if line.lstrip().startswith(("1 ", "2 "))]
    long = record["guesses"][0]["name"]
    assert long in rows[0] and "Croydon, England, United Kingdom" in rows[1]  # by probability, each in full
    assert rows[0].index("43.7900") + len("43.7900") == rows[1].index("51.3700") + len("51.3700")  # aligned
    assert rows[1].endswith("← answer") and not rows[0].endswith("← answer")
    assert "Arles" not in render_table(record)  # the label a guess came from is not its name
    assert not any("best single answer" in line for line in lines)  # no footnote: the answer stands apart


def test_the_hierarchy_line_is_the_answers_path() -> None:
    """The path is the answer's, as it states it: a region the model has no label in is named without a share."""
    record = {"image": "photo.jpg", "answer": {"name": "Bjelovar, Bjelovarsko-bilogorska, Croatia", "hierarchy": [
        {"level": "country", "name": "Croatia", "probability": 1.0},
        {"level": "region", "name": "Bjelovarsko-bilogorska", "probability": None},
        {"level": "place", "name": "Bjelovar", "probability": 0.09}]}}
    assert hierarchy_line(record) == "Croatia 100 % → Bjelovarsko-bilogorska → Bjelovar 9.0 %"
    record["answer"]["hierarchy"] = record["answer"]["hierarchy"][:1]  # --level country
    assert hierarchy_line(record) == "Croatia 100 %"
    assert hierarchy_line({"image": "old.jpg", "guesses": []}) is None


def test_table_of_real_photos_shows_every_name_in_full_and_agrees_with_the_json(capsys: pytest.CaptureFixture) -> None:
    paths = [str(p) for p in EXAMPLES]
    assert main(["predict", *paths, "--json", "--top-k", "5"]) == 0
    answers = strict_loads(capsys.readouterr().out)
    assert main(["predict", *paths, "--top-k", "5", "--level", "place"]) == 0
    table = capsys.readouterr().out
    sections = {block.splitlines()[0]: block.splitlines() for block in table.strip().split("\n\n")}
    assert sorted(sections) == sorted(answer["image"] for answer in answers)
    for answer in answers:
        lines = sections[answer["image"]]
        best = answer["answer"]
        assert lines[1].startswith(f"  answer: {best['name']} ({best['lat']:.4f}, ")
        assert lines[2].strip().endswith(f"→ {best['place']} {percent(best['probability'])}")
        names = [g["name"] for g in answer["guesses"]]
        assert len(names) == len(set(names)) == 5  # no place named twice
        chances = [g["probability"] for g in answer["guesses"]]
        assert chances == sorted(chances, reverse=True)
        for rank, guess in enumerate(answer["guesses"], start=1):
            row = next(line for line in lines if line.split()[0] == str(rank))
            assert f"  {guess['lat']:.4f}  " in row and f"  {guess['name']}  " in row
            assert row.endswith("← answer") == (guess["name"] == best["name"])
        if best["name"] in names:  # the answer reads like the guess of its name
            same = answer["guesses"][names.index(best["name"])]
            assert (same["lat"], same["lon"], same["probability"]) == (best["lat"], best["lon"], best["probability"])


def test_geojson_round_trips_a_record() -> None:
    record = {"image": "a.jpg", "answer": {"name": "Zagreb, Croatia", "lat": 45.1, "lon": 15.2, "place": "Zagreb",
                                           "region": "", "country": "Croatia", "probability": 0.6,
                                           "label": "Sesvete, Croatia", "hierarchy": []},
              "guesses": [{"name": "Zagreb, Croatia", "lat": 45.1, "lon": 15.2, "label": "Sesvete, Croatia",
                           "place": "Zagreb", "region": None, "country": "Croatia", "probability": 0.6},
                          {"name": "Sesvete", "lat": 45.5, "lon": 16.7, "label": "Sesvete", "probability": 0.1}],
              "in_coverage": True, "confidence": {"25": 0.5}, "warnings": ["answered from 2 of 3 views"],
              "views": ["a.jpg", "b.jpg"]}
    feature = record_to_feature(record)
    assert feature["geometry"] == {"type": "Point", "coordinates": [15.2, 45.1]}
    assert feature["properties"]["name"] == "Zagreb, Croatia" and feature["properties"]["label"] == "Sesvete, Croatia"
    assert feature_to_record(feature) == record
    failed = {"image": "bad.jpg", "error": "bad.jpg: not an image file", "answer": None, "guesses": []}
    assert record_to_feature(failed)["geometry"] is None and feature_to_record(record_to_feature(failed)) == failed
    older = {"image": "old.jpg", "in_coverage": True,  # a journal written before answers stood apart: still drawn
             "guesses": [{"lat": 45.1, "lon": 15.2, "label": "Zagreb, Croatia", "probability": 0.6}]}
    assert record_to_feature(older)["geometry"] == {"type": "Point", "coordinates": [15.2, 45.1]}
    assert feature_to_record(record_to_feature(older)) == older


def test_a_16_bit_png_is_answered_like_its_8_bit_twin(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gray = np.asarray(Image.open(EXAMPLES[4]).convert("L"))
    Image.fromarray(gray).save(tmp_path / "eight.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    Image.fromarray(np.full(gray.shape, 255, np.uint8)).save(tmp_path / "white.png")
    assert main(["predict", *(str(tmp_path / f"{n}.png") for n in ("eight", "sixteen", "white")), "--json"]) == 0
    eight, sixteen, white = strict_loads(capsys.readouterr().out)
    assert [g["name"] for g in sixteen["guesses"]] == [g["name"] for g in eight["guesses"]]
    assert sixteen["answer"]["name"] == eight["answer"]["name"]
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
