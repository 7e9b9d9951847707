"""StarDist 2D models (TensorFlow / Keras 3) as a grey-box adapter.

A model is a registered pretrained name resolved by StarDist's own download and cache
(``2D_versatile_fluo``, ``2D_versatile_he``, ``2D_paper_dsb2018``, ``2D_demo`` and their aliases)
or a model folder written by ``StarDist2D.train`` (``config.json`` + ``weights_best.h5``)::

    model = StarDistModel.from_pretrained("2D_versatile_fluo")
    model = StarDistModel.from_folder("models/my_stardist")

Outputs: instance labels from ``predict_instances`` and StarDist's object probability map,
repeated from the grid resolution to the image size the way StarDist's own export does.

Grey box: the Keras functional model is rebuilt with :func:`keras.models.clone_model` around
the *same* layer objects (hence the same weights) with one extra layer after each perturbed
block, which multiplies its channels by a per-image mask (:func:`cte_kit.models._common.channel_scales`).
The rebuilt model stands in for ``keras_model`` while StarDist predicts, so padding, tiling and
non-maximum suppression stay StarDist's own. ``p = 0`` never touches the network. A clean +
dropout pair is computed by a second rebuild that forks the batch after the first perturbed
block (the clean half and the scaled half; feature maps from before the fork are repeated where
the forked half meets them, at the skip connections), so the layers before it run once; StarDist
predicts the image twice around it (:class:`~cte_kit.models._common.Relay`): the clean half is
handed over the first time, the kept dropout half the second. Both halves equal the plain and
the rebuilt model's predictions bit for bit (TensorFlow on CPU). Layer names
(see :mod:`cte_kit.models.layers`) follow CSBDeep's U-Net naming: ``encoder{n}`` is the output
of ``down_level_{n}`` (the skip features of level n), ``bottleneck`` the output of the
``middle_*`` block and ``decoder{j}`` the output of ``up_level_{depth-1-j}``; a network without
that naming offers the bottleneck only.

TensorFlow and StarDist are imported on first use only; importing :mod:`cte_kit.models` does
not import them.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import PerImageDropout, PretrainedDownloadError, Relay, channel_scales, check_settings
from ..types import Prediction
from .base import SegmentationModel
from .layers import LayerMap

__all__ = ["StarDistModel", "from_bank_entry"]


def _import_stardist():
    """``stardist.models.StarDist2D``, imported with TensorFlow's C++ start-up chatter muted.

    ``TF_CPP_MIN_LOG_LEVEL`` is set only for the import (TensorFlow reads it then) and only if
    the user has not set it; the user's environment is restored afterwards. GPUs are switched
    to on-demand memory, so that PyTorch models of the same bank still find GPU memory
    (TensorFlow otherwise reserves nearly all of it on first use).
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    if quiet:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        import tensorflow as tf
        from stardist.models import StarDist2D
    except (ImportError, RuntimeError) as error:  # csbdeep says "RuntimeError: Please install TensorFlow"
        raise ImportError(
            f"the StarDist adapter needs stardist>=0.9.1 and TensorFlow 2.16-2.21: pip install 'cte_kit[adapters]' "
            f"and, where no TensorFlow is installed yet, pip install 'cte_kit[tensorflow]' (keep the TensorFlow you "
            f"have, e.g. on Colab) ({type(error).__name__}: {error})"
        ) from None
    finally:
        if quiet:
            del os.environ["TF_CPP_MIN_LOG_LEVEL"]
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):  # raised once TensorFlow has already initialised the GPU
            tf.config.experimental.set_memory_growth(gpu, True)
    return StarDist2D


@functools.lru_cache(maxsize=None)
def _channel_scale_layer():
    """A Keras layer class multiplying the last (channel) axis by a settable, frozen vector."""
    from csbdeep.utils.tf import keras_import

    Layer = keras_import("layers", "Layer")

    class ChannelScale(Layer):
        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", trainable=False, name="scale")

        def call(self, inputs):
            return inputs * self.scale

    return ChannelScale


@functools.lru_cache(maxsize=None)
def _fork_layers():
    """Keras layers of a forked model: ``Fork`` (the perturbed layer's output doubled, second half
    scaled by a settable channel vector, or only the second half scaled downstream of the fork) and
    ``Repeat`` (a feature map computed before the fork, doubled where the forked half meets it)."""
    from csbdeep.utils.tf import keras_import

    Layer, ops = keras_import("layers", "Layer"), keras_import("ops")

    class Fork(Layer):
        def __init__(self, forked: bool, **kwargs):
            super().__init__(**kwargs)
            self.forked = forked

        def build(self, input_shape):
            self.scale = self.add_weight(shape=(input_shape[-1],), initializer="ones", trainable=False, name="scale")

        def call(self, inputs):
            clean, perturbed = ops.split(inputs, 2, axis=0) if self.forked else (inputs, inputs)
            return ops.concatenate([clean, perturbed * self.scale], axis=0)

    class Repeat(Layer):
        def call(self, inputs):
            return ops.concatenate([inputs, inputs], axis=0)

    return Fork, Repeat


def _quietly(function, *args, **kwargs):
    """Call a StarDist loader without its progress prints on stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return function(*args, **kwargs)


def _keras_home() -> Path:
    # Keras's cache root: KERAS_HOME, read when Keras is imported, else ~/.keras
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")


@dataclass
class StarDistModel(PerImageDropout, SegmentationModel):
    """Grey-box adapter for a ``stardist.models.StarDist2D``.

    Parameters
    ----------
    stardist : stardist.models.StarDist2D
        The loaded model (see :meth:`from_pretrained`, :meth:`from_folder`).
    percentiles : (float, float)
        Percentile normalisation, StarDist's convention ``csbdeep.utils.normalize(img, 1, 99.8)``
        (colour images jointly over all channels, as recommended for the H&E model).
    threshold : float, optional
        Foreground threshold of the probability map for hard consistency; default the model's
        own ``prob_thresh`` (``thresholds.json``, else 0.5).
    prob_thresh, nms_thresh : float, optional
        Non-maximum-suppression thresholds for the labels; default the model's own.
    tile_size : int, optional
        Predict images larger than this (pixels per side) in ``ceil(size / tile_size)`` tiles
        per axis, with StarDist's overlapping tiling. Default: whole images (StarDist pads
        them to a multiple of its divisor itself).
    bottleneck_layer : str, optional
        Name of the Keras layer whose output is the bottleneck. Default: found from CSBDeep's
        U-Net naming, the block feeding the first up-sampling after the ``middle_*`` layers.
    """

    stardist: Any = None
    threshold: float | None = None
    prob_thresh: float | None = None
    nms_thresh: float | None = None
    tile_size: int | None = None
    bottleneck_layer: str | None = None

    def __post_init__(self):
        if self.stardist is None:
            raise ValueError("StarDistModel needs a StarDist2D; use StarDistModel.from_pretrained(name) or .from_folder(path)")
        config = self.stardist.config
        if config.n_dim != 2 or config.n_channel_in not in (1, 3) or self.stardist._is_multiclass():
            raise ValueError(
                f"model {self.name!r}: only single-class 2D StarDist models with 1 or 3 input channels are supported "
                f"(got n_dim={config.n_dim}, n_channel_in={config.n_channel_in}, n_classes={config.n_classes})"
            )
        if self.tile_size is not None and self.tile_size < 16:
            raise ValueError(f"tile_size must be at least 16 pixels, got {self.tile_size}")
        self.channels = config.n_channel_in
        if self.threshold is None:
            self.threshold = float(self.stardist.thresholds.prob)
        self.bottleneck_layer = self.bottleneck_layer or _find_bottleneck(self.stardist.keras_model)
        self.stardist.keras_model.get_layer(self.bottleneck_layer)  # raises ValueError for unknown names
        self._keras_names = _keras_layer_names(self.stardist, self.bottleneck_layer)
        depth = sum(name.startswith("encoder") for name in self._keras_names) + 1
        self.layer_map = LayerMap.unet(depth) if depth > 1 else LayerMap()
        self._perturbed: dict[tuple[str, ...], tuple] = {}
        self._feature_models: dict[str, Any] = {}
        if self.tile_size is not None:
            # StarDist measures the tile overlap (receptive field) once, with whatever model is
            # current: measure it now with the plain one, so results never depend on call order.
            self.stardist._axes_tile_overlap(config.axes)

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name: str, /, **settings: Any) -> "StarDistModel":
        """A registered pretrained model, downloaded once into the Keras cache.

        Raises
        ------
        ValueError
            ``name`` is not a registered StarDist2D model or alias.
        PretrainedDownloadError
            The download failed; the message says which zip to place where.
        """
        StarDist2D = _import_stardist()
        from csbdeep.models.pretrained import get_model_details, get_registered_models

        try:
            key, _, details = get_model_details(StarDist2D, name)
        except ValueError:
            keys, aliases = get_registered_models(StarDist2D)
            known = list(keys) + [alias for names in aliases.values() for alias in names]
            raise ValueError(f"unknown StarDist pretrained model {name!r}; registered: {known}") from None
        try:
            stardist = _quietly(StarDist2D.from_pretrained, name)
        except Exception as error:  # Keras's get_file raises a bare Exception for URL failures
            place = _keras_home() / "models" / "StarDist2D" / key / f"{key}.zip"
            raise PretrainedDownloadError(
                "StarDist", name, {f"{key}.zip": details["url"]},
                f"To work offline, download it on a machine with internet access and put it at {place} "
                "(the cache root ~/.keras moves with the environment variable KERAS_HOME, read when Keras is "
                "imported), or unzip it and point the bank entry's `path:` at the unzipped model folder "
                "(the one with config.json and weights_best.h5).", error,
            ) from error
        if stardist is None:  # from_pretrained prints and returns None when the cached zip is unusable
            raise ValueError(f"StarDist could not load pretrained model {name!r} (a corrupt download in the Keras cache?)")
        return cls(name=settings.pop("name", name), stardist=stardist, **settings)

    @classmethod
    def from_folder(cls, path: str | Path, **settings: Any) -> "StarDistModel":
        """A model folder as written by ``StarDist2D.train`` (``config.json``, ``weights_best.h5``)."""
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"{folder} is not a StarDist model folder (no config.json); give the folder that "
                "StarDist2D(config, name, basedir) wrote, i.e. basedir/name"
            )
        StarDist2D = _import_stardist()
        stardist = _quietly(StarDist2D, None, name=folder.name, basedir=str(folder.parent))
        return cls(name=settings.pop("name", folder.name), stardist=stardist, **settings)

    # -- prediction -----------------------------------------------------------------------------
    @property
    def output(self) -> str:
        return "both"

    def _n_tiles(self, shape: tuple[int, ...]):
        if self.tile_size is None:
            return None
        tiles = [math.ceil(size / self.tile_size) for size in shape[:2]]
        return tuple(tiles) + ((1,) if len(shape) == 3 else ())

    def _predict_normalised(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        predictions = []
        for image in batch:
            (labels, _), (prob, _) = self.stardist.predict_instances(
                image, n_tiles=self._n_tiles(image.shape), prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh,
                sparse=False, return_predict=True, show_tile_progress=False,
            )
            predictions.append(Prediction(probability=self._to_image_size(prob, image.shape[:2]), labels=labels.astype(np.int32)))
        return predictions

    def _to_image_size(self, prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Repeat a grid-resolution map to pixels, as StarDist's export (a strided ones-kernel transpose conv)."""
        grid_y, grid_x = self.stardist.config.grid
        full = np.repeat(np.repeat(prob, grid_y, axis=0), grid_x, axis=1)
        return np.ascontiguousarray(full[: shape[0], : shape[1]], dtype=np.float32)

    # -- grey box -------------------------------------------------------------------------------
    def _perturbed_model(self, targets: tuple[str, ...]):
        """The Keras model with a channel-scale layer after each of the Keras layers ``targets``
        (built once per set of layers; weights shared with the plain model) and those scale layers."""
        if targets not in self._perturbed:
            from csbdeep.utils.tf import keras_import

            clone_model = keras_import("models", "clone_model")
            scales = {name: _channel_scale_layer()(name=f"cte_kit_dropout_{index}") for index, name in enumerate(targets)}

            def call(layer, *args, **kwargs):
                output = layer(*args, **kwargs)
                return scales[layer.name](output) if layer.name in scales else output

            try:
                # identity clone_function: reuse every layer object, so weights are shared, not copied
                rebuilt = clone_model(self.stardist.keras_model, clone_function=lambda layer: layer, call_function=call)
            except TypeError as error:
                raise RuntimeError(
                    f"model {self.name!r}: feature dropout needs Keras 3 (clone_model with call_function); "
                    f"this Keras cannot rebuild the model ({error})"
                ) from None
            self._perturbed[targets] = (rebuilt, [scales[name] for name in targets])
        return self._perturbed[targets]

    def _forked_model(self, targets: tuple[str, ...]):
        """The Keras model whose batch forks after the first of the Keras layers ``targets``: its first
        half of every output is the plain model's, the second half the dropout one (weights shared;
        built once per set of layers), and its ``Fork`` layers, in the order of ``targets``."""
        key = ("fork", targets)
        if key not in self._perturbed:
            from csbdeep.utils.tf import keras_import

            clone_model, tree = keras_import("models", "clone_model"), keras_import("tree")
            Fork, Repeat = _fork_layers()
            forks: dict[str, Any] = {}
            forked: set[int] = set()  # ids of the tensors holding clean + perturbed halves

            def call(layer, *args, **kwargs):
                inputs = tree.flatten((args, kwargs))
                if any(id(tensor) in forked for tensor in inputs):
                    # a tensor from before the fork meets the forked half (a skip connection): double it
                    args, kwargs = tree.map_structure(
                        lambda t: t if id(t) in forked or not hasattr(t, "shape") else Repeat()(t), (args, kwargs))
                    output = layer(*args, **kwargs)
                    if layer.name in targets:
                        output = forks.setdefault(layer.name, Fork(True, name=f"cte_kit_fork_{layer.name}"))(output)
                elif layer.name in targets:
                    output = forks.setdefault(layer.name, Fork(False, name=f"cte_kit_fork_{layer.name}"))(layer(*args, **kwargs))
                else:
                    return layer(*args, **kwargs)
                forked.update(id(tensor) for tensor in tree.flatten(output))
                return output

            rebuilt = clone_model(self.stardist.keras_model, clone_function=lambda layer: layer, call_function=call)
            if not all(id(tensor) in forked for tensor in rebuilt.outputs):
                raise RuntimeError(f"model {self.name!r}: an output does not depend on the perturbed layers {list(targets)}")
            self._perturbed[key] = (rebuilt, [forks[name] for name in targets])
        return self._perturbed[key]

    def _forks(self, layers: Sequence[str]) -> bool:
        return True

    @contextlib.contextmanager
    def _relay(self, layers: Sequence[str], rate: float, seed: int):
        """StarDist's ``keras_model`` is a stand-in whose ``predict`` runs the forked model (see
        :class:`~cte_kit.models._common.Relay`); the masks are those of :meth:`_dropout`."""
        forked, forks = self._forked_model(tuple(self._keras_names[name] for name in layers))
        masks = channel_scales([int(fork.scale.shape[0]) for fork in forks], rate, seed)
        for fork, mask in zip(forks, masks):
            fork.scale.assign(mask.numpy())

        def halves(x, **kwargs):
            outputs = forked.predict(x, **kwargs)
            half = len(x)
            return [output[:half] for output in outputs], [output[half:] for output in outputs]

        relay = Relay(halves)
        plain = self.stardist.keras_model
        self.stardist.keras_model = _RelayedKeras(relay)
        try:
            yield relay
        finally:
            self.stardist.keras_model = plain

    @contextlib.contextmanager
    def _dropout(self, layers: Sequence[str], rate: float, seed: int):
        if rate == 0.0:
            yield
            return
        rebuilt, scales = self._perturbed_model(tuple(self._keras_names[name] for name in self.check_layers(layers)))
        masks = channel_scales([int(scale.scale.shape[0]) for scale in scales], rate, seed)
        for scale, mask in zip(scales, masks):
            scale.scale.assign(mask.numpy())
        plain = self.stardist.keras_model
        self.stardist.keras_model = rebuilt
        try:
            yield
        finally:
            self.stardist.keras_model = plain

    def layer_features(self, images: Sequence, layer: str, names: Sequence[str] | None = None) -> list[np.ndarray]:
        """Feature maps of one plain layer (see :meth:`SegmentationModel.layer_features`).

        A Keras model from the network's input to the layer's output (weights shared, built once
        per layer) predicts each normalised image, padded at the bottom and right by reflection to
        StarDist's divisor, as its own prediction pads.
        """
        if self.check_layers([layer]) != (layer,):
            raise ValueError(f"layer_features takes one plain layer name, not {layer!r}; layers: {list(self.layers)}")
        if layer not in self._feature_models:
            from csbdeep.utils.tf import keras_import

            model = keras_import("models", "Model")
            network = self.stardist.keras_model
            self._feature_models[layer] = model(network.inputs, network.get_layer(self._keras_names[layer]).output)
        divisors = self.stardist._axes_div_by("YX")
        features = []
        for array in self._prepare_all(images, names):
            pad = [(0, (-size) % divisor) for size, divisor in zip(array.shape[:2], divisors)]
            padded = np.pad(array, pad + [(0, 0)] * (array.ndim - 2), mode="reflect")
            batch = padded[None, ..., None] if padded.ndim == 2 else padded[None]
            output = np.asarray(self._feature_models[layer](batch.astype(np.float32), training=False))[0]
            features.append(np.ascontiguousarray(np.moveaxis(output, -1, 0), dtype=np.float32))
        return features

    def feature_modules(self, layers: Sequence[str]) -> list:
        raise TypeError("StarDist is a Keras model and has no torch modules: its grey-box pass rebuilds the "
                        "Keras model around the perturbed layers instead (StarDistModel._dropout)")


class _RelayedKeras:
    """What StarDist's prediction needs of its Keras model (``predict``), answered by a Relay."""

    def __init__(self, relay: Relay):
        self._relay = relay

    def predict(self, x, **kwargs):
        return self._relay(x, **kwargs)


def _keras_layer_names(stardist, bottleneck: str) -> dict[str, str]:
    """Plain layer name -> Keras layer name, from CSBDeep's U-Net naming (the bottleneck alone without it).

    A block's output is its last named convolution, followed through the BatchNormalization and
    Activation layers CSBDeep appends when ``unet_batch_norm`` is on.
    """
    config = stardist.config
    prefix, depth, convs = config.unet_prefix, config.unet_n_depth, config.unet_n_conv_per_depth
    names = {"bottleneck": bottleneck}
    try:
        for level in range(depth):
            names[f"encoder{level}"] = _block_output(stardist.keras_model, f"{prefix}down_level_{level}_no_{convs - 1}")
            # CSBDeep numbers the last convolution of an up level n_conv_per_depth, not n_conv_per_depth - 1
            names[f"decoder{depth - 1 - level}"] = _block_output(stardist.keras_model, f"{prefix}up_level_{level}_no_{convs}")
    except ValueError:  # not CSBDeep's naming: offer the bottleneck alone
        return {"bottleneck": bottleneck}
    return names


def _block_output(keras_model, name: str) -> str:
    """The last layer of the block that starts at layer ``name`` (through BatchNormalization / Activation)."""
    from csbdeep.utils.tf import keras_import

    followers = (keras_import("layers", "BatchNormalization"), keras_import("layers", "Activation"))
    current = keras_model.get_layer(name)  # ValueError for an unknown name
    while True:
        follower = next((layer for layer in keras_model.layers
                         if isinstance(layer, followers) and layer.input is current.output), None)
        if follower is None:
            return current.name
        current = follower


def _find_bottleneck(keras_model) -> str:
    """Name of the layer whose output feeds the first up-sampling after CSBDeep's ``middle_*`` layers."""
    from csbdeep.utils.tf import keras_import

    UpSampling2D = keras_import("layers", "UpSampling2D")
    layers = keras_model.layers
    middle = [index for index, layer in enumerate(layers) if re.search(r"middle_\d+$", layer.name)]
    upsampling = next((layer for layer in layers[middle[-1] + 1 :] if isinstance(layer, UpSampling2D)), None) if middle else None
    if upsampling is None:
        raise ValueError(
            "cannot find the U-Net bottleneck of this StarDist model (no CSBDeep `middle_*` layers followed by an "
            "up-sampling); set `bottleneck_layer:` to a layer name, one of: " + ", ".join(layer.name for layer in layers)
        )
    return next(layer.name for layer in layers if layer.output is upsampling.input)


def from_bank_entry(entry) -> StarDistModel:
    """Bank loader: ``pretrained`` is a registered name or alias, ``path`` a model folder."""
    settings = check_settings(StarDistModel, {**entry.settings, **entry.common_settings(), "name": entry.name},
                              ("stardist", "channels"))
    if entry.pretrained is not None:
        return StarDistModel.from_pretrained(entry.pretrained, **settings)
    return StarDistModel.from_folder(entry.path, **settings)
