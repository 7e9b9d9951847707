"""Names of the feature layers a grey-box adapter can perturb, and the aliases that group them.

Every grey-box adapter describes its network as a U-Net, whatever the framework:

* ``encoder0`` .. ``encoder{L-2}``: encoder block outputs, shallowest first (also the skip
  features of their resolution);
* ``bottleneck``: the deepest encoder output, the paper's perturbation site;
* ``decoder0`` ..: decoder block outputs, deepest first.

Aliases expand to those plain names, so one perturbation label means the same on a kit U-Net,
a Cellpose CPnet and a StarDist network:

* ``sym{k}``: the official CTE implementation's "symmetric" layer k. ``sym0`` is the
  bottleneck; ``sym{k}`` (k >= 1) is the encoder output k levels above the bottleneck together
  with the decoder output of the same resolution;
* ``encoders`` / ``decoders``: every encoder output (not the bottleneck) / every decoder output;
* ``all``: every plain layer.

``dropout:0.1@sym1``, ``dropout:0.05@all`` and ``dropout:0.2@encoder0+bottleneck`` are labels
of :class:`cte_kit.perturb.FeatureDropout`; :meth:`LayerMap.resolve` turns their layer part into
plain names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

__all__ = ["LayerMap", "GROUP_ALIASES"]

#: Aliases for groups of layers (besides ``sym{k}``).
GROUP_ALIASES = ("encoders", "decoders", "all")


@dataclass(frozen=True)
class LayerMap:
    """The perturbable layers of one network.

    Attributes
    ----------
    encoders : tuple of str
        Encoder output names, shallowest first, without the bottleneck.
    decoders : tuple of str
        Decoder output names, deepest first.
    symmetric : tuple of tuple of str
        Plain names of ``sym0``, ``sym1``, ...; ``sym0`` is ``('bottleneck',)``.
    """

    encoders: tuple[str, ...] = ()
    decoders: tuple[str, ...] = ()
    symmetric: tuple[tuple[str, ...], ...] = (("bottleneck",),)

    @classmethod
    def unet(cls, levels: int, decoder_at_bottleneck: bool = False) -> "LayerMap":
        """The layers of a U-Net with ``levels`` resolution levels.

        Parameters
        ----------
        levels : int
            Resolution levels, the bottleneck's included (>= 2).
        decoder_at_bottleneck : bool
            The network has one more decoder block, at the bottleneck's resolution (Cellpose's
            CPnet: its deepest ``res_up`` block). It is ``decoder0``, and ``sym{k}`` pairs the
            encoder output with ``decoder{k}`` instead of ``decoder{k-1}``.
        """
        if levels < 2:
            raise ValueError(f"a U-Net has at least 2 levels, got {levels}")
        offset = int(decoder_at_bottleneck)
        encoders = tuple(f"encoder{i}" for i in range(levels - 1))
        decoders = tuple(f"decoder{i}" for i in range(levels - 1 + offset))
        symmetric = (("bottleneck",),) + tuple(
            (encoders[levels - 1 - k], decoders[k - 1 + offset]) for k in range(1, levels)
        )
        return cls(encoders, decoders, symmetric)

    @property
    def plain(self) -> tuple[str, ...]:
        """Every plain layer name, in the order the network computes them."""
        return (*self.encoders, "bottleneck", *self.decoders)

    @property
    def aliases(self) -> dict[str, tuple[str, ...]]:
        """Alias -> plain names."""
        groups = zip(GROUP_ALIASES, (self.encoders, self.decoders, self.plain))
        return {**{f"sym{k}": names for k, names in enumerate(self.symmetric)},
                **{name: names for name, names in groups if names}}

    @property
    def names(self) -> tuple[str, ...]:
        """Every name :meth:`resolve` accepts."""
        return (*self.plain, *self.aliases)

    def resolve(self, layers: Sequence[str], model: str = "") -> tuple[str, ...]:
        """Plain layer names for ``layers`` (plain names or aliases), each once, in network order.

        Raises
        ------
        ValueError
            A name is neither a layer nor an alias; the message lists both.
        """
        if isinstance(layers, str):
            layers = (layers,)
        aliases = self.aliases
        unknown = [layer for layer in layers if layer not in self.plain and layer not in aliases]
        if unknown:
            owner = f"model {model!r}" if model else "this network"
            raise ValueError(f"{owner} has no layer(s) {unknown}; layers: {list(self.plain)}; "
                             f"aliases: {list(aliases)}")
        wanted = {name for layer in layers for name in aliases.get(layer, (layer,))}
        return tuple(name for name in self.plain if name in wanted)
