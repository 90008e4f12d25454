"""Model bundles side by side: what a bigger encoder costs at predict time, next to its size on disk.

For each bundle (``--model DIR``, repeatable; the bundled default model first unless ``--no-default``): its size on
disk, the image features its heads read, the encoder alone on images already decoded (ms an image) and ``predict``
on the same real 224 px frames (``../shared/data/london-uk``) from an empty feature cache and from a warm one.
A temporary ``GEOSCOPE_CACHE``; graphs made and compiled before the clock starts; the bundles run in alternation,
round after round, so that a burst of other work on a shared machine hits each alike; medians of the rounds.
Run: ``python benchmarks/bundles.py --model DIR [--model DIR ...] [--images 300] [--rounds 3] [--runtime NAME]``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from phone_photos import sample_paths, with_london_frames
from predict import timed

ROWS = ("encoder alone, ms an image", "predict, empty cache, images/s", "predict, warm cache, images/s")


def bundle_megabytes(folder: Path) -> float:
    """Size on disk of every file in a bundle folder, in MB (10⁶ bytes)."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", default=[], type=Path, help="a bundle folder (repeatable)")
    parser.add_argument("--no-default", action="store_true", help="leave out the bundled default model")
    parser.add_argument("--images", type=int, default=300, help="224 px images (300)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians count (3)")
    parser.add_argument("--runtime", default=None, help="what runs the encoders ($GEOSCOPE_RUNTIME or auto)")
    args = parser.parse_args(argv)
    return with_london_frames(lambda tmp: run(args))


def run(args: argparse.Namespace) -> int:
    import geoscope
    from geoscope.bundle.layout import DEFAULT_BUNDLE
    from geoscope.features.cache import BATCH_SIZE
    from geoscope.images import open_image
    from geoscope.paths import cache_dir

    folders = ([] if args.no_default else [DEFAULT_BUNDLE]) + list(args.model)
    models = {folder: geoscope.load(folder, runtime=args.runtime) for folder in folders}
    paths = sample_paths("london-uk", args.images)
    decoded = {folder: np.stack([m.encoder.preprocess(open_image(p)) for p in paths]) for folder, m in models.items()}
    for folder, model in models.items():
        model.encoder.encode(decoded[folder][:2])  # graphs made and compiled before the clock

    def empty_cache() -> None:
        shutil.rmtree(cache_dir() / "features", ignore_errors=True)

    cases: list[tuple[Path, str, Callable[[], object], bool]] = []  # bundle, row, call, cold cache
    for folder, model in models.items():
        images = decoded[folder]
        cases += [(folder, ROWS[0], lambda m=model, x=images: [m.encoder.encode(x[i:i + BATCH_SIZE])
                                                                for i in range(0, len(x), BATCH_SIZE)], False),
                  (folder, ROWS[1], lambda m=model: m.predict(paths, top_k=5), True),
                  (folder, ROWS[2], lambda m=model: m.predict(paths, top_k=5), False)]
    runs: list[list[float]] = [[] for _ in cases]
    for _ in range(args.rounds):
        for measured, (_, _, fn, cold) in zip(runs, cases, strict=True):
            if cold:
                empty_cache()
            else:
                fn()  # warm: what the row reads is cached first
            measured.append(timed(fn)[0])
    seconds = {(folder, row): statistics.median(m) / len(paths)
               for (folder, row, _, _), m in zip(cases, runs, strict=True)}

    runtime = str(next(iter(models.values())).encoder.runtime)
    print(f"\n{len(paths)} london-uk frames (224 px), {runtime}, medians of {args.rounds} interleaved rounds\n")
    print("| bundle | encoder | feature values | MB | " + " | ".join(ROWS) + " |")
    print("|---" * (4 + len(ROWS)) + "|")
    for folder, model in models.items():
        values = [seconds[folder, ROWS[0]] * 1000, 1 / seconds[folder, ROWS[1]], 1 / seconds[folder, ROWS[2]]]
        print(f"| {folder.name} | `{model.image_side.name}` | {model.encoder.dim:,} | {bundle_megabytes(folder):.1f} | "
              + " | ".join(f"{v:,.1f}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
