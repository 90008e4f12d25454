"""Where in the photo: occlusion maps of the answer, drawn per photo."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from PIL import Image

from geoscope.investigate.explain import GRID, answer_log_odds, explain, frame_views, occluded
from geoscope.predict import GeoModel

EXAMPLES = sorted((REPO / "examples" / "images").glob("*.jpg"))


def test_the_map_is_measured_against_the_answer_the_photo_gets(model: GeoModel) -> None:
    found = explain(model, EXAMPLES[:2])
    for path, explanation in zip(EXAMPLES[:2], found, strict=True):
        prediction = model.predict([path])[0]
        assert explanation.label == prediction.answer.label
        label_row = int(np.flatnonzero(model.answerer.names == explanation.label)[0])
        features = model.image_features([path]).embeddings
        whole = model.probabilities(model.embed(features), features)[0, label_row]
        assert explanation.probability == pytest.approx(whole, abs=1e-4)
        assert explanation.label_drop.shape == explanation.country_drop.shape == (GRID, GRID)
        assert np.isfinite(explanation.label_drop).all() and np.abs(explanation.label_drop).max() > 0


def test_hiding_the_heaviest_cells_lowers_the_answer_more_than_hiding_the_lightest(model: GeoModel) -> None:
    """Cells interact, so not on every photo (``benchmarks/explain.py`` measures the share against random cells)."""
    lower = []
    for path, explanation in zip(EXAMPLES, explain(model, EXAMPLES), strict=True):
        views = frame_views(model, path)
        order = np.argsort(-explanation.label_drop.ravel())
        heavy, light = ([divmod(int(i), GRID) for i in cells] for cells in (order[:8], order[-8:]))
        label = int(np.flatnonzero(model.answerer.names == explanation.label)[0])
        _, odds, _, _ = answer_log_odds(model, [views, occluded(views, heavy), occluded(views, light)], label)
        lower.append(odds[1] < odds[2])
    assert sum(lower) >= len(EXAMPLES) - 2, lower


def test_predict_explain_draws_a_png_per_photo_and_refuses_views(tmp_path) -> None:
    maps = tmp_path / "maps"
    done = subprocess.run([sys.executable, "-m", "geoscope", "predict", *map(str, EXAMPLES[:2]), "--explain",
                           str(maps)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    drawn = sorted(maps.glob("*.explain.png"))
    assert len(drawn) == 2 and all(Image.open(p).size[0] > 400 for p in drawn)
    refused = subprocess.run([sys.executable, "-m", "geoscope", "predict", *map(str, EXAMPLES[:2]), "--views",
                              "--explain", str(maps)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip() == "geoscope: error: --explain draws single photos: leave out --views"
