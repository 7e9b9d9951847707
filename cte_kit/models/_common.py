"""Helpers shared by the adapters of external libraries (StarDist, Cellpose, bioimage.io).

* :func:`channel_scales` and :func:`image_dropout` - grey-box dropout with **one channel mask per
  image**. StarDist, Cellpose and bioimage.io predict image by image and may cut an image into
  tiles; the mask must not depend on that tiling, so every tile and every forward call of one
  image sees the same dropped channels. The mask is drawn exactly as
  :func:`cte_kit.perturb.spatial_dropout` draws it for one sample, so for one seed and one
  channel count every adapter (the kit's U-Net included) drops the same channels.
* :class:`PerImageDropout` - the grey-box pair loop built on that.
* :class:`PretrainedDownloadError` - the one error raised when a library cannot fetch a
  pretrained model: which file, from where, and how to place it by hand (path and environment
  variable) or use a local copy instead.
* :func:`check_settings` - bank-entry settings checked against an adapter's fields.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

from ..perturb import spatial_dropout

__all__ = ["PretrainedDownloadError", "PerImageDropout", "channel_scale", "channel_scales", "check_settings",
           "image_dropout"]


def check_settings(cls: type, settings: Mapping[str, Any], internal: Sequence[str] = ()) -> dict[str, Any]:
    """The settings of a bank entry, refused with the list of known keys if one is unknown.

    Parameters
    ----------
    cls : dataclass type
        The adapter class; its init fields are the known settings.
    settings : mapping
    internal : sequence of str
        Fields filled by the loader or derived from the model, not set in a bank (the loaded
        library model, the input channels).
    """
    known = sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in internal)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} setting(s) {unknown}; known: {known}")
    return dict(settings)


class PretrainedDownloadError(RuntimeError):
    """A pretrained model could not be downloaded (offline, firewall, moved URL).

    Parameters
    ----------
    library : str
        Library that resolves the name (``'StarDist'``, ``'Cellpose'``, ``'bioimage.io'``).
    name : str
        The pretrained name that was asked for.
    files : mapping of str to str
        Each file that was needed and the URL it is downloaded from.
    offline : str
        How to do without the download: where to put the file by hand (a path) and which
        environment variable moves that place, or which local path to give the bank instead.
    cause : BaseException
        The library's own error.
    """

    def __init__(self, library: str, name: str, files: Mapping[str, str], offline: str, cause: BaseException):
        listed = "; ".join(f"{file} from {url}" for file, url in files.items())
        super().__init__(
            f"{library} could not download the pretrained model {name!r} ({type(cause).__name__}: {cause}). "
            f"Needed: {listed}. {offline}"
        )
        self.library, self.name, self.files = library, name, dict(files)


def channel_scales(channels: Sequence[int], rate: float, seed: int) -> list:
    """The channel masks of one image for several layers: each channel 0 (dropped) or ``1 / (1 - rate)``.

    Parameters
    ----------
    channels : sequence of int
        Feature channels ``C`` of each perturbed layer, in the order the network computes them.
    rate : float
        Dropout rate in [0, 1).
    seed : int
        Per-image seed (:func:`cte_kit.perturb.image_seed`). The masks are drawn one after
        the other from one generator, as :func:`image_dropout` draws them in call order, so
        every adapter drops the same channels for the same seed and layer widths.

    Returns
    -------
    list of torch.Tensor, shape (C,), float32
        Ones when ``rate == 0``.
    """
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    return [spatial_dropout(torch.ones(1, c, 1), rate, [generator]).reshape(c) for c in channels]


def channel_scale(channels: int, rate: float, seed: int):
    """The channel mask of one image for one layer (see :func:`channel_scales`); shape (C,), float32."""
    return channel_scales([channels], rate, seed)[0]


@contextlib.contextmanager
def image_dropout(modules: Sequence, rate: float, seed: int) -> Iterator[None]:
    """Multiply the outputs of ``modules`` by one image's channel masks while the block runs.

    Unlike :func:`cte_kit.perturb.feature_dropout`, which draws a new mask for every sample of
    every forward call, the mask of each module is drawn once (on its first call, in call order,
    from one generator seeded with ``seed``) and reused for every tile and batch that follows.

    Parameters
    ----------
    modules : sequence of torch.nn.Module
        A module returning a list or tuple (Cellpose's encoder returns all its levels) has its
        last, deepest map perturbed. MKL-DNN tensors (Cellpose on CPU) are handled.
    rate : float
        Dropout rate in [0, 1); 0 registers no hook at all, so the prediction is untouched.
    seed : int
        Per-image seed.
    """
    if not (0.0 <= rate < 1.0):
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if rate == 0.0:
        yield
        return
    import torch

    generator = torch.Generator().manual_seed(int(seed))
    masks: dict[int, torch.Tensor] = {}

    def perturb(output, key: int):
        if isinstance(output, (list, tuple)):
            return type(output)([*output[:-1], perturb(output[-1], key)])
        if key not in masks:
            masks[key] = spatial_dropout(torch.ones(1, output.shape[1], 1), rate, [generator]).reshape(-1)
        dense = output.to_dense() if output.is_mkldnn else output
        shape = (1, dense.shape[1]) + (1,) * (dense.dim() - 2)
        scaled = dense * masks[key].reshape(shape).to(device=dense.device, dtype=dense.dtype)
        return scaled.to_mkldnn() if output.is_mkldnn else scaled

    handles = [
        module.register_forward_hook(lambda _module, _inputs, output, key=key: perturb(output, key))
        for key, module in enumerate(modules)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class PerImageDropout:
    """Grey-box pairs for adapters whose library predicts image by image.

    Mixed into a :class:`~cte_kit.models.base.SegmentationModel` subclass: the clean batch is
    predicted once, then every image again inside :meth:`_dropout` with its own seed, so its
    mask is independent of batching and of the library's tiling. Adapters whose network is not
    a torch module (StarDist) override :meth:`_dropout`.
    """

    def _dropout(self, layers: Sequence[str], rate: float, seed: int):
        """Context in which ``_predict_normalised`` predicts with dropout at ``layers``."""
        return image_dropout(self.feature_modules(layers), rate, seed)

    def _predict_feature_perturbed(self, batch, dropout, seeds):
        layers = self.check_layers(dropout.layers)
        perturbed = []
        for image, seed in zip(batch, seeds):
            with self._dropout(layers, dropout.rate, seed):
                perturbed.extend(self._predict_normalised([image]))
        return perturbed
