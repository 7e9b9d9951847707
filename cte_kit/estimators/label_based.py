"""Label-based estimators: what a user with a few labelled target images (or the source data) could use.

Pure functions on sampled pixels first, then the estimators:

* :func:`otce_score` / :class:`OTCE` - Tan, Li & Huang, OTCE for semantic segmentation (seed 002):
  N sampled pixels per side, K repetitions, squared Euclidean cost, entropic Sinkhorn
  (epsilon 0.1) or exact EMD through POT, score = the negative conditional entropy -H(Y_t | Y_s).
  Needs source images and labels and target labels.
* :func:`leep_score` / :class:`LEEP` - Nguyen et al. (2020) on sampled pixels, from the model's
  two-class output; needs target labels.
* :func:`logme_score` / :class:`LogME` - You et al. (2021), evidence of a Bayesian linear model
  on a layer's features; needs target labels.
* :func:`ccfv_score` / :class:`CCFV` - Yang et al. (MICCAI 2023), class consistency and feature
  variety; needs target labels.
* :func:`grtd_score`, :func:`lbtc_score`, :func:`topology_fusion` / :class:`Topology` - Tang et
  al., "The Geometry of Transfer" (seed 003); needs target labels.

Labels are binarised (foreground = label > 0): the bank's tasks are foreground segmentation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.linalg import sqrtm
from skimage.segmentation import find_boundaries

from ..models.base import SegmentationModel
from .base import Estimator, EstimatorInput, EstimatorResult
from ..types import CTEKitWarning, name_seed
from .sampling import default_feature_layer, pixel_probabilities, sample_pixels, sampled_features

__all__ = [
    "SinkhornWarning",
    "transport_plan",
    "conditional_entropy",
    "otce_score",
    "leep_score",
    "logme_score",
    "frechet_distance",
    "ccfv_score",
    "minimum_spanning_tree",
    "cross_label_edge_ratio",
    "grtd_score",
    "lbtc_score",
    "topology_fusion",
    "OTCE",
    "LEEP",
    "LogME",
    "CCFV",
    "Topology",
]


def _features_labels(features, labels, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise ValueError(f"{name}: need (N >= 1, D) features and (N,) labels; got {x.shape} and {y.shape}")
    return x, y


# -- OTCE -------------------------------------------------------------------------------------------
class SinkhornWarning(CTEKitWarning):
    """Sinkhorn stopped before its transport plan met the marginals: the plan, and OTCE, are approximate."""


def transport_plan(source_features, target_features, solver: str = "sinkhorn", epsilon: float = 0.1,
                   max_iter: int = 1000) -> np.ndarray:
    """Optimal coupling of two uniformly weighted point clouds under the squared Euclidean cost.

    Parameters
    ----------
    source_features : (n, D) float array
    target_features : (m, D) float array
    solver : {'sinkhorn', 'emd'}
        Entropic Sinkhorn in the log domain (``ot.sinkhorn(..., method='sinkhorn_log')``) or
        the exact network-simplex solver (``ot.emd``).
    epsilon : float
        Entropic regularisation of Sinkhorn (0.1 in the paper).
    max_iter : int
        Sinkhorn iterations at most (it stops earlier once the marginals are met to 1e-4).

    Returns
    -------
    (n, m) float64 ndarray
        Sums to 1; rows to ``1/n``, columns to ``1/m``.
    """
    import ot

    xs = np.asarray(source_features, dtype=np.float64)
    xt = np.asarray(target_features, dtype=np.float64)
    if xs.ndim != 2 or xt.ndim != 2 or xs.shape[1] != xt.shape[1] or 0 in xs.shape or 0 in xt.shape:
        raise ValueError(f"need (n, D) and (m, D) features with the same D; got {xs.shape} and {xt.shape}")
    cost = ot.dist(xs, xt, metric="sqeuclidean")
    a, b = np.full(len(xs), 1.0 / len(xs)), np.full(len(xt), 1.0 / len(xt))
    if solver == "emd":
        return ot.emd(a, b, cost, numItermax=max(max_iter, 100000))
    if solver == "sinkhorn":
        if epsilon <= 0:
            raise ValueError(f"epsilon must be > 0, got {epsilon}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = ot.sinkhorn(a, b, cost, reg=epsilon, method="sinkhorn_log", numItermax=max_iter, stopThr=1e-4)
        if any("converge" in str(w.message) for w in caught):
            warnings.warn(f"Sinkhorn stopped after {max_iter} iterations before meeting the marginals to 1e-4; the "
                          "transport plan is approximate (raise max_iter or epsilon, or use solver='emd').",
                          SinkhornWarning, stacklevel=2)
        return plan
    raise ValueError(f"unknown solver {solver!r}; choose 'sinkhorn' or 'emd'")


def conditional_entropy(plan, source_labels, target_labels) -> float:
    """``H(Y_t | Y_s)`` of the joint label distribution a coupling induces (OTCE's W_T).

    Parameters
    ----------
    plan : (n, m) float array
        A coupling (sums to 1).
    source_labels : (n,) int array
    target_labels : (m,) int array

    Returns
    -------
    float >= 0 (nats)
    """
    plan = np.asarray(plan, dtype=np.float64)
    ys, yt = np.asarray(source_labels), np.asarray(target_labels)
    if plan.shape != (ys.size, yt.size):
        raise ValueError(f"plan {plan.shape} does not fit {ys.size} source and {yt.size} target labels")
    joint = np.array([[plan[np.ix_(ys == a, yt == b)].sum() for b in np.unique(yt)] for a in np.unique(ys)])
    marginal = joint.sum(axis=1, keepdims=True)
    positive = joint > 0
    return float(-(joint[positive] * np.log((joint / np.maximum(marginal, 1e-300))[positive])).sum())


def otce_score(source_features, source_labels, target_features, target_labels, solver: str = "sinkhorn",
               epsilon: float = 0.1) -> float:
    """OTCE (the simplified, recommended form): ``-H(Y_t | Y_s)`` under the optimal coupling.

    Parameters
    ----------
    source_features : (n, D), source_labels : (n,)
    target_features : (m, D), target_labels : (m,)
    solver, epsilon
        As :func:`transport_plan`.

    Returns
    -------
    float <= 0; higher = more transferable.
    """
    xs, ys = _features_labels(source_features, source_labels, "source")
    xt, yt = _features_labels(target_features, target_labels, "target")
    return -conditional_entropy(transport_plan(xs, xt, solver, epsilon), ys, yt)


# -- LEEP -------------------------------------------------------------------------------------------
def leep_score(labels, source_probabilities) -> float:
    """LEEP: mean log-likelihood of the labels under the empirical predictor ``P(y | z)``.

    Parameters
    ----------
    labels : (N,) int array
        Target labels of the samples (truth first).
    source_probabilities : (N, Z) float array
        The source model's class probabilities of the same samples (rows sum to 1).

    Returns
    -------
    float <= 0
    """
    theta, y = _features_labels(source_probabilities, labels, "leep")
    classes = np.unique(y)
    joint = np.stack([theta[y == c].sum(axis=0) for c in classes]) / len(y)  # (Y, Z)
    conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-300)  # P(y | z)
    index = np.searchsorted(classes, y)
    return float(np.mean(np.log(np.maximum((theta * conditional[index]).sum(axis=1), 1e-300))))


# -- LogME ------------------------------------------------------------------------------------------
def _logme_evidence(sigma: np.ndarray, projected: np.ndarray, residual: float, n: int, d: int,
                    max_iter: int = 100, tol: float = 1e-3) -> float:
    alpha, beta = 1.0, 1.0
    x2 = projected**2
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
        res2 = float((x2 / (1 + sigma / t) ** 2).sum()) + residual
        new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
        converged = abs(new_alpha / new_beta - t) / t < tol
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


def logme_score(labels, features) -> float:
    """LogME: mean over classes of the maximised log evidence of a linear model on the features.

    The evidence of each one-hot target column is maximised over the prior and noise
    precisions by the fixed-point iteration of You et al. (2021), on the SVD of the features.

    Parameters
    ----------
    labels : (N,) int array
    features : (N, D) float array

    Returns
    -------
    float; higher = labels are more linearly predictable from the features.
    """
    x, y = _features_labels(features, labels, "logme")
    n, d = x.shape
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    sigma = np.zeros(d)
    sigma[: s.size] = s**2
    evidences = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        projected = np.zeros(d)
        projected[: s.size] = u.T @ target
        residual = float(target @ target - (projected**2).sum())
        evidences.append(_logme_evidence(sigma, projected, max(residual, 0.0), n, d))
    return float(np.mean(evidences))


# -- CCFV -------------------------------------------------------------------------------------------
def frechet_distance(x, y, ridge: float = 1e-6) -> float:
    """2-Wasserstein distance between Gaussians fitted to two samples.

    Parameters
    ----------
    x : (n, D), y : (m, D) float arrays (n, m >= 2)
    ridge : float
        Added to the covariance diagonals (as the Kreshuk-lab port), so few samples stay defined.

    Returns
    -------
    float >= 0
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or len(x) < 2 or len(y) < 2:
        raise ValueError(f"need (n >= 2, D) and (m >= 2, D) samples with the same D; got {x.shape} and {y.shape}")
    eye = ridge * np.eye(x.shape[1])
    cov_x, cov_y = np.cov(x, rowvar=False) + eye, np.cov(y, rowvar=False) + eye
    cross = np.real(sqrtm(cov_x @ cov_y))
    value = np.sum((x.mean(axis=0) - y.mean(axis=0)) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(cross)
    return float(np.sqrt(abs(value)))


def ccfv_score(image_features: Sequence[np.ndarray], image_labels: Sequence[np.ndarray]) -> float:
    """CCFV of one layer: ``log(V / W)`` (Yang et al., MICCAI 2023, as the paper writes it).

    ``V`` (feature variety) is the mean over image pairs of ``1 / sqrt(||g_k - g_l||^2 + 1e-3)``
    with ``g_k`` the mean of image k's sampled features; ``W`` (class consistency) is the mean
    over foreground classes and image pairs of the Fréchet distance of that class's features.

    The official code differs: after each class it *adds* the normalised sum to the running
    sum (``w += w / (n^2 / 2) / num_classes``) instead of replacing it, and sums (3D code) or
    averages (Kreshuk-lab 2D port) over layers. Here W is the plain mean, as in the paper.

    Parameters
    ----------
    image_features : sequence of (n_k, D) float arrays
        Sampled features of each image (at least two images).
    image_labels : sequence of (n_k,) int arrays
        Their classes (0 = background).

    Returns
    -------
    float; NaN when no foreground class has two samples in two images.
    """
    if len(image_features) < 2 or len(image_features) != len(image_labels):
        raise ValueError("CCFV needs features and labels of at least two images")
    centres = np.stack([np.asarray(f, dtype=np.float64).mean(axis=0) for f in image_features])
    upper = np.triu_indices(len(centres), k=1)
    gaps = np.sum((centres[:, None] - centres[None]) ** 2, axis=-1)[upper]
    variety = float(np.mean(1.0 / np.sqrt(gaps + 1e-3)))
    classes = sorted({int(c) for labels in image_labels for c in np.unique(labels)} - {0})
    distances = []
    for c in classes:
        samples = [np.asarray(f)[np.asarray(l) == c] for f, l in zip(image_features, image_labels)]
        samples = [s for s in samples if len(s) >= 2]
        distances += [frechet_distance(samples[i], samples[j]) for i in range(len(samples)) for j in range(i + 1, len(samples))]
    if not distances:
        return float("nan")
    return float(np.log(variety / max(np.mean(distances), 1e-12)))


# -- topology (seed 003) ----------------------------------------------------------------------------
def minimum_spanning_tree(points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Euclidean minimum spanning tree of a point cloud (Prim's algorithm on the dense graph).

    Parameters
    ----------
    points : (n, D) float array (n >= 1)

    Returns
    -------
    parents, children : (n - 1,) int64 ndarray
        Edge end points.
    lengths : (n - 1,) float64 ndarray
        Euclidean edge lengths.
    """
    x = np.asarray(points, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"points must be (n >= 1, D), got shape {x.shape}")
    n = len(x)
    squared = np.sum(x**2, axis=1)
    in_tree = np.zeros(n, dtype=bool)
    in_tree[0] = True
    best = np.maximum(squared + squared[0] - 2 * x @ x[0], 0.0)
    nearest = np.zeros(n, dtype=np.int64)
    parents, children, lengths = [], [], []
    for _ in range(n - 1):
        candidate = np.where(in_tree, np.inf, best)
        child = int(np.argmin(candidate))
        parents.append(int(nearest[child]))
        children.append(child)
        lengths.append(float(np.sqrt(candidate[child])))
        in_tree[child] = True
        distance = np.maximum(squared + squared[child] - 2 * x @ x[child], 0.0)
        closer = distance < best
        best = np.where(closer, distance, best)
        nearest = np.where(closer, child, nearest)
    return np.array(parents, np.int64), np.array(children, np.int64), np.array(lengths)


def cross_label_edge_ratio(points, labels) -> float:
    """Fraction of minimum-spanning-tree edges joining different labels, over its expectation
    under a random relabelling, ``1 - sum_c n_c (n_c - 1) / (n (n - 1))``.

    0 when each label's points form one subtree (the feature manifold follows the labels); about
    1 when labels are scattered on the tree as if at random. NaN with fewer than two labels.
    """
    x, y = _features_labels(points, labels, "topology")
    _, counts = np.unique(y, return_counts=True)
    n = len(y)
    if counts.size < 2 or n < 2:
        return float("nan")
    parents, children, _ = minimum_spanning_tree(x)
    expected = 1.0 - float(np.sum(counts * (counts - 1))) / (n * (n - 1))
    return float(np.mean(y[parents] != y[children]) / expected)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-8)


def grtd_score(features, labels) -> float:
    """GRTD as a score: ``1 - cross_label_edge_ratio`` of class-stratified samples of all pixels,
    on features standardised per channel (so models with different feature scales compare)."""
    return 1.0 - cross_label_edge_ratio(_standardise(np.asarray(features, dtype=np.float64)), labels)


def lbtc_score(features, labels) -> float:
    """LBTC as a score: ``1 - cross_label_edge_ratio`` of samples from the label-boundary band."""
    return grtd_score(features, labels)


def topology_fusion(grtd: float, lbtc: float, n_classes: int) -> float:
    """Task-adaptive fusion ``a GRTD + (1 - a) LBTC`` with ``a = 1 - 1 / n_classes``.

    ``n_classes`` counts background. With many classes the global arrangement of class
    manifolds carries most of the task; with two (foreground segmentation) boundaries matter
    as much as the global structure, so both get weight 1/2.
    """
    if n_classes < 2:
        raise ValueError(f"n_classes must be >= 2, got {n_classes}")
    weight = 1.0 - 1.0 / n_classes
    return float(weight * grtd + (1 - weight) * lbtc)


# -- estimators -------------------------------------------------------------------------------------
def _binary(labels: np.ndarray) -> np.ndarray:
    return (np.asarray(labels) > 0).astype(np.int64)


def _layer(model: SegmentationModel, layer: str) -> str:
    return default_feature_layer(model) if layer == "default" else layer


def _label_sample(model, images, names, labels, layer, n_per_image, key, masks=None, features=None):
    vectors, owners, flats = sampled_features(model, images, names, layer, n_per_image, key, masks, features)
    values = np.array([_binary(labels[i]).ravel()[f] for i, f in zip(owners, flats)], dtype=np.int64)
    return vectors, values


@dataclass(frozen=True)
class OTCE(Estimator):
    """OTCE for segmentation (seed 002) on a layer's features of source and target pixels.

    ``n_pixels`` pixels are sampled uniformly from each side's pooled images (the paper: 10^4;
    the kit defaults to 500 so a CPU solves each problem in about a second) and the score is averaged
    over ``repeats`` draws (the paper: K = 10; default 3). The layer defaults to the last
    decoder output (the official code uses the final class map, which for a one-channel model
    is a single number per pixel).
    """

    n_pixels: int = 500
    repeats: int = 3
    solver: str = "sinkhorn"
    epsilon: float = 0.1
    layer: str = "default"
    name = "otce"
    needs = frozenset({"labels", "source"})
    reads = "features"
    uses_predictions = False
    description = "negative conditional entropy of labels under optimal transport from source (target labels + source data)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        labels, source = data.require("labels", self.name), data.require("source", self.name)
        layer = _layer(model, self.layer)
        target_maps = model.layer_features(data.images, layer, data.names)
        source_maps = model.layer_features(source.images, layer, source.names)
        values = []
        # one warning per model that says in how many draws Sinkhorn stopped early, not one per draw
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SinkhornWarning)
            for repeat in range(self.repeats):
                key = f"{self.key}#{repeat}"
                per_target = -(-self.n_pixels // len(data.images))
                per_source = -(-self.n_pixels // len(source.images))
                xt, yt = _label_sample(model, data.images, data.names, labels, layer, per_target, key, features=target_maps)
                xs, ys = _label_sample(model, source.images, source.names, source.labels, layer, per_source, key,
                                       features=source_maps)
                values.append(otce_score(xs, ys, xt, yt, self.solver, self.epsilon))
        early = sum(issubclass(w.category, SinkhornWarning) for w in caught)
        for other in (w for w in caught if not issubclass(w.category, SinkhornWarning)):
            warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
        if early:
            warnings.warn(f"OTCE of {model.name!r}: Sinkhorn stopped before meeting the marginals in {early} of "
                          f"{self.repeats} draw(s); the score is approximate (raise epsilon, or use solver='emd').",
                          SinkhornWarning, stacklevel=2)
        return self.result(model, np.full(len(data.images), np.nan), float(np.mean(values)))


@dataclass(frozen=True)
class LEEP(Estimator):
    """Pixel-sampled LEEP from the model's two-class output (foreground probability)."""

    n_pixels: int = 2000
    name = "leep"
    needs = frozenset({"labels"})
    description = "log expected empirical prediction of target labels from the model's output (target labels)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        labels = data.require("labels", self.name)
        theta, truth = [], []
        for prediction, label, name in zip(data.clean(model), labels, data.names):
            ys, xs = sample_pixels(prediction.probability.shape, self.n_pixels, name_seed(self.key, name))
            theta.append(pixel_probabilities(prediction.probability[ys, xs]))
            truth.append(_binary(label)[ys, xs])
        per_image = [leep_score(t, p) for t, p in zip(truth, theta)]
        return self.result(model, per_image, leep_score(np.concatenate(truth), np.concatenate(theta)))


@dataclass(frozen=True)
class LogME(Estimator):
    """LogME of a layer's features of uniformly sampled target pixels against their labels."""

    n_pixels: int = 2000
    layer: str = "default"
    name = "logme"
    needs = frozenset({"labels"})
    reads = "features"
    uses_predictions = False
    description = "evidence of a linear model from features to target labels (target labels)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        labels = data.require("labels", self.name)
        per_image = -(-self.n_pixels // len(data.images))
        x, y = _label_sample(model, data.images, data.names, labels, _layer(model, self.layer), per_image, self.key)
        return self.result(model, np.full(len(data.images), np.nan), logme_score(y, x))


@dataclass(frozen=True)
class CCFV(Estimator):
    """CCFV on class-stratified samples (up to ``n_per_class`` pixels per class and image) of
    each of ``layers`` (default: every decoder output), averaged over layers."""

    n_per_class: int = 100
    layers: str = "decoders"
    name = "ccfv"
    needs = frozenset({"labels"})
    reads = "features"
    uses_predictions = False
    description = "feature variety over class consistency across target images (target labels)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        labels = data.require("labels", self.name)
        values = []
        for layer in model.check_layers([self.layers]):
            maps = model.layer_features(data.images, layer, data.names)
            features, classes = [], []
            for index, (image, name) in enumerate(zip(data.images, data.names)):
                binary = _binary(labels[index])
                vectors, values_k = [], []
                for c in (0, 1):
                    x, _, flat = sampled_features(model, [image], [name], layer, self.n_per_class, f"{self.key}/{layer}/{c}",
                                                  [binary == c], [maps[index]])
                    vectors.append(x.reshape(len(flat), -1) if len(flat) else np.zeros((0, maps[index].shape[0])))
                    values_k.append(np.full(len(flat), c))
                features.append(np.concatenate(vectors))
                classes.append(np.concatenate(values_k))
            values.append(ccfv_score(features, classes))
        return self.result(model, np.full(len(data.images), np.nan), float(np.nanmean(values)) if np.isfinite(values).any() else np.nan)


@dataclass(frozen=True)
class Topology(Estimator):
    """Topology-driven estimator of Tang et al. (seed 003), implemented from the text (no public code).

    Choices the text leaves open, with the reason:

    * **Samples.** GRTD: ``n_pixels`` pixels per image stratified by class (half foreground, half
      background where available), as the paper's "stratified sampling" - uniform sampling
      would leave the few foreground pixels of sparse nuclei images nearly unseen. LBTC:
      ``n_pixels`` pixels per image uniformly from a band of ``band`` pixels on both sides of
      the label boundaries (the "critical boundaries" of the text).
    * **Features.** One layer (default: the last decoder output, the features the segmentation
      head reads), standardised per channel over the pooled sample, so that a model whose
      features merely have a larger scale does not look different.
    * **Divergence.** "Feature-label structural isomorphism" is measured on the Euclidean
      minimum spanning tree of the sampled features: the fraction of its edges that join
      different labels, divided by its expectation under randomly permuted labels. A tree
      whose label classes each form one subtree has ratio 0 (GRTD score 1); labels scattered on
      the tree as at random give about 1 (score about 0). The same statistic restricted to the
      boundary band is LBTC: how separable the two sides of a boundary are in feature space.
    * **Fusion.** ``a GRTD + (1 - a) LBTC`` with ``a = 1 - 1 / n_classes`` (background counted):
      the text gates on the "semantic cardinality" of the task; for two classes both parts
      weigh 1/2 (see :func:`topology_fusion`).
    """

    n_pixels: int = 64
    band: int = 2
    layer: str = "default"
    name = "topology"
    needs = frozenset({"labels"})
    reads = "features"
    uses_predictions = False
    description = "minimum-spanning-tree agreement of features with labels, global and at boundaries (target labels)"

    def score(self, model: SegmentationModel, data: EstimatorInput) -> EstimatorResult:
        labels = data.require("labels", self.name)
        layer = _layer(model, self.layer)
        maps = model.layer_features(data.images, layer, data.names)
        binaries = [_binary(label) for label in labels]
        half = max(1, self.n_pixels // 2)
        parts = [_label_sample(model, data.images, data.names, binaries, layer, half, f"{self.key}/{c}",
                               [b == c for b in binaries], maps) for c in (0, 1)]
        x_global = np.concatenate([p[0] for p in parts if len(p[0])])
        y_global = np.concatenate([p[1] for p in parts if len(p[1])])
        bands = [find_boundaries(label, mode="thick") for label in labels]
        if self.band > 1:
            from scipy.ndimage import binary_dilation

            bands = [binary_dilation(b, iterations=self.band - 1) for b in bands]
        x_band, y_band = _label_sample(model, data.images, data.names, binaries, layer, self.n_pixels,
                                       f"{self.key}/band", bands, maps)
        grtd = grtd_score(x_global, y_global)
        lbtc = lbtc_score(x_band, y_band) if len(y_band) else float("nan")
        n_classes = max(2, int(np.unique(y_global).size))
        return self.result(model, np.full(len(data.images), np.nan), topology_fusion(grtd, lbtc, n_classes))
