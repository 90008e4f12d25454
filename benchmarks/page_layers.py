"""What the page's investigator layers cost: the map's first-level borders and places, and "where in the photo".

1. For each of the default model's countries (GB, CA, US, HR), in a fresh process' order: the approximate
   first-level borders (:func:`geoscope.geo.first_level.first_level`: Voronoi cells of GeoNames towns
   dissolved by region and clipped to the country), then the whole layer the page reads (borders simplified,
   region names, larger places), and its size gzipped. The first country also pays for reading the towns
   table, the country outlines and the gazetteer, as the server's first request does.
2. The service answering a photo with and without ``explain=true`` (its occlusion map), interleaved on the
   repository's example photos, in one process: the seconds per photo each way and the overlay's extra.

Run: ``python benchmarks/page_layers.py [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import gzip
import time
from pathlib import Path

import numpy as np

from geoscope.geo.first_level import first_level
from geoscope.predict import load_model
from geoscope.serve import create_app
from geoscope.serve.page import countries_geojson, country_layer, model_countries, regions_geojson

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "images"
PLACE = '"kind":"place"'


def layers() -> None:
    model = load_model()
    countries = model_countries(model)
    start = time.perf_counter()
    countries_geojson()  # the base map the server makes at start: the outlines are read by then
    print(f"country outlines (read at the server's start): {time.perf_counter() - start:.2f} s\n")
    print(f"{'country':<8} {'regions':>7} {'towns':>6} {'borders s':>9} {'layer s':>8} {'places':>6} {'gzip kB':>8}")
    total_borders = total_layer = 0.0
    for code in ("GB", "CA", "US", "HR"):
        start = time.perf_counter()
        regions = first_level(code)
        borders = time.perf_counter() - start
        start = time.perf_counter()
        layer = country_layer(code)
        made = time.perf_counter() - start
        total_borders, total_layer = total_borders + borders, total_layer + made
        places = layer.count(PLACE)
        print(f"{code:<8} {len(regions.names):>7} {regions.towns:>6} {borders:>9.2f} {made:>8.2f} "
              f"{places:>6} {len(gzip.compress(layer.encode())) / 1000:>8.1f}")
    body = regions_geojson(countries)
    print(f"{'all':<8} {'':>7} {'':>6} {total_borders:>9.2f} {total_layer:>8.2f} {'':>6} {len(body) / 1000:>8.1f}")
    print("(layer s: the rest of the layer after the borders: simplification, names, places; made once per process)\n")


def overlay(rounds: int) -> None:
    from fastapi.testclient import TestClient

    photos = sorted(EXAMPLES.glob("*.jpg"))
    seconds: dict[bool, list[float]] = {False: [], True: []}
    with TestClient(create_app()) as client:
        client.post("/predict", content=photos[0].read_bytes())  # warm
        for _ in range(rounds):
            for photo in photos:
                for explain in (False, True):  # interleaved: the machine's load falls on both alike
                    start = time.perf_counter()
                    reply = client.post(f"/predict?explain={str(explain).lower()}", content=photo.read_bytes())
                    seconds[explain].append(time.perf_counter() - start)
                    assert reply.status_code == 200 and ("explanation" in reply.json()) == explain
    plain, explained = (float(np.median(seconds[k])) for k in (False, True))
    print(f"{'reply':<22} {'photos':>6} {'median s':>9}")
    print(f"{'answer':<22} {len(seconds[False]):>6} {plain:>9.3f}")
    print(f"{'answer + explanation':<22} {len(seconds[True]):>6} {explained:>9.3f}")
    print(f"{'overlay extra':<22} {'':>6} {explained - plain:>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="passes over the example photos (default 3)")
    args = parser.parse_args()
    layers()
    overlay(args.rounds)


if __name__ == "__main__":
    main()
