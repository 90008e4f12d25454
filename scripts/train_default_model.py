"""Retrain the bundled default model from the four sets in ../shared/data.

Combines the sets into one manifest (absolute image paths, a ``dataset`` column), splits it
by 1 km blocks (val 10%, test 10%, seed 0; training images within 100 m of a val or test image
are left out, so no near-duplicate straddles a block edge), trains a GPS head over a 25 km gallery of
points, then the place-name CLIP model over a 100 km grid named from the offline gazetteer, both on
frozen EfficientNet-Lite0 stage statistics and band means (``efficientnet-lite0/layout``, with flipped
copies): three seeds kept together as one ensemble with a country expert (a logistic regression multiplied
in), the GPS head attached as its refiner. Writes the bundle into ``-o DIR``, or over the packaged default
model (``src/geoscope/assets/default-model``) with ``--replace-default`` (about 16 minutes on 2 cores). The
training data's provenance (the four sets' sources, terms and counts) is written as a dataset card beside the
combined manifest and recorded in the bundle (``config.json`` ``training.data.provenance`` and the model card).

Run: ``.venv/bin/python scripts/train_default_model.py (-o DIR | --replace-default) [--data ../shared/data]
[--encoder E] [--image-head H] [--no-augment] [--refiner-only | --refiner GPS_DIR]``. On a slow encoder the two
halves run as two commands: ``--refiner-only -o GPS_DIR`` writes the GPS head alone, ``--refiner GPS_DIR -o DIR``
then trains the place heads and attaches it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd

from geoscope.data.manifest import Manifest, read_manifest, write_manifest
from geoscope.data.provenance import read_dataset_card, write_dataset_card
from geoscope.data.split import split_manifest
from geoscope.geo.labels import LabelScheme
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "src" / "geoscope" / "assets" / "default-model"
SETS = ("london-uk", "london-on", "us-west", "croatia")
TERMS = ("Google Street View imagery collected by that project, which states no licence for it: use it to develop, "
         "test and benchmark; do not copy it into a repository or redistribute it (beyond the README's eight "
         "example photos, each listed in examples/SOURCES.md)")
"""The terms of ../shared/data/README.md, which apply to all four sets."""
ORIGINS = {
    "london-uk": ("calvertzhu/London-or-London", "303b8ad",
                  "its London, UK training folder; augmented copies dropped"),
    "london-on": ("calvertzhu/London-or-London", "303b8ad",
                  "its London, Ontario training folder; augmented copies dropped"),
    "us-west": ("hunterprice04/Distributed-Deep-Learning-Network-to-Predict-Location-of-Google-Street-View-Data",
                "cd6ac6d", "three headings per place on a western-USA grid; later commits deleted the images"),
    "croatia": ("ciglenecki/geoguessr-ai", "8fb723c", "four headings per place"),
}
"""Where each set came from (../shared/data/README.md, 'Provenance'): GitHub repository, commit, what was taken."""


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


def data_sources(manifest: Manifest, data: Path) -> list[dict]:
    """One dataset-card source per shared set (in ``data``) of the combined ``manifest``: origin, terms, counts."""
    frame = manifest.frame
    sources = []
    for name in SETS:
        rows = frame[frame["dataset"] == name]
        repo, commit, what = ORIGINS[name]
        sources.append({
            "kind": "github", "location": f"https://github.com/{repo} (commit {commit})", "terms": TERMS,
            "dataset": name, "folder": os.path.relpath(data / name, REPO), "imagery": "Google Street View",
            "taken": what,
            "images": len(rows), "places": int(rows["location_id"].nunique()),
            "splits": {**{split: int((rows["split"] == split).sum()) for split in ("train", "val", "test")},
                       "left_out_by_gap": int(rows["split"].isna().sum())},
        })
    return sources


def training_data_record(manifest: Manifest, data: Path, folder: Path, command: list[str]) -> dict:
    """Write the combined ``manifest`` (of the sets in ``data``) and its dataset card into ``folder``; return the
    card's record (what :func:`geoscope.data.provenance.read_dataset_card` reads: sources, terms, counts)."""
    path = write_manifest(manifest, folder / "manifest.csv")
    step = {"step": "combine+split", "sets": list(SETS), "split": {"by": "block", "block_km": 1.0, "val": 0.1,
                                                                    "test": 0.1, "seed": 0, "gap_km": 0.1},
            "command": command}
    write_dataset_card(path, manifest.frame, data_sources(manifest, data), step=step)
    record = read_dataset_card(path)
    assert record is not None
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("-o", "--output", type=Path, default=None, help="the folder to write the bundle into")
    parser.add_argument("--replace-default", action="store_true",
                        help=f"write the bundle over the packaged default model ({DEFAULT_MODEL.relative_to(REPO)})")
    parser.add_argument("--encoder", default=ENCODER, help=f"image encoder ({ENCODER})")
    parser.add_argument("--image-head", default=IMAGE_HEAD, choices=TrainConfig.CHOICES["image_head"],
                        help=f"what reads the image features ({IMAGE_HEAD})")
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=AUGMENT,
                        help="no horizontally flipped training copies")
    halves = parser.add_mutually_exclusive_group()
    halves.add_argument("--refiner-only", action="store_true",
                        help="train only the GPS head (the refiner) and write it as its own bundle")
    halves.add_argument("--refiner", type=Path, default=None, metavar="GPS_DIR",
                        help="attach this GPS head (from --refiner-only, same options) instead of training one")
    args = parser.parse_args(argv)
    if (args.output is None) == (not args.replace_default):
        print("train_default_model.py: " + ("give -o DIR or --replace-default, not both" if args.replace_default else
              "say where to write the bundle: -o DIR, or --replace-default to overwrite the packaged default model"),
              file=sys.stderr)
        return 2
    output = DEFAULT_MODEL if args.replace_default else args.output
    manifest = combined_manifest(args.data)
    command = ["python", "scripts/train_default_model.py", *(sys.argv[1:] if argv is None else argv)]
    with tempfile.TemporaryDirectory() as tmp:
        provenance = training_data_record(manifest, args.data, Path(tmp) / "training-data", command)
        refiner_options = replace(gps_options(args.encoder, args.image_head, args.augment), provenance=provenance)
        if args.refiner_only:
            path = fit(manifest, refiner_options, output, command=command)[0]
            print(f"wrote {path}")
            return 0
        gps = args.refiner or fit(manifest, refiner_options, Path(tmp) / "gps", command=command)[0]
        options = replace(default_options(args.encoder, args.image_head, args.augment), refiner=gps,
                          provenance=provenance)
        path, result = fit(manifest, options, output, command=command)
    for split, record in result.metrics.items():
        print(f"{split:5s} accuracy {record['accuracy']:.1%} median {record['median_km']:.1f} km "
              f"mean {record['mean_km']:.1f} km")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
