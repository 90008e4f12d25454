"""One training loop for every trainable head.

It receives a head (:class:`~geoscope.models.heads.base.TrainableHead`, built and initialised by its
``create``) and never builds one. Inputs are cached encoder features (optionally several augmented
variants of each image), label indices and true coordinates; the loop runs AdamW over the head's
parameter groups (and the fine-tuned encoder top's), the head's loss on each batch, ReduceLROnPlateau
on the validation loss (or a warm-up then cosine decay over the planned steps), early stopping, keeps
the best weights and records per-epoch loss, label accuracy and mean/median km for every split,
measured through the head's logits; in a process group it trains under DistributedDataParallel.
"""

from __future__ import annotations

import copy
import inspect
import itertools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from .. import distributed
from ..errors import GeoscopeError
from ..geo.sphere import haversine_km
from ..models.fusion import FUSIONS
from ..models.heads import TRAINABLE, Batch, TrainableHead
from ..models.losses import haversine_smoothed_targets, soft_cross_entropy
from ..models.place_clip import LOCATIONS
from ..models.projection import IMAGE_HEADS
from . import checkpoint as checkpoints

if TYPE_CHECKING:
    from ..features.pixels import ImagePixels


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (saved with the model)."""

    embed_dim: int = 256
    dropout: float = 0.1
    loss: str = "label"
    """``"clip"``: the seed's symmetric in-batch loss; ``"label"``: softmax over all places."""
    label_smoothing_km: float = 0.0
    """τ of PIGEON's haversine label smoothing (``"label"`` loss only); 0 = one-hot."""
    lr_head: float = 1e-3
    wd_head: float = 1e-4
    lr_image: float = 1e-4
    """For trainable image-encoder layers, when the model fine-tunes some."""
    wd_image: float = 1e-5
    lr_text: float = 1e-3
    """For the place-name (text) projection head."""
    wd_text: float = 1e-4
    batch_size: int = 256
    """Places per step at most: a small training set takes smaller batches (:func:`steps_batch_size`)."""
    min_steps_per_epoch: int = 30
    """Optimiser steps an epoch holds at least, by smaller batches (the default model's 8,214 places in batches
    of 256 take 32): the plateau scheduler and early stopping count epochs (0: batches of ``batch_size``)."""
    max_epochs: int = 60
    schedule: str = "plateau"
    """How the learning rates move: ``plateau``, cut by ``factor`` when the validation loss stalls for ``patience``
    epochs; ``cosine``, a linear warm-up over the first ``warmup`` share of the ``max_epochs`` planned steps, then
    a cosine decay to 0 at the last (a short fine-tuning run of a few epochs)."""
    warmup: float = 0.1
    """Share of the planned steps the ``cosine`` schedule warms up over."""
    patience: int = 2
    """ReduceLROnPlateau patience (epochs without validation improvement before the lr drops)."""
    factor: float = 0.5
    """ReduceLROnPlateau factor."""
    early_stop: int = 8
    """Stop after this many epochs without validation improvement."""
    feature_noise: float = 1.0
    """Std of Gaussian noise added to image features during training, relative to their overall std."""
    learn_place_offsets: bool = True
    """Let every place learn an offset from its name's embedding (names can repeat or say little)."""
    level_weight: float = 0.0
    """Weight of the coarse levels' losses (country, region: probabilities summed over their places)."""
    fusion: str = "mean"
    """How a place's views become one embedding (:data:`geoscope.models.fusion.FUSIONS`)."""
    image_head: str = "projection"
    """What reads the image features: the seed's projection head (linear, GELU, linear, residual, LayerNorm) or
    ``linear``, one linear map (:data:`geoscope.models.projection.IMAGE_HEADS`)."""
    head: str = TRAINABLE[0]
    """Which head (:mod:`geoscope.models.heads`): ``place``, the labels read through their names' text
    embeddings; ``gps``, through a location encoder over their coordinates (GeoCLIP's), so that fine labels (a
    gallery of points) share what they learn."""
    location: str = "geoclip"
    """The GPS head's location encoder: from GeoCLIP's weights and trained, ``geoclip-frozen``, or ``scratch``."""
    view_dropout: float = 0.3
    """Chance that each view of a place is left out of a training step (one is always kept)."""
    average_weights: float = 0.0
    """Decay per step of an exponential moving average of the weights, which is measured, early-stopped and
    kept instead of the last weights (0: off): it smooths the epoch-to-epoch jitter of a fast-learning head."""
    seed: int = 0

    LOSSES = ("clip", "label")
    SCHEDULES = ("plateau", "cosine")
    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {"loss": LOSSES, "fusion": FUSIONS, "head": TRAINABLE,
                                                     "location": LOCATIONS, "image_head": tuple(IMAGE_HEADS),
                                                     "schedule": SCHEDULES}
    """The fields that take one of a few names."""

    def __post_init__(self) -> None:
        """Refuse, in one line, a setting no training run can use."""
        for name, choices in self.CHOICES.items():
            if getattr(self, name) not in choices:
                raise GeoscopeError(f"{name} must be one of {', '.join(choices)}, not {getattr(self, name)!r}")
        positive = ("embed_dim", "lr_head", "lr_image", "lr_text", "batch_size", "max_epochs", "early_stop")
        at_least_zero = ("wd_head", "wd_image", "wd_text", "patience", "feature_noise", "label_smoothing_km",
                         "level_weight", "min_steps_per_epoch")
        for name in positive + at_least_zero:
            value = getattr(self, name)
            if not (math.isfinite(value) and (value > 0 if name in positive else value >= 0)):
                need = "greater than 0" if name in positive else "0 or more"
                raise GeoscopeError(f"{name} must be a finite number {need}, not {value!r}")
        for name in ("dropout", "view_dropout", "average_weights", "warmup"):
            if not 0 <= getattr(self, name) < 1:
                raise GeoscopeError(f"{name} must be in [0, 1), not {getattr(self, name)!r}")
        if not 0 < self.factor < 1:
            raise GeoscopeError(f"factor (the learning-rate cut on a plateau) must be in (0, 1), not {self.factor!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainingData:
    """Features and targets of one split: items (an image, or the views of one place) and their images.

    ``features`` has shape ``(variants, images, dim)``: variant 0 is the plain image, others are
    augmented copies (flips, crops) of the same images; training samples one per step.
    ``views`` ``(items, V)`` lists each item's image rows (−1 where it has fewer than V) and
    ``headings`` their compass headings (NaN unknown); without them every image is an item.
    ``label``, ``lat`` and ``lon`` are per item.
    """

    features: np.ndarray | ImagePixels
    """Cached encoder outputs, or the images themselves read per batch (``--finetune-blocks all``)."""
    label: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    views: np.ndarray | None = None
    headings: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.features.ndim == 2:
            self.features = self.features[None]
        if self.views is None:
            self.views = np.arange(self.features.shape[1])[:, None]
        if self.headings is None:
            self.headings = np.full(self.views.shape, np.nan)
        if not (len(self.label) == len(self.lat) == len(self.lon) == len(self.views)):
            raise ValueError("labels, coordinates and items must have the same number of rows")

    def __len__(self) -> int:
        return len(self.views)

    def images(self) -> tuple[np.ndarray, np.ndarray]:
        """Every image row of the items once, and the first item holding it (for per-image measures)."""
        present = self.views >= 0
        rows, first = np.unique(self.views[present], return_index=True)
        return rows, np.nonzero(present)[0][first]


@dataclass
class TrainResult:
    """The best head found, how it was found, and the per-epoch history."""

    head: TrainableHead
    config: TrainConfig
    best_epoch: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    """The kept model's loss, label accuracy and mean/median km per split (``train``, ``val``, …)."""
    image_adapter: nn.Module | None = None
    """The trained image-side layers (fine-tuned encoder top), when there were any."""
    run: dict | None = None
    """How it ran: ``world_size``, ``backend`` and every rank's device (:meth:`geoscope.distributed.Run.describe`)."""
    batch_size: int | None = None
    """Places per step it trained with (:func:`steps_batch_size`)."""
    seconds: float = 0.0
    """Wall-clock time of its epochs (training and measurement), summed over the processes a resumed run took."""


class _Step(nn.Module):
    """What one training step runs forward, cached inputs → image side → head (DDP wraps this module)."""

    def __init__(self, head: TrainableHead, adapter: nn.Module) -> None:
        super().__init__()
        self.head = head
        self.adapter = adapter

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor, noise: float,
                loss: str) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.head(self.adapter(inputs), mask, headings, noise, loss)


def _param_groups(head: TrainableHead, config: TrainConfig, image_adapter: nn.Module | None) -> list[dict]:
    groups = head.parameter_groups(config)
    if image_adapter is not None:
        trainable = [p for p in image_adapter.parameters() if p.requires_grad]
        if trainable:
            groups.append({"name": "image", "params": trainable,
                           "lr": config.lr_image, "weight_decay": config.wd_image})
    return groups


_CPU = torch.device("cpu")
_SINGLE = distributed.Run()


MIN_BATCH_SIZE = 16
"""The smallest batch :func:`steps_batch_size` takes to give an epoch more steps."""


def steps_batch_size(batch_size: int, items: int, min_steps: int) -> int:
    """The batch size for ``items`` training places: ``batch_size``, smaller where that would leave fewer than
    ``min_steps`` steps an epoch, never below :data:`MIN_BATCH_SIZE` (nor above ``batch_size``).

    Measured on western USA (570 training places, 5-fold, one head): batches of 256 (3 steps an epoch)
    362.6 km median error over three seeds, batches of 19 (this rule) 345.4 km; Croatia level (batches of 16).
    """
    if min_steps <= 0:
        return batch_size
    return min(batch_size, max(MIN_BATCH_SIZE, items // min_steps))


class _Resumable:
    """Where a run's state is written at the end of each epoch (nowhere without a path) and read back from.

    Rank 0 writes the file; every rank's random generators go in it (gathered), and each reads back its own."""

    def __init__(self, path: str | os.PathLike[str] | None, fingerprint: str, run: distributed.Run,
                 device: torch.device) -> None:
        self.path, self.fingerprint, self.run, self.device = path, fingerprint, run, device
        self.warned = False

    def load(self) -> dict | None:
        return checkpoints.load(self.path, self.fingerprint) if self.path is not None else None

    def save(self, epoch: int, done: bool, best: tuple, history: list[dict], stale: int, seconds: float,
             trained: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object, averaged: AveragedModel | None,
             rng: np.random.Generator) -> None:
        if self.path is None:
            return
        rngs = checkpoints.rng_state(rng, self.device)
        rngs = distributed.all_gather_object(rngs) if self.run.distributed else [rngs]
        if not self.run.main:
            return
        try:
            checkpoints.save(self.path, {
                "fingerprint": self.fingerprint, "epoch": epoch, "done": done, "history": history, "stale": stale,
                "seconds": seconds,
                "best_loss": best[0], "best_epoch": best[1], "best_head": best[2], "best_adapter": best[3],
                "trained": trained.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "averaged": averaged.state_dict() if averaged is not None else None, "rng": rngs,
            })
        except GeoscopeError as exc:  # the state is a few times the bundle's size: training goes on without it
            if not self.warned:
                tqdm.write(f"geoscope: warning: {exc}; training goes on, but a stop from here resumes from the "
                           "last epoch kept, if any", file=sys.stderr)  # on a line of its own, not the bar's
                self.warned = True

    def restore(self, state: dict, trained: nn.Module, optimizer: torch.optim.Optimizer, scheduler: object,
                averaged: AveragedModel | None, rng: np.random.Generator) -> tuple[int, bool, tuple, list, int, float]:
        """Load ``state`` into the run's modules, optimiser, scheduler and generators; returns the first epoch to
        run, whether the run had finished, the best weights so far, the history, the early-stopping count and
        the seconds its epochs took so far."""
        trained.load_state_dict(state["trained"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if averaged is not None:
            averaged.load_state_dict(state["averaged"])
        checkpoints.set_rng_state(rng, state["rng"][self.run.rank], self.device)
        best = (state["best_loss"], state["best_epoch"], state["best_head"], state["best_adapter"])
        return state["epoch"] + 1, state["done"], best, state["history"], state["stale"], state.get("seconds", 0.0)


def _fingerprint(head: TrainableHead, train: TrainingData, val: TrainingData,
                 extra: dict[str, TrainingData] | None, label_coords: np.ndarray, label_levels: np.ndarray | None,
                 config: TrainConfig, adapter: nn.Module | None, standardize: bool, run: distributed.Run) -> str:
    """What makes two runs the same run: the head's kind and size, the settings, the world size and every split's
    labels, coordinates and image rows (the features themselves are the encoder's: not read again)."""
    splits = {"train": train, "val": val, **(extra or {})}
    arrays = [np.asarray(label_coords, dtype=np.float64),
              *([np.asarray(label_levels)] if label_levels is not None else [])]
    for data in splits.values():
        arrays += [np.asarray(data.label), np.asarray(data.lat), np.asarray(data.lon), data.views,
                   np.asarray(data.features.shape)]
    shapes = {k: list(v.shape) for k, v in head.state_dict().items()}
    adapter_shapes = {k: list(v.shape) for k, v in adapter.state_dict().items()} if adapter is not None else None
    return checkpoints.fingerprint(config.to_dict(), arrays,
                                   [head.kind, shapes, adapter_shapes, standardize, list(splits), run.world_size])


def train(
    head: TrainableHead,
    train: TrainingData,
    val: TrainingData,
    label_coords: np.ndarray,
    config: TrainConfig,
    *,
    image_adapter: nn.Module | None = None,
    standardize_features: bool = False,
    extra_splits: dict[str, TrainingData] | None = None,
    label_levels: np.ndarray | None = None,
    progress: bool = True,
    on_epoch: Callable[[int, TrainableHead], None] | None = None,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> TrainResult:
    """Train ``head`` (fresh from its ``create``, which drew its weights from ``config.seed``) on cached
    features; returns the best (lowest val loss) weights, loaded into it.

    ``label_coords`` holds each label's ``(lat, lon)``. ``image_adapter`` (optional) maps the cached
    inputs to image features and may hold trainable encoder layers, trained in the ``image``
    parameter group. ``standardize_features`` standardises the image features per dimension (for
    encoders that mix scales). ``extra_splits`` (e.g. ``test``) are only measured.
    ``label_levels`` ``(levels, places)`` gives each place's group at coarser levels (country,
    region); with ``config.level_weight`` > 0 the loss also scores the summed probability of
    the true group at each level, so "which country" is learned as such. ``device`` is a torch
    device (default CPU); the returned head is on the CPU.

    With ``checkpoint`` (a file path) the run's whole state is written there, atomically, at the end of every
    epoch (:mod:`.checkpoint`); started again with the same head, settings and data, it continues from the
    epoch after the one written and ends as the uninterrupted run would (a run already finished is read back,
    not trained again); a checkpoint of another run raises :class:`GeoscopeError`. The caller removes the file
    once it has kept the result.

    In a process group (``torchrun``, :func:`geoscope.distributed.start`) every rank passes the
    same data: each epoch's permutation is drawn alike on every rank, rank ``r`` trains on
    rows ``r, r + W, …`` of each batch (:func:`steps_batch_size`; DistributedSampler's share,
    so the ranks together see the batches one process would), gradients are averaged by
    DistributedDataParallel and weighted so that they equal one process's; the measurements
    are split over the ranks and gathered, so every rank takes the same scheduler and early-stop
    decisions. Only rank 0 shows progress.
    """
    if not head.trainable:
        raise GeoscopeError(f"the {head.kind} head is not trained")
    run = distributed.current(str(device or "cpu"))
    device = torch.device(device or "cpu")
    adapter = (image_adapter if image_adapter is not None else nn.Identity()).to(device)
    sample = _training_features(train, adapter, device)
    model = head.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, config, image_adapter))
    coords = torch.tensor(np.asarray(label_coords), dtype=torch.float64).to(device)
    groups = [g.to(device) for g in _level_matrices(label_levels, len(label_coords))] if config.level_weight > 0 \
        else []
    if standardize_features:
        model.set_image_statistics(sample)
    noise = config.feature_noise * float(model.standardize(sample).std())
    splits = {"train": _measured_sample(train, config.seed), "val": val, **(extra_splits or {})}
    step = _Step(model, adapter)
    trained = nn.ModuleList([model, adapter])
    averaged = _averaged(trained, config.average_weights)
    measured, measured_adapter = averaged.module if averaged is not None else trained
    if run.distributed:
        step = _data_parallel(step, device, config.seed + 7919 * run.rank)

    best = (math.inf, -1, None, None)
    history: list[dict] = []
    stale = 0
    rng = np.random.default_rng(config.seed)
    batch_size = steps_batch_size(config.batch_size, len(train), config.min_steps_per_epoch)
    steps = sum(1 for _ in _epoch_batches(np.arange(len(train)), batch_size))
    scheduler = _scheduler(optimizer, config, config.max_epochs * steps)
    resumable = _Resumable(checkpoint, _fingerprint(model, train, val, extra_splits, label_coords, label_levels,
                                                    config, image_adapter, standardize_features, run), run, device)
    first, done, seconds = 1, False, 0.0
    if (state := resumable.load()) is not None:
        first, done, best, history, stale, seconds = resumable.restore(state, trained, optimizer, scheduler,
                                                                       averaged, rng)
        if progress and run.main:
            print(f"resuming from epoch {first}" if not done else "resuming: the run had finished", file=sys.stderr)
    epochs = tqdm(range(first, config.max_epochs + 1 if not done else first), desc="training", unit="epoch",
                  initial=first - 1, total=config.max_epochs, disable=not (progress and run.main))
    for epoch in epochs:
        started = time.perf_counter()
        step.train()
        for idx in _epoch_batches(rng.permutation(len(train)), batch_size):
            variant = rng.integers(0, train.features.shape[0], size=len(idx))
            seen = _drop_views(train.views[idx] >= 0, config.view_dropout, rng)
            loss = _loss(step, model, train, idx, variant, seen, coords, config, noise, groups, run, device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if config.schedule == "cosine":
                scheduler.step()
            if averaged is not None:
                averaged.update_parameters(trained)

        records = [
            {"epoch": epoch, "split": name,
             **_measure(measured, measured_adapter, data, coords, config, run, device)}
            for name, data in splits.items()
        ]
        history.extend(records)
        val_loss = next(r["loss"] for r in records if r["split"] == "val")
        if config.schedule == "plateau":
            scheduler.step(val_loss)
        epochs.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{records[1]['accuracy']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, measured)
        if val_loss < best[0] - 1e-4:
            best = (val_loss, epoch, copy.deepcopy(measured.state_dict()),
                    copy.deepcopy(measured_adapter.state_dict()))
            stale = 0
        else:
            stale += 1
        done = stale >= config.early_stop or epoch == config.max_epochs
        seconds += time.perf_counter() - started
        resumable.save(epoch, done, best, history, stale, seconds, trained, optimizer, scheduler, averaged, rng)
        if done:
            break
    model.load_state_dict(best[2])
    adapter.load_state_dict(best[3])
    model.cpu().eval()
    adapter.cpu().eval()
    metrics = {r["split"]: {k: v for k, v in r.items() if k not in {"epoch", "split"}}
               for r in history if r["epoch"] == best[1]}
    return TrainResult(model, config, best[1], best[0], history, metrics, image_adapter, run.describe(), batch_size,
                       seconds)


PIXEL_MEASURE = 1024
"""Training items measured each epoch when the inputs are images decoded on demand (a fixed sample: the
whole split would cost as much as a third of an epoch's training)."""


def _measured_sample(data: TrainingData, seed: int) -> TrainingData:
    """``data`` itself over cached features; over images read on demand, a fixed sample of
    :data:`PIXEL_MEASURE` of its items (their image rows untouched)."""
    if isinstance(data.features, np.ndarray) or len(data) <= PIXEL_MEASURE:
        return data
    items = np.sort(np.random.default_rng(seed).choice(len(data), PIXEL_MEASURE, replace=False))
    return TrainingData(data.features, data.label[items], data.lat[items], data.lon[items], data.views[items],
                        data.headings[items])


def _epoch_batches(order: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """An epoch's batches over the items in ``order``: ``batch_size`` at a time, a last batch of one left out."""
    for start in range(0, len(order), batch_size):
        if len(order) - start >= 2:
            yield order[start : start + batch_size]


def _scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
               steps: int) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau:
    """The learning-rate schedule of ``config.schedule``: stepped each epoch on the validation loss
    (``plateau``) or each of the ``steps`` planned optimiser steps (``cosine``, warm-up then cosine decay)."""
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=config.factor,
                                                          patience=config.patience)
    warm = max(1, round(config.warmup * steps)) if config.warmup > 0 else 0

    def share(step: int) -> float:  # of each group's learning rate, before optimiser step ``step + 1``
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, share)


def _averaged(trained: nn.ModuleList, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the trained modules' weights (and buffers), or ``None`` (decay 0)."""
    if decay <= 0:
        return None
    return AveragedModel(trained, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _data_parallel(step: _Step, device: torch.device, seed: int) -> nn.Module:
    """``step`` under DistributedDataParallel; each rank then draws its own dropout and noise."""
    for parameter in step.parameters():
        if parameter.numel() == 0:  # an empty table of place offsets takes no part in the loss
            parameter.requires_grad_(False)
    # the buffers (frozen batch-norm statistics, the feature scaling) are alike on every rank and never change
    quiet = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    wrapped = DistributedDataParallel(step, device_ids=[device.index] if device.type == "cuda" else None,
                                      **{quiet: False})
    # convolutions on random windows (channels-last views) give gradients in another layout than their weights:
    # DDP copies them into its buckets, which costs little; its warning says nothing the user can act on
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    torch.manual_seed(seed)
    return wrapped


@torch.no_grad()
def _training_features(train: TrainingData, adapter: nn.Module, device: torch.device = _CPU,
                       limit: int = 4096) -> torch.Tensor:
    """Image features the head sees, for (a sample of at most ``limit``) training rows."""
    adapter.eval()
    if not isinstance(train.features, np.ndarray):  # images decoded for this: a smaller sample
        limit = min(limit, 512)
    sample = np.sort(np.random.default_rng(0).permutation(train.features.shape[1])[:limit])
    return torch.cat([adapter(torch.as_tensor(train.features[0, sample[i : i + 64]], dtype=torch.float32).to(device))
                      for i in range(0, len(sample), 64)])


def _level_matrices(label_levels: np.ndarray | None, n_places: int) -> list[torch.Tensor]:
    """One ``(places, groups)`` membership matrix per coarse level (levels with one group are skipped)."""
    if label_levels is None:
        return []
    out = []
    for level in np.atleast_2d(label_levels):
        codes = np.unique(level, return_inverse=True)[1].ravel()
        if codes.max() > 0:
            out.append(torch.nn.functional.one_hot(torch.as_tensor(codes), int(codes.max()) + 1).float())
    assert all(m.shape[0] == n_places for m in out)
    return out


def _drop_views(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """``present`` ``(B, V)`` with each view left out at ``rate``, one kept per item whatever the draw."""
    if rate <= 0 or present.shape[1] == 1:
        return present
    kept = present & (rng.random(present.shape) >= rate)
    lost = ~kept.any(axis=1)
    if lost.any():  # keep one of the views each of these had, at random
        pick = np.argmax(present[lost] * rng.random((int(lost.sum()), present.shape[1])), axis=1)
        kept[np.flatnonzero(lost), pick] = True
    return kept


def _view_inputs(data: TrainingData, items: np.ndarray, seen: np.ndarray, variant: np.ndarray | int,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The features of the views ``seen`` ``(B, V)`` of ``items`` (their ``variant``), the mask and the headings."""
    rows = data.views[items][seen]
    variants = np.broadcast_to(np.asarray(variant)[..., None], seen.shape)[seen] if np.ndim(variant) else variant
    inputs = torch.as_tensor(data.features[variants, rows], dtype=torch.float32).to(device)
    headings = torch.as_tensor(data.headings[items], dtype=torch.float32).to(device)
    return inputs, torch.as_tensor(seen).to(device), headings


def _loss(
    step: nn.Module, head: TrainableHead, data: TrainingData, idx: np.ndarray, variant: np.ndarray,
    seen: np.ndarray, coords: torch.Tensor, config: TrainConfig, noise: float = 0.0,
    groups: Sequence[torch.Tensor] = (), run: distributed.Run = _SINGLE, device: torch.device = _CPU,
) -> torch.Tensor:
    """The head's loss on one batch ``idx`` (with its augmented variants and the views ``seen``), on this
    rank's share of it.

    Whatever the world size, the gradient (after DDP averages it) is that of the whole batch.
    """
    mine = np.arange(run.rank, len(idx), run.world_size)
    weight = len(mine) * run.world_size / len(idx)
    if not len(mine) and config.loss == "label":  # fewer rows than ranks: one row weighted 0 keeps this rank in
        mine, weight = np.zeros(1, dtype=np.int64), 0.0  # the all-reduce (the clip loss gathers empty shares)
    inputs, mask, headings = _view_inputs(data, idx[mine], seen[mine], variant[mine], device)
    rows = idx[mine]
    batch = Batch(inputs, mask, headings, torch.as_tensor(data.label[rows], dtype=torch.long).to(device),
                  torch.as_tensor(data.lat[rows]).to(device), torch.as_tensor(data.lon[rows]).to(device), coords,
                  groups)
    if run.distributed:  # the in-batch negatives of the clip loss are the whole batch's, gathered from every rank
        shares = [np.arange(r, len(idx), run.world_size) for r in range(run.world_size)]
        batch.weight = weight
        batch.all_labels = torch.as_tensor(data.label[idx[np.concatenate(shares)]], dtype=torch.long).to(device)
        batch.gather = lambda local: distributed.gather_rows(local, [len(s) for s in shares])
    return head.loss(step, batch, config, noise)


@torch.no_grad()
def embed_items(head: TrainableHead, adapter: nn.Module, data: TrainingData, items: np.ndarray | None = None,
                device: torch.device = _CPU, chunk: int = 2048) -> torch.Tensor:
    """Unit embeddings of ``items`` (default all) of ``data``, every view they have fused."""
    head.eval()
    adapter.eval()
    items = np.arange(len(data)) if items is None else items
    out = []
    for start in range(0, len(items), chunk):
        idx = items[start : start + chunk]
        inputs, mask, headings = _view_inputs(data, idx, data.views[idx] >= 0, 0, device)
        out.append(head.embed_views(adapter(inputs), mask, headings))
    return torch.cat(out) if out else torch.zeros((0, head.embedding_dim), device=device)


def measure(head: TrainableHead, splits: dict[str, TrainingData], label_coords: np.ndarray,
            config: TrainConfig) -> dict[str, dict]:
    """A trained head's (or ensemble's) loss, label accuracy and mean/median km on each split, as the loop
    measures them, on cached features that need no adapter."""
    coords = torch.tensor(np.asarray(label_coords), dtype=torch.float64)
    return {name: _measure(head, nn.Identity(), data, coords, config) for name, data in splits.items()}


@torch.no_grad()
def _measure(
    head: TrainableHead, adapter: nn.Module, data: TrainingData, coords: torch.Tensor, config: TrainConfig,
    run: distributed.Run = _SINGLE, device: torch.device = _CPU,
) -> dict:
    """Loss, label accuracy and mean/median km of one split, through the head's logits; in a process group
    each rank measures a slice and every rank combines all slices alike."""
    head.eval()  # the candidates too are measured without dropout
    places = head.candidates()
    losses, predictions = [], []
    rows = np.array_split(np.arange(len(data)), run.world_size)[run.rank]
    for start in range(0, len(rows), 2048):
        idx = rows[start : start + 2048]
        logits = head.logits(embed_items(head, adapter, data, idx, device), places)
        labels = torch.as_tensor(data.label[idx], dtype=torch.long).to(device)
        targets = haversine_smoothed_targets(
            labels, torch.as_tensor(data.lat[idx]).to(device), torch.as_tensor(data.lon[idx]).to(device),
            coords[:, 0], coords[:, 1], config.label_smoothing_km if config.loss == "label" else 0.0,
        ).float()
        losses.append(float(soft_cross_entropy(logits, targets)) * len(idx))
        predictions.append(logits.argmax(dim=1).cpu().numpy())
    if run.distributed:
        gathered = distributed.all_gather_object((losses, predictions))
        losses = [v for part, _ in gathered for v in part]
        predictions = [p for _, part in gathered for p in part]
    predicted = np.concatenate(predictions)
    place_coords = coords.cpu().numpy()
    km = haversine_km(data.lat, data.lon, place_coords[predicted, 0], place_coords[predicted, 1])
    return {
        "loss": sum(losses) / len(data),
        "accuracy": float((predicted == data.label).mean()),
        "mean_km": float(km.mean()),
        "median_km": float(np.median(km)),
    }


def search_grid(
    base: TrainConfig,
    *,
    lrs: Sequence[float] = (3e-4, 1e-3, 3e-3),
    weight_decays: Sequence[float] = (1e-4, 1e-2),
    patiences: Sequence[int] = (1, 3),
    factors: Sequence[float] = (0.5, 0.2),
) -> list[TrainConfig]:
    """The seed's small search: learning rates × weight decays × plateau patience × factor."""
    return [
        replace(base, lr_head=lr, lr_text=lr, wd_head=wd, wd_text=wd, patience=p, factor=f)
        for lr, wd, p, f in itertools.product(lrs, weight_decays, patiences, factors)
    ]
