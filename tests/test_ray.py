"""``--ray``: ``features`` and ``predict -o`` as Ray Data jobs, on a local Ray cluster the tests start."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared_dataset

GEOSCOPE = [sys.executable, "-m", "geoscope"]
NEEDS_RAY = "Ray is not installed (pip install 'geoscope[ray]'): the Ray jobs cannot be tested"


def _geoscope(*args: object, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*GEOSCOPE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, check=False)


def test_without_ray_the_flag_is_one_line_and_nothing_imports_ray(tmp_path: Path) -> None:
    missing = tmp_path / "no-ray"
    (missing / "ray").mkdir(parents=True)
    (missing / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(missing), *sys.path])}  # this ray cannot be imported
    for command in (["predict", tmp_path, "-o", tmp_path / "out.csv"], ["features", tmp_path / "m.csv"]):
        done = _geoscope(*command, "--ray", env=env, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == ["geoscope: error: --ray needs Ray, which is not installed: "
                                                    "pip install 'geoscope[ray]'"]
    assert not (tmp_path / "out.csv").exists()
    done = _geoscope("predict", tmp_path, "--ray-workers", "2", timeout=120)
    assert done.returncode == 2 and done.stderr.strip() == ("geoscope: error: --ray-workers sets the encoders of a "
                                                            "Ray job: add --ray")
    script = ("import sys, geoscope.cli.main as m, geoscope.outputs.ray_jobs; m.build_parser(); "
              "print(sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.')))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """A local Ray cluster (``ray start --head``, 3 CPUs, token authentication, its own ports and folder) and the
    environment a driver joins it with; stopped at the end."""
    pytest.importorskip("ray", reason=NEEDS_RAY)
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray is None:
        pytest.skip("Ray's `ray` command is not installed beside this Python")
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's sockets live under it
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0",  # the workers import this geoscope and use this session's cache:
           "PYTHONPATH": os.pathsep.join(sys.path),
           "GEOSCOPE_CACHE": str(tmp_path_factory.getbasetemp() / "geoscope-cache")}
    port = _free_port()
    ports = {f"--{name}": _free_port() for name in (
        "dashboard-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "runtime-env-agent-port", "metrics-export-port", "node-manager-port", "object-manager-port")}
    log = (temp / "head.log").open("w")
    head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--num-cpus=3",
                             f"--object-store-memory={300 << 20}", "--include-dashboard=false", f"--temp-dir={temp}",
                             *(f"{k}={v}" for k, v in ports.items())],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in (temp / "head.log").read_text(errors="replace"):
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not start:\n{(temp / 'head.log').read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)
        yield f"127.0.0.1:{port}", env
    finally:
        head.send_signal(signal.SIGINT)  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _rows(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


@pytest.mark.slow
@pytest.mark.shared_data
def test_predict_on_ray_killed_and_rerun_writes_the_rows_of_a_run_without_ray(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    photos = tmp_path / "photos"
    photos.mkdir()
    for source in sorted((shared_dataset("london-uk") / "images").glob("*.jpg"))[:60]:
        shutil.copyfile(source, photos / source.name)
    (photos / "zz-broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a photo")  # an error row, on both paths
    out, plain = tmp_path / "ray.csv", tmp_path / "plain.csv"
    args = [photos, "-o", out, "--chunk-size", "8", "--ray", address, "--ray-workers", "1"]

    driver = subprocess.Popen([*GEOSCOPE, "predict", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (out.is_file() and out.read_bytes().count(b"\n") > 1):  # the first chunk is written
        assert driver.poll() is None, driver.stderr.read()
        assert time.monotonic() < deadline, "no chunk came from the Ray job"
        time.sleep(0.02)
    driver.kill()  # SIGKILL: no cleanup of any kind
    driver.wait()
    driver.stderr.close()
    killed = _rows(out)
    assert 0 < len(killed) < 61 and len(killed) % 8 == 0  # whole chunks only, and the kill came mid-run

    done = _geoscope("predict", *args, env=env)
    assert done.returncode == 2, done.stderr  # the broken photo is an error row
    assert f"{len(killed)} already in" in done.stderr
    assert "Traceback" not in done.stderr
    done = _geoscope("predict", photos, "-o", plain, "--chunk-size", "8", env=env)
    assert done.returncode == 2, done.stderr

    got, want = _rows(out), _rows(plain)
    assert len(got) == len(want) == 61
    assert not got["image"].duplicated().any()
    assert got["image"].tolist() == want["image"].tolist()  # the same rows, in the same order
    numbers = [c for c in want.columns if pd.api.types.is_float_dtype(want[c])]
    pd.testing.assert_frame_equal(got.drop(columns=numbers), want.drop(columns=numbers))
    np.testing.assert_allclose(got[numbers].to_numpy(float), want[numbers].to_numpy(float), rtol=1e-4, atol=1e-5)
    broken = got.set_index("image").loc[str(photos / "zz-broken.jpg"), "error"]
    assert "not an image" in broken or "corrupt" in broken


@pytest.mark.slow
@pytest.mark.shared_data
def test_features_on_ray_fill_the_cache_as_without_it(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    folder = shared_dataset("us-west")
    frame = pd.read_csv(folder / "manifest.csv").iloc[:24]
    frame["image"] = [str(folder / p) for p in frame["image"]]
    frame.loc[len(frame)] = {**frame.iloc[0].to_dict(), "image": str(tmp_path / "missing.jpg")}
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    common = ["features", manifest, "--encoder", "efficientnet-lite0", "--views", "crops2", "--quiet"]

    on_ray = {**env, "GEOSCOPE_CACHE": str(tmp_path / "cache-ray")}
    done = _geoscope(*common, "-o", tmp_path / "ray.npz", "--ray", address, env=on_ray)
    assert done.returncode == 0, done.stderr
    assert "encoded now  24" in done.stdout and "bad images   1" in done.stdout
    again = _geoscope(*common, "--ray", address, env=on_ray)  # all in the cache: Ray is not even joined
    assert again.returncode == 0 and "encoded now  0" in again.stdout and "from cache   24" in again.stdout

    done = _geoscope(*common, "-o", tmp_path / "plain.npz", env={**env, "GEOSCOPE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stderr
    from geoscope.features.cache import FeatureSet

    got, want = FeatureSet.load(tmp_path / "ray.npz"), FeatureSet.load(tmp_path / "plain.npz")
    assert got.paths == want.paths and got.errors == want.errors and got.views == want.views == "crops2"
    assert np.array_equal(got.valid, want.valid) and got.valid.sum() == 24
    np.testing.assert_allclose(got.embeddings[got.valid], want.embeddings[want.valid], rtol=1e-4, atol=1e-5)
