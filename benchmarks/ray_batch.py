"""Ray batch jobs: ``predict -o`` images/s with 1 and 2 Ray workers against the same command without Ray.

One run, rounds interleaved, the same N real 224 px ``../shared/data/london-uk`` frames (copied to a temporary
folder), the bundled default model, ``--runtime onnxruntime`` unless told, a temporary ``GEOSCOPE_CACHE`` (the
ONNX export made before the clock starts; the feature cache emptied before every run without Ray, which fills
it). Each command is a process of its own, as a user runs it; ``--ray`` starts a Ray instance on this machine
(2 logical CPUs for 1 worker, 3 for 2: the workers and a decoding task).

Two rates per row: *end to end* (the command, from process start to exit: Python, the model, Ray's start and the
actors loading the encoder included) and *steady* (rows written per second from the first chunk to the last, read
from the output file as it grows: what a long job approaches).

Then, where to answer: one Ray instance in this process, 2 workers, the same images: the answers computed here as
geoscope does (the actors give features) against a prototype (kept here, not in geoscope) whose actors load the
whole model and give finished records.

Run: ``python benchmarks/ray_batch.py [--images 1024] [--rounds 3] [--runtime onnxruntime]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GEOSCOPE = [sys.executable, "-m", "geoscope"]


def watched(command: list[str], out: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Run ``command``, reading ``out`` (JSON lines) as it grows: end-to-end seconds, steady rows/s, rows."""
    out.unlink(missing_ok=True)
    seen: list[tuple[float, int]] = []
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while process.poll() is None:
        rows = out.read_bytes().count(b"\n") if out.is_file() else 0
        if rows and (not seen or rows != seen[-1][1]):
            seen.append((time.perf_counter(), rows))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read()}")
    rows = out.read_bytes().count(b"\n")
    if not seen or seen[-1][1] != rows:
        seen.append((time.perf_counter(), rows))
    return seconds, steady(seen), rows


def steady(seen: list[tuple[float, int]]) -> float:
    """Rows per second from the first write to the last (NaN with one write)."""
    (t0, n0), (t1, n1) = seen[0], seen[-1]
    return (n1 - n0) / (t1 - t0) if t1 > t0 else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1024, help="224 px images (1024: four chunks of 256)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median counts (3)")
    parser.add_argument("--runtime", default="onnxruntime", help="--runtime of every command (onnxruntime)")
    args = parser.parse_args(argv)
    try:
        import ray  # noqa: F401
    except ImportError:
        print("skipped: Ray is not installed (pip install 'geoscope[ray]')", file=sys.stderr)
        return 0
    if not (DATA / "london-uk" / "manifest.csv").is_file():
        print(f"skipped: needs {DATA / 'london-uk'}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="geoscope-bench-") as tmp:
        os.environ["GEOSCOPE_CACHE"] = str(Path(tmp) / "cache")
        os.environ["GEOSCOPE_RUNTIME"] = args.runtime
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    from geoscope.distributed import cpu_count
    from geoscope.paths import cache_dir
    from geoscope.predict import load_model

    photos = tmp / "photos"
    photos.mkdir()
    for source in sorted((DATA / "london-uk" / "images").glob("*.jpg"))[: args.images]:
        shutil.copyfile(source, photos / source.name)
    n = len(list(photos.iterdir()))
    model = load_model()
    model.encoder.encode(np.zeros((1, 3, model.encoder.preprocess.crop_size, model.encoder.preprocess.crop_size),
                                  dtype=np.float32))  # the ONNX export, before any clock
    env = dict(os.environ)
    out = tmp / "out.jsonl"
    base = [*GEOSCOPE, "predict", str(photos), "-o", str(out)]
    cases: list[tuple[str, list[str]]] = [
        ("predict -o, without Ray", base),
        ("predict -o --ray --ray-workers 1", [*base, "--ray", "--ray-workers", "1"]),
        ("predict -o --ray --ray-workers 2", [*base, "--ray", "--ray-workers", "2"]),
    ]
    runs: list[list[tuple[float, float]]] = [[] for _ in cases]
    for _ in range(args.rounds):  # interleaved: a burst of other work on the machine hits every row alike
        for measured, (_, command) in zip(runs, cases, strict=True):
            shutil.rmtree(cache_dir() / "features", ignore_errors=True)
            seconds, rate, rows = watched(command, out, env)
            assert rows == n, (rows, n)
            measured.append((n / seconds, rate))
    print(f"\n{n} images of 224 px, default model ({model.image_side.name}), runtime {model.encoder.runtime}, "
          f"{cpu_count()} cores shared with other work, median of {args.rounds} interleaved rounds\n")
    print(f"| {'command':<34} | {'end to end, images/s':>20} | {'steady, images/s':>16} | {'steady vs without':>17} |")
    print(f"|{'-' * 36}|{'-' * 22}|{'-' * 18}|{'-' * 19}|")
    without = float(np.median([r for _, r in runs[0]]))
    for (label, _), measured in zip(cases, runs, strict=True):
        whole, rate = (float(np.median(v)) for v in zip(*measured, strict=True))
        print(f"| {label:<34} | {whole:>20.1f} | {rate:>16.1f} | {rate / without:>17.2f} |")
    where_to_answer(sorted(str(p) for p in photos.iterdir()), tmp, args.rounds)
    return 0


def where_to_answer(paths: list[str], tmp: Path, rounds: int) -> None:
    """Answers here (geoscope's way) against answers in the actors (a prototype), one Ray instance, 2 workers."""
    from geoscope.outputs.batch import Unit
    from geoscope.outputs.formats import checked_record, open_predictions_file
    from geoscope.outputs.ray_jobs import RayCluster
    from geoscope.predict import load_model

    cluster = RayCluster(None, 2)
    cluster.start()
    model = load_model()
    units = [Unit(p, (p,)) for p in paths]

    def here() -> Iterator[list[dict]]:
        for _, records in cluster.predict_chunks(model, units, top_k=5):
            yield records

    def in_actors() -> Iterator[list[dict]]:
        yield from _answered_in_actors(cluster, model, paths)

    cases: list[tuple[str, Callable[[], Iterator[list[dict]]]]] = [
        ("answers here, the actors give features (geoscope)", here),
        ("answers in the actors, each holding the model (prototype)", in_actors)]
    runs: list[list[tuple[float, float]]] = [[] for _ in cases]
    try:
        for _ in range(rounds):
            for measured, (_, job) in zip(runs, cases, strict=True):
                out = tmp / "here.jsonl"
                out.unlink(missing_ok=True)
                sink = open_predictions_file(out, top_k=5)
                start, seen, rows = time.perf_counter(), [], 0
                for records in job():
                    sink.write([checked_record(r) for r in records])
                    rows += len(records)
                    seen.append((time.perf_counter(), rows))
                sink.close(complete=True)
                assert rows == len(paths)
                measured.append((rows / (time.perf_counter() - start), steady(seen)))
    finally:
        cluster.close()
    print(f"\nwhere to answer: one Ray instance in this process (3 logical CPUs), 2 workers, {len(paths)} images, "
          f"median of {rounds} interleaved rounds (end to end: the Ray jobs' start and the actors' loading "
          "included, not Ray's own start)\n")
    print(f"| {'variant':<58} | {'end to end, images/s':>20} | {'steady, images/s':>16} |")
    print(f"|{'-' * 60}|{'-' * 22}|{'-' * 18}|")
    for (label, _), measured in zip(cases, runs, strict=True):
        whole, rate = (float(np.median(v)) for v in zip(*measured, strict=True))
        print(f"| {label:<58} | {whole:>20.1f} | {rate:>16.1f} |")
    features = model.image_features(paths)  # from the cache (filled once, untimed): the answers alone
    seconds = min(timed_answer(model, features, paths) for _ in range(rounds))
    print(f"\nthe answers alone, here, from features in memory: {len(paths) / seconds:.0f} images/s (best of {rounds}; "
          "the most one driver answers, whatever the cluster encodes)")


def timed_answer(model, features, paths: list[str]) -> float:
    """Seconds for ``predict``'s answers to ``paths`` from their features, in chunks of 256 as ``predict -o``."""
    from geoscope.distributed import cores_per_process
    from geoscope.threads import math_threads

    start = time.perf_counter()
    with math_threads(cores_per_process()):
        for i in range(0, len(paths), 256):
            part = features.embeddings[i:i + 256]
            chunk = type(features)(part, features.valid[i:i + 256], [], features.encoder_name, paths[i:i + 256])
            model.predict_features(chunk, paths[i:i + 256], 5)
    return time.perf_counter() - start


def _answered_in_actors(cluster, model, paths: list[str], chunk: int = 256) -> Iterator[list[dict]]:
    """The prototype: decoding tasks as geoscope's, then actors that encode and answer (records as JSON text)."""
    import math

    from geoscope.encoders.preprocess import Views
    from geoscope.features.cache import BATCH_SIZE
    from geoscope.outputs.ray_jobs import _decode

    ray = cluster.start()
    preprocess, views = model.encoder.preprocess, Views(crops=model.image_side.crops)
    items = [{"row": i, "path": p} for i, p in enumerate(paths)]
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / BATCH_SIZE))
    dataset = dataset.map_batches(_decode, fn_kwargs={"preprocess": preprocess, "views": views},
                                  batch_size=BATCH_SIZE, num_cpus=1,
                                  memory=BATCH_SIZE * 3 * preprocess.crop_size ** 2 * 4)
    dataset = dataset.map_batches(_Answerer, fn_constructor_args=(model.encoder.runtime,), batch_size=BATCH_SIZE,
                                  num_cpus=1, compute=ray.data.ActorPoolStrategy(size=cluster.workers))
    records: list[dict] = []
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        records += [json.loads(r) for r in batch["record"]]
        if len(records) >= chunk:
            yield records
            records = []
    if records:
        yield records


class _Answerer:
    """The prototype's actor: the whole default model, its encoder on one thread; a batch in, records out."""

    def __init__(self, runtime) -> None:
        from geoscope.encoders.image import get_image_encoder
        from geoscope.predict import load_model

        self.model = load_model()
        self.model._encoder = get_image_encoder(self.model.image_side.cached_encoder, runtime=runtime, threads=1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geoscope.features.cache import FeatureSet

        paths = [str(p) for p in batch["path"]]
        read = np.array([not r for r in batch["reason"]], dtype=bool)
        encoded = self.model.view_features(list(batch["pixels"][read]))
        features = np.full((len(read), encoded.shape[1]), np.nan, dtype=np.float32)
        features[read] = encoded
        errors = [str(r) for r in batch["reason"] if r]
        fs = FeatureSet(features, read, errors, self.model.encoder.name, paths)
        records = []
        for path, prediction in zip(paths, self.model.predict_features(fs, paths, 5), strict=True):
            record = prediction.to_dict()
            record["image"] = path
            records.append(json.dumps(record))
        return {"row": batch["row"], "record": np.array(records, dtype=object)}


if __name__ == "__main__":
    sys.exit(main())
