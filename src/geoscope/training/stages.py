"""From a trained head to a bundle's stages: the parts fitted after training, each a stage of its own.

After the loop has trained the head, the stages that read the training images are fitted on one sample
of them (at most :data:`geoscope.bundle.gallery.MAX_IMAGES`): the kNN gallery and the typicality test
(:class:`~geoscope.bundle.gallery.Gallery`), the level expert
(:class:`~geoscope.models.level_expert.LevelExpert`); then coverage, calibration and the validation record by
label on the validation items, answered as predict answers them
(:func:`~geoscope.models.level_expert.answer_probabilities`).
:func:`stages` lists every stage by its section of ``config.json``; :func:`geoscope.bundle.assemble`
makes the bundle of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..answer.answerer import Calibration, best_guesses, fit_calibration
from ..answer.coverage import TYPICALITY, Coverage, Covered
from ..bundle import TRAIN_SHA1, Record
from ..bundle.gallery import MAX_IMAGES, Gallery, GalleryImages
from ..bundle.refiner import PointsRefiner
from ..data.manifest import Manifest, summarize
from ..geo.naming import locate, partly_covered
from ..geo.sphere import geoscore, haversine_km, spherical_mean
from ..models.fusion import group_mean
from ..models.heads import TrainableHead
from ..models.image_side import TrainedImageSide, adapt_rows
from ..models.level_expert import LevelExpert, answer_probabilities
from .data import SKIPPED_SHOWN, PreparedData
from .loop import TrainingData, TrainResult, embed_items
from .options import FitOptions

COVERAGE_KEPT = 0.95
"""Share of held-out images of the training regions that the coverage threshold keeps in coverage."""
COVERAGE_K = 10
"""Nearest training images whose mean distance is the coverage's gallery test."""
COVERAGE_LEVELS = ("country", "region", "label")
COVERAGE_MIN_PLACES = 5
"""Training places (distinct points) a first-level region needs to count as covered by the training images."""


def stages(manifest: Manifest, data: PreparedData, options: FitOptions, result: TrainResult, trials: list[dict],
           command: Sequence[str] | None, refiner: PointsRefiner | None) -> dict[str, object]:
    """Every stage of the bundle of ``result`` (its head's candidates fixed), by its section of ``config.json``
    (a plain value for the sections that are no more than that)."""
    head = result.head
    adapter = result.image_adapter if result.image_adapter is not None else torch.nn.Identity()
    x, items, rows = training_images(data, adapter, options.train.seed)
    train = data.splits["train"]
    labels = train.label[items]
    tested, image_groups = coverage_groups(data.label_levels, labels)
    regions = RegionCover.of(data.labels, tested, image_groups, labels, train.lat[items], train.lon[items])
    images = None if data.train_images is None else GalleryImages(
        str(Path(manifest.root).resolve()), [data.train_images[r] for r in rows])  # where, never the pixels
    gallery = Gallery.fit(x, train.lat[items], train.lon[items], labels, head.feature_scale().double().numpy(),
                          image_groups, regions.subgroups, images)
    level, groups = splitting_level(data.label_levels, labels)
    expert = LevelExpert.fit(x, labels, groups, level) if options.level_expert and level != "label" else None
    coverage, calibration, measured, by_label = answer_parts(data, adapter, head, gallery, expert, regions)
    summary = summarize(manifest)
    return {
        "name": options.name,
        "geoscope_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "image_encoder": TrainedImageSide(options.image_side, result.image_adapter),
        "text_encoder": head.text_encoder(options.text_encoder),
        "model": head,
        "labels": options.scheme.to_dict(),
        "fusion": head.fusion,
        "answer": {"merge_km": head.merge_km, "refine": refiner.name if refiner is not None else "none"},
        "refiner": refiner,
        "level_expert": replace(expert, measured=measured) if expert is not None else None,
        "gallery": gallery,
        "coverage": coverage,
        "calibration": calibration,
        "validation": by_label,
        "training": Record({
            "data": {"images": summary["images"], "places": summary["places"], "bbox": summary["bbox"],
                     "splits": {k: len(v) for k, v in data.splits.items()},
                     "skipped": {"count": len(data.skipped), "first": data.skipped[:SKIPPED_SHOWN]},
                     "leakage": data.leakage, "provenance": options.provenance},
            "config": result.config.to_dict(),
            "augment": "hflip" if options.augment else None,
            "best_epoch": result.best_epoch,
            "batch_size": result.batch_size,
            "search": trials if len(trials) > 1 else None,
            "centroid": list(spherical_mean(train.lat, train.lon)),
            "command": list(command) if command else None,
            "distributed": result.run,
        }, {TRAIN_SHA1: data.train_hashes}),
        "metrics": result.metrics,
    }


def training_images(data: PreparedData, adapter: torch.nn.Module,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A sample of at most :data:`~geoscope.bundle.gallery.MAX_IMAGES`) training images: their image features
    ``(n, dim)`` (float64, the plain variant), the training item each belongs to and its image row."""
    train = data.splits["train"]
    rows, items = train.images()
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(len(rows), MAX_IMAGES), replace=False))
    return adapt_rows(adapter, train.features, rows[keep]).astype(np.float64), items[keep], rows[keep]


def splitting_level(label_levels: np.ndarray, labels: np.ndarray) -> tuple[str, np.ndarray]:
    """The coarsest level of the label hierarchy (country, region, the label itself) whose groups split the
    training ``labels``: its name and each label's group."""
    for name, level in zip(COVERAGE_LEVELS, (*label_levels, np.arange(label_levels.shape[1])), strict=True):
        if len(np.unique(level[labels])) > 1:
            return name, level
    return "label", np.arange(label_levels.shape[1])


def coverage_groups(label_levels: np.ndarray, labels: np.ndarray) -> tuple[str, np.ndarray]:
    """The typicality test's groups of training images (of ``labels``): the :func:`splitting_level`'s name and
    each image's group."""
    name, level = splitting_level(label_levels, labels)
    return name, level[labels]


@dataclass(frozen=True)
class RegionCover:
    """Where the training images cover a country only in part: the typicality test goes one level down there
    (:meth:`geoscope.answer.coverage.Typicality.fit`), among the first-level regions they cover."""

    subgroups: np.ndarray | None = None
    """Each training image's region where the test goes one level down, "" elsewhere (``None``: nowhere)."""
    within: dict[str, Covered] = field(default_factory=dict)
    """What each such test (``typicality.G``, by the group's row) compares with."""
    partial: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The covered regions of each country covered in part (by code)."""

    @classmethod
    def of(cls, labels: pd.DataFrame, level: str, groups: np.ndarray, image_labels: np.ndarray, lat: np.ndarray,
           lon: np.ndarray) -> RegionCover:
        """For training images (their typicality ``groups`` at ``level``, labels and coordinates): where a
        country (a group, when the test groups by country) has two covered regions or more and lacks others."""
        if level != "country" or "country_code" not in labels:
            return cls()
        where, partial = partly_covered(lat, lon, COVERAGE_MIN_PLACES)
        code = labels["country_code"].astype(str).to_numpy()[image_labels]
        region = where["region"].astype(str).to_numpy()
        tested = np.array([c in partial and len(partial[c]) > 1 and r in partial[c] for c, r in
                           zip(code, region, strict=True)], dtype=bool) & (where["country_code"].to_numpy() == code)
        country = labels["country"].astype(str).to_numpy()[image_labels] if "country" in labels else code
        within = {}
        for row, group in enumerate(np.unique(groups)):
            first = int(np.flatnonzero(groups == group)[0])
            if len(partial.get(code[first], ())) > 1:
                within[f"{TYPICALITY}.{row}"] = Covered(str(country[first]), "region", partial[code[first]])
        return cls(np.where(tested, region, ""), within, partial)

    def covers(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Whether each point lies in a covered region (or in a country not covered in part)."""
        if not self.partial:
            return np.ones(len(np.atleast_1d(lat)), dtype=bool)
        where = locate(lat, lon)
        return np.array([c not in self.partial or r in self.partial[c] for c, r in
                         zip(where["country_code"], where["region"], strict=True)], dtype=bool)


def fit_coverage(scores: dict[str, np.ndarray], lat: np.ndarray, lon: np.ndarray, groups: str | None,
                 regions: RegionCover) -> Coverage:
    """The coverage fitted on validation items' test ``scores`` (:meth:`Gallery.scores`), those of the regions
    the training images cover (items at ``lat``, ``lon``)."""
    covered = regions.covers(lat, lon)
    return Coverage.fit({name: s[covered] for name, s in scores.items()}, COVERAGE_KEPT, COVERAGE_K, groups,
                        regions.within)


def answer_parts(data: PreparedData, adapter: torch.nn.Module, head: TrainableHead, gallery: Gallery,
                 expert: LevelExpert | None, regions: RegionCover | None = None
                 ) -> tuple[Coverage, Calibration, dict | None, dict]:
    """Coverage threshold and confidence calibration, fitted on the validation items (images, or places
    with their views fused and their mean features scored, as predict answers them) with the level expert,
    how the expert measured there (:func:`expert_record`; ``None`` without an expert) and how the items of each
    label fared (:func:`validation_by_label`). The coverage is fitted on the items of the covered regions
    (``regions``: an item from a region the training images cover too thinly is not one the model should keep)."""
    val = data.splits["val"]
    images = adapt_rows(adapter, val.features, np.arange(val.features.shape[1]))  # once: a fine-tuned top is costly
    adapted = replace(val, features=images[None])
    rows, items = val.images()
    x = group_mean(images[rows], items) if len(rows) > len(val) else images[rows]
    embeddings = embed_items(head, torch.nn.Identity(), adapted)
    probabilities = answer_probabilities(head, expert, embeddings, x)
    record = expert_record(expert, answer_probabilities(head, None, embeddings, x), probabilities, val,
                           data.labels) if expert is not None else None
    groups = coverage_groups(data.label_levels, gallery.label)[0] if gallery.typicality is not None else None
    coverage = fit_coverage(gallery.scores(x, COVERAGE_K), val.lat, val.lon, groups, regions or RegionCover())
    calibration = fit_calibration(probabilities, val.lat, val.lon, data.labels["lat"].to_numpy(),
                                  data.labels["lon"].to_numpy())
    return coverage, calibration, record, validation_by_label(probabilities, val, data.labels)


def validation_by_label(probabilities: np.ndarray, val: TrainingData, labels: pd.DataFrame) -> dict:
    """The ``validation`` section: how the validation items whose true label is each label fared, the first guess
    of "The answer" (:func:`~geoscope.answer.answerer.best_guesses`, before refinement) scored against where they
    were taken. Per label (lists in the label table's order): ``items``, ``places`` (distinct coordinates among
    them: the views of a place are items of one place, not independent evidence), ``median_km`` and ``accuracy``
    (share whose first guess is their label), ``None`` for a label without validation items. What ``geoscope data
    plan --from-model`` reads to tell where the model is weak."""
    lat, lon = labels["lat"].to_numpy(), labels["lon"].to_numpy()
    first = best_guesses(probabilities, lat, lon)
    km = haversine_km(val.lat, val.lon, lat[first], lon[first])
    items = np.bincount(val.label, minlength=len(labels))
    places = pd.DataFrame({"label": val.label, "lat": val.lat, "lon": val.lon}).drop_duplicates()["label"]
    right = np.bincount(val.label, weights=(first == val.label).astype(np.float64), minlength=len(labels))
    median = [round(float(np.median(km[val.label == k])), 1) if n else None for k, n in enumerate(items)]
    accuracy = [round(float(r / n), 3) if n else None for r, n in zip(right, items, strict=True)]
    return {"split": "val", "items": len(km), "median_km": round(float(np.median(km)), 1),
            "by_label": {"items": items.tolist(), "places": np.bincount(places, minlength=len(labels)).tolist(),
                         "median_km": median, "accuracy": accuracy}}


def expert_record(expert: LevelExpert, head: np.ndarray, with_expert: np.ndarray, val: TrainingData,
                  labels: pd.DataFrame) -> dict:
    """How the level expert measured on the validation items: their mean GeoScore (of the first guess of "The
    answer") and share of first guesses in the right group, from the head's probabilities alone (``head``) and
    ``with_expert``.

    Not a gate: keeping it only where it scored no worse on validation measured worse on the benchmarks'
    small folds (western USA 315.3 → 328.1 km, Croatia 86.4 → 83.4 km)."""
    lat, lon = labels["lat"].to_numpy(), labels["lon"].to_numpy()
    truth = expert.groups[val.label]
    measured = {}
    for name, p in (("head", head), ("with_expert", with_expert)):
        first = best_guesses(p, lat, lon)
        measured[name] = {"geoscore": float(geoscore(haversine_km(val.lat, val.lon, lat[first], lon[first])).mean()),
                          "right_group": float((expert.groups[first] == truth).mean())}
    return measured
