"""Refiners measured on the default model's own test split: where each moves the guess, and what it costs.

On the default model's split (``scripts/train_default_model.py``: the four shared sets, 1 km blocks,
100 m gap), the test places' views fused, it evaluates the bundle (``geoscope.evaluate.scoring``, the path
``geoscope evaluate`` runs) with each refiner it holds: ``none`` (the label's medoid), ``knn`` (the
most similar training images in the label) and ``gps`` (the GPS head's likeliest point within 50 km
of the label: PIGEON's hybrid). Then predict's speed with each, on the same images, their features
already cached (so the table shows what the answer stage costs, not the encoder). Prints one table.

Run: ``python benchmarks/refine.py [--model DIR] [--images 2000]`` (default: the bundled model).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from train_default_model import combined_manifest  # noqa: E402

from geoscope.answer.refine import REFINERS  # noqa: E402
from geoscope.evaluate.results import MODEL  # noqa: E402
from geoscope.evaluate.scoring import evaluate  # noqa: E402
from geoscope.predict import load_model  # noqa: E402

DATA = REPO.parent / "shared" / "data"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model bundle trained on the default split (default: the bundled model)")
    parser.add_argument("--images", type=int, default=2000, help="test images predict is timed on (2000)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: needs {DATA}", file=sys.stderr)
        return 0
    manifest = combined_manifest(DATA)
    test = manifest.subset((manifest.frame["split"] == "test").to_numpy())
    model = load_model(args.model)
    names = [r for r in REFINERS if r == "none" or r in model.refiners]
    paths = [str(p) for p in test.image_paths[: args.images]]
    model.predict(paths)  # fills the feature cache: the timed runs read it
    print(f"\n{model.config.get('name')}: {test.place_ids.nunique():,} test places, views fused; predict timed on "
          f"{len(paths):,} images with cached features; the bundle refines with {model.refine!r} by default\n")
    print("| refine | GeoScore | median km | mean km | within 1 km | within 25 km | label accuracy | right country "
          "| predict images/s |\n|---|---|---|---|---|---|---|---|---|")
    country = dict(zip(model.labels["name"], model.labels["country"], strict=True))
    for name in names:
        result = evaluate(model, test, progress=False, refine=name)[0]
        m, guesses = result.metrics[MODEL], result.predictions
        right_country = (guesses["true_label"].map(country) == guesses["pred_country"]).mean()
        start = time.perf_counter()
        model.predict(paths, refine=name)
        speed = len(paths) / (time.perf_counter() - start)
        print(f"| {name} | {m['geoscore']:.0f} | {m['median_km']:.2f} | {m['mean_km']:.0f} | "
              f"{m['within_km']['1']:.1%} | {m['within_km']['25']:.1%} | {m['label_accuracy']:.1%} | "
              f"{right_country:.1%} | {speed:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
