"""How well a model says "don't know": share of photos unlike its training data flagged out of coverage.

In-coverage set: the held-out test rows of the default model's training manifest (the four
shared sets split by 1 km blocks, as ``scripts/train_default_model.py`` does). Out-of-coverage
sets, made here from them: rotated, colour-inverted, channel-swapped, zoomed, blurred images,
solid colours and noise, plus the non-street photos matplotlib ships. ``--hold-out SET``
(repeatable) also trains a model on the other three sets, as the tested model was trained (its encoder,
image head and flipped copies), and reports how many of SET's images (a region the model never saw) it
flags. Prints one table.

``--hold-out-states WA,OR`` (repeatable) asks the question inside a known country: it trains one place head
(the tested model's recipe, one run) on the four sets without the western-USA places in those states, and
reports the share of those states' photos flagged and of the covered regions' validation and test photos kept,
with the coverage test one level down (the bundle's) and without it (refitted on the same validation photos
from the gallery and typicality tests alone). ``--default-regions`` fits the test one level down onto the
bundled default model (from its training manifest's cached features; the bundle itself is not changed) and
reports its test places kept before and after. Each prints a table of its own.

Run: ``python benchmarks/coverage.py [--model DIR] [--n 200] [--hold-out croatia --hold-out us-west]
[--hold-out-states WA,OR --hold-out-states CA] [--default-regions] [--skip-transforms]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from train_default_model import IMAGE_HEAD, SETS, combined_manifest, default_options  # noqa: E402

from geoscope.answer.coverage import WITHIN_TEST, Coverage  # noqa: E402
from geoscope.data.manifest import Manifest  # noqa: E402
from geoscope.geo.naming import locate, partly_covered  # noqa: E402
from geoscope.models.fusion import group_mean  # noqa: E402
from geoscope.predict import GeoModel, load_model  # noqa: E402
from geoscope.training.fit import FitOptions, fit  # noqa: E402
from geoscope.training.stages import COVERAGE_MIN_PLACES, RegionCover, fit_coverage  # noqa: E402

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


def state_names(codes: str) -> list[str]:
    """US states by their postal codes (``WA,OR``), named as the gazetteer names regions (ISO 3166-2)."""
    import pycountry

    names = []
    for code in codes.split(","):
        state = pycountry.subdivisions.get(code=f"US-{code.strip().upper()}")
        if state is None:
            raise SystemExit(f"coverage.py: {code!r} is not a US state's postal code")
        names.append(state.name)
    return names


def _features(model: GeoModel, paths: list[str]) -> np.ndarray:
    """The model's image features of readable images (all of the shared sets' are)."""
    features = model.image_features([Path(p) for p in paths])
    return np.nan_to_num(np.asarray(features.embeddings, dtype=np.float32))


def _kept(coverage: Coverage, tests: dict[str, np.ndarray]) -> np.ndarray:
    return coverage.combine(tests) >= coverage.threshold


def held_out_states(model: GeoModel, manifest: Manifest, codes: str, folder: Path) -> list[tuple[str, int, str]]:
    """Train without the western-USA places in the states ``codes`` and measure: rows of (photos, how many,
    with the test one level down / without it)."""
    frame = manifest.frame
    where = locate(frame["lat"].to_numpy(), frame["lon"].to_numpy())
    states = state_names(codes)
    held = ((where["country_code"] == "US") & where["region"].isin(states)).to_numpy()
    options = replace(_trained_as(model), name=f"without-{codes.replace(',', '-')}", restarts=1, members=1)
    fit(Manifest(frame[~held].reset_index(drop=True), manifest.root), options, folder, progress=False)
    without = load_model(folder)
    if without.coverage is None:
        raise SystemExit("the model trained without those states has no coverage threshold")
    split = frame["split"].to_numpy()
    train, val, test = (~held & (split == name) for name in ("train", "val", "test"))
    partial = partly_covered(frame.loc[train, "lat"], frame.loc[train, "lon"], COVERAGE_MIN_PLACES)[1]
    regions = RegionCover(partial=partial)
    tests = {name: without.coverage_tests(_features(without, list(frame.loc[rows, "image"])))
             for name, rows in (("val", val), ("test", test), ("held", held))}
    lat, lon = frame.loc[val, "lat"].to_numpy(), frame.loc[val, "lon"].to_numpy()
    plain = fit_coverage({k: v for k, v in tests["val"].items() if not WITHIN_TEST.fullmatch(k)}, lat, lon,
                         without.coverage.groups, regions)
    refit = fit_coverage(tests["val"], lat, lon, without.coverage.groups, RegionCover(partial=partial,
                                                                                      within=without.coverage.within))
    if abs(refit.threshold - without.coverage.threshold) > 1e-9:
        print(f"note: both refitted on every validation row (the bundle's items leave out rows it could not label); "
              f"threshold {refit.threshold:.4f}, the bundle's {without.coverage.threshold:.4f}", file=sys.stderr)
    us = (where["country_code"] == "US").to_numpy()
    covered_val = regions.covers(lat, lon)
    rows = []

    def row(name: str, part: str, mask: np.ndarray | None, flagged: bool) -> None:
        t = tests[part] if mask is None else {k: v[mask] for k, v in tests[part].items()}
        shares = [float(np.mean(~_kept(c, t) if flagged else _kept(c, t))) for c in (refit, plain)]
        rows.append((name, len(next(iter(t.values()))), f"{shares[0]:.1%} / {shares[1]:.1%}"))

    row(f"photos from {', '.join(states)} (flagged)", "held", None, True)
    for state in states:
        row(f"… {state} (flagged)", "held", where.loc[held, "region"].to_numpy() == state, True)
    row("validation photos of the covered regions (kept)", "val", covered_val, False)
    row("… of which US (kept)", "val", covered_val & us[val], False)
    row("test photos of the trained regions (kept)", "test", None, False)
    row("… of which US (kept)", "test", us[test], False)
    us_rows = us & (train | val | test | held)
    share = supervised_ceiling(_features(without, list(frame.loc[us_rows, "image"])), held[us_rows],
                               frame.loc[us_rows, "location_id"].to_numpy())
    rows.append((f"ceiling: a classifier told {', '.join(states)} apart from the other US photos (5 folds by place, "
                 "flagged at 95 % of the others kept)", int(held.sum()), f"{share:.1%}"))
    print(f"\nmodel trained without {', '.join(states)}: tests one level down: "
          + ("; ".join(f"{c.name}: {', '.join(c.covered)}" for c in without.coverage.within.values()) or "none"))
    return rows


def supervised_ceiling(features: np.ndarray, held: np.ndarray, places: np.ndarray) -> float:
    """What a test that had seen the held-out photos could flag: a logistic regression (standardised, C = 0.01)
    trained to tell them from the country's other photos, cross-validated by place, its threshold keeping 95 % of
    the others."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    p = cross_val_predict(probe, features, held, groups=places, cv=GroupKFold(5), method="predict_proba")[:, 1]
    return float(np.mean(p[held] > np.quantile(p[~held], 0.95)))


def default_regions(model: GeoModel, manifest: Manifest) -> list[tuple[str, int, str]]:
    """The test one level down fitted onto the bundled default model (its parts as training fits them, from its
    training manifest's cached features; the bundle is not changed): its test places kept before and after."""
    frame = manifest.frame
    gallery = model._stored_gallery()
    train = (frame["split"] == "train").to_numpy()
    if train.sum() != len(gallery.lat) or not np.allclose(frame.loc[train, "lat"], gallery.lat):
        raise SystemExit("the default model's gallery is not its training manifest's training rows")
    countries = model.labels["country_code"].astype(str)
    groups = pd.factorize(countries)[0][gallery.label]
    regions = RegionCover.of(model.labels, "country", groups, gallery.label, gallery.lat, gallery.lon)
    typicality = gallery.typicality.fit_within(_features(model, list(frame.loc[train, "image"])), groups,
                                               regions.subgroups)
    below = replace(gallery, typicality=typicality)
    val = (frame["split"] == "val").to_numpy()
    coverage = fit_coverage(below.scores(_features(model, list(frame.loc[val, "image"])), model.coverage.k),
                            frame.loc[val, "lat"].to_numpy(), frame.loc[val, "lon"].to_numpy(),
                            model.coverage.groups, regions)
    test = frame[frame["split"] == "test"]
    places = pd.factorize(test["location_id"])[0]
    x = group_mean(_features(model, list(test["image"])), places)
    before = model.coverage_scores(x) >= model.coverage.threshold
    after = _kept(coverage, below.scores(x, model.coverage.k))
    print("\ndefault model, tests one level down: "
          + ("; ".join(f"{c.name}: {', '.join(c.covered)}" for c in coverage.within.values()) or "none"))
    return [("default model: test places kept (before / with the test one level down)", len(x),
             f"{before.mean():.2%} / {after.mean():.2%}"),
            ("… of which US places", int((test.groupby(places)["dataset"].first() == "us-west").sum()),
             f"{before[_us(test, places)].mean():.2%} / {after[_us(test, places)].mean():.2%}")]


def _us(rows: pd.DataFrame, places: np.ndarray) -> np.ndarray:
    return (rows.groupby(places)["dataset"].first() == "us-west").to_numpy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", help="bundle (default: the bundled default model)")
    parser.add_argument("--n", type=int, default=200, help="test images to transform (200)")
    parser.add_argument("--hold-out", choices=SETS, action="append", default=[],
                        help="also train without this set and test on it (repeatable)")
    parser.add_argument("--hold-out-states", action="append", default=[], metavar="WA,OR",
                        help="also train without these US states' places and flag them (repeatable)")
    parser.add_argument("--default-regions", action="store_true",
                        help="fit the test one level down onto the default model and measure its test places")
    parser.add_argument("--skip-transforms", action="store_true",
                        help="only the --hold-out-states and --default-regions tables")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: needs {DATA}", file=sys.stderr)
        return 0
    model = load_model(args.model)
    if model.coverage is None:
        print("this model has no coverage threshold", file=sys.stderr)
        return 2
    manifest = combined_manifest(DATA)
    for codes in args.hold_out_states:
        with tempfile.TemporaryDirectory() as tmp:
            _table(held_out_states(model, manifest, codes, Path(tmp)),
                   "with the test one level down / without it")
    if args.default_regions:
        _table(default_regions(model, manifest), "share")
    if args.skip_transforms:
        return 0
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
    _table([(name, n, f"{share:.1%}") for name, share, n in rows], "flagged out of coverage")
    return 0


def _table(rows: list[tuple[str, int, str]], measured: str) -> None:
    print(f"| set | images | {measured} |\n|---|---|---|")
    for name, n, value in rows:
        print(f"| {name} | {n:,} | {value} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
