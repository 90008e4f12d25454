"""Cold start: the first ``geoscope predict`` of one photo with an empty cache against a warm second run.

Each round makes a fresh temporary ``GEOSCOPE_CACHE`` and runs, as a user would, ``geoscope predict PHOTO``
three times in new processes: *cold* (the cache empty: the encoder's graph is made, OpenVINO compiles it),
*warm* (the same photo again: its features come from the cache) and *warm, new photo* (another photo: the
encoder loads its graph from the cache and encodes). Rounds are interleaved, so that the load of a shared
machine hits every row alike; prints the median seconds of each row, and the cold/warm ratio of each round
and of the medians (goal ≤ 1.2). ``--baseline SRC`` runs another source tree's ``geoscope`` (e.g. a checkout
of ``main``'s ``src``) in the same rounds, for a before/after in one run.
Run: ``python benchmarks/cold_start.py [--rounds 5] [--runtime auto] [--baseline ../main/src]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PHOTOS = (REPO / "examples" / "images" / "london-uk-1.jpg", REPO / "examples" / "images" / "croatia-1.jpg")


def predict_seconds(source: Path, cache: Path, photo: Path, runtime: str) -> tuple[float, str]:
    """Wall-clock seconds of one ``geoscope predict photo`` in a new process, and what it printed."""
    env = {**os.environ, "GEOSCOPE_CACHE": str(cache), "GEOSCOPE_RUNTIME": runtime, "PYTHONPATH": str(source)}
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "geoscope", "predict", str(photo)], env=env, capture_output=True,
                            text=True, timeout=600)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"geoscope predict failed ({source}):\n{result.stderr}")
    return seconds, result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runtime", default=os.environ.get("GEOSCOPE_RUNTIME", "auto"))
    parser.add_argument("--baseline", type=Path, help="another source tree to run in the same rounds")
    args = parser.parse_args(argv)
    sources = {"this tree": REPO / "src"} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    rows = ("cold", "warm", "warm, new photo")
    seconds: dict[tuple[str, str], list[float]] = {(s, r): [] for s in sources for r in rows}
    for _ in range(args.rounds):
        for name, source in sources.items():
            with tempfile.TemporaryDirectory(prefix="geoscope-cold-") as tmp:
                cold, first = predict_seconds(source, Path(tmp), PHOTOS[0], args.runtime)
                warm, second = predict_seconds(source, Path(tmp), PHOTOS[0], args.runtime)
                new, _ = predict_seconds(source, Path(tmp), PHOTOS[1], args.runtime)
                if first != second:
                    raise SystemExit(f"{name}: the cold and the warm run answered differently")
            for row, value in zip(rows, (cold, warm, new), strict=True):
                seconds[name, row].append(value)
    print(f"geoscope predict of one photo in a new process, runtime {args.runtime}, {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} cores; medians in seconds")
    print(f"| {'source':<10} | {'cold':>6} | {'warm':>6} | {'warm, new photo':>15} | {'cold / warm':>11} "
          f"| {'cold / warm, each round':<32} |")
    print(f"|{'-' * 12}|{'-' * 8}|{'-' * 8}|{'-' * 17}|{'-' * 13}|{'-' * 34}|")
    for name in sources:
        cold, warm, new = (statistics.median(seconds[name, row]) for row in rows)
        each = " ".join(f"{c / w:.2f}" for c, w in zip(seconds[name, "cold"], seconds[name, "warm"], strict=True))
        print(f"| {name:<10} | {cold:>6.2f} | {warm:>6.2f} | {new:>15.2f} | {cold / warm:>11.2f} | {each:<32} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
