"""How well a model says "don't know": share of photos unlike its training data flagged out of coverage.

In-coverage set: the held-out test rows of the default model's training manifest (the four
shared sets split by 1 km blocks, as ``scripts/train_default_model.py`` does). Out-of-coverage
sets, made here from them: rotated, colour-inverted, channel-swapped, zoomed, blurred images,
solid colours and noise, plus the non-street photos matplotlib ships. ``--hold-out SET``
(repeatable) also trains a model on the other three sets, as the tested model was trained (its encoder,
image head and flipped copies), and reports how many of SET's images (a region the model never saw) it
flags. Prints one table.

Run: ``python benchmarks/coverage.py [--model DIR] [--n 200] [--hold-out croatia --hold-out us-west]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from train_default_model import IMAGE_HEAD, SETS, combined_manifest, default_options  # noqa: E402

from geoscope.data.manifest import Manifest  # noqa: E402
from geoscope.predict import GeoModel, load_model  # noqa: E402
from geoscope.training.fit import FitOptions, fit  # noqa: E402

DATA = REPO.parent / "shared" / "data"
TRANSFORMS = {
    "rotated 90°": lambda im, rng: im.rotate(90, expand=True),
    "upside down": lambda im, rng: im.rotate(180),
    "colours inverted": lambda im, rng: ImageOps.invert(im),
    "channels swapped": lambda im, rng: Image.merge("RGB", im.split()[::-1]),
    "zoomed 4× (centre)": lambda im, rng: im.crop(_centre(im, 4)).resize(im.size),
    "blurred (radius 8)": lambda im, rng: im.filter(ImageFilter.GaussianBlur(8)),
    "solid colour": lambda im, rng: Image.new("RGB", im.size, tuple(int(v) for v in rng.integers(0, 256, 3))),
    "noise": lambda im, rng: Image.fromarray(rng.integers(0, 256, (im.size[1], im.size[0], 3), dtype=np.uint8)),
}


def _centre(image: Image.Image, zoom: int) -> tuple[int, int, int, int]:
    w, h = image.size
    return (w // 2 - w // (2 * zoom), h // 2 - h // (2 * zoom), w // 2 + w // (2 * zoom), h // 2 + h // (2 * zoom))


def flagged_share(model: GeoModel, paths: list[Path]) -> tuple[float, int]:
    """Share of readable images the model says are out of coverage, and how many were read."""
    features = model.image_features(paths)
    valid = np.asarray(features.valid, dtype=bool)
    scores = model.coverage_scores(np.nan_to_num(features.embeddings)[valid])
    return float((scores < model.coverage.threshold).mean()), int(valid.sum())


def _trained_as(model: GeoModel) -> FitOptions:
    """The default model's recipe with the tested model's encoder, image head, flipped copies and level expert."""
    training = model.config.get("training") or {}
    return replace(default_options(model.config["image_encoder"]["name"],
                                   (training.get("config") or {}).get("image_head", IMAGE_HEAD),
                                   augment=training.get("augment") is not None),
                   level_expert=model.level_expert is not None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="bundle (default: the bundled default model)")
    parser.add_argument("--n", type=int, default=200, help="test images to transform (200)")
    parser.add_argument("--hold-out", choices=SETS, action="append", default=[],
                        help="also train without this set and test on it (repeatable)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: needs {DATA}", file=sys.stderr)
        return 0
    model = load_model(args.model)
    if model.coverage is None:
        print("this model has no coverage threshold", file=sys.stderr)
        return 2
    manifest = combined_manifest(DATA)
    test = manifest.frame[manifest.frame["split"] == "test"].reset_index(drop=True)
    rng = np.random.default_rng(0)
    sample = test.iloc[rng.choice(len(test), size=min(args.n, len(test)), replace=False)]
    rows = [("held-out test images of the four regions (should stay)", *flagged_share(
        model, [Path(p) for p in test["image"]]))]
    rows += [(f"… of which {name} (should stay)", *flagged_share(model, [Path(p) for p in group["image"]]))
             for name, group in test.groupby("dataset")]
    with tempfile.TemporaryDirectory() as tmp:
        for name, transform in TRANSFORMS.items():
            folder = Path(tmp) / name.replace(" ", "_").replace("°", "").replace("×", "x")
            folder.mkdir()
            paths = []
            for i, path in enumerate(sample["image"]):
                with Image.open(path) as image:
                    out = folder / f"{i}.jpg"
                    transform(image.convert("RGB"), rng).save(out, quality=90)
                    paths.append(out)
            rows.append((name, *flagged_share(model, paths)))
        import matplotlib

        samples = Path(matplotlib.get_data_path()) / "sample_data"
        photos = [p for p in samples.iterdir() if p.suffix in (".jpg", ".png")]
        rows.append(("non-street images shipped with matplotlib", *flagged_share(model, photos)))
        for held_out in args.hold_out:
            kept = manifest.frame["dataset"] != held_out
            held = Manifest(manifest.frame[kept].reset_index(drop=True), manifest.root)
            options = replace(_trained_as(model), name=f"without-{held_out}")
            fit(held, options, Path(tmp) / held_out, progress=False)
            without = load_model(Path(tmp) / held_out)
            region = [Path(p) for p in manifest.frame.loc[~kept, "image"]]
            same = [Path(p) for p in test.loc[test["dataset"] != held_out, "image"]]
            rows.append((f"model without {held_out}: its own held-out test images (should stay)",
                         *flagged_share(without, same)))
            rows.append((f"model without {held_out}: all {held_out} images (a region it never saw)",
                         *flagged_share(without, region)))
    print("| set | images | flagged out of coverage |\n|---|---|---|")
    for name, share, n in rows:
        print(f"| {name} | {n:,} | {share:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
