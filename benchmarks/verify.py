"""Claim checks (``geoscope verify``) measured on held-out places: the table of docs/verify.md.

The bundled default model's test split (as ``scripts/train_default_model.py`` splits the four shared sets:
1 km blocks, seed 0, 100 m gap; views of a place fused, as ``evaluate`` fuses them), each place judged
against true claims (its own point), false claims in another country and false claims at least 200 km away
in the same country (:func:`geoscope.evaluate.claims.measure_claims`), at each ``--km``; then photos the model
has never seen the like of (noise, blank frames, heavily blurred test photos) and claims where the model
knows no place, which must all be ``cannot tell``.

Run: ``GEOSCOPE_RUNTIME=onnxruntime python benchmarks/verify.py [--data ../shared/data] [--km 25 5 100]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from geoscope.answer.verify import VERDICTS, check_claim
from geoscope.data.manifest import Manifest
from geoscope.evaluate.claims import measure_claims, places_of
from geoscope.predict import load_model

REPO = Path(__file__).resolve().parents[1]
UNKNOWN = {"Manchester, UK": (53.4808, -2.2426), "Toronto, Canada": (43.6532, -79.3832),
           "Paris, France": (48.8566, 2.3522), "Denver, USA": (39.7392, -104.9903)}
"""Points far from every place the default model was trained on."""


def test_split(data: Path) -> Manifest:
    spec = importlib.util.spec_from_file_location("train_default_model", REPO / "scripts" / "train_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    manifest = module.combined_manifest(data)
    return manifest.subset((manifest.frame["split"] == "test").to_numpy())


def odd_photos(folder: Path, test: Manifest, count: int = 20) -> list[str]:
    """Photos unlike any street: uniform noise, blank frames of one colour, test photos blurred to a smear."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        noise = folder / f"noise-{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(noise)
        blank = folder / f"blank-{i}.png"
        Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3))).save(blank)
        blurred = folder / f"blurred-{i}.png"
        with Image.open(test.image_paths[int(rng.integers(len(test)))]) as photo:
            photo.convert("RGB").filter(ImageFilter.GaussianBlur(24)).save(blurred)
        paths += [str(noise), str(blank), str(blurred)]
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--km", type=float, nargs="+", default=[25.0, 5.0, 100.0])
    args = parser.parse_args(argv)
    model = load_model()
    check = model.claim_check
    test = test_split(args.data)
    places = places_of(model, test, progress=True)
    print(f"test split: {len(test):,} images, {len(places.lat):,} places ({int(places.in_coverage.sum()):,} in "
          f"coverage), {places.left_out} rows left out")
    pd.set_option("display.width", 160)
    for km in args.km:
        print(f"\n--km {km:g}: share of claims (%)")
        print(measure_claims(check, places, km).to_string(formatters={"claims": "{:,.0f}".format}))

    print("\nphotos outside coverage (all claims: their own point is unknown, so each is judged at a London, "
          "a US and a Croatian point)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = odd_photos(Path(tmp), test)
        counts: dict[str, int] = {}
        flagged = 0
        for lat, lon in ((51.5072, -0.1276), (42.9849, -81.2453), (37.7749, -122.4194), (45.8150, 15.9819)):
            for verdict in model.verify(paths, lat, lon, 25.0):
                counts[verdict.verdict] = counts.get(verdict.verdict, 0) + 1
                flagged += verdict.in_coverage is False
        print(f"  made photos: {len(paths)} × 4 claims: {counts}; outside coverage {flagged}")
    outside = ~places.in_coverage
    if outside.any():
        codes = check.decide(check.evidence(places.probabilities[outside], places.lat, places.lon, 25.0),
                             check.rule(25.0), places.in_coverage[outside])
        shown = dict(zip(VERDICTS, np.bincount(codes.ravel(), minlength=3).tolist(), strict=True))
        print(f"  test places the model flags out of coverage: {int(outside.sum())}, each judged at every test "
              f"place's point ({codes.size:,} claims): {shown}")
    print("\nclaims where the model knows no place (every test place, 25 km)")
    for name, (lat, lon) in UNKNOWN.items():
        verdicts = check.check(places.probabilities, check_claim(lat, lon, 25.0),
                               in_coverage=places.in_coverage.tolist())
        print(f"  {name:<16} {pd.Series([v.verdict for v in verdicts]).value_counts().to_dict()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
