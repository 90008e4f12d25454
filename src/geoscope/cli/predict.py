"""``geoscope predict IMAGE [IMAGE ...]``: ranked guesses of where each photo was taken."""

from __future__ import annotations

import argparse
import json
import sys

from ..predict import Prediction, load_model


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("predict", help="guess where photos were taken")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.add_argument("--model", help="model bundle directory (default: the bundled model)")
    parser.add_argument("--top-k", type=int, default=5, help="guesses per image (5)")
    parser.add_argument("--views", action="store_true",
                        help="the images are views of one place: fuse them into one answer")
    parser.add_argument("--json", action="store_true", help="print one JSON list")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    predictions = model.predict(args.images, top_k=args.top_k, views=args.views)
    if args.json:
        print(json.dumps([p.to_dict() for p in predictions], indent=2))
    else:
        for p in predictions:
            print_table(p)
    failed = [p for p in predictions if p.error]
    for p in failed:
        print(f"geoscope: error: {p.error}", file=sys.stderr)
    return 2 if failed else 0


def print_table(prediction: Prediction) -> None:
    """A readable block of guesses for one image."""
    title = prediction.image if not prediction.views else f"{len(prediction.views)} views: {prediction.image} …"
    print(title)
    if prediction.error:
        print(f"  (not answered: {prediction.error})")
        return
    print(f"  {'#':>2}  {'place':<28} {'lat':>10} {'lon':>11}  probability")
    for rank, g in enumerate(prediction.guesses, 1):
        print(f"  {rank:>2}  {g.label[:28]:<28} {g.lat:>10.4f} {g.lon:>11.4f}  {g.probability:>10.1%}")
