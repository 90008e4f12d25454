"""Prediction throughput on every installed runtime side by side: the encoder alone, predict at 224 px, 12 MP photos.

One run, the bundled default model once per runtime (ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16), a temporary
``GEOSCOPE_CACHE`` (graphs compiled before the clock starts; every timed ``predict`` starts with an empty feature
cache unless the row says "warm cache"), rounds interleaved so that the load of a shared machine hits every runtime
alike; medians of the rounds. The 224 px images are real ``../shared/data/london-uk`` frames; the 12 MP photos are
phone-like JPEGs (4000×3000, quality 90, about 1.6 MB: gradients, soft shapes and sensor noise, see
``phone_photos.py``). Ratios:

- predict at 224 px against ONNX Runtime's predict in the same run (today's path; goal ≥ 2 with auto);
- predict at 224 px against the same runtime's encoder alone on the same images pre-decoded, in predict's batch
  size (goal ≥ 0.85);
- 12 MP predict against its bound: one photo's decoding and preprocessing (on one thread) spread over the cores,
  plus the encoder alone's time per image (goal ≥ 0.85).

Then, on the runtime ``auto`` chooses: a warm feature cache, ``--refine knn``, ``predict -o`` in chunks, and decoding
alone. ``--decoding`` adds how far reduced (DCT-scaled) decoding moves the encoder's outputs from full decoding.
Run: ``python benchmarks/predict.py [--images 384] [--photos 48] [--rounds 3] [--decoding]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from phone_photos import installed_runtimes, make_phone_photos, sample_paths, with_london_frames

if TYPE_CHECKING:
    from geoscope.predict import GeoModel


TODAY = "ORT, 1 stream"
"""ONNX Runtime as predict ran it before streams: the baseline of "today's path"."""


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock seconds of one call, and the process's CPU seconds in it (all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=384, help="224 px images (384)")
    parser.add_argument("--photos", type=int, default=48, help="12 MP photos (48)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians count (3)")
    parser.add_argument("--decoding", action="store_true", help="also compare reduced with full decoding")
    args = parser.parse_args(argv)
    return with_london_frames(lambda tmp: run(args, tmp))


def run(args: argparse.Namespace, tmp: Path) -> int:
    import geoscope
    from geoscope.distributed import cpu_count
    from geoscope.encoders.preprocess import Views
    from geoscope.encoders.runtime import resolve_runtime
    from geoscope.features.cache import BATCH_SIZE, load_views
    from geoscope.images import open_image
    from geoscope.outputs.batch import CHUNK_SIZE, find_inputs, predict_chunks
    from geoscope.outputs.formats import checked_record, open_predictions_file
    from geoscope.paths import cache_dir

    small = sample_paths("london-uk", args.images)
    (tmp / "photos").mkdir()
    photos = make_phone_photos(tmp / "photos", args.photos)
    megabytes = np.mean([p.stat().st_size for p in photos]) / 1e6
    models = {str(r): geoscope.load(runtime=str(r).replace(" ", ":")) for r in installed_runtimes()}
    today = geoscope.load(runtime="onnxruntime")
    today.streams = 1  # each batch one request over every thread, as before streams
    models = {TODAY: today, **models}
    auto = str(resolve_runtime("auto"))
    any_model = models[auto]
    pre = any_model.encoder.preprocess
    decoded = np.stack([pre(open_image(p)) for p in small])
    for model in models.values():
        model.encoder.encode(decoded[:2])  # graphs made and compiled before the clock
    cores = cpu_count()

    def empty_cache() -> None:
        shutil.rmtree(cache_dir() / "features", ignore_errors=True)
        (tmp / "out.jsonl").unlink(missing_ok=True)

    def encoder_alone(model: GeoModel) -> Callable[[], object]:
        return lambda: [model.encoder.encode(decoded[i:i + BATCH_SIZE]) for i in range(0, len(decoded), BATCH_SIZE)]

    def chunked_to_file(model: GeoModel, paths: list[Path]) -> Callable[[], object]:
        def go() -> None:
            out = open_predictions_file(tmp / "out.jsonl", top_k=5)
            for _, records in predict_chunks(model, find_inputs([str(p) for p in paths]).units):
                out.write([checked_record(r) for r in records])
        return go

    def decode(paths: list[Path]) -> Callable[[], object]:
        return lambda: [load_views(p, pre, Views()) for p in paths]

    per_runtime = ("encoder alone, 224 px", "predict, 224 px", "predict, 12 MP")
    cases: list[tuple[str, str, int, Callable[[], object], bool]] = []  # runtime, row, images, call, cold cache
    for name, model in models.items():
        cases += [(name, per_runtime[0], len(small), encoder_alone(model), False),
                  (name, per_runtime[1], len(small), lambda m=model: m.predict(small, top_k=5), True),
                  (name, per_runtime[2], len(photos), lambda m=model: m.predict(photos, top_k=5), True)]
    model = models[auto]
    cases += [(auto, "predict, 224 px, warm cache", len(small), lambda: model.predict(small, top_k=5), False),
              (auto, "predict, 224 px, warm cache, --refine knn", len(small),
               lambda: model.predict(small, top_k=5, refine="knn"), False),
              (auto, f"predict -o out.jsonl in chunks of {CHUNK_SIZE}, 224 px", len(small),
               chunked_to_file(model, small), True),
              (auto, f"predict -o out.jsonl in chunks of {CHUNK_SIZE}, 12 MP", len(photos),
               chunked_to_file(model, photos), True),
              ("", "decode + preprocess, 224 px, 1 thread", 32, decode(small[:32]), False),
              ("", "decode + preprocess, 12 MP, 1 thread", 8, decode(photos[:8]), False)]
    runs: list[list[tuple[float, float]]] = [[] for _ in cases]
    for _ in range(args.rounds):  # interleaved, so that a burst of other work on the machine hits every row alike
        for measured, (_, _, _, fn, cold) in zip(runs, cases, strict=True):
            if cold:
                empty_cache()
            else:  # warm: what the row reads is cached first (the cold row before it emptied the cache)
                fn()
            measured.append(timed(fn))
    seconds = {(name, row): statistics.median(w for w, _ in measured) / n
               for (name, row, n, _, _), measured in zip(cases, runs, strict=True)}
    cpu = {(name, row): statistics.median(c for _, c in measured) / n
           for (name, row, n, _, _), measured in zip(cases, runs, strict=True)}
    decode_row = ("", "decode + preprocess, 12 MP, 1 thread")

    print(f"\ndefault model ({any_model.image_side.name}), {cores} cores, {len(small)} images of 224 px, {len(photos)} "
          f"phone-like 12 MP JPEGs ({megabytes:.1f} MB), medians of {args.rounds} interleaved rounds; auto = {auto}; "
          f"{TODAY}: ONNX Runtime as predict ran it before streams\n")
    names = list(models)
    print(f"| {'images/s':<50} | " + " | ".join(f"{n:>16}" for n in names) + " |")
    print(f"|{'-' * 52}|" + "|".join("-" * 18 for _ in names) + "|")
    rates = {(n, row): 1 / seconds[n, row] for n in names for row in per_runtime}
    bound = {n: 1 / (seconds[decode_row] / cores + seconds[n, per_runtime[0]]) for n in names}
    lines = [(row, [rates[n, row] for n in names]) for row in per_runtime]
    lines.append(("12 MP bound (decode over the cores + encoder)", [bound[n] for n in names]))
    for label, values in lines:
        print(f"| {label:<50} | " + " | ".join(f"{v:>16.1f}" for v in values) + " |")
    encode, predict, photo = per_runtime
    ratios = [
        ("predict 224 px vs today's ONNX Runtime (goal ≥ 2)",
         [rates[n, predict] / rates[TODAY, predict] for n in names]),
        ("predict 224 px vs encoder alone (goal ≥ 0.85)", [rates[n, predict] / rates[n, encode] for n in names]),
        ("predict 12 MP vs its bound (goal ≥ 0.85)", [rates[n, photo] / bound[n] for n in names]),
        ("CPU: encoder alone vs predict 224 px, per image", [cpu[n, encode] / cpu[n, predict] for n in names]),
        ("CPU: decode + encoder alone vs predict 12 MP", [(cpu[decode_row] + cpu[n, encode]) / cpu[n, photo]
                                                         for n in names]),
    ]
    for label, values in ratios:
        print(f"| {label:<50} | " + " | ".join(f"{v:>16.2f}" for v in values) + " |")
    print("(CPU rows: the process's CPU seconds on all threads, which other work on a shared machine does not inflate "
          "as it inflates wall-clock time; 1.0 = predict does no work beyond decoding and encoding)")

    print(f"\n| {'on ' + auto:<58} | {'images/s':>8} | {'ms/image':>8} |")
    print(f"|{'-' * 60}|{'-' * 10}|{'-' * 10}|")
    for (name, row, _, _, _) in cases[3 * len(names):]:
        value = seconds[name, row]
        print(f"| {row:<58} | {1 / value:>8.1f} | {value * 1000:>8.1f} |")
    if args.decoding:
        compare_decoding(photos, any_model)
    return 0


def compare_decoding(photos: list[Path], model: GeoModel) -> None:
    """How far reduced decoding (libjpeg's DCT scaling) moves the encoders' outputs from full decoding."""
    from geoscope.encoders.image import get_image_encoder
    from geoscope.images import open_image

    encoder = model.encoder
    pre = encoder.preprocess
    print("\nreduced vs full decoding of the 12 MP photos, cosine similarity of the encoder outputs:")
    full = np.stack([pre(open_image(p)) for p in photos])
    reduced = np.stack([pre(open_image(p, min_size=pre.decode_size)) for p in photos])
    lite0 = get_image_encoder(f"efficientnet-lite0@{pre.crop_size}", backend="torch")  # the pooled embedding
    for name, enc in (("efficientnet-lite0 (pooled)", lite0), (f"{encoder.name} (the default model's)", encoder)):
        a, b = enc.encode(full), enc.encode(reduced)
        if enc.spec.mixed_scales:  # compare standardised dimensions, as the head reads them
            mean, std = a.mean(axis=0), a.std(axis=0) + 1e-6
            a, b = (a - mean) / std, (b - mean) / std
        cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"  {name}: mean {cos.mean():.4f}, min {cos.min():.4f} over {len(cos)} photos")


if __name__ == "__main__":
    sys.exit(main())
