"""Prediction throughput: ``GeoModel.predict`` on 224 px images and on 12 MP photos, against the encoder alone.

One run, the bundled default model, a temporary ``GEOSCOPE_CACHE`` (the ONNX export is made
before the clock starts; every timed ``predict`` starts with an empty feature cache unless
the row says "warm cache"). The 224 px images are real ``../shared/data/london-uk`` frames; the
12 MP photos are real frames cut to 4:3, upscaled to 4000×3000 and saved as JPEG quality 90
(smoother than a phone's photos, so entropy decoding costs less than on a real photo).
The bound is the encoder alone on the same images pre-decoded and preprocessed, in predict's batch size.
A cold row's cache is emptied before its clock starts.
Run: ``python benchmarks/predict.py [--images 384] [--photos 48] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTO_SIZE = (4000, 3000)
SETS = ("london-uk", "london-on", "us-west", "croatia")


def sample_paths(name: str, n: int, seed: int = 0) -> list[Path]:
    from geoscope.data.manifest import read_manifest

    manifest = read_manifest(DATA / name / "manifest.csv")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(manifest), size=min(n, len(manifest)), replace=False)
    return [manifest.image_paths[i] for i in sorted(rows)]


def make_photos(sources: list[Path], folder: Path) -> list[Path]:
    """12 MP JPEGs (quality 90) upscaled from real frames cut to 4:3."""
    paths = []
    for i, source in enumerate(sources):
        with Image.open(source) as image:
            image = image.convert("RGB")
            w, h = image.size
            cut = (w, round(w * 3 / 4)) if w * 3 <= h * 4 else (round(h * 4 / 3), h)
            left, top = (w - cut[0]) // 2, (h - cut[1]) // 2
            image = image.crop((left, top, left + cut[0], top + cut[1])).resize(PHOTO_SIZE, Image.Resampling.BICUBIC)
        path = folder / f"photo_{i:03d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="224 px images (384)")
    parser.add_argument("--photos", type=int, default=48, help="12 MP photos (48)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per row; the best counts (3)")
    args = parser.parse_args(argv)
    if not (DATA / "london-uk" / "manifest.csv").is_file():
        print(f"skipped: needs {DATA / 'london-uk'}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="geoscope-bench-") as tmp:
        os.environ["GEOSCOPE_CACHE"] = str(Path(tmp) / "cache")
        return run(args, Path(tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    from geoscope.distributed import cpu_count
    from geoscope.encoders.image import get_image_encoder
    from geoscope.features.cache import BATCH_SIZE
    from geoscope.images import open_image, read_rgb
    from geoscope.outputs.batch import CHUNK_SIZE, find_inputs, predict_chunks
    from geoscope.outputs.formats import checked_record, open_predictions_file
    from geoscope.paths import cache_dir
    from geoscope.predict import load_model

    small = sample_paths("london-uk", args.images)
    sets = [s for s in SETS if (DATA / s / "manifest.csv").is_file()]
    sources = [p for s in sets for p in sample_paths(s, -(-args.photos // len(sets)), seed=1)][: args.photos]
    photos = make_photos(sources, tmp)
    megabytes = np.mean([p.stat().st_size for p in photos]) / 1e6

    model = load_model()
    encoder = model.encoder
    pre = encoder.preprocess
    decoded = np.stack([pre(open_image(p)) for p in small])
    encoder.encode(decoded[:2])  # ONNX export / session load before timing

    def empty_cache() -> None:
        """Before a cold row, untimed: the features and the output file of the previous run are gone."""
        shutil.rmtree(cache_dir() / "features", ignore_errors=True)
        (tmp / "out.jsonl").unlink(missing_ok=True)

    def chunked_to_file(paths: list[Path]) -> Callable[[], object]:
        def go() -> None:
            out = open_predictions_file(tmp / "out.jsonl", top_k=5)
            for _, records in predict_chunks(model, find_inputs([str(p) for p in paths]).units):
                out.write([checked_record(r) for r in records])
        return go

    def decode(paths: list[Path], reduced: bool) -> Callable[[], object]:
        if not reduced:
            return lambda: [pre(open_image(p)) for p in paths]
        return lambda: [pre(read_rgb(p, min_size=pre.decode_size)) for p in paths]  # predict's way

    cold, warm = empty_cache, None
    cases: list[tuple[str, int, Callable[[], object], Callable[[], None] | None]] = [
        (f"encoder alone, pre-decoded, batches of {BATCH_SIZE} (the bound)", len(small),
         lambda: [encoder.encode(decoded[i:i + BATCH_SIZE]) for i in range(0, len(decoded), BATCH_SIZE)], warm),
        ("predict, 224 px, cold cache", len(small), lambda: model.predict(small, top_k=5), cold),
        ("predict, 224 px, warm cache", len(small), lambda: model.predict(small, top_k=5), warm),
        ("predict, 224 px, warm cache, --refine knn", len(small), lambda: model.predict(small, top_k=5, refine="knn"),
         warm),
        (f"predict -o out.jsonl in chunks of {CHUNK_SIZE} (the CLI's path), 224 px", len(small),
         chunked_to_file(small), cold),
        (f"predict, 12 MP JPEG ({megabytes:.1f} MB), cold cache", len(photos), lambda: model.predict(photos, top_k=5),
         cold),
        ("decode + preprocess, 224 px, 1 thread", 32, decode(small[:32], True), warm),
        ("decode + preprocess, 12 MP, reduced decode, 1 thread", 8, decode(photos[:8], True), warm),
        ("decode + preprocess, 12 MP, full decode, 1 thread", 8, decode(photos[:8], False), warm),
    ]
    runs: list[list[tuple[float, float]]] = [[] for _ in cases]
    for _ in range(args.repeat):  # interleaved, so that a burst of other work on the machine hits every row alike
        for measured, (_, _, fn, setup) in zip(runs, cases, strict=True):
            if setup is not None:
                setup()
            measured.append(timed(fn))
    rows = [(label, n, (min(w for w, _ in measured) / n, min(c for _, c in measured) / n))
            for (label, n, _, _), measured in zip(cases, runs, strict=True)]
    bound_s, bound_cpu = rows[0][2]
    print(f"\ndefault model ({model.image_side.name}), {cpu_count()} cores, temporary GEOSCOPE_CACHE "
          f"(feature cache cold unless the row says warm), best of {args.repeat} interleaved runs; CPU is the "
          "process's time on all threads (a fairer comparison on a shared machine)\n")
    print(f"| {'what':<62} | {'n':>4} | {'images/s':>8} | {'ms/image':>8} | {'vs bound':>8} "
          f"| {'CPU ms/image':>12} | {'CPU vs bound':>12} |")
    print(f"|{'-' * 64}|{'-' * 6}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 14}|{'-' * 14}|")
    for label, n, (seconds, cpu) in rows:
        print(f"| {label:<62} | {n:>4} | {1 / seconds:>8.1f} | {seconds * 1000:>8.1f} | {bound_s / seconds:>8.2f} "
              f"| {cpu * 1000:>12.1f} | {bound_cpu / cpu:>12.2f} |")
    cost = {label: value for label, _, value in rows}
    (small_s, small_cpu) = cost["predict, 224 px, cold cache"]
    (photo_s, photo_cpu) = next(value for label, value in cost.items() if label.startswith("predict, 12 MP"))
    print(f"\n12 MP vs 224 px, predict cost per image: {photo_s / small_s:.2f}× wall, {photo_cpu / small_cpu:.2f}× CPU "
          "(goal ≤ 3×)")
    print(f"predict on 224 px vs the encoder-alone bound: {bound_s / small_s:.2f} wall, "
          f"{bound_cpu / small_cpu:.2f} CPU (goal ≥ 0.85)")

    print("\nreduced vs full decoding of the 12 MP photos, cosine similarity of the encoder outputs:")
    full = np.stack([pre(open_image(p)) for p in photos])
    reduced = np.stack([pre(open_image(p, min_size=pre.decode_size)) for p in photos])
    # the pooled embedding at the default model's input size; the same network as ONNX, so no export needed
    lite0 = get_image_encoder(f"efficientnet-lite0@{pre.crop_size}", backend="torch")
    for name, enc in (("efficientnet-lite0 (pooled)", lite0), (f"{encoder.name} (the default model's)", encoder)):
        a, b = enc.encode(full), enc.encode(reduced)
        if enc.spec.mixed_scales:  # compare standardised dimensions, as the head reads them
            mean, std = a.mean(axis=0), a.std(axis=0) + 1e-6
            a, b = (a - mean) / std, (b - mean) / std
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"  {name}: mean {cos.mean():.4f}, min {cos.min():.4f} over {len(cos)} photos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
