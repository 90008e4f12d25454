"""``geoscope predict IMAGE_OR_FOLDER ...``: ranked guesses of where each photo was taken.

Prints a readable table (or strict JSON with ``--json``), or with ``-o out.csv|out.geojson|out.jsonl``
writes a file chunk by chunk that a rerun of the same command continues without duplicates.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from ..answer.refine import REFINE_HELP, REFINERS
from ..errors import GeoscopeError, one_line, quote_name
from ..outputs.batch import CHUNK_SIZE, find_inputs, pending_units, predict_chunks
from .options import add_ray_options, add_runtime_option, at_least_one, ray_session

if TYPE_CHECKING:
    from ..outputs.ray_jobs import RayCluster

MAX_ERROR_LINES = 20


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict", help="guess where photos were taken",
        description="Guess where photos were taken. Folders are searched recursively for images; a manifest "
                    "(.csv, .parquet) named alone is read a chunk at a time, whatever its size.")
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model), or a CLIP checkpoint "
                        "used zero-shot: hf:<repo> or a local folder")
    parser.add_argument("--region", help="zero-shot only: answer among the places of this region "
                        "(ISO country code, box or .geojson; default: the world)")
    parser.add_argument("--top-k", type=at_least_one, default=5, help="guesses per image (5)")
    parser.add_argument("--views", action="store_true",
                        help="views of one place: the files named are one place, and so is each folder of images")
    parser.add_argument("--refine", choices=REFINERS, help=REFINE_HELP)
    parser.add_argument("--level", choices=("country", "region", "place"),
                        help="answer at this level of the place hierarchy (models that have one)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one strict JSON list instead of the table")
    out.add_argument("-o", "--output", metavar="FILE",
                     help="write FILE.csv, FILE.geojson or FILE.jsonl incrementally; rerun to continue")
    parser.add_argument("--allow-missing-views", action="store_true",
                        help="with --views, answer a place from the views that could be read (and say so)")
    parser.add_argument("--chunk-size", type=at_least_one, default=CHUNK_SIZE,
                        help=f"images answered (and written) together ({CHUNK_SIZE})")
    parser.add_argument("--limit", type=at_least_one,
                        help="answer at most this many images (places with --views) not yet in the output, then stop")
    parser.add_argument("--evidence", type=at_least_one, metavar="K",
                        help="also list the K training places whose photos are most like each photo")
    parser.add_argument("--explain", metavar="DIR",
                        help="also draw where in each photo the answer comes from (an occlusion map, 65 encoder runs "
                             "per photo) as DIR/<name>.explain.png")
    add_runtime_option(parser)
    add_ray_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..fileio import check_writable, sole_writer

    if args.explain is not None:
        if args.views:
            raise GeoscopeError("--explain draws single photos: leave out --views")
        check_writable(args.explain, folder=True)
    with ray_session(args) as cluster:  # Ray (--ray) joined by the first chunk that needs it
        if not args.output:
            return _run(args, cluster)
        check_writable(args.output)
        with sole_writer(args.output):
            return _run(args, cluster)


def _run(args: argparse.Namespace, cluster: RayCluster | None) -> int:
    from tqdm import tqdm

    from ..loading import load_any_model
    from ..outputs.formats import checked_record, open_predictions_file, render_table, strict_json

    inputs = find_inputs(args.images, views=args.views)
    if inputs.skipped:
        print(f"geoscope: skipped {inputs.skipped} non-image file{'s' * (inputs.skipped != 1)} "
              "(by the name's suffix)", file=sys.stderr)
    for line in inputs.unreadable:
        print(f"geoscope: skipped {line}", file=sys.stderr)
    if not inputs.units:
        raise GeoscopeError(f"no images found in {', '.join(quote_name(a) for a in args.images)}")
    sink = open_predictions_file(args.output, top_k=args.top_k) if args.output else None
    pending = pending_units(inputs.units, sink.holds if sink is not None else None, args.limit)  # a manifest streams
    if sink is not None and pending.held:
        print(f"geoscope: {pending.held} already in {quote_name(sink.path)}; {pending.to_go} to go", file=sys.stderr)
    complete, units = pending.complete, pending.units
    model = load_any_model(args.model, args.region) if pending.count else None
    _reconfigure_stdout()

    failed: list[str] = []
    explained = 0
    total = pending.images
    bar = tqdm(total=total, unit="img", desc="predicting", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None if total > args.chunk_size else True)
    first, finished = True, False
    if args.json:
        print("[", end="")
    try:
        options = {"top_k": args.top_k, "views": args.views, "chunk_size": args.chunk_size, "level": args.level,
                   "refine": args.refine, "evidence": args.evidence,
                   "allow_missing_views": args.allow_missing_views or None}
        chunks = (cluster.predict_chunks(model, units, **options) if cluster is not None
                  else predict_chunks(model, units, **options))
        for chunk, records in chunks if pending.count else ():
            records = [checked_record(r) for r in records]
            if sink is not None:
                sink.write(records)
            elif args.json:
                for record in records:
                    text = textwrap.indent(strict_json(record, indent=2, ascii_only=True), "  ")
                    bar.write(("\n" if first else ",\n") + text, file=sys.stdout, end="")
                    first = False
            else:
                for record in records:
                    bar.write(("" if first else "\n") + render_table(record), file=sys.stdout)
                    first = False
            failed += [str(r["error"]) for r in records if r.get("error")]
            if args.explain is not None:
                explained += _explain(model, records, Path(args.explain))
            bar.update(sum(len(u.paths) for u in chunk))
        finished = True
    finally:
        bar.close()
        if args.json:  # closed even when a later chunk fails: what was answered stays strict JSON
            print("\n]" if not first else "]")
        if sink is not None:
            sink.close(complete=complete and finished)
    for error in failed[:MAX_ERROR_LINES]:
        print(f"geoscope: error: {one_line(error)}", file=sys.stderr)
    if len(failed) > MAX_ERROR_LINES:
        where = f" (each is in {quote_name(sink.path)})" if sink is not None else ""
        print(f"geoscope: error: {len(failed) - MAX_ERROR_LINES} more could not be answered{where}", file=sys.stderr)
    if sink is not None:
        print(f"geoscope: {quote_name(sink.path)}: {len(sink)} in the file, {pending.count} added"
              + (f" ({len(failed)} could not be answered)" if failed else "")
              + ("" if complete else "; rerun the same command to continue"), file=sys.stderr)
    if explained:
        print(f"geoscope: {explained} occlusion map{'s' * (explained != 1)} in {quote_name(args.explain)}",
              file=sys.stderr)
    return 2 if failed else 0


def _explain(model, records: list[dict], folder: Path) -> int:
    """The occlusion map of each answered record, drawn into ``folder``; how many were drawn."""
    import hashlib

    from ..investigate.explain import draw, explain

    answered = [r for r in records if not r.get("error")]
    for record, found in zip(answered, explain(model, [r["image"] for r in answered]), strict=True):
        if isinstance(found, Exception):
            continue
        tag = hashlib.sha1(os.fsencode(record["image"])).hexdigest()[:6]  # two photos of one name stay apart
        draw(found, folder / f"{Path(record['image']).stem}-{tag}.explain.png", record["answer"]["name"])
    return len(answered)


def _reconfigure_stdout() -> None:
    """Place names a terminal cannot show are replaced, never a traceback."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors="replace")
