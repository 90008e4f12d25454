"""``geoscope labels geocells|grid|cities|h3|column MANIFEST``: write place labels and the label table."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..data.importers import rebase_images
from ..data.manifest import read_manifest, write_manifest
from ..data.provenance import derive_dataset_card
from ..errors import GeoscopeError
from ..fileio import atomic_write_bytes, check_writable
from ..geo.labels import KINDS, LabelScheme, make_labels


def add_scheme_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define a label scheme (shared by ``labels`` and ``train``)."""
    parser.add_argument("--cell-km", type=float, default=25.0, help="grid: cell size in km (25)")
    parser.add_argument("--top", type=int, default=150, help="cities: the N most populous (150)")
    parser.add_argument("--radius-km", type=float, default=None,
                        help="cities: drop images farther than this from every city")
    parser.add_argument("--no-merge-suburbs", dest="merge_suburbs", action="store_false",
                        help="cities: keep suburbs as labels of their own")
    parser.add_argument("--column", help="column: the manifest column that holds the labels")
    parser.add_argument("--min-images", type=int, default=30,
                        help="geocells: a region with fewer training images joins its nearest neighbour (30)")
    parser.add_argument("--max-images", type=int, default=400,
                        help="geocells: a region with more is cut into compact parts (400)")
    parser.add_argument("--h3-res", type=int, default=4, help="h3: hexagon resolution, 0 coarse … 15 fine (4)")


def scheme_from_args(kind: str, args: argparse.Namespace) -> LabelScheme:
    """The label scheme the options describe, refused in one line when a size or count is impossible."""
    _positive("--cell-km", args.cell_km)
    if args.radius_km is not None:
        _positive("--radius-km", args.radius_km)
    if args.top < 1:
        raise GeoscopeError(f"--top must be at least 1 (got {args.top})")
    if kind == "grid":
        return LabelScheme("grid", {"cell_km": args.cell_km})
    if kind == "geocells":
        if not 1 <= args.min_images <= args.max_images:
            raise GeoscopeError(f"geocells need 1 ≤ --min-images ≤ --max-images "
                                f"(got {args.min_images}, {args.max_images})")
        return LabelScheme("geocells", {"min_images": args.min_images, "max_images": args.max_images})
    if kind == "h3":
        if not 0 <= args.h3_res <= 15:
            raise GeoscopeError(f"--h3-res must be 0 to 15 (got {args.h3_res})")
        return LabelScheme("h3", {"h3_res": args.h3_res})
    if kind == "cities":
        return LabelScheme("cities", {"top": args.top, "radius_km": args.radius_km,
                                      "merge_suburbs": args.merge_suburbs})
    return LabelScheme("column", {"column": args.column or "label"})


def _positive(flag: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise GeoscopeError(f"{flag} must be a positive number of km (got {value:g})")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("labels",
                                   help="label a manifest's images with places (geocells, grid, cities, h3, a column)")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("manifest")
    add_scheme_arguments(parser)
    parser.add_argument("-o", "--output", help="labelled manifest (default: rewrite MANIFEST)")
    parser.add_argument("--table", help="label table CSV (default: <manifest>.labels.csv)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    scheme = scheme_from_args(args.kind, args)
    if scheme.kind == "column" and scheme.params["column"] == "label":
        raise GeoscopeError("labels column: the label ids are written to the 'label' column, so the place names "
                            "must come from another one: name it with --column")
    out = Path(args.output or args.manifest)
    table_path = Path(args.table or out.with_suffix(".labels.csv"))
    check_writable(out)
    check_writable(table_path)
    manifest = read_manifest(args.manifest)
    ids, table = make_labels(manifest.frame, scheme)
    frame = manifest.frame.copy()
    frame["label"] = ids
    frame["label_name"] = [table["name"].iloc[i] if i >= 0 else "" for i in ids]
    frame = rebase_images(frame, manifest.root, out.absolute().parent)  # relative to the new manifest, normalised
    write_manifest(frame, out)
    atomic_write_bytes(table_path, table.to_csv(index=False).encode())
    derive_dataset_card(args.manifest, out, frame, {
        "step": f"labels {args.kind}", "labels": scheme.to_dict(), "label_table": str(table_path),
        "labelled": int((ids >= 0).sum()), "places": len(table)})
    print(f"{len(table)} {args.kind} labels over {int((ids >= 0).sum()):,} of {len(ids):,} images")
    print(f"wrote {out} and {table_path}")
    return 0
