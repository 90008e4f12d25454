"""Respell the first-level region names of a model bundle in their own spelling (one-off, names only).

Bundles written before :func:`geoscope.geo.places.own_spelling` name regions as GeoNames' ASCII tables
do ("Sisacko-Moslavacka", "Virovitick-Podravska"). Names only affect what a person reads (the model
stores its place embeddings), so this rewrites the ``region`` and ``name`` columns of ``labels.csv``
and the region of each point in ``config.json``'s ``refiner.places``, and nothing else: every other
cell and key is written back as it was read (run ``git diff --stat`` after it).

Run: ``python scripts/respell_regions.py src/geoscope/assets/default-model``
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from geoscope.geo.places import own_spelling
from geoscope.geo.regions import country_names


def respell_name(name: str, code: str, country: str) -> str:
    """``Kutina, Sisacko-Moslavacka, Croatia`` → ``Kutina, Sisačko-moslavačka, Croatia`` (a name of three or
    more parts ending in its country: the part before the country is the region)."""
    parts = name.split(", ")
    if len(parts) >= 3 and parts[-1] == country:
        parts[-2] = own_spelling(code, parts[-2])
    return ", ".join(parts)


def respell_labels(path: Path) -> tuple[str, dict[str, str], int]:
    """``labels.csv`` with its regions respelled, each country name's code, and how many rows changed."""
    text = path.read_text(encoding="utf-8")
    newline = "\r\n" if "\r\n" in text else "\n"
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header, body = rows[0], rows[1:]
    name, region, country, code = (header.index(c) for c in ("name", "region", "country", "country_code"))
    codes, changed = {}, 0
    for row in body:
        codes[row[country]] = row[code]
        before = list(row)
        if row[region]:
            row[region] = own_spelling(row[code], row[region])
        row[name] = respell_name(row[name], row[code], row[country])
        changed += row != before
    out = io.StringIO()
    csv.writer(out, lineterminator=newline).writerows([header, *body])
    return out.getvalue(), codes, changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    args = parser.parse_args()
    labels_path, config_path = args.bundle / "labels.csv", args.bundle / "config.json"
    labels, codes, changed = respell_labels(labels_path)
    labels_path.write_text(labels, encoding="utf-8")
    print(f"{labels_path}: {changed} rows respelled")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    places = (config.get("refiner") or {}).get("places")
    if places:
        codes = {**{name: code for code, name in country_names().items()}, **codes}
        moved = 0
        for point in places:
            if len(point) == 3 and point[1] and point[2] in codes:
                spelled = own_spelling(codes[point[2]], point[1])
                moved += spelled != point[1]
                point[1] = spelled
        config_path.write_text(json.dumps(config, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        print(f"{config_path}: {moved} of {len(places)} refiner points respelled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
