"""Cellpose models as a grey-box adapter (Cellpose 3) or a black-box adapter (Cellpose 4).

A model is a model-zoo name resolved by Cellpose's own download and cache (``cyto3``,
``nuclei``, ``cyto2``, ``livecell_cp3``, ... under Cellpose 3; ``cpsam`` under Cellpose 4) or
the path of a trained model file (``cellpose.train.train_seg`` output)::

    model = CellposeModel.from_pretrained("nuclei", cellpose_channels=(0, 0), diameter=17)
    model = CellposeModel.from_file("models/my_cellpose")

Outputs: the masks of ``CellposeModel.eval`` and the cell probability ``sigmoid(cellprob)``
(``flows[2]``). The image is normalised by Cellpose's own ``normalize_img`` *before* input
perturbations, and ``eval`` runs with ``normalize=False``: otherwise Cellpose would undo a
brightness or contrast perturbation by normalising again. Input perturbations act on the channels
that hold the image: a grey image is laid out as ``[image, zeros]`` (no nuclear channel), and the
empty channel stays empty, as it would had the image been perturbed before Cellpose laid it out.

Grey box (Cellpose 3 only): forward hooks on CPnet's residual blocks scale their output
channels by one mask per image, the same for every tile Cellpose cuts. A clean + dropout pair
runs CPnet once per batch of tiles, forked at the first perturbed block (everything before it
runs once, the rest on a doubled batch; the encoder's skip features are shared), inside
Cellpose's own ``eval`` with a stand-in for the network (:class:`~cte_kit.models._common.Relay`):
the clean prediction hands Cellpose the clean half, a second ``eval`` of the same image the
kept perturbed half, so tiling, flow stitching and mask dynamics stay Cellpose's own. Layer names (see
:mod:`cte_kit.models.layers`) for CPnet's four levels: ``encoder0`` .. ``encoder2`` are
``downsample.down.res_down_0`` .. ``res_down_2`` (also the skip features), ``bottleneck`` is
``res_down_3`` - the deepest level, which feeds both the style vector and the decoder -, and
``decoder0`` .. ``decoder3`` are ``upsample.up.res_up_3`` .. ``res_up_0`` (deepest first;
``decoder0`` runs at the bottleneck's resolution, so ``sym{k}`` pairs ``encoder{3-k}`` with
``decoder{k}``).

Cellpose 4 (Cellpose-SAM) keeps ``CellposeModel(pretrained_model=...)`` and the 3-value
``eval``, so this adapter runs it as a **black box** (input perturbations only): its network is
a ViT whose features this kit does not perturb, ``channels`` is ignored by Cellpose 4 (it takes
up to the first three channels) and only ``cpsam`` or a model file can be loaded.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.special import expit

from ._common import Fork, PerImageDropout, PretrainedDownloadError, Relay, bank_settings, check_settings
from .base import NotGreyBoxError, SegmentationModel
from ..types import Prediction
from .layers import LayerMap
from .tiling import Tiling

__all__ = ["BANK_SETTINGS", "CellposeModel", "cellpose_major_version", "from_bank_entry"]


def cellpose_major_version() -> int:
    """Major version of the installed Cellpose (3 or 4)."""
    try:
        return int(metadata.version("cellpose").split(".")[0])
    except metadata.PackageNotFoundError:
        raise ImportError("the Cellpose adapter needs cellpose: pip install 'cellpose>=3.1.1,<4'") from None


def _zoo_weights(models, name: str) -> tuple[str, str, Any]:
    """(file name, URL, resolver) of a zoo name: the resolver returns the cached file, downloading it first.

    The file names follow ``cellpose.models.model_path``; naming them here lets a failed
    download say which file was needed.
    """
    if cellpose_major_version() >= 4:
        return "cpsam", models._CPSAM_MODEL_URL, models.cache_CPSAM_model_path
    basename = f"{name}torch_0" if name in ("cyto", "cyto2", "nuclei") else name
    return basename, f"{models._MODEL_URL}/{basename}", lambda: models.model_path(name)


@dataclass
class CellposeModel(PerImageDropout, SegmentationModel):
    """Adapter for a ``cellpose.models.CellposeModel``.

    Parameters
    ----------
    cellpose : cellpose.models.CellposeModel
        The loaded model (see :meth:`from_pretrained`, :meth:`from_file`).
    percentiles : (float, float) or None
        Percentiles of Cellpose's own per-channel normalisation (its default 1, 99); None when
        the images are already normalised.
    threshold : float, optional
        Foreground threshold of the probability map; default ``sigmoid(cellprob_threshold)``,
        Cellpose's own foreground rule.
    cellpose_channels : (int, int)
        Cellpose's ``channels``: channel to segment and optional nuclear channel (0 = grey,
        1 = red, 2 = green, 3 = blue). ``(0, 0)`` takes grey images; anything else colour ones.
        In a bank entry this is the key ``channels``.
    diameter : float, optional
        Object diameter in pixels; the image is rescaled by ``diam_mean / diameter``. Default:
        the model's training diameter (no rescaling for the model's own data).
    flow_threshold, cellprob_threshold : float
        Cellpose's mask thresholds.
    min_size : int
        Smallest mask kept (pixels).
    device : str
        Torch device, e.g. ``'cpu'`` or ``'cuda'``.
    tile_size : int or None
        An image larger than this on either side is cut into overlapping tiles, each predicted by
        Cellpose (its network, flows and masks) and stitched (:mod:`cte_kit.models.tiling`), so
        memory does not grow with the image; None hands every image to Cellpose whole.
    tile_overlap : int, optional
        Context around each tile's core (pixels); default: two object diameters (at least 64),
        so that an object cut by a seam is whole in the tile that keeps it.
    """

    cellpose: Any = None
    percentiles: tuple[float, float] | None = (1.0, 99.0)
    threshold: float | None = None
    cellpose_channels: tuple[int, int] = (0, 0)
    diameter: float | None = None
    flow_threshold: float = 0.4
    cellprob_threshold: float = 0.0
    min_size: int = 15
    device: str = "cpu"
    tile_size: int | None = 1024
    tile_overlap: int | None = None

    def __post_init__(self):
        if self.cellpose is None:
            raise ValueError("CellposeModel needs a cellpose model; use CellposeModel.from_pretrained(name) or .from_file(path)")
        channels = tuple(self.cellpose_channels) if isinstance(self.cellpose_channels, (list, tuple)) else ()
        if len(channels) != 2 or not all(isinstance(c, (int, np.integer)) and 0 <= c <= 3 for c in channels):
            raise ValueError(
                f"cellpose channels must be a pair [channel to segment, nuclear channel] of 0..3 (0 = grey), "
                f"got {self.cellpose_channels!r}"
            )
        self.cellpose_channels = tuple(int(c) for c in channels)
        self.channels = 1 if channels == (0, 0) else 3
        if self.diameter is not None and not self.diameter > 0:
            raise ValueError(f"diameter must be > 0 pixels or None, got {self.diameter!r}")
        if self.threshold is None:
            self.threshold = float(expit(self.cellprob_threshold))
        self.version = cellpose_major_version()
        if self.version < 4:
            self.layer_map = LayerMap.unet(len(self.cellpose.net.downsample.down), decoder_at_bottleneck=True)
        self._tiling()  # a tile_size that leaves no core inside its margins is refused when the model loads

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, /, **settings: Any) -> "CellposeModel":
        """A model-zoo model, downloaded once into Cellpose's model folder.

        Raises
        ------
        ValueError
            ``name`` is not a Cellpose model name (Cellpose itself would silently fall back to
            its default model).
        PretrainedDownloadError
            The download failed; the message names the file, its URL and the folder.
        """
        from cellpose import models

        version = cellpose_major_version()
        known = list(dict.fromkeys([*models.MODEL_NAMES, *models.get_user_models()]))
        if name not in known:
            hint = " (Cellpose 4 has only cpsam; the Cellpose 3 zoo needs cellpose<4)" if version >= 4 else ""
            raise ValueError(f"unknown Cellpose model {name!r}{hint}; known: {known}")
        file, url, resolve = _zoo_weights(models, name)
        try:
            resolve()  # download here, where a failure can be explained
        except Exception as error:
            raise PretrainedDownloadError(
                "Cellpose", name, {file: url},
                f"To work offline, download it on a machine with internet access and put it at "
                f"{Path(models.MODEL_DIR) / file} (the folder is CELLPOSE_LOCAL_MODELS_PATH, default "
                "~/.cellpose/models, read when cellpose is imported), or point the bank entry's `path:` at the "
                "downloaded file.", error,
            ) from error
        device = _torch_device(settings.get("device", "cpu"))
        if version >= 4:
            network = models.CellposeModel(device=device, pretrained_model=name)
        else:
            network = models.CellposeModel(device=device, model_type=name)
        return cls(name=settings.pop("name", name), cellpose=network, **settings)

    @classmethod
    def from_file(cls, path: str | Path, **settings: Any) -> "CellposeModel":
        """A trained model file (``train_seg`` writes ``<save_path>/models/<model_name>``)."""
        path = Path(path)
        if not path.is_file():
            # Cellpose would fall back to its default model without an error
            raise FileNotFoundError(f"Cellpose model file {path} does not exist")
        from cellpose import models

        device = _torch_device(settings.get("device", "cpu"))
        network = models.CellposeModel(device=device, pretrained_model=str(path))
        return cls(name=settings.pop("name", path.stem), cellpose=network, **settings)

    # -- prediction -----------------------------------------------------------------------------
    @property
    def output(self) -> str:
        return "both"

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Cellpose's channel layout (H, W, nchan) and its own per-channel percentile normalisation."""
        from cellpose import transforms

        channel_axis = -1 if array.ndim == 3 else None
        if self.version >= 4:
            image = transforms.convert_image(array, channel_axis=channel_axis)
        else:
            image = transforms.convert_image(array, list(self.cellpose_channels), channel_axis=channel_axis,
                                             nchan=self.cellpose.nchan)
        if self.percentiles is not None:
            image = transforms.normalize_img(image, percentile=tuple(self.percentiles), axis=-1)
        return np.ascontiguousarray(image, dtype=np.float32)

    def perturb_input(self, perturbation, array: np.ndarray, seed: int) -> np.ndarray:
        """The perturbation of the channels that hold the image; the empty ones (all zero) stay zero.

        Noise, brightness and contrast would otherwise fill the empty nuclear channel of a grey image
        with values the network never saw there (and contrast would scale the image about a mean that
        the zeros halve); gamma keeps zeros, so it is the same either way.
        """
        holds_image = array.reshape(-1, array.shape[-1]).any(axis=0)
        if holds_image.all() or not holds_image.any():
            return super().perturb_input(perturbation, array, seed)
        perturbed = np.zeros_like(array)
        perturbed[..., holds_image] = super().perturb_input(perturbation, np.ascontiguousarray(array[..., holds_image]),
                                                            seed)
        return perturbed

    def _predict_normalised(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        masks, flows, _ = self.cellpose.eval(
            list(batch), channel_axis=-1, normalize=False, diameter=self.diameter, flow_threshold=self.flow_threshold,
            cellprob_threshold=self.cellprob_threshold, min_size=self.min_size,
        )
        return [
            Prediction(probability=expit(flow[2]).astype(np.float32), labels=np.asarray(mask, dtype=np.int32))
            for mask, flow in zip(masks, flows)
        ]

    # -- grey box -------------------------------------------------------------------------------
    def _layer_modules(self, name: str) -> list:
        if self.version >= 4:
            raise NotGreyBoxError(
                f"model {self.name!r}: feature dropout needs a Cellpose 3 CPnet (cellpose>=3.1.1,<4); under Cellpose "
                f"{self.version} (Cellpose-SAM) the adapter is a black box - use an input perturbation"
            )
        down, up = self.cellpose.net.downsample.down, self.cellpose.net.upsample.up
        if name == "bottleneck":
            return [down[len(down) - 1]]
        index = int(name.removeprefix("encoder").removeprefix("decoder"))
        return [down[index]] if name.startswith("encoder") else [up[len(up) - 1 - index]]

    def _tiling(self) -> Tiling | None:
        if self.tile_size is None:
            return None
        diameter = self.diameter or getattr(self.cellpose, "diam_mean", 30.0)
        margin = self.tile_overlap if self.tile_overlap is not None else max(64, int(math.ceil(2 * diameter)))
        return Tiling(int(self.tile_size), int(margin), 16)

    def _forks(self, layers: Sequence[str]) -> bool:
        return self.version < 4

    @contextlib.contextmanager
    def _relay(self, layers: Sequence[str], rate: float, seed: int):
        from torch.utils import mkldnn

        net = self.cellpose.net.eval()
        if net.mkldnn:
            mkldnn.to_mkldnn(net)  # in place, as Cellpose's own forward does on first use
        fork = Fork(net, self.feature_modules(layers), rate, seed, shared=[net.downsample])

        def forked(tiles):
            output, style = fork(tiles)[:2]
            half = tiles.shape[0]
            return (output[:half], style[:half]), (output[half:], style[half:])

        relay = Relay(forked)
        self.cellpose.net = _RelayedNet(net, relay)
        try:
            with fork.active():
                yield relay
        finally:
            self.cellpose.net = net


class _RelayedNet:
    """What Cellpose's ``run_net`` needs of a network (``nout``, ``device``, ``mkldnn``, ``eval``, a call
    returning output and style), answered by a :class:`~cte_kit.models._common.Relay`."""

    def __init__(self, net, relay: Relay):
        self.nout, self.device, self.mkldnn, self._relay = net.nout, net.device, False, relay

    def eval(self):
        return self

    def __call__(self, tiles):
        return self._relay(tiles)


def _torch_device(device):
    import torch

    return torch.device(device)


#: Settings a bank entry may give this adapter.
BANK_SETTINGS = bank_settings(CellposeModel, ("cellpose",))


def from_bank_entry(entry) -> CellposeModel:
    """Bank loader: ``pretrained`` is a zoo name, ``path`` a model file; ``channels`` is Cellpose's pair."""
    settings = {**entry.settings, **entry.common_settings()}
    if "channels" in settings:
        # in a Cellpose entry `channels` means Cellpose's [segment, nucleus] pair, as in Cellpose itself
        settings["cellpose_channels"] = settings.pop("channels")
    settings = check_settings(CellposeModel, {**settings, "name": entry.name}, ("cellpose", "channels"))
    if entry.pretrained is not None:
        return CellposeModel.from_pretrained(entry.pretrained, **settings)
    return CellposeModel.from_file(entry.path, **settings)

