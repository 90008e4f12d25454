"""``geoscope verify PHOTO --at LAT,LON [--km 25]``: does the photo support the claim that it was taken there?

Prints the verdict (consistent, inconsistent or cannot tell), why, the likelihood ratio and the calibrated
probability that the photo was taken within ``--km`` of the point, for each photo (or, with ``--views``, for
the photos as views of one place); ``--json`` prints strict JSON instead.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import GeoscopeError, one_line, quote_name


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check a claim of where a photo was taken",
        description="Check the claim that photos were taken within --km of a point: how strongly each photo "
                    "supports it (a likelihood ratio against the model's prior), the calibrated probability that "
                    "it was taken there, and a verdict: consistent, inconsistent or cannot tell.")
    parser.add_argument("images", nargs="+", metavar="PHOTO")
    parser.add_argument("--at", metavar="LAT,LON", help="the claimed point, in decimal degrees (51.5072,-0.1276)")
    parser.add_argument("--km", default="25", help="the claim: within this many km of the point (25)")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model)")
    parser.add_argument("--views", action="store_true", help="the photos are views of one place: one verdict")
    parser.add_argument("--allow-missing-views", action="store_true",
                        help="with --views, judge from the views that could be read (and say so)")
    parser.add_argument("--json", action="store_true", help="print one strict JSON list instead of the text")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..answer.verify import check_claim, parse_point
    from ..loading import load_any_model
    from ..outputs.formats import render_verdict, strict_json

    if args.at is None:
        raise GeoscopeError("--at LAT,LON is required: the point the photo is said to be taken at")
    lat, lon = parse_point(args.at)
    try:
        km = float(args.km)
    except ValueError:
        raise GeoscopeError(f"--km takes a number of kilometres, such as 25 (got {args.km!r})") from None
    claim = check_claim(lat, lon, km)
    for image in args.images:
        if os.path.isdir(image):
            raise GeoscopeError(f"{quote_name(image)}: verify takes photos, not folders")
    model = load_any_model(args.model)
    model.claim_check  # noqa: B018 (a model that cannot check claims is refused before any photo is read)
    verdicts = model.verify(args.images, claim.lat, claim.lon, claim.km, views=args.views,
                            allow_missing_views=args.allow_missing_views)
    records = [v.to_dict() for v in verdicts]
    if args.json:
        print(strict_json(records, indent=2, ascii_only=True))
    else:
        reconfigure = getattr(sys.stdout, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
        print("\n\n".join(render_verdict(r) for r in records))
    failed = [str(r["error"]) for r in records if r.get("error")]
    for error in failed:
        print(f"geoscope: error: {one_line(error)}", file=sys.stderr)
    return 2 if failed else 0
