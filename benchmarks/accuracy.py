"""Accuracy targets of the place model, measured by cross-validation on ../shared/data.

Each task trains through the same path users run (``fit`` → bundle → ``evaluate``) on
k−1 folds and measures the held-out fold, then prints one table: model beside the
training-centroid and kNN baselines. Run: ``python benchmarks/accuracy.py [--folds 5]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from geoscope.data.manifest import Manifest, read_manifest
from geoscope.data.split import kfold
from geoscope.evaluate import evaluate
from geoscope.fit import FitOptions, fit
from geoscope.labels import LabelScheme
from geoscope.predict import load_model
from geoscope.results import CENTROID, KNN, MODEL
from geoscope.train import TrainConfig

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class Task:
    name: str
    sets: tuple[str, ...]
    scheme: LabelScheme
    by: str
    block_km: float = 1.0
    goal: str = ""
    smoothing_km: float = 0.0
    crops: int = 1


TASKS = (
    Task("which London (UK vs Ontario), label accuracy", ("london-uk", "london-on"),
         LabelScheme("column", {"column": "city"}), "block", 1.0, "≥ 97%"),
    Task("London UK, spatial 5-fold, median km", ("london-uk",),
         LabelScheme("grid", {"cell_km": 5.0}), "block", 1.0, "≤ 12 km", 5.0),
    Task("western USA, 3 views fused, median km / 40-cell accuracy", ("us-west",),
         LabelScheme("column", {"column": "grid_cell"}), "location", goal="≤ 250 km / ≥ 30%",
         smoothing_km=150.0),
    Task("Croatia, 4 views fused, median km", ("croatia",),
         LabelScheme("grid", {"cell_km": 50.0}), "location", goal="≤ 60 km", smoothing_km=50.0),
)


def load_sets(names: tuple[str, ...]) -> Manifest:
    frames = []
    for name in names:
        m = read_manifest(DATA / name / "manifest.csv")
        frame = m.frame.copy()
        frame["image"] = [str(p) for p in m.image_paths]
        frames.append(frame)
    return Manifest(pd.concat(frames, ignore_index=True), Path("/"))


def cross_validate(task: Task, folds: int, encoder: str, config: TrainConfig, finetune_blocks: int,
                   max_folds: int | None = None, progress: bool = False) -> dict:
    manifest = load_sets(task.sets)
    fold = kfold(manifest.frame, folds, by=task.by, block_km=task.block_km, seed=0)
    inner = kfold(manifest.frame, 10, by=task.by, block_km=task.block_km, seed=1)
    results = []
    for k in range(min(folds, max_folds or folds)):
        frame = manifest.frame.copy()
        frame["split"] = np.where(fold == k, "test", np.where(inner == 0, "val", "train"))
        with tempfile.TemporaryDirectory() as tmp:
            options = FitOptions(scheme=task.scheme, image_encoder=encoder, finetune_blocks=finetune_blocks,
                                 crops=task.crops, train=replace(config, label_smoothing_km=task.smoothing_km))
            fit(Manifest(frame, manifest.root), options, Path(tmp) / "model", progress=progress)
            model = load_model(Path(tmp) / "model")
            test = Manifest(frame[frame["split"] == "test"].reset_index(drop=True), manifest.root)
            result, _ = evaluate(model, test, progress=False)
        results.append(result)
    return pool(results)


def pool(results: list) -> dict:
    """Metrics over all held-out folds together."""
    from geoscope.geo import summarize_errors

    out = {}
    for name in (MODEL, CENTROID, KNN):
        tables = [r.predictions if name == MODEL else r.baselines[name] for r in results]
        errors = np.concatenate([t["error_km"].to_numpy() for t in tables])
        correct = np.concatenate([
            (t["pred_label"].to_numpy() == r.predictions["true_label"].to_numpy())
            for t, r in zip(tables, results, strict=True)
        ])
        out[name] = {**summarize_errors(errors).to_dict(), "label_accuracy": float(correct.mean())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--task", type=int, action="append", help="task numbers to run (default all)")
    parser.add_argument("--finetune-blocks", type=int, default=0, help="fine-tune the encoder's last N blocks")
    parser.add_argument("--progress", action="store_true", help="show training progress (stderr)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field, e.g. --set lr_image=3e-4")
    parser.add_argument("--max-folds", type=int, default=None,
                        help="hold out only the first K of the folds (quicker, noisier)")
    args = parser.parse_args()
    if not (DATA / "us-west" / "manifest.csv").is_file():
        print(f"needs the real datasets in {DATA}", file=sys.stderr)
        return 2
    config = TrainConfig()
    for item in args.set:
        key, _, value = item.partition("=")
        config = replace(config, **{key: type(getattr(config, key))(value)})
    held = min(args.folds, args.max_folds or args.folds)
    print(f"encoder {args.encoder}, fine-tuned blocks {args.finetune_blocks}, {args.folds}-fold "
          f"({held} held out), config {config.to_dict()}\n")
    print("| task | goal | model | centroid | kNN | time |\n|---|---|---|---|---|---|")
    for i, task in enumerate(TASKS, 1):
        if args.task and i not in args.task:
            continue
        start = time.perf_counter()
        m = cross_validate(task, args.folds, args.encoder, config, args.finetune_blocks, args.max_folds,
                           args.progress)
        cells = [_cell(m[name], task) for name in (MODEL, CENTROID, KNN)]
        print(f"| {task.name} | {task.goal} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} s |",
              flush=True)
    return 0


def _cell(metrics: dict, task: Task) -> str:
    km = f"{metrics['median_km']:.1f} km"
    acc = f"{metrics['label_accuracy']:.1%}"
    if task.scheme.kind == "column" and task.scheme.params["column"] == "city":
        return acc
    if task.scheme.kind == "column":
        return f"{km} / {acc}"
    return f"{km} (acc {acc})"


if __name__ == "__main__":
    sys.exit(main())
