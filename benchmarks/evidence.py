"""Evidence with every answer: how often the training place most like a photo lies near the answer, and near
the truth. On the default model's held-out test split (views of a place fused).

For each test place: its answer (``GeoModel.answer``) with ``evidence=K``; prints, per set, the share whose
nearest evidence place lies within 25 km of the answer, the share whose nearest evidence lies within 25 km of
the place's true point, and the same for the answer itself. Run:
``python benchmarks/evidence.py [--data ../shared/data] [--k 5]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from geoscope.geo.sphere import haversine_km
from geoscope.predict import load_model

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    from verify import test_split  # the held-out split, built as the training script builds it

    test = test_split(args.data)
    model = load_model()
    features = model.image_features(test.image_paths)
    valid = np.asarray(features.valid, dtype=bool)
    frame = test.frame[valid].reset_index(drop=True)
    codes, _ = pd.factorize(test.place_ids[valid].reset_index(drop=True))
    headings = frame["heading"].to_numpy(dtype=np.float64) if "heading" in frame else None
    answers = model.answer(np.asarray(features.embeddings, dtype=np.float32)[valid], codes, headings,
                           evidence=args.k)
    firsts = frame[~pd.Series(codes).duplicated().to_numpy()].reset_index(drop=True)
    rows = []
    for (_, truth), answer in zip(firsts.iterrows(), answers, strict=True):
        nearest = answer.evidence[0]
        rows.append({"set": truth["dataset"],
                     "evidence_near_answer": nearest.km_from_answer <= 25,
                     "evidence_near_truth": haversine_km(nearest.lat, nearest.lon, truth["lat"], truth["lon"]) <= 25,
                     "answer_near_truth": haversine_km(answer.answer.lat, answer.answer.lon,
                                                       truth["lat"], truth["lon"]) <= 25})
    table = pd.DataFrame(rows)
    summary = pd.concat([table.groupby("set").mean(), table.drop(columns="set").mean().to_frame("all").T])
    summary.insert(0, "places", [*table.groupby("set").size(), len(table)])
    print(f"default model, test split, evidence K = {args.k}; shares within 25 km")
    print(summary.to_string(float_format=lambda v: f"{100 * v:.1f} %"))


if __name__ == "__main__":
    main()
