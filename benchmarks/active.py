"""Where to collect next, by simulation: places chosen by ``geoscope data plan --from-model`` against random ones.

On western USA and Croatia (``../shared/data``), with the folds of ``benchmarks/accuracy.py`` (5-fold by place,
validation the inner fold): for each held-out fold and draw, a model is trained on a random share
(``--start``) of the fold's training places; the rest of them are the pool, playing the provider. The plan
from that model's bundle asks for N points (``--budget``, a share of the training places); each point is
matched to one pool place, the assignment of least total distance (scipy's ``linear_sum_assignment``), as a
provider answers a point with the imagery nearest to it. Against it, N pool places drawn at random. A model is
retrained on the start places plus each choice and scored on the same held-out places.

The planner sees only the start model's bundle and its region: not the pool, nor its images (in reality the
points are not photographed yet). ``entropy`` (classic uncertainty sampling: the N pool places whose answer
the start model is least sure of, by the entropy of its label probabilities) does see the pool's images, so it
is a reference, not something a plan can do.

Run: ``python benchmarks/active.py [--task us-west --task croatia] [--draws 3] [--start 0.25] [--budget 0.25]
[--weighing error --weighing thin --weighing places] [--entropy] [--max-folds K] [--first-draw D]``.
Prints median km and mean GeoScore per draw, pooled over the held-out folds, and their mean over the draws.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from accuracy import DATA, TASKS, Task, load_sets

from geoscope.data.manifest import Manifest
from geoscope.data.split import kfold
from geoscope.evaluate.scoring import evaluate
from geoscope.evaluate.weakness import WEIGHINGS, weakness_plan
from geoscope.geo.sphere import geoscore, pairwise_haversine_km
from geoscope.predict import load_model
from geoscope.training.fit import FitOptions, fit
from geoscope.training.loop import TrainConfig

SETS = {"us-west": TASKS[3], "croatia": TASKS[4]}
START, RANDOM, ENTROPY = "start", "random", "entropy"


def match(points: pd.DataFrame, pool: pd.DataFrame) -> np.ndarray:
    """The pool place each plan point gets: one each, the least total distance (rows of ``pool``)."""
    from scipy.optimize import linear_sum_assignment

    cost = pairwise_haversine_km(points["lat"], points["lon"], pool["lat"], pool["lon"])
    return linear_sum_assignment(cost)[1]


def least_sure(bundle: Path, manifest: Manifest, pool: pd.DataFrame, n: int) -> np.ndarray:
    """The ``n`` pool places (rows of ``pool``) whose label probabilities have the highest entropy."""
    model = load_model(bundle)
    rows = manifest.frame["location_id"].isin(pool["location_id"]).to_numpy()
    sub = manifest.subset(rows)
    features = model.image_features(sub.image_paths).embeddings
    codes, ids = pd.factorize(sub.frame["location_id"])
    headings = sub.frame["heading"].to_numpy(dtype=np.float64) if "heading" in sub.frame else None
    p, _ = model.place_evidence(np.asarray(features, dtype=np.float32), codes, headings)
    entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    chosen = ids[np.argsort(-entropy, kind="stable")[:n]]
    return np.flatnonzero(pool["location_id"].isin(chosen).to_numpy())


def simulate(task: Task, options: FitOptions, draws: range, start: float, budget: float, weighings: list[str],
             entropy: bool, folds: int, max_folds: int | None) -> tuple[dict, int]:
    """Held-out errors per method and draw (pooled over folds), and the budget N of the last fold."""
    manifest = load_sets(task.sets)
    frame = manifest.frame
    fold = kfold(frame, folds, by=task.by, seed=0)
    inner = kfold(frame, 10, by=task.by, seed=1)
    methods = [START, RANDOM, *(f"plan: {w}" for w in weighings), *([ENTROPY] if entropy else [])]
    errors: dict[tuple[str, int], list[np.ndarray]] = {(m, d): [] for m in methods for d in draws}
    n = 0
    options = replace(options, scheme=task.scheme, train=replace(options.train, label_smoothing_km=task.smoothing_km))
    for k in range(min(folds, max_folds or folds)):
        split = np.where(fold == k, "test", np.where(inner == 0, "val", "train"))
        places = frame.assign(split=split).drop_duplicates("location_id")
        train = places[places["split"] == "train"].reset_index(drop=True)
        n = round(budget * len(train))
        for draw in draws:
            rng = np.random.default_rng([draw, k])
            first = rng.random(len(train)) < start
            pool = train[~first].reset_index(drop=True)
            with tempfile.TemporaryDirectory() as tmp:
                base = Path(tmp) / START
                chosen = {START: np.array([], dtype=np.int64),
                          RANDOM: rng.choice(len(pool), size=n, replace=False)}
                score = _trainer(manifest, split, options, tmp)
                errors[START, draw].append(score(train["location_id"][first], base))
                for w in weighings:
                    plan = weakness_plan(base, n, seed=draw, weighing=w)
                    chosen[f"plan: {w}"] = match(plan.points, pool)
                if entropy:
                    chosen[ENTROPY] = least_sure(base, manifest, pool, n)
                for method, rows in chosen.items():
                    if method != START:
                        ids = pd.concat([train["location_id"][first], pool["location_id"].iloc[rows]])
                        errors[method, draw].append(score(ids, Path(tmp) / "model"))
            print(f"  fold {k} draw {draw}: " + ", ".join(f"{m} {np.median(errors[m, draw][-1]):.1f} km"
                                                         for m in methods), file=sys.stderr, flush=True)
    return {key: np.concatenate(v) for key, v in errors.items()}, n


def _trainer(manifest: Manifest, split: np.ndarray, options: FitOptions, tmp: str):
    """A function training on the given training places (val and test fixed) and scoring the held-out places."""
    frame = manifest.frame.assign(split=split)

    def score(ids: pd.Series, out: Path) -> np.ndarray:
        keep = (frame["split"] != "train") | frame["location_id"].isin(ids)
        sub = frame[keep.to_numpy()].reset_index(drop=True)
        fit(Manifest(sub, manifest.root), options, out, progress=False)
        test = Manifest(sub[sub["split"] == "test"].reset_index(drop=True), manifest.root)
        result, _ = evaluate(load_model(out), test, progress=False)
        return result.predictions["error_km"].to_numpy()

    return score


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--task", action="append", choices=tuple(SETS), help="sets to run (default both)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--first-draw", type=int, default=0, help="the first draw's number (more draws in another run)")
    parser.add_argument("--start", type=float, default=0.25, help="share of the training places to start from")
    parser.add_argument("--budget", type=float, default=0.25, help="places to add, as a share of the training places")
    parser.add_argument("--weighing", action="append", choices=tuple(WEIGHINGS),
                        help="the plan's weighings to measure (default: error)")
    parser.add_argument("--entropy", action="store_true", help="also uncertainty sampling over the pool's images")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-folds", type=int, default=None, help="hold out only the first K folds")
    parser.add_argument("--encoder", default="efficientnet-lite0/layout")
    parser.add_argument("--max-epochs", type=int, default=30)
    args = parser.parse_args()
    if not (DATA / "us-west" / "manifest.csv").is_file():
        print(f"needs the real datasets in {DATA}", file=sys.stderr)
        return 2
    weighings = args.weighing or ["error"]
    options = FitOptions(scheme=SETS["croatia"].scheme, image_encoder=args.encoder, augment=False,
                         train=TrainConfig(max_epochs=args.max_epochs))
    print(f"encoder {args.encoder}, one head, max {args.max_epochs} epochs, no flips; {args.folds}-fold, "
          f"{min(args.folds, args.max_folds or args.folds)} held out; start {args.start:.0%} of the training "
          f"places, add {args.budget:.0%}; {args.draws} draws\n")
    print("| set | N | draw | " + " | ".join(_methods(weighings, args.entropy)) + " |")
    print("|---|---|---|" + "---|" * len(_methods(weighings, args.entropy)))
    for name in args.task or list(SETS):
        began = time.perf_counter()
        draws = range(args.first_draw, args.first_draw + args.draws)
        errors, n = simulate(SETS[name], options, draws, args.start, args.budget, weighings, args.entropy,
                             args.folds, args.max_folds)
        methods = _methods(weighings, args.entropy)
        for draw in draws:
            print(f"| {name} | {n} | {draw} | " + " | ".join(_cell([errors[m, draw]]) for m in methods) + " |")
        print(f"| **{name}** | {n} | **mean** | " + " | ".join(
            _cell([errors[m, d] for d in draws]) for m in methods) + " |")
        print(f"| {name} | {n} | minus random | " + " | ".join(
            _against_random(errors, m, draws) for m in methods) + " |", flush=True)
        print(f"  {name}: {time.perf_counter() - began:.0f} s", file=sys.stderr)
    print("\nEach cell: median km / mean GeoScore of the held-out places (mean over draws in the 'mean' row); "
          "'minus random': the median km less random's in the same draw, mean ± standard error over the draws.")
    return 0


def _methods(weighings: list[str], entropy: bool) -> list[str]:
    return [START, RANDOM, *(f"plan: {w}" for w in weighings), *([ENTROPY] if entropy else [])]


def _against_random(errors: dict, method: str, draws: range) -> str:
    """A method's median km less random's, draw by draw: their mean ± its standard error."""
    gaps = [np.median(errors[method, d]) - np.median(errors[RANDOM, d]) for d in draws]
    spread = np.std(gaps, ddof=1) / np.sqrt(len(gaps)) if len(gaps) > 1 else float("nan")
    return f"{np.mean(gaps):+.1f} ± {spread:.1f} km"


def _cell(runs: list[np.ndarray]) -> str:
    median = np.mean([np.median(r) for r in runs])
    score = np.mean([geoscore(r).mean() for r in runs])
    return f"{median:.1f} km / {score:.0f}"


if __name__ == "__main__":
    sys.exit(main())
