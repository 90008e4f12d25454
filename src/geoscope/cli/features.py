"""``geoscope features MANIFEST --encoder NAME``: extract and cache image features."""

from __future__ import annotations

import argparse
import sys

MAX_ERRORS_SHOWN = 10


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "features", help="extract image features with a frozen encoder (cached, resumable)",
        description="Encode every image of a manifest; cached by image content, so a rerun "
                    "or an interrupted run only does what is missing.",
    )
    parser.add_argument("manifest", help="CSV or Parquet manifest")
    parser.add_argument("--encoder", default="efficientnet-lite0",
                        help="efficientnet-lite0 (default), efficientnet-lite2, <name>/stats, <name>/trunk-<n>, "
                             "hf:<repo-or-path>")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                        help="inference engine (default: onnx, through ONNX Runtime)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="images per batch (64)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="decoding threads (default: one per core)")
    parser.add_argument("--views", default="plain", metavar="SPEC",
                        help="plain (default), hflip, grid (left/centre/right crops), cropsN; join with +")
    parser.add_argument("--combine", choices=("mean", "stack"), default="mean",
                        help="average the views of an image (default) or keep each")
    parser.add_argument("-o", "--output", metavar="OUT.npz",
                        help="also write embeddings, valid flags and image paths to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from ..errors import GeoscopeError, quote_name
    from ..features import extract_features
    from ..fileio import check_writable

    if args.batch_size < 1:
        raise GeoscopeError("--batch-size must be at least 1")
    if args.output:
        check_writable(args.output)  # before hours of encoding, not after
    result = extract_features(
        args.manifest, args.encoder, batch_size=args.batch_size, workers=args.workers,
        progress=not args.quiet, augment=args.views, combine=args.combine, backend=args.backend,
    )
    bad = len(result.errors)
    if bad and bad == len(result):
        raise GeoscopeError(f"{quote_name(args.manifest)}: no image could be read ({bad:,} of {bad:,} failed; "
                            f"{_first(result.errors)})")
    print(f"{args.manifest}: {len(result):,} images, {result.encoder_name} "
          f"({args.backend}, views {result.views})")
    rate = f"  ({result.images_per_second:.1f} images/s)" if result.encoded else ""
    print(f"  encoded now  {result.encoded:,}{rate}")
    print(f"  from cache   {result.cached:,}")
    if result.duplicates:
        print(f"  duplicates   {result.duplicates:,} (byte-identical files, features shared)")
    print(f"  bad images   {bad:,}")
    for line in result.errors[:MAX_ERRORS_SHOWN]:
        print(f"    {line}")
    if bad > MAX_ERRORS_SHOWN:
        print(f"    … and {bad - MAX_ERRORS_SHOWN:,} more")
    shape = "×".join(map(str, result.output_shape))
    print(f"  features     {shape} per image, {result.seconds:.1f} s in all")
    if args.output:
        path = result.save(args.output)
        print(f"  written      {path}")
    if bad:
        print(f"geoscope: warning: {bad:,} of {len(result):,} images could not be read ({_first(result.errors)})",
              file=sys.stderr)
    return 0


def _first(errors: list[str], shown: int = 3) -> str:
    """The first few one-line errors, for a summary line."""
    more = f"; … and {len(errors) - shown:,} more" if len(errors) > shown else ""
    return ("first: " if len(errors) > 1 else "") + "; ".join(errors[:shown]) + more
