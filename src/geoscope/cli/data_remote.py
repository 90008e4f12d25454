"""``geoscope data plan grid|cities`` and ``geoscope data fetch``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..errors import GeoscopeError
from ..fileio import check_writable
from ..geo.places import SUBURB_SCALE_KM

if TYPE_CHECKING:
    from ..data.plan import Plan

DEFAULT_REGION = "GB"


def register(subparsers: argparse._SubParsersAction) -> None:
    from ..data.plan import MIN_LAND_FRACTION, SEED_CITIES, SEED_GRID

    plan = subparsers.add_parser("plan", help="sample the points of a dataset to fetch (offline): on a grid, "
                                 "around cities, or where a model is weakest (--from-model)")
    plan.add_argument("--from-model", metavar="DIR",
                      help="plan where this model bundle is weakest: validation error by label, thin training "
                           "data, no label near (docs/data.md, 'Where to collect next')")
    plan.add_argument("--budget", type=int, metavar="N", help="with --from-model: how many points to plan")
    plan.add_argument("--weighing", default="error", metavar="HOW",
                      help="with --from-model: error (default: land share × expected km), thin (thin data and "
                           "distance to the labels alone) or places (where training photos were taken × expected km)")
    plan.add_argument("--cell-km", type=float, default=None,
                      help="with --from-model: cell size in km (default: the median spacing of the model's labels)")
    plan.add_argument("--region", default=None,
                      help="with --from-model: plan inside this region instead of the model's training area "
                           "(ISO code, box or .geojson)")
    plan.add_argument("--seed", type=int, default=0, help="random seed (default %(default)d)")
    plan.add_argument("-o", "--out", help="output folder")
    plan.set_defaults(func=run_plan_model)
    kinds = plan.add_subparsers(dest="plan_kind", metavar="KIND")

    grid = kinds.add_parser("grid", help="random land points in every cell of a regular grid")
    _region_args(grid)
    grid.add_argument("--cell-km", type=float, default=SEED_GRID["cell_km"],
                      help="cell size in km (default %(default)g, the seed's UK grid)")
    grid.add_argument("--per-cell", type=int, default=SEED_GRID["per_cell"],
                      help="points per cell (default %(default)d)")
    grid.add_argument("--min-land", type=float, default=MIN_LAND_FRACTION, metavar="FRACTION",
                      help="leave out cells whose land is less than this share of their area "
                           "(default %(default)g; 0 keeps every cell that touches land)")
    grid.set_defaults(func=run_plan_grid)

    cities = kinds.add_parser("cities", help="random land points around the most populous places")
    _region_args(cities)
    cities.add_argument("--top", type=int, default=SEED_CITIES["top"],
                        help="how many places, largest first (default %(default)d)")
    cities.add_argument("--radius-km", type=float, default=SEED_CITIES["radius_km"],
                        help="sample within this distance of each centre (default %(default)g)")
    cities.add_argument("--per-city", type=int, default=SEED_CITIES["per_city"],
                        help="points per place (default %(default)d)")
    cities.add_argument("--merge-suburbs", action="store_true",
                        help="label suburbs and satellite towns with their city "
                             f"(reach {SUBURB_SCALE_KM:g} km × (population/100k)^⅓)")
    cities.add_argument("--min-population", type=int, default=15000,
                        help="smallest place considered (default %(default)d)")
    cities.set_defaults(func=run_plan_cities)

    fetch = subparsers.add_parser("fetch", help="download a plan's images and write a manifest (resumable)")
    fetch.add_argument("plan", help="plan folder (or its points.csv, or any CSV with lat, lon)")
    fetch.add_argument("--source", required=True, choices=("streetview", "mapillary"),
                       help="streetview (key in GOOGLE_MAPS_API_KEY) or mapillary "
                            "(token in MAPILLARY_ACCESS_TOKEN)")
    fetch.add_argument("--headings", default="0,90,180",
                       help="camera headings in degrees (default %(default)s); 'any' for one "
                            "image per place (Mapillary)")
    fetch.add_argument("-o", "--out", required=True, help="output folder (rerun the same to resume)")
    fetch.add_argument("--max-requests", type=int, default=None, metavar="N",
                       help="send at most N requests in this run, then stop cleanly")
    fetch.add_argument("--workers", type=int, default=8, help="requests in flight (default %(default)d)")
    fetch.add_argument("--retries", type=int, default=5,
                       help="retries of a 429/5xx/network failure (default %(default)d)")
    fetch.add_argument("--backoff", type=float, default=1.0, metavar="SECONDS",
                       help="first retry wait, doubled each time (default %(default)g)")
    fetch.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="per-request timeout (default %(default)g)")
    fetch.add_argument("--radius-m", type=float, default=50.0,
                       help="search radius around each point in metres (default %(default)g)")
    fetch.add_argument("--size", default="640x640", help="Street View image size (default %(default)s)")
    fetch.add_argument("--fov", type=float, default=90.0, help="Street View field of view (default %(default)g)")
    fetch.add_argument("--pitch", type=float, default=0.0, help="Street View pitch (default %(default)g)")
    fetch.add_argument("--any-source", action="store_true",
                       help="Street View: allow indoor panoramas too (default: outdoor only)")
    fetch.add_argument("--base-url", default=None,
                       help="API base URL (default: the public one, or GEOSCOPE_STREETVIEW_URL / "
                            "GEOSCOPE_MAPILLARY_URL)")
    fetch.add_argument("--no-progress", action="store_true", help="no progress bar")
    fetch.set_defaults(func=run_fetch)


def _region_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--region", default=DEFAULT_REGION,
                        help="ISO country code (GB, GBR), box 'min_lat,min_lon,max_lat,max_lon' "
                             "or a .geojson file (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default %(default)d)")
    parser.add_argument("-o", "--out", required=True, help="output folder")


def run_plan_grid(args: argparse.Namespace) -> int:
    from ..data.plan import grid_plan

    if not 0 <= args.min_land <= 1:
        raise GeoscopeError(f"--min-land is a share of a cell's area, between 0 and 1 (got {args.min_land:g})")
    check_writable(args.out, folder=True)

    plan = grid_plan(args.region, args.cell_km, args.per_cell, seed=args.seed,
                     min_land_fraction=args.min_land)
    _write_plan(plan, args.out, f"{len(plan.points):,} points in {len(plan.table):,} cells of {args.cell_km:g} km "
                                f"over {plan.meta['region_name']}")
    return 0


def run_plan_cities(args: argparse.Namespace) -> int:
    from ..data.plan import cities_plan

    check_writable(args.out, folder=True)
    plan = cities_plan(args.region, args.top, args.radius_km, args.per_city, merge=args.merge_suburbs,
                       seed=args.seed, min_population=args.min_population)
    merged = f", {len(plan.table):,} after merging suburbs" if args.merge_suburbs else ""
    _write_plan(plan, args.out, f"{len(plan.points):,} points around {plan.meta['places']:,} places{merged} "
                                f"in {plan.meta['region_name']}")
    return 0


def _write_plan(plan: Plan, out: str, summary: str) -> None:
    """Write the plan's files and its map (``map.png``, titled ``summary``), then say what was planned."""
    from pathlib import Path

    from ..data.plan import MAP_FILE, write_plan
    from ..report.maps import plan_map_figure

    path = write_plan(plan, out)
    picture = plan_map_figure(plan, Path(out) / MAP_FILE, summary)
    print(f"{summary} → {path} (map: {picture})")


def run_plan_model(args: argparse.Namespace) -> int:
    from ..evaluate.weakness import weakness_plan

    if args.from_model is None:
        raise GeoscopeError("choose a plan: grid, cities, or --from-model DIR --budget N")
    if args.budget is None or args.out is None:
        raise GeoscopeError("--from-model needs --budget N (how many points) and -o OUT")
    check_writable(args.out, folder=True)
    plan = weakness_plan(args.from_model, args.budget, seed=args.seed, region=args.region, cell_km=args.cell_km,
                         weighing=args.weighing)
    model = plan.meta["model_name"] or "the model"
    _write_plan(plan, args.out, f"{len(plan.points):,} points in {plan.meta['cells_chosen']:,} of "
                                f"{len(plan.table):,} cells of {plan.meta['cell_km']:.0f} km over "
                                f"{plan.meta['region_name']}, where {model} is weakest")
    top = plan.meta["chosen"][0]
    print(f"most points: {top['cell']} ({top['points']}): {top['why']}")
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    from ..data.fetch import fetch, parse_headings, summary_lines
    from ..data.sources import make_source
    from ..data.sources.http import Budget, HttpClient

    check_writable(args.out, folder=True)
    headings = parse_headings(args.headings)
    if args.source == "streetview" and not headings:
        raise GeoscopeError("Street View needs headings, e.g. --headings 0,90,180")
    if args.max_requests is not None and args.max_requests < 1:
        raise GeoscopeError(f"--max-requests must be at least 1 (got {args.max_requests})")
    if args.retries < 0 or args.backoff < 0 or args.timeout <= 0:
        raise GeoscopeError("--retries and --backoff must be ≥ 0 and --timeout > 0")
    client = HttpClient(retries=args.retries, backoff_s=args.backoff, timeout_s=args.timeout,
                        budget=Budget(args.max_requests))
    if args.source == "streetview":
        options = {"size": args.size, "fov": args.fov, "pitch": args.pitch, "outdoor": not args.any_source}
    else:
        options = {}
    source = make_source(args.source, client, headings=headings, base_url=args.base_url,
                         radius_m=args.radius_m, **options)
    result = fetch(args.plan, args.out, source, client, workers=args.workers,
                   progress=not args.no_progress and sys.stderr.isatty())
    for line in summary_lines(result):
        print(line)
    return 1 if result.failed else 0
