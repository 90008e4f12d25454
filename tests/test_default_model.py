"""The bundled default model and how it is made: the training script writes only where it is told and
records its data's provenance, bundles may store float16 and are read as float32, and the README's example
photos are ones the default model never trained on."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, SHARED_DATA, shared_dataset
from safetensors.numpy import load_file, save_file

from geoscope.bundle import DEFAULT_BUNDLE, WEIGHTS, read_bundle
from geoscope.geo.sphere import haversine_km

EXAMPLES = REPO / "examples"


def _training_script():
    """scripts/train_default_model.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("train_default_model", REPO / "scripts" / "train_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the training script


@pytest.mark.parametrize("argv, said", [
    ([], "say where to write the bundle: -o DIR, or --replace-default"),
    (["-o", "elsewhere", "--replace-default"], "give -o DIR or --replace-default, not both"),
])
def test_the_training_script_writes_nowhere_unless_told(argv: list[str], said: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in DEFAULT_BUNDLE.iterdir()}
    # a data folder that does not exist: the script must refuse before it reads anything
    assert _training_script().main(["--data", str(tmp_path / "no-data"), *argv]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.stat().st_mtime_ns for p in DEFAULT_BUNDLE.iterdir()} == before


@pytest.mark.shared_data
def test_the_training_script_records_where_its_data_came_from(tmp_path: Path) -> None:
    for name in ("london-uk", "london-on", "us-west", "croatia"):
        shared_dataset(name)
    script = _training_script()
    manifest = script.combined_manifest(SHARED_DATA)
    record = script.training_data_record(manifest, SHARED_DATA, tmp_path, ["python", "scripts/train_default_model.py"])
    assert (tmp_path / "DATASET.md").is_file() and (tmp_path / "dataset.json").is_file()
    sources = record["sources"]
    assert [s["dataset"] for s in sources] == list(script.SETS)
    assert sum(s["images"] for s in sources) == record["images"] == len(manifest.frame)
    for source in sources:
        assert "github.com" in source["location"] and "no licence" in source["terms"]
        assert sum(source["splits"].values()) == source["images"] > 0
    assert "not recorded" not in (tmp_path / "DATASET.md").read_text(encoding="utf-8")


def test_the_default_model_records_its_training_data() -> None:
    files = read_bundle(None)
    provenance = files.config["training"]["data"]["provenance"]
    assert [s["dataset"] for s in provenance["sources"]] == ["london-uk", "london-on", "us-west", "croatia"]
    assert sum(s["splits"]["train"] for s in provenance["sources"]) == len(files.tensors["split.train_sha1"])
    card = (DEFAULT_BUNDLE / "README.md").read_text(encoding="utf-8")
    training = card.split("## Training data", 1)[1].split("\n## ", 1)[0]
    assert "not recorded" not in training
    for source in provenance["sources"]:
        assert source["location"] in training and f"`{source['dataset']}`" in training
        assert f"{source['images']:,} images" in training


# ---------------------------------------------------------------- float16 in bundles


def test_float16_tensors_are_read_as_float32(tmp_path: Path) -> None:
    bundle = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "bundle")
    tensors = load_file(str(bundle / WEIGHTS))
    stored = tensors["place_embeddings"].astype(np.float16)
    tensors["place_embeddings"] = stored
    save_file(tensors, str(bundle / WEIGHTS))
    assert load_file(str(bundle / WEIGHTS))["place_embeddings"].dtype == np.float16
    files = read_bundle(bundle)
    assert files.tensors["place_embeddings"].dtype == np.float32
    assert np.array_equal(files.tensors["place_embeddings"], stored.astype(np.float32))
    assert not [k for k, v in files.tensors.items() if v.dtype == np.float16]  # also those stored so by fit
    assert files.tensors["gallery.lat"].dtype == np.float64 and files.tensors["split.train_sha1"].dtype == np.uint8


# ---------------------------------------------------------------- the README's example photos


def _examples() -> pd.DataFrame:
    frame = pd.read_csv(EXAMPLES / "manifest.csv")
    frame["sha1"] = [hashlib.sha1((EXAMPLES / p).read_bytes()).digest() for p in frame["image"]]
    return frame


def test_no_example_photo_is_a_training_image_of_the_default_model() -> None:
    trained = {bytes(row) for row in load_file(str(DEFAULT_BUNDLE / WEIGHTS))["split.train_sha1"]}
    examples = _examples()
    assert len(examples) == 8 and len(trained) > 10_000
    assert [p for p, digest in zip(examples["image"], examples["sha1"], strict=True) if digest in trained] == []


@pytest.mark.shared_data
def test_the_example_photos_are_test_images_far_from_every_training_image() -> None:
    for name in ("london-uk", "london-on", "us-west", "croatia"):
        shared_dataset(name)
    frame = _training_script().combined_manifest(SHARED_DATA).frame  # the split the default model was trained on
    train = frame[frame["split"] == "train"]
    by_digest = {hashlib.sha1(Path(p).read_bytes()).digest(): i for i, p in zip(frame.index, frame["image"],
                                                                                 strict=True)}
    sources = (EXAMPLES / "SOURCES.md").read_text(encoding="utf-8")
    for example in _examples().itertuples():
        row = frame.loc[by_digest[example.sha1]]  # byte for byte one of the shared images
        assert row["split"] == "test" and row["dataset"] == example.dataset, example.image
        assert np.isclose(row["lat"], example.lat) and np.isclose(row["lon"], example.lon)
        nearest = haversine_km(example.lat, example.lon, train["lat"].to_numpy(), train["lon"].to_numpy()).min()
        assert nearest > 1.0, f"{example.image} lies {nearest:.2f} km from a training image"
        original = Path(row["image"]).resolve().relative_to((SHARED_DATA / example.dataset).resolve()).as_posix()
        assert f"| {Path(example.image).name} | {example.dataset} |" in sources and original in sources
        if example.dataset == "us-west":
            assert original.endswith("_000.jpg")  # heading 0
