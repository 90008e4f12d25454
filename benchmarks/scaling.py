"""Scaling out on one machine: 1 vs 2 processes for training and features, and memory on a 1M-row manifest.

- Head epoch: the place head on synthetic cached features (5,000 × 1,280, 100 places, batch 256).
- Top-block epoch: EfficientNet-Lite0's last block fine-tuned on synthetic trunk maps (512 × 192×7×7, batch 64).
- Whole-encoder epoch: all of EfficientNet-Lite0 fine-tuned from 128 real images decoded as each batch needs
  them (``--finetune-blocks all``; batch 16).
  One process uses every core (torch's threads); two are gloo ranks under DistributedDataParallel with
  the cores shared out. Each epoch is split into its training steps, the gradient all-reduces (timed
  alone, same sizes and count) and the per-epoch measurement of every split.
- Features: images/s of ``geoscope features`` alone and under ``torchrun --nproc_per_node 2`` (fresh cache,
  ONNX model exported before), on real images from ``../shared/data`` (or made ones when absent).
- Memory: peak RSS of ``geoscope features`` over a Parquet manifest of 1M rows whose images are the eight in
  ``examples/images`` reached through symlinked folders (and over a tenth of it), of ``geoscope predict`` on it
  (``--limit 256``: every row is read, 256 answered), against reading that manifest whole.

Run: ``python benchmarks/scaling.py [--rows 1000000] [--images 96]``. Prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
EXAMPLES = REPO / "examples" / "images"


# ---- training epochs ---------------------------------------------------------------------------------------------

def _epoch_worker(rank: int, world: int, port: int, kind: str, out: str, threads: int) -> None:
    """One rank (or the single process) of a timed training run; rank 0 writes the timings."""
    import torch

    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))
    from geoscope import distributed
    from geoscope.models.heads.place_names import PlaceNamesHead
    from geoscope.training.loop import _measure, train

    torch.set_num_threads(threads)
    run = distributed.start("cpu")
    train_data, val, texts, coords, adapter, config = _synthetic(kind)
    stamps: list[float] = []
    image_dim = train_data.features.shape[2] if adapter is None else 1280
    start = time.perf_counter()
    train(PlaceNamesHead.create(config, image_dim, texts), train_data, val, coords, config, image_adapter=adapter,
          progress=False, on_epoch=lambda epoch, head: stamps.append(time.perf_counter()))
    epochs = np.diff([start, *stamps])[1:]  # the first epoch warms up: the second is timed
    # the parts, timed alone with the same shapes: the measurement of both splits, the all-reduces of one epoch
    model_run = distributed.current("cpu")
    adapter2 = _synthetic(kind)[4]
    adapter2 = adapter2 if adapter2 is not None else torch.nn.Identity()
    head = PlaceNamesHead.create(config, image_dim, texts)
    t0 = time.perf_counter()
    for data in (train_data, val):
        _measure(head, adapter2, data, torch.as_tensor(coords, dtype=torch.float64), config, model_run)
    measure_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in head.parameters()) + (
        sum(p.numel() for p in adapter.parameters() if p.requires_grad) if adapter is not None else 0)
    steps = -(-len(train_data) // config.batch_size)
    allreduce_s = 0.0
    if run.distributed:
        grads = torch.zeros(trainable)
        distributed.barrier()
        t0 = time.perf_counter()
        for _ in range(steps):
            torch.distributed.all_reduce(grads)
        allreduce_s = time.perf_counter() - t0
    if run.main:
        Path(out).write_text(json.dumps({"epoch_s": float(np.mean(epochs)), "measure_s": measure_s,
                                         "allreduce_s": allreduce_s, "rows": len(train_data), "steps": steps}))
    distributed.finish()


def _synthetic(kind: str):
    from geoscope.models.image_side import ImageSide
    from geoscope.training.loop import TrainConfig, TrainingData

    rng = np.random.default_rng(0)
    places = 100
    texts = rng.standard_normal((places, 384)).astype(np.float32)
    coords = np.column_stack([rng.uniform(40, 60, places), rng.uniform(-10, 20, places)])
    if kind == "head":
        n, shape, adapter = 5000, (1280,), None
        config = TrainConfig(max_epochs=2, batch_size=256, early_stop=10)
    elif kind == "all":
        from geoscope.encoders.image import image_encoder_spec
        from geoscope.features.pixels import ImagePixels

        n, side = 128, ImageSide("efficientnet-lite0", "all")
        pixels = ImagePixels(pixel_images(n), image_encoder_spec(side.name).preprocess)
        labels = rng.integers(0, places, n)
        lat, lon = coords[labels, 0], coords[labels, 1]
        train = TrainingData(pixels[:, :112], labels[:112], lat[:112], lon[:112])
        val = TrainingData(pixels[:, 112:], labels[112:], lat[112:], lon[112:])
        return train, val, texts, coords, side.adapter(), TrainConfig(max_epochs=2, batch_size=16, early_stop=10)
    else:
        n, shape, adapter = 512, (192, 7, 7), ImageSide("efficientnet-lite0", 1).adapter()
        config = TrainConfig(max_epochs=2, batch_size=64, early_stop=10)
    labels = rng.integers(0, places, n)
    features = np.abs(rng.standard_normal((1, n, int(np.prod(shape))), dtype=np.float32))
    lat, lon = coords[labels, 0], coords[labels, 1]
    cut = int(n * 0.9)
    train = TrainingData(features[:, :cut], labels[:cut], lat[:cut], lon[:cut])
    val = TrainingData(features[:, cut:], labels[cut:], lat[cut:], lon[cut:])
    return train, val, texts, coords, adapter, config


def pixel_images(n: int) -> list[Path]:
    """``n`` real street-view images: London's from ../shared/data, else the examples over and over."""
    import pandas as pd

    source = DATA / "london-uk" / "manifest.csv"
    if source.is_file():
        return [source.parent / p for p in pd.read_csv(source)["image"].iloc[:n]]
    examples = sorted(EXAMPLES.glob("*.jpg"))
    return [examples[i % len(examples)] for i in range(n)]


def time_epochs(kind: str, world: int, threads: int) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as folder, socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        out = str(Path(folder) / "timing.json")
        mp.spawn(_epoch_worker, args=(world, port, kind, out, threads), nprocs=world)
        return json.loads(Path(out).read_text())


# ---- features ----------------------------------------------------------------------------------------------------

def feature_images(folder: Path, n: int) -> Path:
    """A manifest of ``n`` images: real ones from ../shared/data when present, else made ones."""
    import pandas as pd

    source = DATA / "london-uk" / "manifest.csv"
    if source.is_file():
        frame = pd.read_csv(source).iloc[:n]
        frame["image"] = [str(source.parent / p) for p in frame["image"]]
    else:
        from PIL import Image

        rng = np.random.default_rng(0)
        (folder / "images").mkdir()
        names = []
        for i in range(n):
            names.append(str(folder / "images" / f"{i:04d}.jpg"))
            Image.fromarray(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)).save(names[-1])
        frame = pd.DataFrame({"image": names, "lat": 51.5, "lon": -0.1})
    path = folder / "features.csv"
    frame.to_csv(path, index=False)
    return path


def features_rate(manifest: Path, world: int, base_cache: Path) -> tuple[float, float]:
    """(images/s while encoding, wall seconds of the command) with a fresh feature cache."""
    with tempfile.TemporaryDirectory() as cache:
        shutil.copytree(base_cache / "onnx", Path(cache) / "onnx")  # exported once, outside the clock
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
                    if world > 1 else [sys.executable])
        start = time.perf_counter()
        done = subprocess.run([*launcher, "-m", "geoscope", "features", str(manifest), "--quiet", "--device", "cpu"],
                              capture_output=True, text=True, check=True, env={**os.environ, "GEOSCOPE_CACHE": cache})
        wall = time.perf_counter() - start
    rate = re.search(r"\(([\d.]+) images/s\)", done.stdout)
    return (float(rate[1]) if rate else float("nan")), wall


# ---- memory on a large manifest -----------------------------------------------------------------------------------

def big_manifest(folder: Path, rows: int) -> Path:
    """A Parquet manifest of ``rows`` distinct paths that reach the eight example images through symlinks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images = sorted(p.name for p in EXAMPLES.glob("*.jpg"))
    inner = folder / "inner"
    inner.mkdir()
    per_outer = 1000 * len(images)
    for j in range(1000):
        (inner / f"b{j:03d}").symlink_to(EXAMPLES)
    outer = -(-rows // per_outer)
    for i in range(outer):
        (folder / f"a{i:04d}").symlink_to(inner)
    index = np.arange(rows)
    a, rest = index // per_outer, index % per_outer
    b, k = rest // len(images), rest % len(images)
    paths = [f"a{x:04d}/b{y:03d}/{images[z]}" for x, y, z in zip(a, b, k, strict=True)]
    rng = np.random.default_rng(0)
    table = pa.table({"image": paths, "lat": rng.uniform(-60, 60, rows), "lon": rng.uniform(-170, 170, rows)})
    path = folder / "big.parquet"
    pq.write_table(table, path)
    return path


def peak_rss_mb(command: list[str], env: dict) -> tuple[float, float, str]:
    """(peak RSS in MB of one child process, wall seconds, its stdout)."""
    script = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
              "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, time.perf_counter() - t); "
              "print(p.stdout[-2000:]); sys.exit(p.returncode)")
    done = subprocess.run([sys.executable, "-c", script, *command], capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stdout}")
    first, _, rest = done.stdout.partition("\n")
    kb, seconds = first.split()
    return int(kb) / 1024, float(seconds), rest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the large manifest (1,000,000)")
    parser.add_argument("--images", type=int, default=96, help="images for the features rate (96)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("head", "top", "all", "features", "memory"))
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str, str, str]] = []
    cores = len(os.sched_getaffinity(0))
    for kind, label in (("head", "head epoch (5k × 1280)"), ("top", "top-block epoch (512 maps)"),
                        ("all", "whole-encoder epoch (128 images)")):
        if kind in args.skip:
            continue
        all_cores, one_core, two = time_epochs(kind, 1, cores), time_epochs(kind, 1, 1), time_epochs(kind, 2, 1)
        best = min(all_cores["epoch_s"], one_core["epoch_s"])
        steps = two["epoch_s"] - two["allreduce_s"] - two["measure_s"]
        rows.append((label, f"{all_cores['epoch_s']:.2f} s", f"{one_core['epoch_s']:.2f} s", f"{two['epoch_s']:.2f} s",
                     f"{best / two['epoch_s']:.2f}×; 2 ranks: steps {steps:.2f} s (1 process "
                     f"{one_core['epoch_s'] - one_core['measure_s']:.2f} s), all-reduce {two['allreduce_s']:.2f} s "
                     f"({two['steps']} steps), measuring {two['measure_s']:.2f} s ({one_core['measure_s']:.2f} s)"))

    with tempfile.TemporaryDirectory() as work:
        work_path = Path(work)
        base_cache = work_path / "cache"
        env = {**os.environ, "GEOSCOPE_CACHE": str(base_cache)}
        from geoscope.encoders.image import get_image_encoder

        os.environ["GEOSCOPE_CACHE"] = str(base_cache)
        get_image_encoder("efficientnet-lite0").encode(np.zeros((1, 3, 224, 224), dtype=np.float32))  # export ONNX
        if "features" not in args.skip:
            manifest = feature_images(work_path, args.images)
            (r1, w1), (r2, w2) = features_rate(manifest, 1, base_cache), features_rate(manifest, 2, base_cache)
            rows.append((f"features, {args.images} images (images/s)", f"{r1:.1f}", "–", f"{r2:.1f}",
                         f"{r2 / r1:.2f}×; wall {w1:.1f} s vs {w2:.1f} s with start-up"))
        if "memory" not in args.skip:
            peaks = []
            for n in (args.rows // 10, args.rows):
                folder = work_path / f"big-{n}"
                folder.mkdir()
                big = big_manifest(folder, n)
                rss, seconds, out = peak_rss_mb([sys.executable, "-m", "geoscope", "features", str(big), "--quiet",
                                                 "--device", "cpu"], env)
                assert f"{n:,} images" in out, out
                peaks.append((n, rss, seconds))
            rss_read, _, _ = peak_rss_mb([sys.executable, "-c", "import sys; from geoscope.data.manifest import "
                                          "read_manifest; read_manifest(sys.argv[1], check_images=False)", str(big)],
                                         env)
            rss_predict, predict_s, _ = peak_rss_mb([sys.executable, "-m", "geoscope", "predict", str(big),
                                                     "--limit", "256", "--json"], env)
            (n0, rss0, _), (_, rss1, seconds) = peaks
            rows.append((f"peak RSS, {args.rows:,}-row manifest", f"{rss1:.0f} MB", "–", "–",
                         f"geoscope features streams it ({seconds:.0f} s; {n0:,} rows: {rss0:.0f} MB); predict "
                         f"--limit 256: {rss_predict:.0f} MB ({predict_s:.0f} s); the manifest read whole: "
                         f"{rss_read:.0f} MB"))

    width = max(len(r[0]) for r in rows)
    print(f"{'':{width}}  {f'1 process, {cores} threads':>22}  {'1 process, 1 thread':>19}  "
          f"{'2 processes':>11}  gain and where the time goes")
    for name, all_cores, one_core, two, note in rows:
        print(f"{name:{width}}  {all_cores:>22}  {one_core:>19}  {two:>11}  {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
