"""The error map: true and predicted points joined by error-coloured lines over country outlines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from matplotlib import colormaps
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import PathPatch
from matplotlib.path import Path as MplPath
from shapely.geometry import LineString, MultiLineString, Polygon
from shapely.geometry.polygon import orient

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
    from ..geo.regions import country_outlines

    cols = ["lat", "lon", "pred_lat", "pred_lon", "error_km"]
    p = predictions[cols].apply(pd.to_numeric, errors="coerce").dropna()
    total = len(p)
    if total > max_pairs:
        p = p.sample(max_pairs, random_state=seed)
    p = p.sort_values("error_km")  # large errors drawn last, on top
    lat, lon = p["lat"].to_numpy(), p["lon"].to_numpy()
    plat, plon = p["pred_lat"].to_numpy(), p["pred_lon"].to_numpy()
    err = p["error_km"].to_numpy()
    lon0, lat0, lon1, lat1 = map_extent(np.r_[lat, plat], np.r_[lon, plon])
    aspect = 1.0 / max(np.cos(np.radians((lat0 + lat1) / 2)), 0.05)
    lon0, lat0, lon1, lat1, ratio = _fit_frame(lon0, lat0, lon1, lat1, aspect)

    fig = Figure(figsize=(9.0, 7.6 * ratio + 0.9), layout="compressed")
    ax = fig.add_subplot()
    ax.set_facecolor(OCEAN)
    # regions' boxes are (min_lat, min_lon, max_lat, max_lon); clip wider than the view so
    # the clip edges stay out of sight.
    outlines = country_outlines(bbox=(max(lat0 - 2, -90), max(lon0 - 2, -180),
                                      min(lat1 + 2, 90), min(lon1 + 2, 180)))
    _draw_outlines(ax, outlines, tolerance=(lon1 - lon0) / 2000)
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
    ax.set_xlim(lon0, lon1)
    ax.set_ylim(lat0, lat1)
    ax.set_aspect(aspect)
    fig.colorbar(lines, ax=ax, label="error (km, log scale)", shrink=0.9, pad=0.02,
                 fraction=0.04)
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
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
