"""View fusion: the stages that turn a place's views into one embedding, and a fused model end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_rows

from geoscope.cli.main import main
from geoscope.data.manifest import read_manifest, write_manifest
from geoscope.evaluate.results import VIEWS_AVERAGED
from geoscope.evaluate.scoring import evaluate
from geoscope.models.fusion import FUSIONS, group_views, make_fusion, masked_mean
from geoscope.predict import load_model
from geoscope.report import write_report
from geoscope.training.loop import _drop_views


def _views(batch: int = 5, count: int = 4, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = F.normalize(torch.randn(batch, count, dim, generator=g), dim=-1)
    mask = torch.ones(batch, count, dtype=torch.bool)
    mask[1, 2:] = False
    mask[3, 1:] = False
    return views, mask


def _wake(fusion: torch.nn.Module) -> torch.nn.Module:
    """A learned fusion with its (zero-initialised) output layer randomised, so it differs from the mean."""
    torch.manual_seed(1)
    for p in fusion.out.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return fusion.eval()


def test_group_views_orders_each_place_by_heading_and_pads() -> None:
    views, headings = group_views(np.array([1, 0, 1, 1, 0, 2]), np.array([180, 90, 0, 90, 0, np.nan]))
    assert views.tolist() == [[4, 1, -1], [2, 3, 0], [5, -1, -1]]
    assert headings[1].tolist() == [0, 90, 180] and np.isnan(headings[2]).all()


@pytest.mark.parametrize("kind", FUSIONS)
def test_every_fusion_starts_as_the_mean_of_the_views_present(kind: str) -> None:
    views, mask = _views()
    headings = torch.tensor([[0.0, 90.0, 180.0, 270.0]]).repeat(5, 1)
    fused = make_fusion(kind, 16).eval()(views, mask, headings)
    torch.testing.assert_close(fused, F.normalize(masked_mean(views, mask), dim=-1))
    assert torch.allclose(fused.norm(dim=-1), torch.ones(5))


@pytest.mark.parametrize("kind", ["lstm", "attention"])
def test_a_learned_fusion_ignores_missing_views_and_reads_them_by_heading(kind: str) -> None:
    fusion = _wake(make_fusion(kind, 16))
    views, mask = _views()
    headings = torch.tensor([[0.0, 90.0, 180.0, 270.0]]).repeat(5, 1)
    fused = fusion(views, mask, headings)
    assert not torch.allclose(fused, F.normalize(masked_mean(views, mask), dim=-1), atol=1e-3)
    scrambled = views.clone()
    scrambled[~mask] = 7.0  # what a masked slot holds does not matter
    torch.testing.assert_close(fusion(scrambled, mask, headings), fused)
    order = torch.tensor([2, 0, 3, 1])  # the same views with their headings, given in another order
    full = torch.ones_like(mask)
    torch.testing.assert_close(fusion(views[:, order], full[:, order], headings[:, order]),
                               fusion(views, full, headings), atol=1e-5, rtol=1e-5)
    other = torch.tensor([[90.0, 0.0, 180.0, 270.0]]).repeat(5, 1)  # two views swap headings: another answer
    assert not torch.allclose(fusion(views, full, other), fusion(views, full, headings), atol=1e-4)


def test_view_dropout_keeps_one_view_of_every_place() -> None:
    rng = np.random.default_rng(0)
    present = np.ones((2000, 4), dtype=bool)
    present[:500, 2:] = False
    kept = _drop_views(present, 0.5, rng)
    assert kept.any(axis=1).all() and not (kept & ~present).any()
    assert 0.4 < kept[500:].mean() < 0.6
    assert (_drop_views(present, 0.0, rng) == present).all()


@pytest.fixture(scope="module")
def croatia_places(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 real Croatian places, four headings each (every row's views shuffled), split by place."""
    frame = shared_rows("croatia")
    ids = frame["location_id"].astype(str).drop_duplicates().to_numpy()[:40]
    frame = frame[frame["location_id"].astype(str).isin(ids)].sample(frac=1.0, random_state=0)
    order = {place: i for i, place in enumerate(ids)}
    rank = frame["location_id"].astype(str).map(order)
    frame["split"] = np.where(rank < 28, "train", np.where(rank < 34, "val", "test"))
    out = tmp_path_factory.mktemp("croatia") / "manifest.csv"
    write_manifest(frame.reset_index(drop=True), out)
    return out


def test_a_learned_fusion_trains_saves_and_answers_from_the_cli(croatia_places: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lstm"
    assert main(["train", str(croatia_places), "--labels", "grid", "--cell-km", "100", "-o", str(out),
                 "--fusion", "lstm", "--max-epochs", "3", "--no-augment"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["place_clip"]["fusion"] == "lstm" and config["fusion"] == "lstm"
    model = load_model(out)
    assert any(k.startswith("model.fusion.lstm.") for k in model.files.tensors)
    frame = read_manifest(croatia_places).frame
    test = frame[frame["split"] == "test"]
    # it learns from each training place's views together and from each view alone; it is measured on places
    train = frame[frame["split"] == "train"]
    assert config["training"]["data"]["splits"]["train"] == train["location_id"].nunique() + len(train)
    # (places whose cell has training images)
    assert 0 < config["training"]["data"]["splits"]["test"] <= test["location_id"].nunique() < len(test)

    place = test[test["location_id"] == test["location_id"].iloc[0]]
    capsys.readouterr()
    assert main(["predict", *place["image"], "--views", "--model", str(out), "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert len(answer) == 1 and len(answer[0]["views"]) == 4 and answer[0]["guesses"]

    manifest = read_manifest(croatia_places)
    result, _ = evaluate(model, manifest.subset((manifest.frame["split"] == "test").to_numpy()), progress=False)
    assert len(result.predictions) == test["location_id"].nunique()
    assert VIEWS_AVERAGED in result.metrics and VIEWS_AVERAGED in result.baselines
    page = write_report(result, tmp_path / "report").read_text()
    assert "views fused: mean, not the learned fusion" in page  # the report sets the two fusions side by side
    # the fused answer is the model's: the same as fusing the four views' features directly
    fs = model.image_features(list(place["image"]))
    direct = model.probabilities(model.fused_embeddings(fs.embeddings, np.zeros(4, dtype=np.int64)),
                                 fs.embeddings.mean(axis=0, keepdims=True))
    assert answer[0]["answer"]["label"] == model.labels["name"].iloc[int(model.answerer.best(direct)[0])]
    assert pd.Series(result.predictions["pred_label"]).notna().all()

    # a bundle whose fusion weights went missing is refused in one line, not answered by an untrained LSTM
    from safetensors.numpy import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    weights = load_file(broken / "weights.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("model.fusion.")}, broken / "weights.safetensors")
    capsys.readouterr()
    assert main(["predict", place["image"].iloc[0], "--model", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.count("geoscope: error:") == 1 and "lack" in err and "Traceback" not in err
