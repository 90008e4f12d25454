"""The level expert: scikit-learn's logistic regression with the standardisation folded into one matrix."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
from scipy.special import softmax
from sklearn.linear_model import LogisticRegression

from geoscope.models.level_expert import LevelExpert
from geoscope.training.loop import TrainingData
from geoscope.training.stages import expert_record


def _features(rng: np.random.Generator, n: int = 240) -> np.ndarray:
    return rng.normal(size=(n, 6)) * [1.0, 10.0, 0.1, 1.0, 1.0, 1.0] + [0.0, 5.0, 0.0, 0.0, 0.0, 0.0]


def test_two_groups_read_as_scikit_learns_binary_probe_on_standardised_features() -> None:
    rng = np.random.default_rng(0)
    x = _features(rng)
    labels = 2 * (x[:, 0] + rng.normal(0, 0.5, len(x)) > 0) + (x[:, 3] > 0)  # four labels, two per group
    groups = np.array([7, 7, 3, 3])  # labels 0 and 1 in one country, 2 and 3 in the other
    expert = LevelExpert.fit(x, labels, groups, "country")
    assert expert.groups.tolist() == [1, 1, 0, 0] and expert.weight.shape == (2, 6)
    mean, std = x.mean(axis=0), x.std(axis=0)
    probe = LogisticRegression(C=0.01, max_iter=2000).fit((x - mean) / std, expert.groups[labels])
    test = _features(rng, 50)
    expected = np.log(probe.predict_proba((test - mean) / std))[:, expert.groups]
    np.testing.assert_allclose(expert.log_probabilities(test), expected, atol=1e-4)
    decided = expert.groups[np.argmax(expert.log_probabilities(test), axis=1)]
    assert (decided == np.where(test[:, 0] > 0, 0, 1)).mean() > 0.8  # it does decide the group


def test_a_group_no_training_image_has_is_kept_least_likely_a_priori() -> None:
    rng = np.random.default_rng(1)
    x = _features(rng)
    labels = (x[:, 0] > 0).astype(int) + 2 * (x[:, 3] > 1.5)  # label 2 (and label 3) may be empty: use 0…2
    labels = np.where(labels == 3, 2, labels)
    groups = np.array([0, 1, 1, 2])  # group 2 (label 3) has no image
    expert = LevelExpert.fit(x, labels, groups, "region")
    assert expert.weight.shape == (3, 6) and not expert.weight[2].any()
    assert expert.bias[2] == expert.bias[:2].min()
    log_p = expert.log_probabilities(x)
    np.testing.assert_allclose(np.exp(log_p[:, [0, 1, 3]]).sum(axis=1), 1, atol=1e-5)


def _record(expert: LevelExpert, head: np.ndarray, with_expert: np.ndarray, val: TrainingData,
            labels: pd.DataFrame) -> dict:
    """The expert's section of ``config.json`` with how it measured on ``val``."""
    return replace(expert, measured=expert_record(expert, head, with_expert, val, labels)).to_dict()


def test_the_record_measures_the_validation_answers_with_and_without_the_expert() -> None:
    labels = pd.DataFrame({"lat": [48.86, 52.52, 40.42], "lon": [2.35, 13.40, -3.70]})  # Paris, Berlin, Madrid
    truth = np.array([0, 1, 2, 0, 1, 2])
    val = TrainingData(np.zeros((6, 2), dtype=np.float32), truth, labels["lat"].to_numpy()[truth],
                       labels["lon"].to_numpy()[truth])
    x = np.eye(3, dtype=np.float32)[truth]  # each item's features say where it is
    groups = np.arange(3)
    helps = LevelExpert("country", groups, 5 * np.eye(3, dtype=np.float32), np.zeros(3, dtype=np.float32))
    misleads = LevelExpert("country", groups, 20 * np.roll(np.eye(3, dtype=np.float32), 1, axis=0),
                           np.zeros(3, dtype=np.float32))
    unsure = np.zeros((6, 3))  # a head that cannot tell the towns apart
    record = _record(helps, softmax(unsure, axis=1), softmax(unsure + helps.log_probabilities(x), axis=1), val,
                            labels)
    assert record["val"]["with_expert"] == {"geoscore": 5000.0, "right_group": 1.0}
    assert record["val"]["head"]["geoscore"] < 5000.0 and record["level"] == "country"
    sure = 5 * np.eye(3)[truth]  # a head that can
    record = _record(misleads, softmax(sure, axis=1), softmax(sure + misleads.log_probabilities(x), axis=1),
                            val, labels)
    assert record["val"]["head"] == {"geoscore": 5000.0, "right_group": 1.0}
    assert record["val"]["with_expert"]["right_group"] == 0.0 and record["val"]["with_expert"]["geoscore"] < 3000
