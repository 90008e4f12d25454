"""Is the occlusion map faithful, and what does it cost? On held-out photos of the shared sets.

For each photo: its occlusion map (``geoscope.investigate.explain``, an 8×8 grid), then the answer's
log-odds with the map's heaviest eighth of the frame hidden (8 cells at once) against the same with 8
cells drawn at random (mean of 3 draws). The map is faithful on a photo when hiding its heaviest cells lowers
the answer more. Prints the share of faithful photos per set and the seconds per photo of the map.
Run: ``python benchmarks/explain.py [--images 100]`` (photos the default model never trained on).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from geoscope.data.manifest import read_manifest
from geoscope.evaluate.scoring import training_rows
from geoscope.investigate.explain import GRID, answer_log_odds, explain, frame_views, occluded
from geoscope.predict import load_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SETS = ("london-uk", "london-on", "us-west", "croatia")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="photos per set (default 100)")
    args = parser.parse_args()
    model = load_model()
    rng = np.random.default_rng(0)
    hidden = GRID * GRID // 8
    print(f"{'set':<10} {'photos':>6} {'faithful':>9} {'salient drop':>13} {'random drop':>12} {'s/photo':>8}")
    for name in SETS:
        manifest = read_manifest(DATA / name / "manifest.csv")
        held_out = manifest.subset(~training_rows(model, manifest))
        paths = [held_out.image_paths[i] for i in rng.permutation(len(held_out))[: args.images]]
        start = time.perf_counter()
        maps = explain(model, paths)
        seconds = (time.perf_counter() - start) / len(paths)
        faithful, salient_drops, random_drops = [], [], []
        for path, found in zip(paths, maps, strict=True):
            views = frame_views(model, path)
            order = np.argsort(-found.label_drop.ravel())[:hidden]
            salient = [divmod(int(i), GRID) for i in order]
            draws = [[divmod(int(i), GRID) for i in rng.choice(GRID * GRID, hidden, replace=False)] for _ in range(3)]
            variants = [views, occluded(views, salient), *(occluded(views, d) for d in draws)]
            label = int(np.flatnonzero(model.answerer.names == found.label)[0])
            _, p, _, _ = answer_log_odds(model, variants, label)
            salient_drops.append(p[0] - p[1])
            random_drops.append(p[0] - p[2:].mean())
            faithful.append(p[1] < p[2:].mean())
        print(f"{name:<10} {len(paths):>6} {np.mean(faithful):>9.1%} {np.mean(salient_drops):>13.4f} "
              f"{np.mean(random_drops):>12.4f} {seconds:>8.2f}")


if __name__ == "__main__":
    main()
