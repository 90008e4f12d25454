"""Feature-extraction throughput on every backend and installed runtime side by side: images/s, no cache.

Columns: torch, ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 (those installed). Rows, for each encoder: the
encoder alone on images already decoded (the bound), then ``extract_features`` end to end (decode + preprocess +
encode) on a random sample of ``../shared/data/london-uk`` and ``us-west``, and on phone-like 12 MP JPEGs
(``phone_photos.py``). Graphs are made and compiled before the clock starts; rounds are interleaved so that the
load of a shared machine hits every column alike; medians of the rounds. Also decoding + preprocessing alone on
the decode threads. Run: ``python benchmarks/features.py [--images 256] [--photos 32] [--rounds 3]
[--encoder NAME ...]`` (default: the default model's encoder; e.g. ``--encoder efficientnet-lite2``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from phone_photos import DATA, installed_runtimes, make_phone_photos, sample_paths

from geoscope.distributed import cpu_count
from geoscope.encoders.image import ImageEncoder, get_image_encoder
from geoscope.encoders.preprocess import Views
from geoscope.features.cache import BATCH_SIZE, extract_features, load_views

SETS = ("london-uk", "us-west")
ENCODER = "efficientnet-lite0/layout"


def decode_rate(paths: list[Path], encoder_name: str, workers: int) -> float:
    preprocess = get_image_encoder(encoder_name).preprocess
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: load_views(p, preprocess, Views()), paths))
    return len(paths) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images sampled per set (256)")
    parser.add_argument("--photos", type=int, default=32, help="phone-like 12 MP photos (32)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians count (3)")
    parser.add_argument("--encoder", action="append", help=f"encoders to measure (default: {ENCODER})")
    args = parser.parse_args(argv)
    names = args.encoder or [ENCODER]
    missing = [s for s in SETS if not (DATA / s / "manifest.csv").is_file()]
    if missing:
        print(f"skipped: needs {', '.join(str(DATA / s) for s in missing)}", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="geoscope-bench-") as tmp:
        return run(args, names, Path(tmp))


def run(args: argparse.Namespace, names: list[str], tmp: Path) -> int:
    workers = cpu_count()
    columns = ["torch", *(str(r) for r in installed_runtimes())]
    encoders = {(e, c): get_image_encoder(e, backend="torch") if c == "torch" else
                get_image_encoder(e, runtime=c.replace(" ", ":")) for e in names for c in columns}
    samples = {name: sample_paths(name, args.images) for name in SETS}
    (tmp / "photos").mkdir()
    samples["12 MP photos"] = make_phone_photos(tmp / "photos", args.photos)
    decoded = {}
    for encoder in encoders.values():  # weights loaded, graphs made and compiled before the clock
        pre = encoder.preprocess
        if pre not in decoded:
            decoded[pre] = np.stack([load_views(p, pre, Views())[0][0] for p in samples[SETS[0]]])
        encoder.encode(decoded[pre][:2])

    def alone(encoder: ImageEncoder) -> Callable[[], float]:
        def go() -> float:
            batch = decoded[encoder.preprocess]
            start = time.perf_counter()
            for i in range(0, len(batch), BATCH_SIZE):
                encoder.encode(batch[i:i + BATCH_SIZE])
            return len(batch) / (time.perf_counter() - start)
        return go

    def end_to_end(encoder: ImageEncoder, paths: list[Path]) -> Callable[[], float]:
        def go() -> float:
            with tempfile.TemporaryDirectory(dir=tmp) as cache:  # whole call: hashing, decoding, encoding, writing
                result = extract_features(paths, encoder, cache=cache, workers=workers, progress=False)
            return len(paths) / result.seconds
        return go

    cases: dict[tuple[str, str, str], Callable[[], float]] = {}
    for name in names:
        for column in columns:
            encoder = encoders[name, column]
            cases[name, "encoder alone, 224 px", column] = alone(encoder)
            for sample, paths in samples.items():
                cases[name, f"{sample} ({len(paths)})", column] = end_to_end(encoder, paths)
    rates: dict[tuple[str, str, str], list[float]] = {key: [] for key in cases}
    for _ in range(args.rounds):
        for key, fn in cases.items():
            rates[key].append(fn())
    print(f"\nimages/s (medians of {args.rounds} interleaved rounds), {workers} cores, batch {BATCH_SIZE}, {workers} "
          "decode threads, no cache\n")
    rows = list(dict.fromkeys((name, row) for name, row, _ in cases))
    width = max(24, *(len(n) for n in names))
    print(f"| {'encoder':<{width}} | {'images':<24} | " + " | ".join(f"{c:>16}" for c in columns)
          + f" | {'decode only':>11} |")
    print(f"|{'-' * (width + 2)}|{'-' * 26}|" + "|".join("-" * 18 for _ in columns) + f"|{'-' * 13}|")
    for name, row in rows:
        sample = next((s for s in samples if row.startswith(s)), None)
        decode = f"{decode_rate(samples[sample], name, workers):>11.0f}" if sample else " " * 11
        print(f"| {name:<{width}} | {row:<24} | "
              + " | ".join(f"{statistics.median(rates[name, row, c]):>16.1f}" for c in columns) + f" | {decode} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
