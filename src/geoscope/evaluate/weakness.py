"""Where a model is weak, read from its bundle alone, and the points to photograph next there.

The model's region is cut into grid cells (:func:`geoscope.geo.cells.grid_cells`, about the spacing of its
labels). Each cell gets

- ``training_places``: the model's training places inside it (the kNN gallery's coordinates, else each
  label's image count at its medoid);
- ``expected_km``: the error a photo taken there can expect. The validation items of the label nearest the
  cell (``validation`` section of ``config.json``, written at training time) give their median error
  ``m`` over ``v`` validation places (a place's views are one piece of evidence; bundles that record only
  items count items), shrunk toward the model's overall validation median ``M`` by :data:`PRIOR_PLACES`
  pseudo-places, ``(v·m + k·M) / (v + k)``; the answer stands at a label's medoid, so never less than the
  distance ``d`` from the cell to that medoid: ``expected_km = max((v·m + k·M) / (v + k), d)``. A bundle
  without the section (written before it) has ``expected_km = max(M, d)``.

The budget then goes one point at a time to the cell where that point saves the most expected km
(:func:`allocate`), assuming a cell's error falls as ``1/√(places + 1)``: the ``j``-th new point of a cell
saves ``share · expected_km · (√((n+1)/(n+1+j)) − √((n+1)/(n+2+j)))``, ``share`` being the cell's share
of the region's land and ``n`` its training places. So a cell where the model errs far gets points first,
a cell already holding many places gets fewer, and a cell with none (far from every label) gets some.
:data:`WEIGHINGS` names the variants measured by ``benchmarks/active.py`` (docs/data.md, "Where to
collect next").
"""

from __future__ import annotations

import heapq
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import shapely

from ..bundle import BundleFiles, read_bundle
from ..bundle.gallery import Gallery
from ..data.plan import MIN_LAND_FRACTION, Plan, PlanError, plan_meta, sample_cells, with_point_ids
from ..geo.cells import assign_grid, grid_cells
from ..geo.places import nearest_place
from ..geo.regions import Region, country_of, country_region, region_from_points, resolve_region
from ..geo.sphere import EARTH_RADIUS_KM, to_unit_vectors
from ..training.stages import COVERAGE_MIN_PLACES

PRIOR_PLACES = 3.0
"""Pseudo-places of the overall validation median that a label's own median is shrunk toward."""
WEIGHINGS = {
    "error": "land share × expected km",
    "thin": "land share × the overall validation median (thin data and distance to the labels alone)",
    "places": "share of the training places × expected km (where photos were taken before)",
}
"""How a cell's weight is made before the diminishing returns of :func:`allocate`."""
REASONS_SHOWN = 50
"""Cells whose reasons ``plan.json`` lists (the most points first); ``cells.csv`` holds every cell."""


@dataclass
class Weakness:
    """A model's region in cells, with what each says of the model's weakness there."""

    region: Region
    cells: pd.DataFrame
    """Grid cells (:func:`~geoscope.geo.cells.grid_cells`) with ``training_places``, ``label`` (the nearest
    label's name), ``label_km`` (the distance to its medoid), ``val_places``, ``val_median_km`` and
    ``expected_km``."""
    cell_km: float
    overall_km: float
    """The overall validation median ``M``."""
    by_label: bool
    """Whether the bundle records validation by label (else ``expected_km`` is ``max(M, d)``)."""
    places: pd.DataFrame | None = None
    """The training places (``lat``, ``lon``) the cells' ``training_places`` count."""


def model_weakness(files: BundleFiles, *, region: Region | str | None = None,
                   cell_km: float | None = None) -> Weakness:
    """The weakness map of a bundle over its region (the land of its training places' countries, within the box
    of each country's places; or ``region``), in cells of ``cell_km`` (default: the median distance from each
    label to the nearest other). Raises :class:`~geoscope.data.plan.PlanError` for a bundle that records no
    training places."""
    labels = files.labels
    lat, lon, weight = _training_places(files)
    spacing = cell_km if cell_km is not None else _label_spacing_km(labels)
    if not spacing > 0:
        raise PlanError(f"cell size must be positive (got {spacing:g} km)")
    if region is None:
        region = _training_area(lat, lon, spacing)
    elif isinstance(region, str):
        region = resolve_region(region)
    cells = grid_cells(region, spacing, min_land_fraction=MIN_LAND_FRACTION)
    inside = assign_grid(lat, lon, cells)
    cells["training_places"] = np.bincount(inside[inside >= 0], weights=weight[inside >= 0],
                                           minlength=len(cells)).round(1)
    owner, label_km = nearest_place(cells["lat"], cells["lon"], labels)
    overall, items, medians = _validation(files)
    shrunk = (items * np.nan_to_num(medians, nan=0.0) + PRIOR_PLACES * overall) / (items + PRIOR_PLACES)
    cells["label"] = labels["name"].to_numpy()[owner]
    cells["label_km"] = label_km.round(1)
    cells["val_places"] = items[owner].astype(np.int64)
    cells["val_median_km"] = medians[owner].round(1)
    cells["expected_km"] = np.maximum(shrunk[owner], label_km).round(1)
    by_label = isinstance(files.config.get("validation"), dict)
    return Weakness(region, cells, float(spacing), overall, by_label, pd.DataFrame({"lat": lat, "lon": lon}))


def allocate(weakness: Weakness, budget: int, weighing: str = "error") -> np.ndarray:
    """How many of ``budget`` points each cell gets: one at a time to the cell where the next point saves the
    most expected km (the module's formula; ties to the lower cell id)."""
    _check_weighing(weighing)
    cells = weakness.cells
    n = cells["training_places"].to_numpy(dtype=np.float64)
    km = cells["expected_km"].to_numpy(dtype=np.float64)
    if weighing == "places":
        share = (n + 0.5) / (n + 0.5).sum()
    else:
        land = cells["land_fraction"].to_numpy(dtype=np.float64)
        share = land / land.sum()
    weight = share * (weakness.overall_km if weighing == "thin" else km)

    def saved(cell: int, j: int) -> float:
        base = n[cell] + 1.0
        return float(weight[cell] * (math.sqrt(base / (base + j)) - math.sqrt(base / (base + j + 1))))

    counts = np.zeros(len(cells), dtype=np.int64)
    heap = [(-saved(c, 0), c) for c in range(len(cells))]
    heapq.heapify(heap)
    for _ in range(budget):
        _, c = heapq.heappop(heap)
        counts[c] += 1
        heapq.heappush(heap, (-saved(c, int(counts[c])), c))
    return counts


def weakness_plan(model: str | os.PathLike[str], budget: int, *, seed: int = 0, region: str | None = None,
                  cell_km: float | None = None, weighing: str = "error") -> Plan:
    """``budget`` points on land in the model's region where it is weakest (:func:`allocate`), as a plan
    ``geoscope data fetch`` takes: points with their cell, ``cells.csv`` (every cell, its weakness and points)
    and ``plan.json`` saying why each cell was chosen."""
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer) or budget <= 0:
        raise PlanError(f"--budget must be a positive whole number of points (got {budget})")
    _check_weighing(weighing)
    files = read_bundle(model)
    weakness = model_weakness(files, region=region, cell_km=cell_km)
    counts = allocate(weakness, budget, weighing)
    points = sample_cells(weakness.region, weakness.cells, counts, seed)
    if len(points) != budget:  # a cell's land too thin to hit (never seen above the minimum land share)
        raise PlanError(f"could place only {len(points)} of {budget} points on the land of {weakness.region.name}: "
                        "give a larger --cell-km or another --region")
    cells = weakness.cells.assign(points=np.bincount(points["cell_id"], minlength=len(counts)))
    points = with_point_ids(points)
    meta = plan_meta("model", region or "the model's training area", weakness.region, seed, points,
                     model=str(Path(model)), model_name=files.config.get("name"), budget=budget,
                     weighing=weighing, formula=WEIGHINGS[weighing], cell_km=round(weakness.cell_km, 3),
                     cells=len(cells), cells_chosen=int((cells["points"] > 0).sum()),
                     validation_median_km=round(weakness.overall_km, 1),
                     validation_by_label=weakness.by_label, prior_places=PRIOR_PLACES, chosen=_reasons(cells))
    return Plan(points, cells, "cells.csv", meta, known=weakness.places)


def _check_weighing(weighing: str) -> None:
    if weighing not in WEIGHINGS:
        raise PlanError(f"unknown weighing {weighing!r}: use one of {', '.join(WEIGHINGS)}")


def _reasons(cells: pd.DataFrame) -> list[dict]:
    """Why each chosen cell was chosen, the most points first."""
    chosen = cells[cells["points"] > 0].sort_values(["points", "expected_km"], ascending=False, kind="stable")
    out = []
    for cell in chosen.head(REASONS_SHOWN).itertuples(index=False):
        if cell.label_km >= cell.expected_km:
            error = f"no label nearer than {cell.label_km:.0f} km"
        elif cell.val_places:
            error = f"its label {cell.label!r}: {cell.val_places} validation places, median {cell.val_median_km:.0f} km"
        else:
            error = f"its label {cell.label!r} has no validation place: the overall median"
        out.append({"cell_id": int(cell.cell_id), "cell": cell.name, "points": int(cell.points),
                    "expected_km": float(cell.expected_km), "training_places": float(cell.training_places),
                    "why": f"expected error {cell.expected_km:.0f} km ({error}); "
                           f"{cell.training_places:g} training places"})
    return out


def _training_places(files: BundleFiles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where the model's training places are and how many each point stands for: the gallery's distinct
    coordinates (scaled up when the gallery is a sample), else the labels' medoids weighted by their counts."""
    gallery = Gallery.from_tensors(files.tensors)
    if gallery is not None and len(gallery.lat):
        where = np.unique(np.round(np.column_stack([gallery.lat, gallery.lon]), 6), axis=0)
        trained = ((files.config.get("training") or {}).get("data") or {}).get("splits", {}).get("train")
        scale = max(1.0, trained / len(gallery.lat)) if isinstance(trained, int | float) else 1.0
        return where[:, 0], where[:, 1], np.full(len(where), scale)
    counts = pd.to_numeric(files.labels.get("count"), errors="coerce") if "count" in files.labels else None
    if counts is None or counts.isna().all():
        raise PlanError(f"{files.path}: the bundle records no training places (no kNN gallery and no label counts), "
                        "so there is nothing to tell thin data from: retrain it with this geoscope")
    return (files.labels["lat"].to_numpy(), files.labels["lon"].to_numpy(), counts.fillna(0).to_numpy(np.float64))


def _validation(files: BundleFiles) -> tuple[float, np.ndarray, np.ndarray]:
    """The overall validation median and each label's validation items and median km (NaN where none)."""
    n = len(files.labels)
    section = files.config.get("validation")
    by_label = section.get("by_label") if isinstance(section, dict) else None
    if isinstance(by_label, dict) and len(by_label.get("items") or []) == n == len(by_label.get("median_km") or []):
        items = np.asarray(by_label.get("places") or by_label["items"], dtype=np.float64)
        medians = np.array([np.nan if v is None else v for v in by_label["median_km"]], dtype=np.float64)
        return float(section["median_km"]), items, medians
    metrics = ((files.config.get("metrics") or {}).get("val") or {}).get("median_km")
    overall = float(metrics) if isinstance(metrics, int | float) and metrics > 0 else \
        float(pd.to_numeric(files.labels.get("spread_km"), errors="coerce").median()) \
        if "spread_km" in files.labels else float("nan")
    if not math.isfinite(overall):
        raise PlanError(f"{files.path}: the bundle records no validation error (no 'validation' section, no "
                        "validation metrics, no label spreads): retrain it with this geoscope")
    return overall, np.zeros(n), np.full(n, np.nan)


def _label_spacing_km(labels: pd.DataFrame) -> float:
    """The median distance from each label's medoid to the nearest other's (its spread where there is one)."""
    from scipy.spatial import cKDTree

    xyz = to_unit_vectors(labels["lat"].to_numpy(), labels["lon"].to_numpy())
    if len(xyz) < 2:
        spread = float(pd.to_numeric(labels.get("spread_km"), errors="coerce").max()) if "spread_km" in labels \
            else float("nan")
        return 2 * spread if spread > 0 else 25.0
    chord = cKDTree(xyz).query(xyz, k=2)[0][:, 1]
    return float(np.median(2 * EARTH_RADIUS_KM * np.arcsin(np.clip(chord / 2, 0, 1))))


def _training_area(lat: np.ndarray, lon: np.ndarray, pad_km: float) -> Region:
    """The land of each country the model covers, within the box of its places there widened by half a cell.

    A country is covered as coverage has it (:data:`~geoscope.training.stages.COVERAGE_MIN_PLACES` training places or
    more): a few places across a border (Street View's near Croatia's, in Bosnia and Herzegovina) would otherwise
    bring the neighbour's land into the plan, far from every label, where the plan sends points first. Where no
    country holds that many, every country holding places counts."""
    codes = country_of(lat, lon)
    named, counts = np.unique(codes[codes != ""], return_counts=True)
    covered = named[counts >= COVERAGE_MIN_PLACES] if (counts >= COVERAGE_MIN_PLACES).any() else named
    pieces = []
    for code in sorted(covered):
        here = codes == code
        box = region_from_points(lat[here], lon[here], pad_km=pad_km / 2)
        pieces.append(shapely.intersection(country_region(code).geometry, box.geometry))
    if not pieces:
        return region_from_points(lat, lon, pad_km=pad_km / 2)
    geometry = shapely.union_all(pieces)
    min_lon, min_lat, max_lon, max_lat = geometry.bounds
    return Region("the model's training area", geometry, (min_lat, min_lon, max_lat, max_lon))
