"""Several processes: DDP training through torchrun, features shared out by rank, --shard and concurrent writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
from conftest import make_images, shared_dataset

from geoscope.cli.main import main
from geoscope.features.cache import FeatureSet, extract_features
from geoscope.models.heads.place_names import PlaceNamesHead
from geoscope.training.loop import TrainConfig, TrainingData, train

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "geoscope"]


def _geoscope(*args: str, torchrun: bool = False, timeout: float = 120) -> subprocess.CompletedProcess:
    command = [*TORCHRUN] if torchrun else [sys.executable, "-m", "geoscope"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def two_londons(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """100 images of London, UK and 100 of London, Ontario, labelled by their ``city`` column."""
    frames = []
    for name in ("london-uk", "london-on"):
        folder = shared_dataset(name)
        frame = pd.read_csv(folder / "manifest.csv").iloc[:100]
        frame["image"] = [str(folder / p) for p in frame["image"]]
        frames.append(frame)
    path = tmp_path_factory.mktemp("londons") / "manifest.csv"
    pd.concat(frames).to_csv(path, index=False)
    return path


def test_python_dash_m_geoscope_runs_the_cli() -> None:
    done = _geoscope("--version")
    assert done.returncode == 0 and done.stdout.startswith("geoscope ")


@pytest.mark.shared_data
def test_torchrun_training_matches_one_process_and_writes_one_bundle(two_londons: Path, tmp_path: Path) -> None:
    # dropout and feature noise draw random numbers per rank; without them two ranks train as one process does
    args = ["--labels", "column", "--column", "city", "--max-epochs", "3", "--batch-size", "32", "--no-augment",
            "--dropout", "0", "--feature-noise", "0", "--device", "cpu"]
    single = _geoscope("train", str(two_londons), "-o", str(tmp_path / "one" / "model"), *args)
    assert single.returncode == 0, single.stderr
    double = _geoscope("train", str(two_londons), "-o", str(tmp_path / "two" / "model"), *args, torchrun=True)
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("wrote ") == 1  # rank 0 alone reports (and writes)
    assert [p.name for p in (tmp_path / "two").iterdir()] == ["model"]
    assert not [p for p in (tmp_path / "two" / "model").iterdir() if p.name.startswith(".")]  # no temporary left
    config = json.loads((tmp_path / "two" / "model" / "config.json").read_text())
    assert config["training"]["distributed"] == {"world_size": 2, "backend": "gloo", "nodes": 1,
                                                 "devices": ["cpu", "cpu"]}
    one = json.loads((tmp_path / "one" / "model" / "config.json").read_text())
    assert one["training"]["distributed"]["world_size"] == 1
    assert one["training"]["best_epoch"] == config["training"]["best_epoch"]
    for split in ("train", "val", "test"):
        a, b = one["metrics"][split], config["metrics"][split]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1e-9)  # the same images right
        assert b["median_km"] == pytest.approx(a["median_km"], rel=1e-6)


@pytest.mark.shared_data
def test_torchrun_features_equal_one_process_exactly(two_londons: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = tmp_path / "forty.csv"
    pd.read_csv(two_londons).iloc[80:120].to_csv(manifest, index=False)  # 20 of each city
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "cache-two"))
    double = _geoscope("features", str(manifest), "-o", str(tmp_path / "two.npz"), "--quiet", "--device", "cpu",
                       torchrun=True)
    assert double.returncode == 0, double.stderr
    assert "40 images" in double.stdout and "encoded now  40" in double.stdout and "2 processes" in double.stdout
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "cache-one"))
    single = extract_features(pd.read_csv(manifest)["image"].tolist(), "efficientnet-lite0", progress=False)
    two = FeatureSet.load(tmp_path / "two.npz")
    assert single.valid.all() and two.valid.all()
    np.testing.assert_array_equal(two.embeddings, single.embeddings)
    assert two.paths == single.paths


def test_shards_are_disjoint_and_assemble_to_one_process_features(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    images = make_images(tmp_path / "images", 12, seed=11)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"image": [f"images/{p.name}" for p in images], "lat": 51.5, "lon": -0.1}).to_csv(manifest,
                                                                                                     index=False)
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "shared-cache"))
    encoded = []
    for k in range(3):
        assert main(["features", str(manifest), "--shard", f"{k}/3", "--quiet", "--device", "cpu"]) == 0
        out = capsys.readouterr().out
        share_rows = int(out.split("share")[1].split(":")[1].split("of")[0].replace(",", ""))
        encoded.append(int(out.split("encoded now")[1].split()[0]))
        assert encoded[-1] == share_rows  # a fresh cache: each share encodes its own images only
    assert sum(encoded) == 12 and all(encoded)  # disjoint shares covering every image
    assert main(["features", str(manifest), "-o", str(tmp_path / "all.npz"), "--quiet"]) == 0
    assert "encoded now  0" in capsys.readouterr().out  # the shards hold everything
    monkeypatch.setenv("GEOSCOPE_CACHE", str(tmp_path / "own-cache"))
    alone = extract_features(images, "efficientnet-lite0", progress=False)
    np.testing.assert_array_equal(FeatureSet.load(tmp_path / "all.npz").embeddings, alone.embeddings)
    assert main(["features", str(manifest), "--shard", "0/3", "-o", str(tmp_path / "x.npz")]) == 2
    assert "writes no output" in capsys.readouterr().err


def test_concurrent_writers_share_the_work_and_a_killed_one_is_resumed(tmp_path: Path) -> None:
    images = make_images(tmp_path / "images", 48, size=(320, 240), seed=12)
    listing = tmp_path / "images.txt"
    listing.write_text("\n".join(map(str, images)))
    script = ("import sys; from geoscope.features.cache import extract_features; "
              "r = extract_features(open(sys.argv[1]).read().split('\\n'), 'efficientnet-lite0', shard_size=4, "
              "batch_size=4, workers=1, progress=False, cache=sys.argv[2]); print(r.encoded, int(r.valid.sum()))")
    cache = tmp_path / "cache"
    extract_features(images[:1], "efficientnet-lite0", progress=False, cache=tmp_path / "warm")  # ONNX export once
    writers = [subprocess.Popen([sys.executable, "-c", script, str(listing), str(cache)], stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    results = [tuple(map(int, w.communicate(timeout=120)[0].split())) for w in writers]
    assert sum(encoded for encoded, _ in results) == 48  # no image encoded twice
    assert all(valid == 48 for _, valid in results)  # each got every image's features

    # a writer killed mid-way (kill -9: no clean-up) leaves finished shards and a stale claim; a rerun resumes
    cache = tmp_path / "cache-killed"
    victim = subprocess.Popen([sys.executable, "-c", script, str(listing), str(cache)], stdout=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while len(list(cache.glob("*/plain/shard-*.safetensors"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    done = 4 * len(list(cache.glob("*/plain/shard-*.safetensors")))
    assert 0 < done < 48 and list(cache.glob("*/plain/claims/*.claims"))  # its claim outlived it
    rerun = extract_features(images, "efficientnet-lite0", shard_size=4, progress=False, cache=cache)
    assert rerun.encoded == 48 - done and rerun.valid.all()
    assert not list(cache.glob("*/plain/claims/*.claims"))  # the stale claim was cleared


def _ddp_worker(rank: int, port: int, loss: str, out: str, checkpoint: str | None = None,
                stop_after: int | None = None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2")
    import torch

    from geoscope import distributed

    torch.set_num_threads(1)
    run = distributed.start("cpu")
    try:
        result = _train_small(loss, checkpoint, stop_after)
    except KeyboardInterrupt:  # the stop asked for: both ranks leave after the same epoch
        distributed.finish()
        return
    if run.main:
        Path(out).write_text(json.dumps({"history": result.history, "run": result.run}))
    distributed.finish()


def _train_small(loss: str, checkpoint: str | None = None, stop_after: int | None = None):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 260)
    x = (rng.standard_normal((4, 16))[labels] + rng.standard_normal((2, 260, 16))).astype(np.float32)
    lat, lon = 50.0 + labels * 0.5, labels * 0.5
    coords = np.array([[50.0 + i * 0.5, i * 0.5] for i in range(4)])
    train_data = TrainingData(x[:, :203], labels[:203], lat[:203], lon[:203])  # batches of 50: the last one uneven
    val = TrainingData(x[:, 203:], labels[203:], lat[203:], lon[203:])
    config = TrainConfig(max_epochs=4, batch_size=50, embed_dim=16, dropout=0.0, feature_noise=0.0, loss=loss,
                         label_smoothing_km=30.0, level_weight=0.3 if loss == "label" else 0.0)
    head = PlaceNamesHead.create(config, 16, rng.standard_normal((4, 6)).astype(np.float32))

    def stop(epoch: int, _: object) -> None:
        if epoch == stop_after:
            raise KeyboardInterrupt

    return train(head, train_data, val, coords, config, label_levels=np.array([[0, 0, 1, 1]]), progress=False,
                 checkpoint=checkpoint, on_epoch=stop)


@pytest.mark.parametrize("loss", ["label", "clip"])
def test_two_gloo_ranks_train_as_one_process(loss: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "ranks.json"
    mp.spawn(_ddp_worker, args=(port, loss, str(out)), nprocs=2)
    ranks = json.loads(out.read_text())
    assert ranks["run"]["world_size"] == 2 and ranks["run"]["backend"] == "gloo"
    single = _train_small(loss).history
    assert len(single) == len(ranks["history"])
    if loss == "label":  # two ranks stopped in their third epoch resume from the second's checkpoint alike
        saved = tmp_path / "run.pt"
        mp.spawn(_ddp_worker, args=(port, loss, str(tmp_path / "stopped.json"), str(saved), 3), nprocs=2)
        assert saved.is_file() and not (tmp_path / "stopped.json").exists()
        mp.spawn(_ddp_worker, args=(port, loss, str(out), str(saved)), nprocs=2)
        assert json.loads(out.read_text())["history"] == ranks["history"]
    for a, b in zip(single, ranks["history"], strict=True):
        assert (a["epoch"], a["split"]) == (b["epoch"], b["split"])
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["accuracy"] == a["accuracy"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_device_cuda_without_a_gpu_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_images(tmp_path / "images", 2, seed=13)
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"image": ["images/img_000.jpg", "images/img_001.jpg"], "lat": 51.5, "lon": -0.1}).to_csv(
        manifest, index=False)
    assert main(["train", str(manifest), "-o", str(tmp_path / "model"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err and not (tmp_path / "model").exists()
    assert main(["features", str(manifest), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device cuda" in err
    assert main(["features", str(manifest), "--device", "auto", "--quiet"]) == 0  # auto: the CPU here
    assert "on cpu" in capsys.readouterr().out


def test_processes_sharing_a_machine_share_its_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from geoscope.distributed import LOCAL_PROCESSES_ENV, cores_per_process, cpu_count

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.delenv(LOCAL_PROCESSES_ENV, raising=False)
    assert cores_per_process() == cpu_count()
    monkeypatch.setenv(LOCAL_PROCESSES_ENV, str(2 * cpu_count()))  # serve --workers: more workers than cores
    assert cores_per_process() == 1
    monkeypatch.setenv(LOCAL_PROCESSES_ENV, "2")
    assert cores_per_process() == max(1, cpu_count() // 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # torchrun's count wins where both are set
    assert cores_per_process() == cpu_count()


def test_a_process_asks_for_small_pages_only_where_huge_pages_are_always_given(tmp_path: Path) -> None:
    from geoscope.distributed import THP_SETTING

    if not THP_SETTING.is_file():
        pytest.skip(f"{THP_SETTING} does not exist here (not Linux, or a kernel without transparent huge pages)")
    always = "[always]" in THP_SETTING.read_text()
    script = ("import pathlib, sys; from geoscope.distributed import use_small_pages; "
              "print(use_small_pages()); print(pathlib.Path('/proc/self/status').read_text())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    said, status = done.stdout.split("\n", 1)
    assert said == str(always)
    flag = next((line.split()[-1] for line in status.splitlines() if line.startswith("THP_enabled:")), None)
    if flag is not None:  # kernels from 5.0 report it: 0 once the process has asked for small pages
        assert flag == ("0" if always else "1")


def test_the_command_line_has_torchs_idle_threads_sleep_soon_unless_told_how_they_wait() -> None:
    from geoscope.distributed import IDLE_SPINS, SPIN_ENV

    def settings(script: str, **told: str) -> list[str]:
        env = {k: v for k, v in os.environ.items() if k not in SPIN_ENV} | told
        done = subprocess.run([sys.executable, "-c", script + "; print(*(os.environ.get(n) for n in names))"],
                              capture_output=True, text=True, check=True, env=env | {"NAMES": ",".join(SPIN_ENV)})
        return done.stdout.split()

    first = "import os; names = os.environ['NAMES'].split(','); import geoscope.cli, torch"
    assert settings(first) == ["None", IDLE_SPINS, "None"]
    assert settings(first, OMP_WAIT_POLICY="ACTIVE") == ["ACTIVE", "None", "None"]  # the user's choice stands
    # torch already loaded: its OpenMP has read the environment, so nothing is set that would not act
    assert settings("import os; names = os.environ['NAMES'].split(','); import torch, geoscope.cli") == ["None"] * 3
