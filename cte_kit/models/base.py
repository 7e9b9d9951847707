"""The protocol every model adapter implements.

An adapter wraps one pre-trained segmentation model (a kit U-Net, StarDist, Cellpose, a
bioimage.io model) and answers three questions the estimator asks:

* :meth:`SegmentationModel.predict` - clean predictions for a list of 2D images;
* :meth:`SegmentationModel.predict_pairs` - for each image the clean prediction and
  ``n_pert`` perturbed ones, under an input perturbation (any model) or feature dropout (grey
  box only);
* what the model is: black or grey box, which layer is its bottleneck, which layers can be
  perturbed (:attr:`SegmentationModel.layer_map`, see :mod:`cte_kit.models.layers`).

Subclasses implement :meth:`SegmentationModel._predict_normalised` (a batch of normalised
images in, predictions out) and, for grey boxes, set :attr:`SegmentationModel.layer_map` and
implement :meth:`SegmentationModel._layer_modules` (the torch modules of one plain layer name).
Everything else - validation, normalisation, seeding, batching of equal shapes, layer aliases,
and large images in tiles for adapters that declare a :meth:`SegmentationModel._tiling`
(:mod:`cte_kit.models.tiling`) - is shared here.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from ..data.images import check_image, normalize_percentile, percentile_range, to_grey
from ..perturb import FeatureDropout, InputPerturbation, Perturbation, capture_outputs, feature_dropout, image_seed
from ..types import InputTypeError, Prediction, PredictionPair, content_name, image_id
from .layers import LayerMap
from .tiling import LazyImage, Stitcher, Tiling, tile_windows

__all__ = ["ModelTraits", "SegmentationModel", "NotGreyBoxError", "without_probability"]


class NotGreyBoxError(InputTypeError):
    """Feature perturbation was asked of a model whose internals are not accessible."""


@dataclass(frozen=True)
class ModelTraits:
    """What a model can give an estimator, known without loading it again (a run's store keeps it).

    Attributes
    ----------
    name : str
    grey_box : bool
        Whether features can be read and perturbed.
    output : {'semantic', 'instance', 'both'}
        What its predictions fill.
    """

    name: str
    grey_box: bool
    output: str


@dataclass
class SegmentationModel(abc.ABC):
    """Base class of all model adapters.

    Parameters
    ----------
    name : str
        Name in the bank and in results.
    percentiles : (float, float)
        Per-image percentile normalisation applied before the model (and before any input
        perturbation). ``None`` leaves the image to the model's own preprocessing.
    threshold : float
        Foreground probability threshold for binarisation (hard consistency, F1).
    channels : {1, 3}
        Image channels the model takes.
    rgb : {'error', 'grey'}
        What to do with colour images for a grey model: refuse them, or convert to luminance.
    batch_size : int
        Images per forward pass (images of equal shape are batched together).
    """

    name: str
    percentiles: tuple[float, float] | None = (1.0, 99.8)
    threshold: float = 0.5
    channels: int = 1
    rgb: str = "error"
    batch_size: int = 4
    #: The layers :class:`~cte_kit.perturb.FeatureDropout` can perturb (None for black boxes).
    layer_map: LayerMap | None = field(default=None, init=False)

    # -- what the model is ------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        """Plain names of the perturbable layers (empty for black boxes); aliases in :attr:`layer_map`."""
        return self.layer_map.plain if self.layer_map is not None else ()

    @property
    def grey_box(self) -> bool:
        """True when feature perturbation is possible."""
        return bool(self.layers)

    @property
    def bottleneck(self) -> str | None:
        """Name of the layer perturbed by default (``'bottleneck'``), or None for black boxes."""
        return "bottleneck" if "bottleneck" in self.layers else None

    @property
    def output(self) -> str:
        """``'semantic'``, ``'instance'`` or ``'both'``: what :meth:`predict` fills."""
        return "both"

    @property
    def traits(self) -> ModelTraits:
        return ModelTraits(self.name, self.grey_box, self.output)

    def describe(self) -> dict:
        """A small summary for tables and results files."""
        return {
            "name": self.name,
            "kind": type(self).__name__,
            "box": "grey" if self.grey_box else "black",
            "bottleneck": self.bottleneck,
            "output": self.output,
        }

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def _predict_normalised(self, batch: Sequence[np.ndarray]) -> list[Prediction]:
        """Predict a batch of normalised float32 images of one shape."""

    def _layer_modules(self, name: str) -> list:
        """The torch modules whose outputs make up the plain layer ``name`` (grey boxes override)."""
        raise NotGreyBoxError(
            f"model {self.name!r} ({type(self).__name__}) is a black box: feature perturbation is "
            "not available; use an input perturbation (noise, brightness, contrast, gamma)"
        )

    def feature_modules(self, layers: Sequence[str]) -> list:
        """The torch modules whose outputs stand for ``layers`` (plain names or aliases), each once.

        Raises
        ------
        NotGreyBoxError
            The model is a black box.
        ValueError
            An unknown layer name.
        """
        if self.layer_map is None:
            return self._layer_modules("bottleneck")  # a black box raises NotGreyBoxError with advice
        modules: list = []
        for name in self.check_layers(layers):
            for module in self._layer_modules(name):
                if not any(module is seen for seen in modules):  # a module shared by two names is hooked once
                    modules.append(module)
        return modules

    def check_layers(self, layers: Sequence[str]) -> tuple[str, ...]:
        """Plain layer names for ``layers`` (aliases expanded), or a ValueError listing the model's layers."""
        if self.layer_map is None:
            raise ValueError(f"model {self.name!r} is a black box: it has no layers to perturb")
        return self.layer_map.resolve(layers, self.name)

    def layer_features(self, images: Sequence, layer: str, names: Sequence[str] | None = None) -> list[np.ndarray]:
        """The feature maps one plain layer computes for each image (grey boxes only).

        The adapter's own forward pass runs with a hook on the layer's module (the same module
        :class:`~cte_kit.perturb.FeatureDropout` perturbs), in batches of equally shaped images.

        Parameters
        ----------
        images : sequence of (H, W) or (H, W, C) arrays
            Raw images, normalised here as for :meth:`predict`.
        layer : str
            One plain layer name of :attr:`layers` (``'bottleneck'``, ``'decoder1'``, ...).
        names : sequence of str, optional
            For error messages.

        Returns
        -------
        list of (C, h, w) float32 ndarray, one per image
            At the layer's own resolution (``h <= H``, ``w <= W``; padding the network needs may
            add a margin at the bottom and right, which callers crop with the image's aspect).

        Raises
        ------
        NotGreyBoxError
            The model is a black box.
        ValueError
            ``layer`` is not one plain layer of the model, or an image is predicted in tiles (by the
            adapter or its library), so no single map stands for it.
        """
        plain = self.check_layers([layer]) if self.layer_map is not None else ()
        if len(plain) != 1 or plain[0] != layer:
            self.feature_modules([layer])  # a black box raises NotGreyBoxError with advice
            raise ValueError(f"layer_features takes one plain layer name, not {layer!r}; layers: {list(self.layers)}")
        arrays = self._prepare_all(images, names)
        tiling = self._tiling()
        large = [i for i, array in enumerate(arrays) if tiling is not None and tiling.applies(array.shape)]
        if large:
            raise ValueError(f"model {self.name!r} predicts image {large[0]} ({arrays[large[0]].shape[:2]}) in tiles of "
                             f"{tiling.size} pixels: no single feature map stands for it; crop the images")
        results: list[np.ndarray | None] = [None] * len(arrays)
        for indices in self._batches(arrays):
            with capture_outputs(self.feature_modules([layer])) as captured:
                self._predict_normalised([arrays[i] for i in indices])
            # libraries that predict image by image call the layer once per image, in order
            maps = [sample for output in captured for sample in output]
            if len(maps) != len(indices) or len({m.shape for m in maps}) != 1:
                raise ValueError(f"model {self.name!r} computed layer {layer!r} {len(maps)} time(s) for {len(indices)} "
                                 "image(s) (tiled prediction): its features cannot be read per image; use smaller images")
            for index, feature in zip(indices, maps):
                results[index] = feature
        return results  # type: ignore[return-value]

    def _tiling(self) -> Tiling | None:
        """How the adapter cuts an image too large to predict at once (None: whole, or the library tiles)."""
        return None

    def _in_tiles(self, run, batch: Sequence[np.ndarray], seeds: Sequence[int] | None = None,
                  probability: bool = True) -> tuple[list, ...]:
        """``run(batch, seeds)`` (a tuple of lists of Prediction, one per image), with every image larger than
        :meth:`_tiling` predicted tile by tile, each tile with its image's seed, and stitched; ``probability``
        False leaves the probability maps out of predictions that have labels (:func:`without_probability`)."""
        tiling = self._tiling()
        large = [i for i, array in enumerate(batch) if tiling is not None and tiling.applies(array.shape)]
        if not large:
            return tuple([without_probability(p, keep=probability) for p in output] for output in run(batch, seeds))
        small = [i for i in range(len(batch)) if i not in large]
        found: list[list] = []
        if small:
            outputs = run([batch[i] for i in small], None if seeds is None else [seeds[i] for i in small])
            found = [[None] * len(batch) for _ in outputs]
            for kind, predictions in enumerate(outputs):
                for i, prediction in zip(small, predictions):
                    found[kind][i] = without_probability(prediction, keep=probability)
        for i in large:
            stitchers = None
            for window in tile_windows(batch[i].shape, tiling):
                outputs = run([np.ascontiguousarray(batch[i][window.tile])], None if seeds is None else [seeds[i]])
                if stitchers is None:
                    stitchers = [Stitcher(batch[i].shape[:2], probability) for _ in outputs]
                    found = found or [[None] * len(batch) for _ in outputs]
                for stitcher, (prediction,) in zip(stitchers, outputs):
                    stitcher.add(window, prediction)
            for kind, stitcher in enumerate(stitchers):
                found[kind][i] = stitcher.result()
        return tuple(found)

    def _forward(self, batch: Sequence[np.ndarray], probability: bool = True) -> list[Prediction]:
        """:meth:`_predict_normalised`, large images in tiles."""
        return self._in_tiles(lambda images, _: (self._predict_normalised(images),), batch, probability=probability)[0]

    def _predict_feature_pairs(
        self, batch: Sequence[np.ndarray], dropout: FeatureDropout, seeds: Sequence[int]
    ) -> tuple[list[Prediction], list[Prediction]]:
        """Clean and dropout predictions of one batch; adapters may share work between them."""
        return self._predict_normalised(batch), self._predict_feature_perturbed(batch, dropout, seeds)

    def _predict_feature_perturbed(
        self, batch: Sequence[np.ndarray], dropout: FeatureDropout, seeds: Sequence[int]
    ) -> list[Prediction]:
        """Dropout predictions of one batch whose clean predictions are already known."""
        with feature_dropout(self.feature_modules(dropout.layers), dropout.rate, seeds):
            return self._predict_normalised(batch)

    # -- shared logic ----------------------------------------------------------------------
    def prepare(self, image, name: str = "image") -> np.ndarray:
        """Validate, convert and normalise one image as this model expects it."""
        array = check_image(image, name=name, channels=None)
        if array.ndim == 3 and self.channels == 1:
            if self.rgb != "grey":
                check_image(array, name=name, channels=1)
            array = to_grey(array)
        elif array.ndim == 2 and self.channels == 3:
            array = np.repeat(array[..., None], 3, axis=-1)
        tiling = self._tiling()
        if tiling is not None and tiling.applies(array.shape) and type(self).normalise is SegmentationModel.normalise:
            # a large image is normalised tile by tile, with the whole image's bounds: no float copy of it is kept
            return LazyImage(array, percentile_range(array, *self.percentiles) if self.percentiles is not None else None)
        return self.normalise(array)

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Per-image normalisation of a checked (H, W) or (H, W, C) image, before any input perturbation.

        Percentile normalisation with :attr:`percentiles`, or a float32 copy when it is None.
        Adapters whose library normalises its own way (Cellpose, a bioimage.io model's
        preprocessing) override this, so that input perturbations still act on the image the
        network sees.
        """
        if self.percentiles is None:
            return array.astype(np.float32)
        return normalize_percentile(array, *self.percentiles)

    def perturb_input(self, perturbation: InputPerturbation, array, seed: int):
        """One input perturbation of a prepared image, as :meth:`predict_pairs` feeds it to the network.

        Parameters
        ----------
        perturbation : InputPerturbation
        array : (H, W) or (H, W, C) float32 ndarray, or LazyImage
            What :meth:`prepare` returned.
        seed : int
            The image's seed for this draw (noise, and a strength drawn per image).

        Returns
        -------
        The perturbed image, of the same shape (a LazyImage stays one, perturbed tile by tile).
        Adapters whose layout adds channels that hold no image override this, so that the
        perturbation acts on the image alone (Cellpose).
        """
        return _perturbed(perturbation, array, seed)

    def _batches(self, arrays: Sequence[np.ndarray]):
        """Indices of equally shaped images, in chunks of ``batch_size``."""
        by_shape: dict[tuple, list[int]] = {}
        for index, array in enumerate(arrays):
            by_shape.setdefault(array.shape, []).append(index)
        for indices in by_shape.values():
            for start in range(0, len(indices), self.batch_size):
                yield indices[start : start + self.batch_size]

    def predict(self, images: Sequence, names: Sequence[str] | None = None) -> list[Prediction]:
        """Clean predictions.

        Parameters
        ----------
        images : sequence of (H, W) or (H, W, C) arrays
            Raw images (any real dtype); normalised here.
        names : sequence of str, optional
            For error messages.

        Returns
        -------
        list of Prediction, one per image, in order
        """
        arrays = self._prepare_all(images, names)
        results: list[Prediction | None] = [None] * len(arrays)
        for indices in self._batches(arrays):
            for index, prediction in zip(indices, self._forward([arrays[i] for i in indices])):
                results[index] = prediction
        return results  # type: ignore[return-value]

    def predict_pairs(
        self,
        images: Sequence,
        perturbation: Perturbation,
        seed: int = 0,
        n_pert: int = 1,
        image_ids: Sequence[int] | None = None,
        names: Sequence[str] | None = None,
        clean: Sequence[Prediction] | None = None,
        prepared: Sequence[np.ndarray] | None = None,
        probability: bool = True,
    ) -> list[PredictionPair]:
        """Clean and perturbed predictions of each image.

        Parameters
        ----------
        images : sequence of arrays
            Raw images.
        perturbation : InputPerturbation or FeatureDropout
        seed : int
            Run seed. Together with the image id and the draw number it fixes every random
            number, so results do not depend on batching, order or on resuming a sweep.
        n_pert : int
            Perturbed predictions per image (``N_pert`` of eq. 3).
        image_ids : sequence of int, optional
            Stable ids of the images (:func:`cte_kit.types.image_id` of their names; default: of
            their pixels, :func:`cte_kit.types.content_name`), never their positions.
        names : sequence of str, optional
            For error messages.
        clean : sequence of Prediction, optional
            The clean predictions of these images, when the caller has them already (the runner
            scores several perturbations of one image): only the perturbed passes are run.
        prepared : sequence of (H, W) or (H, W, C) float32 arrays, optional
            These images as :meth:`prepare` returns them, when the caller has them already (the
            runner prepares a chunk once for all its settings): they are not normalised again.
        probability : bool
            False: the predictions that have instance labels come without their probability maps
            (:func:`without_probability`), which a large image never holds whole then; for callers that
            read only labels and the foreground (hard and instance consistency, not soft).

        Returns
        -------
        list of PredictionPair, one per image, in order
        """
        if n_pert < 1:
            raise ValueError(f"n_pert must be >= 1, got {n_pert}")
        arrays = list(prepared) if prepared is not None else self._prepare_all(images, names)
        if len(arrays) != len(images):
            raise ValueError(f"{len(arrays)} prepared images for {len(images)} images")
        ids = ([image_id(content_name(image)) for image in images] if image_ids is None
               else [int(i) for i in image_ids])
        if len(ids) != len(arrays):
            raise ValueError(f"{len(ids)} image ids for {len(arrays)} images")
        if clean is not None and len(clean) != len(arrays):
            raise ValueError(f"{len(clean)} clean predictions for {len(arrays)} images")
        if isinstance(perturbation, FeatureDropout) and not self.grey_box:
            self.feature_modules(perturbation.layers)  # raises NotGreyBoxError with advice
        if not isinstance(perturbation, (FeatureDropout, InputPerturbation)):
            raise InputTypeError(f"unknown perturbation {perturbation!r}")
        known: list[Prediction | None] = list(clean) if clean is not None else [None] * len(arrays)
        perturbed: list[list[Prediction]] = [[] for _ in arrays]
        for indices in self._batches(arrays):
            batch = [arrays[i] for i in indices]
            for draw in range(n_pert):
                seeds = [image_seed(seed, ids[i], draw) for i in indices]
                needs_clean = known[indices[0]] is None
                if isinstance(perturbation, FeatureDropout):
                    if needs_clean:
                        batch_clean, batch_perturbed = self._in_tiles(
                            lambda images, tile_seeds: self._predict_feature_pairs(images, perturbation, tile_seeds),
                            batch, seeds, probability)
                    else:
                        (batch_perturbed,) = self._in_tiles(
                            lambda images, tile_seeds: (self._predict_feature_perturbed(images, perturbation, tile_seeds),),
                            batch, seeds, probability)
                else:
                    shifted = [self.perturb_input(perturbation, array, s) for array, s in zip(batch, seeds)]
                    # Two calls of at most batch_size images, not one call of both halves: on a CPU a kit
                    # U-Net costs 16 % more per image at batch 8 than at 4 (its activations leave the
                    # caches), and the clean predictions are those of predict() bit for bit.
                    batch_clean = self._forward(batch, probability) if needs_clean else None
                    batch_perturbed = self._forward(shifted, probability)
                for position, index in enumerate(indices):
                    if needs_clean:
                        known[index] = batch_clean[position]
                    perturbed[index].append(batch_perturbed[position])
        return [PredictionPair(c, tuple(p)) for c, p in zip(known, perturbed)]  # type: ignore[arg-type]

    def _prepare_all(self, images: Sequence, names: Sequence[str] | None) -> list[np.ndarray | LazyImage]:
        if isinstance(images, np.ndarray) and images.ndim == 2:
            raise ValueError("pass a sequence of images, e.g. [image], not a single 2D array")
        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        return [self.prepare(image, name) for image, name in zip(images, names)]


def without_probability(prediction: Prediction, keep: bool = False) -> Prediction:
    """A prediction without its probability map where it has instance labels (unchanged if ``keep``).

    Its foreground is then its labels' (:func:`~cte_kit.scoring.consistency.prediction_foreground`), as it
    was; what needs the map (soft consistency, F1 of a map) must keep it.
    """
    return prediction if keep or prediction.labels is None else Prediction(labels=prediction.labels)


def _perturbed(perturbation: InputPerturbation, array, seed: int):
    """An input perturbation of a normalised image; of a :class:`~cte_kit.models.tiling.LazyImage`, tile by tile.

    A tile gets the strength drawn for its image and, for ``contrast``, the image's mean, so that
    deterministic perturbations (gamma, brightness, contrast) give every pixel what the whole image
    gives it; noise is drawn per tile, from the image's seed and the tile's position, so memory
    never holds a noise field of the whole image.
    """
    rng = np.random.default_rng(seed)
    if not isinstance(array, LazyImage):
        return perturbation.apply(array, rng)
    strength = perturbation.draw_strength(rng)
    mean = array.mean() if perturbation.kind == "contrast" else None

    def perturb(tile, index):
        position = [int(part.start or 0) for part in index[:2]]
        return perturbation.apply(tile, np.random.default_rng([seed, *position]), strength=strength, mean=mean)

    return array.perturbed(perturb)
