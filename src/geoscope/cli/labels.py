"""``geoscope labels grid|cities|column MANIFEST``: write place labels and the label table."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.manifest import read_manifest, write_manifest
from ..fileio import atomic_write_bytes
from ..labels import LabelScheme, make_labels


def add_scheme_arguments(parser: argparse.ArgumentParser) -> None:
    """The options that define a label scheme (shared by ``labels`` and ``train``)."""
    parser.add_argument("--cell-km", type=float, default=25.0, help="grid: cell size in km (25)")
    parser.add_argument("--top", type=int, default=150, help="cities: the N most populous (150)")
    parser.add_argument("--radius-km", type=float, default=None,
                        help="cities: drop images farther than this from every city")
    parser.add_argument("--no-merge-suburbs", dest="merge_suburbs", action="store_false",
                        help="cities: keep suburbs as labels of their own")
    parser.add_argument("--column", help="column: the manifest column that holds the labels")


def scheme_from_args(kind: str, args: argparse.Namespace) -> LabelScheme:
    if kind == "grid":
        return LabelScheme("grid", {"cell_km": args.cell_km})
    if kind == "cities":
        return LabelScheme("cities", {"top": args.top, "radius_km": args.radius_km,
                                      "merge_suburbs": args.merge_suburbs})
    return LabelScheme("column", {"column": args.column or "label"})


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("labels", help="label a manifest's images with places (grid or cities)")
    parser.add_argument("kind", choices=("grid", "cities", "column"))
    parser.add_argument("manifest")
    add_scheme_arguments(parser)
    parser.add_argument("-o", "--output", help="labelled manifest (default: rewrite MANIFEST)")
    parser.add_argument("--table", help="label table CSV (default: <manifest>.labels.csv)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    manifest = read_manifest(args.manifest)
    ids, table = make_labels(manifest.frame, scheme_from_args(args.kind, args))
    frame = manifest.frame.copy()
    frame["label"] = ids
    frame["label_name"] = [table["name"].iloc[i] if i >= 0 else "" for i in ids]
    out = Path(args.output or args.manifest)
    if args.output:
        frame["image"] = [str(p) for p in manifest.image_paths]
    write_manifest(frame, out)
    table_path = Path(args.table or out.with_suffix(".labels.csv"))
    atomic_write_bytes(table_path, table.to_csv(index=False).encode())
    print(f"{len(table)} {args.kind} labels over {int((ids >= 0).sum()):,} of {len(ids):,} images")
    print(f"wrote {out} and {table_path}")
    return 0
