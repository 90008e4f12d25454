"""Zero-shot geolocation with a CLIP checkpoint, StreetCLIP's way: no training, a prompt per place.

``ZeroShotModel("hf:geolocal/StreetCLIP")`` (any ``hf:`` CLIP name, or a local folder holding a
CLIP checkpoint) answers through the same predict, evaluate and serve paths as a trained
:class:`~geoscope.predict.GeoModel`. Its candidates are the gazetteer's countries, regions and
cities of a region (:mod:`geoscope.geo.candidates`). An image's CLIP embedding against the prompts
of each level gives P(country), P(region | country) within each country and P(city | region)
within each region, each a softmax at the checkpoint's own logit scale; a city's probability is
their product, so every level sums to 1 and the answer's levels are exactly P(country) and
P(region). Image embeddings are cached like any encoder's features; the prompts' text
embeddings are computed once per checkpoint and candidate prompts (so per region and template)
and kept under ``<cache>/zero-shot/``. There is no training data, so no coverage, confidence,
kNN refinement or baselines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..answer.answerer import Answerer, unit_rows
from ..answer.refine import check_refiner
from ..bundle import BundleFiles
from ..encoders.hub import checkpoint_identity, fetch_file, load_config, load_text_parts, split_ref
from ..encoders.image import fingerprint
from ..encoders.onnx_runtime import slug
from ..encoders.text import TextEncoder
from ..errors import ModelError, quote_name
from ..fileio import atomic_write_bytes
from ..geo.candidates import MAX_CITIES, MIN_POPULATION, PROMPT, PROMPT_LEVELS, place_hierarchy
from ..geo.regions import Region
from ..paths import cache_subdir
from ..predict import GeoModel
from .fusion import group_mean
from .image_side import ImageSide

MAX_LOGIT_SCALE = 100.0
"""CLIP clamps its learned logit scale here."""
ENCODE_CHUNK = 256
PROBABILITY_ROWS = 512
"""Images scored together (bounds memory: one row holds every candidate city)."""


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
    from safetensors import SafetensorError
    from safetensors.numpy import load_file, save

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
    from tqdm import tqdm

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


class ZeroShotModel(GeoModel):
    """A CLIP checkpoint over the gazetteer's places of a region, answering like a trained bundle.

    It shares :class:`~geoscope.predict.GeoModel`'s predict path (views, unreadable images,
    levels) and replaces the stages a bundle would load: the image side is the checkpoint's
    vision tower, the head the prompt hierarchy; there is no gallery (coverage, kNN).
    """

    def __init__(self, checkpoint: str | os.PathLike[str], region: Region | str | None = None, *,
                 min_population: int = MIN_POPULATION, max_cities: int = MAX_CITIES, template: str = PROMPT,
                 progress: bool = True) -> None:
        """``checkpoint``: ``hf:<repo-or-folder>`` or a folder; ``region``: anything ``--region`` takes (None:
        the world); ``min_population``, ``max_cities``: which gazetteer places are candidates; ``template``:
        the prompt, ``{}`` standing for the place."""
        # GeoModel.__init__ reads a bundle; a zero-shot model builds its parts from the checkpoint instead.
        ref = checkpoint_ref(checkpoint)
        shown = f"hf:{ref}" if not Path(ref).is_dir() else quote_name(ref)
        model_type = getattr(load_config(ref), "model_type", None)  # one line when it cannot be had
        if model_type != "clip":
            raise ModelError(f"{shown}: zero-shot needs a whole CLIP checkpoint (image and text towers), "
                             f"not {model_type!r}")
        where = "world" if region is None else region.name if isinstance(region, Region) else str(region).strip()
        self.hierarchy = place_hierarchy(region, min_population=min_population, max_cities=max_cities)
        self.prompts = self.hierarchy.prompts(template)
        self.text = prompt_embeddings(ref, self.prompts, label=where, progress=progress)
        self.image_side = ImageSide(f"hf:{ref}")
        self.labels = self.hierarchy.cities
        self.path = fetch_file(ref, "config.json").parent  # type: ignore[union-attr]
        self.config = {
            "name": f"{shown} zero-shot ({where})",
            "image_encoder": self.image_side.to_dict(),
            "labels": {"kind": "cities", "radius_km": None},
            "zero_shot": {"checkpoint": shown, "region": where, "min_population": min_population,
                          "max_cities": max_cities, "template": template, "logit_scale": self.text.logit_scale,
                          **{f"{level}_prompts": len(p) for level, p in self.prompts.items()}},
        }
        self.files = BundleFiles(self.config, {}, self.labels, [], self.path)
        self.coverage = None
        self.level_expert = None
        self.answerer = Answerer(self.labels)
        self.refine = "none"
        self._adapter = None
        self._encoder = None
        self._region_country = self.hierarchy.regions["parent"].to_numpy()
        self._city_region = self.labels["parent"].to_numpy()

    @property
    def prompts_encoded(self) -> int:
        """How many prompts loading this model encoded (0 when their embeddings were cached)."""
        return self.text.encoded

    def embed(self, features: np.ndarray) -> np.ndarray:
        """Unit CLIP image embeddings."""
        return unit_rows(np.asarray(features, dtype=np.float32))

    @property
    def fusion(self) -> str:
        return "mean"

    def fused_embeddings(self, features: np.ndarray, places: np.ndarray,
                         headings: np.ndarray | None = None) -> np.ndarray:
        """The unit mean of each place's unit CLIP embeddings (headings do not matter here)."""
        return unit_rows(group_mean(self.embed(features), np.asarray(places)))

    def level_probabilities(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """P(country), P(region | its country) and P(city | its region) for image embeddings ``(n, dim)``."""
        e = unit_rows(np.asarray(embeddings, dtype=np.float32))
        groups = {"country": np.zeros(len(self.text.levels["country"]), dtype=np.int64),
                  "region": self._region_country, "city": self._city_region}
        return {level: softmax_within(self.text.logit_scale * (e @ self.text.levels[level].T).astype(np.float64),
                                      groups[level]) for level in PROMPT_LEVELS}

    def probabilities(self, embeddings: np.ndarray, features: np.ndarray) -> np.ndarray:
        """Probability of every candidate city: P(country) · P(region | country) · P(city | region) (the image
        ``features`` are not read: the hierarchy is CLIP's own)."""
        out = np.empty((len(embeddings), len(self.labels)), dtype=np.float32)
        for start in range(0, len(embeddings), PROBABILITY_ROWS):
            p = self.level_probabilities(embeddings[start:start + PROBABILITY_ROWS])
            region = self._city_region
            out[start:start + PROBABILITY_ROWS] = p["country"][:, self._region_country[region]] \
                * p["region"][:, region] * p["city"]
        return out

    def coverage_scores(self, features: np.ndarray) -> np.ndarray:
        """Unknown (NaN): there are no training images to be like."""
        return np.full(len(features), np.nan)

    @property
    def training_centroid(self) -> None:  # type: ignore[override]
        """None: no training images, so no centroid baseline."""
        return None

    @property
    def refiners(self) -> dict:  # type: ignore[override]
        """None: no training images to refine with."""
        return {}

    def knn(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise ModelError(f"{self.config['name']}: a zero-shot model has no training images to search")

    def refiner(self, name: str | None) -> None:
        if check_refiner(name or "none") != "none":
            raise ModelError(f"{self.config['name']}: a zero-shot model has no training images to refine with")
        return None
