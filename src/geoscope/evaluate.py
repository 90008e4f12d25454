"""Honest evaluation of a model on a manifest, beside two baselines on the same rows.

Baselines: the training centroid (always guess the middle of the training data) and
k-nearest neighbours over the same image features (the bundle's gallery).
Views of one place are fused when the manifest has several per place.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .data.manifest import Manifest
from .errors import GeoscopeError
from .geo import haversine_km, summarize_errors
from .labels import LabelScheme, assign_labels
from .predict import GeoModel
from .results import CENTROID, KNN, MODEL, EvaluationResult


def evaluate(
    model: GeoModel, manifest: Manifest, *, fuse_views: bool | None = None, progress: bool = True,
    dataset: str = "",
) -> tuple[EvaluationResult, list[str]]:
    """Evaluate ``model`` on every readable row of ``manifest``; returns the result and the
    one-line errors of images that could not be read (those rows are left out)."""
    features = model.image_features(manifest.image_paths, progress=progress)
    valid = np.asarray(features.valid, dtype=bool)
    if not valid.any():
        raise GeoscopeError("no image of the manifest could be read")
    frame = manifest.frame[valid].reset_index(drop=True)
    raw = np.asarray(features.embeddings, dtype=np.float32)[valid]
    paths = [str(p) for p, ok in zip(manifest.image_paths, valid, strict=True) if ok]
    embeddings = model.embed(raw)

    places = manifest.place_ids[valid].reset_index(drop=True)
    if fuse_views is None:
        fuse_views = bool(places.duplicated().any())
    if fuse_views:
        codes, firsts = pd.factorize(places)[0], ~places.duplicated().to_numpy()
        embeddings = _group_mean(embeddings, codes)
        raw = _group_mean(raw, codes)
        frame = frame[firsts].reset_index(drop=True)
        paths = [p for p, first in zip(paths, firsts, strict=True) if first]

    probs = model.probabilities(embeddings)
    top = probs.argmax(axis=1)
    labels = model.labels
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    predictions = pd.DataFrame({
        "image": paths, "lat": lat, "lon": lon,
        "pred_lat": labels["lat"].to_numpy()[top], "pred_lon": labels["lon"].to_numpy()[top],
        "probability": probs[np.arange(len(top)), top],
        "pred_label": labels["name"].to_numpy()[top],
    })
    predictions["error_km"] = haversine_km(lat, lon, predictions["pred_lat"], predictions["pred_lon"])
    if "split" in frame:
        predictions["split"] = frame["split"].to_numpy()

    scheme = LabelScheme.from_dict(model.config["labels"])
    values = frame[scheme.params["column"]] if scheme.kind == "column" and \
        scheme.params.get("column") in frame else None
    true_ids = assign_labels(lat, lon, labels, scheme, values)
    names = labels["name"].to_numpy()
    predictions["true_label"] = np.where(true_ids >= 0, names[np.clip(true_ids, 0, None)], None)

    baselines = {
        CENTROID: _baseline(lat, lon, *model.training_centroid, labels, scheme, values),
        KNN: _baseline(lat, lon, *model.knn(raw), labels, scheme, values),
    }
    metrics = {MODEL: _metrics(predictions, true_ids, top)}
    for name, table in baselines.items():
        metrics[name] = _metrics(table, true_ids, table.pop("_pred_id").to_numpy())
    result = EvaluationResult(
        predictions=predictions, baselines=baselines, metrics=metrics,
        model_name=str(model.config.get("name", model.path.name)), dataset=dataset,
        history=list(model.files.history), labels=labels,
    )
    return result, list(features.errors)


def _group_mean(values: np.ndarray, codes: np.ndarray) -> np.ndarray:
    sums = np.zeros((codes.max() + 1, values.shape[1]), dtype=np.float64)
    np.add.at(sums, codes, values)
    return (sums / np.bincount(codes)[:, None]).astype(np.float32)


def _baseline(lat: np.ndarray, lon: np.ndarray, pred_lat, pred_lon, labels: pd.DataFrame,
              scheme: LabelScheme, values: pd.Series | None) -> pd.DataFrame:
    pred_lat = np.broadcast_to(np.asarray(pred_lat, dtype=np.float64), lat.shape)
    pred_lon = np.broadcast_to(np.asarray(pred_lon, dtype=np.float64), lon.shape)
    ids = assign_labels(pred_lat, pred_lon, labels, scheme) if scheme.kind != "column" \
        else _nearest_label(pred_lat, pred_lon, labels)
    names = labels["name"].to_numpy()
    return pd.DataFrame({
        "pred_lat": pred_lat, "pred_lon": pred_lon,
        "error_km": haversine_km(lat, lon, pred_lat, pred_lon),
        "pred_label": np.where(ids >= 0, names[np.clip(ids, 0, None)], None),
        "_pred_id": ids,
    })


def _nearest_label(lat: np.ndarray, lon: np.ndarray, labels: pd.DataFrame) -> np.ndarray:
    d = haversine_km(lat[:, None], lon[:, None], labels["lat"].to_numpy()[None], labels["lon"].to_numpy()[None])
    return d.argmin(axis=1)


def _metrics(table: pd.DataFrame, true_ids: np.ndarray, pred_ids: np.ndarray) -> dict:
    out = summarize_errors(table["error_km"].to_numpy()).to_dict()
    labelled = true_ids >= 0
    out["label_accuracy"] = float((pred_ids[labelled] == true_ids[labelled]).mean()) if labelled.any() \
        else float("nan")
    return out
