"""Shared fixtures: the real datasets in ../shared/data (skipped when absent) and small made data."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
os.environ["GEOSCOPE_RUNTIME"] = "onnxruntime"
"""The same features on every CPU: ``auto`` takes bf16 on CPUs with AMX (``tests/test_runtimes.py`` tests it)."""
SHARED_DATA = Path(os.environ.get("GEOSCOPE_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own geoscope cache so tests never see a user's cache."""
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path_factory.getbasetemp() / "geoscope-cache"))


@pytest.fixture(scope="module")
def model():
    """The bundled default model, loaded once a module (a module may override it with another model)."""
    from geoscope.predict import load_model

    return load_model()


@pytest.fixture(scope="module")
def client(model):
    """The service in process over the module's ``model``."""
    from fastapi.testclient import TestClient

    from geoscope.serve import create_app

    with TestClient(create_app(model)) as test_client:
        yield test_client


def shared_dataset(name: str) -> Path:
    """Folder of one real dataset, or skip the test with the reason."""
    folder = SHARED_DATA / name
    if not (folder / "manifest.csv").is_file():
        pytest.skip(f"needs the real dataset {folder} (../shared/data beside the repository)")
    return folder


def shared_rows(name: str, rows: int | None = None):
    """The first ``rows`` rows of a real dataset's manifest, image paths made absolute (skips when absent)."""
    from geoscope.data.manifest import read_manifest

    m = read_manifest(shared_dataset(name) / "manifest.csv")
    frame = m.frame.iloc[:rows].copy()
    frame["image"] = [str(p) for p in m.image_paths[: len(frame)]]
    return frame


def make_images(folder: Path, n: int, *, size: tuple[int, int] = (64, 48), seed: int = 0) -> list[Path]:
    """Write ``n`` small random-colour JPEGs and return their paths."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        path = folder / f"img_{i:03d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def save_clip_tokenizer(vocab: dict[str, int], folder: Path) -> None:
    """Save a CLIP tokenizer over ``vocab`` (no merges) into a checkpoint folder the test makes."""
    import json

    import transformers

    try:  # transformers 5 takes the vocabulary directly; 4 wants files
        tokenizer = transformers.CLIPTokenizer(vocab=vocab, merges=[])
    except TypeError:
        (folder / "vocab.json").write_text(json.dumps(vocab))
        (folder / "merges.txt").write_text("#version: 0.2\n")
        tokenizer = transformers.CLIPTokenizer(folder / "vocab.json", folder / "merges.txt")
    tokenizer.save_pretrained(folder)


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


def drawn(png: str | os.PathLike[str], colour: str) -> int:
    """How many pixels of a PNG are exactly ``colour`` (``#rrggbb``): what was drawn in it, at its centres."""
    pixels = np.asarray(Image.open(png).convert("RGB")).reshape(-1, 3)
    return int((pixels == [int(colour[i:i + 2], 16) for i in (1, 3, 5)]).all(axis=1).sum())
