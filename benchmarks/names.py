"""How true a model's label names are: the share named after a real place near where the label stands.

A label counts when its ``place`` is a gazetteer place (GeoNames' places of 500 people, or a US
post-office town: :func:`geoscope.geo.naming.naming_towns`) of that name, in the label's country,
within 40 km of the label's coordinates (its images' medoid). Labels named by a distance and
a direction ("51 km south-east of Austin") do not count. Prints the share and the labels that
miss, with the distance to the nearest place of any name.

Run: ``python benchmarks/names.py [--model DIR] [--km 40]``.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from geoscope.geo.naming import MAX_REACH_KM, naming_towns
from geoscope.geo.places import nearest_place
from geoscope.geo.sphere import haversine_km
from geoscope.predict import load_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model bundle (default: the bundled default model)")
    parser.add_argument("--km", type=float, default=MAX_REACH_KM, help="how near the named place must be (40)")
    args = parser.parse_args(argv)
    labels = load_model(args.model).labels
    towns = naming_towns()
    by_key = {key: group for key, group in towns.groupby(["name", "country_code"])}
    named = []
    for row in labels.itertuples():
        match = by_key.get((row.place, row.country_code))
        near = haversine_km(row.lat, row.lon, match["lat"].to_numpy(), match["lon"].to_numpy()).min() \
            if match is not None else np.inf
        named.append(near <= args.km)
    _, nearest = nearest_place(labels["lat"], labels["lon"], towns)
    hits = np.asarray(named)
    print(f"labels named after a place of that name within {args.km:g} km, same country: "
          f"{hits.sum()} of {len(labels)} ({hits.mean():.1%})\n")
    print("| label that misses | nearest place of any name |\n|---|---|")
    for row, ok, km in zip(labels.itertuples(), hits, nearest, strict=True):
        if not ok:
            print(f"| {row.name} | {km:.1f} km |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
