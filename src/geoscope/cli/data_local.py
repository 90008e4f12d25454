"""``geoscope data check | import-folder | import-csv | split``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ..data.importers import import_csv, import_folder, rebase_images
from ..data.manifest import place_ids, read_manifest, summarize, write_manifest
from ..data.provenance import derive_dataset_card, write_dataset_card
from ..data.split import GROUPINGS, leakage_report, split_manifest
from ..errors import GeoscopeError, quote_name
from ..fileio import check_writable

OUTPUT_HELP = "manifest to write (.csv or .parquet)"


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="validate a manifest and summarise it")
    check.add_argument("manifest", help="CSV or Parquet manifest")
    check.add_argument("--json", action="store_true", help="print the summary as JSON")
    check.set_defaults(func=run_check)

    folder = subparsers.add_parser(
        "import-folder", help="build a manifest from your own photos with EXIF GPS"
    )
    folder.add_argument("folder", help="folder searched recursively for photos")
    folder.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    folder.set_defaults(func=run_import_folder)

    table = subparsers.add_parser(
        "import-csv", help="build a manifest from a CSV of images and coordinates"
    )
    table.add_argument("csv", help="CSV with an image path, a latitude and a longitude per row")
    table.add_argument("-o", "--output", required=True, help=OUTPUT_HELP)
    table.add_argument("--image-col",
                       help="column of image paths (default: image/path/file/filename)")
    table.add_argument("--lat-col", help="column of latitudes (default: lat/latitude)")
    table.add_argument("--lon-col", help="column of longitudes (default: lon/lng/long/longitude)")
    table.add_argument("--root",
                       help="folder the CSV's image paths are relative to (default: the CSV's)")
    table.set_defaults(func=run_import_csv)

    split = subparsers.add_parser(
        "split", help="add a spatially disjoint train/val/test split column"
    )
    split.add_argument("manifest", help="CSV or Parquet manifest")
    split.add_argument("--by", choices=GROUPINGS, default="location",
                       help="keep places whole, or whole grid blocks of --block-km "
                       "(default: location)")
    split.add_argument("--block-km", type=float, default=1.0,
                       help="block size in km for --by block (default: 1)")
    split.add_argument("--val", type=float, default=0.1,
                       help="share of images for validation (default: 0.1)")
    split.add_argument("--test", type=float, default=0.1,
                       help="share of images for testing (default: 0.1)")
    split.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    split.add_argument("--gap-km", type=float, default=0.0,
                       help="leave out training images this close to a val/test image (default: 0)")
    split.add_argument("-o", "--output",
                       help="manifest to write (default: rewrite MANIFEST in place)")
    split.add_argument("--json", action="store_true", help="print split sizes and leakage as JSON")
    split.set_defaults(func=run_split)


def run_check(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.manifest)
    summary = summarize(manifest)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    views = ", ".join(
        f"{n:,} with {k} view{'' if k == '1' else 's'}"
        for k, n in summary["views_per_place"].items()
    )
    box = summary["bbox"]
    print(f"{args.manifest}: valid")
    print(f"  images   {summary['images']:,}")
    print(f"  places   {summary['places']:,}  ({views})")
    print(f"  extent   lat {box['min_lat']:.4f} … {box['max_lat']:.4f}, "
          f"lon {box['min_lon']:.4f} … {box['max_lon']:.4f}")
    if "dates" in summary:
        print(f"  dates    {summary['dates']['first']} … {summary['dates']['last']}")
    if "headings" in summary:
        print(f"  headings {', '.join(f'{h:g}°' for h in summary['headings'])}")
    if "splits" in summary:
        print("  splits   " + ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items()))
    return 0


def run_import_folder(args: argparse.Namespace) -> int:
    root = Path(args.folder)
    check_writable(args.output)
    frame, skipped = import_folder(root, output=args.output)
    total = len(frame) + len(skipped)
    if total == 0:
        raise GeoscopeError(f"{root}: no image files found")
    if len(frame) == 0:
        path, reason = skipped[0]
        raise GeoscopeError(f"{quote_name(root)}: none of the {total:,} images has a usable EXIF GPS position "
                            f"(e.g. {quote_name(_shown(path, root))}: {reason})")
    write_manifest(frame, args.output)
    write_dataset_card(args.output, frame, {"kind": "folder", "location": str(root.absolute()),
                                            "images_found": total, "without_gps": len(skipped)},
                       step={"command": ["geoscope", *args.argv]})
    print(f"wrote {args.output}: {len(frame):,} of {total:,} images with GPS, "
          f"{len(skipped):,} left out")
    for path, reason in skipped:
        print(f"  {quote_name(_shown(path, root))}: {reason}")
    return 0


def run_import_csv(args: argparse.Namespace) -> int:
    check_writable(args.output)
    manifest = import_csv(args.csv, image_col=args.image_col, lat_col=args.lat_col,
                          lon_col=args.lon_col, root=args.root, output=args.output)
    write_manifest(manifest, args.output)
    write_dataset_card(args.output, manifest.frame, {
        "kind": "csv", "location": str(Path(args.csv).absolute()),
        "images_root": str(Path(args.root or Path(args.csv).parent).absolute())},
        step={"command": ["geoscope", *args.argv]})
    places = manifest.place_ids.nunique()
    print(f"wrote {args.output}: {len(manifest):,} images at {places:,} places from {args.csv}")
    return 0


def run_split(args: argparse.Namespace) -> int:
    output = Path(args.output) if args.output else Path(args.manifest)
    check_writable(output)
    manifest = read_manifest(args.manifest)
    frame = split_manifest(manifest.frame, args.by, block_km=args.block_km, val=args.val,
                           test=args.test, seed=args.seed, gap_km=args.gap_km)
    written = rebase_images(frame, manifest.root, output.absolute().parent)
    write_manifest(written, output)
    derive_dataset_card(args.manifest, output, written, {
        "step": "split", "command": ["geoscope", *args.argv], "by": args.by,
        "block_km": args.block_km if args.by == "block" else None, "val": args.val, "test": args.test,
        "seed": args.seed, "gap_km": args.gap_km})
    report = leakage_report(frame)
    places = place_ids(frame)
    sizes = {name: {"images": int((frame["split"] == name).sum()),
                    "places": int(places[frame["split"] == name].nunique())}
             for name in ("train", "val", "test")}
    left_out = int(frame["split"].isna().sum())
    if args.json:
        print(json.dumps({"output": str(output), "sizes": sizes, "left_out": left_out,
                          "leakage": report}, indent=2))
        return 0
    unit = f"{args.block_km:g} km blocks" if args.by == "block" else "place"
    print(f"wrote {output}: split by {unit}, seed {args.seed}")
    for name, size in sizes.items():
        share = size["images"] / len(frame)
        print(f"  {name:<5} {size['images']:>7,} images ({share:6.1%})  "
              f"{size['places']:>7,} places")
    if left_out:
        print(f"  left out {left_out:,} training images within {args.gap_km:g} km of val/test")
    print("leakage (distance from each held-out image to its nearest training image):")
    for name in ("test", "val"):
        nearest = report[f"nearest_train_{name}_km"]
        within = report[f"{name}_within_km"]
        print(f"  {name:<5} nearest {_km(nearest)}; {within['0.05']:,} images within 50 m, "
              f"{within['1']:,} within 1 km")
    if report["test_within_km"]["0.05"]:
        fix = ("--by block --block-km 1" if args.by == "location"
               else "--gap-km 0.1" if args.gap_km == 0 else "a larger --gap-km")
        print(f"  hint: test images have training neighbours within 50 m; try {fix}")
    return 0


def _km(value: float) -> str:
    if value != value:  # NaN: split is empty
        return "n/a"
    return f"{value * 1000:.1f} m" if value < 1 else f"{value:,.2f} km"


def _shown(path: Path, root: Path) -> str:
    return os.path.relpath(path, root)
