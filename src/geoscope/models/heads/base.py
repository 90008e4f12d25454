"""The one shape of every head.

A head turns image features into scores over its candidates (labels, or the points of a GPS
gallery). Whatever the head, the same parts of geoscope ask it the same things:

- a bundle stores it (:meth:`Head.to_dict` is its ``model`` section of ``config.json``,
  :meth:`Head.tensors` its tensors under its own prefix; :meth:`Head.from_dict` reads both back);
- predict, evaluate and serve ask for unit embeddings of a place's views (:meth:`Head.embed_views`)
  and their scores over the candidates (:meth:`Head.logits`, log-probabilities up to a constant
  per row: :func:`geoscope.models.level_expert.answer_probabilities` turns them into an answer);
- the one training loop (:func:`geoscope.training.loop.train`) asks a :class:`TrainableHead` for
  its parameter groups and its loss on a batch of places, and measures it through its logits.

A head that needs no training (zero-shot CLIP over place prompts) is a :class:`Head` and not a
:class:`TrainableHead`. Heads are found by name in :mod:`geoscope.models.heads.registry`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Protocol, Self

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd


class TrainingSettings(Protocol):
    """What a head reads of a training configuration (:class:`geoscope.training.loop.TrainConfig` is one)."""

    embed_dim: int
    dropout: float
    fusion: str
    image_head: str
    location: str
    learn_place_offsets: bool
    loss: str
    label_smoothing_km: float
    level_weight: float
    lr_head: float
    wd_head: float
    lr_text: float
    wd_text: float
    seed: int


Step = Callable[..., object]
"""The training step as the loop runs it: cached inputs → the image side → :meth:`TrainableHead.forward`
(wrapped by DistributedDataParallel in a process group, so the head's loss must call it for its outputs)."""


@dataclass
class Batch:
    """One training batch, as a head's loss reads it: this rank's share of the items."""

    inputs: torch.Tensor
    """Cached encoder outputs of the views present (what :data:`Step` reads)."""
    mask: torch.Tensor
    """``(B, V)``: which views each item has."""
    headings: torch.Tensor
    """``(B, V)``: their compass headings in degrees (NaN unknown)."""
    labels: torch.Tensor
    """``(B,)``: each item's candidate."""
    lat: torch.Tensor
    lon: torch.Tensor
    """``(B,)``: where each item was taken (float64)."""
    candidate_coords: torch.Tensor
    """``(candidates, 2)``: where each candidate is (float64), for label smoothing by distance."""
    level_groups: Sequence[torch.Tensor] = ()
    """One ``(candidates, groups)`` membership matrix per coarser level (country, region)."""
    weight: float = 1.0
    """This rank's items' share of the batch times the world size (1 in one process): a loss averaged over this
    rank's items is multiplied by it, so that the ranks' averaged gradients are the whole batch's (a loss over
    the gathered batch is not)."""
    all_labels: torch.Tensor | None = None
    """Every rank's items' candidates, in the order :attr:`gather` returns rows (``labels`` in one process)."""
    gather: Callable[[torch.Tensor], torch.Tensor] = lambda rows: rows
    """This rank's rows → every rank's, differentiable (the identity in one process)."""


class Head(Protocol):
    """Scores image embeddings over a fixed set of candidates; stored in a bundle under its own prefix."""

    kind: ClassVar[str]
    """Its name in the registry, in ``config.json`` and on the command line (``--head``)."""
    title: ClassVar[str]
    """How the model card names it ("place-name", "GPS")."""
    trainable: ClassVar[bool]
    merge_km: ClassVar[float]
    """An answer merges candidates closer than this to a more probable one (0: never)."""

    @property
    def fusion(self) -> str:
        """How it fuses the views of a place (:data:`geoscope.models.fusion.FUSIONS`)."""
        ...

    @property
    def image_dim(self) -> int | None:
        """How many image features it reads (None: whatever its encoder gives)."""
        ...

    @property
    def embedding_dim(self) -> int:
        """Width of its unit embeddings."""
        ...

    def __len__(self) -> int:
        """Number of candidates (rows of the label table)."""
        ...

    def to_dict(self) -> dict:
        """Its section of ``config.json`` (``model``), naming its kind under ``head``."""
        ...

    @classmethod
    def from_dict(cls, section: Mapping, tensors: Mapping[str, np.ndarray], prefix: str = "") -> Self:
        """The head a bundle stores: ``section`` from ``config.json``, its tensors under ``prefix``
        (``""`` for the model's own head, ``"refiner."`` for a refiner's); raises ``KeyError``, ``TypeError``,
        ``ValueError`` or ``RuntimeError`` on a section or tensors that do not fit."""
        ...

    def tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Its tensors as a bundle stores them, each key under ``prefix``."""
        ...

    def embed_views(self, features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                    noise: float = 0.0) -> torch.Tensor:
        """One unit embedding per place from image features of its views present (in ``mask``'s order)."""
        ...

    def logits(self, embeddings: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of unit embeddings ``(n, embedding_dim)`` over the candidates: log-probabilities up to a
        constant per row (``candidates``: embedded candidates to score against instead of its own)."""
        ...

    @classmethod
    def check(cls, section: Mapping, tensors: Mapping[str, np.ndarray], labels: int) -> str | None:
        """What is wrong with a stored head of this kind and a label table of ``labels`` rows, in one line
        naming the file (``None``: nothing); cheap, before the head is built."""
        ...

    @classmethod
    def said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        """What its candidates are read from, for the model card (``config``: the whole ``config.json``)."""
        ...


class TrainableHead(Head, Protocol):
    """A head the training loop trains: an ``nn.Module`` holding its candidates' inputs."""

    refines: ClassVar[bool]
    """Whether its candidates are points that another model's guesses can be moved to (a refiner)."""

    @staticmethod
    def candidate_inputs(labels: pd.DataFrame, text_encoder: str) -> np.ndarray:
        """What it reads of each label ``(labels, d)``: a prompt's text embedding, the coordinates, …"""
        ...

    @classmethod
    def create(cls, settings: TrainingSettings, image_dim: int, inputs: np.ndarray) -> Self:
        """A fresh head over candidates read from ``inputs``, its weights drawn from ``settings.seed`` (alike on
        every rank)."""
        ...

    @classmethod
    def ensemble(cls, heads: Sequence[Self]) -> Self:
        """Trained heads of one configuration answering as one (their logits averaged)."""
        ...

    def text_encoder(self, name: str) -> dict | None:
        """The ``text_encoder`` section of ``config.json`` when its candidates are read through one (``name``)."""
        ...

    def parameter_groups(self, settings: TrainingSettings) -> list[dict]:
        """Its parameters as AdamW's groups, each with ``name``, ``lr`` and ``weight_decay``."""
        ...

    def set_image_statistics(self, features: torch.Tensor) -> None:
        """Standardise the image features it reads by these (training) rows' mean and std."""
        ...

    def standardize(self, features: torch.Tensor) -> torch.Tensor:
        """Image features as it reads them."""
        ...

    def feature_scale(self) -> torch.Tensor:
        """Per-dimension scale it divides the image features by (ones when it reads them as they are)."""
        ...

    def candidates(self) -> torch.Tensor:
        """Its candidates embedded as they are now (through its place tower while training)."""
        ...

    def fix_candidates(self) -> Self:
        """Embed its candidates once and keep them, as a bundle stores them (after training)."""
        ...

    def forward(self, features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor, noise: float,
                loss: str) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """What its loss needs of one batch's image features, computed inside the training step."""
        ...

    def loss(self, step: Step, batch: Batch, settings: TrainingSettings, noise: float) -> torch.Tensor:
        """Its loss on ``batch``, running ``step`` for its outputs."""
        ...
