"""Label-free estimators: what a user can compute on an unlabelled target, besides CTE.

Pure functions first (one image or one sample in, one number out), then the estimators that
apply them to a model. Every score is oriented so that higher means "expected to transfer
better"; no function here takes a label, and pixel samples are drawn uniformly or on the
model's own predictions.

* :func:`pixel_entropy`, :func:`max_confidence` - how sure the model is;
* :func:`effective_invariance` - Deng et al. (2022) per pixel, over *all* pixels (CTE's EI keeps
  only the foreground union);
* :func:`tta_disagreement` - variance of the inverted predictions under flips and rotations;
* :func:`nuclear_norm_score` (NuNo, Deng et al. 2023), :func:`mano_score` (MaNo, Xie et al.
  2024), :func:`dispersion_score` (Xie et al. 2023);
* :class:`BankAgreement` - each model against the majority of the others (a leave-one-out pseudo
  ground truth; the consensus is :func:`cte_kit.estimators.guards.leave_one_out_consensus`, the guards' own).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .guards import foreground_agreement, leave_one_out_consensus, object_agreement
from ..models.base import ModelTraits, SegmentationModel
from ..perturb import parse_perturbation
from ..scoring.consistency import prediction_foreground
from .base import Estimator, EstimatorInput, EstimatorResult
from ..types import image_id, name_seed
from .sampling import default_feature_layer, features_at, pixel_probabilities, sample_pixels

__all__ = [
    "TTA_TRANSFORMS",
    "pixel_entropy",
    "max_confidence",
    "effective_invariance",
    "tta_disagreement",
    "nuclear_norm_score",
    "mano_score",
    "dispersion_score",
    "Entropy",
    "Confidence",
    "EffectiveInvariance",
    "TTADisagreement",
    "NuNo",
    "MaNo",
    "Dispersion",
    "BankAgreement",
]


def _probability(probability, name: str = "probability") -> np.ndarray:
    p = np.asarray(probability, dtype=np.float64)
    if p.size == 0 or not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise ValueError(f"{name} must be a non-empty array of finite values in [0, 1]")
    return p


# -- pure functions -----------------------------------------------------------------------------
def pixel_entropy(probability) -> float:
    """Mean binary entropy (nats) of a foreground probability map.

    Parameters
    ----------
    probability : (H, W) float array in [0, 1]

    Returns
    -------
    float
        In [0, ln 2]; 0 for a map of zeros and ones.
    """
    p = _probability(probability)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log(1 - p), 0.0))
    return float(terms.mean())


def max_confidence(probability) -> float:
    """Mean over pixels of the probability of the predicted class, ``max(p, 1 - p)``; in [0.5, 1]."""
    p = _probability(probability)
    return float(np.maximum(p, 1 - p).mean())


def effective_invariance(clean, perturbed, threshold: float = 0.5) -> float:
    """Effective Invariance over all pixels (Deng, Gould & Zheng 2022, per pixel).

    Per pixel ``sqrt(c * c')`` where both predictions pick the same class (foreground when
    ``p > threshold``) with confidences ``c, c'`` in that class, and 0 where they differ.

    Parameters
    ----------
    clean, perturbed : (H, W) float arrays in [0, 1]
        Foreground probabilities of one image, clean and perturbed.
    threshold : float

    Returns
    -------
    float in [0, 1]
    """
    p, q = _probability(clean, "clean"), _probability(perturbed, "perturbed")
    if p.shape != q.shape:
        raise ValueError(f"clean {p.shape} and perturbed {q.shape} differ in shape")
    fg_p, fg_q = p > threshold, q > threshold
    confidence = np.sqrt(np.where(fg_p, p, 1 - p) * np.where(fg_q, q, 1 - q))
    return float(np.where(fg_p == fg_q, confidence, 0.0).mean())


#: Test-time augmentations: (forward, inverse) on (H, W[, C]) arrays; flips and 90-degree rotations.
TTA_TRANSFORMS = {
    "flip_y": (lambda a: np.flip(a, 0), lambda a: np.flip(a, 0)),
    "flip_x": (lambda a: np.flip(a, 1), lambda a: np.flip(a, 1)),
    "rot90": (lambda a: np.rot90(a, 1, (0, 1)), lambda a: np.rot90(a, -1, (0, 1))),
    "rot180": (lambda a: np.rot90(a, 2, (0, 1)), lambda a: np.rot90(a, -2, (0, 1))),
    "rot270": (lambda a: np.rot90(a, 3, (0, 1)), lambda a: np.rot90(a, -3, (0, 1))),
}


def tta_disagreement(probabilities) -> float:
    """Mean over pixels of the variance across augmented predictions (already inverted).

    Parameters
    ----------
    probabilities : (n_views, H, W) float array in [0, 1]
        The clean prediction and the predictions of augmented images mapped back.

    Returns
    -------
    float in [0, 0.25]
    """
    stack = _probability(probabilities, "probabilities")
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"need (n_views >= 2, H, W) probabilities, got shape {stack.shape}")
    return float(stack.var(axis=0).mean())


def nuclear_norm_score(prediction_matrix) -> float:
    """NuNo: nuclear norm of an (N, C) prediction matrix over its maximum ``sqrt(N min(N, C))``.

    Parameters
    ----------
    prediction_matrix : (N, C) float array
        Class probabilities of N samples (rows sum to 1).

    Returns
    -------
    float in (0, 1]
        1 for confident predictions spread evenly over the classes.
    """
    matrix = np.asarray(prediction_matrix, dtype=np.float64)
    if matrix.ndim != 2 or 0 in matrix.shape:
        raise ValueError(f"prediction_matrix must be (N, C), got shape {matrix.shape}")
    n, c = matrix.shape
    return float(np.linalg.svd(matrix, compute_uv=False).sum() / np.sqrt(n * min(n, c)))


def mano_score(logits, norm: int = 4, eta: float = 5.0) -> float:
    """MaNo (Xie et al., NeurIPS 2024): scaled Lp norm of normalised logits.

    The normalisation is softmax when the mean KL divergence of the softmax from the uniform
    distribution exceeds ``eta`` (confident predictions), and otherwise the second-order Taylor
    approximation of ``exp`` (``1 + z + z^2 / 2``) normalised per row, which the paper prefers
    for poorly calibrated models.

    Parameters
    ----------
    logits : (N, C) float array
    norm : int
        ``p`` of the Lp norm (4 in the paper).
    eta : float

    Returns
    -------
    float in (0, 1]: ``||Phi(logits)||_p / (N C)^(1/p)``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or 0 in z.shape:
        raise ValueError(f"logits must be (N, C), got shape {z.shape}")
    n, c = z.shape
    shifted = z - z.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    divergence = float((-log_softmax.mean(axis=1) - np.log(c)).mean())
    if divergence > eta:
        phi = np.exp(log_softmax)
    else:
        taylor = np.maximum(1 + z + z**2 / 2, 0.0)
        phi = taylor / taylor.sum(axis=1, keepdims=True)
    return float((np.abs(phi) ** norm).sum() ** (1 / norm) / (n * c) ** (1 / norm))


def dispersion_score(features, pseudo_labels) -> float:
    """Dispersion (Xie et al. 2023): ``log(sum_k n_k ||mu_k - mu||^2 / (K - 1))``.

    Parameters
    ----------
    features : (N, D) float array
    pseudo_labels : (N,) int array
        The model's own predicted class per sample.

    Returns
    -------
    float
        NaN when fewer than two classes are predicted.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(pseudo_labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise ValueError(f"need (N, D) features and (N,) pseudo labels; got {x.shape} and {y.shape}")
    classes = np.unique(y)
    if classes.size < 2:
        return float("nan")
    centre = x.mean(axis=0)
    spread = sum(np.count_nonzero(y == k) * np.sum((x[y == k].mean(axis=0) - centre) ** 2) for k in classes)
    return float(np.log(spread / (classes.size - 1) + 1e-12))


# -- estimators ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Entropy(Estimator):
    """Negative mean pixel entropy of the clean prediction."""

    name = "entropy"
    description = "negative mean pixel entropy: how sure the model is (label-free)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        return self.result(model, [-pixel_entropy(p.probability) for p in data.clean(model)])


@dataclass(frozen=True)
class Confidence(Estimator):
    """Mean max-probability confidence of the clean prediction."""

    name = "confidence"
    description = "mean probability of the predicted class (label-free)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        return self.result(model, [max_confidence(p.probability) for p in data.clean(model)])


@dataclass(frozen=True)
class EffectiveInvariance(Estimator):
    """Effective Invariance over all pixels under one perturbation (CTE's EI without its
    foreground restriction)."""

    perturbation: str = "dropout:0.2"
    seed: int = 0
    name = "ei_all"
    description = "Effective Invariance over all pixels, no foreground restriction (label-free)"

    def not_applicable(self, model: SegmentationModel | ModelTraits) -> str | None:
        if self.perturbation.startswith("dropout") and not model.grey_box:
            return f"{model.name} is a black box: no feature dropout"
        return None

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        pairs = model.predict_pairs(data.images, parse_perturbation(self.perturbation), seed=self.seed,
                                    image_ids=[image_id(name) for name in data.names], names=data.names,
                                    clean=data.predictions)
        return self.result(model, [
            np.mean([effective_invariance(pair.clean.probability, q.probability, model.threshold) for q in pair.perturbed])
            for pair in pairs
        ])


@dataclass(frozen=True)
class TTADisagreement(Estimator):
    """Negative mean pixel variance over the clean prediction and five flipped or rotated views."""

    name = "tta"
    description = "negative disagreement of flipped and rotated predictions (label-free)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        clean = data.clean(model)
        views = [[p.probability] for p in clean]
        for forward, inverse in TTA_TRANSFORMS.values():
            shifted = [np.ascontiguousarray(forward(np.asarray(image))) for image in data.images]
            for index, prediction in enumerate(model.predict(shifted, data.names)):
                views[index].append(np.ascontiguousarray(inverse(prediction.probability)))
        return self.result(model, [-tta_disagreement(np.stack(stack)) for stack in views])


def _uniform_sample(probability: np.ndarray, n: int, key: str, name: str) -> np.ndarray:
    ys, xs = sample_pixels(probability.shape, n, name_seed(key, name))
    return probability[ys, xs]


@dataclass(frozen=True)
class NuNo(Estimator):
    """NuNo on a uniform pixel sample of each image."""

    n_pixels: int = 2000
    name = "nuno"
    description = "normalised nuclear norm of the pixel prediction matrix (label-free)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        return self.result(model, [
            nuclear_norm_score(pixel_probabilities(_uniform_sample(p.probability, self.n_pixels, self.key, name)))
            for p, name in zip(data.clean(model), data.names)
        ])


@dataclass(frozen=True)
class MaNo(Estimator):
    """MaNo on a uniform pixel sample; the two-class logits of a foreground probability ``p``
    are taken symmetric, ``(-z/2, z/2)`` with ``z = logit(p)`` (they give back ``p`` under softmax)."""

    n_pixels: int = 2000
    norm: int = 4
    name = "mano"
    description = "scaled L4 norm of normalised pixel logits (label-free)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        scores = []
        for prediction, name in zip(data.clean(model), data.names):
            two_class = pixel_probabilities(_uniform_sample(prediction.probability, self.n_pixels, self.key, name))
            z = np.log(two_class[:, 1] / two_class[:, 0])
            scores.append(mano_score(np.stack([-z / 2, z / 2], axis=1), self.norm))
        return self.result(model, scores)


@dataclass(frozen=True)
class Dispersion(Estimator):
    """Dispersion score of a layer's features under the model's own thresholded prediction."""

    n_pixels: int = 1000
    layer: str = "default"
    name = "dispersion"
    reads = "features"
    description = "spread of feature clusters under the model's own prediction (label-free, grey box)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        layer = default_feature_layer(model) if self.layer == "default" else self.layer
        features = model.layer_features(data.images, layer, data.names)
        scores = []
        for feature, prediction, name in zip(features, data.clean(model), data.names):
            ys, xs = sample_pixels(prediction.probability.shape, self.n_pixels, name_seed(self.key, name))
            pseudo = (prediction.probability[ys, xs] > model.threshold).astype(np.int64)
            scores.append(dispersion_score(features_at(feature, prediction.probability.shape, ys, xs), pseudo))
        return self.result(model, scores)


@dataclass(frozen=True)
class BankAgreement(Estimator):
    """Each model against the leave-one-out majority of the others: foreground IoU
    (``level='semantic'``) or object F1 at IoU 0.5 against the consensus components
    (``level='instance'``)."""

    level: str = "semantic"
    name = "agreement"
    scope = "bank"
    description = "agreement with the majority of the other models of the bank (label-free, needs a bank)"

    def __post_init__(self):
        if self.level not in ("semantic", "instance"):
            raise ValueError(f"level must be 'semantic' or 'instance', got {self.level!r}")

    @property
    def reads(self) -> str:  # type: ignore[override]
        return "instances" if self.level == "instance" else "output"

    def score_bank(self, models: Sequence[SegmentationModel], data: Sequence[EstimatorInput]) -> list[EstimatorResult]:
        kept = [[(prediction_foreground(p) > model.threshold, p.labels) for p in item.clean(model)]
                for model, item in zip(models, data)]
        return self.score_kept([model.name for model in models], kept)

    def score_kept(self, models: Sequence[str], kept: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> list[EstimatorResult]:
        if len(models) < 3:
            raise ValueError(f"bank agreement needs at least 3 models (a majority of the others), got {len(models)}")
        n_images = len(kept[0])
        per_image = np.full((len(models), n_images), np.nan)
        for index in range(n_images):
            masks = np.stack([np.asarray(pairs[index][0], dtype=bool) for pairs in kept])
            consensus = leave_one_out_consensus(masks)
            for k, pairs in enumerate(kept):
                if self.level == "semantic":
                    per_image[k, index] = foreground_agreement(consensus[k], masks[k])
                else:
                    per_image[k, index] = object_agreement(consensus[k], pairs[index][1])
        return [self.result(model, row) for model, row in zip(models, per_image)]
