"""The runtime that runs a frozen encoder: chosen once, the same features in float32, its own cache in bf16."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from geoscope.encoders.image import get_image_encoder
from geoscope.encoders.runtime import BF16_FLAGS, Runtime, cpu_flags, openvino_installed, resolve_runtime
from geoscope.errors import GeoscopeError
from geoscope.features.cache import extract_features

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="needs openvino (pip install openvino)")
EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


def test_a_runtime_is_named_with_an_optional_precision(monkeypatch):
    assert resolve_runtime("onnxruntime") == Runtime("onnxruntime", "fp32")
    assert resolve_runtime("onnxruntime", device="cuda") == Runtime("onnxruntime", "fp32")
    monkeypatch.setenv("GEOSCOPE_RUNTIME", "onnxruntime:fp32")
    assert resolve_runtime() == Runtime("onnxruntime", "fp32")
    for bad, said in (("tensorrt", "unknown runtime"), ("onnxruntime:bf16", "bf16 runs on OpenVINO"),
                      ("openvino:fp8", "unknown precision")):
        with pytest.raises(GeoscopeError, match=said):
            resolve_runtime(bad)


def test_auto_takes_bf16_only_where_the_cpu_computes_it(monkeypatch):
    monkeypatch.delenv("GEOSCOPE_RUNTIME")
    chosen = resolve_runtime()
    native = bool(BF16_FLAGS & cpu_flags())
    assert chosen == (Runtime("openvino", "bf16") if native and openvino_installed() else Runtime("onnxruntime"))
    assert resolve_runtime("auto:fp32") == Runtime("onnxruntime", "fp32")


@needs_openvino
def test_openvino_float32_gives_onnx_runtimes_features_and_shares_their_cache(tmp_path):
    ort = get_image_encoder("efficientnet-lite0", runtime="onnxruntime")
    ov = get_image_encoder("efficientnet-lite0", runtime="openvino:fp32")
    assert ort.cache_key == ov.cache_key
    a = extract_features(EXAMPLES, ort, progress=False, cache=tmp_path / "a").embeddings
    b = extract_features(EXAMPLES, ov, progress=False, cache=tmp_path / "b").embeddings
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()


@needs_openvino
def test_bf16_features_are_close_and_cached_apart(tmp_path):
    ort = get_image_encoder("efficientnet-lite0", runtime="onnxruntime")
    bf16 = get_image_encoder("efficientnet-lite0", runtime="openvino:bf16")
    assert bf16.cache_key == ort.cache_key + "-bf16"
    a = extract_features(EXAMPLES, ort, progress=False, cache=tmp_path / "a").embeddings
    b = extract_features(EXAMPLES, bf16, progress=False, cache=tmp_path / "b").embeddings
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99 and not np.array_equal(a, b)


def test_an_unknown_runtime_is_one_line_before_any_work(tmp_path):
    result = subprocess.run([sys.executable, "-m", "geoscope", "features", str(tmp_path / "none.csv"), "--runtime",
                             "tensorrt"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "geoscope: error: unknown runtime 'tensorrt': use auto, onnxruntime, openvino, optionally with :fp32 or :bf16"]


@needs_openvino
def test_the_python_api_takes_a_runtime():
    import geoscope

    model = geoscope.load(runtime="openvino:fp32")
    assert model.encoder.runtime == Runtime("openvino", "fp32")
    with pytest.raises(GeoscopeError, match="unknown runtime"):
        geoscope.load(runtime="tensorflow")
