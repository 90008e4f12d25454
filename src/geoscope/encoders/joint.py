"""Several frozen encoders read as one: ``<a>+<b>`` concatenates their outputs per image.

The joint encoder takes the preprocessing of its part with the largest input; inside the
graph each other part gets the same frame resized to its own input and renormalised to its own
mean and std (bilinear: ONNX Runtime's bicubic resize cost five times Lite0 itself). So one
decode feeds every part, the features cache and ONNX export see one encoder, and predict, serve
and training need nothing new. The outputs mix scales, so heads standardise them per dimension
(each part's values on their own scale).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import GeoscopeError
from .preprocess import Preprocess
from .spec import EncoderSpec, fingerprint

SEPARATOR = "+"
RESIZE = "bilinear"
"""How the frame is resized in the graph for a part with a smaller input."""


def joint_spec(name: str, part_spec: Callable[[str], EncoderSpec]) -> EncoderSpec:
    """The spec of ``<a>+<b>[+…]``; ``part_spec`` resolves each part's name."""
    names = [part.strip() for part in name.split(SEPARATOR)]
    if len(names) < 2 or not all(names):
        raise GeoscopeError(f"joint encoder {name!r} needs two or more encoder names joined by {SEPARATOR!r}")
    if len(set(names)) < len(names):
        raise GeoscopeError(f"joint encoder {name!r} names an encoder twice")
    parts = [part_spec(part) for part in names]
    for part in parts:
        if len(part.output_shape) != 1:
            raise GeoscopeError(f"joint encoder {name!r}: {part.name} gives feature maps, not one vector per "
                                "image; join encoders such as <name>/stats")
    main = max(parts, key=lambda part: part.preprocess.crop_size)
    return EncoderSpec(
        name=SEPARATOR.join(names),
        preprocess=main.preprocess,
        output_shape=(sum(part.output_shape[0] for part in parts),),
        fingerprint=fingerprint("joint/1", RESIZE, main.preprocess.key, *(part.fingerprint for part in parts)),
        build=lambda: JointEncoder([part.build() for part in parts], [part.preprocess for part in parts],
                                   main.preprocess),
        mixed_scales=True,
    )


class JointEncoder(nn.Module):
    """Images preprocessed as ``given`` → each part's output on the frame as it wants it, concatenated."""

    def __init__(self, parts: Sequence[nn.Module], preprocesses: Sequence[Preprocess], given: Preprocess) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)
        self.sizes = [p.crop_size for p in preprocesses]
        # x_part = (x_given · std_given + mean_given − mean_part) / std_part, per channel
        for i, p in enumerate(preprocesses):
            scale = [gs / ps for gs, ps in zip(given.std, p.std, strict=True)]
            shift = [(gm - pm) / ps for gm, pm, ps in zip(given.mean, p.mean, p.std, strict=True)]
            self.register_buffer(f"scale{i}", torch.tensor(scale).view(1, 3, 1, 1), persistent=False)
            self.register_buffer(f"shift{i}", torch.tensor(shift).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = []
        for i, (part, size) in enumerate(zip(self.parts, self.sizes, strict=True)):
            x = images * getattr(self, f"scale{i}") + getattr(self, f"shift{i}")
            if x.shape[-1] != size:
                x = F.interpolate(x, size=(size, size), mode=RESIZE, align_corners=False)
            outputs.append(part(x).flatten(1))
        return torch.cat(outputs, dim=1)
