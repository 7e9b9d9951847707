"""What adaptation needs to know about each kind of model it can adapt.

An :class:`AdaptTarget` exposes the torch network inside a kit adapter, the role of each of
its output channels, its bottleneck (for the embedding distance) and how to write the adapted
weights so that a bank entry loads them. Kinds it cannot adapt (StarDist's Keras networks,
black boxes) are refused with the reason.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..models.bank import BankEntry, load_model
from ..models.base import SegmentationModel
from .views import check_roles
from ..types import InputTypeError

__all__ = ["AdaptTarget", "adapt_target", "ADAPTABLE_KINDS", "checkpoint_entry", "provenance_path"]

#: Bank kinds with a PyTorch network this kit can train (bioimage.io only for exported kit U-Nets).
ADAPTABLE_KINDS = ("unet", "cellpose", "bioimageio")


@dataclass
class AdaptTarget:
    """A model prepared for adaptation.

    Attributes
    ----------
    model : SegmentationModel
        The kit adapter; its :meth:`~SegmentationModel.prepare` normalises images and its
        :meth:`~SegmentationModel.predict` gives the instance labels of the FN-rate criterion.
    network : torch.nn.Module
        The network the adapter predicts with (it becomes the teacher).
    roles : tuple of str
        Role of each output channel (see :data:`cte_kit.adapt.views.ROLES`).
    bottleneck : str
        Submodule name of ``network`` whose output is the embedding.
    divisor : int
        Patch sides must be multiples of this.
    outputs : callable
        ``outputs(network, images)``: the raw (B, C, H, W) outputs of a network.
    writer : callable
        ``writer(network, path, provenance)`` writes loadable weights; returns the bank kind.
    """

    model: SegmentationModel
    network: torch.nn.Module
    roles: tuple[str, ...]
    bottleneck: str
    divisor: int
    outputs: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
    writer: Callable[[torch.nn.Module, Path, dict], str]

    def __post_init__(self):
        self.roles = check_roles(self.roles)


def provenance_path(path: str | Path) -> Path:
    """Where the provenance of adapted weights at ``path`` is written (``<path>.adapt.json``)."""
    path = Path(path)
    return path.with_name(path.name + ".adapt.json")


def checkpoint_entry(source: BankEntry, kind: str, path: str | Path, step: int) -> BankEntry:
    """The bank entry of one written checkpoint of ``source``, named ``<source name>@step<step>``.

    The entry keeps the source's settings (normalisation, colour handling, instance method, a
    Cellpose diameter), so that checkpoint 0 predicts what the source predicts; a bioimage.io
    export adapts into a kit U-Net checkpoint, which keeps only the settings every adapter takes.

    Parameters
    ----------
    source : BankEntry
        The entry that was adapted.
    kind : str
        The bank kind the writer returned (:attr:`AdaptTarget.writer`).
    path : path
        The checkpoint's weights.
    step : int
    """
    settings = dict(source.settings) if kind == source.kind else source.common_settings()
    return BankEntry(f"{source.name}@step{step}", kind, str(path), None, settings, source.source)


def _write_json(path: Path, provenance: dict) -> None:
    provenance_path(path).write_text(json.dumps(provenance, indent=2, default=str))


def _unet_writer(config, settings: dict):
    from ..models.unet import save_checkpoint

    def write(network, path: Path, provenance: dict) -> str:
        save_checkpoint(network, config, path, settings=settings, history={"adapt": provenance})
        _write_json(path, provenance)
        return "unet"

    return write


def _unet_outputs(network, images):
    return network(images)


def _unet_settings(model) -> dict:
    settings = {"percentiles": None if model.percentiles is None else list(model.percentiles),
                "threshold": model.threshold}
    for key in ("instances", "min_size", "scale"):
        if hasattr(model, key):
            settings[key] = getattr(model, key)
    return settings


def _unet_target(model) -> AdaptTarget:
    from ..models.unet import forward_at_scale

    roles = ("class",) * model.config.out_channels
    # a model trained at another scale is adapted at that scale, as it predicts
    outputs = _unet_outputs if model.scale == 1 else functools.partial(forward_at_scale, scale=model.scale)
    return AdaptTarget(model, model.network, roles, "encoders.%d" % (model.network.levels - 1), model.network.divisor,
                       outputs, _unet_writer(model.config, _unet_settings(model)))


def _bioimageio_target(model) -> AdaptTarget:
    from ..models.unet import UNetConfig

    module = getattr(model, "_module", None)
    if module is None or not all(hasattr(module, a) for a in ("encoders", "decoders", "head", "levels")):
        raise InputTypeError(
            f"model {model.name!r}: only bioimage.io exports of kit U-Nets with pytorch_state_dict weights can be "
            "adapted (this one has no kit U-Net inside)"
        )
    first = module.encoders[0][0]
    config = UNetConfig(in_channels=first.in_channels, levels=module.levels, width=first.out_channels,
                        output="foreground" if module.head.out_channels == 1 else "foreground+boundary",
                        dropout=float(module.train_dropout.p))
    settings = {"percentiles": _bioimageio_percentiles(model), "threshold": model.threshold}
    return AdaptTarget(model, module, ("class",) * config.out_channels, f"encoders.{module.levels - 1}",
                       2 ** (module.levels - 1), _unet_outputs, _unet_writer(config, settings))


def _bioimageio_percentiles(model) -> list[float] | None:
    """The ``scale_range`` percentiles of the export, which the kit checkpoint must reproduce."""
    for step in model.description.inputs[0].preprocessing:
        if getattr(step, "id", None) == "scale_range":
            return [float(step.kwargs.min_percentile), float(step.kwargs.max_percentile)]
    return None if model.percentiles is None else list(model.percentiles)


def _cellpose_outputs(network, images):
    return network(images)[0]


def _cellpose_writer(network, path: Path, provenance: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, partial)
    partial.replace(path)
    _write_json(path, provenance)
    return "cellpose"


def _cellpose_target(model) -> AdaptTarget:
    if model.version >= 4:
        raise InputTypeError(f"model {model.name!r}: Cellpose 4 (Cellpose-SAM) is not adapted by this kit; only Cellpose 3 "
                        "CPnets (cellpose>=3.1.1,<4) are")
    network = model.cellpose.net
    if any(value.is_mkldnn for value in network.state_dict().values()):
        raise ValueError(f"model {model.name!r} has already predicted on the CPU, which turned its layers into MKL-DNN "
                         "inference layers that cannot be trained; load it afresh to adapt it")
    # Cellpose's CPU inference would turn the shared layers into MKL-DNN ones in place, without gradients
    network.mkldnn = False
    depth = len(network.downsample.down)
    # Cellpose 3 orders CPnet's outputs as (flow_y, flow_x, cell probability logit)
    return AdaptTarget(model, network, ("flow_y", "flow_x", "class"), f"downsample.down.res_down_{depth - 1}",
                       2 ** (depth - 1), _cellpose_outputs, _cellpose_writer)


_TARGETS = {"UNetModel": _unet_target, "CellposeModel": _cellpose_target, "BioImageIOModel": _bioimageio_target}


def adapt_target(model: SegmentationModel | BankEntry, **settings: Any) -> AdaptTarget:
    """The :class:`AdaptTarget` of a loaded model or of a bank entry.

    Parameters
    ----------
    model : SegmentationModel or BankEntry
        A kit U-Net, a Cellpose 3 model, or a bioimage.io export of a kit U-Net. A bank entry
        is loaded here (with ``settings`` added to its own).

    Raises
    ------
    TypeError
        The kind cannot be adapted (StarDist, black boxes), with the reason.
    """
    if isinstance(model, BankEntry):
        if model.kind not in ADAPTABLE_KINDS:
            raise InputTypeError(
                f"model {model.name!r} is of kind {model.kind!r}, which cannot be adapted: adaptation trains the "
                f"model's PyTorch network, and only kinds {ADAPTABLE_KINDS} have one the kit can train "
                "(StarDist runs on Keras/TensorFlow)"
            )
        model = load_model(BankEntry(model.name, model.kind, model.path, model.pretrained, {**model.settings, **settings}))
    factory = _TARGETS.get(type(model).__name__)
    if factory is None:
        raise InputTypeError(f"model {model.name!r} ({type(model).__name__}) cannot be adapted: only kit U-Nets, Cellpose 3 "
                        "CPnets and bioimage.io exports of kit U-Nets have a network the kit can train")
    return factory(model)
