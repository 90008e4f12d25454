"""The default encoder's graph ships without its weights: installed from the weights package on first use, it computes
what the torch module computes, and a first predict with an empty cache answers as the second does."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from conftest import REPO

from geoscope.encoders.image import image_encoder_spec
from geoscope.encoders.onnx_runtime import OnnxRunner
from geoscope.encoders.shipped import SHIPPED, install_shipped, shipped_stem, weights_sidecar
from geoscope.predict import load_model

PHOTO = REPO / "examples" / "images" / "london-uk-1.jpg"


def test_the_default_encoders_graph_ships_and_computes_what_torch_computes(tmp_path: Path) -> None:
    spec = image_encoder_spec(load_model().image_side.cached_encoder)
    assert (SHIPPED / f"{shipped_stem(spec)}.onnx").is_file(), "rerun scripts/ship_encoder_graph.py"
    graph = tmp_path / f"{shipped_stem(spec)}.onnx"
    assert install_shipped(spec, graph)
    assert graph.stat().st_size < 1_000_000 < weights_sidecar(graph).stat().st_size  # the weights: beside, not in it
    size = spec.preprocess.crop_size
    images = np.random.default_rng(0).standard_normal((3, 3, size, size)).astype(np.float32)
    with torch.no_grad():
        expected = spec.build().eval()(torch.from_numpy(images)).numpy()
    got = OnnxRunner(graph)(images)
    assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_other_weights_than_the_graph_was_made_for_get_it_exported_instead(tmp_path: Path) -> None:
    spec = image_encoder_spec("efficientnet-lite0/layout")
    other = tmp_path / spec.weights.name
    data = bytearray(spec.weights.read_bytes())
    data[-1] ^= 1
    other.write_bytes(data)
    graph = tmp_path / f"{shipped_stem(spec)}.onnx"
    assert not install_shipped(replace(spec, weights=other), graph)
    assert not graph.exists()
    resized = image_encoder_spec("efficientnet-lite0/layout@256")
    assert not install_shipped(resized, tmp_path / f"{shipped_stem(resized)}.onnx")


def test_a_first_predict_with_an_empty_cache_answers_as_the_second_and_fills_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "GEOSCOPE_CACHE": str(cache), "GEOSCOPE_RUNTIME": "auto"}  # what a user's first run takes
    env.pop("PYTHONWARNINGS", None)
    runs = [subprocess.run([sys.executable, "-m", "geoscope", "predict", str(PHOTO), "--json"], env=env,
                           capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and '"answer"' in runs[0].stdout
    assert runs[0].stderr == ""
    spec = image_encoder_spec(load_model().image_side.cached_encoder)
    graph = cache / "onnx" / f"{shipped_stem(spec)}.onnx"
    assert graph.read_bytes() == (SHIPPED / graph.name).read_bytes()  # installed, not exported from torch
    assert weights_sidecar(graph).is_file()
    assert list((cache / "features").glob("*/plain/shard-*.safetensors"))
