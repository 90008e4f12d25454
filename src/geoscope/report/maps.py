"""Maps over country outlines: the error map (true and predicted points joined by error-coloured lines) and a
plan's map (the points to photograph, over its cells)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import shapely
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection, PatchCollection
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch, Rectangle
from matplotlib.path import Path as MplPath
from shapely.geometry import LineString, MultiLineString, Polygon
from shapely.geometry.polygon import orient

from ..fileio import atomic_write_bytes

if TYPE_CHECKING:
    from ..data.plan import Plan

DPI = 110
OCEAN = "#dbe8f3"
LAND = "#f4f1ea"
BORDER = "#9a9a9a"
CMAP = ListedColormap(colormaps["plasma"](np.linspace(0.0, 0.82, 256)), name="plasma_dark")
"""Plasma without its pale yellow end, so long (large-error) lines stay visible on land."""


def map_extent(
    lat: np.ndarray, lon: np.ndarray, pad: float = 0.06
) -> tuple[float, float, float, float]:
    """``(min_lon, min_lat, max_lon, max_lat)`` of the points, padded by a share of the span."""
    lat0, lat1 = float(np.min(lat)), float(np.max(lat))
    lon0, lon1 = float(np.min(lon)), float(np.max(lon))
    dlat = max((lat1 - lat0) * pad, 0.05)
    dlon = max((lon1 - lon0) * pad, 0.05)
    return (max(lon0 - dlon, -180.0), max(lat0 - dlat, -90.0),
            min(lon1 + dlon, 180.0), min(lat1 + dlat, 90.0))


def _fit_frame(
    lon0: float, lat0: float, lon1: float, lat1: float, aspect: float,
    lo: float = 0.45, hi: float = 1.15,
) -> tuple[float, float, float, float, float]:
    """Widen the extent so its drawn height/width ratio lies in ``[lo, hi]``; returns it too."""
    ratio = (lat1 - lat0) * aspect / (lon1 - lon0)
    target = float(np.clip(ratio, lo, hi))
    if ratio > target:  # too tall: show more longitude
        half = (lat1 - lat0) * aspect / target / 2
        mid = (lon0 + lon1) / 2
        lon0, lon1 = max(mid - half, -180.0), min(mid + half, 180.0)
    elif ratio < target:  # too wide: show more latitude
        half = target * (lon1 - lon0) / aspect / 2
        mid = (lat0 + lat1) / 2
        lat0, lat1 = max(mid - half, -90.0), min(mid + half, 90.0)
    return lon0, lat0, lon1, lat1, (lat1 - lat0) * aspect / (lon1 - lon0)


def error_map_figure(
    predictions: pd.DataFrame, path: Path, *, max_pairs: int = 4000, seed: int = 0
) -> Path:
    """Draw each item's true point, predicted point and the line between them, coloured by error.

    Longitude and latitude axes with aspect 1/cos(mean latitude); the extent is the data's,
    padded; country outlines come from :func:`geoscope.geo.regions.country_outlines`. At most
    ``max_pairs`` pairs are drawn (a seeded random sample) so the figure stays legible.
    """
    cols = ["lat", "lon", "pred_lat", "pred_lon", "error_km"]
    p = predictions[cols].apply(pd.to_numeric, errors="coerce").dropna()
    total = len(p)
    if total > max_pairs:
        p = p.sample(max_pairs, random_state=seed)
    p = p.sort_values("error_km")  # large errors drawn last, on top
    lat, lon = p["lat"].to_numpy(), p["lon"].to_numpy()
    plat, plon = p["pred_lat"].to_numpy(), p["pred_lon"].to_numpy()
    err = p["error_km"].to_numpy()
    fig, ax = _map_axes(np.r_[lat, plat], np.r_[lon, plon])
    positive = err[err > 0]
    vmin = max(float(positive.min()) if positive.size else 1.0, 0.1)
    vmax = max(float(err.max()) if err.size else 1.0, vmin * 10)
    norm = LogNorm(vmin=vmin, vmax=vmax, clip=True)
    lines = LineCollection(np.stack([np.c_[lon, lat], np.c_[plon, plat]], axis=1),
                           cmap=CMAP, norm=norm, linewidths=0.8, alpha=0.75, zorder=2)
    lines.set_array(np.maximum(err, vmin))
    ax.add_collection(lines)
    ax.scatter(lon, lat, s=7, color="#1b1b1b", linewidths=0, zorder=3)
    ax.scatter(plon, plat, s=22, c=np.maximum(err, vmin), cmap=CMAP, norm=norm, marker="x",
               linewidths=1.0, zorder=4)
    fig.colorbar(lines, ax=ax, label="error (km, log scale)", shrink=0.9, pad=0.02,
                 fraction=0.04)
    shown = f"{total:,} items"
    if total > len(p):
        shown = f"{len(p):,} of {total:,} items (random sample)"
    ax.set_title(f"True → predicted location, {shown}", loc="left", fontsize=10)
    ax.legend(handles=[
        Line2D([], [], linestyle="", marker="o", markersize=3, color="#1b1b1b", label="true location"),
        Line2D([], [], linestyle="", marker="x", markersize=5, color="#555555",
               label="predicted location"),
        Line2D([], [], color=CMAP(0.75), linewidth=1, label="error (line colour)"),
    ], loc="lower left", fontsize=8, framealpha=0.9)
    fig.savefig(path, format="png", dpi=DPI)
    return path


CELL_BOUNDS = ("min_lat", "min_lon", "max_lat", "max_lon")
POINT = "#1f4e9c"
KNOWN = "#6b6b6b"
MAX_PANELS = 4
"""A plan's map draws at most this many separate areas."""
AREA_GAP_DEG = 4.0
"""Parts of a plan farther apart than about this many degrees are drawn in separate panels."""
SHADE = "expected_km"
"""The column of a plan's cells that shades them on its map (a model's plan: the error expected there)."""


def plan_map_figure(plan: Plan, path: Path, title: str) -> Path:
    """Draw a plan, written atomically to ``path``: its points over its cells (where its table has their bounds:
    grid and model plans), shaded by the error the model expects there (:data:`SHADE`, a model's plan), and the
    places photographed before (:attr:`~geoscope.data.plan.Plan.known`) as small grey dots. Areas far apart (a
    model of London and Croatia) get a panel each, the most points first (:func:`separate_areas`)."""
    points = plan.points
    known = plan.known if plan.known is not None else pd.DataFrame({"lat": [], "lon": []})
    cells = plan.table if set(CELL_BOUNDS) <= set(plan.table.columns) else pd.DataFrame({c: [] for c in CELL_BOUNDS})
    parts = [(points["lat"], points["lon"]), (cells["min_lat"], cells["min_lon"]), (cells["max_lat"], cells["max_lon"]),
             (known["lat"], known["lon"])]
    lat = np.concatenate([np.asarray(a, dtype=np.float64) for a, _ in parts])
    lon = np.concatenate([np.asarray(b, dtype=np.float64) for _, b in parts])
    area, order = separate_areas(lat, lon, weight=np.r_[np.full(len(points), 1.0), np.zeros(len(lat) - len(points))])
    shown = order[:MAX_PANELS]
    columns = 1 if len(shown) == 1 else 2
    rows = -(-len(shown) // columns)
    fig = Figure(figsize=(9.0 if columns == 1 else 12.0, 7.6 if rows == 1 and columns == 1 else 5.2 * rows + 0.6),
                 layout="compressed")
    boxes = None
    for i, which in enumerate(shown):
        ax = fig.add_subplot(rows, columns, i + 1)
        _land_axes(ax, _frame(lat[area == which], lon[area == which], pad=0.03))
        if len(cells):
            boxes = ax.add_collection(_cell_boxes(cells), autolim=False)
        ax.scatter(known["lon"], known["lat"], s=4, color=KNOWN, linewidths=0, zorder=3)
        ax.scatter(points["lon"], points["lat"], s=float(np.clip(6000 / max(len(points), 1), 1.5, 16)), color=POINT,
                   linewidths=0, zorder=4)  # thousands of points stay dots, with the land between them
        if i == 0:
            ax.legend(handles=_plan_legend(len(points), len(known)), loc="lower left", fontsize=8, framealpha=0.9)
    if SHADE in cells and boxes is not None:
        fig.colorbar(boxes, ax=fig.axes, label="error the model expects there (km)", shrink=0.9, pad=0.02,
                     fraction=0.04)
    left_out = len(order) - len(shown)
    fig.suptitle(title + (f" ({left_out} more area{'s' * (left_out > 1)} not drawn)" if left_out else ""),
                 x=0.01, ha="left", fontsize=10, wrap=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getbuffer())
    return path


def _cell_boxes(cells: pd.DataFrame) -> PatchCollection:
    """The cells as boxes: outlined, or filled by :data:`SHADE` where the table has it."""
    boxes = PatchCollection([Rectangle((c.min_lon, c.min_lat), c.max_lon - c.min_lon, c.max_lat - c.min_lat)
                             for c in cells.itertuples(index=False)], zorder=2, linewidths=0.3, edgecolor="#777777")
    if SHADE not in cells:
        boxes.set_facecolor("none")
        return boxes
    shade = cells[SHADE].to_numpy(dtype=np.float64)
    boxes.set_array(shade)
    boxes.set_cmap(colormaps["YlOrRd"])
    boxes.set_clim(float(np.nanmin(shade)), float(np.nanmax(shade)))
    boxes.set_alpha(0.55)
    return boxes


def separate_areas(lat: np.ndarray, lon: np.ndarray, weight: np.ndarray, gap_deg: float = AREA_GAP_DEG
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Which area each point belongs to, areas being the groups of points no more than about ``gap_deg`` degrees
    (tiles of that size, touching) from the next, and the areas' numbers by their summed ``weight``, then their
    size, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    if not len(lat):
        return np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)
    tiles, tile = np.unique(np.floor(np.c_[lat, lon] / gap_deg).astype(np.int64), axis=0, return_inverse=True)
    pairs = cKDTree(tiles).query_pairs(r=1.5, output_type="ndarray")  # the eight tiles around each
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(tiles), len(tiles)))
    count, group = connected_components(graph, directed=False)
    area = group[tile.ravel()]
    order = np.lexsort((-np.bincount(area, minlength=count), -np.bincount(area, weights=weight, minlength=count)))
    return area, order


def _plan_legend(points: int, known: int) -> list[Line2D]:
    handles = [Line2D([], [], linestyle="", marker="o", markersize=4, color=POINT,
                      label=f"{points:,} points to photograph")]
    if known:
        handles.append(Line2D([], [], linestyle="", marker="o", markersize=3, color=KNOWN,
                              label=f"{known:,} places the model was trained on"))
    return handles


def _map_axes(lat: np.ndarray, lon: np.ndarray, pad: float = 0.06) -> tuple[Figure, Axes]:
    """A figure with one axes over the points' extent (:func:`_land_axes`), its height fitted to the extent."""
    frame = _frame(lat, lon, pad)
    fig = Figure(figsize=(9.0, 7.6 * frame[-1] + 0.9), layout="compressed")
    ax = fig.add_subplot()
    _land_axes(ax, frame)
    return fig, ax


def _frame(lat: np.ndarray, lon: np.ndarray, pad: float) -> tuple[float, float, float, float, float, float]:
    """The points' extent, padded and its shape kept legible: ``(min_lon, min_lat, max_lon, max_lat, aspect,
    height / width as drawn)``, the aspect 1/cos(mean latitude)."""
    lon0, lat0, lon1, lat1 = map_extent(lat, lon, pad)
    aspect = 1.0 / max(np.cos(np.radians((lat0 + lat1) / 2)), 0.05)
    lon0, lat0, lon1, lat1, ratio = _fit_frame(lon0, lat0, lon1, lat1, aspect)
    return lon0, lat0, lon1, lat1, aspect, ratio


def _land_axes(ax: Axes, frame: tuple[float, float, float, float, float, float]) -> None:
    """Fix ``ax`` to a :func:`_frame`, in degrees, the countries' land over the ocean."""
    from ..geo.regions import country_outlines

    lon0, lat0, lon1, lat1, aspect, _ = frame
    ax.set_facecolor(OCEAN)
    # regions' boxes are (min_lat, min_lon, max_lat, max_lon); clip wider than the view so
    # the clip edges stay out of sight.
    outlines = country_outlines(bbox=(max(lat0 - 2, -90), max(lon0 - 2, -180),
                                      min(lat1 + 2, 90), min(lon1 + 2, 180)))
    _draw_outlines(ax, outlines, tolerance=(lon1 - lon0) / 2000)
    ax.set_xlim(lon0, lon1)
    ax.set_ylim(lat0, lat1)
    ax.set_aspect(aspect)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")


def _draw_outlines(ax, outlines: object, tolerance: float) -> None:
    """Country polygons as one filled patch (holes kept), simplified below a pixel or so."""
    geometries: Iterable = outlines.values() if isinstance(outlines, Mapping) else outlines
    simplified = shapely.simplify(np.asarray(list(geometries), dtype=object), tolerance)
    rings: list[MplPath] = []
    for part in shapely.get_parts(simplified):
        if isinstance(part, Polygon) and not part.is_empty:
            part = orient(part)  # exterior counter-clockwise, holes clockwise
            rings += [MplPath(np.asarray(r.coords)[:, :2], closed=True)
                      for r in (part.exterior, *part.interiors)]
        elif isinstance(part, LineString | MultiLineString):
            for line in shapely.get_parts(part):
                x, y = line.xy
                ax.plot(x, y, color=BORDER, linewidth=0.6, zorder=1)
    if rings:
        ax.add_patch(PathPatch(MplPath.make_compound_path(*rings), facecolor=LAND,
                               edgecolor=BORDER, linewidth=0.6, zorder=1))
