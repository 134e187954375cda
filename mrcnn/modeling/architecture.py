"""Stage layouts of the bottleneck ResNets / ResNeXts (no TensorFlow: the Config validates with it).

`Architecture` describes a backbone; `ARCHITECTURES` names the paper's (Config.BACKBONE strings);
`mrcnn.modeling.backbone.ResNet` builds any of them. A custom one, e.g. the narrow ResNet of the
shapes demo, goes straight into Config.BACKBONE.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Architecture:
    """Stage layout of a bottleneck ResNet / ResNeXt.

    Attributes:
        blocks: blocks per stage (stages 2, 3, 4, 5).
        cardinality: groups of every 3x3 convolution (1: ResNet; ResNeXt's C).
        width: channels of the 3x3 convolution at stage 2 (ResNet 64; ResNeXt C * d); doubles per stage.
        stride_in_1x1: stride 2 of stages 3-5 on the first 1x1 convolution (Caffe ResNet, matterport)
            rather than on the 3x3 (ResNeXt).
        out_width: output channels of every block at stage 2 (ResNet/ResNeXt 256); doubles per
            stage. A narrower ResNet (e.g. width 16, out_width 64) suits small from-scratch runs.
    """

    blocks: tuple[int, int, int, int]
    cardinality: int = 1
    width: int = 64
    stride_in_1x1: bool = True
    out_width: int = 256

    def __post_init__(self) -> None:
        blocks = tuple(int(b) for b in self.blocks)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts (stages 2-5), got {self.blocks!r}")
        if int(self.cardinality) < 1 or int(self.width) % int(self.cardinality):
            raise ValueError(f"width ({self.width!r}) must be a multiple of cardinality ({self.cardinality!r}) >= 1")
        if int(self.out_width) < 1:
            raise ValueError(f"out_width must be a positive int, got {self.out_width!r}")
        object.__setattr__(self, "blocks", blocks)  # a list (e.g. from JSON) becomes a tuple

    def filters(self, stage: int) -> tuple[int, int, int]:
        """(1x1 in, 3x3, 1x1 out) channels of a block of `stage` (2..5)."""
        scale = 2 ** (stage - 2)
        return self.width * scale, self.width * scale, self.out_width * scale


ARCHITECTURES = {
    "resnet50": Architecture((3, 4, 6, 3)),
    "resnet101": Architecture((3, 4, 23, 3)),
    # ResNeXt-101 C x d: C = 32 or 64 groups of d = 4 channels at stage 2 (widths 128 / 256 there).
    "resnext101_32x4d": Architecture((3, 4, 23, 3), cardinality=32, width=32 * 4, stride_in_1x1=False),
    "resnext101_64x4d": Architecture((3, 4, 23, 3), cardinality=64, width=64 * 4, stride_in_1x1=False),
}


def get_architecture(architecture: str | Architecture | dict[str, Any]) -> Architecture:
    """The `Architecture` named by `architecture` (a key of ARCHITECTURES), or given as one (or as
    the dict of its fields, as `get_config` stores a custom one).

    Raises:
        ValueError: for an unknown name.
    """
    if isinstance(architecture, Architecture):
        return architecture
    if isinstance(architecture, dict):
        return Architecture(**architecture)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture must be one of {sorted(ARCHITECTURES)} or an Architecture, "
                         f"got {architecture!r}")
    return ARCHITECTURES[architecture]


def architecture_to_config(architecture: str | Architecture) -> str | dict[str, Any]:
    """`architecture` for get_config: its name, or its fields for a custom Architecture."""
    return architecture if isinstance(architecture, str) else dataclasses.asdict(architecture)
