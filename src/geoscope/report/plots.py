"""The report's charts: cumulative error curves, confusion matrix, training curves.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot global state), drawn by
the Agg canvas and written as PNG.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from ..evaluate.results import CENTROID, KNN, MODEL
from ..geo.sphere import THRESHOLDS_KM

DPI = 110
STYLES = {
    MODEL: {"color": "#1f5fa8", "linewidth": 2.4},
    CENTROID: {"color": "#7f7f7f", "linewidth": 1.6, "linestyle": "--"},
    KNN: {"color": "#e0801e", "linewidth": 1.6, "linestyle": "-."},
}
SPLIT_COLOURS = {"train": "#1f5fa8", "val": "#e0801e", "test": "#2a9d5c"}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png", dpi=DPI)
    return path


def cumulative_error_figure(
    errors: Mapping[str, np.ndarray], path: Path, *, names: Mapping[str, str] | None = None,
    title: str = "",
) -> Path:
    """Share of predictions within d km against log d, one step curve per series.

    The thresholds of :data:`geoscope.geo.sphere.THRESHOLDS_KM` are marked; ``names`` maps a series
    key to its legend name.
    """
    names = names or {}
    fig = Figure(figsize=(9, 4.6), layout="constrained")
    ax = fig.add_subplot()
    finite = [d[np.isfinite(d)] for d in errors.values()]
    positive = np.concatenate([d[d > 0] for d in finite] or [np.array([1.0])])
    lo = min(0.5, float(positive.min()) / 2) if positive.size else 0.5
    hi = max(5000.0, float(positive.max()) * 1.5) if positive.size else 5000.0
    for i, (key, d) in enumerate(errors.items()):
        d = np.sort(d[np.isfinite(d)])
        if d.size == 0:
            continue
        share = np.arange(1, d.size + 1) / d.size
        style = STYLES.get(key) or {"color": f"C{i}", "linewidth": 1.8}
        label = f"{names.get(key, key)} (median {np.median(d):,.0f} km)"
        ax.step(np.r_[lo, np.maximum(d, lo), hi], np.r_[0.0, share, 1.0], where="post",
                label=label, **style)
    for t in THRESHOLDS_KM:
        ax.axvline(t, color="#9a9a9a", linewidth=0.8, linestyle=":", zorder=0)
        ax.text(t, 1.01, f"{t:g} km", transform=ax.get_xaxis_transform(), ha="center",
                va="bottom", fontsize=8, color="#555555")
    ax.set_xscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("error d (km, log scale)")
    ax.set_ylabel("share of predictions within d")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=9, frameon=False)
    if title:
        ax.set_title(title, loc="left", fontsize=10, pad=16)
    return _save(fig, path)


def confusion_figure(
    true: Sequence[str], pred: Sequence[str], labels: Sequence[str], path: Path
) -> Path:
    """Row-normalised confusion matrix over ``labels``; every other label counts as "other"."""
    from sklearn.metrics import ConfusionMatrixDisplay

    keep = set(labels)
    other = "other"
    t = [x if x in keep else other for x in map(str, true)]
    p = [x if x in keep else other for x in map(str, pred)]
    order = list(labels) + ([other] if other in t or other in p else [])
    size = max(4.5, 0.34 * len(order) + 2.2)
    fig = Figure(figsize=(size + 1.0, size), layout="constrained")
    ax = fig.add_subplot()
    with warnings.catch_warnings():  # "a single label was found": we pass every label
        warnings.filterwarnings("ignore", message="A single label", category=UserWarning)
        display = ConfusionMatrixDisplay.from_predictions(
            t, p, labels=order, display_labels=[_short(x) for x in order], normalize="true",
            ax=ax, cmap="Blues", colorbar=True, values_format=".0%", xticks_rotation="vertical",
            text_kw={"fontsize": 7},
        )
    for text, value in zip(display.text_.ravel(), display.confusion_matrix.ravel(), strict=True):
        if value == 0:
            text.set_text("")
    display.im_.colorbar.ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label (share of its row)")
    return _save(fig, path)


def _short(label: str, limit: int = 20) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def training_figure(history: Sequence[Mapping], path: Path) -> Path | None:
    """Loss, accuracy and median error per split per epoch; None when nothing to draw."""
    frame = pd.DataFrame(list(history))
    if frame.empty or "epoch" not in frame:
        return None
    if "split" not in frame:
        frame["split"] = "train"
    panels = [(k, t) for k, t in (("loss", "loss"), ("accuracy", "accuracy"),
                                  ("median_km", "median error (km)"))
              if k in frame and pd.to_numeric(frame[k], errors="coerce").notna().any()]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels) + 0.6, 3.6), layout="constrained")
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for j, (split, rows) in enumerate(frame.groupby(frame["split"].astype(str), sort=False)):
            rows = rows.sort_values("epoch")
            values = pd.to_numeric(rows[key], errors="coerce")
            ax.plot(rows["epoch"], values, marker="o", markersize=3,
                    color=SPLIT_COLOURS.get(split, f"C{j + 3}"), label=split)
        if key == "accuracy":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    return _save(fig, path)


def reliability_figure(predictions: pd.DataFrame, path: Path, bins: int = 10) -> Path | None:
    """Calibrated confidence against how often it came true, one curve per distance (25, 200, 750 km).

    A point (x, y): of the items whose confidence was about x, a share y had the top guess
    within that distance; on the diagonal the confidence means what it says. ``None`` when
    the predictions carry no confidence.
    """
    columns = [c for c in predictions if c.startswith("confidence_")]
    if not columns:
        return None
    fig = Figure(figsize=(5.4, 4.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#9a9a9a", linewidth=1, linestyle=":", label="perfect calibration")
    edges = np.linspace(0, 1, bins + 1)
    for i, column in enumerate(columns):
        km = float(column.split("_")[1])
        confidence = predictions[column].to_numpy(dtype=np.float64)
        hit = predictions["error_km"].to_numpy() <= km
        which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
        xs, ys, ns = [], [], []
        for b in range(bins):
            inside = which == b
            if inside.sum() >= 5:
                xs.append(confidence[inside].mean())
                ys.append(hit[inside].mean())
                ns.append(int(inside.sum()))
        ax.plot(xs, ys, marker="o", color=f"C{i}", label=f"within {km:g} km (n = {len(confidence):,})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("stated confidence")
    ax.set_ylabel("share that came true")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return _save(fig, path)
