"""From a manifest to training data: split, labels, cached image features, what the head reads of each label."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ..data.manifest import Manifest, place_ids
from ..data.split import leakage_report, split_manifest
from ..encoders.onnx_runtime import onnx_device
from ..errors import GeoscopeError
from ..features.cache import hash_files
from ..geo.labels import assign_labels, make_labels
from ..models.fusion import group_views
from ..models.heads import TrainableHead
from ..models.image_side import adapt_rows
from .loop import TrainingData
from .options import FitOptions

SKIPPED_SHOWN = 5
"""Unreadable images named in the progress line and in ``config.json``."""


@dataclass
class PreparedData:
    """Labelled, featurised splits ready for training (:func:`geoscope.training.loop.train`)."""

    splits: dict[str, TrainingData]
    labels: pd.DataFrame
    candidate_inputs: np.ndarray
    """What the head reads of each label (:meth:`~geoscope.models.heads.base.TrainableHead.candidate_inputs`)."""
    skipped: list[str]
    leakage: dict
    train_hashes: np.ndarray
    """SHA-1 of every training image's bytes, ``(n, 20)`` uint8: evaluate flags these rows."""
    train_images: list[str] | None = None
    """The manifest's ``image`` of each image row of the training split (its features' rows), as the manifest gives
    it: relative to the manifest's folder, or absolute."""

    @property
    def label_levels(self) -> np.ndarray:
        """Each label's country and region, as group codes ``(2, labels)``."""
        country = self.labels.get("country_code", pd.Series([""] * len(self.labels))).astype(str)
        region = country + "|" + self.labels.get("region", pd.Series([""] * len(self.labels))).astype(str)
        return np.stack([pd.factorize(country)[0], pd.factorize(region)[0]])

    @property
    def label_coords(self) -> np.ndarray:
        """Each label's ``(lat, lon)``."""
        return self.labels[["lat", "lon"]].to_numpy()

    def image_dim(self, adapter: torch.nn.Module | None) -> int:
        """How many image features the head reads: the cached features' width, or what ``adapter`` makes of them."""
        train = self.splits["train"]
        if adapter is None:
            return int(train.features.shape[2])
        return int(adapt_rows(adapter, train.features, np.arange(1)).shape[1])


def with_split(manifest: Manifest, options: FitOptions) -> Manifest:
    """``manifest`` as training splits it: its own ``split`` column, else 1 km blocks (val 10 %, test 10 %)
    from the run's seed, the same every time for the same options."""
    if "split" in manifest.frame:
        return manifest
    frame = split_manifest(manifest.frame, by="block", block_km=options.block_km, val=0.1, test=0.1,
                           seed=options.train.seed, gap_km=options.gap_km)
    return Manifest(frame, manifest.root)


def prepare(manifest: Manifest, options: FitOptions, head: type[TrainableHead], *,
            progress: bool = True) -> PreparedData:
    """Split if needed, label the rows, extract (cached) image features and what ``head`` reads of each label."""
    split = with_split(manifest, options)
    if progress and split is not manifest:
        print(f"split by {options.block_km:g} km blocks (val 10 %, test 10 %, seed {options.train.seed}; "
              f"training images within {options.gap_km:g} km of them left out)", file=sys.stderr)
    manifest, frame = split, split.frame
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
    candidate_inputs = head.candidate_inputs(labels, options.text_encoder)

    ids = np.full(len(frame), -1, dtype=np.int64)
    ids[train_mask] = train_ids
    others = ~train_mask & valid
    values = frame[options.scheme.params["column"]][others] if options.scheme.kind == "column" else None
    ids[others] = assign_labels(frame["lat"].to_numpy()[others], frame["lon"].to_numpy()[others], labels,
                                options.scheme, values)
    splits: dict[str, TrainingData] = {}
    by_place = options.train.fusion != "mean"  # a learned fusion trains on places, the mean on single images
    train_images = None
    for name in ("train", "val", "test"):
        rows = (frame["split"] == name).to_numpy() & valid & (ids >= 0)
        if rows.any():
            splits[name] = _training_data(frame[rows], inputs[:, rows], ids[rows], by_place,
                                          with_images=name == "train")
        if name == "train":
            train_images = [str(p) for p in frame["image"][rows]]
    if "val" not in splits:
        raise GeoscopeError("the validation split has no labelled image: use a larger --val fraction")
    train_paths = [p for p, ok in zip(manifest.image_paths, train_mask, strict=True) if ok]
    digests = [d for d in hash_files(train_paths)[0] if d is not None]
    hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), -1)
    return PreparedData(splits, labels, candidate_inputs, errors, leakage, hashes, train_images)


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
