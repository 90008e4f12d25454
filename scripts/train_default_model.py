"""Retrain the bundled default model from the four sets in ../shared/data.

Combines the sets into one manifest (absolute image paths, a ``dataset`` column), splits it
by 1 km blocks (val 10%, test 10%, seed 0; training images within 100 m of a val or test image
are left out, so no near-duplicate straddles a block edge), labels it with a 100 km grid named from the
offline gazetteer, trains the place-name CLIP model on frozen EfficientNet-Lite0 stage
statistics (``efficientnet-lite0/stats``, with flipped copies; three seeds, the lowest validation
loss kept) and writes the bundle into
``src/geoscope/assets/default-model``.

Run: ``.venv/bin/python scripts/train_default_model.py [--data ../shared/data] [-o DIR]``
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd

from geoscope.data.manifest import Manifest, read_manifest
from geoscope.data.split import split_manifest
from geoscope.fit import FitOptions, fit
from geoscope.labels import LabelScheme
from geoscope.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SETS = ("london-uk", "london-on", "us-west", "croatia")


def combined_manifest(data: Path) -> Manifest:
    frames = []
    for name in SETS:
        m = read_manifest(data / name / "manifest.csv")
        frame = m.frame[["image", "lat", "lon", "location_id"]].copy()
        frame["image"] = [str(p) for p in m.image_paths]
        frame["location_id"] = name + "/" + frame["location_id"].astype(str)
        frame["dataset"] = name
        frames.append(frame)
    frame = split_manifest(pd.concat(frames, ignore_index=True), by="block", block_km=1.0, seed=0, gap_km=0.1)
    return Manifest(frame, Path("/"))


def default_options() -> FitOptions:
    """How the default model is trained (also used by the benchmarks that retrain it on subsets)."""
    return FitOptions(
        scheme=LabelScheme("grid", {"cell_km": 100.0}),
        train=replace(TrainConfig(), label_smoothing_km=100.0, feature_noise=1.0),
        image_encoder="efficientnet-lite0/stats",
        restarts=3,
        name="geoscope-default-lite0stats-grid100",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "src" / "geoscope" / "assets" / "default-model")
    args = parser.parse_args()
    path, result = fit(combined_manifest(args.data), default_options(), args.output,
                       command=["python", "scripts/train_default_model.py"])
    for record in (r for r in result.history if r["epoch"] == result.best_epoch):
        print(f"{record['split']:5s} accuracy {record['accuracy']:.1%} median {record['median_km']:.1f} km "
              f"mean {record['mean_km']:.1f} km")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
