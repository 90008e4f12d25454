"""The zero-shot head (``zero-shot``): a CLIP checkpoint used StreetCLIP's way, no training, a prompt per place.

``ZeroShotHead.create("hf:geolocal/StreetCLIP")`` (any ``hf:`` CLIP name, or a local folder holding a
CLIP checkpoint) is a head like any other: :func:`geoscope.loading.zero_shot_model` composes it into a
:class:`~geoscope.predict.GeoModel`, which answers through the same predict, evaluate and serve paths
as a trained bundle. Its image side is the checkpoint's vision tower. Its candidates are the
gazetteer's countries, regions and cities of a region (:mod:`geoscope.geo.candidates`). An image's
CLIP embedding against the prompts of each level gives P(country), P(region | country) within each
country and P(city | region) within each region, each a softmax at the checkpoint's own logit
scale; a city's probability is their product, so every level sums to 1 and the answer's levels are
exactly P(country) and P(region). Image embeddings are cached like any encoder's features; the
prompts' text embeddings are computed once per checkpoint and candidate prompts (so per region and
template) and kept under ``<cache>/zero-shot/``, not in a bundle (:meth:`ZeroShotHead.tensors` is
empty). There is no training data, so no coverage, confidence, kNN refinement or baselines.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.numpy import load_file, save
from tqdm import tqdm

from ...encoders.hub import checkpoint_identity, fetch_file, load_config, load_text_parts, split_ref
from ...encoders.image import fingerprint
from ...encoders.onnx_runtime import slug
from ...encoders.text import TextEncoder
from ...errors import ModelError, quote_name
from ...fileio import atomic_write_bytes
from ...geo.candidates import MAX_CITIES, MIN_POPULATION, PROMPT, PROMPT_LEVELS, PlaceHierarchy, place_hierarchy
from ...geo.regions import Region
from ...paths import cache_subdir
from ..fusion import masked_mean
from ..image_side import ImageSide

MAX_LOGIT_SCALE = 100.0
"""CLIP clamps its learned logit scale here."""
ENCODE_CHUNK = 256
PROBABILITY_ROWS = 512
"""Images scored together (bounds memory: one row holds every candidate city)."""
WORLD = "world"
"""The region of a zero-shot head over every country."""


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (zero rows stay zero)."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


@dataclass
class PromptEmbeddings:
    """Unit text embeddings of each level's prompts, the checkpoint's logit scale, and how many
    prompts this load encoded (0 when they came from the cache)."""

    levels: dict[str, np.ndarray]
    logit_scale: float
    encoded: int
    path: Path


def checkpoint_ref(spec: str | os.PathLike[str]) -> str:
    """The repository id or folder (made absolute) a zero-shot model spec stands for."""
    text = str(spec).strip()
    ref = split_ref(text) if text.startswith("hf:") else text
    folder = Path(ref).expanduser()
    return str(folder.resolve()) if folder.is_dir() else ref


def prompt_embeddings(ref: str, prompts: dict[str, list[str]], *, label: str = "",
                      progress: bool = True) -> PromptEmbeddings:
    """Text embeddings of ``prompts`` (level → texts) under the CLIP checkpoint ``ref``: read from
    the cache when this checkpoint has embedded these very prompts before, else encoded and cached."""
    key = fingerprint("zero-shot-prompts/1", checkpoint_identity(ref),
                      *("\n".join(prompts[level]) for level in PROMPT_LEVELS))
    path = cache_subdir("zero-shot") / f"{slug(ref)}-{slug(label) + '-' if label else ''}{key[:16]}.safetensors"
    if path.is_file():
        try:
            stored = load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            stored = {}
        levels = {level: stored[level] for level in PROMPT_LEVELS if level in stored}
        if len(levels) == len(PROMPT_LEVELS) and "logit_scale" in stored and all(
                levels[level].shape[0] == len(prompts[level]) for level in PROMPT_LEVELS):
            return PromptEmbeddings(levels, float(stored["logit_scale"][0]), 0, path)
    parts = load_text_parts(f"hf:{ref}")
    if parts.logit_scale is None:
        raise ModelError(f"{quote_name(ref)}: zero-shot needs a whole CLIP checkpoint (image and text towers)")
    encoder = TextEncoder(f"hf:{ref}", parts)
    levels = {level: _encode(encoder, prompts[level], level, progress) for level in PROMPT_LEVELS}
    scale = min(parts.logit_scale, MAX_LOGIT_SCALE)
    tensors = {**levels, "logit_scale": np.array([scale], dtype=np.float32)}
    atomic_write_bytes(path, save(tensors, metadata={"checkpoint": ref, "candidates": label}))
    return PromptEmbeddings(levels, float(np.float32(scale)), sum(len(p) for p in prompts.values()), path)


def _encode(encoder: TextEncoder, texts: list[str], level: str, progress: bool) -> np.ndarray:
    chunks = range(0, len(texts), ENCODE_CHUNK)
    bar = tqdm(chunks, desc=f"embedding {level} prompts", unit="chunk", leave=False,
               disable=None if progress and len(chunks) > 1 else True)
    out = [encoder.encode(texts[start:start + ENCODE_CHUNK]) for start in bar]
    return unit_rows(np.concatenate(out)).astype(np.float32)


def softmax_within(logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Softmax of each row over each group of columns; ``groups`` (one id per column) is sorted,
    each group one contiguous run, ids 0…G−1."""
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    peak = np.maximum.reduceat(logits, starts, axis=1)
    e = np.exp(logits - peak[:, groups])
    return e / np.add.reduceat(e, starts, axis=1)[:, groups]


class ZeroShotHead:
    """A CLIP checkpoint's text tower over the prompts of the gazetteer's places of a region: a head that needs
    no training. Its embeddings are the checkpoint's unit image embeddings (a place's views: their unit mean)."""

    kind: ClassVar[str] = "zero-shot"
    title: ClassVar[str] = "zero-shot CLIP"
    trainable: ClassVar[bool] = False
    merge_km: ClassVar[float] = 0.0
    fusion = "mean"
    image_dim = None

    def __init__(self, checkpoint: str, hierarchy: PlaceHierarchy, prompts: dict[str, list[str]],
                 text: PromptEmbeddings, settings: dict) -> None:
        self.checkpoint = checkpoint
        """The checkpoint's repository id or folder (made absolute)."""
        self.hierarchy = hierarchy
        self.prompts = prompts
        self.text = text
        self.settings = settings
        """Which candidates and prompts: ``region``, ``min_population``, ``max_cities``, ``template``."""
        self._region_country = hierarchy.regions["parent"].to_numpy()
        self._city_region = hierarchy.cities["parent"].to_numpy()

    @classmethod
    def create(cls, checkpoint: str | os.PathLike[str], region: Region | str | None = None, *,
               min_population: int = MIN_POPULATION, max_cities: int = MAX_CITIES, template: str = PROMPT,
               progress: bool = True) -> ZeroShotHead:
        """``checkpoint``: ``hf:<repo-or-folder>`` or a folder; ``region``: anything ``--region`` takes (None: the
        world); ``min_population``, ``max_cities``: which gazetteer places are candidates; ``template``: the
        prompt, ``{}`` standing for the place."""
        ref = checkpoint_ref(checkpoint)
        model_type = getattr(load_config(ref), "model_type", None)  # one line when it cannot be had
        if model_type != "clip":
            raise ModelError(f"{_shown(ref)}: zero-shot needs a whole CLIP checkpoint (image and text towers), "
                             f"not {model_type!r}")
        where = WORLD if region is None else region.name if isinstance(region, Region) else str(region).strip()
        hierarchy = place_hierarchy(region, min_population=min_population, max_cities=max_cities)
        prompts = hierarchy.prompts(template)
        text = prompt_embeddings(ref, prompts, label=where, progress=progress)
        return cls(ref, hierarchy, prompts, text, {"region": where, "min_population": min_population,
                                                   "max_cities": max_cities, "template": template})

    @property
    def name(self) -> str:
        """How the model is named: the checkpoint and the region."""
        return f"{_shown(self.checkpoint)} zero-shot ({self.settings['region']})"

    @property
    def labels(self) -> pd.DataFrame:
        """Its candidates as a label table: the cities."""
        return self.hierarchy.cities

    @property
    def image_side(self) -> ImageSide:
        """What it reads: the checkpoint's image embeddings."""
        return ImageSide(f"hf:{self.checkpoint}")

    @property
    def folder(self) -> Path:
        """The checkpoint's folder (in the Hugging Face cache for a hub name)."""
        return fetch_file(self.checkpoint, "config.json").parent  # type: ignore[union-attr]

    @property
    def prompts_encoded(self) -> int:
        """How many prompts loading this head encoded (0 when their embeddings were cached)."""
        return self.text.encoded

    @property
    def embedding_dim(self) -> int:
        return int(self.text.levels["country"].shape[1])

    def __len__(self) -> int:
        return len(self.hierarchy.cities)

    def to_dict(self) -> dict:
        return {"head": self.kind, "checkpoint": f"hf:{self.checkpoint}", **self.settings,
                "logit_scale": self.text.logit_scale,
                **{f"{level}_prompts": len(p) for level, p in self.prompts.items()}}

    @classmethod
    def from_dict(cls, section: Mapping, tensors: Mapping[str, np.ndarray] | None = None, prefix: str = "") -> Self:
        """The head ``section`` names, its prompts' embeddings from the cache (or encoded again)."""
        region = section.get("region", WORLD)
        return cls.create(section["checkpoint"], None if region == WORLD else region,
                          min_population=int(section.get("min_population", MIN_POPULATION)),
                          max_cities=int(section.get("max_cities", MAX_CITIES)),
                          template=str(section.get("template", PROMPT)), progress=False)

    def tensors(self, prefix: str = "") -> dict[str, np.ndarray]:
        """None: its prompts' embeddings are the checkpoint's, kept in the cache."""
        return {}

    @classmethod
    def check(cls, section: Mapping, tensors: Mapping[str, np.ndarray], labels: int) -> str | None:
        return None if "checkpoint" in section else "a zero-shot head's section must name its 'checkpoint'"

    @classmethod
    def said(cls, config: Mapping, labels: pd.DataFrame) -> str:
        return "the checkpoint's text embeddings of a prompt per country, region and city"

    def embed_views(self, features: torch.Tensor, mask: torch.Tensor, headings: torch.Tensor,
                    noise: float = 0.0) -> torch.Tensor:
        """The unit mean of each place's unit CLIP image embeddings (headings do not matter here)."""
        unit = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=-1)
        views = unit.new_zeros((*mask.shape, unit.shape[-1]))
        views[mask] = unit
        return F.normalize(masked_mean(views, mask), dim=-1)

    def level_probabilities(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """P(country), P(region | its country) and P(city | its region) for image embeddings ``(n, dim)``."""
        e = unit_rows(np.asarray(embeddings, dtype=np.float32))
        groups = {"country": np.zeros(len(self.text.levels["country"]), dtype=np.int64),
                  "region": self._region_country, "city": self._city_region}
        return {level: softmax_within(self.text.logit_scale * (e @ self.text.levels[level].T).astype(np.float64),
                                      groups[level]) for level in PROMPT_LEVELS}

    def logits(self, embeddings: torch.Tensor, candidates: torch.Tensor | None = None) -> torch.Tensor:
        """log P(city) = log P(country) + log P(region | country) + log P(city | region), float64 (the image
        features are not read: the hierarchy is CLIP's own). ``candidates`` is not used."""
        e = np.asarray(embeddings, dtype=np.float32)
        out = np.empty((len(e), len(self)), dtype=np.float64)
        region = self._city_region
        for start in range(0, len(e), PROBABILITY_ROWS):
            p = self.level_probabilities(e[start:start + PROBABILITY_ROWS])
            out[start:start + PROBABILITY_ROWS] = p["country"][:, self._region_country[region]] \
                * p["region"][:, region] * p["city"]
        with np.errstate(divide="ignore"):  # a city no one could be in: log 0, probability 0 again
            return torch.from_numpy(np.log(out))


def _shown(ref: str) -> str:
    """A checkpoint as a person names it: ``hf:<repo>``, or its folder."""
    return f"hf:{ref}" if not Path(ref).is_dir() else quote_name(ref)
