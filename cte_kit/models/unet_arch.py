"""A plain 2D U-Net in PyTorch.

This file imports nothing but torch so that it can travel unchanged inside a bioimage.io model
package as the architecture source of ``pytorch_state_dict`` weights.

Layer names used for feature perturbation:

* ``encoder0`` .. ``encoder{L-2}``: outputs of the encoder blocks (also the skip features),
  shallowest first;
* ``bottleneck``: output of the deepest encoder block (``encoders[L-1]``), the paper's
  perturbation site;
* ``decoder0`` .. ``decoder{L-2}``: outputs of the decoder blocks, deepest first.

The adapter (:class:`cte_kit.models.unet.UNetModel`) adds the aliases of
:mod:`cte_kit.models.layers` (``sym{k}``, ``encoders``, ``decoders``, ``all``).

The forward pass accepts a batch that a hook doubled (``cat([clean, perturbed])``) at any of
these sites: skip features computed before the doubling are repeated to match, which lets the
clean and the perturbed prediction share every layer in front of the perturbation.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["UNet"]


def _conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """2D U-Net: max-pool encoder, nearest-neighbour upsampling, concatenated skips.

    Parameters
    ----------
    in_channels : int
        Image channels (1 grey, 3 colour).
    out_channels : int
        1 (foreground) or 2 (foreground, boundary). The network returns logits.
    levels : int
        Resolution levels, 3 or 4 as in the CTE paper; the bottleneck is at 1 / 2**(levels-1).
    width : int
        Channels of the first level; doubled at each level below.
    dropout : float
        Channel dropout at the bottleneck, active in training only.
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, levels: int = 3, width: int = 16, dropout: float = 0.1):
        super().__init__()
        if levels < 2:
            raise ValueError(f"a U-Net needs at least 2 levels, got {levels}")
        channels = [width * 2**level for level in range(levels)]
        self.levels = levels
        self.encoders = nn.ModuleList(
            _conv_block(c_in, c_out) for c_in, c_out in zip([in_channels, *channels[:-1]], channels)
        )
        self.train_dropout = nn.Dropout2d(dropout)
        deep_to_shallow = channels[::-1]
        self.decoders = nn.ModuleList(
            _conv_block(c_deep + c_skip, c_skip) for c_deep, c_skip in zip(deep_to_shallow[:-1], deep_to_shallow[1:])
        )
        self.head = nn.Conv2d(channels[0], out_channels, 1)

    @property
    def divisor(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (self.levels - 1)

    def layer(self, name: str) -> nn.Module:
        """The module whose output is the feature map called ``name``."""
        if name == "bottleneck":
            return self.encoders[-1]
        for prefix, blocks, count in (("encoder", self.encoders, self.levels - 1), ("decoder", self.decoders, self.levels - 1)):
            if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) < count:
                return blocks[int(name[len(prefix):])]
        raise KeyError(f"no layer {name!r}; layers: {self.layer_names()}")

    def layer_names(self) -> tuple[str, ...]:
        encoders = [f"encoder{i}" for i in range(self.levels - 1)]
        decoders = [f"decoder{i}" for i in range(self.levels - 1)]
        return (*encoders, "bottleneck", *decoders)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for depth, encoder in enumerate(self.encoders):
            if depth > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        x = self.train_dropout(skips.pop())
        for decoder in self.decoders:
            skip = skips.pop()
            if skip.shape[0] != x.shape[0]:
                # A hook doubled the batch after this skip was computed: share it (cat, unlike
                # repeat, keeps the channels-last memory the convolutions are fastest in)
                skip = torch.cat([skip] * (x.shape[0] // skip.shape[0]))
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = decoder(torch.cat([skip, x], dim=1))
        return self.head(x)
