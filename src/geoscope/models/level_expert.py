"""A linear probe on the coarsest level of the label hierarchy, multiplied into the head's answer.

A place head spreads "which country" over dozens of labels, and on its own features a linear probe
decides the country better than the head does. So the bundle keeps one: a multinomial logistic
regression (scikit-learn, standardised features, C = 0.01) over the coarsest level of the hierarchy
that splits the training labels (country; region where they all lie in one country), fitted on the
training images. Its log-probability of each label's group is added to the head's logits: a product of
experts, p(label) ∝ p_head(label) · p_probe(group of label). The standardisation is folded into its
weights, so it is one matrix product over the image features; being linear, it reads a place's views
through their mean features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import log_softmax

from ..errors import ModelError

if TYPE_CHECKING:
    from .heads.base import Head

LEVELS = ("country", "region")
"""The levels an expert may decide."""
C = 0.01
"""Inverse L2 strength of the logistic regression (the benchmarks' probe)."""
PREFIX = "level_expert."
ANSWER_ROWS = 4096
"""Rows answered together by :func:`answer_probabilities` (bounds memory for many candidates)."""


@dataclass(frozen=True)
class LevelExpert:
    """Logistic regression over the groups of one level; ``groups`` maps each label to its group."""

    level: str
    groups: np.ndarray
    """``(labels,)`` int: each label's group (a row of ``weight``)."""
    weight: np.ndarray
    """``(groups, dim)`` float32, over raw image features (their standardisation folded in)."""
    bias: np.ndarray
    """``(groups,)`` float32."""
    measured: dict | None = field(default=None, compare=False)
    """How it measured on the validation items (:func:`geoscope.training.stages.expert_record`), for the record."""

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, groups: np.ndarray, level: str) -> LevelExpert:
        """Fit on image ``features`` ``(n, dim)`` whose labels are ``labels``; ``groups`` gives each label's
        group at ``level`` (``country`` or ``region``), which must split the training labels."""
        from sklearn.linear_model import LogisticRegression  # heavy, and only training fits an expert

        groups = np.unique(groups, return_inverse=True)[1].astype(np.int64)
        x = np.asarray(features, dtype=np.float64)
        mean, std = x.mean(axis=0), x.std(axis=0)
        std[std == 0] = 1.0
        probe = LogisticRegression(C=C, max_iter=2000).fit((x - mean) / std, groups[labels])
        coef, intercept = probe.coef_, probe.intercept_
        if len(probe.classes_) == 2:  # scikit-learn's binary form: one row of log-odds for the second class
            coef, intercept = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], intercept])
        weight = np.zeros((int(groups.max()) + 1, x.shape[1]))
        weight[probe.classes_] = coef / std
        bias = np.full(len(weight), np.min(intercept - weight[probe.classes_] @ mean))  # a group no image of the
        bias[probe.classes_] = intercept - weight[probe.classes_] @ mean  # sample has: the least likely prior
        return cls(level, groups, weight.astype(np.float32), bias.astype(np.float32))

    def log_probabilities(self, features: np.ndarray) -> np.ndarray:
        """``(n, labels)``: the log-probability of each label's group for image features ``(n, dim)``."""
        return log_softmax(np.asarray(features, dtype=np.float32) @ self.weight.T + self.bias, axis=1)[:, self.groups]

    def tensors(self) -> dict[str, np.ndarray]:
        """Its arrays, as the bundle stores them."""
        return {f"{PREFIX}groups": self.groups.astype(np.int32), f"{PREFIX}weight": self.weight,
                f"{PREFIX}bias": self.bias}

    def to_dict(self) -> dict:
        """Its part of ``config.json``, with how it measured on validation when that was recorded."""
        return {"level": self.level, "groups": int(self.weight.shape[0]), "C": C} | \
            ({"val": self.measured} if self.measured is not None else {})

    @classmethod
    def from_bundle(cls, section: dict | None, tensors: dict[str, np.ndarray], labels: int,
                    dim: int) -> LevelExpert | None:
        """The expert a bundle holds (``None`` for bundles without one), or :class:`ModelError` if it is inconsistent
        with the bundle's ``labels`` and image features of ``dim`` values."""
        if not section:
            return None
        try:
            expert = cls(str(section["level"]), tensors[f"{PREFIX}groups"].astype(np.int64),
                         tensors[f"{PREFIX}weight"].astype(np.float32), tensors[f"{PREFIX}bias"].astype(np.float32))
        except KeyError as exc:
            raise ModelError(f"the level expert lacks {exc.args[0]}: retrain the model") from None
        n_groups = expert.weight.shape[0]
        if expert.level not in LEVELS or expert.groups.shape != (labels,) or expert.bias.shape != (n_groups,) \
                or not 0 <= expert.groups.min() <= expert.groups.max() < n_groups \
                or expert.weight.shape[1] != dim:
            raise ModelError("the level expert does not fit the model's labels or image features: retrain the model")
        return expert


def answer_probabilities(head: Head, expert: LevelExpert | None, embeddings: np.ndarray | torch.Tensor,
                         features: np.ndarray) -> np.ndarray:
    """Probability of every candidate, ``(n, candidates)`` float32: the head's logits over unit image
    ``embeddings`` plus, with an ``expert``, its log-probability of each candidate's group from the image
    ``features`` (a place's: the mean of its views'), through one softmax. The one way an answer is made:
    :meth:`geoscope.predict.GeoModel.probabilities` and the validation fits of training call this."""
    n = len(embeddings)
    out = np.empty((n, len(head)), dtype=np.float32)
    with torch.no_grad():
        for start in range(0, n, ANSWER_ROWS):
            rows = slice(start, start + ANSWER_ROWS)
            e = F.normalize(torch.as_tensor(embeddings[rows], dtype=torch.float32), dim=-1)
            logits = head.logits(e)
            if expert is not None:
                logits = logits + torch.from_numpy(expert.log_probabilities(features[rows]))
            out[rows] = torch.softmax(logits, dim=-1).numpy()
    return out
