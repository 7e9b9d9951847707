"""BioImage Model Zoo models through ``bioimageio.core``, and export of kit U-Nets to the zoo format.

A model is an ``rdf.yaml`` / ``bioimageio.yaml`` file, a package zip or folder, or a zoo id or
nickname (``affable-shark``) resolved by ``bioimageio.spec`` with its own download cache::

    model = BioImageIOModel.from_source("exported/unet.zip")
    model = BioImageIOModel.from_pretrained("affable-shark", boundary_channel=1, instances="watershed")

The model's own preprocessing (e.g. ``scale_range``) is applied in :meth:`BioImageIOModel.normalise`,
before the kit's input perturbations; the forward pass then runs the model's prediction
pipeline with ``skip_preprocessing=True`` and with its postprocessing (e.g. ``sigmoid``).
Images are padded bottom/right to a size the model accepts (``min + n * step``) and cropped
back; a fixed input size smaller than the image, or the ``blocksize`` setting, switches to the
pipeline's own tiled prediction.

Grey box: with ``pytorch_state_dict`` weights the adapter builds the torch module itself
(``bioimageio.core.backends.pytorch_backend.load_torch_model``) and hands it to the pipeline,
so a forward hook on one of its submodules perturbs every prediction. Kit U-Nets (exported by
:func:`export_unet`) keep their layer names; for other networks name the bottleneck module in
the ``bottleneck_layer`` setting (a dotted name such as ``encoders.2``). Other weight formats
(torchscript, ONNX, TensorFlow) are black boxes: their graph runs whole inside the library, so
neither a hook nor a fork can reach a layer. A clean + dropout pair of a kit U-Net runs the
encoder once: the held module is called forked (:class:`~cte_kit.models._common.Fork`; the U-Net
repeats its skip features itself) and the pipeline predicts the image twice around one forward
call per block (:class:`~cte_kit.models._common.Relay`). Another torch network named by
``bottleneck_layer`` runs the clean and the dropout prediction separately, as it is unknown
whether its forward accepts a batch that doubles half-way.

``bioimageio.core`` is imported on first use only.
"""

from __future__ import annotations

import contextlib
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy.special import expit

from ._common import Fork, PerImageDropout, PretrainedDownloadError, Relay, check_settings
from .base import NotGreyBoxError, SegmentationModel
from ..types import Prediction
from .instances import INSTANCE_METHODS, instances_from_probability
from .layers import LayerMap

__all__ = ["BioImageIOModel", "export_unet", "from_bank_entry"]

#: Key of the RDF ``config`` section where :func:`export_unet` stores the kit's settings.
CONFIG_KEY = "cte_kit"
_SPATIAL = ("y", "x")
_ACTIVATIONS = ("none", "sigmoid")


def _pipeline_with_module(description, module, device: str):
    """A prediction pipeline whose PyTorch forward runs ``module`` (the one our hooks are on), and its adapter.

    While the adapter's ``relay`` is set (a :class:`~cte_kit.models._common.Relay`), the relay
    answers the forward calls instead.
    """
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.backends.pytorch_backend import PytorchModelAdapter

    class HeldModuleAdapter(PytorchModelAdapter):
        relay = None

        # the library's adapter builds its own module per device; this one lends ours
        def _init_model_on_device(self, device):
            return module.to(device).eval()

        def _forward_impl(self, device, model, input_arrays):
            if self.relay is None:
                return super()._forward_impl(device, model, input_arrays)
            return self.relay(*input_arrays)

    adapter = HeldModuleAdapter(description, devices=[device])
    return create_prediction_pipeline(description, devices=[device], model_adapter=adapter), adapter


def _pad_bottom_right(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Pad an (H, W[, C]) array to ``shape`` at the bottom and right (reflect, edge if too small to reflect)."""
    pad_h, pad_w = shape[0] - array.shape[0], shape[1] - array.shape[1]
    if not (pad_h or pad_w):
        return array
    mode = "reflect" if pad_h < array.shape[0] and pad_w < array.shape[1] else "edge"
    widths = [(0, pad_h), (0, pad_w)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, mode=mode)


@dataclass
class BioImageIOModel(PerImageDropout, SegmentationModel):
    """Adapter for a bioimage.io model description (format 0.5; 0.4 is converted on load).

    Parameters
    ----------
    description : bioimageio.spec.model.v0_5.ModelDescr
        The loaded description (see :meth:`from_source`, :meth:`from_pretrained`).
    percentiles : (float, float) or None
        Extra kit normalisation before the model's own preprocessing; None (default) leaves
        normalisation to the model.
    output_tensor : str, optional
        Id of the output tensor to read (default: the first output).
    probability_channel : int
        Channel of that output holding the foreground probability.
    boundary_channel : int, optional
        Channel holding a boundary probability, used by ``instances: watershed`` and
        ``instances: dt_watershed``.
    activation : {'none', 'sigmoid'}
        Applied to the output channels when the model returns logits.
    instances : {'components', 'watershed', 'dt_watershed'}
        How instance labels are derived from the probability (see :mod:`cte_kit.models.instances`;
        ``dt_watershed`` for boundary models of dense tissue, e.g. PlantSeg's).
    min_size : int
        Smallest object kept in instance labels (pixels).
    bottleneck_layer : str, optional
        Dotted name of the torch submodule to perturb as ``bottleneck``; kit U-Nets need none.
    weights_format : str, optional
        Weights to run (default: ``pytorch_state_dict`` when present, so the model is a grey box;
        else the library's choice).
    blocksize : int, optional
        Predict in blocks of the model's size ``min + blocksize * step`` (large images).
    device : str
        Torch device for PyTorch weights.

    Settings stored by :func:`export_unet` in the RDF's ``config.cte_kit`` section are the
    defaults of ``threshold``, ``instances``, ``min_size`` and ``boundary_channel``.
    """

    description: Any = None
    percentiles: tuple[float, float] | None = None
    threshold: float | None = None
    output_tensor: str | None = None
    probability_channel: int = 0
    boundary_channel: int | None = None
    activation: str = "none"
    instances: str | None = None
    min_size: int | None = None
    bottleneck_layer: str | None = None
    weights_format: str | None = None
    blocksize: int | None = None
    device: str = "cpu"

    def __post_init__(self):
        from bioimageio.spec.model import v0_5

        if not isinstance(self.description, v0_5.ModelDescr):
            raise ValueError("BioImageIOModel needs a bioimage.io model description; use BioImageIOModel.from_source(path)")
        stored = dict((self.description.config.model_extra or {}).get(CONFIG_KEY) or {})
        for key in ("threshold", "instances", "min_size", "boundary_channel"):
            if getattr(self, key) is None and stored.get(key) is not None:
                setattr(self, key, stored[key])
        self.threshold = 0.5 if self.threshold is None else float(self.threshold)
        self.instances = self.instances or "components"
        self.min_size = int(self.min_size or 0)
        if self.instances not in INSTANCE_METHODS:
            raise ValueError(f"unknown instance method {self.instances!r}; choose from {INSTANCE_METHODS}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        self._input = self._check_input()
        self._output = self._check_output()
        self._module, self._pipeline, self._adapter = self._load_weights()
        self._pipeline.load()
        self.layer_map = self._layer_map()

    def _load_weights(self):
        """(torch module or None, prediction pipeline, its adapter or None): PyTorch state-dict weights run
        through a module we hold."""
        formats = {name for name, entry in self.description.weights if entry is not None}
        wanted = self.weights_format or ("pytorch_state_dict" if "pytorch_state_dict" in formats else None)
        if wanted is not None and wanted not in formats:
            raise ValueError(f"model {self.name!r} has no {wanted} weights; it has {sorted(formats)}")
        if wanted != "pytorch_state_dict":
            from bioimageio.core import create_prediction_pipeline

            return None, create_prediction_pipeline(self.description, devices=[self.device], weights_format=wanted), None
        from bioimageio.core.backends.pytorch_backend import load_torch_model

        module = load_torch_model(self.description.weights.pytorch_state_dict, load_state=True, devices=[self.device])
        module.eval()
        return (module, *_pipeline_with_module(self.description, module, self.device))

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_source(cls, source: str | Path, **settings: Any) -> "BioImageIOModel":
        """A local ``rdf.yaml``/``bioimageio.yaml``, package zip or package folder."""
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"bioimage.io model {path} does not exist (give an rdf.yaml, a package zip or folder)")
        from bioimageio.core import load_model_description

        description = load_model_description(path, format_version="latest")
        name = settings.pop("name", None) or (path.parent.name if path.suffix in (".yaml", ".yml") else path.stem)
        return cls(name=name, description=description, **settings)

    @classmethod
    def from_pretrained(cls, source: str, /, **settings: Any) -> "BioImageIOModel":
        """A zoo id or nickname (``affable-shark``), DOI or URL, fetched by ``bioimageio.spec``.

        Raises
        ------
        PretrainedDownloadError
            The description or its files could not be fetched; the message says how to use a
            downloaded package instead.
        """
        from bioimageio.core import load_model_description
        from bioimageio.spec import settings as spec_settings

        try:
            # the description comes over the network each time; the files it lists are cached
            description = load_model_description(source, format_version="latest")
        except Exception as error:
            url = spec_settings.collection_http_pattern.format(bioimageio_id=source)
            raise PretrainedDownloadError(
                "bioimage.io", source, {"rdf.yaml (then the weights and files it lists)": url},
                f"To work offline, download the model package zip from https://bioimage.io/#/?id={source} on a "
                "machine with internet access and point the bank entry's `path:` at the zip, or at the rdf.yaml of "
                "the unpacked package (files fetched for a description are cached in the folder "
                f"BIOIMAGEIO_CACHE_PATH, now {spec_settings.cache_path}).", error,
            ) from error
        return cls(name=settings.pop("name", None) or source, description=description, **settings)

    def _check_input(self):
        """The single 2D input's description; sets :attr:`channels` from its channel axis."""
        from bioimageio.spec.model import v0_5

        inputs = self.description.inputs
        if len(inputs) != 1:
            raise ValueError(f"model {self.name!r} has {len(inputs)} inputs; only single-input models are supported")
        descr = inputs[0]
        kinds = {str(axis.id): axis for axis in descr.axes}
        extra = sorted(set(kinds) - {"batch", "channel", *_SPATIAL})
        if extra or not set(_SPATIAL) <= set(kinds):
            raise ValueError(f"model {self.name!r} input axes {list(kinds)} are not 2D (batch, channel, y, x)")
        channel = kinds.get("channel")
        n_channels = 1 if channel is None else len(channel.channel_names)
        if n_channels not in (1, 3):
            raise ValueError(f"model {self.name!r} takes {n_channels} channels; only 1 or 3 are supported")
        for axis_id in _SPATIAL:
            if not isinstance(kinds[axis_id].size, (int, v0_5.ParameterizedSize)):
                raise ValueError(f"model {self.name!r}: input axis {axis_id} size {kinds[axis_id].size!r} is not supported")
        self.channels = n_channels
        return descr

    def _check_output(self):
        """The description of the output read, with the probability/boundary channels checked against it."""
        outputs = {str(descr.id): descr for descr in self.description.outputs}
        wanted = self.output_tensor or next(iter(outputs))
        if wanted not in outputs:
            raise ValueError(f"model {self.name!r} has no output {wanted!r}; outputs: {list(outputs)}")
        descr = outputs[wanted]
        channel = next((axis for axis in descr.axes if str(axis.id) == "channel"), None)
        n_channels = 1 if channel is None else len(channel.channel_names)
        for key in ("probability_channel", "boundary_channel"):
            value = getattr(self, key)
            if value is not None and not 0 <= value < n_channels:
                raise ValueError(f"{key} {value} is out of range: output {wanted!r} has {n_channels} channel(s)")
        return descr

    # -- prediction -----------------------------------------------------------------------------
    @property
    def output(self) -> str:
        return "both"

    def _sample(self, array: np.ndarray):
        """A one-image bioimage.io Sample in the model's input axes."""
        from bioimageio.core import Sample, Tensor
        from bioimageio.core.digest_spec import get_tensor

        data = array if array.ndim == 3 else array[..., None]
        tensor = get_tensor(Tensor(data, dims=(*_SPATIAL, "channel")), self._input, extra_dims="squeeze", missing_dims="expand")
        return Sample(members={self._input.id: tensor}, stat={}, id=None)

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Kit normalisation if ``percentiles`` is set, then the model's own preprocessing."""
        sample = self._sample(super().normalise(array))
        self._pipeline.apply_preprocessing(sample)
        return self._member_array(sample, self._input.id)

    @staticmethod
    def _member_array(sample, member_id) -> np.ndarray:
        """(H, W) or (H, W, C) float32 of a sample member."""
        data = sample.members[member_id].transpose([*_SPATIAL, "channel"], extra_dims="squeeze", missing_dims="expand")
        array = np.asarray(data.data, dtype=np.float32)
        return array[..., 0] if array.shape[-1] == 1 else array

    def _valid_shape(self, shape: tuple[int, int]) -> tuple[tuple[int, int], bool]:
        """Smallest accepted (H, W) >= ``shape``, and whether a fixed size forces tiling."""
        sizes, tiled = [], False
        for axis_id, size in zip(_SPATIAL, shape):
            axis = next(a for a in self._input.axes if str(a.id) == axis_id)
            if isinstance(axis.size, int):
                tiled |= size > axis.size
                sizes.append(axis.size)
            else:
                n = self.blocksize if self.blocksize is not None else max(0, axis.size.get_n(size))
                sizes.append(axis.size.get_size(n))
        return (sizes[0], sizes[1]), tiled or self.blocksize is not None

    def _predict_normalised(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        return [self._predict_one(array) for array in batch]

    def _predict_one(self, array: np.ndarray) -> Prediction:
        height, width = array.shape[:2]
        shape, tiled = self._valid_shape((height, width))
        if tiled:
            block = {self._input.id: dict(zip(map(_axis_id, _SPATIAL), shape))}
            result = self._pipeline.predict_sample_with_fixed_blocking(self._sample(array), block, skip_preprocessing=True)
        else:
            sample = self._sample(_pad_bottom_right(array, shape))
            result = self._pipeline.predict_sample_without_blocking(sample, skip_preprocessing=True)
        output = self._member_array(result, self._output.id)
        if output.shape[0] < height or output.shape[1] < width:
            raise ValueError(f"model {self.name!r}: output shape {output.shape} is smaller than the input {array.shape}; "
                             "only outputs of the input's size are supported")
        output = output[:height, :width]
        channels = output if output.ndim == 3 else output[..., None]
        if self.activation == "sigmoid":
            channels = expit(channels)
        probability = np.ascontiguousarray(channels[..., self.probability_channel], dtype=np.float32)
        if probability.min() < -1e-6 or probability.max() > 1 + 1e-6:
            raise ValueError(
                f"model {self.name!r}: output channel {self.probability_channel} has values in "
                f"[{probability.min():.3g}, {probability.max():.3g}], not probabilities; set `activation: sigmoid` "
                "if the model returns logits"
            )
        boundary = None if self.boundary_channel is None else channels[..., self.boundary_channel]
        labels = instances_from_probability(probability, boundary, self.instances, self.threshold, self.min_size)
        return Prediction(probability=probability, labels=labels)

    # -- grey box -------------------------------------------------------------------------------
    def _is_kit_unet(self) -> bool:
        # duck-typed: the class of an exported kit U-Net comes from the package's own unet_arch.py
        return hasattr(self._module, "layer") and hasattr(self._module, "levels")

    def _forks(self, layers: Sequence[str]) -> bool:
        """Kit U-Nets only: their forward repeats skip features for a batch doubled deeper down; of
        another network it is unknown whether it accepts a batch that doubles half-way."""
        return self._is_kit_unet()

    @contextlib.contextmanager
    def _relay(self, layers: Sequence[str], rate: float, seed: int):
        import torch

        fork = Fork(self._module, self.feature_modules(layers), rate, seed)

        def forked(array):
            with torch.no_grad():
                output = fork(torch.from_numpy(array).to(self.device)).cpu().numpy()
            return [output[: len(array)]], [output[len(array) :]]

        self._adapter.relay = Relay(forked)
        try:
            with fork.active():
                yield self._adapter.relay
        finally:
            self._adapter.relay = None

    def _layer_map(self) -> LayerMap | None:
        """A kit U-Net's layers (duck-typed: its class comes from the package's ``unet_arch.py``), or
        only ``bottleneck`` when ``bottleneck_layer`` names a submodule of another network."""
        if self._module is None:
            return None
        if self.bottleneck_layer is not None:
            self._module.get_submodule(self.bottleneck_layer)  # fail early on a wrong name
        if self._is_kit_unet():
            return LayerMap.unet(self._module.levels)
        return LayerMap() if self.bottleneck_layer is not None else None

    def _layer_modules(self, name: str) -> list:
        if self._module is None:
            formats = sorted(name for name, entry in self.description.weights if entry is not None)
            raise NotGreyBoxError(
                f"model {self.name!r} runs {formats} weights, a black box: feature perturbation needs "
                "pytorch_state_dict weights; use an input perturbation"
            )
        if self.layer_map is None:
            children = [name for name, _ in self._module.named_modules() if name][:12]
            raise NotGreyBoxError(
                f"model {self.name!r}: its bottleneck is unknown; set `bottleneck_layer:` to the dotted name of "
                f"the torch module to perturb, e.g. one of {children}"
            )
        if name == "bottleneck" and self.bottleneck_layer is not None:
            return [self._module.get_submodule(self.bottleneck_layer)]
        return [self._module.layer(name)]


def _axis_id(name: str):
    from bioimageio.spec.model.v0_5 import AxisId

    return AxisId(name)


def from_bank_entry(entry) -> BioImageIOModel:
    """Bank loader: ``path`` is an rdf.yaml, zip or folder; ``pretrained`` a zoo id, nickname, DOI or URL."""
    settings = check_settings(BioImageIOModel, {**entry.settings, **entry.common_settings(), "name": entry.name},
                              ("description", "channels"))
    if entry.pretrained is not None:
        return BioImageIOModel.from_pretrained(entry.pretrained, **settings)
    return BioImageIOModel.from_source(entry.path, **settings)


# -- export ---------------------------------------------------------------------------------------
_README = """# {name}

{description}

A 2D U-Net of `cte_kit` ({levels} levels, width {width}, {in_channels} input channel(s)), exported
with `cte_kit.models.bioimageio.export_unet`. Input: one raw image, normalised by the model's
`scale_range` preprocessing (percentiles {percentiles}). Output: sigmoid probabilities, channels
{channel_names}. Feature layers for grey-box perturbation (forward hooks on `UNet.layer(name)`):
{layers}.

## Validation

The test tensors were produced by `cte_kit`'s own prediction of the test input. Before using the
model on new data, rank it with consistency-based transferability estimation (`cte-kit rank`)
and check its predictions against a few labelled images of the target.
"""


def _cover(image: np.ndarray, probability: np.ndarray, path: Path) -> Path:
    """A 2:1 PNG: normalised input | foreground probability."""
    import imageio.v3 as iio

    def to_uint8(values):
        low, high = np.percentile(values, (1, 99.8))
        return (np.clip((values - low) / max(high - low, 1e-12), 0, 1) * 255).astype(np.uint8)

    grey = image if image.ndim == 2 else image.mean(axis=-1)
    cover = np.concatenate([to_uint8(grey), (np.clip(probability, 0, 1) * 255).astype(np.uint8)], axis=1)
    zoom = max(1, 256 // cover.shape[0])  # small test images are shown at least 256 pixels high
    iio.imwrite(path, np.repeat(np.repeat(cover, zoom, axis=0), zoom, axis=1))
    return path


def export_unet(
    checkpoint_or_model,
    out_path: str | Path,
    *,
    name: str | None = None,
    description: str | None = None,
    authors: Sequence[str] = ("cte_kit",),
    license: str = "MIT",
    test_image: np.ndarray | None = None,
    torchscript: bool = False,
    validate: bool = True,
) -> Path:
    """Write a kit U-Net as a bioimage.io model package (format 0.5).

    The package holds ``pytorch_state_dict`` weights with the architecture source
    ``unet_arch.py`` (imports only torch), optionally TorchScript weights, the test input and
    output tensors, a cover image, a README with a validation section, ``scale_range``
    preprocessing with the model's percentiles and ``sigmoid`` postprocessing, and the kit
    settings (threshold, instance method) in ``config.cte_kit``.

    Parameters
    ----------
    checkpoint_or_model : path or UNetModel
        A checkpoint written by :func:`cte_kit.models.unet.save_checkpoint`, or a loaded model.
    out_path : path
        ``*.zip`` writes a zip package, anything else a package folder with ``rdf.yaml``.
    name, description : str, optional
        Default: ``'cte_kit U-Net <model name>'`` (the zoo needs 5 to 128 characters) and a
        generic description.
    authors : sequence of str
    license : str
        SPDX identifier.
    test_image : (H, W) or (H, W, C) array, optional
        Raw test input; default a seeded synthetic nuclei image of 64 x 64 pixels. Its sides
        must be multiples of the U-Net's divisor ``2 ** (levels - 1)``.
    torchscript : bool
        Also add TorchScript weights (traced; a black box when loaded, but runnable without
        the architecture source).
    validate : bool
        Run ``bioimageio.core.test_model`` on the result and raise if it does not pass.

    Returns
    -------
    Path
        ``out_path``.
    """
    import torch
    from bioimageio.core import save_bioimageio_package, save_bioimageio_package_as_folder, test_model
    from bioimageio.spec.model import v0_5

    from ..data.synthetic import SyntheticDomain, generate
    from .unet import UNetModel

    model = checkpoint_or_model if isinstance(checkpoint_or_model, UNetModel) else UNetModel.from_checkpoint(checkpoint_or_model)
    if model.scale != 1:
        raise ValueError(f"model {model.name!r} predicts at scale {model.scale}: a bioimage.io package has no step that "
                         "resizes its input, so only U-Nets trained at scale 1 can be exported")
    config, network = model.config, model.network
    if test_image is None:
        test_image = generate(SyntheticDomain(), 1, shape=(64, 64), seed=0).images[0]
    raw = np.asarray(test_image, dtype=np.float32)
    if raw.ndim == 2 and config.in_channels == 3:
        raw = np.repeat(raw[..., None], 3, axis=-1)
    if raw.shape[0] % network.divisor or raw.shape[1] % network.divisor:
        raise ValueError(f"test_image shape {raw.shape[:2]} must be a multiple of the U-Net divisor {network.divisor}")
    raw_bcyx = np.ascontiguousarray(np.moveaxis(raw, -1, 0)[None] if raw.ndim == 3 else raw[None, None])
    normalised = model.prepare(raw)
    with torch.inference_mode():
        layout = normalised[None, None] if normalised.ndim == 2 else np.moveaxis(normalised, -1, 0)[None]
        probabilities = torch.sigmoid(network(torch.from_numpy(np.ascontiguousarray(layout)).to(model.device))).cpu().numpy()

    name = name or f"cte_kit U-Net {model.name}"
    channel_names = ["foreground"] if config.out_channels == 1 else ["foreground", "boundary"]
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        np.save(folder / "test_input.npy", raw_bcyx)
        np.save(folder / "test_output.npy", probabilities.astype(np.float32))
        (folder / "README.md").write_text(_README.format(
            name=name, description=description or "", levels=config.levels, width=config.width,
            in_channels=config.in_channels, percentiles=model.percentiles, channel_names=channel_names,
            layers=", ".join(network.layer_names()),
        ))
        inputs, outputs = _tensor_descriptions(model, folder, channel_names)
        described = v0_5.ModelDescr(
            name=name,
            description=description or f"cte_kit 2D U-Net ({', '.join(channel_names)}) for microscopy segmentation",
            authors=[v0_5.Author(name=author) for author in authors],
            cite=[v0_5.CiteEntry(text="Talks & Kreshuk: consistency-based transferability estimation for ranking "
                                      "pre-trained segmentation models", url=v0_5.HttpUrl("https://arxiv.org/abs/2503.00450"))],
            license=license,
            documentation=v0_5.FileDescr(source=folder / "README.md"),
            covers=[v0_5.FileDescr(source=_cover(raw, probabilities[0, 0], folder / "cover.png"))],
            tags=["cte_kit", "unet", "2d", "segmentation", "microscopy", "pytorch"],
            inputs=inputs,
            outputs=outputs,
            weights=_weights_description(model, folder, raw_bcyx if torchscript else None),
            config={CONFIG_KEY: {"threshold": model.threshold, "instances": model.instances, "min_size": model.min_size,
                                 "boundary_channel": 1 if config.out_channels == 2 else None}},
        )
        if validate:
            summary = test_model(described)
            if summary.status != "passed":
                raise RuntimeError(f"the exported bioimage.io model does not pass bioimageio.core.test_model:\n{summary.format()}")
        out_path.parent.mkdir(parents=True, exist_ok=True)
        if out_path.suffix == ".zip":
            save_bioimageio_package(described, output_path=out_path)
        else:
            save_bioimageio_package_as_folder(described, output_path=out_path)
    return out_path


def _tensor_descriptions(model, folder: Path, channel_names: list[str]):
    """Input (raw image, ``scale_range`` with the model's percentiles) and output (sigmoid) descriptions."""
    from bioimageio.spec.model import v0_5

    config, divisor = model.config, model.network.divisor
    input_id = v0_5.TensorId("raw")
    preprocessing = []
    if model.percentiles is not None:
        # the kit's normalize_percentile, (x - p_low) / (p_high - p_low + 1e-10), jointly over channels
        axes = [v0_5.AxisId(a) for a in (("channel",) if config.in_channels == 3 else ()) + _SPATIAL]
        preprocessing.append(v0_5.ScaleRangeDescr(kwargs=v0_5.ScaleRangeKwargs(
            axes=axes, min_percentile=model.percentiles[0], max_percentile=model.percentiles[1], eps=1e-10)))
    inputs = [v0_5.InputTensorDescr(
        id=input_id, description="raw image",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=[f"c{i}" for i in range(config.in_channels)]),
              *[v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=v0_5.ParameterizedSize(min=divisor, step=divisor))
                for axis in _SPATIAL]],
        test_tensor=v0_5.FileDescr(source=folder / "test_input.npy"), preprocessing=preprocessing,
    )]
    outputs = [v0_5.OutputTensorDescr(
        id=v0_5.TensorId("probability"), description="sigmoid probabilities",
        axes=[v0_5.BatchAxis(), v0_5.ChannelAxis(channel_names=channel_names),
              *[v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis), size=v0_5.SizeReference(tensor_id=input_id, axis_id=v0_5.AxisId(axis)))
                for axis in _SPATIAL]],
        test_tensor=v0_5.FileDescr(source=folder / "test_output.npy"), postprocessing=[v0_5.SigmoidDescr()],
    )]
    return inputs, outputs


def _weights_description(model, folder: Path, trace_input: np.ndarray | None):
    """``pytorch_state_dict`` weights with the ``unet_arch.py`` source, and TorchScript ones if ``trace_input`` is given."""
    import torch
    from bioimageio.spec.model import v0_5

    config, network = model.config, model.network
    torch.save({k: v.detach().cpu() for k, v in network.state_dict().items()}, folder / "weights.pt")
    (folder / "unet_arch.py").write_text(Path(__file__).with_name("unet_arch.py").read_text())
    version = v0_5.Version(torch.__version__.split("+")[0])
    state_dict = v0_5.PytorchStateDictWeightsDescr(
        source=folder / "weights.pt", pytorch_version=version,
        architecture=v0_5.ArchitectureFromFileDescr(
            source=folder / "unet_arch.py", callable=v0_5.Identifier("UNet"),
            kwargs={"in_channels": config.in_channels, "out_channels": config.out_channels, "levels": config.levels,
                    "width": config.width, "dropout": config.dropout},
        ),
    )
    if trace_input is None:
        return v0_5.WeightsDescr(pytorch_state_dict=state_dict)
    # traced here, in eval mode: bioimageio.core's converter traces a freshly built module in train
    # mode, which records BatchNorm batch statistics instead of the running ones
    with warnings.catch_warnings(), torch.inference_mode():
        # the U-Net's branch for hook-doubled batches is never taken in a plain forward
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(network, torch.from_numpy(trace_input).to(model.device))
    traced.save(folder / "weights_torchscript.pt")
    torchscript = v0_5.TorchscriptWeightsDescr(source=folder / "weights_torchscript.pt", pytorch_version=version,
                                               parent="pytorch_state_dict")
    return v0_5.WeightsDescr(pytorch_state_dict=state_dict, torchscript=torchscript)
