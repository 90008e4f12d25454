"""``geoscope features MANIFEST --encoder NAME``: extract and cache image features.

Under torchrun (``torchrun --nproc_per_node N -m geoscope features …``) each process encodes
its share and rank 0 writes the output; ``--shard K/N`` encodes share K of N on its own (other
machines sharing the cache folder take the other shares); ``--ray [ADDRESS]`` encodes on a Ray
cluster and stores the features here (:mod:`geoscope.outputs.ray_jobs`).
"""

from __future__ import annotations

import argparse
import sys

from .options import add_ray_options, add_runtime_option, ray_session

MAX_ERRORS_SHOWN = 10


def _share(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    try:
        share = int(k), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not K/N (such as 0/4): {text!r}") from None
    if not (share[1] >= 1 and 0 <= share[0] < share[1]):
        raise argparse.ArgumentTypeError(f"K/N needs 0 <= K < N, not {text!r}")
    return share


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..distributed import DEVICES

    parser = subparsers.add_parser(
        "features", help="extract image features with a frozen encoder (cached, resumable)",
        description="Encode every image of a manifest; cached by image content, so a rerun "
                    "or an interrupted run only does what is missing. The manifest is read in chunks "
                    "(any number of rows); processes filling one cache share the work.",
    )
    parser.add_argument("manifest", help="CSV or Parquet manifest")
    parser.add_argument("--encoder", default="efficientnet-lite0",
                        help="efficientnet-lite0 (default), efficientnet-lite2, <name>/stats, <name>/trunk-<n>, "
                             "hf:<repo-or-path>, or several joined by + (outputs concatenated)")
    parser.add_argument("--backend", choices=("onnx", "torch"), default="onnx",
                        help="inference engine (default: onnx, through ONNX Runtime)")
    add_runtime_option(parser)
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="cpu, cuda (ONNX Runtime's CUDA provider, or torch's GPU with --backend torch) or auto "
                             "(a GPU when one can be used; default)")
    parser.add_argument("--shard", type=_share, metavar="K/N",
                        help="encode only share K of N (by image content) into the cache and stop: for machines "
                             "sharing one cache folder; a last run without --shard writes -o")
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
    add_ray_options(parser)
    parser.set_defaults(func=run_features)


def run_features(args: argparse.Namespace) -> int:
    from .. import distributed
    from ..encoders.onnx_runtime import onnx_device
    from ..errors import GeoscopeError
    from ..features.manifest import manifest_features
    from ..fileio import check_writable

    if args.batch_size < 1:
        raise GeoscopeError("--batch-size must be at least 1")
    if args.output:
        check_writable(args.output)  # before hours of encoding, not after
    share = args.shard or (0, 1)
    with distributed.session("cpu") as run, ray_session(args) as cluster:  # the group only meets
        if share[1] > 1 and run.distributed:
            raise GeoscopeError("--shard is for separate machines: under torchrun the ranks share the work")
        if cluster is not None and run.distributed:
            raise GeoscopeError("--ray runs its own workers: start it once, not under torchrun")
        device = (onnx_device(args.device, run.local_rank) if args.backend == "onnx"
                  else distributed.resolve_device(args.device, run.local_rank))
        result = manifest_features(
            args.manifest, args.encoder, output=args.output, share=share, batch_size=args.batch_size,
            workers=args.workers, progress=not args.quiet, augment=args.views, combine=args.combine,
            backend=args.backend, device=device, encoding=cluster.encode_missing if cluster is not None else None,
        )
    if not run.main:
        return 0
    rate = f"  ({result.images_per_second:.1f} images/s)" if result.encoded else ""
    if share[1] > 1:
        print(f"{args.manifest}: share {share[0]}/{share[1]}: {result.share_rows:,} of {result.rows:,} rows, "
              f"{args.encoder} ({args.backend} on {device}, views {args.views})")
        print(f"  encoded now  {result.encoded:,}{rate}")
        print(f"  from cache   {result.cached:,}")
        print(f"  {result.seconds:.1f} s; run without --shard once every share is done to write the output")
        return 0
    bad = result.bad
    processes = f", {run.world_size} processes" if run.distributed else ""
    print(f"{args.manifest}: {result.rows:,} images, {result.encoder_name} "
          f"({args.backend} on {device}{processes}, views {result.views})")
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
    if result.output:
        print(f"  written      {result.output}")
    if bad:
        print(f"geoscope: warning: {bad:,} of {result.rows:,} images could not be read "
              f"({_first(result.errors, bad)})", file=sys.stderr)
    return 0


def _first(errors: list[str], total: int, shown: int = 3) -> str:
    """The first few one-line errors, for a summary line."""
    more = f"; … and {total - shown:,} more" if total > shown else ""
    return ("first: " if total > 1 else "") + "; ".join(errors[:shown]) + more
