"""From a manifest to a model bundle: labels, cached features, training, gallery, model card."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.special import softmax

from .. import __version__, distributed
from ..answer.answerer import best_guesses, fit_calibration
from ..answer.coverage import Coverage, Typicality, scores_by_test
from ..answer.pca import principal_axes
from ..answer.refine import REFINE_RADIUS_KM
from ..bundle import POINT_PLACE, BundleFiles, read_bundle, save_bundle
from ..data.manifest import Manifest, place_ids, summarize
from ..data.split import leakage_report, split_manifest
from ..encoders.onnx_runtime import onnx_device
from ..errors import GeoscopeError, quote_name
from ..features.cache import hash_files
from ..geo.labels import LabelScheme, assign_labels, make_labels, prompt
from ..geo.sphere import geoscore, haversine_km, spherical_mean
from ..models.ensemble import Head, PlaceEnsemble, member_count
from ..models.fusion import group_mean, group_views
from ..models.image_side import ImageSide, adapt_rows
from ..models.level_expert import LevelExpert
from ..models.place_clip import is_stored_embedded
from .loop import TrainConfig, TrainingData, TrainResult, embed_items, measure, search_grid, train_place_clip

COVERAGE_KEPT = 0.95
"""Share of held-out images of the training regions that the coverage threshold keeps in coverage."""
COVERAGE_K = 10
"""Nearest training images whose mean distance is the coverage's gallery test."""
COVERAGE_LEVELS = ("country", "region", "label")
SKIPPED_SHOWN = 5

_FUSION_SAID = {
    "mean": "averaging their embeddings",
    "lstm": "an LSTM over them in heading order (GeoguessrLSTM's way), correcting their average",
    "attention": "attention between them, each told its heading, correcting their average",
}

_LOCATION_SAID = {
    "geoclip": "started from GeoCLIP's pretrained weights and trained",
    "geoclip-frozen": "GeoCLIP's pretrained weights, kept",
    "scratch": "trained from random weights",
}

_TYPICALITY_SAID = {
    level: f"how much farther it lies from the nearest {level}'s training images than from all of them "
           "(a relative Mahalanobis distance; tells a street from these regions from a street elsewhere)"
    for level in COVERAGE_LEVELS
} | {None: "no second test (too few training images to fit the typicality test)"}

MERGE_KM = 5.0
"""A GPS head's answer merges gallery points closer than this to a more probable one."""

GALLERY_DIM = 128
GALLERY_MAX = 20000


@dataclass
class FitOptions:
    """What to train on and how."""

    scheme: LabelScheme
    image_encoder: str = "efficientnet-lite0"
    text_encoder: str = "minilm"
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: bool = True
    """Also train on horizontally flipped copies of each image."""
    finetune_blocks: int | str = 0
    """Fine-tune the image encoder's last N MBConv blocks (0: frozen encoder; "all": all of it, from pixels)."""
    crops: int = 1
    """Square crops along each image's long side, features averaged (for wide frames)."""
    search: bool = False
    restarts: int = 1
    """Train each configuration this many times, from seeds ``seed``, ``seed + 1``, …; the lowest validation
    loss is kept (a head on frozen features lands in minima that differ by several GeoScore points)."""
    refiner: str | os.PathLike[str] | None = None
    """A GPS head's bundle, trained on the same training images, stored as this model's ``gps`` refiner and
    used by default (PIGEON's hybrid: this model's label, the GPS head's likeliest point near it)."""
    level_expert: bool = True
    """Also fit a linear probe over the coarsest level of the label hierarchy that splits the training labels
    (country, else region) and multiply it into the answer (:mod:`geoscope.models.level_expert`)."""
    members: int = 1
    """Keep this many of the runs (those of lowest validation loss) as one model, their logits averaged
    (:class:`~geoscope.models.ensemble.PlaceEnsemble`); at most the number of runs (restarts × search)."""
    name: str = "geoscope-model"
    block_km: float = 1.0
    """Without a ``split`` column the manifest is split by blocks of this size (val 10 %, test 10 %)."""
    gap_km: float = 0.1
    """…and training images closer than this to a val or test image are left out (near-duplicates)."""
    provenance: dict | None = None
    """The training manifest's dataset record (:func:`geoscope.data.provenance.read_dataset_card`)."""
    device: str = "cpu"
    """Torch device to train on (``cuda:0``: see :func:`geoscope.distributed.start`)."""

    @property
    def image_side(self) -> ImageSide:
        return ImageSide(self.image_encoder, self.finetune_blocks, self.crops)


@dataclass
class PreparedData:
    """Labelled, featurised splits ready for :func:`train_place_clip`."""

    splits: dict[str, TrainingData]
    labels: pd.DataFrame
    text_features: np.ndarray
    skipped: list[str]
    leakage: dict
    train_hashes: np.ndarray
    """SHA-1 of every training image's bytes, ``(n, 20)`` uint8: evaluate flags these rows."""

    @property
    def label_levels(self) -> np.ndarray:
        """Each label's country and region, as group codes ``(2, labels)``."""
        country = self.labels.get("country_code", pd.Series([""] * len(self.labels))).astype(str)
        region = country + "|" + self.labels.get("region", pd.Series([""] * len(self.labels))).astype(str)
        return np.stack([pd.factorize(country)[0], pd.factorize(region)[0]])


def prepare(manifest: Manifest, options: FitOptions, *, progress: bool = True) -> PreparedData:
    """Split if needed, label the rows, extract (cached) image and text features."""
    from ..encoders.text import get_text_encoder

    frame = manifest.frame
    if "split" not in frame:
        frame = split_manifest(frame, by="block", block_km=options.block_km, val=0.1, test=0.1,
                               seed=options.train.seed, gap_km=options.gap_km)
        manifest = Manifest(frame, manifest.root)
        if progress:
            print(f"split by {options.block_km:g} km blocks (val 10 %, test 10 %, seed {options.train.seed}; "
                  f"training images within {options.gap_km:g} km of them left out)", file=sys.stderr)
    leakage = leakage_report(frame)
    if progress:
        print(f"nearest train–val image {leakage['nearest_train_val_km']:.3f} km, train–test "
              f"{leakage['nearest_train_test_km']:.3f} km", file=sys.stderr)
    side = options.image_side
    device = onnx_device("auto", torch.device(options.device).index or 0) if options.device.startswith("cuda") \
        else "cpu"  # ONNX Runtime's CUDA provider when training on a GPU and it is installed
    inputs, valid, errors = side.training_inputs(manifest.image_paths, flips=options.augment, progress=progress,
                                                 device=device)
    if not valid.any():
        raise GeoscopeError(f"no image of the manifest could be read (first: {errors[0]})")
    if errors and progress:
        shown = "; ".join(errors[:SKIPPED_SHOWN])
        print(f"geoscope: skipped {len(errors)} unreadable image(s): {shown}"
              + (" …" if len(errors) > SKIPPED_SHOWN else ""), file=sys.stderr)

    train_mask = (frame["split"] == "train").to_numpy() & valid
    if not train_mask.any():
        raise GeoscopeError("the training split has no readable image")
    train_ids, labels = make_labels(frame[train_mask].reset_index(drop=True), options.scheme)
    if len(labels) < 2:
        raise GeoscopeError(f"the training images fall in only one label ({labels['name'].iloc[0]}): "
                            "nothing to tell apart; use smaller cells or more places")
    if options.train.head == "gps":  # each label is read as a point, through the location encoder
        text_features = labels[["lat", "lon"]].to_numpy(dtype=np.float32, copy=True)
    else:
        texts = [prompt(n, c) for n, c in zip(labels["name"], labels["country_code"], strict=True)]
        text_features = get_text_encoder(options.text_encoder).encode(texts).astype(np.float32)

    ids = np.full(len(frame), -1, dtype=np.int64)
    ids[train_mask] = train_ids
    others = ~train_mask & valid
    values = frame[options.scheme.params["column"]][others] if options.scheme.kind == "column" else None
    ids[others] = assign_labels(frame["lat"].to_numpy()[others], frame["lon"].to_numpy()[others], labels,
                                options.scheme, values)
    splits: dict[str, TrainingData] = {}
    by_place = options.train.fusion != "mean"  # a learned fusion trains on places, the mean on single images
    for name in ("train", "val", "test"):
        rows = (frame["split"] == name).to_numpy() & valid & (ids >= 0)
        if rows.any():
            splits[name] = _training_data(frame[rows], inputs[:, rows], ids[rows], by_place,
                                          with_images=name == "train")
    if "val" not in splits:
        raise GeoscopeError("the validation split has no labelled image: use a larger --val fraction")
    train_paths = [p for p, ok in zip(manifest.image_paths, train_mask, strict=True) if ok]
    digests = [d for d in hash_files(train_paths)[0] if d is not None]
    hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), -1)
    return PreparedData(splits, labels, text_features, errors, leakage, hashes)


def _training_data(frame: pd.DataFrame, features: np.ndarray, ids: np.ndarray, by_place: bool,
                   with_images: bool = False) -> TrainingData:
    """One split's rows as training items: each image, or (``by_place``) the views of each place, and
    then (``with_images``) each view of those places alone as well, so the head learns from single views too."""
    lat, lon = frame["lat"].to_numpy(), frame["lon"].to_numpy()
    if not by_place:
        return TrainingData(features, ids, lat, lon)
    codes = pd.factorize(place_ids(frame))[0]
    heading = frame["heading"].to_numpy(dtype=np.float64) if "heading" in frame else np.full(len(frame), np.nan)
    views, headings = group_views(codes, heading)
    first = views[:, 0]
    if with_images:  # each view of a place seen several times, alone (a place of one view is already that)
        rows = np.flatnonzero(np.bincount(codes)[codes] > 1)
        pad = ((0, 0), (0, views.shape[1] - 1))
        views = np.concatenate([views, np.pad(rows[:, None], pad, constant_values=-1)])
        headings = np.concatenate([headings, np.pad(heading[rows, None], pad, constant_values=np.nan)])
        first = np.concatenate([first, rows])
    return TrainingData(features, ids[first], lat[first], lon[first], views, headings)


def fit(manifest: Manifest, options: FitOptions, out_dir: str | os.PathLike[str], *,
        progress: bool = True, command: Sequence[str] | None = None) -> tuple[Path, TrainResult]:
    """Train a place-name CLIP model on ``manifest`` and save it as a bundle in ``out_dir``.

    Under torchrun every rank calls this alike; rank 0 alone prints and writes the bundle.
    """
    main = distributed.current().main
    progress = progress and main
    configs = [replace(config, seed=config.seed + restart)
               for config in (search_grid(options.train) if options.search else [options.train])
               for restart in range(options.restarts)]
    _check_members(options, len(configs))
    gps_head = _gps_bundle(options.refiner, options) if options.refiner is not None else None  # before hours
    data = prepare(manifest, options, progress=progress)
    refiner = _refiner_parts(gps_head, data) if gps_head is not None else None
    coords = data.labels[["lat", "lon"]].to_numpy()
    extra = {"test": data.splits["test"]} if "test" in data.splits else None
    results: list[TrainResult] = []
    for i, config in enumerate(configs, 1):
        if len(configs) > 1 and progress:
            print(f"run {i}/{len(configs)}: lr {config.lr_head:g}, wd {config.wd_head:g}, "
                  f"patience {config.patience}, factor {config.factor:g}, seed {config.seed}", file=sys.stderr)
        adapter = options.image_side.adapter() if options.finetune_blocks else None
        results.append(train_place_clip(data.splits["train"], data.splits["val"], data.text_features, coords,
                                        config, image_adapter=adapter,
                                        standardize_features=options.image_side.mixed_scales, extra_splits=extra,
                                        label_levels=data.label_levels, progress=progress, device=options.device))
    ranked = sorted(range(len(results)), key=lambda i: results[i].best_val_loss)
    kept = ranked[: options.members]
    trials = [{**_search_keys(r.config), "val_loss": r.best_val_loss, "epoch": r.best_epoch, "kept": i in kept}
              for i, r in enumerate(results)]
    best = results[kept[0]] if len(kept) == 1 else _ensemble([results[i] for i in kept], data, coords, extra)
    path = save_bundle(out_dir, *_bundle_parts(manifest, data, options, best, trials, command, refiner)) \
        if main else Path(out_dir)
    return path, best


def _gps_bundle(directory: str | os.PathLike[str], options: FitOptions) -> BundleFiles:
    """The bundle named as ``--refiner``, if it is a GPS head that reads the features this model will read."""
    files = read_bundle(directory)
    name = quote_name(files.path)
    training = files.config.get("training") or {}
    if (training.get("config") or {}).get("head") != "gps":
        raise GeoscopeError(f"{name}: a refiner is a GPS head's bundle (geoscope train --head gps), not this model")
    if files.config["image_encoder"] != options.image_side.to_dict():
        raise GeoscopeError(f"{name}: its GPS head reads {files.config['image_encoder'].get('name')!r} features, "
                            f"this model {options.image_encoder!r}: train both on one encoder")
    return files


def _refiner_parts(files: BundleFiles, data: PreparedData) -> tuple[dict, dict[str, np.ndarray]]:
    """A GPS head's bundle as the ``gps`` refiner of the model being trained: its config section and its
    tensors (under ``refiner.``), or one clear error when it was trained on other images."""
    name = quote_name(files.path)
    theirs = {bytes(row) for row in np.asarray(files.tensors.get("split.train_sha1", np.zeros((0, 20))), np.uint8)}
    ours = {bytes(row) for row in data.train_hashes}
    if theirs != ours:
        raise GeoscopeError(f"{name}: its GPS head was trained on other images ({len(theirs ^ ours):,} training "
                            "images differ): train both on one manifest and split")
    tensors = {f"refiner.{k}": v for k, v in files.tensors.items() if k.startswith("model.")}
    tensors["refiner.place_embeddings"] = files.tensors["place_embeddings"].astype(np.float16)
    tensors["refiner.lat"] = files.labels["lat"].to_numpy(dtype=np.float64)
    tensors["refiner.lon"] = files.labels["lon"].to_numpy(dtype=np.float64)
    config = {"kind": "gps", "name": files.config.get("name"), "model": files.config["model"],
              "labels": files.config["labels"], "points": len(files.labels), "radius_km": REFINE_RADIUS_KM,
              "places": files.labels[list(POINT_PLACE)].fillna("").astype(str).to_numpy().tolist(),
              "metrics": files.config.get("metrics")}
    return config, tensors


def _check_members(options: FitOptions, runs: int) -> None:
    if not 1 <= options.members <= runs:
        raise GeoscopeError(f"members must be between 1 and the number of runs ({runs}: restarts × search), "
                            f"not {options.members}")
    if options.members > 1 and options.finetune_blocks:
        raise GeoscopeError("members need a frozen encoder: each fine-tuned run has its own encoder top")


def _ensemble(results: list[TrainResult], data: PreparedData, coords: np.ndarray,
              extra: dict[str, TrainingData] | None) -> TrainResult:
    """The kept runs (lowest validation loss first) as one ensemble, measured as one model; the history
    and epoch are the first run's."""
    ensemble = PlaceEnsemble.of([r.model for r in results])
    splits = {"train": data.splits["train"], "val": data.splits["val"], **(extra or {})}
    metrics = measure(ensemble, splits, data.text_features, coords, results[0].config)
    return replace(results[0], model=ensemble, best_val_loss=metrics["val"]["loss"], metrics=metrics)


def _search_keys(config: TrainConfig) -> dict:
    return {"lr": config.lr_head, "weight_decay": config.wd_head, "patience": config.patience,
            "factor": config.factor, "seed": config.seed}


def _training_images(data: PreparedData, adapter: torch.nn.Module, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(A sample of at most ``GALLERY_MAX``) training images: their image features ``(n, dim)`` (float64, the
    plain variant) and the training item each belongs to."""
    train = data.splits["train"]
    rows, items = train.images()
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=min(len(rows), GALLERY_MAX), replace=False))
    return adapt_rows(adapter, train.features, rows[keep]).astype(np.float64), items[keep]


def _references(data: PreparedData, x: np.ndarray, items: np.ndarray, model: Head) -> dict[str, np.ndarray]:
    """What predict compares a photo with, from training images ``x`` (of training ``items``): the PCA-reduced
    kNN gallery, scaled as ``model`` reads the features, and the coverage's typicality test."""
    train = data.splits["train"]
    scale = model.image_scale.double().numpy()
    mean = x.mean(axis=0)
    components = principal_axes((x - mean) / scale, GALLERY_DIM)[1] / scale  # scale, then project: one matrix
    tensors = {
        "gallery.pca_mean": mean.astype(np.float32),
        "gallery.pca_components": components.astype(np.float32),
        "gallery.features": ((x - mean) @ components.T).astype(np.float16),
        "gallery.lat": train.lat[items].astype(np.float64),
        "gallery.lon": train.lon[items].astype(np.float64),
        "gallery.label": train.label[items].astype(np.int32),
    }
    typicality = Typicality.fit(x, coverage_groups(data.label_levels, train.label[items])[1])
    return tensors | (typicality.tensors() if typicality is not None else {})


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


def _answer_parts(data: PreparedData, adapter: torch.nn.Module, model: Head, tensors: dict[str, np.ndarray],
                  expert: LevelExpert | None) -> tuple[Coverage, object, dict | None]:
    """Coverage threshold and confidence calibration, fitted on the validation items (images, or places
    with their views fused and their mean features scored, as predict answers them) with the level expert, and
    how it measured there (:func:`_expert_record`; ``None`` without an expert)."""
    val = data.splits["val"]
    images = adapt_rows(adapter, val.features, np.arange(val.features.shape[1]))  # once: a fine-tuned top is costly
    adapted = replace(val, features=images[None])
    rows, items = val.images()
    x = group_mean(images[rows], items) if len(rows) > len(val) else images[rows]
    with torch.no_grad():
        head = (model.scale() * embed_items(model, torch.nn.Identity(), adapted) @
                torch.as_tensor(tensors["place_embeddings"]).T).numpy().astype(np.float64)
    logits = head + expert.log_probabilities(x) if expert is not None else head
    probabilities = softmax(logits, axis=-1)
    record = _expert_record(expert, softmax(head, axis=-1), probabilities, val, data.labels) \
        if expert is not None else None
    query = (x - tensors["gallery.pca_mean"]) @ tensors["gallery.pca_components"].T
    typicality = Typicality.from_tensors(tensors)
    scores = scores_by_test(x, query, tensors["gallery.features"].astype(np.float32), COVERAGE_K, typicality)
    groups = coverage_groups(data.label_levels, tensors["gallery.label"])[0] if typicality is not None else None
    coverage = Coverage.fit(scores, COVERAGE_KEPT, COVERAGE_K, groups)
    calibration = fit_calibration(probabilities, val.lat, val.lon, data.labels["lat"].to_numpy(),
                                  data.labels["lon"].to_numpy())
    return coverage, calibration, record


def _expert_record(expert: LevelExpert, head: np.ndarray, with_expert: np.ndarray, val: TrainingData,
                   labels: pd.DataFrame) -> dict:
    """The level expert's part of ``config.json``: the validation items' mean GeoScore (of the first guess of
    "The answer") and share of first guesses in the right group, from the head's probabilities alone
    (``head``) and ``with_expert``.

    Not a gate: keeping it only where it scored no worse on validation measured worse on the benchmarks'
    small folds (western USA 315.3 → 328.1 km, Croatia 86.4 → 83.4 km)."""
    lat, lon = labels["lat"].to_numpy(), labels["lon"].to_numpy()
    truth = expert.groups[val.label]
    measured = {}
    for name, p in (("head", head), ("with_expert", with_expert)):
        first = best_guesses(p, lat, lon)
        measured[name] = {"geoscore": float(geoscore(haversine_km(val.lat, val.lon, lat[first], lon[first])).mean()),
                          "right_group": float((expert.groups[first] == truth).mean())}
    return {**expert.to_dict(), "val": measured}


def _bundle_parts(manifest: Manifest, data: PreparedData, options: FitOptions, result: TrainResult,
                  trials: list[dict], command: Sequence[str] | None, refiner: tuple[dict, dict] | None):
    model = result.model
    with torch.no_grad():
        places = model.embed_places(torch.as_tensor(data.text_features)).numpy()
    tensors = {f"model.{k}": v.detach().numpy() for k, v in model.state_dict().items()
               if not is_stored_embedded(k)}
    tensors["place_embeddings"] = places.astype(np.float32)
    if result.image_adapter is not None:
        tensors.update({f"image_top.{k}": v.detach().numpy() for k, v in result.image_adapter.state_dict().items()})
    adapter = result.image_adapter if result.image_adapter is not None else torch.nn.Identity()
    x, items = _training_images(data, adapter, options.train.seed)
    tensors.update(_references(data, x, items, model))
    labels = data.splits["train"].label[items]
    level, groups = splitting_level(data.label_levels, labels)
    expert = LevelExpert.fit(x, labels, groups, level) if options.level_expert and level != "label" else None
    tensors["split.train_sha1"] = data.train_hashes
    coverage, calibration, level_record = _answer_parts(data, adapter, model, tensors, expert)
    if expert is not None:
        tensors.update(expert.tensors())
    if refiner is not None:
        tensors.update(refiner[1])
    centroid = spherical_mean(data.splits["train"].lat, data.splits["train"].lon)
    metrics = result.metrics
    summary = summarize(manifest)
    config = {
        "name": options.name,
        "geoscope_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "image_encoder": options.image_side.to_dict(),
        "text_encoder": None if options.train.head == "gps" else
        {"name": options.text_encoder, "prompt": "a street view photo in {name}, {country}"},
        "model": {"type": "place-clip", "place_clip": model.config.to_dict(),
                  "members": member_count(model)},
        "labels": options.scheme.to_dict(),
        "fusion": model.config.fusion,
        "answer": {"merge_km": MERGE_KM if options.train.head == "gps" else 0.0,
                   "refine": "gps" if refiner is not None else "none"},
        "refiner": refiner[0] if refiner is not None else None,
        "level_expert": level_record,
        "coverage": coverage.to_dict(),
        "calibration": calibration.to_dict(),
        "training": {
            "data": {"images": summary["images"], "places": summary["places"], "bbox": summary["bbox"],
                     "splits": {k: len(v) for k, v in data.splits.items()},
                     "skipped": {"count": len(data.skipped), "first": data.skipped[:SKIPPED_SHOWN]},
                     "leakage": data.leakage, "provenance": options.provenance},
            "config": result.config.to_dict(),
            "augment": "hflip" if options.augment else None,
            "best_epoch": result.best_epoch,
            "batch_size": result.batch_size,
            "search": trials if len(trials) > 1 else None,
            "centroid": list(centroid),
            "command": list(command) if command else None,
            "distributed": result.run,
        },
        "metrics": metrics,
    }
    card = _model_card(options, data, result, metrics, summary, config)
    return config, tensors, data.labels, result.history, card


def _model_card(options: FitOptions, data: PreparedData, result: TrainResult, metrics: dict,
                summary: dict, config: dict) -> str:
    box = summary["bbox"]
    rows = "\n".join(
        f"| {split} | {m['accuracy']:.1%} | {m['mean_km']:.1f} | {m['median_km']:.1f} |"
        for split, m in metrics.items()
    )
    side = options.image_side
    image = (f"`{side.name}` image features (the whole encoder fine-tuned from pixels)" if side.end_to_end else
             f"`{side.name}` image features (its last {side.finetune_blocks} block(s) fine-tuned)"
             if side.finetune_blocks else f"frozen `{side.name}` image features")
    if side.crops > 1:
        image += f" averaged over {side.crops} square crops per image"
    labels = data.labels
    countries = ", ".join(f"{c} ({n})" for c, n in labels.groupby("country")["count"].sum()
                          .sort_values(ascending=False).items())
    coverage = config["coverage"]
    skipped = config["training"]["data"]["skipped"]
    skipped_line = (f"{skipped['count']} unreadable image(s) were skipped, first: "
                    + "; ".join(f"`{line}`" for line in skipped["first"])) if skipped["count"] else \
        "No image was skipped."
    sources = (options.provenance or {}).get("sources") or []
    provenance = "\n".join(f"- {src.get('kind')}: {src.get('location')} — terms: {src.get('terms')}"
                            for src in sources) or "- not recorded (the manifest has no dataset card)"
    leak = data.leakage
    model_fusion = result.model.config.fusion
    gps = result.config.head == "gps"
    places_said = (f"each label's coordinates through a location encoder (GeoCLIP's design; "
                   f"{_LOCATION_SAID[result.config.location]})" if gps else
                   f"`{options.text_encoder}` embeddings of prompts such as \"{prompt(labels['name'].iloc[0])}\"")
    members = member_count(result.model)
    into = ("the image features through one linear map and the places through a projection head into one space"
            if result.config.image_head == "linear" else "each through a projection head into one space")
    heads = f"{into}, in {members} heads trained alike from different seeds whose logits are averaged" \
        if members > 1 else into
    return f"""# {options.name}

A geoscope {"GPS" if gps else "place-name"} CLIP model: {image} and
{places_said},
{heads}; the views of one place are fused by
{_FUSION_SAID[model_fusion]}; it answers with one of {len(labels)}
places ({options.scheme.kind} labels: {options.scheme.to_dict()}), each named after a
gazetteer place where its training images are, with its region and country, and each
answer also sums the probabilities per country and region.

## Where it works
Trained on {len(data.splits['train']):,} of the manifest's {summary['images']:,} images
({summary['places']:,} places) within
lat {box['min_lat']:.2f}…{box['max_lat']:.2f}, lon {box['min_lon']:.2f}…{box['max_lon']:.2f};
training images per country: {countries}.
A photo from anywhere else can only get the most similar of these places: each answer says
`in_coverage: false` when the photo is unlike the training images. Two tests, each ranked among
held-out validation images of the training regions: its mean distance to its {coverage['k']} nearest
training images (tells a street photo from a blank, noisy, rotated or blurred frame) and
{_TYPICALITY_SAID[coverage['groups']]}.
The coverage score is the lower rank; below {coverage['threshold']:.3f} the photo is out of coverage,
which keeps {coverage['kept']:.0%} of the validation images in.
The confidence shown beside the guesses (probability that the top guess is within 25, 200
and 750 km) is calibrated on the validation images.

## Training data
{provenance}

Split: nearest validation image {leak['nearest_train_val_km']:.3f} km and nearest test image
{leak['nearest_train_test_km']:.3f} km from a training image. {skipped_line}

## Measured ({"the ensemble; its first head's best epoch " if members > 1 else "best epoch "}{result.best_epoch})
| split | label accuracy | mean km | median km |
|---|---|---|---|
{rows}

{_refiner_said(config.get("refiner"))}
{_level_expert_said(config.get("level_expert"))}
## Limits
Street-level imagery of the training regions only; one ImageNet backbone.
"""


def _level_expert_said(section: dict | None) -> str:
    """The model card's section on the level expert."""
    if section is None:
        return ("## Level expert\nNone: the head alone decides (trained with `--no-level-expert`, or no level of "
                "the hierarchy above the labels splits them).\n")
    head, both = section["val"]["head"], section["val"]["with_expert"]
    measured = (f"On the validation items the first guesses score a mean GeoScore of {head['geoscore']:.0f} from the "
                f"head alone ({head['right_group']:.1%} in the right {section['level']}) and {both['geoscore']:.0f} "
                f"with the expert ({both['right_group']:.1%})")
    return (f"## Level expert\nA logistic regression over the {section['groups']} {section['level']} groups of the "
            f"labels (standardised image features, C = {section['C']:g}), fitted on the training images, is "
            f"multiplied into every answer: p(label) ∝ p(label | head) · p({section['level']} of the label | probe). "
            f"{measured}.\n")


def _refiner_said(refiner: dict | None) -> str:
    """The model card's section on refinement."""
    if refiner is None:
        return ("## Refinement\nEach guess is its label's medoid, so an error inside a label's area is at least the "
                "distance to it; `--refine knn` moves it to the training images most like the photo.\n")
    return (f"## Refinement\nEach guess is moved to the likeliest point of a GPS head (`{refiner['name']}`, "
            f"{refiner['points']:,} points, trained on the same images) within {refiner['radius_km']:g} km of "
            "its label, and named as the GPS head names that point (PIGEON's hybrid; `--refine gps`, the default; "
            "`--refine none` answers with the label's medoid, `--refine knn` with the most similar training "
            "images).\n")
