"""``geoscope data check | import-folder | import-csv | split``."""

from __future__ import annotations

import argparse
import json

from ..data.manifest import read_manifest, summarize


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="validate a manifest and summarise it")
    check.add_argument("manifest", help="CSV or Parquet manifest")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=run_check)


def run_check(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.manifest)
    summary = summarize(manifest)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    views = ", ".join(
        f"{n:,} with {k} view{'' if k == '1' else 's'}" for k, n in summary["views_per_place"].items()
    )
    box = summary["bbox"]
    print(f"{args.manifest}: valid")
    print(f"  images   {summary['images']:,}")
    print(f"  places   {summary['places']:,}  ({views})")
    print(f"  extent   lat {box['min_lat']:.4f} … {box['max_lat']:.4f}, lon {box['min_lon']:.4f} … {box['max_lon']:.4f}")
    if "dates" in summary:
        print(f"  dates    {summary['dates']['first']} … {summary['dates']['last']}")
    if "headings" in summary:
        print(f"  headings {', '.join(f'{h:g}°' for h in summary['headings'])}")
    if "splits" in summary:
        print("  splits   " + ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items()))
    return 0
