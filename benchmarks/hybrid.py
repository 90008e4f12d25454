"""PIGEON's hybrid, measured before it is built: a place head's area, a GPS head's point inside it.

On the default model's split (``scripts/train_default_model.py``: the four shared sets, 1 km blocks,
100 m gap), the test places' views fused, it sets side by side: the place head's answer, the GPS
head's answer (each with its own first-guess rule, ``geoscope.answer.best_guesses``), and the hybrid,
the GPS head's most probable gallery point within ``R`` km of the place head's answer (the place
head's answer when none is that near). Prints one table.

Run: ``python benchmarks/hybrid.py [--place DIR] [--gps DIR] [--seed 0]``: ``--place`` defaults to
the bundled default model; without ``--gps`` a GPS head is trained as the default model is, on a
25 km gallery with 50 km label smoothing (about 15–20 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from train_default_model import combined_manifest, default_options  # noqa: E402

from geoscope.data.manifest import Manifest  # noqa: E402
from geoscope.fit import fit  # noqa: E402
from geoscope.geo import geoscore, haversine_km  # noqa: E402
from geoscope.labels import LabelScheme  # noqa: E402
from geoscope.predict import GeoModel, load_model  # noqa: E402

DATA = REPO.parent / "shared" / "data"
RADII_KM = (50, 100)


def place_probabilities(model: GeoModel, test: Manifest) -> np.ndarray:
    """The model's probabilities for each test place (its views fused)."""
    codes = pd.factorize(test.place_ids)[0]
    features = np.nan_to_num(model.image_features(test.image_paths).embeddings)
    return model.probabilities(model.fused_embeddings(features, codes))


def train_gps(manifest: Manifest, folder: Path, seed: int) -> Path:
    base = default_options()
    options = replace(base, scheme=LabelScheme("grid", {"cell_km": 25.0}), restarts=1, name="gps-head",
                      train=replace(base.train, head="gps", label_smoothing_km=50.0, seed=seed))
    return fit(manifest, options, folder / "gps", progress=False)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--place", help="place-head bundle (default: the bundled default model)")
    parser.add_argument("--gps", help="GPS-head bundle trained on the same split (default: train one)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the GPS head trained here (0)")
    args = parser.parse_args()
    if not DATA.is_dir():
        print(f"skipped: needs {DATA}", file=sys.stderr)
        return 0
    manifest = combined_manifest(DATA)
    test = manifest.subset((manifest.frame["split"] == "test").to_numpy())
    first = ~test.place_ids.duplicated().to_numpy()
    lat, lon = test.frame["lat"].to_numpy()[first], test.frame["lon"].to_numpy()[first]
    with tempfile.TemporaryDirectory() as tmp:
        place = load_model(args.place)
        gps = load_model(args.gps or train_gps(manifest, Path(tmp), args.seed))
        answers = {}
        for name, model in (("place head", place), ("GPS head", gps)):
            best = model.answerer.best(place_probabilities(model, test))
            answers[name] = (model.labels["lat"].to_numpy()[best], model.labels["lon"].to_numpy()[best])
        gps_p = place_probabilities(gps, test)
        p_lat, p_lon = answers["place head"]
        g_lat, g_lon = gps.labels["lat"].to_numpy(), gps.labels["lon"].to_numpy()
        near_km = haversine_km(p_lat[:, None], p_lon[:, None], g_lat[None], g_lon[None])
        for radius in RADII_KM:
            pick = np.where(near_km <= radius, gps_p, -1.0).argmax(axis=1)
            inside = (near_km <= radius).any(axis=1)
            answers[f"hybrid, GPS point within {radius} km"] = (np.where(inside, g_lat[pick], p_lat),
                                                                 np.where(inside, g_lon[pick], p_lon))
    print(f"\n{len(lat):,} test places of the default split, views fused\n")
    print("| answer | GeoScore | median km | mean km | within 25 km |\n|---|---|---|---|---|")
    for name, (a_lat, a_lon) in answers.items():
        d = haversine_km(lat, lon, a_lat, a_lon)
        print(f"| {name} | {geoscore(d).mean():.0f} | {np.median(d):.2f} | {d.mean():.0f} | {(d <= 25).mean():.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
