"""The image side of a model: from pixels, through the cached encoder, to image features.

A frozen model caches the encoder's pooled embedding of each image. A fine-tuned one
caches the feature maps below the encoder's last ``finetune_blocks`` MBConv blocks
(``<encoder>/trunk-<n>``) and trains those blocks (:class:`TrunkTop`) on the cache, so an
epoch runs only the top of the network. ``finetune_blocks="all"`` caches nothing: the images
are decoded when a batch needs them and the whole encoder trains (:mod:`geoscope.features.pixels`), read
out as its name says: the pooled embedding, or the stage statistics of ``<lite>/stats``, ``/layout`` or ``/stages``.
Either way the image is seen as ``crops`` square crops along its long side, whose features
are averaged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from ..encoders.efficientnet import (
    LITE_MODELS,
    EfficientNetEmbedding,
    EfficientNetStageStats,
    block_count,
    load_efficientnet,
    split_efficientnet,
)
from ..encoders.image import STATS_VARIANTS, ImageEncoder, image_encoder_spec
from ..encoders.preprocess import Views
from ..errors import GeoscopeError
from ..features.cache import FeatureSet, extract_features
from ..features.pixels import ImagePixels, read_pixels, readable

ALL_BLOCKS = "all"
"""``finetune_blocks`` that fine-tunes the whole encoder from pixels."""
PIXEL_WINDOW = 0.875
"""Fine-tuning from pixels trains on a random square window of this share of the image's side."""
PIXEL_EVAL_BATCH = 8
"""Images the whole encoder reads at a time outside training: on 2 cores, float32, batches of 8 run 44 images/s
and batches of 128 20 (the wide early maps of many images at once leave the caches)."""
TOP = "image_top."
"""Prefix of the fine-tuned encoder top's weights in a bundle."""


@dataclass(frozen=True)
class ImageSide:
    """Which encoder, how much of it is fine-tuned, and how many crops of each image."""

    name: str = "efficientnet-lite0"
    finetune_blocks: int | str = 0
    """MBConv blocks fine-tuned at the top of the encoder, or ``"all"``: the whole encoder, from pixels."""
    crops: int = 1

    def __post_init__(self) -> None:
        blocks = self.finetune_blocks
        if blocks != ALL_BLOCKS and (isinstance(blocks, str) or blocks < 0):
            raise GeoscopeError(f"finetune_blocks must be 0 or more, or {ALL_BLOCKS!r}, not {blocks!r}")
        if self.finetune_blocks:
            base, _, variant = self.name.partition("/")
            if self.end_to_end and base in LITE_MODELS and variant in STATS_VARIANTS:
                pass  # the whole encoder under its stage statistics (``<lite>/layout``), from pixels
            elif self.name not in LITE_MODELS:
                whole = f" (its {', '.join(f'/{v}' for v in STATS_VARIANTS)} only with all of it fine-tuned)" \
                    if base in LITE_MODELS else ""
                raise GeoscopeError(f"fine-tuning needs an EfficientNet-Lite encoder{whole}, not {self.name!r}")
            if not self.end_to_end and self.finetune_blocks > (total := block_count(self.name)):
                raise GeoscopeError(f"{self.name} has {total} blocks: fine-tune 0 to {total}, "
                                    f"not {self.finetune_blocks}")
        Views(crops=self.crops)  # validates the count

    @property
    def end_to_end(self) -> bool:
        """Whether the whole encoder is fine-tuned, from pixels (nothing is cached)."""
        return self.finetune_blocks == ALL_BLOCKS

    @property
    def cached_encoder(self) -> str:
        """Name of the encoder whose outputs the model reads (a trunk when fine-tuning the top; the
        preprocessed pixels, never cached, when fine-tuning all of it)."""
        if self.end_to_end:
            return f"{self.base}/pixels"
        return f"{self.name}/trunk-{self.finetune_blocks}" if self.finetune_blocks else self.name

    @property
    def base(self) -> str:
        """The network the name reads (``efficientnet-lite0`` of ``efficientnet-lite0/layout``)."""
        return self.name.partition("/")[0] if self.finetune_blocks else self.name

    @property
    def mixed_scales(self) -> bool:
        """Whether the image features mix blocks on different scales (the head then standardises them)."""
        return (self.end_to_end or not self.finetune_blocks) and image_encoder_spec(self.name).mixed_scales

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ImageSide:
        """Inverse of :meth:`to_dict` (bundles written before fine-tuning hold only ``name``)."""
        blocks = data.get("finetune_blocks", 0)
        return cls(str(data["name"]), blocks if blocks == ALL_BLOCKS else int(blocks), int(data.get("crops", 1)))

    def training_inputs(self, paths: Sequence[str | os.PathLike[str]], *, flips: bool, progress: bool = True,
                        device: str = "cpu") -> tuple[np.ndarray | ImagePixels, np.ndarray, list[str]]:
        """What training reads, ``(variants, images, dim)`` (variant 1: flipped copies), which images could
        be read, and why not: cached encoder outputs, or with ``end_to_end`` the images read on demand."""
        if self.end_to_end:
            valid, errors = readable(paths, image_encoder_spec(self.name).preprocess, progress=progress)
            pixels = ImagePixels(paths, image_encoder_spec(self.name).preprocess, crops=self.crops,
                                 variants=2 if flips else 1)
            return pixels, valid, errors
        plain = self.extract(paths, progress=progress, device=device)
        variants = [plain.embeddings]
        if flips:
            variants.append(self.extract(paths, hflip=True, progress=progress, device=device).embeddings)
        return np.stack(variants), np.asarray(plain.valid, dtype=bool), list(plain.errors)

    def extract(self, paths: Sequence[str | os.PathLike[str]], *, hflip: bool = False, progress: bool = True,
                encoder: ImageEncoder | None = None, device: str = "cpu") -> FeatureSet:
        """Cached encoder outputs of every image, one flattened row each (crops side by side).

        ``encoder`` (optional) is a loaded :attr:`cached_encoder`, reused across calls; otherwise
        the encoder runs on ``device`` (``cpu``, or ``cuda:N`` through ONNX Runtime's CUDA provider).
        """
        if self.end_to_end:
            return read_pixels(paths, image_encoder_spec(self.name).preprocess, crops=self.crops, hflip=hflip)
        views = Views(hflip=hflip, crops=self.crops)
        fs = extract_features(list(paths), encoder or self.cached_encoder, augment=views, combine=self.combine,
                              progress=progress, device=device)
        if fs.embeddings.ndim == 3:
            fs.embeddings = fs.embeddings.reshape(len(fs.embeddings), -1)
        return fs

    @property
    def combine(self) -> str:
        """How an image's crops combine: side by side for a fine-tuned top (it reads each crop's maps), else
        their mean."""
        return "stack" if self.finetune_blocks else "mean"

    def encode_views(self, views: Sequence[np.ndarray], encoder: ImageEncoder, batch_size: int = 16) -> np.ndarray:
        """Encoder outputs of images already decoded and preprocessed (one ``(crops, 3, c, c)`` array each:
        uploads, occluded frames), never cached, their crops combined as :meth:`extract` combines them."""
        c = encoder.preprocess.crop_size
        stacked = np.concatenate(views) if len(views) else np.zeros((0, 3, c, c), dtype=np.float32)
        step = batch_size * self.crops
        encoded = np.concatenate([encoder.encode(stacked[i:i + step]) for i in range(0, len(stacked), step)]
                                 or [np.zeros((0, encoder.dim), dtype=np.float32)])
        encoded = encoded.reshape(len(views), self.crops, encoder.dim)
        return encoded.reshape(len(views), -1) if self.combine == "stack" else encoded.mean(axis=1)

    def stored_adapter(self, tensors: Mapping[str, np.ndarray]) -> nn.Module:
        """:meth:`adapter` with the fine-tuned weights a bundle stores (under :data:`TOP`), in eval mode; raises
        ``RuntimeError`` when they do not fit."""
        adapter = self.adapter()
        if self.finetune_blocks:
            adapter.load_state_dict({k.removeprefix(TOP): torch.from_numpy(v.copy())
                                     for k, v in tensors.items() if k.startswith(TOP)})
        return adapter.eval()

    def adapter(self) -> nn.Module:
        """Cached outputs → image features: the pretrained top when fine-tuning, else identity."""
        if not self.finetune_blocks:
            return nn.Identity()
        if self.end_to_end:
            c = image_encoder_spec(self.name).preprocess.crop_size
            net = load_efficientnet(self.base)
            net._fc = nn.Identity()  # the ImageNet classifier: not part of the embedding, nothing to train or store
            variant = self.name.partition("/")[2]
            whole = EfficientNetStageStats(net, bands=STATS_VARIANTS[variant][0], head=STATS_VARIANTS[variant][1]) \
                if variant else EfficientNetEmbedding(net)
            return TrunkTop(whole, (3, c, c), self.crops, train_window=round(c * PIXEL_WINDOW),
                            eval_batch=PIXEL_EVAL_BATCH)
        _, top = split_efficientnet(self.name, self.finetune_blocks)
        return TrunkTop(top, image_encoder_spec(self.cached_encoder).output_shape, self.crops)


@dataclass
class TrainedImageSide:
    """The image side as a bundle stores it: its section (``image_encoder``) and the trained top's weights."""

    side: ImageSide
    adapter: nn.Module | None = None
    """The fine-tuned encoder top (None: a frozen encoder)."""

    def to_dict(self) -> dict:
        return self.side.to_dict()

    def tensors(self) -> dict[str, np.ndarray]:
        if self.adapter is None:
            return {}
        return {f"{TOP}{k}": v.detach().cpu().numpy() for k, v in self.adapter.state_dict().items()}


class TrunkTop(nn.Module):
    """Flattened trunk feature maps of ``crops`` crops per image → the top blocks → mean feature.

    While training, each map is cut to a random ``train_window`` × ``train_window`` window
    (default: two cells smaller than the map): a random crop of the image, augmentation
    that also halves the work. Batch-norm statistics stay frozen (batches of one small
    dataset would skew them); the blocks' weights and the norms' affine parameters train.
    """

    def __init__(self, top: nn.Module, map_shape: Sequence[int], crops: int = 1,
                 train_window: int | None = None, eval_batch: int | None = None) -> None:
        super().__init__()
        self.top = top
        self.map_shape = tuple(int(v) for v in map_shape)
        self.crops = crops
        side = min(self.map_shape[1:])
        self.train_window = max(1, side - 2) if train_window is None else min(train_window, side)
        self.eval_batch = eval_batch
        """Outside training, at most this many images go through the blocks at a time (None: all at once)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training and self.eval_batch and n > self.eval_batch:
            return torch.cat([self(x[i:i + self.eval_batch]) for i in range(0, n, self.eval_batch)])
        maps = x.reshape(n * self.crops, *self.map_shape)
        if self.training:
            maps = _random_windows(maps, self.train_window)
        return self.top(maps).reshape(n, self.crops, -1).mean(dim=1)

    def train(self, mode: bool = True) -> TrunkTop:
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self


def _random_windows(maps: torch.Tensor, size: int) -> torch.Tensor:
    """One random ``size`` × ``size`` window of each ``(C, H, W)`` map."""
    n, _, height, width = maps.shape
    top = torch.randint(0, height - size + 1, (n, 1))
    left = torch.randint(0, width - size + 1, (n, 1))
    rows = (top + torch.arange(size))[:, :, None]
    cols = (left + torch.arange(size))[:, None, :]
    return maps.permute(0, 2, 3, 1)[torch.arange(n)[:, None, None], rows, cols].permute(0, 3, 1, 2)


@torch.no_grad()
def apply_adapter(adapter: nn.Module, features: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """Run ``adapter`` (in eval mode) over rows of cached features; NaN rows stay NaN."""
    features = np.asarray(features, dtype=np.float32)
    if isinstance(adapter, nn.Identity):
        return features
    adapter.eval()
    bad = ~np.isfinite(features).all(axis=1)
    chunks = []
    for start in range(0, len(features), batch_size):
        batch = np.nan_to_num(features[start : start + batch_size], nan=0.0, posinf=0.0, neginf=0.0)
        chunks.append(adapter(torch.from_numpy(batch)).numpy())
    if not chunks:
        return np.zeros((0, _output_dim(adapter, features.shape[1])), dtype=np.float32)
    out = np.concatenate(chunks)
    out[bad] = np.nan
    return out


def adapt_rows(adapter: nn.Module, features: np.ndarray | ImagePixels, rows: np.ndarray, variant: int = 0,
               batch_size: int = 128) -> np.ndarray:
    """:func:`apply_adapter` over ``features[variant, rows]``, read a batch at a time (pixels are decoded then)."""
    chunks = [apply_adapter(adapter, features[variant, rows[i:i + batch_size]])
              for i in range(0, len(rows), batch_size)]
    return np.concatenate(chunks) if chunks else apply_adapter(adapter, features[variant, rows])


@torch.no_grad()
def _output_dim(adapter: nn.Module, input_dim: int) -> int:
    adapter.eval()
    return int(adapter(torch.zeros(1, input_dim)).shape[-1])
