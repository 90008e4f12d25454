"""Retrain the bundled default model from the four sets in ../shared/data.

Combines the sets into one manifest (absolute image paths, a ``dataset`` column), splits it
by 1 km blocks (val 10%, test 10%, seed 0; training images within 100 m of a val or test image
are left out, so no near-duplicate straddles a block edge), trains a GPS head over a 25 km gallery of
points, then the place-name CLIP model over a 100 km grid named from the offline gazetteer, both on
frozen EfficientNet-Lite0 stage statistics and band means (``efficientnet-lite0/layout``, with flipped
copies): three seeds kept together as one ensemble with a country expert (a logistic regression multiplied
in), the GPS head attached as its refiner. Writes the bundle into ``src/geoscope/assets/default-model``
(about 16 minutes on 2 cores).

Run: ``.venv/bin/python scripts/train_default_model.py [--data ../shared/data] [-o DIR] [--encoder E] [--image-head H]
[--no-augment]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from geoscope.data.manifest import Manifest, read_manifest
from geoscope.data.split import split_manifest
from geoscope.geo.labels import LabelScheme
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig

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


ENCODER = "efficientnet-lite0/layout"
IMAGE_HEAD = "projection"
AUGMENT = True


def default_options(encoder: str = ENCODER, image_head: str = IMAGE_HEAD, augment: bool = AUGMENT) -> FitOptions:
    """How the default model is trained (also used by the benchmarks that retrain it on subsets)."""
    return FitOptions(
        scheme=LabelScheme("grid", {"cell_km": 100.0}),
        train=replace(TrainConfig(), label_smoothing_km=100.0, feature_noise=1.0, image_head=image_head),
        image_encoder=encoder,
        augment=augment,
        restarts=3,
        members=3,
        name=f"geoscope-default-{_short(encoder)}-grid100",
    )


def _short(encoder: str) -> str:
    """An encoder's name as the bundle's name spells it (``efficientnet-lite0/stats@384`` → ``lite0stats-384``)."""
    return encoder.replace("efficientnet-", "").replace("/", "").replace("+", "-").replace("@", "-")


def gps_options(encoder: str = ENCODER, image_head: str = IMAGE_HEAD, augment: bool = AUGMENT) -> FitOptions:
    """How the default model's GPS head (its refiner) is trained: a 25 km gallery, 50 km label smoothing."""
    base = default_options(encoder, image_head, augment)
    return replace(base, scheme=LabelScheme("grid", {"cell_km": 25.0}), restarts=1, members=1,
                   name="geoscope-default-gps-grid25",
                   train=replace(base.train, head="gps", label_smoothing_km=50.0))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("-o", "--output", type=Path, default=REPO / "src" / "geoscope" / "assets" / "default-model")
    parser.add_argument("--encoder", default=ENCODER, help=f"image encoder ({ENCODER})")
    parser.add_argument("--image-head", default=IMAGE_HEAD, choices=TrainConfig.CHOICES["image_head"],
                        help=f"what reads the image features ({IMAGE_HEAD})")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=AUGMENT,
                        help="no horizontally flipped training copies")
    args = parser.parse_args()
    manifest = combined_manifest(args.data)
    command = ["python", "scripts/train_default_model.py", *sys.argv[1:]]
    with tempfile.TemporaryDirectory() as tmp:
        gps = fit(manifest, gps_options(args.encoder, args.image_head, args.augment), Path(tmp) / "gps",
                  command=command)[0]
        path, result = fit(manifest, replace(default_options(args.encoder, args.image_head, args.augment), refiner=gps),
                           args.output, command=command)
    for split, record in result.metrics.items():
        print(f"{split:5s} accuracy {record['accuracy']:.1%} median {record['median_km']:.1f} km "
              f"mean {record['mean_km']:.1f} km")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
