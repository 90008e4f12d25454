"""The runtime that runs a frozen encoder: chosen once, the same features in float32, its own cache in bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, same_answers

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


def _predict(photo: Path, cache: Path, runtime: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "GEOSCOPE_CACHE": str(cache)}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([pythonpath, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "geoscope", "predict", str(photo), "--json", "--runtime", runtime],
                          env=env, capture_output=True, text=True, timeout=300)


def _openvino_without_its_cpu_plugin(folder: Path) -> Path:
    """A copy of the installed openvino package (links to its files) lacking the CPU plugin: a broken install that
    imports, then cannot compile for the CPU."""
    import openvino

    real = Path(openvino.__file__).parent
    (folder / "openvino" / "libs").mkdir(parents=True)
    for entry in real.iterdir():
        if entry.name != "libs":
            (folder / "openvino" / entry.name).symlink_to(entry)
    for entry in (real / "libs").iterdir():
        if "intel_cpu_plugin" not in entry.name:
            (folder / "openvino" / "libs" / entry.name).symlink_to(entry)
    return folder


@needs_openvino
def test_openvino_failing_to_load_falls_back_to_onnx_runtime_in_one_warning_line(tmp_path):
    site = _openvino_without_its_cpu_plugin(tmp_path / "site")
    broken = _predict(EXAMPLES[0], tmp_path / "cache", "openvino:bf16", str(site))
    assert broken.returncode == 0, broken.stderr
    assert broken.stderr.splitlines() == [
        f"geoscope: warning: {next((tmp_path / 'cache' / 'onnx').glob('*.onnx'))}: OpenVINO cannot compile the graph "
        "(Device with \"CPU\" name is not registered in the OpenVINO Runtime); running on onnxruntime fp32 instead"]
    # the features are ONNX Runtime's, and cached as its own, not as bf16 ones
    assert [p.name.endswith("-bf16") for p in (tmp_path / "cache" / "features").iterdir()] == [False]
    plain = _predict(EXAMPLES[0], tmp_path / "cache", "onnxruntime")
    assert plain.returncode == 0 and plain.stdout == broken.stdout and plain.stderr == ""


@needs_openvino
def test_an_unusable_openvino_cache_folder_is_one_warning_line_and_openvino_still_runs(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "openvino").write_text("a file where the compiled graphs' folder should be")
    result = _predict(EXAMPLES[0], cache, "openvino:fp32")
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("geoscope: warning: GEOSCOPE_CACHE=") and "cannot use the cache folder" in line
    assert line.endswith("OpenVINO compiles without keeping its graph")
    # the same answer as ONNX Runtime's: the same names and guesses, numbers as close as the runtimes' features
    # (OpenVINO's float32 agrees to about 1e-6, which can move a printed sixth decimal)
    other = _predict(EXAMPLES[0], tmp_path / "other", "onnxruntime").stdout
    assert same_answers(json.loads(result.stdout), json.loads(other))


def test_a_bad_runtime_in_the_environment_is_one_line_naming_the_variable(tmp_path):
    env = {**os.environ, "GEOSCOPE_RUNTIME": "openvino:fp8", "GEOSCOPE_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "geoscope", "predict", str(EXAMPLES[0])], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "geoscope: error: GEOSCOPE_RUNTIME='openvino:fp8': unknown precision 'fp8': use fp32 or bf16"]
    assert not (tmp_path / "onnx").exists()


@needs_openvino
def test_openvino_pins_its_threads_only_where_they_take_every_core():
    from geoscope.distributed import cpu_count
    from geoscope.encoders.onnx_runtime import onnx_cache_path
    from geoscope.encoders.openvino_runtime import OpenVinoRunner

    encoder = get_image_encoder("efficientnet-lite0", runtime=Runtime("onnxruntime"))
    encoder.load()  # the graph OpenVINO compiles
    graph = onnx_cache_path(encoder.name, encoder.fingerprint)
    alone = OpenVinoRunner(graph, threads=cpu_count(), streams=1)
    assert alone.compiled.get_property("ENABLE_CPU_PINNING") is True
    if cpu_count() > 1:  # one of several processes on this machine (serve --workers, a Ray actor): never pinned
        shared = OpenVinoRunner(graph, threads=1, streams=1)
        assert shared.compiled.get_property("ENABLE_CPU_PINNING") is False
        batch = np.zeros((2, 3, 224, 224), dtype=np.float32)
        np.testing.assert_allclose(shared(batch), alone(batch), atol=1e-5)
