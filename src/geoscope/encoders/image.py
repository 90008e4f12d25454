"""A registry of named image encoders, each carrying its own preprocessing.

Names: ``efficientnet-lite0`` (224 px), ``efficientnet-lite1`` (240 px), ``efficientnet-lite2`` (260 px),
``<name>/stats`` (mean and std of every stage's output: texture and colour as well as objects),
``<name>/layout`` (the same, plus each stage's means over six horizontal bands of the frame),
``<name>/stages`` (the layout without the head conv's statistics), their trunks
``<name>/trunk-<n>`` (feature maps before the last ``n`` MBConv blocks, for caching and
fine-tuning the top), any of these ``@<px>`` (frames resized to another input size),
``<a>+<b>`` (several encoders' outputs concatenated) and
``hf:<repo-or-path>`` (CLIP, ResNet, ViT-like models through ``transformers``). Frozen
inference runs through ONNX Runtime (exported once into the cache, checked against torch) or torch.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import GeoscopeError
from .efficientnet import (
    EMBED_DIM,
    LITE_MODELS,
    EfficientNetEmbedding,
    EfficientNetStageStats,
    block_count,
    lite_preprocess,
    load_efficientnet,
    split_efficientnet,
    weights_path,
)
from .hub import hf_image_spec
from .joint import SEPARATOR, joint_spec
from .onnx_runtime import export_onnx, onnx_cache_path, slug
from .preprocess import Preprocess
from .runtime import Runner, Runtime, make_runner, resolve_runtime
from .shipped import install_shipped
from .spec import EncoderSpec, fingerprint

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("onnx", "torch")
PATTERNS = ("<a>+<b>", "<name>/stats", "<name>/layout", "<name>/stages", "<name>/trunk-<n>", "<name>/pixels",
            "<name>[/variant]@<px>", "hf:<repo-or-path>")
_TRUNK = re.compile(r"^trunk-(\d+)$")
_SIZE = re.compile(r"^(.*)@(\d+)$")
MAX_INPUT_PX = 1024
STATS_VARIANTS = {"stats": (0, True), "layout": (6, True), "stages": (6, False)}
"""Variants of the stage statistics → (horizontal bands each stage is also averaged over, head conv's statistics)."""


class ImageEncoder:
    """A frozen image encoder: ``encode`` float32 ``(n, 3, H, W)`` batches into ``(n, dim)``.

    Weights load on first use, so creating one is cheap. ``output_shape`` is ``(dim,)`` for
    embeddings and ``(C, H, W)`` for trunk feature maps (returned flattened by ``encode``).
    """

    def __init__(self, spec: EncoderSpec, backend: str = "onnx", device: str = "cpu",
                 runtime: Runtime | None = None, streams: int | None = None, threads: int | None = None) -> None:
        if backend not in BACKENDS:
            raise GeoscopeError(f"unknown backend {backend!r} (use {' or '.join(BACKENDS)})")
        self.runtime = runtime if runtime is not None and backend == "onnx" else Runtime()
        """What runs the exported graph (``onnx`` backend; the ``torch`` backend computes in float32): once
        loaded, the runtime that does (ONNX Runtime where OpenVINO failed to load, see :meth:`load`)."""
        self.streams = streams
        """Parts a batch runs as at once on the CPU (``None``: :func:`~geoscope.encoders.runtime.default_streams`;
        1: one request over every thread, the fastest for a single small batch)."""
        self.spec = spec
        self.backend = backend
        self.device = device
        """``cpu`` or ``cuda:N``: where it runs (torch device, or ONNX Runtime's CUDA provider)."""
        self.threads = threads
        """Threads the exported graph runs on (``None``: this process's cores)."""
        self._module = None
        self._runner: Runner | None = None

    @property
    def name(self) -> str:
        """Registry name, e.g. ``efficientnet-lite0``."""
        return self.spec.name

    @property
    def preprocess(self) -> Preprocess:
        """The :class:`Preprocess` its inputs need."""
        return self.spec.preprocess

    @property
    def output_shape(self) -> tuple[int, ...]:
        """Shape of one output: ``(dim,)``, or ``(C, H, W)`` for feature maps."""
        return self.spec.output_shape

    @property
    def fingerprint(self) -> str:
        """Identity of weights, architecture and preprocessing."""
        return self.spec.fingerprint

    @property
    def storage_dtype(self) -> str:
        """dtype its outputs are cached in (``float16`` for feature maps)."""
        return self.spec.storage_dtype

    @property
    def dim(self) -> int:
        """Length of one (flattened) output."""
        return math.prod(self.output_shape)

    @property
    def cache_key(self) -> str:
        """Folder name of this encoder's cached features: the same for both backends and for both runtimes in
        float32; bfloat16 features, which differ, have their own."""
        return f"{slug(self.name)}-{self.fingerprint[:12]}{self.runtime.cache_suffix}"

    def __repr__(self) -> str:
        return f"ImageEncoder({self.name!r}, dim={self.dim}, backend={self.backend!r}, runtime='{self.runtime}')"

    def torch_module(self) -> nn.Module:
        """A fresh torch module (images → outputs) in eval mode, for fine-tuning."""
        return self.spec.build().eval()

    def load(self) -> ImageEncoder:
        """Load the weights or the compiled graph now rather than on the first :meth:`encode` (returns itself).

        Where the chosen runtime cannot run the graph and ONNX Runtime runs it instead, :attr:`runtime` and so
        :attr:`cache_key` change: ask for the key after loading when features are to be written under it.
        """
        if self.backend == "onnx":
            if self._runner is None:
                self._runner = self._load_onnx()
        elif self._module is None:
            import torch

            # channels-last: ~1.5× faster convolutions on CPU
            self._module = self.torch_module().to(self.device, memory_format=torch.channels_last)
        return self

    def encode(self, batch: np.ndarray) -> np.ndarray:
        """Encode preprocessed images ``(n, 3, crop, crop)`` into float32 ``(n, dim)``."""
        batch = np.asarray(batch, dtype=np.float32)
        c = self.preprocess.crop_size
        if batch.ndim != 4 or batch.shape[1:] != (3, c, c):
            raise ValueError(f"{self.name} expects a batch of shape (n, 3, {c}, {c}), got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = self._run_onnx(batch) if self.backend == "onnx" else self._run_torch(batch)
        out = out.reshape(len(batch), -1)
        if out.shape[1] != self.dim:
            raise GeoscopeError(f"{self.name}: model gives {out.shape[1]} values per image, expected {self.dim}")
        return out

    def _run_torch(self, batch: np.ndarray) -> np.ndarray:
        import torch

        module = self.load()._module
        images = torch.from_numpy(batch).to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return module(images).float().cpu().numpy()

    def _run_onnx(self, batch: np.ndarray) -> np.ndarray:
        return self.load()._runner(batch)

    def _load_onnx(self) -> Runner:
        """The cached graph compiled; made first when missing or unreadable: the shipped graph with the installed
        weights (:mod:`.shipped`), else exported from torch (seconds)."""
        path = onnx_cache_path(self.name, self.fingerprint)
        if path.is_file():
            try:
                return self._compile(path)
            except GeoscopeError:
                path.unlink(missing_ok=True)  # unreadable: made again
        if not install_shipped(self.spec, path):
            c = self.preprocess.crop_size
            example = np.random.default_rng(0).standard_normal((2, 3, c, c)).astype(np.float32)
            export_onnx(self.torch_module(), example, path)
        return self._compile(path)

    def _compile(self, path: Path) -> Runner:
        runner, self.runtime = make_runner(path, self.runtime, device=self.device, threads=self.threads,
                                           streams=self.streams)
        return runner


def _efficientnet_spec(name: str) -> EncoderSpec:
    sized = _SIZE.match(name)
    base, _, variant = (sized[1] if sized else name).partition("/")
    preprocess = lite_preprocess(base)
    if sized:  # another input size: frames resized to it (upsampled from 224 px: finer detail per unit of the net)
        px = int(sized[2])
        if not 32 <= px <= MAX_INPUT_PX:
            raise GeoscopeError(f"input size of {name!r} must be 32..{MAX_INPUT_PX} px, not {px}")
        preprocess = replace(preprocess, size=px, crop_size=px)
    weights = weights_path(base)
    identity = (base, weights.name, weights.stat().st_size, preprocess.key)
    if not variant:
        return EncoderSpec(
            name, preprocess, (EMBED_DIM,), fingerprint("efficientnet-embedding/1", *identity),
            build=lambda: EfficientNetEmbedding(load_efficientnet(base)), weights=weights,
        )
    if variant in STATS_VARIANTS:
        bands, head = STATS_VARIANTS[variant]  # the defaults add nothing to the fingerprint: caches stay valid
        extra = [*([bands] if bands else []), *([] if head else ["stages"])]
        return EncoderSpec(
            name, preprocess, (_stats_dim(base, bands, head),),
            fingerprint("efficientnet-stage-stats/1", *identity, *extra),
            build=lambda: EfficientNetStageStats(load_efficientnet(base), bands=bands, head=head), mixed_scales=True,
            weights=weights,
        )
    if variant == "pixels":  # the input itself, for a model that fine-tunes the whole encoder
        c = preprocess.crop_size
        return EncoderSpec(name, preprocess, (3, c, c), fingerprint("pixels/1", preprocess.key), build=_flatten)
    match = _TRUNK.match(variant)
    total = block_count(base)
    if not match or not 0 <= int(match[1]) <= total:
        raise GeoscopeError(f"unknown variant {variant!r} of {base}: use stats, layout, stages, pixels, or trunk-<n> "
                            f"with n in 0..{total}, then @<px> for another input size")
    n_top = int(match[1])
    return EncoderSpec(
        name, preprocess, _trunk_shape(base, n_top, preprocess.crop_size),
        fingerprint("efficientnet-trunk/1", n_top, *identity),
        build=lambda: split_efficientnet(base, n_top)[0], storage_dtype="float16", weights=weights,
    )


def _flatten() -> nn.Module:
    from torch import nn

    return nn.Flatten()


@cache
def _trunk_shape(base: str, n_top: int, size: int) -> tuple[int, ...]:
    import torch
    from efficientnet_lite_pytorch import EfficientNet

    from .efficientnet import EfficientNetTrunk

    net = EfficientNet.from_name(base).eval()
    with torch.inference_mode():
        out = EfficientNetTrunk(net, len(net._blocks) - n_top)(torch.zeros(1, 3, size, size))
    return tuple(out.shape[1:])


@cache
def _stats_dim(base: str, bands: int, head: bool) -> int:
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNetStageStats(EfficientNet.from_name(base), bands=bands, head=head).dim


_REGISTRY: dict[str, Callable[[str], EncoderSpec]] = {name: _efficientnet_spec for name in LITE_MODELS}


def register_image_encoder(name: str, factory: Callable[[str], EncoderSpec]) -> None:
    """Add a named encoder; ``factory`` receives the full requested name (``name`` or ``name/variant``)."""
    _REGISTRY[name] = factory


def available_image_encoders() -> list[str]:
    """Registered encoder names (besides the ``<name>/trunk-<n>`` and ``hf:`` patterns)."""
    return list(_REGISTRY)


def image_encoder_spec(name: str) -> EncoderSpec:
    """The spec of a named encoder; raises :class:`GeoscopeError` listing known names."""
    name = name.strip()
    if SEPARATOR in name:
        return joint_spec(name, image_encoder_spec)
    if name.startswith("hf:"):
        return hf_image_spec(name)
    base = name.partition("/")[0].partition("@")[0]
    if base not in _REGISTRY:
        known = ", ".join([*_REGISTRY, *PATTERNS])
        raise GeoscopeError(f"unknown image encoder {name!r} (known: {known})")
    return _REGISTRY[base](name)


def get_image_encoder(name: str, backend: str = "onnx", device: str = "cpu",
                      runtime: Runtime | str | None = None, streams: int | None = None,
                      threads: int | None = None) -> ImageEncoder:
    """A named image encoder on the ``onnx`` (default) or ``torch`` backend, on ``device`` (``cpu``, ``cuda:N``);
    the ``onnx`` backend's graph runs on ``runtime`` (a :class:`Runtime`, or a name for :func:`resolve_runtime`;
    ``None``: ``$GEOSCOPE_RUNTIME``, else ``auto``), in ``streams`` (:attr:`ImageEncoder.streams`) with ``threads``
    threads (``None``: this process's cores)."""
    if backend not in BACKENDS:
        raise GeoscopeError(f"unknown backend {backend!r} (use {' or '.join(BACKENDS)})")
    if not isinstance(runtime, Runtime):
        runtime = resolve_runtime(runtime, device="cpu" if device == "cpu" else "cuda") if backend == "onnx" \
            else Runtime()
    return ImageEncoder(image_encoder_spec(name), backend, device, runtime, streams, threads)


__all__ = [
    "BACKENDS",
    "EncoderSpec",
    "ImageEncoder",
    "Preprocess",
    "available_image_encoders",
    "get_image_encoder",
    "image_encoder_spec",
    "register_image_encoder",
    "split_efficientnet",
]
