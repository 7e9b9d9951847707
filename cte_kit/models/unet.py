"""The kit's own PyTorch U-Nets as a grey-box model adapter, and their checkpoints.

A checkpoint is one ``torch.save`` file holding the architecture arguments, the state dict and
the kit settings (normalisation, threshold, instance method), so a model reloads from its path
alone::

    model = UNetModel.from_checkpoint("bank/bbbc039.pt")
    pairs = model.predict_pairs(images, FeatureDropout(0.2))

Feature perturbation forks the batch at the first perturbed layer (see
:func:`cte_kit.perturb.feature_dropout`): the encoder runs once, the decoder twice in one
batched call, so a grey-box CTE pair costs well under two forward passes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from ..perturb import FeatureDropout, feature_dropout
from ..types import Prediction
from ._common import bank_settings
from .base import SegmentationModel
from .instances import INSTANCE_METHODS, instances_from_probability
from .layers import LayerMap
from .tiling import Tiling
from .unet_arch import UNet

__all__ = ["BANK_SETTINGS", "UNetConfig", "UNetModel", "receptive_radius", "save_checkpoint", "load_checkpoint",
           "from_bank_entry", "demo_bank_dir", "demo_checkpoint", "CHECKPOINT_FORMAT", "forward_at_scale", "resize",
           "scaled_size"]

CHECKPOINT_FORMAT = "cte_kit.unet/1"


@dataclass(frozen=True)
class UNetConfig:
    """Architecture and output conventions of a kit U-Net.

    Attributes
    ----------
    in_channels : int
    levels : {3, 4}
    width : int
        Channels at the first level.
    output : {'foreground', 'foreground+boundary'}
        Semantic foreground only, or foreground plus a boundary channel for instance splitting.
    dropout : float
        Training-time channel dropout at the bottleneck.
    """

    in_channels: int = 1
    levels: int = 3
    width: int = 16
    output: str = "foreground"
    dropout: float = 0.1

    def __post_init__(self):
        if self.output not in ("foreground", "foreground+boundary"):
            raise ValueError(f"output must be 'foreground' or 'foreground+boundary', got {self.output!r}")
        if self.levels not in (2, 3, 4, 5):
            raise ValueError(f"levels must be 2..5, got {self.levels}")

    @property
    def out_channels(self) -> int:
        return 1 if self.output == "foreground" else 2

    def build(self) -> UNet:
        return UNet(self.in_channels, self.out_channels, self.levels, self.width, self.dropout)


def resize(tensor: torch.Tensor, size: tuple[int, int], labels: bool = False) -> torch.Tensor:
    """Resize (N, C, H, W) maps to ``size``: bilinear, anti-aliased when shrinking; nearest for labels."""
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    if labels:
        return F.interpolate(tensor, size=size, mode="nearest-exact")
    shrinking = size[0] < tensor.shape[-2] or size[1] < tensor.shape[-1]
    return F.interpolate(tensor, size=size, mode="bilinear", align_corners=False, antialias=shrinking)


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The (H, W) an image of ``size`` has at the network's scale (at least one pixel a side)."""
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _to_network(tensor: torch.Tensor, scale: float, divisor: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Images (N, C, H, W) resized by ``scale`` and padded at the bottom and right to the divisor."""
    size = scaled_size(tuple(tensor.shape[-2:]), scale)
    tensor = resize(tensor, size)
    pad_h, pad_w = (-size[0]) % divisor, (-size[1]) % divisor
    if pad_h or pad_w:
        # reflect keeps image statistics at the border; pad only bottom/right so crops are trivial
        mode = "reflect" if pad_h < size[0] and pad_w < size[1] else "replicate"
        tensor = F.pad(tensor, (0, pad_w, 0, pad_h), mode=mode)
    return tensor, size


def _from_network(logits: torch.Tensor, size: tuple[int, int], network_size: tuple[int, int]) -> torch.Tensor:
    """Network outputs cropped to the images' extent at the network's scale and resized to ``size``."""
    return resize(logits[..., : network_size[0], : network_size[1]], size)


def forward_at_scale(network: UNet, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Logits (N, C_out, H, W) of normalised images (N, C, H, W) at any size, as a model with ``scale`` predicts them."""
    tensor, network_size = _to_network(images, scale, network.divisor)
    return _from_network(network(tensor), tuple(images.shape[-2:]), network_size)


def receptive_radius(levels: int) -> int:
    """Pixels of context a kit U-Net of ``levels`` levels reads on each side of an output pixel.

    Two 3x3 convolutions per block add ``2 * 2**l`` at level ``l`` (encoder levels 0..L-1, decoder
    levels 0..L-2); each 2x2 max-pooling and nearest-neighbour upsampling between levels ``l`` and
    ``l + 1`` adds at most ``1.5 * 2**l``.
    """
    levels = int(levels)
    return int(math.ceil(2 * (2**levels - 1) + 2 * (2 ** (levels - 1) - 1) + 1.5 * (2 ** (levels - 1) - 1) + 1))


def save_checkpoint(network: UNet, config: UNetConfig, path: str | Path, settings: dict | None = None, history: dict | None = None) -> Path:
    """Write a self-describing checkpoint (architecture, weights, kit settings, training history).

    The file is written to a temporary name and renamed, so an interrupted save never leaves a
    truncated checkpoint under ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": asdict(config),
        "state_dict": {k: v.detach().cpu() for k, v in network.state_dict().items()},
        "settings": dict(settings or {}),
        "history": dict(history or {}),
    }
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)
    return path


def load_checkpoint(path: str | Path) -> tuple[UNet, UNetConfig, dict, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    network : UNet (eval mode, CPU)
    config : UNetConfig
    settings : dict
        Kit settings stored with the model (percentiles, threshold, instances, ...).
    history : dict
        Training record (source, epochs, losses).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"U-Net checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"cannot read U-Net checkpoint {path}: the file is corrupt or not a torch file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} is not a cte_kit U-Net checkpoint (format {payload.get('format') if isinstance(payload, dict) else None!r}, "
            f"expected {CHECKPOINT_FORMAT!r}); train one with `cte-kit train`"
        )
    config = UNetConfig(**payload["config"])
    network = config.build()
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"weights in {path} do not fit the stored architecture: {error}") from None
    network.eval()
    return network, config, payload.get("settings", {}), payload.get("history", {})


@dataclass
class UNetModel(SegmentationModel):
    """Grey-box adapter for a kit :class:`~cte_kit.models.unet_arch.UNet`.

    Parameters
    ----------
    network : UNet
    config : UNetConfig
    instances : {'components', 'watershed', 'dt_watershed'}
        How instance labels are derived from the semantic output
        (:func:`~cte_kit.models.instances.instances_from_probability`).
    min_size : int
        Smallest object kept in instance labels (pixels).
    scale : float
        In (0, 1]: the network sees each image shrunk by this factor (the scale it was trained
        at, e.g. 0.5 for cells twice as large as its receptive field suits); its outputs are
        resized back, so predictions always have the image's size. Feature maps
        (:meth:`layer_features`) are at the network's scale.
    device : str
        Torch device.
    tile_size : int or None
        An image larger than this on either side is predicted in overlapping tiles of at most this
        side and stitched (:mod:`cte_kit.models.tiling`), so memory does not grow with the image;
        None predicts every image whole. 1024, measured on a 4096 x 4096 section with the two demo
        U-Nets (3 levels, margin 26 px) on 2 torch threads: 0.7-0.9 CPU s per megapixel, as the
        whole image (0.7) and 768 px tiles, where 512 px tiles took 1.6-1.8 (the margins add only
        26 % to a 512 tile: torch's convolutions ran slower per pixel on the smaller tiles); the
        network's memory for one tile, about 0.6 GB above the loaded kit at 768 or 1024 px and 0.2 GB
        at 512, is what the speed costs (``benchmarks/bench_large_images.py``, README "Large images").
    tile_overlap : int, optional
        Context around each tile's core (pixels); default: the network's receptive-field radius,
        with which the stitched probability equals the whole image's.
    """

    network: UNet | None = None
    config: UNetConfig = field(default_factory=UNetConfig)
    instances: str = "components"
    min_size: int = 0
    scale: float = 1.0
    device: str = "cpu"
    tile_size: int | None = 1024
    tile_overlap: int | None = None

    def __post_init__(self):
        if self.network is None:
            raise ValueError("UNetModel needs a network; use UNetModel.from_checkpoint(path)")
        if self.instances not in INSTANCE_METHODS:
            raise ValueError(f"unknown instance method {self.instances!r}; choose from {INSTANCE_METHODS}")
        if not (isinstance(self.scale, (int, float)) and 0 < self.scale <= 1):
            raise ValueError(f"scale must be a number in (0, 1], got {self.scale!r}")
        self.scale = float(self.scale)
        self.channels = self.config.in_channels
        # channels-last memory halves the CPU time of these small convolutions (oneDNN's blocked kernels)
        self.network = self.network.to(self.device, memory_format=torch.channels_last).eval()
        self.layer_map = LayerMap.unet(self.network.levels)
        self._tiling()  # a tile_size that leaves no core inside its margins is refused when the model loads

    @classmethod
    def from_checkpoint(cls, path: str | Path, name: str | None = None, **settings: Any) -> "UNetModel":
        """Load a checkpoint; ``settings`` override those stored in it."""
        network, config, stored, _ = load_checkpoint(path)
        merged = {**stored, **settings}
        if merged.get("percentiles") is not None:
            merged["percentiles"] = tuple(merged["percentiles"])
        unknown = sorted(set(merged) - set(BANK_SETTINGS))
        if unknown:
            raise ValueError(f"unknown U-Net setting(s) {unknown}; known: {list(BANK_SETTINGS)}")
        return cls(name=name or Path(path).stem, network=network, config=config, **merged)

    @property
    def output(self) -> str:
        return "both"

    def _layer_modules(self, name: str) -> list:
        return [self.network.layer(name)]

    def _tiling(self) -> Tiling | None:
        if self.tile_size is None:
            return None
        # at a scale s the network's context and stride span 1/s image pixels, and two more network
        # pixels of margin cover the resampling kernel at the tile's edge
        radius = receptive_radius(self.network.levels)
        if self.tile_overlap is not None:
            margin = int(self.tile_overlap)
        else:
            margin = radius if self.scale == 1 else math.ceil((radius + 2) / self.scale)
        return Tiling(int(self.tile_size), margin, math.ceil(self.network.divisor / self.scale))

    def _to_tensor(self, batch: Sequence[np.ndarray]) -> tuple[torch.Tensor, tuple[int, int]]:
        """The network's input for a batch of equally shaped images, and the images' (H, W)."""
        stack = np.stack(batch)
        if stack.ndim == 3:
            stack = stack[:, None]
        else:
            stack = np.moveaxis(stack, -1, 1)
        tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32)).to(self.device)
        tensor, _ = _to_network(tensor, self.scale, self.network.divisor)
        return tensor.contiguous(memory_format=torch.channels_last), tuple(stack.shape[-2:])

    def probability_maps(self, logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """Per-channel probabilities (N, C_out, H, W) float32 at the images' size, from the network's logits."""
        logits = _from_network(logits, size, scaled_size(size, self.scale))
        return torch.sigmoid(logits).cpu().numpy().astype(np.float32)

    def _to_predictions(self, logits: torch.Tensor, size: tuple[int, int]) -> list[Prediction]:
        predictions = []
        for sample in self.probability_maps(logits, size):
            boundary = sample[1] if sample.shape[0] > 1 else None
            labels = instances_from_probability(sample[0], boundary, self.instances, self.threshold, self.min_size)
            predictions.append(Prediction(probability=sample[0], labels=labels))
        return predictions

    def _predict_normalised(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        tensor, size = self._to_tensor(batch)
        with torch.inference_mode():
            logits = self.network(tensor)
        return self._to_predictions(logits, size)

    def _predict_feature_pairs(self, batch, dropout: FeatureDropout, seeds):
        modules = self.feature_modules(dropout.layers)
        tensor, size = self._to_tensor(batch)
        with torch.inference_mode(), feature_dropout(modules, dropout.rate, seeds, fork=True):
            logits = self.network(tensor)
        predictions = self._to_predictions(logits, size)
        half = len(batch)
        return predictions[:half], predictions[half:]


#: Settings a bank entry (or a checkpoint) may give a kit U-Net.
BANK_SETTINGS = bank_settings(UNetModel, ("network", "config"))


def demo_bank_dir() -> Path:
    """Folder of the shipped demo weights (the embedded default bank; ``pretrained: demo/NAME``)."""
    return Path(str(resources.files("cte_kit") / "assets" / "demo_bank"))


def demo_checkpoint(name: str, folder: str | Path | None = None) -> Path:
    """Path of one demo model (``'near_target'`` or ``'demo/near_target'``)."""
    folder = Path(folder) if folder is not None else demo_bank_dir()
    path = folder / f"{name.split('/')[-1]}.pt"
    if not path.is_file():
        available = sorted(p.stem for p in folder.glob("*.pt"))
        raise FileNotFoundError(f"no demo model {name!r} in {folder}; available: {available}. "
                                "Rebuild the bank with `cte-kit demo --rebuild`.")
    return path


def from_bank_entry(entry) -> UNetModel:
    """Bank loader: ``path`` is a checkpoint; ``pretrained`` names a model of the embedded demo bank."""
    if entry.pretrained is not None:
        path = demo_checkpoint(entry.pretrained)
    else:
        path = entry.path
    return UNetModel.from_checkpoint(path, name=entry.name, **entry.settings)
