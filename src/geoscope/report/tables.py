"""The numbers behind the report's tables, computed from an :class:`EvaluationResult`.

Each series is the model or one baseline; every table keeps them side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..evaluate.results import CENTROID, KNN, MODEL, VIEWS_AVERAGED, EvaluationResult
from ..geo.sphere import THRESHOLDS_KM, summarize_errors

THRESHOLD_NAMES = {
    1.0: "street", 25.0: "city", 200.0: "region", 750.0: "country", 2500.0: "continent",
}


@dataclass(frozen=True)
class MetricRow:
    """One metric across series: ``kind`` is ``count``, ``km``, ``score`` or ``share``."""

    key: str
    label: str
    kind: str
    better: str
    """``"lower"``, ``"higher"`` or ``""`` (nothing to compare)."""
    values: dict[str, float | None]

    def best(self) -> str | None:
        """The series with the best finite value, or None when there is nothing to compare."""
        finite = {k: v for k, v in self.values.items() if v is not None and math.isfinite(v)}
        if not self.better or len(finite) < 2:
            return None
        pick = min if self.better == "lower" else max
        return pick(finite, key=finite.__getitem__)


def _is_finite(value: object) -> bool:
    try:
        return math.isfinite(float(value))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def series_names(result: EvaluationResult) -> list[str]:
    """The model first, then each baseline, in the order evaluate produced them."""
    names = [MODEL, *result.baselines]
    return names + [n for n in result.metrics if n not in names]


def series_errors(result: EvaluationResult) -> dict[str, np.ndarray]:
    """Distance errors in km of the model and each baseline."""
    errors = {MODEL: result.predictions["error_km"].to_numpy(dtype=np.float64)}
    for name, frame in result.baselines.items():
        errors[name] = frame["error_km"].to_numpy(dtype=np.float64)
    return errors


def has_labels(result: EvaluationResult) -> bool:
    """Whether the model predicts labels (both true and predicted names are known)."""
    p = result.predictions
    return {"true_label", "pred_label"} <= set(p.columns) and p["true_label"].notna().any()


def metric_rows(metrics: dict[str, dict], names: list[str]) -> list[MetricRow]:
    """The metrics table: one row per metric, one value per series."""

    def get(name: str, key: str, sub: str | None = None) -> float | None:
        value = metrics.get(name, {}).get(key)
        if sub is not None:
            value = (value or {}).get(sub)
        return None if value is None else float(value)

    rows = [
        MetricRow("n", "Items evaluated", "count", "", {n: get(n, "n") for n in names}),
        MetricRow("median_km", "Median error (km)", "km", "lower",
                  {n: get(n, "median_km") for n in names}),
        MetricRow("mean_km", "Mean error (km)", "km", "lower",
                  {n: get(n, "mean_km") for n in names}),
        MetricRow("geoscore", "GeoScore (0–5000)", "score", "higher",
                  {n: get(n, "geoscore") for n in names}),
    ]
    for t in THRESHOLDS_KM:
        key = f"{t:g}"
        rows.append(MetricRow(f"within_km.{key}", f"Within {key} km ({THRESHOLD_NAMES.get(t, '')})",
                              "share", "higher", {n: get(n, "within_km", key) for n in names}))
    if any(_is_finite(metrics.get(n, {}).get("label_accuracy")) for n in names):
        rows.append(MetricRow("label_accuracy", "Label accuracy", "share", "higher",
                              {n: get(n, "label_accuracy") for n in names}))
    return rows


def split_metrics(result: EvaluationResult) -> dict[str, dict[str, dict]]:
    """Per split, the metrics of every series on that split's items (empty without ``split``)."""
    p = result.predictions
    if "split" not in p or p["split"].isna().all():
        return {}
    labelled = has_labels(result)
    out: dict[str, dict[str, dict]] = {}
    for split in _split_order(p["split"].dropna().astype(str).unique()):
        mask = (p["split"].astype(str) == split).to_numpy()
        per: dict[str, dict] = {}
        for name in [MODEL, *result.baselines]:
            frame = p if name == MODEL else result.baselines[name]
            metrics = summarize_errors(frame["error_km"].to_numpy()[mask]).to_dict()
            if labelled and "pred_label" in frame:
                metrics["label_accuracy"] = _accuracy(p["true_label"][mask],
                                                      frame["pred_label"][mask])
            per[name] = metrics
        out[split] = per
    return out


def _split_order(splits: np.ndarray) -> list[str]:
    known = ["train", "val", "test"]
    return [s for s in known if s in splits] + sorted(s for s in splits if s not in known)


def _accuracy(true: pd.Series, pred: pd.Series) -> float:
    t, p = true.to_numpy(), pred.to_numpy()
    keep = pd.notna(t)
    return float((t[keep] == p[keep]).mean()) if keep.any() else float("nan")


def per_label_table(result: EvaluationResult) -> pd.DataFrame:
    """Per true label: items, accuracy of the model and of each labelled baseline, median km.

    Sorted by model accuracy (best first), then by item count. Empty without labels.
    """
    if not has_labels(result):
        return pd.DataFrame()
    p = result.predictions
    keep = p["true_label"].notna().to_numpy()
    true = p["true_label"].to_numpy()[keep]
    frame = pd.DataFrame({"label": true.astype(str)})
    frame[MODEL] = (true == p["pred_label"].to_numpy()[keep]).astype(float)
    for name, base in result.baselines.items():
        if "pred_label" in base:  # rows follow the predictions' order
            frame[name] = (true == base["pred_label"].to_numpy()[keep]).astype(float)
    frame["median_km"] = p["error_km"].to_numpy(dtype=float)[keep]
    grouped = frame.groupby("label", sort=False)
    table = grouped.mean(numeric_only=True).drop(columns="median_km")
    table.insert(0, "n", grouped.size())
    table["median_km"] = grouped["median_km"].median()
    table = table.reset_index()
    return table.sort_values([MODEL, "n", "label"], ascending=[False, False, True], kind="stable",
                             ignore_index=True)


def display_name(series: str, model_name: str) -> str:
    """How a series is named on the page: the model's own name, or '<name> baseline'."""
    if series == MODEL:
        return model_name
    known = {KNN: "kNN baseline", CENTROID: "centroid baseline",
             VIEWS_AVERAGED: "views fused: mean, not the learned fusion"}
    return known.get(series, f"{series} baseline")
