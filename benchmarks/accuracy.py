"""Accuracy targets of the place model, measured by cross-validation on ../shared/data.

Each task trains through the same path users run (``fit`` → bundle → ``evaluate``) on
k−1 folds and measures the held-out fold, then prints one table: model beside a linear
probe (scikit-learn logistic regression, standardised, C = 0.01, on the same features and
labels), the training-centroid and kNN baselines. The "outer ring" task holds out each
London's outer fifth (by distance from its centre), like photos from outside the sets' area.
With ``--set head=gps`` the km tasks label a gallery of points (grid cells of the task's
``gallery_km``) read through the GPS head's location encoder; with ``--refine gps`` each fold also
trains a GPS head on that gallery and attaches it to the place model as its refiner (PIGEON's hybrid).
Tasks with several views per place also show the model answering each view alone and, for a learned
fusion, the same model answering from the plain average of its views.
A fine-tuned run (``--finetune-blocks N|all``) shows no probe: its cached inputs are feature maps or pixels,
and the frozen run of the same encoder is its probe. ``--fold K`` holds out one fold, so a long experiment runs
a fold a command; each fold's own numbers follow the table, with its count of held-out items to pool them.
Run: ``python benchmarks/accuracy.py [--folds 5] [--task N] [--fold K] [--finetune-blocks N|all]
[--scheme geocells] [--no-augment] [--set fusion=lstm] [--set head=gps] [--set location=scratch]
[--refine knn|gps] [--restarts 3 [--members 3]] [--places 0.25 [--draw N]] [--checkpoint-dir DIR]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from geoscope.cli.options import finetune_blocks
from geoscope.data.manifest import Manifest, read_manifest
from geoscope.data.split import kfold
from geoscope.evaluate.results import CENTROID, KNN, MODEL, VIEWS_AVERAGED
from geoscope.evaluate.scoring import evaluate
from geoscope.geo.labels import LabelScheme
from geoscope.predict import load_model
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig

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
    gallery_km: float = 0.0
    """With ``--set head=gps``: the km tasks label a gallery of points, grid cells of this size."""


PROBE = "probe"
FOLDS = "folds"
"""Each held-out fold's own model metrics, by fold number (to pool folds run as separate commands)."""
ONE_VIEW = "one view"
"""The model answering each view alone (tasks with several views per place)."""
RING_SHARE = 0.2
"""The outer-ring task holds out this share of each city's images, the farthest from its centre."""

TASKS = (
    Task("which London (UK vs Ontario), label accuracy", ("london-uk", "london-on"),
         LabelScheme("column", {"column": "city"}), "block", 1.0, "≥ 97%"),
    Task("which London, outer ring held out, label accuracy", ("london-uk", "london-on"),
         LabelScheme("column", {"column": "city"}), "ring", 1.0, "≥ 96%"),
    Task("London UK, spatial 5-fold, median km", ("london-uk",),
         LabelScheme("grid", {"cell_km": 5.0}), "block", 1.0, "≤ 12 km", 5.0, gallery_km=2.0),
    Task("western USA, 3 views fused, median km / 40-cell accuracy", ("us-west",),
         LabelScheme("column", {"column": "grid_cell"}), "location", goal="≤ 250 km / ≥ 30%",
         smoothing_km=150.0, gallery_km=25.0),
    Task("Croatia, 4 views fused, median km", ("croatia",),
         LabelScheme("grid", {"cell_km": 50.0}), "location", goal="≤ 60 km", smoothing_km=50.0, gallery_km=10.0),
)


def load_sets(names: tuple[str, ...]) -> Manifest:
    """The sets as one manifest."""
    frames = []
    for name in names:
        m = read_manifest(DATA / name / "manifest.csv")
        frame = m.frame.copy()
        frame["image"] = [str(p) for p in m.image_paths]
        frames.append(frame)
    return Manifest(pd.concat(frames, ignore_index=True), Path("/"))


def kept_places(manifest: Manifest, share: float, draw: int) -> np.ndarray:
    """Row mask: a random ``share`` of the places (all views of each kept place), draw ``draw``."""
    ids = manifest.place_ids
    unique = ids.unique()
    return ids.isin(unique[np.random.default_rng(draw).random(len(unique)) < share]).to_numpy()


def outer_ring(frame: pd.DataFrame, share: float = RING_SHARE) -> np.ndarray:
    """Test mask: each city's ``share`` of images farthest from its medoid."""
    from geoscope.geo.naming import geographic_medoid
    from geoscope.geo.sphere import haversine_km

    test = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.groupby("city").groups.items():
        idx = np.asarray(rows)
        centre = geographic_medoid(frame["lat"].to_numpy()[idx], frame["lon"].to_numpy()[idx])
        d = haversine_km(frame["lat"].to_numpy()[idx], frame["lon"].to_numpy()[idx], *centre)
        test[idx[d >= np.quantile(d, 1 - share)]] = True
    return test


def cross_validate(task: Task, folds: int, options: FitOptions, max_folds: int | None = None,
                   progress: bool = False, refine: str = "none", places: float = 1.0, draw: int = 0,
                   only_fold: int | None = None, checkpoints: Path | None = None) -> dict:
    """Pooled metrics over the held-out folds; ``places`` < 1 trains on that share of the training places.

    The folds are those of the whole set, so every share is measured on the same held-out images;
    ``only_fold`` holds out that fold alone (a long experiment split into one command a fold). With
    ``checkpoints`` each fold's training writes its state in ``checkpoints/fold-K/`` every epoch and resumes
    from it (a fold's run split over several commands); the folder goes once the fold is measured.
    """
    manifest = load_sets(task.sets)
    kept = kept_places(manifest, places, draw)  # every place when places >= 1
    inner = kfold(manifest.frame, 10, by="block" if task.by == "ring" else task.by, block_km=task.block_km, seed=1)
    if task.by == "ring":
        fold, folds = np.where(outer_ring(manifest.frame), 0, -1), 1
    else:
        fold = kfold(manifest.frame, folds, by=task.by, block_km=task.block_km, seed=0)
    results, probes, singles = [], [], []
    held = range(min(folds, max_folds or folds)) if only_fold is None else [only_fold]
    for k in held:
        frame = manifest.frame.copy()
        frame["split"] = np.where(fold == k, "test", np.where(inner == 0, "val", "train"))
        frame = frame[kept | (frame["split"] != "train").to_numpy()].reset_index(drop=True)
        saved = checkpoints / f"fold-{k}" if checkpoints is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            task_options = replace(options, scheme=task.scheme, crops=task.crops,
                                   train=replace(options.train, label_smoothing_km=task.smoothing_km))
            if refine == "gps":  # PIGEON's hybrid: a GPS head on the task's gallery, attached as the refiner
                gps = replace(task_options, scheme=LabelScheme("grid", {"cell_km": task.gallery_km}), members=1,
                              restarts=1, train=replace(task_options.train, head="gps"))
                task_options = replace(task_options, refiner=fit(
                    Manifest(frame, manifest.root), gps, Path(tmp) / "gps", progress=progress,
                    checkpoints=saved / "gps" if saved is not None else None)[0])
            fit(Manifest(frame, manifest.root), task_options, Path(tmp) / "model", progress=progress,
                checkpoints=saved / "model" if saved is not None else None)
            model = load_model(Path(tmp) / "model")
            test = Manifest(frame[frame["split"] == "test"].reset_index(drop=True), manifest.root)
            result, _ = evaluate(model, test, progress=False, refine=refine)
            if test.place_ids.duplicated().any():
                singles.append(evaluate(model, test, fuse_views=False, progress=False)[0])
            # a fine-tuned model's cached inputs are feature maps or pixels: its probe is the frozen run's
            probes.append(pd.DataFrame() if options.finetune_blocks else
                          linear_probe(model, Manifest(frame, manifest.root), result, task_options))
        results.append(result)
        if saved is not None:
            shutil.rmtree(saved, ignore_errors=True)
    pooled = pool(results, probes)
    pooled[FOLDS] = {k: pool([r], [p])[MODEL] for k, r, p in zip(held, results, probes, strict=True)}
    if singles:
        pooled[ONE_VIEW] = pool(singles, [p.iloc[:0] for p in probes])[MODEL]
    return pooled


def linear_probe(model, manifest: Manifest, result, options: FitOptions) -> pd.DataFrame:
    """Logistic regression (standardised, C = 0.01) on the model's own features and training labels.

    Trained on the train rows (with flipped copies when the model had them), it predicts the
    held-out items of ``result`` (views averaged in probability; the first guess chosen as the model
    chooses its own, :func:`geoscope.answer.answerer.best_guesses`); returns their predictions.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from geoscope.geo.labels import LabelScheme, assign_labels
    from geoscope.geo.sphere import haversine_km

    frame = manifest.frame
    scheme = LabelScheme.from_dict(model.config["labels"])
    values = frame[scheme.params["column"]] if scheme.kind == "column" else None
    ids = assign_labels(frame["lat"].to_numpy(), frame["lon"].to_numpy(), model.labels, scheme, values)
    train = (frame["split"] == "train").to_numpy() & (ids >= 0)
    side = options.image_side
    paths = manifest.image_paths
    train_paths = [paths[i] for i in np.flatnonzero(train)]
    x_train = [side.extract(train_paths, progress=False).embeddings]
    if options.augment:
        x_train.append(side.extract(train_paths, hflip=True, progress=False).embeddings)
    y = np.concatenate([ids[train]] * len(x_train))
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=2000))
    probe.fit(np.nan_to_num(np.concatenate(x_train)), y)
    test = frame[frame["split"] == "test"].reset_index(drop=True)
    test_paths = [manifest.root / p for p in test["image"]]
    proba = probe.predict_proba(np.nan_to_num(side.extract(test_paths, progress=False).embeddings))
    places = Manifest(test, manifest.root).place_ids
    codes = pd.factorize(places)[0]
    fused = np.zeros((codes.max() + 1, len(model.labels)))
    np.add.at(fused, (codes[:, None], probe.classes_[None, :]), proba)
    pred = model.answerer.best(fused / fused.sum(axis=1, keepdims=True))
    first = ~places.duplicated().to_numpy()
    lat, lon = test["lat"].to_numpy()[first], test["lon"].to_numpy()[first]
    labels = model.labels
    out = pd.DataFrame({"pred_lat": labels["lat"].to_numpy()[pred], "pred_lon": labels["lon"].to_numpy()[pred],
                        "pred_label": labels["name"].to_numpy()[pred]})
    out["error_km"] = haversine_km(lat, lon, out["pred_lat"], out["pred_lon"])
    fused_views = len(result.predictions) == len(out)
    return out if fused_views else out.iloc[:0]


def pool(results: list, probes: list[pd.DataFrame]) -> dict:
    """Metrics over all held-out folds together."""
    from geoscope.geo.sphere import summarize_errors

    out = {}
    for name in (MODEL, PROBE, CENTROID, KNN, VIEWS_AVERAGED):
        if (name == PROBE and any(len(p) == 0 for p in probes)) or \
                (name == VIEWS_AVERAGED and not all(name in r.baselines for r in results)):
            continue
        tables = [r.predictions if name == MODEL else p if name == PROBE else r.baselines[name]
                  for r, p in zip(results, probes, strict=True)]
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
    parser.add_argument("--finetune-blocks", type=finetune_blocks, default=0,
                        help="fine-tune the encoder's last N blocks, or all of it from pixels (all)")
    parser.add_argument("--progress", action="store_true", help="show training progress (stderr)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a TrainConfig field, e.g. --set lr_image=3e-4 (label_smoothing_km: "
                             "instead of the task's)")
    parser.add_argument("--max-folds", type=int, default=None,
                        help="hold out only the first K of the folds (quicker, noisier)")
    parser.add_argument("--fold", type=int, default=None, metavar="K",
                        help="hold out fold K alone (0-based; one command a fold, pooled by hand from its n)")
    parser.add_argument("--no-augment", dest="augment", action="store_false", help="no flipped training copies")
    parser.add_argument("--no-level-expert", dest="level_expert", action="store_false",
                        help="models without the linear probe over the coarsest level of their labels' hierarchy")
    parser.add_argument("--refine", choices=("none", "knn", "gps"), default="none",
                        help="score the guess after refinement: knn, its most similar training images; gps, a GPS "
                             "head trained on each fold's gallery (the task's gallery_km) and attached (km tasks)")
    parser.add_argument("--restarts", type=int, default=1,
                        help="train each fold's model from N seeds and keep the lowest validation loss (1)")
    parser.add_argument("--members", type=int, default=1,
                        help="keep the K runs of lowest validation loss as one ensemble (at most --restarts; 1)")
    parser.add_argument("--places", type=float, default=1.0, metavar="SHARE",
                        help="train on a random share of each fold's training places, test on the whole held-out "
                             "folds (how accuracy grows with data)")
    parser.add_argument("--draw", type=int, default=0, help="which random share --places keeps (a seed; 0)")
    parser.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                        help="write each fold's training state in DIR every epoch and resume from it: a long run "
                             "(--finetune-blocks all) split over several commands, each stopped and rerun alike")
    parser.add_argument("--scheme", help="label scheme for the km tasks instead of theirs, e.g. geocells "
                        "or geocells:min_images=20,max_images=200")
    args = parser.parse_args()
    if not (DATA / "us-west" / "manifest.csv").is_file():
        print(f"needs the real datasets in {DATA}", file=sys.stderr)
        return 2
    config, overridden = TrainConfig(), set()
    for item in args.set:
        key, _, value = item.partition("=")
        config = replace(config, **{key: type(getattr(config, key))(value)})
        overridden.add(key)
    if args.fold is not None and not 0 <= args.fold < args.folds:
        parser.error(f"--fold must be between 0 and {args.folds - 1}")
    held = f"1 held out: fold {args.fold}" if args.fold is not None else \
        f"{min(args.folds, args.max_folds or args.folds)} held out"
    print(f"encoder {args.encoder}, fine-tuned blocks {args.finetune_blocks}, {args.folds}-fold "
          f"({held}), restarts {args.restarts}, members {args.members}, config {config.to_dict()}\n")
    print(f"fusion of views: {config.fusion}, head: {config.head}, refinement: {args.refine}\n")
    print("| task | goal | model | model, one view | model, views averaged | probe | centroid | kNN | time |\n"
          "|---|---|---|---|---|---|---|---|---|")
    options = FitOptions(scheme=LabelScheme("grid"), image_encoder=args.encoder,
                         finetune_blocks=args.finetune_blocks, augment=args.augment, train=config,
                         restarts=args.restarts, members=args.members, level_expert=args.level_expert)
    folds_seen = []
    for i, task in enumerate(TASKS, 1):
        if args.task and i not in args.task:
            continue
        if args.refine == "gps" and not task.gallery_km:
            continue  # the which-London tasks have no points to refine to
        if "label_smoothing_km" in overridden:  # the command line wins over the task
            task = replace(task, smoothing_km=config.label_smoothing_km)
        if config.head == "gps" and task.gallery_km:
            task = replace(task, scheme=LabelScheme("grid", {"cell_km": task.gallery_km}))
        elif args.scheme and task.scheme.kind != "column":
            kind, _, params = args.scheme.partition(":")
            task = replace(task, scheme=LabelScheme(kind, {k: float(v) for k, v in
                                                           (p.split("=") for p in params.split(",") if p)}))
        start = time.perf_counter()
        m = cross_validate(task, args.folds, options, args.max_folds, args.progress, args.refine,
                           args.places, args.draw, args.fold,
                           args.checkpoint_dir / f"task-{i}" if args.checkpoint_dir is not None else None)
        columns = (MODEL, ONE_VIEW, VIEWS_AVERAGED, PROBE, CENTROID, KNN)
        cells = [_cell(m[name], task) if name in m else "–" for name in columns]
        print(f"| {task.name} | {task.goal} | " + " | ".join(cells) + f" | {time.perf_counter() - start:.0f} s |",
              flush=True)
        folds_seen.append((task, m[FOLDS]))
    for task, folds in folds_seen:  # after the table, so it stays one table
        print(f"\n{task.name}, each held-out fold (model; n held-out items): "
              + "; ".join(f"fold {k}: {_cell(f, task)}, n {f['n']}" for k, f in folds.items()))
    return 0


def _cell(metrics: dict, task: Task) -> str:
    km = f"{metrics['median_km']:.1f} km (≤25 km {metrics['within_km']['25']:.1%})"
    acc = f"{metrics['label_accuracy']:.1%}"
    if task.scheme.kind == "column" and task.scheme.params["column"] == "city":
        return f"{metrics['label_accuracy']:.2%}"  # its goals sit within a tenth of a point of the best rows
    if task.scheme.kind == "column":
        return f"{km} / {acc}"
    return f"{km} (acc {acc})"


if __name__ == "__main__":
    sys.exit(main())
