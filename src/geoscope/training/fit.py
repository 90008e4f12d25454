"""From a manifest to a model bundle: manifest → data → training → stages.

:func:`prepare` turns the manifest into labelled, featurised splits (:mod:`.data`); each run trains a
head of the kind ``--head`` names, built by the head itself (:mod:`geoscope.models.heads`), in the one
loop (:mod:`.loop`); the best runs are kept; the stages fitted after training (:mod:`.stages`) and the
model card (:mod:`.model_card`) make the bundle (:func:`geoscope.bundle.assemble`).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .. import distributed
from ..bundle import assemble, read_bundle, save_bundle
from ..bundle.refiner import PointsRefiner
from ..data.manifest import Manifest
from ..errors import GeoscopeError
from ..models.heads import TrainableHead, trainable_head
from .data import PreparedData, prepare
from .loop import TrainConfig, TrainingData, TrainResult, measure, search_grid, train
from .model_card import model_card
from .options import FitOptions
from .stages import stages

__all__ = ["FitOptions", "fit"]


def fit(manifest: Manifest, options: FitOptions, out_dir: str | os.PathLike[str], *,
        progress: bool = True, command: Sequence[str] | None = None,
        checkpoints: str | os.PathLike[str] | None = None) -> tuple[Path, TrainResult]:
    """Train a model of the head ``options.train.head`` names on ``manifest`` and save it as a bundle in
    ``out_dir``.

    With ``checkpoints`` (a folder) each training run writes its state there at the end of every epoch
    (``run-<i>.pt``) and, called again alike, resumes from it (:func:`~.loop.train`); the caller removes the
    folder once it has what it needs.

    Under torchrun every rank calls this alike; rank 0 alone prints and writes the bundle.
    """
    main = distributed.current().main
    progress = progress and main
    head = trainable_head(options.train.head)
    configs = [replace(config, seed=config.seed + restart)
               for config in (search_grid(options.train) if options.search else [options.train])
               for restart in range(options.restarts)]
    _check_members(options, len(configs))
    refiner = PointsRefiner.from_bundle(read_bundle(options.refiner), options.image_side.to_dict()) \
        if options.refiner is not None else None  # refused before hours of work
    started = time.perf_counter()
    data = prepare(manifest, options, head, progress=progress)
    prepared = time.perf_counter() - started
    if refiner is not None:
        refiner.check_trained_on(data.train_hashes)
    extra = {"test": data.splits["test"]} if "test" in data.splits else None
    results = []
    for i, config in enumerate(configs, 1):
        if len(configs) > 1 and progress:
            print(f"run {i}/{len(configs)}: lr {config.lr_head:g}, wd {config.wd_head:g}, "
                  f"patience {config.patience}, factor {config.factor:g}, seed {config.seed}", file=sys.stderr)
        saved = Path(checkpoints) / f"run-{i}.pt" if checkpoints is not None else None
        results.append(_run(head, config, data, options, extra, progress, saved))
    after = time.perf_counter()
    ranked = sorted(range(len(results)), key=lambda i: results[i].best_val_loss)
    kept = ranked[: options.members]
    trials = [{**_search_keys(r.config), "val_loss": r.best_val_loss, "epoch": r.best_epoch, "kept": i in kept}
              for i, r in enumerate(results)]
    best = results[kept[0]] if len(kept) == 1 else _ensemble(head, [results[i] for i in kept], data, extra)
    best.head.fix_candidates()
    if not main:
        return Path(out_dir), best
    config, tensors = assemble(stages(manifest, data, options, best, trials, command, refiner))
    config["training"]["seconds"] = {"data": round(prepared, 1), "runs": [round(r.seconds, 1) for r in results],
                                     "stages": round(time.perf_counter() - after, 1),
                                     "cores": distributed.cores_per_process()}
    card = model_card(config, data.labels)
    return save_bundle(out_dir, config, tensors, data.labels, best.history, card), best


def _run(head: type[TrainableHead], config: TrainConfig, data: PreparedData, options: FitOptions,
         extra: dict[str, TrainingData] | None, progress: bool, checkpoint: Path | None = None) -> TrainResult:
    """One training run: a fresh head from the run's seed, trained in the loop."""
    adapter = options.image_side.adapter() if options.finetune_blocks else None
    fresh = head.create(config, data.image_dim(adapter), data.candidate_inputs)
    return train(fresh, data.splits["train"], data.splits["val"], data.label_coords, config, image_adapter=adapter,
                 standardize_features=options.image_side.mixed_scales, extra_splits=extra,
                 label_levels=data.label_levels, progress=progress, device=options.device, checkpoint=checkpoint)


def _check_members(options: FitOptions, runs: int) -> None:
    if not 1 <= options.members <= runs:
        raise GeoscopeError(f"members must be between 1 and the number of runs ({runs}: restarts × search), "
                            f"not {options.members}")
    if options.members > 1 and options.finetune_blocks:
        raise GeoscopeError("members need a frozen encoder: each fine-tuned run has its own encoder top")


def _ensemble(head: type[TrainableHead], results: list[TrainResult], data: PreparedData,
              extra: dict[str, TrainingData] | None) -> TrainResult:
    """The kept runs (lowest validation loss first) as one head, measured as one model; the history
    and epoch are the first run's."""
    ensemble = head.ensemble([r.head for r in results])
    splits = {"train": data.splits["train"], "val": data.splits["val"], **(extra or {})}
    metrics = measure(ensemble, splits, data.label_coords, results[0].config)
    return replace(results[0], head=ensemble, best_val_loss=metrics["val"]["loss"], metrics=metrics)


def _search_keys(config: TrainConfig) -> dict:
    return {"lr": config.lr_head, "weight_decay": config.wd_head, "patience": config.patience,
            "factor": config.factor, "seed": config.seed}
