"""``geoscope evaluate MANIFEST``: metrics beside the centroid and kNN baselines, optional report."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..data.manifest import read_manifest
from ..evaluate import evaluate
from ..geo import THRESHOLDS_KM
from ..predict import load_model
from ..results import CENTROID, KNN, MODEL


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="measure a model on a manifest")
    parser.add_argument("manifest")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model)")
    parser.add_argument("--split", choices=("train", "val", "test"),
                        help="only rows of this split (default: all rows)")
    parser.add_argument("--views", choices=("auto", "fuse", "separate"), default="auto",
                        help="fuse the views of one place (auto: when places have several)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--report", metavar="DIR", help="also write an HTML report into DIR")
    parser.add_argument("--compare", metavar="CSV", help="report: extra figures to compare with")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.manifest)
    if args.split:
        manifest = manifest.split(args.split)
    model = load_model(args.model)
    fuse = {"auto": None, "fuse": True, "separate": False}[args.views]
    result, errors = evaluate(model, manifest, fuse_views=fuse, dataset=str(args.manifest))
    for line in errors:
        print(f"geoscope: skipped {line}", file=sys.stderr)
    if args.json:
        print(json.dumps({"n": len(result.predictions), "metrics": result.metrics,
                          "skipped": len(errors)}, indent=2))
    else:
        print_metrics(result.metrics, len(result.predictions))
    if args.report:
        from ..report import write_report

        index = write_report(result, Path(args.report),
                             comparison_csv=Path(args.compare) if args.compare else None)
        print(f"report: {index}")
    return 0


def print_metrics(metrics: dict, n: int) -> None:
    """The metrics table: model beside the centroid and kNN baselines."""
    columns = (MODEL, CENTROID, KNN)
    rows = [("label accuracy", "label_accuracy", "pct"), ("mean error km", "mean_km", "km"),
            ("median error km", "median_km", "km"), ("GeoScore", "geoscore", "score")]
    rows += [(f"within {t:g} km", f"within:{t:g}", "pct") for t in THRESHOLDS_KM]
    print(f"{n:,} evaluated")
    print(f"  {'':18}" + "".join(f"{c:>12}" for c in columns))
    for title, key, kind in rows:
        cells = []
        for c in columns:
            value = metrics[c]["within_km"][key.split(":")[1]] if key.startswith("within:") \
                else metrics[c].get(key, math.nan)
            cells.append(_format(value, kind))
        print(f"  {title:18}" + "".join(f"{v:>12}" for v in cells))


def _format(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return {"pct": f"{value:.1%}", "km": f"{value:,.1f}", "score": f"{value:,.0f}"}[kind]
