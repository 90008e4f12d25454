"""The kNN gallery stage: training images as a bundle keeps them, for coverage, the ``knn`` refiner and baseline.

A sample of the training images' features, centred and projected on their principal axes (features
scaled as the head reads them, then projected: one matrix), stored as float16 with where each image
was taken and its label (``gallery.*``); and the coverage's typicality test fitted on the same images
(``typicality.*``, :class:`geoscope.answer.coverage.Typicality`). Its section of ``config.json``
(``gallery``) says what it holds and, in bundles written since, where its photos were when the model was
trained (:class:`GalleryImages`: the training manifest's folder and each row's image path as the manifest gave
it, never the pixels), so that evidence can point to the photos on a machine that still has them; bundles
written before had no section, then no paths.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..answer.answerer import unit_rows
from ..answer.coverage import PARTS, SCORE, TESTS, TYPICALITY, WITHIN_TEST, Typicality, scores_by_test
from ..answer.knn import knn_locate, nearest_places
from ..answer.pca import centred_product, principal_axes
from ..answer.refine import GalleryRefiner
from ..errors import ModelError, quote_name
from .layout import CONFIG, WEIGHTS

PREFIX = "gallery."
KEYS = ("gallery.features", "gallery.lat", "gallery.lon", "gallery.pca_mean", "gallery.pca_components")
LABEL = "gallery.label"
DIM = 128
"""Principal components the gallery keeps."""
MAX_IMAGES = 20000
"""Training images the gallery keeps at most (a random sample)."""


@dataclass(frozen=True)
class GalleryImages:
    """Where the gallery's photos were when the model was trained: the training manifest's folder and each gallery
    row's image path as the manifest gave it (relative to that folder, or absolute). Paths only, never pixels."""

    manifest_folder: str
    paths: list[str] = field(repr=False)

    def to_dict(self) -> dict:
        return {"manifest_folder": self.manifest_folder, "image_paths": list(self.paths)}

    @classmethod
    def from_dict(cls, section: object) -> GalleryImages | None:
        """The paths a bundle's ``gallery`` section records (None: it records none, as older bundles)."""
        if not isinstance(section, dict) or "image_paths" not in section:
            return None
        return cls(str(section["manifest_folder"]), [str(p) for p in section["image_paths"]])

    def resolve(self, row: int) -> Path | None:
        """Gallery row ``row``'s photo as an absolute path, symbolic links resolved, where it is a file on this
        machine (None: it is not, or the row is not the gallery's)."""
        if not 0 <= row < len(self.paths):
            return None
        try:
            path = (Path(self.manifest_folder) / self.paths[row]).resolve()
            return path if path.is_file() else None
        except (OSError, RuntimeError, ValueError):  # a loop of links, a name the system refuses
            return None


@dataclass
class Gallery:
    """The kNN gallery and the typicality test, fitted on one sample of training images."""

    pca_mean: np.ndarray
    """``(dim,)`` float32: the images' mean features."""
    pca_components: np.ndarray
    """``(DIM, dim)`` float32: feature scaling and principal axes in one matrix."""
    features: np.ndarray
    """``(n, DIM)`` float16: each image in the gallery's space."""
    lat: np.ndarray
    lon: np.ndarray
    label: np.ndarray | None
    """Each image's label (None in bundles written before refinement)."""
    typicality: Typicality | None
    images: GalleryImages | None = None
    """Where each row's photo was (None in bundles written before it was recorded)."""

    @classmethod
    def fit(cls, x: np.ndarray, lat: np.ndarray, lon: np.ndarray, label: np.ndarray, scale: np.ndarray,
            groups: np.ndarray, subgroups: np.ndarray | None = None, images: GalleryImages | None = None) -> Gallery:
        """From training images' features ``x`` ``(n, dim)`` (float64), scaled by ``scale`` as the head reads them,
        with each image's coordinates, label and typicality group (and its group one level down, where the test
        goes there: :meth:`~geoscope.answer.coverage.Typicality.fit`) and (``images``) where its photo is."""
        mean = x.mean(axis=0)
        components = principal_axes((x - mean) / scale, DIM)[1] / scale  # scale, then project: one matrix
        return cls(mean.astype(np.float32), components.astype(np.float32),
                   ((x - mean) @ components.T).astype(np.float16), lat.astype(np.float64), lon.astype(np.float64),
                   label.astype(np.int32), Typicality.fit(x, groups, subgroups=subgroups), images)

    def to_dict(self) -> dict:
        return {"images": len(self.lat), "dim": int(self.features.shape[1]), "typicality": self.typicality is not None,
                **(self.images.to_dict() if self.images is not None else {})}

    def tensors(self) -> dict[str, np.ndarray]:
        out = dict(zip(KEYS, (self.features, self.lat, self.lon, self.pca_mean, self.pca_components), strict=True))
        if self.label is not None:
            out[LABEL] = self.label
        return out | (self.typicality.tensors() if self.typicality is not None else {})

    @classmethod
    def from_tensors(cls, tensors: dict[str, np.ndarray], section: object = None) -> Gallery | None:
        """The gallery a bundle stores (None: it has none), with the photos' paths its ``gallery`` section records."""
        if KEYS[0] not in tensors:
            return None
        features, lat, lon, mean, components = (tensors[k] for k in KEYS)
        return cls(mean, components, features, lat, lon, tensors.get(LABEL), Typicality.from_tensors(tensors),
                   GalleryImages.from_dict(section))

    @property
    def dim(self) -> int:
        """How many image features it reads."""
        return int(self.pca_mean.shape[0])

    def query(self, features: np.ndarray) -> np.ndarray:
        """Image features projected into the gallery's space."""
        return centred_product(features, self.pca_mean, self._axes)

    @functools.cached_property
    def _axes(self) -> np.ndarray:
        """The principal axes as :meth:`query` multiplies by them: a column each, contiguous (made once)."""
        return np.ascontiguousarray(self.pca_components.T, dtype=np.float32)

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """The gallery's rows as float32 (computed once)."""
        return self.features.astype(np.float32)

    @functools.cached_property
    def squares(self) -> np.ndarray:
        """Their squared norms (computed once)."""
        return (self.rows * self.rows).sum(axis=1)

    @functools.cached_property
    def unit(self) -> np.ndarray:
        """Its rows as unit vectors (computed once)."""
        return unit_rows(self.rows)

    def knn(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The kNN baseline: where the training images most like each image were taken."""
        return knn_locate(self.query(features), self.unit, self.lat, self.lon)

    def nearest(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` training images most like each row of ``features``, at distinct places: rows and similarities
        (:func:`geoscope.answer.knn.nearest_places`)."""
        return nearest_places(self.query(features), self.unit, self.lat, self.lon, k)

    def scores(self, features: np.ndarray, k: int) -> dict[str, np.ndarray]:
        """Each coverage test's score for image features (each test's own scale; the coverage ranks them)."""
        return scores_by_test(features, self.query(features), self.rows, k, self.typicality, self.squares)

    def refiner(self, label_lat: np.ndarray, label_lon: np.ndarray) -> GalleryRefiner | None:
        """The ``knn`` refiner over labels at these coordinates (None without the images' labels)."""
        if self.label is None:
            return None
        return GalleryRefiner(self.query, self.unit, self.lat, self.lon, self.label, label_lat, label_lon)

    def check_labels(self, labels: int, path: Path) -> None:
        """Refuse labels outside a table of ``labels`` rows, in one line."""
        if self.label is not None and self.label.size and not 0 <= self.label.min() <= self.label.max() < labels:
            raise ModelError(f"{path}: gallery.label names labels outside 0…{labels - 1}")


def check_gallery(config: dict, tensors: dict[str, np.ndarray], path: Path) -> str | None:
    """A gallery whose tensors are whole and agree in shape, or what is wrong (``path``: the bundle)."""
    present = [k for k in KEYS if k in tensors]
    if not present:
        return None  # a model without a kNN gallery
    weights = quote_name(path / WEIGHTS)
    if len(present) < len(KEYS):
        missing = ", ".join(repr(k) for k in KEYS if k not in tensors)
        return f"{weights}: the kNN gallery is incomplete (no {missing})"
    features, lat, lon, mean, components = (tensors[k] for k in KEYS)
    problem = None
    if features.ndim != 2 or components.ndim != 2 or mean.ndim != 1 or lat.ndim != 1 or lon.ndim != 1:
        problem = "gallery tensors have the wrong number of dimensions"
    elif not len(lat) == len(lon) == features.shape[0]:
        problem = (f"gallery.lat has {len(lat):,} values and gallery.lon {len(lon):,} "
                   f"but gallery.features has {features.shape[0]:,} rows")
    elif components.shape[0] != features.shape[1]:
        problem = (f"gallery.features has {features.shape[1]} columns but gallery.pca_components "
                   f"has {components.shape[0]} rows")
    elif components.shape[1] != mean.shape[0]:
        problem = (f"gallery.pca_components is {components.shape[0]}×{components.shape[1]} "
                   f"but gallery.pca_mean has {mean.shape[0]} values")
    elif (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
        problem = "gallery.lat or gallery.lon holds coordinates out of range"
    elif LABEL in tensors and tensors[LABEL].shape != lat.shape:
        problem = f"gallery.label has {tensors[LABEL].size:,} values for {len(lat):,} gallery images"
    if problem:
        return f"{weights}: {problem}"
    problem = _images_problem(config.get("gallery"), len(lat))
    return f"{quote_name(path / CONFIG)}: {problem}" if problem else None


def _images_problem(section: object, rows: int) -> str | None:
    """What is wrong with the photos' paths a ``gallery`` section records (None: nothing, or it records none)."""
    if not isinstance(section, dict) or ("image_paths" not in section and "manifest_folder" not in section):
        return None
    paths, folder = section.get("image_paths"), section.get("manifest_folder")
    if not isinstance(folder, str) or not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        return "gallery.image_paths must be a list of paths and gallery.manifest_folder a path"
    if len(paths) != rows:
        return f"gallery.image_paths names {len(paths):,} photos for {rows:,} gallery images"
    return None


def check_coverage(config: dict, tensors: dict[str, np.ndarray], path: Path) -> str | None:
    """A coverage of this version's kind: known tests, each with rising quantiles, and the gallery tensors they
    read; or what is wrong."""
    coverage = config.get("coverage")
    if not isinstance(coverage, dict) or coverage.get("score") != SCORE:
        return None  # none, or an older kind: coverage unknown
    quantiles = coverage.get("quantiles")
    problem = None
    if not isinstance(coverage.get("threshold"), int | float) or not isinstance(quantiles, dict) or not quantiles:
        problem = "coverage needs a numeric 'threshold' and the 'quantiles' of its tests"
    elif unknown := sorted(n for n in quantiles if n not in TESTS and not WITHIN_TEST.fullmatch(n)):
        problem = f"unknown coverage test(s) {', '.join(map(repr, unknown))} (known: {', '.join(TESTS)})"
    elif not all(isinstance(q, list) and len(q) > 1 and all(isinstance(v, int | float) for v in q)
                 and np.all(np.diff(q) >= 0) for q in quantiles.values()):
        problem = "each coverage test's 'quantiles' must be a rising list of numbers"
    elif "gallery" in quantiles and KEYS[0] not in tensors:
        problem = "its coverage reads the kNN gallery, which the weights do not hold"
    else:
        problem = next(filter(None, (_typicality_problem(tensors, name) for name in sorted(quantiles)
                                     if name != "gallery")), None)
    if problem is None and not isinstance(coverage.get("within", {}), dict):
        problem = "coverage.within must map each test one level down to what it compares with"
    return f"{quote_name(path / CONFIG)}: {problem}" if problem else None


def _typicality_problem(tensors: dict[str, np.ndarray], test: str = TYPICALITY) -> str | None:
    """What is wrong with the tensors of the typicality test ``test`` (or one level down: ``typicality.G``, whose
    group ``G`` must be a row of the level above and whose features are that level's whitened components)."""
    keys = [f"{test}.{part}" for part in PARTS]
    missing = [k for k in keys if k not in tensors]
    if missing:
        return f"its coverage reads the {test} test, but {WEIGHTS} has no {', '.join(map(repr, missing))}"
    mean, projection, root, groups = (tensors[k] for k in keys)
    if (mean.ndim, projection.ndim, root.ndim, groups.ndim) != (1, 2, 2, 2) or \
            projection.shape[0] != mean.shape[0] or root.shape != (projection.shape[1],) * 2 or \
            groups.shape[1] != projection.shape[1]:
        return (f"{test} tensors disagree in shape (mean {mean.shape}, projection {projection.shape}, "
                f"precision_root {root.shape}, group_means {groups.shape})")
    above, _, group = test.rpartition(".")
    if above:
        above_problem = _typicality_problem(tensors, above)
        if above_problem is not None:
            return above_problem
        above_groups, above_projection = tensors[f"{above}.group_means"], tensors[f"{above}.projection"]
        if int(group) >= above_groups.shape[0] or mean.shape[0] != above_projection.shape[1]:
            return (f"{test} does not fit {above}: group {group} of {above_groups.shape[0]}, reading "
                    f"{mean.shape[0]} components of {above_projection.shape[1]}")
        return None
    gallery_mean = tensors.get("gallery.pca_mean")
    if gallery_mean is not None and gallery_mean.shape != mean.shape:
        return f"typicality.mean has {mean.shape[0]} values but gallery.pca_mean {gallery_mean.shape[0]}"
    return None
