"""Zero-shot prediction with a CLIP checkpoint (StreetCLIP's way), on tiny CLIP checkpoints made here.

The hub is out of reach in tests: a tiny random CLIP is saved to a folder (and into a Hugging
Face cache layout for the by-name path). What is checked is the wiring: the candidate places
and their prompts, that the probabilities are exactly CLIP's hierarchical softmax (recomputed
here with ``transformers`` directly), that each level sums to 1, that the prompts' embeddings are
computed once and then read from the cache, and the predict, evaluate and serve paths.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, make_images, save_clip_tokenizer

from geoscope.cli.main import main
from geoscope.data.manifest import write_manifest
from geoscope.errors import GeoscopeError, ModelError
from geoscope.geo.candidates import MAX_CITIES, place_hierarchy
from geoscope.geo.places import load_places
from geoscope.geo.sphere import geoscore, haversine_km
from geoscope.images import open_image
from geoscope.loading import is_zero_shot, load_any_model, zero_shot_model
from geoscope.models.heads import HEADS, head_from_dict
from geoscope.models.heads.zero_shot import ZeroShotHead
from geoscope.predict import GeoModel

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))
BOX = "48,-11,56,5"
"""Five countries (GB, IE, FR, BE, NL): enough to make every level a real choice."""
BOX_POPULATION = 100_000


def make_tiny_clip(folder: Path) -> Path:
    """A tiny random CLIP checkpoint with a letter-level tokenizer, saved like a hub repository."""
    import transformers

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": 26 + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    config = transformers.CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "vocab_size": 54, "max_position_embeddings": 128,  # a letter per token: prompts are long
                     "bos_token_id": 52, "eos_token_id": 53, "pad_token_id": 53},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )
    transformers.CLIPModel(config).save_pretrained(folder)
    save_clip_tokenizer(vocab, folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "crop_size": 32, "do_center_crop": True, "size": 32, "resample": 3,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


@pytest.fixture(scope="module")
def box_model(tiny_clip: Path) -> GeoModel:
    return zero_shot_model(tiny_clip, BOX, min_population=BOX_POPULATION, progress=False)


# ---------------------------------------------------------------- candidates and prompts


def test_world_candidates_are_bounded_and_keep_every_region() -> None:
    world = place_hierarchy()
    cities, regions, countries = world.cities, world.regions, world.countries
    assert len(cities) == MAX_CITIES
    gazetteer = load_places(None, min_population=15000)
    groups = set(zip(gazetteer["country_code"], gazetteer["region"], strict=True))
    assert set(zip(regions["country_code"], regions["region"], strict=True)) == groups  # every region, once
    assert len(regions) == len(groups) and set(countries["country_code"]) == set(gazetteer["country_code"])
    # each region is answered by at least its largest city; the rest are the most populous
    assert set(cities["parent"]) == set(range(len(regions)))
    assert (np.diff(cities["parent"]) >= 0).all() and (np.diff(regions["parent"]) >= 0).all()
    assert {"London", "Tokyo", "Singapore"} <= set(cities["place"])
    assert cities["population"].min() >= 15000
    assert cities["name"].is_unique


def test_a_country_keeps_all_its_cities_and_prompts_follow_streetclip() -> None:
    gb = place_hierarchy("GB")
    gazetteer = load_places("GB", min_population=15000).drop_duplicates(["region", "name"])
    assert len(gb.cities) == len(gazetteer) and list(gb.countries["name"]) == ["United Kingdom"]
    prompts = gb.prompts()
    assert prompts["country"] == ["A Street View photo in United Kingdom."]
    assert "A Street View photo in England, United Kingdom." in prompts["region"]
    assert "A Street View photo in Leeds, England, United Kingdom." in prompts["city"]
    cities = gb.cities
    expected = [f"A Street View photo in {p}, {r}, {c}." for p, r, c in
                zip(cities["place"], cities["region"], cities["country"], strict=True)]
    assert prompts["city"] == expected  # no GB city is named like its region
    assert [len(prompts[k]) for k in ("country", "region", "city")] == [1, 4, len(cities)]
    with pytest.raises(GeoscopeError, match="exactly one"):
        gb.prompts("A photo in {} or {}")


# ---------------------------------------------------------------- the probabilities are CLIP's


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def clip_oracle(folder: Path, model: GeoModel, images: list[Path]) -> tuple[np.ndarray, list[dict]]:
    """P(city) and P(country) per image from transformers' CLIP directly, grouped by the names in the tables."""
    import torch
    import transformers

    clip = transformers.CLIPModel.from_pretrained(folder).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    pre = model.encoder.preprocess  # decoded as the feature cache decodes (JPEG draft mode at the size needed)
    pixels = np.stack([pre(open_image(p, min_size=pre.decode_size)) for p in images])

    def unit(t: torch.Tensor) -> np.ndarray:
        x = t.double().numpy()
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    with torch.inference_mode():
        image = unit(clip.visual_projection(clip.vision_model(pixel_values=torch.from_numpy(pixels)).pooler_output))
        text = {}
        for level, prompts in model.head.prompts.items():
            tokens = tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
            pooled = clip.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
            text[level] = unit(clip.text_projection(pooled.pooler_output))
        scale = float(clip.logit_scale.exp())
    countries, regions, cities = (model.head.hierarchy.tables()[k] for k in ("country", "region", "city"))
    out, country_probs = [], []
    for e in image:
        p_country = dict(zip(countries["country_code"], _softmax(scale * text["country"] @ e), strict=True))
        logits = pd.Series(scale * text["region"] @ e)
        p_region = logits.groupby(regions["country_code"].to_numpy()).transform(lambda s: _softmax(s.to_numpy()))
        p_region = dict(zip(zip(regions["country_code"], regions["region"], strict=True), p_region, strict=True))
        logits = pd.Series(scale * text["city"] @ e)
        keys = cities["country_code"] + "\x1f" + cities["region"]
        p_city = logits.groupby(keys.to_numpy()).transform(lambda s: _softmax(s.to_numpy())).to_numpy()
        out.append([p_country[c] * p_region[(c, r)] * q for c, r, q in
                    zip(cities["country_code"], cities["region"], p_city, strict=True)])
        country_probs.append({countries["name"][i]: p_country[c] for i, c in enumerate(countries["country_code"])})
    return np.array(out), country_probs


def test_probabilities_are_clips_hierarchical_softmax(box_model: GeoModel, tiny_clip: Path) -> None:
    images = EXAMPLES[:3]
    oracle, countries = clip_oracle(tiny_clip, box_model, images)
    fs = box_model.image_features(images)
    probs = box_model.probabilities(box_model.embed(fs.embeddings), fs.embeddings)
    np.testing.assert_allclose(probs, oracle, atol=2e-4)
    assert (oracle.max(axis=1) > 3 * np.median(oracle, axis=1)).all()  # the similarities do rank the places

    names = box_model.labels["name"].to_numpy()
    for prediction, row, country in zip(box_model.predict(images, top_k=5), oracle, countries, strict=True):
        record = prediction.to_dict()
        assert record["in_coverage"] is None and record["confidence"] is None and record["coverage_score"] is None
        got = [(g["label"], g["probability"]) for g in record["guesses"]]
        lat, lon = box_model.labels["lat"].to_numpy(), box_model.labels["lon"].to_numpy()
        likely = np.argsort(-row)[:32]
        where = max(likely, key=lambda j: (row * geoscore(haversine_km(lat[j], lon[j], lat, lon))).sum())
        first = int(np.argmax(np.where(haversine_km(lat[where], lon[where], lat, lon) <= 50.0, row, -1.0)))
        assert record["answer"]["label"] == record["answer"]["name"] == names[first]  # the best single answer
        assert [label for label, _ in got] == [names[j] for j in np.argsort(-row)[:5]]  # the guesses: by probability
        for label, p in got:
            assert row[list(names).index(label)] == pytest.approx(p, abs=2e-4)
        for entry in record["levels"]["country"]:
            assert country[entry["name"]] == pytest.approx(entry["probability"], abs=2e-4)
        assert {g["place"] for g in record["guesses"]} <= set(box_model.labels["place"])


def test_every_level_sums_to_one(box_model: GeoModel) -> None:
    features = box_model.image_features(EXAMPLES[3:6]).embeddings
    embeddings = box_model.embed(features)
    levels = box_model.head.level_probabilities(embeddings)
    np.testing.assert_allclose(levels["country"].sum(axis=1), 1, atol=1e-9)
    regions, cities = box_model.head.hierarchy.regions, box_model.labels
    for country, rows in regions.groupby("country_code").groups.items():  # P(region | country)
        np.testing.assert_allclose(levels["region"][:, rows].sum(axis=1), 1, atol=1e-9, err_msg=country)
    for key, rows in cities.groupby(["country_code", "region"]).groups.items():  # P(city | region)
        np.testing.assert_allclose(levels["city"][:, rows].sum(axis=1), 1, atol=1e-9, err_msg=str(key))
    probs = box_model.probabilities(embeddings, features).astype(np.float64)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    by_country = pd.DataFrame(probs.T).groupby(cities["country_code"].to_numpy()).sum()  # = P(country)
    np.testing.assert_allclose(by_country.loc[box_model.head.hierarchy.countries["country_code"]].to_numpy().T,
                               levels["country"], atol=1e-5)
    answer = box_model.predict([EXAMPLES[3]], level="country", top_k=10)[0]
    assert sum(g.probability for g in answer.guesses) == pytest.approx(1, abs=1e-4)
    assert len(answer.guesses) == len(box_model.head.hierarchy.countries)


# ---------------------------------------------------------------- the text embeddings are cached


def test_prompt_embeddings_are_computed_once_then_read_from_the_cache(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "cache"))
    folder = shutil.copytree(tiny_clip, tmp_path / "clip")
    first = ZeroShotHead.create(folder, BOX, min_population=BOX_POPULATION, progress=False)
    total = sum(len(p) for p in first.prompts.values())
    assert first.prompts_encoded == total and first.text.path.is_file()
    first_model = zero_shot_model(folder, BOX, min_population=BOX_POPULATION, progress=False)
    before = first_model.predict(EXAMPLES[:2])

    # Without its tokenizer files the text side would embed every prompt alike (all unknown tokens):
    # answers that stay the same show that the second load read the cached embeddings.
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    stamp = first.text.path.stat().st_mtime_ns
    second = zero_shot_model(folder, BOX, min_population=BOX_POPULATION, progress=False)
    assert second.head.prompts_encoded == 0 and second.head.text.path == first.text.path
    assert first.text.path.stat().st_mtime_ns == stamp
    after = second.predict(EXAMPLES[:2])
    assert [p.to_dict() for p in after] == [p.to_dict() for p in before]
    assert len({g.probability for p in after for g in p.guesses}) > 1
    assert len(list((tmp_path / "cache" / "zero-shot").glob("*.safetensors"))) == 1


def test_other_regions_and_templates_get_their_own_cache_entry(
    tiny_clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "cache"))
    a = ZeroShotHead.create(tiny_clip, "IE", progress=False)
    b = ZeroShotHead.create(tiny_clip, "IE", template="A photo taken in {}.", progress=False)
    c = ZeroShotHead.create(tiny_clip, "BE", progress=False)
    assert a.prompts_encoded and b.prompts_encoded and c.prompts_encoded
    assert len({a.text.path, b.text.path, c.text.path}) == 3
    assert b.prompts["country"] == ["A photo taken in Ireland."]
    assert ZeroShotHead.create(tiny_clip, "IE", template="A photo taken in {}.", progress=False).prompts_encoded == 0


# ---------------------------------------------------------------- predict, evaluate, serve


def strict_loads(text: str) -> object:
    def refuse(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def test_cli_predict_json_with_a_clip_folder(tiny_clip: Path, capsys: pytest.CaptureFixture) -> None:
    assert is_zero_shot(tiny_clip) and is_zero_shot("hf:geolocal/StreetCLIP")
    images = [str(p) for p in EXAMPLES[:2]]
    assert main(["predict", *images, "--model", str(tiny_clip), "--region", "GB", "--json", "--top-k", "3"]) == 0
    records = strict_loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == images
    for record in records:
        assert set(record["levels"]) == {"country", "region"}
        assert record["levels"]["country"] == [{"name": "United Kingdom", "probability": 1.0}]
        assert len(record["guesses"]) == 3 and record["guesses"][0]["country"] == "United Kingdom"
        assert record["in_coverage"] is None and record["confidence"] is None
        total = sum(r["probability"] for r in record["levels"]["region"])
        assert total == pytest.approx(1, abs=1e-4)  # GB has four regions: all listed

    assert main(["predict", *images, "--model", str(tiny_clip), "--region", "GB", "--views", "--json"]) == 0
    [fused] = strict_loads(capsys.readouterr().out)
    assert fused["views"] == images and fused["guesses"]


def test_cli_evaluate_a_clip_folder_without_baselines(tiny_clip: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    paths = make_images(tmp_path / "images", 4, size=(48, 40))
    towns = [(51.51, -0.13), (53.80, -1.55), (55.95, -3.19), (51.48, -3.18)]  # London, Leeds, Edinburgh, Cardiff
    rows = [{"image": f"images/{p.name}", "lat": lat, "lon": lon} for p, (lat, lon) in zip(paths, towns, strict=True)]
    manifest = write_manifest(pd.DataFrame(rows), tmp_path / "manifest.csv")
    args = ["evaluate", str(manifest), "--model", str(tiny_clip), "--region", "GB"]
    assert main([*args, "--json"]) == 0
    result = strict_loads(capsys.readouterr().out)
    assert result["n"] == 4 and set(result["metrics"]) == {"model"}  # no training images: no baselines
    assert result["metrics"]["model"]["n_labelled"] == 4 and result["in_coverage"] is None
    assert main([*args, "--report", str(tmp_path / "report")]) == 0
    table = capsys.readouterr().out
    assert "model" in table and "centroid" not in table and "knn" not in table
    assert (tmp_path / "report" / "index.html").is_file()


def test_region_is_refused_for_a_trained_bundle(capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(EXAMPLES[0]), "--region", "GB"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geoscope: error: --region chooses the places of a zero-shot model")


def test_an_unreachable_hub_name_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "GEOSCOPE_CACHE": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "geoscope.cli.main", "predict", str(EXAMPLES[0]), "--model",
                          "hf:nonexistent/model"], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 2 and run.stdout == ""
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("geoscope: error: ") and "nonexistent/model" in lines[0]


def test_a_checkpoint_that_is_not_clip_is_refused(tmp_path: Path) -> None:
    import transformers

    transformers.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]).save_pretrained(tmp_path)
    assert not is_zero_shot(tmp_path)
    with pytest.raises(GeoscopeError, match="needs a whole CLIP checkpoint"):
        load_any_model(f"hf:{tmp_path}")


def test_a_hub_name_loads_from_the_offline_cache(tiny_clip: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``hf:<repo>`` as for a user who fetched it once: resolved through the Hugging Face cache."""
    from huggingface_hub import constants

    commit = "0" * 40
    entry = tmp_path / "models--tiny--clip"
    shutil.copytree(tiny_clip, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_any_model("hf:tiny/clip", "IE")
    assert isinstance(model.head, ZeroShotHead) and model.config["name"] == "hf:tiny/clip zero-shot (IE)"
    [answer] = model.predict([EXAMPLES[0]], top_k=2)
    assert answer.error is None and answer.guesses[0].country == "Ireland"
    with pytest.raises(GeoscopeError, match="not in the local cache"):
        load_any_model("hf:openai/clip-vit-large-patch14")


def test_serve_answers_with_a_clip_folder(tiny_clip: Path) -> None:
    from fastapi.testclient import TestClient

    from geoscope.serve import create_app

    model = load_any_model(tiny_clip, BOX)  # create_app(folder) would load it the same way, over the world
    with TestClient(create_app(model)) as client:
        reply = client.post("/predict", content=EXAMPLES[0].read_bytes(), headers={"content-type": "image/jpeg"})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert len(body["levels"]["country"]) == 5 and body["in_coverage"] is None and body["confidence"] is None
        expected = model.predict([EXAMPLES[0]])[0].to_dict()
        assert [g["label"] for g in body["guesses"]] == [g["label"] for g in expected["guesses"]]  # as predict says
        assert [g["probability"] for g in body["guesses"]] == pytest.approx(
            [g["probability"] for g in expected["guesses"]], abs=1e-5)
        summary = client.get("/model").json()
        assert summary["labels"] == len(model.labels) and summary["image_encoder"] == f"hf:{tiny_clip}"


def test_zero_shot_is_a_head_the_geo_model_composes(box_model: GeoModel) -> None:
    """The same GeoModel, with a zero-shot head: no training images, so no gallery, centroid or refiners, each
    refused in one line; its section of ``config.json`` names it and builds it again."""
    head = box_model.head
    assert type(box_model) is GeoModel and HEADS[head.kind] is ZeroShotHead and not head.trainable
    assert box_model.training_centroid is None and box_model.refiners == {} and not box_model.has_gallery
    assert box_model.coverage is None and box_model.level_expert is None and box_model.fusion == "mean"
    assert box_model.refiner(None) is None and box_model.refiner("none") is None
    with pytest.raises(ModelError, match="no training images to search"):
        box_model.knn(np.zeros((1, head.embedding_dim), dtype=np.float32))
    for name in ("knn", "gps"):
        with pytest.raises(ModelError, match="no training images to refine with"):
            box_model.refiner(name)
    section = box_model.config["model"]
    assert section["head"] == "zero-shot" and head.tensors() == {}
    again = head_from_dict(section, {})
    assert isinstance(again, ZeroShotHead) and again.to_dict() == section and len(again) == len(head)
    np.testing.assert_allclose(again.text.levels["city"], head.text.levels["city"], atol=1e-6)
    features = box_model.image_features(EXAMPLES[:2]).embeddings
    fused = box_model.fused_embeddings(features, np.zeros(2, dtype=np.int64))
    mean = features / np.linalg.norm(features, axis=1, keepdims=True)
    mean = mean.mean(axis=0)
    np.testing.assert_allclose(fused[0], mean / np.linalg.norm(mean), atol=1e-6)
