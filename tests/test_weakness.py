"""Where to collect next: the validation record a training writes by label, and ``data plan --from-model`` reading
it into a plan of exactly N points in the model's region, which ``data fetch`` takes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import drawn, shared_rows
from fake_providers import SV_KEY, FakeProviders

from geoscope.bundle import read_bundle, save_bundle
from geoscope.cli import main as cli
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.data.plan import read_plan
from geoscope.evaluate.scoring import evaluate
from geoscope.evaluate.weakness import Weakness, allocate, model_weakness
from geoscope.geo.regions import bbox_region, country_of
from geoscope.predict import load_model
from geoscope.report.maps import KNOWN, POINT


def run_cli(monkeypatch: pytest.MonkeyPatch, *argv: object) -> int:
    """The real ``geoscope`` entry point, with the commands this test needs."""
    monkeypatch.setattr(cli, "TOP_LEVEL", ("geoscope.cli.train",))
    return cli.main([str(a) for a in argv])


@pytest.fixture(scope="module")
def croatia_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained from the CLI on 40 real Croatian places (28 training, 12 validation), cells of 50 km."""
    frame = shared_rows("croatia")
    ids = frame["location_id"].astype(str).drop_duplicates().to_numpy()[:40]
    frame = frame[frame["location_id"].astype(str).isin(ids)].reset_index(drop=True)
    rank = frame["location_id"].astype(str).map({place: i for i, place in enumerate(ids)})
    frame["split"] = np.where(rank % 10 < 7, "train", "val")
    root = tmp_path_factory.mktemp("weak")
    write_manifest(frame, root / "manifest.csv")
    with pytest.MonkeyPatch.context() as mp:
        assert run_cli(mp, "train", root / "manifest.csv", "--labels", "grid", "--cell-km", "50", "-o",
                       root / "model", "--max-epochs", "3", "--no-augment", "--no-level-expert") == 0
    return root / "model"


def test_training_records_each_labels_validation(croatia_model: Path) -> None:
    files = read_bundle(croatia_model)
    record = files.config["validation"]
    by_label = record["by_label"]
    assert len(by_label["items"]) == len(by_label["median_km"]) == len(by_label["accuracy"]) == len(files.labels)
    assert sum(by_label["items"]) == record["items"]
    assert all((n == 0) == (m is None) for n, m in zip(by_label["items"], by_label["median_km"], strict=True))
    # the same numbers as evaluate scores each validation image at its first guess, unrefined
    frame = read_manifest(croatia_model.parent / "manifest.csv")
    val = frame.subset((frame.frame["split"] == "val").to_numpy())
    result, _ = evaluate(load_model(croatia_model), val, fuse_views=False, progress=False, refine="none")
    names = files.labels["name"].tolist()
    rows = result.predictions[result.predictions["true_label"].isin(names)]  # those in a training label
    assert 0 < len(rows) == record["items"]  # the mean fusion validates single images
    assert sum(by_label["places"]) == len(rows.drop_duplicates(["lat", "lon"])) < len(rows)  # of four views each
    for name, group in rows.groupby("true_label"):
        k = names.index(name)
        assert by_label["items"][k] == len(group)
        assert by_label["places"][k] == len(group.drop_duplicates(["lat", "lon"]))
        assert by_label["median_km"][k] == pytest.approx(group["error_km"].median(), abs=0.06)
        assert by_label["accuracy"][k] == pytest.approx((group["pred_label"] == name).mean(), abs=6e-4)
    assert record["median_km"] == pytest.approx(rows["error_km"].median(), abs=0.06)


def test_a_plan_of_exactly_n_points_where_the_model_is_weak(croatia_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    out = tmp_path / "plan"
    assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "--budget", 25, "--seed", 3,
                   "-o", out) == 0
    said = capsys.readouterr().out
    assert "25 points in" in said and "most points:" in said
    points = read_plan(out)
    cells = pd.read_csv(out / "cells.csv")
    meta = json.loads((out / "plan.json").read_text())
    assert len(points) == 25 and points["point_id"].tolist() == list(range(25))
    assert (country_of(points["lat"], points["lon"]) == "HR").all()  # the model's training area: Croatia's land
    assert cells["points"].sum() == 25
    assert (points.groupby("cell_id").size() == cells.set_index("cell_id")["points"][lambda s: s > 0]).all()
    inside = points.merge(cells, on="cell_id", suffixes=("", "_cell"))
    assert inside["lat"].between(inside["min_lat"], inside["max_lat"]).all()
    assert inside["lon"].between(inside["min_lon"], inside["max_lon"]).all()
    assert meta["kind"] == "model" and meta["budget"] == 25 and meta["validation_by_label"]
    assert drawn(out / "map.png", POINT) > 50 and drawn(out / "map.png", KNOWN) > 20  # points, training places
    assert sum(c["points"] for c in meta["chosen"]) == 25 and all(c["why"] for c in meta["chosen"])
    # the first point goes where it saves the most: land × expected km × (1 − √((n+1)/(n+2)))
    n = cells["training_places"]
    first = cells["land_fraction"] * cells["expected_km"] * (1 - np.sqrt((n + 1) / (n + 2)))
    assert cells["points"][first.idxmax()] > 0
    # the same seed, the same plan; another seed, other points in the same cells
    again = tmp_path / "again"
    assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "--budget", 25, "--seed", 3,
                   "-o", again) == 0
    assert (again / "points.csv").read_bytes() == (out / "points.csv").read_bytes()
    other = tmp_path / "other"
    assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "--budget", 25, "--seed", 4,
                   "-o", other) == 0
    moved = read_plan(other)
    assert (moved["cell_id"].to_numpy() == points["cell_id"].to_numpy()).all()
    assert not np.allclose(moved["lat"], points["lat"])


def test_data_fetch_takes_the_plan(croatia_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "--budget", 6, "-o",
                   tmp_path / "plan") == 0
    monkeypatch.setenv("GOOGLE_MAPS_API_KEY", SV_KEY)
    with FakeProviders() as fp:
        code = run_cli(monkeypatch, "data", "fetch", tmp_path / "plan", "--source", "streetview", "--headings", "0",
                       "--base-url", fp.sv_url, "-o", tmp_path / "data", "--no-progress")
    manifest = read_manifest(tmp_path / "data" / "manifest.csv").frame
    assert code == 0 and fp.count("sv_meta") == 6
    assert 0 < len(manifest) <= 6 and set(manifest["point_id"]) <= set(range(6))
    assert {"cell_id", "cell", "plan_lat", "plan_lon"} <= set(manifest.columns)
    card = json.loads((tmp_path / "data" / "dataset.json").read_text())
    assert "the model's training area" in json.dumps(card)


def test_budget_and_bundle_errors_are_one_line_exit_2(croatia_model: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    for budget in ("0", "-3"):
        assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "--budget", budget, "-o",
                       tmp_path / "p") == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "budget" in err and "Traceback" not in err
    assert run_cli(monkeypatch, "data", "plan", "--from-model", croatia_model, "-o", tmp_path / "p") == 2
    assert "--budget" in capsys.readouterr().err
    assert run_cli(monkeypatch, "data", "plan", "--from-model", tmp_path, "--budget", 5, "-o", tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bundle" in err
    # a bundle that keeps no trace of its training places: no kNN gallery, no label counts
    files = read_bundle(croatia_model)
    config = {k: v for k, v in files.config.items() if k not in ("format", "format_version", "gallery", "coverage")}
    tensors = {k: v for k, v in files.tensors.items() if not k.startswith(("gallery.", "typicality."))}
    bare = save_bundle(tmp_path / "bare", config, tensors, files.labels.drop(columns="count"), files.history, "")
    assert run_cli(monkeypatch, "data", "plan", "--from-model", bare, "--budget", 5, "-o", tmp_path / "p") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no training places" in err
    assert not (tmp_path / "p").exists()


def test_a_few_places_across_a_border_do_not_bring_the_neighbour_into_the_plan(croatia_model: Path,
                                                                                tmp_path: Path) -> None:
    files = read_bundle(croatia_model)
    tensors = dict(files.tensors)
    lat, lon = tensors["gallery.lat"].copy(), tensors["gallery.lon"].copy()
    lat[:2], lon[:2] = (43.856, 44.203), (18.413, 17.908)  # two places moved to Sarajevo and Zenica
    tensors["gallery.lat"], tensors["gallery.lon"] = lat, lon
    strays = save_bundle(tmp_path / "strays", files.config, tensors, files.labels, files.history, "")
    assert set(country_of(lat, lon)) >= {"HR", "BA"}
    weakness = model_weakness(read_bundle(strays))
    assert (country_of(weakness.cells["lat"], weakness.cells["lon"]) == "HR").all()
    # where no country holds that many, the countries holding places are the plan's
    few = {k: v[:2] if k in ("gallery.features", "gallery.lat", "gallery.lon", "gallery.label") else v
           for k, v in tensors.items()}
    config = {k: v for k, v in files.config.items() if k != "gallery"}  # nor the photos' paths of every place
    few_places = save_bundle(tmp_path / "few", config, few, files.labels, files.history, "")
    only = model_weakness(read_bundle(few_places)).cells
    assert set(country_of(only["lat"], only["lon"])) == {"BA"}


def test_a_bundle_from_before_the_record_plans_from_its_overall_error(croatia_model: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(croatia_model, old)
    config = json.loads((old / "config.json").read_text())
    del config["validation"]
    (old / "config.json").write_text(json.dumps(config))
    weakness = model_weakness(read_bundle(old))
    cells = weakness.cells
    overall = config["metrics"]["val"]["median_km"]
    assert not weakness.by_label and weakness.overall_km == overall
    assert np.allclose(cells["expected_km"], np.maximum(overall, cells["label_km"]), atol=0.06)
    assert 25 <= cells["training_places"].sum() <= 28  # the gallery's places (one may lie off the boundaries' coast)


def test_each_point_goes_where_it_saves_the_most_km() -> None:
    cells = pd.DataFrame({"cell_id": [0, 1, 2], "land_fraction": [1.0, 1.0, 0.5], "training_places": [0.0, 3.0, 0.0],
                          "expected_km": [100.0, 100.0, 100.0]})
    weakness = Weakness(bbox_region((0, 0, 1, 1)), cells, 50.0, 80.0, True)
    # land shares .4, .4, .2: first points save .4·100·(1 − √½) = 11.7 km (cell 0), .4·100·(1 − √⅘) = 4.2
    # (cell 1, 3 places already), .2·100·(1 − √½) = 5.9 (cell 2); cell 0's second .4·100·(√½ − √⅓) = 5.2, third 3.1
    assert allocate(weakness, 1).tolist() == [1, 0, 0]
    assert allocate(weakness, 3).tolist() == [2, 0, 1]
    assert allocate(weakness, 4).tolist() == [2, 1, 1]
    assert allocate(weakness, 100).sum() == 100
    assert allocate(weakness, 4, "thin").tolist() == [2, 1, 1]  # the same error everywhere here
    far = Weakness(weakness.region, cells.assign(expected_km=[100.0, 400.0, 100.0]), 50.0, 80.0, True)
    assert allocate(far, 3).tolist() == [1, 2, 0]
