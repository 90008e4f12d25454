"""``geoscope evaluate MANIFEST``: metrics beside the centroid and kNN baselines, optional report."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ..answer.refine import REFINE_HELP, REFINERS
from ..data.manifest import read_manifest
from ..errors import ManifestError, quote_name
from ..evaluate.results import MODEL
from ..evaluate.scoring import evaluate
from ..fileio import check_writable, finite_json
from ..geo.sphere import THRESHOLDS_KM
from ..loading import load_any_model
from .options import add_runtime_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("evaluate", help="measure a model on a manifest")
    parser.add_argument("manifest")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model), or a CLIP checkpoint "
                        "used zero-shot: hf:<repo> or a local folder")
    parser.add_argument("--region", help="zero-shot only: answer among the places of this region "
                        "(ISO country code, box or .geojson; default: the world)")
    parser.add_argument("--split", choices=("train", "val", "test"),
                        help="only rows of this split (default: all rows)")
    parser.add_argument("--views", choices=("auto", "fuse", "separate"), default="auto",
                        help="fuse the views of one place (auto: when places have several)")
    parser.add_argument("--refine", choices=REFINERS, help=REFINE_HELP)
    parser.add_argument("--include-training-rows", action="store_true",
                        help="also measure rows whose images the model was trained on (left out by default)")
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.add_argument("--report", metavar="DIR", help="also write an HTML report into DIR")
    parser.add_argument("--compare", metavar="CSV", help="report: extra figures to compare with")
    add_runtime_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.report:
        check_writable(args.report, folder=True)
    manifest = read_manifest(args.manifest)
    if args.split:
        present = manifest.split(args.split)
        if len(present) == 0:
            splits = ", ".join(sorted(str(s) for s in manifest.frame["split"].dropna().unique())) or "none"
            raise ManifestError(f"{quote_name(args.manifest)}: no row of the manifest is in split {args.split!r} "
                                f"(splits present: {splits})")
        manifest = present
    model = load_any_model(args.model, args.region)
    fuse = {"auto": None, "fuse": True, "separate": False}[args.views]
    result, errors = evaluate(model, manifest, fuse_views=fuse, dataset=str(args.manifest),
                              include_training_rows=args.include_training_rows, refine=args.refine)
    for line in errors:
        print(f"geoscope: skipped {line}", file=sys.stderr)
    if result.training_rows:
        verb = "measured with the others (--include-training-rows)" if args.include_training_rows else \
            "left out (--include-training-rows keeps them)"
        print(f"geoscope: {result.training_rows:,} rows hold images the model was trained on: {verb}",
              file=sys.stderr)
    p = result.predictions
    if "in_coverage" in p and not args.json:
        print(f"{int((~p['in_coverage']).sum()):,} of {len(p):,} flagged outside what the model knows")
    elif model.coverage is not None and model.coverage.too_few:
        print(f"coverage not tested: this model saw {model.coverage.items} validation images, too few to tell "
              "whether a photo is like its training images")
    if result.metrics[MODEL].get("n_labelled") == 0 and not args.json:
        print(f"labels not comparable: none of the {len(p):,} rows lies in one of this model's labels "
              "(distances still are)")
    if args.json:
        coverage = float(result.predictions["in_coverage"].mean()) if "in_coverage" in result.predictions else None
        print(json.dumps(finite_json({"n": len(result.predictions), "metrics": result.metrics,
                                  "skipped": len(errors), "training_rows": result.training_rows,
                                  "in_coverage": coverage}), indent=2, allow_nan=False))
    else:
        print_metrics(result.metrics, len(result.predictions))
    if args.report:
        from ..report import write_report

        index = write_report(result, Path(args.report),
                             comparison_csv=Path(args.compare) if args.compare else None)
        print(f"report: {index}")
    return 0


def print_metrics(metrics: dict, n: int) -> None:
    """The metrics table: model beside the centroid and kNN baselines (those it has), saying on how many items
    each figure is."""
    columns = [MODEL, *(c for c in metrics if c != MODEL)]
    labelled = metrics[MODEL].get("n_labelled", n)
    accuracy = "label accuracy" if labelled == n else f"label accuracy ({labelled:,} of {n:,} labelled)"
    rows = [(accuracy, "label_accuracy", "pct"), ("mean error km", "mean_km", "km"),
            ("median error km", "median_km", "km"), ("GeoScore", "geoscore", "score")]
    rows += [(f"within {t:g} km", f"within:{t:g}", "pct") for t in THRESHOLDS_KM]
    print(f"{n:,} evaluated")
    width = max(18, *(len(title) for title, _, _ in rows))
    print(f"  {'':{width}}" + "".join(f"{c:>15}" for c in columns))
    for title, key, kind in rows:
        cells = []
        for c in columns:
            value = metrics[c]["within_km"][key.split(":")[1]] if key.startswith("within:") \
                else metrics[c].get(key, math.nan)
            cells.append(_format(value, kind))
        print(f"  {title:{width}}" + "".join(f"{v:>15}" for v in cells))


def _format(value: float, kind: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return {"pct": f"{value:.1%}", "km": f"{value:,.1f}", "score": f"{value:,.0f}"}[kind]
