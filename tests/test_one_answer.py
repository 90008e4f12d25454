"""One answer path: ``evaluate`` scores the very answers ``predict --json`` prints, decided in one place."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

import geoscope
from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest
from geoscope.evaluate.results import MODEL
from geoscope.evaluate.scoring import evaluate, training_rows
from geoscope.geo.labels import LabelScheme, assign_labels
from geoscope.geo.sphere import haversine_km, summarize_errors
from geoscope.predict import GeoModel

PACKAGE = Path(geoscope.__file__).parent
SAMPLE_IMAGES = 60


@pytest.fixture(scope="module")
def sample(model: GeoModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 held-out images of the western USA set (20 places, 3 views each) as a manifest of absolute paths."""
    folder = shared_dataset("us-west")
    manifest = read_manifest(folder / "manifest.csv")
    seen = training_rows(model, manifest)
    frame = manifest.frame.assign(image=[str(p) for p in manifest.image_paths], seen=seen)
    held_out = frame.groupby("location_id")["seen"].transform("sum") == 0
    places = frame.loc[held_out, "location_id"].drop_duplicates().iloc[: SAMPLE_IMAGES // 3]
    rows = frame[frame["location_id"].isin(places)].drop(columns="seen")
    assert len(rows) == SAMPLE_IMAGES
    path = tmp_path_factory.mktemp("sample") / "manifest.csv"
    rows.to_csv(path, index=False)
    return path


def scored(model: GeoModel, records: list[dict], truth: pd.DataFrame) -> dict:
    """The metrics of ``evaluate``, computed from ``predict --json`` records: each answer's point against the
    truth of its image (a place's first view), its label against the true label."""
    by_image = truth.drop_duplicates("image").set_index("image")
    lat = by_image.loc[[r["image"] for r in records], "lat"].to_numpy(dtype=np.float64)
    lon = by_image.loc[[r["image"] for r in records], "lon"].to_numpy(dtype=np.float64)
    errors = haversine_km(lat, lon, [r["answer"]["lat"] for r in records], [r["answer"]["lon"] for r in records])
    out = summarize_errors(np.asarray(errors)).to_dict()
    labels = model.labels
    true = assign_labels(lat, lon, labels, LabelScheme.from_dict(model.config["labels"]))
    rows = {name: i for i, name in enumerate(labels["name"].astype(str))}
    predicted = np.array([rows[r["answer"]["label"]] for r in records])
    out["label_accuracy"] = float((predicted[true >= 0] == true[true >= 0]).mean())
    out["n_labelled"] = int((true >= 0).sum())
    return out


def same_metrics(a: dict, b: dict) -> bool:
    """Equal, up to the JSON's rounding of coordinates to 1e-6° (about 0.1 m)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_metrics(a[k], b[k]) for k in a)
    if isinstance(a, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-3)
    return a == b


@pytest.mark.shared_data
@pytest.mark.parametrize("views", [True, False], ids=["places", "images"])
def test_evaluate_scores_what_predict_json_prints(model: GeoModel, sample: Path, views: bool,
                                                  capsys: pytest.CaptureFixture) -> None:
    manifest = read_manifest(sample)
    result, errors = evaluate(model, manifest, fuse_views=views, progress=False)
    assert not errors and len(result.predictions) == (SAMPLE_IMAGES // 3 if views else SAMPLE_IMAGES)
    capsys.readouterr()
    assert main(["predict", str(sample), "--json", *(["--views"] if views else [])]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == result.predictions["image"].tolist()
    assert same_metrics(scored(model, records, manifest.frame), result.metrics[MODEL])
    # and row by row: the point, the label, coverage and confidence evaluate reads are the answer's
    p = result.predictions
    assert np.allclose(p["pred_lat"], [r["answer"]["lat"] for r in records], atol=1e-6)
    assert p["pred_label"].tolist() == [r["answer"]["label"] for r in records]
    assert p["in_coverage"].tolist() == [r["in_coverage"] for r in records]
    assert p["confidence_25"].tolist() == [r["answer"]["confidence"]["25"] for r in records]


def _calls(tree: ast.AST, names: set[str]) -> list[ast.Call]:
    def name(node: ast.Call) -> str | None:
        return node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)

    return [node for node in ast.walk(tree) if isinstance(node, ast.Call) and name(node) in names]


def test_the_answer_is_decided_in_one_place() -> None:
    """Outside ``answer/``, only ``GeoModel.answer`` turns probabilities into answers and moves them with a
    refiner; no output, server, report or evaluation picks a best guess or a confidence of its own."""
    deciders: list[str] = []
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name == "answer":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for function in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]:
            if _calls(function, {"answer_rows", "coordinates"}):
                deciders.append(f"{path.relative_to(PACKAGE)}:{function.name}")
        if path.parent.name in ("outputs", "serve", "report", "cli", "evaluate"):
            assert not _calls(tree, {"best_guesses", "mass_near_top", "confidence", "answer_rows"}), path
    assert sorted(set(deciders)) == ["predict.py:answer", "predict.py:refined"]  # refined: GeoModel.answer's own


def test_a_place_never_holds_more_probability_than_its_region_or_country(model: GeoModel) -> None:
    """Refined guesses are named where they point, and their probability counts in the region they point into
    (croatia-1's answer lies in another region than the label it came from)."""
    examples = sorted((PACKAGE.parents[1] / "examples" / "images").glob("*.jpg"))
    for prediction in model.predict(examples, top_k=5):
        steps = [s["probability"] for s in prediction.answer.hierarchy if s["probability"] is not None]
        assert steps == sorted(steps, reverse=True), (prediction.image, prediction.answer.hierarchy)
        regions = {entry["name"]: entry["probability"] for entry in prediction.levels["region"]}
        for guess in prediction.guesses:
            key = f"{guess.region}, {guess.country}"
            assert key not in regions or guess.probability <= regions[key] + 1e-6, (prediction.image, guess)


@pytest.mark.parametrize("merge_km", [0.0, 30.0], ids=["labels", "merged"])
def test_answering_many_rows_at_once_answers_each_as_alone(model: GeoModel, merge_km: float) -> None:
    """``answer_rows`` answers all rows in one go (numpy over the batch): each row's answer, guesses, levels and
    hierarchy are those it gets alone, at every level, with the bundle's GPS refiner moving and naming its guesses,
    and with guesses merged within ``merge_km``. Rows: the example photos' features and blends of them."""
    examples = sorted((PACKAGE.parents[1] / "examples" / "images").glob("*.jpg"))
    photos = np.asarray(model.image_features(examples).embeddings, dtype=np.float32)
    rng = np.random.default_rng(0)
    mix = rng.dirichlet(np.full(len(photos), 0.3), size=24).astype(np.float32)
    features = np.concatenate([photos, mix @ photos])
    probabilities, coverage, why = model.place_evidence(features, np.arange(len(features)))
    everywhere = np.tile(np.arange(len(model.labels)), (len(features), 1))
    moved = model.refiner("gps").coordinates(features, np.arange(len(features)), everywhere)  # each label's point

    def refine(rows: np.ndarray, labels: np.ndarray):
        take = rows[:, None], labels
        return type(moved)(moved.lat[take], moved.lon[take], moved.names[take])

    answerer = type(model.answerer)(model.labels, model.coverage, model.answerer.calibration, merge_km=merge_km)
    names = [f"row {i}" for i in range(len(features))]
    for level in ("place", "region", "country"):
        together = answerer.answer_rows(names, probabilities, top_k=4, level=level, coverage_scores=coverage,
                                        coverage_reasons=why, refine=refine)
        for i, answer in enumerate(together):
            (alone,) = answerer.answer_rows(names[i:i + 1], probabilities[i:i + 1], top_k=4, level=level,
                                            coverage_scores=coverage[i:i + 1], coverage_reasons=why[i:i + 1],
                                            refine=lambda rows, labels, i=i: refine(rows + i, labels))
            together_said, alone_said = answer.to_dict(), alone.to_dict()
            # the expected GeoScore reads float32 dot products of unit vectors, whose arccos near 0 km moves by a
            # point or two of 5,000 between a matrix product over many rows and one over a single row (as before)
            expected = (together_said["answer"].pop("expected_geoscore"), alone_said["answer"].pop("expected_geoscore"))
            assert expected[0] == pytest.approx(expected[1], abs=5.0), (level, i)
            assert same_metrics(together_said, alone_said), (level, i)
