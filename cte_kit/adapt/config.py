"""Every setting of SelfAdapt-style adaptation in one place.

The SelfAdapt paper fixes the recipe - EMA teacher, flip/rotation pseudo-labels, confidence
masking at a moving 80th percentile, strongly augmented student, MSE + BCE, L2-SP, AdamW with
warm-up and cosine decay, two label-free stopping criteria - but its text omits most numbers. The
values below are this kit's choices for its small U-Nets and CPnets on 2 CPU cores;
``benchmarks/bench_adapt.py`` shows what changing the EMA decay, the L2-SP weight and the
stopping thresholds does. The stopping criteria are recorded for every run; the checkpoint the
kit keeps is chosen afterwards by ranking every checkpoint with the kit's estimator
(:mod:`cte_kit.runs.checkpoints`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AdaptConfig", "CRITERIA"]

#: The label-free stopping rules of the SelfAdapt paper: false-negative rate against the initial
#: model, and the relative distance of the bottleneck embeddings to the initial ones.
CRITERIA = ("fn_rate", "embedding")


@dataclass(frozen=True)
class AdaptConfig:
    """How to adapt a model to unlabelled target images.

    Attributes
    ----------
    steps : int
        Student optimiser steps.
    batch_size : int
        Patches per step.
    patch_size : int
        Side of the square patches cut at random from the target images (rounded down to the
        network's divisor).
    learning_rate : float
        Peak AdamW learning rate (CRank's mean-teacher recipe uses 1e-4 for larger networks;
        the kit's small networks need a larger step to move within a few hundred steps).
    weight_decay : float
        AdamW's decoupled weight decay (the paper's 0.001).
    warmup : float
        Fraction of ``steps`` of linear warm-up before the cosine decay to zero.
    ema_decay : float
        Teacher = ``ema_decay * teacher + (1 - ema_decay) * student`` after each step (omitted
        by the paper; 0.99 lets a teacher follow a run of a few hundred steps).
    l2sp : float
        Weight ``alpha`` of the L2-SP term ``alpha / 2 * ||w - w0||^2`` (sum over parameters)
        pulling the student towards the pre-trained weights ``w0``; 0 switches it off.
    regression_weight : float
        ``lambda`` of the loss ``BCE(classification) + lambda * MSE(regression)`` (the paper's
        balancing weight; only Cellpose flows are regression targets).
    percentile : float
        Pixels whose teacher uncertainty is above the moving average of this percentile are
        masked out of the loss (the paper's 80).
    threshold_momentum : float
        Momentum of that moving average.
    noise : float
        Largest standard deviation of the student's Gaussian noise (normalised intensities).
    blur : float
        Largest Gaussian blur sigma of the student's views (pixels).
    contrast : (float, float)
        Range of the student's contrast factor.
    brightness : float
        Largest intensity shift of the student's views.
    eval_every : int
        Steps between evaluations of the stopping signals; a checkpoint is kept at each.
    n_eval : int
        Target images (the first ones, in name order) on which the stopping signals are measured.
    fn_threshold : float
        The FN-rate stopping rule picks the last checkpoint whose false-negative rate against the
        initial model is at most this (omitted by the paper).
    embedding_threshold : float
        The embedding stopping rule picks the last checkpoint whose bottleneck embeddings moved
        at most this far from the initial ones, relative to their norm (omitted by the paper).
    match_iou : float
        IoU at which an object of the initial model counts as still found.
    seed : int
        Seeds patch sampling, augmentations and dropout.
    """

    steps: int = 200
    batch_size: int = 4
    patch_size: int = 96
    learning_rate: float = 5e-4
    weight_decay: float = 1e-3
    warmup: float = 0.1
    ema_decay: float = 0.99
    l2sp: float = 0.1
    regression_weight: float = 1.0
    percentile: float = 80.0
    threshold_momentum: float = 0.9
    noise: float = 0.1
    blur: float = 1.5
    contrast: tuple[float, float] = (0.6, 1.4)
    brightness: float = 0.2
    eval_every: int = 20
    n_eval: int = 8
    fn_threshold: float = 0.1
    embedding_threshold: float = 0.15
    match_iou: float = 0.5
    seed: int = 0

    def __post_init__(self):
        positive = {"steps": self.steps, "batch_size": self.batch_size, "patch_size": self.patch_size,
                    "learning_rate": self.learning_rate, "eval_every": self.eval_every, "n_eval": self.n_eval}
        bad = {name: value for name, value in positive.items() if not value > 0}
        if bad:
            raise ValueError(f"adaptation settings must be > 0: {bad}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must be a fraction in [0, 1), got {self.warmup}")
        if self.l2sp < 0 or self.regression_weight < 0 or self.weight_decay < 0:
            raise ValueError("l2sp, regression_weight and weight_decay must be >= 0")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {self.percentile}")
