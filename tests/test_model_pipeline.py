"""The place model end to end on images the test makes: labels → train → bundle → predict → evaluate."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from geoscope.bundle import read_bundle
from geoscope.cli.main import main
from geoscope.data.manifest import Manifest, read_manifest, write_manifest
from geoscope.errors import GeoscopeError, ModelError
from geoscope.evaluate.results import CENTROID, MODEL
from geoscope.evaluate.scoring import evaluate
from geoscope.geo.labels import LabelScheme
from geoscope.geo.sphere import haversine_km
from geoscope.models.heads.place_names import PlaceNamesHead
from geoscope.models.losses import haversine_smoothed_targets, symmetric_clip_loss
from geoscope.models.projection import LinearHead, ProjectionHead
from geoscope.predict import load_model
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig, TrainingData, TrainResult, train


def _train(train_data: TrainingData, val: TrainingData, texts: np.ndarray, coords: np.ndarray, config: TrainConfig,
           **options: object) -> TrainResult:
    """A place-name head over ``texts``, made from the config's seed and trained in the loop."""
    head = PlaceNamesHead.create(config, train_data.features.shape[2], texts)
    return train(head, train_data, val, coords, config, **options)

# Three towns, each with its own look: a colour cast and a stripe pattern.
TOWNS = {"Paris": (48.8566, 2.3522, (200, 60, 60)), "Berlin": (52.52, 13.405, (60, 180, 60)),
         "Madrid": (40.4168, -3.7038, (60, 60, 210))}


def _town_image(path: Path, colour: tuple[int, int, int], stripes: int, rng: np.random.Generator) -> None:
    base = np.array(colour, dtype=np.float64)[None, None, :] * np.ones((96, 128, 1))
    x = np.arange(128)[None, :, None]
    base = base * (0.75 + 0.25 * np.sin(x * stripes * np.pi / 128))
    noisy = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(path, quality=92)


@pytest.fixture(scope="module")
def town_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("towns")
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for t, (name, (lat, lon, colour)) in enumerate(TOWNS.items()):
        for i in range(24):  # 7 validation images a town: 21 in all, enough to place a coverage threshold
            path = root / "images" / f"{name}_{i:02d}.jpg"
            _town_image(path, colour, 2 + 3 * t, rng)
            jitter = rng.normal(0, 0.02, 2)
            split = "test" if i < 5 else "val" if i < 12 else "train"
            rows.append({"image": f"images/{path.name}", "lat": lat + jitter[0], "lon": lon + jitter[1],
                         "location_id": f"{name}-{i}", "split": split})
    write_manifest(pd.DataFrame(rows), root / "manifest.csv")
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def town_model(town_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model") / "towns"
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=True,
                         train=TrainConfig(max_epochs=25, batch_size=32, early_stop=25, lr_head=3e-3, lr_text=3e-3))
    fit(read_manifest(town_manifest), options, out, progress=False)
    return out


def test_projection_head_keeps_the_residual_and_normalises() -> None:
    head = ProjectionHead(12, 8, dropout=0.0)
    out = head(torch.randn(5, 12))
    assert out.shape == (5, 8)
    assert torch.allclose(out.mean(dim=1), torch.zeros(5), atol=1e-5)  # LayerNorm output


def test_symmetric_loss_is_low_for_matching_pairs_and_high_otherwise() -> None:
    matched = torch.eye(4) * 20
    assert symmetric_clip_loss(matched) < 1e-3
    assert symmetric_clip_loss(matched.flip(0)) > 10


def test_haversine_smoothing_favours_the_true_label_and_its_neighbours() -> None:
    lat = torch.tensor([48.85, 52.52, 40.42], dtype=torch.float64)
    lon = torch.tensor([2.35, 13.40, -3.70], dtype=torch.float64)
    targets = haversine_smoothed_targets(torch.tensor([0]), lat[:1], lon[:1], lat, lon, tau_km=500.0)
    assert targets.argmax() == 0 and torch.isclose(targets.sum(), torch.tensor(1.0, dtype=targets.dtype))
    # Berlin (≈880 km from Paris) gets more weight than Madrid (≈1050 km).
    assert targets[0, 1] > targets[0, 2] > 0
    one_hot = haversine_smoothed_targets(torch.tensor([2]), lat[:1], lon[:1], lat, lon, tau_km=0.0)
    assert one_hot.tolist() == [[0.0, 0.0, 1.0]]


def test_bundle_holds_weights_labels_history_and_card(town_model: Path) -> None:
    files = read_bundle(town_model)
    assert {"config.json", "weights.safetensors", "labels.csv", "history.json", "README.md"} <= \
        {p.name for p in town_model.iterdir()}
    assert sorted(files.labels["place"]) == sorted(TOWNS)
    assert sorted(files.labels["country"]) == ["France", "Germany", "Spain"]
    assert sorted(files.labels["name"]) == ["Berlin, Germany", "Madrid, Spain", "Paris, Île-de-France, France"]
    assert files.tensors["place_embeddings"].shape[0] == 3
    splits = {r["split"] for r in files.history}
    assert splits == {"train", "val", "test"}
    assert files.config["training"]["best_epoch"] >= 1
    assert not any(p.suffix in {".pt", ".pkl", ".pth"} for p in town_model.iterdir())


def test_predict_ranks_the_right_town_first(town_manifest: Path, town_model: Path) -> None:
    model = load_model(town_model)
    test = read_manifest(town_manifest).split("test")
    predictions = model.predict(test.image_paths, top_k=3)
    truth = test.frame["image"].str.extract(r"images/(\w+)_")[0]
    hits = [p.guesses[0].place == t for p, t in zip(predictions, truth, strict=True)]
    assert np.mean(hits) >= 0.9
    for p in predictions:
        probs = [g.probability for g in p.guesses]
        assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6


def test_cli_predict_json_and_views(town_manifest: Path, town_model: Path, capsys: pytest.CaptureFixture) -> None:
    images = [str(p) for p in read_manifest(town_manifest).split("test").image_paths[:3]]
    assert main(["predict", *images, "--model", str(town_model), "--top-k", "2", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert [a["image"] for a in answer] == images
    assert all(len(a["guesses"]) == 2 for a in answer)
    assert set(answer[0]["guesses"][0]) == {"name", "lat", "lon", "label", "place", "region", "country",
                                            "probability"}
    assert {"answer", "in_coverage", "coverage_score", "confidence", "levels"} <= set(answer[0])
    assert answer[0]["answer"]["confidence"] == answer[0]["confidence"]
    countries = answer[0]["levels"]["country"]
    assert {c["name"] for c in countries} == {"France", "Germany", "Spain"}
    assert sum(c["probability"] for c in countries) == pytest.approx(1.0, abs=1e-4)
    assert main(["predict", *images, "--model", str(town_model), "--views", "--json"]) == 0
    fused = json.loads(capsys.readouterr().out)
    assert len(fused) == 1 and fused[0]["views"] == images


def test_predict_reports_a_bad_image_and_answers_the_others(
    town_manifest: Path, town_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    good = str(read_manifest(town_manifest).split("test").image_paths[0])
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    code = main(["predict", good, str(bad), "--model", str(town_model), "--json"])
    out, err = capsys.readouterr()
    assert code == 2
    answer = json.loads(out)
    assert answer[0]["guesses"] and not answer[1]["guesses"]
    assert "broken.jpg" in err and "Traceback" not in err


def test_evaluate_beats_the_centroid_and_fills_every_metric(town_manifest: Path, town_model: Path) -> None:
    test = read_manifest(town_manifest).split("test")
    result, errors = evaluate(load_model(town_model), test, progress=False)
    assert not errors and len(result.predictions) == 15
    m = result.metrics
    assert m[MODEL]["label_accuracy"] >= 0.9
    assert m[MODEL]["median_km"] < m[CENTROID]["median_km"]
    expected = haversine_km(result.predictions["lat"], result.predictions["lon"],
                            result.predictions["pred_lat"], result.predictions["pred_lon"])
    assert np.allclose(result.predictions["error_km"], expected)
    assert set(m[MODEL]["within_km"]) == {"1", "25", "200", "750", "2500"}


def test_cli_evaluate_json(town_manifest: Path, town_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", str(town_manifest), "--model", str(town_model), "--split", "test", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 15 and {"model", "centroid", "knn"} <= set(report["metrics"])


def test_standardised_training_does_not_depend_on_the_scale_of_feature_dimensions() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 300)
    centres = rng.standard_normal((3, 8))
    x = (centres[labels] + 0.8 * rng.standard_normal((300, 8))).astype(np.float32)
    lat, lon = 50.0 + labels.astype(float), labels.astype(float)
    scale = np.logspace(-3, 3, 8).astype(np.float32)  # dimensions six orders of magnitude apart
    texts = rng.standard_normal((3, 5)).astype(np.float32)
    coords = np.array([[50.0, 0.0], [51.0, 1.0], [52.0, 2.0]])
    config = TrainConfig(max_epochs=15, batch_size=64, embed_dim=16)
    results = []
    for features in (x, x * scale):
        first = TrainingData(features[:200], labels[:200], lat[:200], lon[:200])
        val = TrainingData(features[200:], labels[200:], lat[200:], lon[200:])
        result = _train(first, val, texts, coords, config, standardize_features=True, progress=False)
        network = result.head.network
        np.testing.assert_allclose(network.image_shift.numpy(), features[:200].mean(axis=0), rtol=1e-4)
        with torch.no_grad():
            results.append(network.embed_images(torch.from_numpy(features[200:])).numpy())
            places = network.embed_places(torch.from_numpy(texts)).numpy()
        assert ((results[-1] @ places.T).argmax(axis=1) == labels[200:]).mean() > 0.8  # it learned
    np.testing.assert_allclose(results[0], results[1], atol=2e-3)


def test_a_small_training_set_takes_smaller_batches_for_enough_steps_an_epoch() -> None:
    from geoscope.training.loop import MIN_BATCH_SIZE, steps_batch_size

    assert steps_batch_size(256, 8214, 30) == 256  # the default model's training set: unchanged
    assert steps_batch_size(256, 570, 30) == 19  # western USA's: 30 steps, not 3
    assert steps_batch_size(256, 100, 30) == MIN_BATCH_SIZE and steps_batch_size(8, 100, 30) == 8
    assert steps_batch_size(256, 570, 0) == 256  # 0: the configured batch whatever the size
    first, val, texts, coords, _, _ = _three_towns(seed=2, n=700, n_train=600)
    for min_steps, batch in ((30, 20), (0, 256)):
        config = TrainConfig(max_epochs=1, embed_dim=16, min_steps_per_epoch=min_steps)
        assert _train(first, val, texts, coords, config, progress=False).batch_size == batch
    with pytest.raises(GeoscopeError, match="min_steps_per_epoch"):
        TrainConfig(min_steps_per_epoch=-1)


def _three_towns(seed: int, n: int, n_train: int) -> tuple:
    """Image features of ``n`` photos of three towns whose features lie 3 σ apart: the training and validation
    splits, the towns' name features and coordinates, and all features and labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    x = (3.0 * rng.standard_normal((3, 8))[labels] + rng.standard_normal((n, 8))).astype(np.float32)
    lat, lon = 50.0 + labels.astype(float), labels.astype(float)
    texts = rng.standard_normal((3, 5)).astype(np.float32)
    coords = np.array([[50.0, 0.0], [51.0, 1.0], [52.0, 2.0]])
    k = n_train
    return (TrainingData(x[:k], labels[:k], lat[:k], lon[:k]), TrainingData(x[k:], labels[k:], lat[k:], lon[k:]),
            texts, coords, x, labels)


def test_averaged_weights_are_what_is_measured_and_kept() -> None:
    first, val, texts, coords, x, labels = _three_towns(seed=1, n=300, n_train=200)
    accuracy = {}
    for decay in (0.0, 0.5, 0.999999):  # the last barely leaves the weights after the first step
        config = TrainConfig(max_epochs=10, batch_size=32, embed_dim=16, lr_head=1e-2, lr_text=1e-2,
                             average_weights=decay, early_stop=20)
        result = _train(first, val, texts, coords, config, progress=False)
        accuracy[decay] = max(r["accuracy"] for r in result.history if r["split"] == "val")
        last = next(r for r in reversed(result.history) if r["split"] == "val" and r["epoch"] == result.best_epoch)
        network = result.head.network
        with torch.no_grad():
            places = network.embed_places(torch.from_numpy(texts)).numpy()
            kept = (network.embed_images(torch.from_numpy(x[200:])).numpy() @ places.T).argmax(axis=1)
        assert (kept == labels[200:]).mean() == pytest.approx(last["accuracy"], abs=0.02)  # the kept is the measured
    assert accuracy[0.0] > 0.9 and accuracy[0.5] > 0.9 and accuracy[0.999999] < 0.75, accuracy
    with pytest.raises(GeoscopeError, match="average_weights"):
        TrainConfig(average_weights=1.0)


def test_training_is_deterministic_with_a_seed(town_manifest: Path, tmp_path: Path) -> None:
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=False,
                         train=TrainConfig(max_epochs=3, batch_size=16, seed=3))
    manifest = read_manifest(town_manifest)
    _, first = fit(manifest, options, tmp_path / "a", progress=False)
    _, second = fit(manifest, options, tmp_path / "b", progress=False)
    assert first.history == second.history


@pytest.mark.parametrize("damage", ["missing", "truncated", "version", "not-a-dir", "level-expert"])
def test_broken_bundles_fail_in_one_line(town_model: Path, tmp_path: Path, damage: str,
                                         capsys: pytest.CaptureFixture) -> None:
    broken = tmp_path / "broken"
    if damage != "missing":
        shutil.copytree(town_model, broken)
    if damage == "truncated":
        data = (broken / "weights.safetensors").read_bytes()
        (broken / "weights.safetensors").write_bytes(data[: len(data) // 3])
    elif damage == "version":
        config = json.loads((broken / "config.json").read_text())
        config["format_version"] = 99
        (broken / "config.json").write_text(json.dumps(config))
    elif damage == "not-a-dir":
        shutil.rmtree(broken)
        broken.write_text("hello")
    elif damage == "level-expert":  # its weights read fewer image features than the model
        from safetensors.numpy import load_file, save_file

        weights = load_file(broken / "weights.safetensors")
        weights["level_expert.weight"] = weights["level_expert.weight"][:, :-1].copy()
        save_file(weights, broken / "weights.safetensors")
    with pytest.raises(ModelError):
        load_model(broken)
    assert main(["predict", "x.jpg", "--model", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(broken) in err


def test_the_level_expert_multiplies_the_heads_answer_by_its_countrys_probability(
        town_manifest: Path, town_model: Path) -> None:
    """p(label) ∝ p_head(label) · p_probe(country of the label), the probe scikit-learn's on standardised features."""
    from sklearn.linear_model import LogisticRegression

    model = load_model(town_model)
    expert = model.level_expert
    assert model.config["level_expert"]["level"] == "country" and expert is not None
    assert sorted(model.labels["country"].to_numpy()[np.argsort(expert.groups)]) == ["France", "Germany", "Spain"]
    measured = model.config["level_expert"]["val"]
    assert 0 < measured["head"]["geoscore"] <= 5000 and 0 < measured["with_expert"]["geoscore"] <= 5000
    assert 0 <= measured["head"]["right_group"] <= 1 and 0 <= measured["with_expert"]["right_group"] <= 1
    assert "## Level expert\nA logistic regression over the 3 country groups" in (town_model / "README.md").read_text()

    manifest = read_manifest(town_manifest)
    train = manifest.subset(manifest.frame["split"] == "train")
    x = model.image_features(train.image_paths).embeddings.astype(np.float64)
    country = np.array([np.argmin(haversine_km(lat, lon, model.labels["lat"], model.labels["lon"]))
                        for lat, lon in zip(train.frame["lat"], train.frame["lon"], strict=True)])
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0  # dimensions the towns never light up
    probe = LogisticRegression(C=0.01, max_iter=2000).fit((x - mean) / std, expert.groups[country])
    test = manifest.subset(manifest.frame["split"] == "test")
    features = model.image_features(test.image_paths).embeddings
    head = torch.softmax(model.head.network.scale() * torch.nn.functional.normalize(
        torch.as_tensor(model.embed(features))) @ model.head.places.T, dim=-1).detach().numpy()
    product = head * probe.predict_proba((features - mean) / std)[:, expert.groups]
    np.testing.assert_allclose(model.probabilities(model.embed(features), features),
                               product / product.sum(axis=1, keepdims=True), atol=1e-4)


def test_train_cli_writes_a_bundle(town_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli-model"
    argv = ["train", str(town_manifest), "--labels", "grid", "--cell-km", "50", "-o", str(out),
            "--max-epochs", "2", "--no-augment", "--no-learn-place-offsets", "--restarts", "2", "--no-level-expert"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["level_expert"] is None and load_model(out).level_expert is None
    assert "## Level expert\nNone" in (out / "README.md").read_text()
    assert config["labels"] == {"kind": "grid", "cell_km": 50.0}
    assert config["training"]["command"] == ["geoscope", *argv]
    assert config["training"]["config"]["learn_place_offsets"] is False
    runs = config["training"]["search"]  # two seeds; the one with the lower val loss is kept
    assert [r["seed"] for r in runs] == [0, 1]
    assert config["training"]["config"]["seed"] == min(runs, key=lambda r: r["val_loss"])["seed"]
    with pytest.raises(SystemExit) as refused:  # argparse's one error line, exit 2
        main(["train", str(town_manifest), "-o", str(tmp_path / "none"), "--restarts", "0"])
    assert refused.value.code == 2 and "--restarts: must be at least 1, not 0" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_a_linear_image_head_trains_from_the_cli_is_saved_and_ranks_the_right_town(
        town_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "linear"
    assert main(["train", str(town_manifest), "--labels", "grid", "--cell-km", "50", "-o", str(out),
                 "--image-head", "linear", "--max-epochs", "25", "--early-stop", "25", "--batch-size", "32",
                 "--lr-head", "3e-3", "--lr-text", "3e-3", "--no-augment"]) == 0
    files = read_bundle(out)
    assert files.config["model"]["place_clip"]["image_head"] == "linear"
    assert "image features through one linear map" in (out / "README.md").read_text()
    assert {k for k in files.tensors if k.startswith("model.image_head.")} == \
        {"model.image_head.projection.weight", "model.image_head.projection.bias"}
    model = load_model(out)
    assert isinstance(model.head.network.image_head, LinearHead)
    test = read_manifest(town_manifest).split("test")
    truth = test.frame["image"].str.extract(r"images/(\w+)_")[0]
    hits = [p.guesses[0].place == t for p, t in zip(model.predict(test.image_paths), truth, strict=True)]
    assert np.mean(hits) >= 0.9


def test_manifest_without_split_is_split_spatially_and_the_leakage_recorded(town_manifest: Path,
                                                                             tmp_path: Path) -> None:
    manifest = read_manifest(town_manifest)
    frame = manifest.frame.drop(columns="split")
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=False,
                         train=TrainConfig(max_epochs=2), block_km=1.0)
    path, _result = fit(Manifest(frame, manifest.root), options, tmp_path / "m", progress=False)
    data = json.loads((path / "config.json").read_text())["training"]["data"]
    assert data["splits"]["train"] > data["splits"]["val"] > 0
    assert data["leakage"]["nearest_train_val_km"] > 0  # no image shares a 1 km block with a training image
    assert len(read_bundle(path).tensors["split.train_sha1"]) == data["splits"]["train"]


def test_coverage_flags_photos_unlike_the_training_images(town_manifest: Path, town_model: Path,
                                                          tmp_path: Path) -> None:
    model = load_model(town_model)
    assert model.coverage is not None and model.coverage.kept == 0.95
    test = read_manifest(town_manifest).split("test")
    inside = [p.in_coverage for p in model.predict(test.image_paths)]
    assert np.mean(inside) >= 0.8
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    Image.new("RGB", (128, 96), (20, 40, 230)).save(tmp_path / "blue.png")
    outside = model.predict([tmp_path / "noise.png", tmp_path / "blue.png"])
    assert [p.in_coverage for p in outside] == [False, False]
    assert all(p.confidence is not None and set(p.confidence) == {"25", "200", "750"} for p in outside)
    assert "in_coverage: false" in (town_model / "README.md").read_text()


def test_evaluate_leaves_out_the_rows_the_model_was_trained_on(town_manifest: Path, town_model: Path) -> None:
    manifest = read_manifest(town_manifest)
    result, _ = evaluate(load_model(town_model), manifest, progress=False)
    trained = int((manifest.frame["split"] == "train").sum())
    assert result.training_rows == trained and len(result.predictions) == len(manifest) - trained
    everything, _ = evaluate(load_model(town_model), manifest, progress=False, include_training_rows=True)
    assert everything.training_rows == trained and len(everything.predictions) == len(manifest)


def test_finetuned_top_is_trained_saved_and_used_by_predict(town_manifest: Path, tmp_path: Path) -> None:
    from geoscope.encoders.efficientnet import split_efficientnet

    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=False, finetune_blocks=1, crops=2,
                         train=TrainConfig(max_epochs=3, batch_size=16, early_stop=3, lr_image=1e-3))
    out, result = fit(read_manifest(town_manifest), options, tmp_path / "ft", progress=False)
    files = read_bundle(out)
    assert files.config["image_encoder"] == {"name": "efficientnet-lite0", "finetune_blocks": 1, "crops": 2}
    _, pretrained = split_efficientnet("efficientnet-lite0", 1)
    tuned = {k.removeprefix("image_top.top."): v for k, v in files.tensors.items() if k.startswith("image_top.")}
    assert tuned.keys() == pretrained.state_dict().keys()
    moved = [k for k, v in pretrained.state_dict().items() if v.is_floating_point()
             and not np.allclose(v.numpy(), tuned[k])]
    assert moved and all("running" not in k for k in moved)  # weights trained, batch-norm statistics frozen

    model = load_model(out)
    test = read_manifest(town_manifest).split("test")
    predicted = model.predict(test.image_paths, top_k=1)
    # The bundle's answers are the trained model's own: same top-1 as its test-split accuracy says.
    truth = test.frame["image"].str.extract(r"images/(\w+)_")[0]
    accuracy = np.mean([p.guesses[0].place == t for p, t in zip(predicted, truth, strict=True)])
    best = next(r for r in result.history if r["epoch"] == result.best_epoch and r["split"] == "test")
    assert accuracy == pytest.approx(best["accuracy"])


@pytest.mark.parametrize(("extra", "message"), [(["--finetune-blocks", "40"], "has 16 blocks"),
                                                (["--finetune-blocks", "1", "--encoder", "hf:x"], "EfficientNet-Lite")])
def test_train_refuses_impossible_fine_tuning_in_one_line(town_manifest: Path, tmp_path: Path, extra: list[str],
                                                          message: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", str(town_manifest), "-o", str(tmp_path / "m"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "m").exists()


def test_members_answer_with_the_mean_logit_of_the_runs_they_keep(town_manifest: Path, tmp_path: Path) -> None:
    """An ensemble of the two seeds answers with their normalised geometric mean: what each seed's own
    model answers, trained alone, multiplied and renormalised."""
    manifest = read_manifest(town_manifest)
    base = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), augment=False,
                      train=TrainConfig(max_epochs=3, batch_size=32, lr_head=3e-3, lr_text=3e-3))
    singles = [load_model(fit(manifest, replace(base, train=replace(base.train, seed=s)), tmp_path / f"seed{s}",
                              progress=False)[0]) for s in (0, 1)]
    path, result = fit(manifest, replace(base, restarts=2, members=2), tmp_path / "both", progress=False)
    both = load_model(path)
    assert both.config["model"]["members"] == 2 and len(both.head.network.members) == 2
    assert sum(t["kept"] for t in both.config["training"]["search"]) == 2
    assert set(result.metrics) == {"train", "val", "test"}
    images = [str(p) for p in manifest.subset(manifest.frame["split"] == "test").image_paths]
    features = both.image_features(images).embeddings
    answers = [m.probabilities(m.embed(features), features) for m in (*singles, both)]
    pooled = np.sqrt(answers[0] * answers[1])
    np.testing.assert_allclose(answers[2], pooled / pooled.sum(axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    assert both.predict(images[:2], top_k=2)[0].guesses  # and it answers like any bundle


def test_members_are_refused_beyond_the_runs_or_with_a_fine_tuned_encoder(town_manifest: Path,
                                                                          tmp_path: Path) -> None:
    manifest = read_manifest(town_manifest)
    options = FitOptions(scheme=LabelScheme("grid", {"cell_km": 50.0}), restarts=2, members=3)
    with pytest.raises(GeoscopeError, match="between 1 and the number of runs"):
        fit(manifest, options, tmp_path / "none", progress=False)
    with pytest.raises(GeoscopeError, match="frozen encoder"):
        fit(manifest, replace(options, members=2, finetune_blocks=1), tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()


def test_the_cosine_schedule_warms_up_then_decays_each_groups_rate_to_zero() -> None:
    from geoscope.training.loop import _scheduler

    head, encoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([{"params": [head], "lr": 1e-3}, {"params": [encoder], "lr": 1e-4}])
    scheduler = _scheduler(optimizer, TrainConfig(schedule="cosine", warmup=0.1), steps=100)
    rates = []
    for _ in range(100):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    rates = np.array(rates)
    np.testing.assert_allclose(rates[:, 1], rates[:, 0] / 10)  # the encoder keeps its lower rate throughout
    assert rates[0, 0] == pytest.approx(1e-4) and np.all(np.diff(rates[:10, 0]) > 0)  # warm-up: 10 rising steps
    assert rates[9, 0] == pytest.approx(1e-3) and rates[10, 0] == pytest.approx(1e-3)  # the peak is the set rate
    assert np.all(np.diff(rates[10:, 0]) < 0) and rates[-1, 0] < 1e-6  # then down to nearly 0 at the last step
    first, val, texts, coords, _, _ = _three_towns(seed=3, n=300, n_train=200)
    config = TrainConfig(max_epochs=4, batch_size=32, embed_dim=16, lr_head=1e-2, lr_text=1e-2, schedule="cosine")
    result = _train(first, val, texts, coords, config, progress=False)
    assert result.metrics["val"]["accuracy"] > 0.9  # it trains in the loop
    with pytest.raises(GeoscopeError, match="schedule must be one of plateau, cosine"):
        TrainConfig(schedule="step")
    with pytest.raises(GeoscopeError, match="warmup"):
        TrainConfig(warmup=1.0)
