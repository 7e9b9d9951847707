"""Helpers shared by the adapters of external libraries (StarDist, Cellpose, bioimage.io).

* :func:`channel_scales` and :func:`image_dropout` - grey-box dropout with **one channel mask per
  image**. StarDist, Cellpose and bioimage.io predict image by image and may cut an image into
  tiles; the mask must not depend on that tiling, so every tile and every forward call of one
  image sees the same dropped channels. The mask is drawn exactly as
  :func:`cte_kit.perturb.spatial_dropout` draws it for one sample, so for one seed and one
  channel count every adapter (the kit's U-Net included) drops the same channels.
* :class:`Fork` and :class:`Relay` - a clean + dropout pair of one image from one forward call
  that shares everything before the perturbed layer, fed through the library's own prediction
  (tiling, stitching, post-processing) twice.
* :class:`PerImageDropout` - the grey-box pair loop built on these.
* :class:`PretrainedDownloadError` - the one error raised when a library cannot fetch a
  pretrained model: which file, from where, and how to place it by hand (path and environment
  variable) or use a local copy instead.
* :func:`bank_settings`, :func:`check_settings` - the settings a bank entry may give an adapter (its
  fields), and a bank entry's settings checked against them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator, Mapping, Sequence

from ..perturb import spatial_dropout

__all__ = ["Fork", "PretrainedDownloadError", "PerImageDropout", "Relay", "bank_settings", "channel_scale",
           "channel_scales", "check_settings", "image_dropout"]


def bank_settings(cls: type, internal: Sequence[str] = ()) -> tuple[str, ...]:
    """The settings a bank entry may give an adapter: its init fields, less ``name`` (the entry's own) and
    the ``internal`` ones (filled by the loader or derived from the model)."""
    return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("name", *internal)))


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
    known = ["name", *bank_settings(cls, internal)]
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


def _dense(tensor):
    return tensor.to_dense() if tensor.is_mkldnn else tensor


def _like(dense, original):
    """``dense`` in the layout (MKL-DNN or strided) of ``original``."""
    return dense.to_mkldnn() if original.is_mkldnn else dense


@contextlib.contextmanager
def image_dropout(modules: Sequence, rate: float, seed: int, fork: "Fork | None" = None) -> Iterator[None]:
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
        Dropout rate in [0, 1); 0 registers no hook at all (unless forking), so the prediction
        is untouched.
    seed : int
        Per-image seed.
    fork : Fork, optional
        Fork the batch instead of perturbing it (see :class:`Fork`): an output of the clean
        batch size becomes ``cat([clean, perturbed])``, an output of twice that size (downstream
        of the fork) has its second half perturbed. The masks are the same as without forking.
    """
    if not (0.0 <= rate < 1.0):
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    if rate == 0.0 and fork is None:
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
        dense = _dense(output)
        shape = (1, dense.shape[1]) + (1,) * (dense.dim() - 2)
        mask = masks[key].reshape(shape).to(device=dense.device, dtype=dense.dtype)
        if fork is None:
            scaled = dense * mask
        elif dense.shape[0] == fork.batch:
            scaled = torch.cat([dense, dense * mask])
        else:
            scaled = torch.cat([dense[: fork.batch], dense[fork.batch :] * mask])
        return _like(scaled, output)

    handles = [
        module.register_forward_hook(lambda _module, _inputs, output, key=key: perturb(output, key))
        for key, module in enumerate(modules)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class Fork:
    """One forward call of a torch network that computes the clean and the dropout output of one image.

    Everything before the first perturbed layer runs once; that layer's output is doubled
    (clean, then scaled by the image's channel masks of :func:`image_dropout`) and the rest of
    the network runs on the doubled batch. Feature maps computed before the fork that the
    network reads again later (skip connections) are doubled by the ``shared`` modules' hooks,
    for networks that do not do it themselves.

    Parameters
    ----------
    network : callable
        The torch network; called with the library's input batch (tiles of one image).
    modules : sequence of torch.nn.Module
        The perturbed layers.
    rate, seed :
        As for :func:`image_dropout`.
    shared : sequence of torch.nn.Module
        Modules returning a list of feature maps (Cellpose's encoder); each map still of the
        clean batch size is repeated to twice that size.
    """

    def __init__(self, network, modules: Sequence, rate: float, seed: int, shared: Sequence = ()):
        self.network, self.modules, self.rate, self.seed, self.shared = network, modules, rate, seed, shared
        self.batch = 0

    def _double(self, outputs):
        import torch

        return type(outputs)(
            _like(torch.cat([_dense(t)] * 2), t) if t.shape[0] == self.batch else t for t in outputs
        )

    @contextlib.contextmanager
    def active(self) -> Iterator["Fork"]:
        """While the block runs, every call of :attr:`network` forks (one mask set for the whole block)."""
        handles = [module.register_forward_hook(lambda _m, _i, output: self._double(output)) for module in self.shared]
        try:
            with image_dropout(self.modules, self.rate, self.seed, fork=self):
                yield self
        finally:
            for handle in handles:
                handle.remove()

    def __call__(self, inputs):
        """The network's output for ``inputs`` (N samples): its first N samples are clean, the next N perturbed."""
        self.batch = int(inputs.shape[0])
        return self.network(inputs)


class Relay:
    """Stands in for a network while a library predicts one image twice: clean, then perturbed.

    In the first prediction each call runs ``forked`` (clean and perturbed outputs from one
    forward call), hands the clean output to the library and keeps the perturbed one; after
    :meth:`replay`, the second prediction's calls get the kept outputs in call order. The library's
    own padding, tiling, stitching and post-processing thus make both predictions, while the
    layers before the perturbed one run once. Calls must come in the same order with inputs of
    the same shapes both times (the same image, predicted the same way).

    Parameters
    ----------
    forked : callable
        ``forked(inputs, **kwargs) -> (clean_output, perturbed_output)``; keywords are the library's.
    """

    def __init__(self, forked):
        self.forked = forked
        self.kept: list = []
        self.replaying = False

    def replay(self) -> None:
        self.replaying = True

    def __call__(self, inputs, **kwargs):
        shape = tuple(inputs.shape)
        if not self.replaying:
            clean, perturbed = self.forked(inputs, **kwargs)
            self.kept.append((shape, perturbed))
            return clean
        if not self.kept or self.kept[0][0] != shape:
            raise RuntimeError(f"the perturbed prediction called the network with {shape}, not as the clean one did "
                               f"({self.kept[0][0] if self.kept else 'no more calls'})")
        return self.kept.pop(0)[1]


class PerImageDropout:
    """Grey-box pairs for adapters whose library predicts image by image.

    Mixed into a :class:`~cte_kit.models.base.SegmentationModel` subclass. Each image has its own
    seed, so its mask is independent of batching and of the library's tiling. An adapter whose
    network can run forked (:meth:`_relay`) predicts a pair with the layers before the perturbed
    one run once: the library predicts the image clean with a :class:`Relay` in place of the
    network, then again from the kept perturbed outputs. Otherwise the clean batch is predicted
    once, then every image again inside :meth:`_dropout`. Adapters whose network is not a torch
    module (StarDist) override both.
    """

    def _dropout(self, layers: Sequence[str], rate: float, seed: int):
        """Context in which ``_predict_normalised`` predicts with dropout at ``layers``."""
        return image_dropout(self.feature_modules(layers), rate, seed)

    def _forks(self, layers: Sequence[str]) -> bool:
        """Whether the network can run forked at ``layers`` (then :meth:`_relay` is implemented)."""
        return False

    def _relay(self, layers: Sequence[str], rate: float, seed: int):
        """Context in which the library's network is a :class:`Relay` forking at ``layers``; yields the relay."""
        raise NotImplementedError

    def _predict_feature_pairs(self, batch, dropout, seeds):
        layers = self.check_layers(dropout.layers)
        if dropout.rate == 0.0 or not self._forks(layers):
            # p = 0 never touches the network: both predictions are the plain one, bit for bit
            return super()._predict_feature_pairs(batch, dropout, seeds)
        clean, perturbed = [], []
        for image, seed in zip(batch, seeds):
            with self._relay(layers, dropout.rate, seed) as relay:
                clean.extend(self._predict_normalised([image]))
                relay.replay()
                perturbed.extend(self._predict_normalised([image]))
        return clean, perturbed

    def _predict_feature_perturbed(self, batch, dropout, seeds):
        layers = self.check_layers(dropout.layers)
        perturbed = []
        for image, seed in zip(batch, seeds):
            with self._dropout(layers, dropout.rate, seed):
                perturbed.extend(self._predict_normalised([image]))
        return perturbed
