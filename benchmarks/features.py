"""Feature-extraction throughput: images/s end to end (decode + preprocess + encode), no cache.

For each offline encoder (EfficientNet-Lite0, its stage statistics, Lite2) and each backend (torch, ONNX Runtime),
on a random sample of ``../shared/data/london-uk`` and ``us-west``; model loading and
ONNX export happen before the clock starts. Also the rate of decoding + preprocessing
alone on the decode threads. Run: ``python benchmarks/features.py [--images 256] [--encoder NAME ...]``
(``--encoder`` measures those instead, e.g. the joint ``efficientnet-lite0/stats+efficientnet-lite2/stats``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from geoscope.data.manifest import read_manifest
from geoscope.distributed import cpu_count
from geoscope.encoders.image import get_image_encoder
from geoscope.encoders.preprocess import Views
from geoscope.features.cache import extract_features, load_views

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("london-uk", "us-west")
ENCODERS = ("efficientnet-lite0", "efficientnet-lite0/stats", "efficientnet-lite2")
BACKENDS = ("torch", "onnx")


def sample_paths(name: str, n: int, seed: int = 0) -> list[Path]:
    manifest = read_manifest(DATA / name / "manifest.csv")
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(manifest), size=min(n, len(manifest)), replace=False)
    return [manifest.image_paths[i] for i in sorted(rows)]


def decode_rate(paths: list[Path], encoder_name: str, workers: int) -> float:
    preprocess = get_image_encoder(encoder_name).preprocess
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: load_views(p, preprocess, Views()), paths))
    return len(paths) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256, help="images sampled per set (256)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--encoder", action="append", help=f"encoders to measure (default: {', '.join(ENCODERS)})")
    args = parser.parse_args(argv)
    names = args.encoder or ENCODERS
    missing = [s for s in SETS if not (DATA / s / "manifest.csv").is_file()]
    if missing:
        print(f"skipped: needs {', '.join(str(DATA / s) for s in missing)}", file=sys.stderr)
        return 0
    workers = cpu_count()
    encoders = {(e, b): get_image_encoder(e, backend=b) for e in names for b in BACKENDS}
    for encoder in encoders.values():  # load weights / export ONNX before timing
        c = encoder.preprocess.crop_size
        encoder.encode(np.zeros((2, 3, c, c), dtype=np.float32))
    rows = []
    for name in SETS:
        paths = sample_paths(name, args.images)
        for encoder_name in names:
            rates = {}
            for backend in BACKENDS:
                with tempfile.TemporaryDirectory() as cache:
                    result = extract_features(paths, encoders[encoder_name, backend], cache=cache,
                                              batch_size=args.batch_size, workers=workers, progress=False)
                rates[backend] = result.images_per_second
            rows.append((name, len(paths), encoder_name, rates["torch"], rates["onnx"],
                         decode_rate(paths, encoder_name, workers)))
    print(f"\nimages/s end to end (decode + preprocess + encode), {workers} cores, "
          f"batch {args.batch_size}, {workers} decode threads, no cache\n")
    columns = ("set", "n", "encoder", "torch", "onnx", "onnx/torch", "decode only")
    widths = (10, 4, max(24, *map(len, names)), 7, 7, 10, 11)
    print("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for name, n, encoder_name, torch_rate, onnx_rate, decode in rows:
        print(f"| {name:<10} | {n:>4} | {encoder_name:<{widths[2]}} | {torch_rate:>7.1f} | {onnx_rate:>7.1f} | "
              f"{onnx_rate / torch_rate:>9.2f}× | {decode:>11.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
