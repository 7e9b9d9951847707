"""Label-free guards: is a model's output degenerate, or far from the rest of the bank?

Consistency can be high for a model that is plainly wrong: a model that marks almost the whole
image as foreground (an H&E model on fluorescence inverts the contrast) or nothing at all is
very stable under perturbation, so CTE alone can rank it first. The guards look at the clean
predictions the estimator already makes, never at a label:

* the **foreground fraction** of every image, against the bank's consensus on the same image
  (the median over models, where at least half of them lie near it: a bank split into camps has
  no consensus to hold either camp to);
* **objects per image** and the **median object size**, against the consensus;
* the **spread of object sizes**: objects of one kind differ in area by a modest factor, so a
  model whose larger objects are many times its smaller ones (area-weighted) merges touching
  objects into clumps - a failure consistency cannot see (a clump stays a clump when the image is
  perturbed) and the bank's object count can miss (nuclei and cells);
* **agreement with the other models**: each model's foreground against the majority vote of
  the *other* models (IoU), and its objects against the connected components of that vote
  (object F1 at IoU 0.5) - a leave-one-out pseudo ground truth in which a model is never
  compared with itself.

A model whose output is degenerate whatever the bank says (almost all foreground, nothing on
most images, or most of the image as one region) is flagged first and left out of the consensus,
so that a bank that fails the same way cannot outvote the one model that works; the others are then compared with
the consensus of these plausible models. A model whose output is degenerate or an outlier gets
a :class:`Flag` with a reason in plain words. Flags of scope ``'all'`` concern the foreground (every consistency); flags of scope
``'instance'`` concern the objects only (instance consistency and mAP). The thresholds live in
:class:`GuardConfig`.

The absolute checks read the task (:class:`GuardConfig`, one per task in
:mod:`cte_kit.estimators.tasks`): dense tissue is all foreground and only "objects the size of the
image" is degenerate there; mitochondria cover a few % of a section, so a model far outside the
task's expected foreground, or one that draws a network of membranes, is flagged whatever the bank
says, and does not vote. That is what keeps a bank whose majority segments the wrong structure
(membrane or nuclei models on EM mitochondria) from flagging the few right models.

What the guards cannot do: with fewer than :attr:`GuardConfig.min_models` plausible models there
is no consensus and only the absolute checks run (they hold for a bank of any size, one model
included); where most of the bank fails the same way in a way the task's expectations do not
describe, the consensus is that failure and a lone good model looks like the outlier.
:func:`bank_verdict` says when the bank as a whole looks unusable, :func:`bank_disagreement` when
the ranking rests on a part of it only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
from skimage import measure

from ..scoring.metrics import mask_overlap, match_instances
from ..scoring.objects import convex_hull_areas
from ..types import InputTypeError

__all__ = [
    "Flag",
    "GuardConfig",
    "ModelGuards",
    "ImageStatistics",
    "bank_disagreement",
    "bank_verdict",
    "compute_guards",
    "foreground_agreement",
    "guarded_order",
    "image_flags",
    "image_statistics",
    "leave_one_out_consensus",
    "object_agreement",
]


@dataclass(frozen=True)
class GuardConfig:
    """When a model's clean output counts as degenerate or as an outlier of the bank.

    Attributes
    ----------
    min_models : int
        Plausible models (not flagged by the absolute checks) needed for the consensus checks.
    fraction_odds_ratio : float
        A mean foreground fraction whose odds ``f / (1 - f)`` are this many times above (or
        below) the consensus's ... (odds, not the fraction itself: 85 % against 35 % is as
        wrong as 20 % against 5 %, and a plain ratio would miss the first on dense targets).
        On an image where fewer than half of the voters lie within this ratio of their median,
        there is no consensus.
    fraction_gap : float
        ... and that is at least this far from it (fraction of the image) is an outlier.
    empty_fraction : float
        An image with a foreground fraction below this counts as empty.
    empty_share : float
        A model empty on more than this share of the images where the consensus is not empty
        predicts nothing.
    absolute_empty_share : float
        A model empty on more than this share of all the images predicts nothing, whatever the
        bank says (a bank of any size, one model included). The readers keep only images with
        objects; on a target where most images truly hold none, raise it.
    flood_fraction : float or None
        A mean foreground fraction above this is degenerate whatever the bank says (None: no such
        check, for dense tissue where every pixel belongs to an object).
    region_foreground, region_fraction : float
        A model that marks more than ``region_foreground`` of the image as foreground, mostly as
        one region whose area exceeds ``region_fraction`` of the image (median over images),
        segments the background or the tissue, not objects - whatever the bank says. This is
        the check that still works when the whole bank fails the same way (fluorescence models
        on H&E or brightfield images). With ``region_foreground`` 0 it reads "objects the size of
        the image" (dense tissue: a cell model whose one object covers the tissue found no
        boundaries).
    network_solidity : float or None
        A model whose foreground regions fill less than this share of their convex hulls
        (area-weighted over the regions, median over images) draws thin branching lines - a network
        of membranes or boundaries, whole or broken - rather than objects, whatever the bank says
        (None, the default: no such check, so that a bank of membrane models can be ranked for
        membranes). Mitochondria and cells are objects; a membrane model asked for them is the
        failure this catches (0.5 in their tasks: the ISBI 2012 membrane labels fill 18-40 % of
        their hulls on 256 px tiles, the mitochondria of vnc_mito and epfl_mito over 80 %, the
        cells of usiigaci_cells over 48 %, median 75 %).
    foreground : (float, float) or None
        The task's plausible mean foreground fraction (mitochondria: a few % of a section). Only
        models inside it (and without an absolute flag) make the consensus the others are
        compared with, so that a bank whose majority segments the wrong structure cannot flag the
        few models that segment the right one; a model outside it is flagged ``implausible``.
        None: every model without an absolute flag votes.
    min_object_area : float or None
        The smallest typical object area (pixels; the area-weighted median of
        :class:`ImageStatistics`, median over images) the task's objects have at the resolution
        they are imaged at; a model whose foreground lies mostly in smaller objects segments specks
        (vesicles, noise, texture), not the task's objects, and is flagged ``implausible`` (None:
        no such check). Area-weighted, so that a model that finds the objects and a few specks
        beside them is not flagged. Mitochondria at the 4-10 nm per pixel of EM sections are
        0.1-1 um across: 200 px in the mitochondria task, the labels' 5th percentile rounded down
        (the labels of vnc_mito and epfl_mito on 256 px tiles: typical object area 210 and 923 px
        or more on 95 % of the tiles, median 2180 and 2160 px); images at another resolution need
        resampling, or a config of their own.
    clump_spread : float or None
        A model whose objects' size spread (:class:`ImageStatistics`, median over images) exceeds
        this merges touching objects into clumps and is flagged ``clumps`` (instance scope, whatever
        the bank says; None: no such check). Objects of one kind differ by a modest factor: in the
        labels of the shared nuclei and cell datasets (the six DSB2018 groups, usiigaci_cells,
        ovules_mini; 716 images) the median spread over a dataset's images is 1.4-2.3, 99 % of the
        images stay below 3.4 and the largest is 5.2; 5 is twice every dataset's median. A clump of
        k cells is k times a cell, so a model that merges some neighbours and not others goes
        beyond it: on usiigaci_cells the models that merge most cells reach 5.7-8.1, the two that
        separate them 1.8 (Cellpose) and 2.0 (the kit's recipe). It does not depend on the bank, so
        a bank that merges as a whole is caught too. Mitochondria in EM sections mix round and long profiles (labels of
        vnc_mito and epfl_mito: medians 2.6 and 2.9, up to 6.6 on one section), so the mitochondria
        task, which ranks the foreground, leaves it out.
    agreement_ratio : float
        An IoU with the others' consensus below this fraction of the bank's median IoU is an
        outlier.
    count_ratio : float
        Objects per image this many times above or below the consensus (instance scope).
    """

    min_models: int = 3
    fraction_odds_ratio: float = 4.0
    fraction_gap: float = 0.1
    flood_fraction: float | None = 0.8
    empty_fraction: float = 1e-3
    empty_share: float = 0.5
    absolute_empty_share: float = 0.5
    region_foreground: float = 0.5
    region_fraction: float = 0.25
    network_solidity: float | None = None
    foreground: tuple[float, float] | None = None
    min_object_area: float | None = None
    clump_spread: float | None = 5.0
    agreement_ratio: float = 0.5
    count_ratio: float = 3.0

    def __post_init__(self):
        if self.min_models < 3:
            raise ValueError(f"min_models must be >= 3 (a leave-one-out majority needs 2 others), got {self.min_models}")
        for name in ("fraction_odds_ratio", "count_ratio"):
            if getattr(self, name) <= 1:
                raise ValueError(f"{name} must be > 1, got {getattr(self, name)}")
        for name in ("fraction_gap", "flood_fraction", "empty_fraction", "empty_share", "absolute_empty_share",
                     "agreement_ratio", "region_fraction", "network_solidity"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name} must lie in (0, 1), got {value}")
        if not 0 <= self.region_foreground < 1:
            raise ValueError(f"region_foreground must lie in [0, 1), got {self.region_foreground}")
        if self.min_object_area is not None and self.min_object_area <= 0:
            raise ValueError(f"min_object_area must be > 0, got {self.min_object_area}")
        if self.clump_spread is not None and self.clump_spread <= 1:
            raise ValueError(f"clump_spread must be > 1 (a ratio of object areas), got {self.clump_spread}")
        if self.foreground is not None:
            low, high = self.foreground
            if not 0 <= low < high <= 1:
                raise ValueError(f"foreground must be a range (low, high) with 0 <= low < high <= 1, got {self.foreground}")
            object.__setattr__(self, "foreground", (float(low), float(high)))

    def describe(self) -> str:
        """What these guards call degenerate, in a few words."""
        parts = []
        if self.foreground is not None:
            parts.append(f"an expected foreground of {_percent(self.foreground[0])} to {_percent(self.foreground[1])}")
        parts.append(f"flooding above {_percent(self.flood_fraction)}" if self.flood_fraction is not None
                     else "no flooding check (dense tissue may be all foreground)")
        parts.append("objects the size of the image" if self.region_foreground == 0 else
                     f"one region over {_percent(self.region_fraction)} of the image")
        if self.min_object_area is not None:
            parts.append(f"foreground mostly in objects smaller than {self.min_object_area:g} px (specks)")
        if self.network_solidity is not None:
            parts.append("networks (membranes) instead of objects")
        if self.clump_spread is not None:
            parts.append(f"objects whose sizes spread over {self.clump_spread:g}x (clumps of merged objects)")
        return ", ".join(parts)


@dataclass(frozen=True)
class Flag:
    """Why a model's ranking is not to be trusted.

    Attributes
    ----------
    code : str
        ``'floods'``, ``'one-region'``, ``'network'``, ``'implausible'``, ``'empty'``, ``'disagrees'``,
        ``'over-splits'``, ``'merges'`` or ``'clumps'``.
    scope : {'all', 'instance'}
        What it concerns: the foreground (every consistency) or the objects only.
    reason : str
        A sentence for the user.
    """

    code: str
    scope: str
    reason: str

    def applies_to(self, consistency: str) -> bool:
        return self.scope == "all" or consistency == "instance"


@dataclass(frozen=True)
class ImageStatistics:
    """What one clean prediction looks like: foreground fraction, object count, median object area,
    the area of the largest object as a fraction of the image, the solidity of the foreground
    (how much of their convex hulls its regions fill, area-weighted; NaN without a region to judge),
    the typical object area (the area of the object that holds the median foreground pixel:
    half of the foreground lies in objects at least this large, so a few specks beside the objects
    do not change it, where they can halve the plain median) and the size spread (the area of the
    object holding the 75th-percentile foreground pixel over that of the object holding the 25th,
    objects sorted by area: 1 when all objects have one size; specks hold too little of the
    foreground to move it)."""

    foreground_fraction: float
    n_objects: int
    median_object_size: float
    largest_object_fraction: float
    solidity: float = float("nan")
    typical_object_size: float = float("nan")
    size_spread: float = float("nan")


@dataclass(frozen=True)
class ModelGuards:
    """The guard values of one model on one target, and its flags.

    Attributes
    ----------
    name : str
    n_images : int
        Images the model has a prediction for.
    foreground_fraction, consensus_fraction : float
        Mean over images of the model's foreground fraction and of the bank's median.
    empty_images : float
        Share of the images on which the model's foreground fraction is below
        :attr:`GuardConfig.empty_fraction` (it predicts nothing there).
    objects_per_image, consensus_objects : float
        Median over images of the model's object count and of the bank's median count.
    object_size, consensus_object_size : float
        Median over images of the median object area (pixels), model and bank.
    typical_object_size : float
        Median over images of the typical object area (pixels; the area-weighted median, see
        :class:`ImageStatistics`).
    size_spread : float
        Median over images of the objects' size spread (:class:`ImageStatistics`).
    largest_object_fraction : float
        Median over images of the largest object's area as a fraction of the image.
    solidity : float
        Median over images of the share of their convex hulls the foreground regions fill
        (area-weighted): near 1 for compact objects, low for thin branching lines (membranes).
    agreement_iou, agreement_f1 : float
        Mean over images of the IoU / object F1 against the other models' consensus (NaN
        without a consensus).
    bank_agreement_iou : float
        The median of ``agreement_iou`` over the bank (the reference of the ``disagrees`` flag).
    flags : tuple of Flag
    plausible : bool
        Whether the model passed the checks that need no bank, and so made the consensus the others
        were compared with.
    """

    name: str
    n_images: int
    foreground_fraction: float
    consensus_fraction: float
    empty_images: float
    objects_per_image: float
    consensus_objects: float
    object_size: float
    consensus_object_size: float
    largest_object_fraction: float
    solidity: float
    typical_object_size: float
    size_spread: float
    agreement_iou: float
    agreement_f1: float
    bank_agreement_iou: float
    flags: tuple[Flag, ...] = field(default_factory=tuple)
    plausible: bool = True

    def flags_for(self, consistency: str) -> tuple[Flag, ...]:
        """The flags that concern a ranking by ``consistency``."""
        return tuple(flag for flag in self.flags if flag.applies_to(consistency))

    def as_dict(self) -> dict:
        values = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "flags"}
        values["flags"] = [flag.__dict__ for flag in self.flags]
        return values


def _check_mask(mask, name: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise InputTypeError(f"{name} must be a boolean mask, got dtype {mask.dtype}")
    return mask


def image_statistics(foreground: np.ndarray, labels: np.ndarray) -> ImageStatistics:
    """Foreground fraction, object count, median object area and the largest region's shape of one clean prediction.

    Parameters
    ----------
    foreground : (H, W) bool ndarray
    labels : (H, W) int ndarray
        Instance labels, 0 = background.

    Returns
    -------
    ImageStatistics
        ``median_object_size``, ``typical_object_size`` and ``size_spread`` are NaN without objects.
    """
    foreground = _check_mask(foreground, "foreground")
    labels = np.asarray(labels)
    if labels.shape != foreground.shape:
        raise ValueError(f"labels shape {labels.shape} differs from foreground shape {foreground.shape}")
    sizes = np.bincount(labels.ravel())[1:]
    sizes = np.sort(sizes[sizes > 0])
    if not sizes.size:
        return ImageStatistics(float(foreground.mean()), 0, float("nan"), 0.0, _solidity(foreground))
    cumulative = np.cumsum(sizes)
    # the object that holds the foreground pixel of rank q (pixels ordered by their object's area)
    typical, lower, upper = (sizes[np.searchsorted(cumulative, cumulative[-1] * q)] for q in (0.5, 0.25, 0.75))
    return ImageStatistics(float(foreground.mean()), int(sizes.size), float(np.median(sizes)),
                           float(sizes[-1]) / labels.size, _solidity(foreground), float(typical),
                           float(upper / lower))


#: Regions smaller than this share of the image are left out of the solidity: a speck is its own hull.
SOLIDITY_MIN_REGION = 1e-3


def _solidity(foreground: np.ndarray) -> float:
    """Area over convex-hull area, summed over the 8-connected foreground regions of at least
    :data:`SOLIDITY_MIN_REGION` of the image; NaN without such a region."""
    regions = measure.label(foreground, connectivity=2)
    areas = np.bincount(regions.ravel())
    large = np.flatnonzero(areas >= SOLIDITY_MIN_REGION * foreground.size)
    large = large[large > 0]
    if not large.size:
        return float("nan")
    return float(areas[large].sum() / convex_hull_areas(regions, large).sum())


def image_flags(own: ImageStatistics, consensus_fraction: float = float("nan"), consensus_objects: float = float("nan"),
                n_voters: int = 0, config: GuardConfig = GuardConfig()) -> tuple[Flag, ...]:
    """The guards' checks on one image's prediction (quality control of one model, image by image).

    Parameters
    ----------
    own : ImageStatistics
        The model's prediction of the image (:func:`image_statistics`).
    consensus_fraction, consensus_objects : float
        The median foreground fraction and object count of the other models on the same image.
    n_voters : int
        How many models that median is over: the checks against the bank need
        :attr:`GuardConfig.min_models` of them; with fewer only the absolute checks run.
    config : GuardConfig

    Returns
    -------
    tuple of Flag
        ``floods`` / ``one-region`` / ``clumps`` whatever the bank says; against the bank ``floods``,
        ``empty`` (no foreground where the bank finds some), ``over-splits`` and ``merges``.
    """
    # one empty image is not degenerate in itself (the image may hold nothing): only against the bank
    values = {**_own_values([own], config), "empty_images": 0.0}
    flags = list(_absolute_flags(values, config))
    if not flags:
        flags.extend(_object_flags(values, config))
    if n_voters < config.min_models or not np.isfinite(consensus_fraction):
        return tuple(flags)
    if own.foreground_fraction < config.empty_fraction <= consensus_fraction:
        flags.append(Flag("empty", "all", f"predicts no foreground where the bank predicts {_percent(consensus_fraction)}"))
    values = dict(foreground_fraction=own.foreground_fraction, consensus_fraction=consensus_fraction,
                  agreement_iou=float("nan"), bank_agreement_iou=float("nan"), objects_per_image=float(own.n_objects),
                  consensus_objects=consensus_objects)
    known = {flag.code for flag in flags}
    if "empty" in known:  # no objects at all is not a merge
        known.add("merges")
    return tuple(flags) + tuple(f for f in _relative_flags(values, float("nan"), n_voters, config) if f.code not in known)


def leave_one_out_consensus(masks: np.ndarray) -> np.ndarray:
    """For every model, the strict majority vote of the *other* models.

    Parameters
    ----------
    masks : (n_models, H, W) bool ndarray
        Foreground of each model on one image; ``n_models >= 3``.

    Returns
    -------
    (n_models, H, W) bool ndarray
        ``consensus[i]`` is True where more than half of the models other than ``i`` mark
        foreground (a tie is background).
    """
    masks = _check_mask(masks, "masks")
    if masks.ndim != 3 or masks.shape[0] < 3:
        raise ValueError(f"masks must be (n_models >= 3, H, W), got shape {masks.shape}")
    votes = masks.sum(axis=0, dtype=np.int32)
    others = votes[None] - masks
    return 2 * others > masks.shape[0] - 1


def foreground_agreement(reference: np.ndarray, mask: np.ndarray) -> float:
    """IoU of two foreground masks; 1.0 when both are empty (they agree that nothing is there)."""
    intersection, union = mask_overlap(_check_mask(reference, "reference"), _check_mask(mask, "mask"))
    return 1.0 if union == 0 else intersection / union


def object_agreement(reference: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Object F1 at IoU ``threshold`` of instance labels against the connected components of a mask.

    Parameters
    ----------
    reference : (H, W) bool ndarray
        A pseudo ground-truth foreground (the other models' consensus); its 4-connected
        components are the objects.
    labels : (H, W) int ndarray
        The model's instances.
    threshold : float

    Returns
    -------
    float
        1.0 when neither has an object.
    """
    objects = measure.label(_check_mask(reference, "reference"), connectivity=1)
    labels = np.asarray(labels)
    if objects.max() == 0 and labels.max() == 0:
        return 1.0
    return match_instances(objects, labels, threshold).f1


def compute_guards(
    models: Sequence[str],
    images: Sequence[str],
    load: Callable[[str, str], tuple[np.ndarray, np.ndarray] | None],
    config: GuardConfig = GuardConfig(),
) -> dict[str, ModelGuards]:
    """Guard values and flags of every model of a bank on one target.

    Images are visited one at a time, so memory holds one image of every model.

    Parameters
    ----------
    models : sequence of str
    images : sequence of str
        Image keys.
    load : callable (model, image) -> ((H, W) bool foreground, (H, W) int labels) or None
        The clean prediction of a model on an image (None where it is missing).
    config : GuardConfig

    Returns
    -------
    dict of str -> ModelGuards
    """
    models = list(models)
    statistics = {name: {} for name in models}  # model -> image -> ImageStatistics
    for image in images:
        for name in models:
            loaded = load(name, image)
            if loaded is not None:
                statistics[name][image] = image_statistics(*loaded)
    own = {name: _own_values(list(statistics[name].values()), config) for name in models}
    # First the checks that need no bank: a model that floods the image or predicts nothing is left
    # out of the consensus, so that a bank failing the same way cannot outvote the one model that works.
    absolute = {name: _absolute_flags(own[name], config) for name in models}
    plausible = [name for name in models if not absolute[name]]
    per_model = {name: {"consensus_fraction": [], "consensus_objects": [], "consensus_size": [], "iou": [], "f1": [],
                        "empty_where_bank_not": []} for name in models}
    for image in images:
        present = [name for name in models if image in statistics[name]]
        voters = [name for name in plausible if image in statistics[name]] or present
        if not present:
            continue
        stats = {name: statistics[name][image] for name in present}
        consensus_fraction = _consensus_fraction([stats[n].foreground_fraction for n in voters], config)
        consensus_objects = float(np.median([stats[n].n_objects for n in voters]))
        sizes = [stats[n].median_object_size for n in voters if stats[n].n_objects]
        consensus_size = float(np.median(sizes)) if sizes else float("nan")
        agreement = {}
        if len(voters) >= config.min_models and set(voters) <= set(plausible):
            # loaded a second time rather than kept from the first pass: memory holds one image of
            # every model, whatever the number of images
            loaded = {name: load(name, image) for name in present}
            masks = np.stack([loaded[n][0] for n in voters])
            consensus = dict(zip(voters, leave_one_out_consensus(masks)))
            votes = masks.sum(axis=0, dtype=np.int32)
            for name in present:
                # a model outside the voters is compared with the majority of all of them
                reference = consensus[name] if name in consensus else 2 * votes > len(voters)
                agreement[name] = (foreground_agreement(reference, loaded[name][0]),
                                   object_agreement(reference, loaded[name][1]))
        for name in present:
            record = per_model[name]
            record["consensus_fraction"].append(consensus_fraction)
            record["consensus_objects"].append(consensus_objects)
            record["consensus_size"].append(consensus_size)
            if consensus_fraction >= config.empty_fraction:
                record["empty_where_bank_not"].append(stats[name].foreground_fraction < config.empty_fraction)
            if name in agreement:
                record["iou"].append(agreement[name][0])
                record["f1"].append(agreement[name][1])
    iou = {name: _mean(per_model[name]["iou"]) for name in models}
    defined_iou = [iou[name] for name in plausible if np.isfinite(iou[name])]
    bank_iou = float(np.median(defined_iou)) if len(defined_iou) >= config.min_models else float("nan")
    guards = {}
    for name in models:
        record = per_model[name]
        values = dict(
            name=name,
            **own[name],
            consensus_fraction=_mean(record["consensus_fraction"]),
            consensus_objects=_median(record["consensus_objects"]),
            consensus_object_size=_median(record["consensus_size"]),
            agreement_iou=iou[name],
            agreement_f1=_mean(record["f1"]),
            bank_agreement_iou=bank_iou,
        )
        relative = _relative_flags(values, _mean(record["empty_where_bank_not"]), len(plausible), config)
        known = {flag.code for flag in absolute[name]}
        objects = () if absolute[name] else _object_flags(values, config)
        guards[name] = ModelGuards(**values, flags=absolute[name] + tuple(f for f in relative if f.code not in known)
                                   + objects, plausible=not absolute[name])
    return guards


def _consensus_fraction(fractions: Sequence[float], config: GuardConfig) -> float:
    """The voters' median foreground fraction, where at least half of them lie near it (odds within
    ``fraction_odds_ratio``); NaN where they split into camps (a dense-tissue model at 100 % and a
    sparse-cell model at 6 % beside two more of each kind): the median of two camps is nobody's answer,
    and comparing each camp with it would flag both."""
    median = float(np.median(fractions))
    ratio = config.fraction_odds_ratio
    near = [1 / ratio <= _odds(f) / _odds(median) <= ratio for f in fractions]
    return median if 2 * sum(near) >= len(fractions) else float("nan")


def _own_values(statistics: Sequence[ImageStatistics], config: GuardConfig) -> dict:
    """A model's own guard values over images (no bank needed)."""
    return dict(
        n_images=len(statistics),
        foreground_fraction=_mean([v.foreground_fraction for v in statistics]),
        empty_images=_mean([v.foreground_fraction < config.empty_fraction for v in statistics]),
        objects_per_image=_median([v.n_objects for v in statistics]),
        object_size=_median([v.median_object_size for v in statistics]),
        largest_object_fraction=_median([v.largest_object_fraction for v in statistics]),
        solidity=_median([v.solidity for v in statistics]),
        typical_object_size=_median([v.typical_object_size for v in statistics]),
        size_spread=_median([v.size_spread for v in statistics]),
    )


def _mean(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else float("nan")


def _median(values) -> float:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else float("nan")


def _odds(fraction: float) -> float:
    # clipped so that an all-or-nothing prediction has large but finite odds
    fraction = min(max(fraction, 1e-4), 1 - 1e-4)
    return fraction / (1 - fraction)


def _objects(count: float) -> str:
    return f"{count:.0f} object" + ("" if round(count) == 1 else "s")


def _percent(value: float) -> str:
    return f"{100 * value:.1f} %" if value < 0.1 else f"{100 * value:.0f} %"


def _absolute_flags(values: Mapping[str, float], config: GuardConfig) -> tuple[Flag, ...]:
    """Flags that need no bank: almost all foreground, nothing on most images, most of the image as one region,
    a network instead of objects, or a foreground the task's objects never cover."""
    fraction, region, empty = values["foreground_fraction"], values["largest_object_fraction"], values["empty_images"]
    if not np.isfinite(fraction):
        return ()
    if empty > config.absolute_empty_share:
        return (Flag("empty", "all", f"predicts no foreground on {empty:.0%} of the images"),)
    if config.flood_fraction is not None and fraction > config.flood_fraction:
        return (Flag("floods", "all", f"predicts {_percent(fraction)} of the image as foreground"),)
    if fraction > config.region_foreground and region > config.region_fraction:
        if config.region_foreground == 0:
            return (Flag("one-region", "all", f"finds one object covering {_percent(region)} of the image: it found no "
                                              "boundaries between the objects"),)
        return (Flag("one-region", "all", f"marks {_percent(fraction)} of the image as foreground, mostly as one "
                                          f"region covering {_percent(region)} of it: it segments the background or "
                                          "the tissue, not objects"),)
    solidity = values["solidity"]
    if config.network_solidity is not None and np.isfinite(solidity) and solidity < config.network_solidity:
        return (Flag("network", "all", f"draws thin branching lines: its regions fill {_percent(solidity)} of their "
                                       "convex hulls - it traces boundaries (membranes), not objects"),)
    if config.foreground is not None and not config.foreground[0] <= fraction <= config.foreground[1]:
        low, high = config.foreground
        return (Flag("implausible", "all", f"predicts {_percent(fraction)} of the image as foreground where this "
                                           f"task's objects cover {_percent(low)} to {_percent(high)}"),)
    size = values["typical_object_size"]
    if config.min_object_area is not None and np.isfinite(size) and size < config.min_object_area:
        return (Flag("implausible", "all", f"finds objects of typical area {size:.0f} px (half of its foreground "
                                           "lies in objects this small or smaller) where this task's objects "
                                           f"measure {config.min_object_area:g} px or more: it segments specks, not "
                                           "the task's objects (images at another resolution need resampling)"),)
    return ()


def _object_flags(values: Mapping[str, float], config: GuardConfig) -> tuple[Flag, ...]:
    """Flags on the objects that need no bank: sizes spread as clumps of merged objects do."""
    spread = values["size_spread"]
    if config.clump_spread is None or not np.isfinite(spread) or spread <= config.clump_spread:
        return ()
    return (Flag("clumps", "instance", f"finds objects of very uneven size: a quarter of its foreground lies in objects "
                                       f"{spread:.1f} times the area of those holding another quarter (area-weighted "
                                       f"quartiles; objects of one kind stay under {config.clump_spread:g}x) - it "
                                       "merges touching objects into clumps"),)


def _relative_flags(values: dict, empty_share: float, n_voters: int, config: GuardConfig) -> tuple[Flag, ...]:
    """Flags against the consensus of the bank's plausible models (none with fewer than ``min_models``)."""
    flags = []
    fraction, consensus = values["foreground_fraction"], values["consensus_fraction"]
    if not np.isfinite(fraction) or n_voters < config.min_models or not np.isfinite(consensus):
        return ()
    odds_ratio = _odds(fraction) / _odds(consensus)
    if odds_ratio > config.fraction_odds_ratio and fraction - consensus > config.fraction_gap:
        flags.append(Flag("floods", "all", f"predicts {_percent(fraction)} of the image as foreground where the bank "
                                           f"predicts {_percent(consensus)}"))
    if np.isfinite(empty_share) and empty_share > config.empty_share:
        flags.append(Flag("empty", "all", f"predicts no foreground on {empty_share:.0%} of the images where the bank "
                                          "finds objects"))
    elif odds_ratio * config.fraction_odds_ratio < 1 and consensus - fraction > config.fraction_gap:
        flags.append(Flag("empty", "all", f"predicts {_percent(fraction)} of the image as foreground where the bank "
                                          f"predicts {_percent(consensus)}"))
    iou, bank_iou = values["agreement_iou"], values["bank_agreement_iou"]
    if np.isfinite(iou) and np.isfinite(bank_iou) and iou < config.agreement_ratio * bank_iou:
        flags.append(Flag("disagrees", "all", f"agrees with the other models' consensus on IoU {iou:.2f} where the "
                                              f"bank's median is {bank_iou:.2f}"))
    objects, consensus_objects = values["objects_per_image"], values["consensus_objects"]
    if np.isfinite(objects) and np.isfinite(consensus_objects) and consensus_objects >= 1:
        if objects > config.count_ratio * consensus_objects:
            flags.append(Flag("over-splits", "instance", f"finds {_objects(objects)} per image where the bank finds "
                                                         f"{_objects(consensus_objects)}"))
        elif objects * config.count_ratio < consensus_objects:
            flags.append(Flag("merges", "instance", f"finds {_objects(objects)} per image where the bank finds "
                                                    f"{_objects(consensus_objects)}"))
    return tuple(flags)


def guarded_order(scores, flagged) -> np.ndarray:
    """A score whose descending order is the guarded ranking: unflagged models first, each group by score.

    Parameters
    ----------
    scores : (n_models,) float array_like
        Scores in [0, 1] (CTE, or a normalised rank aggregate), higher is better; NaN ranks last.
    flagged : (n_models,) bool array_like

    Returns
    -------
    (n_models,) float ndarray
        ``scores - 2`` for flagged models: below every unflagged one, in their own order.
    """
    scores, flagged = np.asarray(scores, dtype=float), np.asarray(flagged, dtype=bool)
    if scores.shape != flagged.shape:
        raise ValueError(f"{scores.size} scores but {flagged.size} flags")
    finite = scores[np.isfinite(scores)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise ValueError("guarded_order needs scores in [0, 1]")
    return np.where(flagged, scores - 2.0, scores)


def bank_disagreement(guards: Mapping[str, ModelGuards], consistency: str = "hard",
                      config: GuardConfig = GuardConfig()) -> str | None:
    """A sentence when the bank disagrees with itself, else None.

    Two cases say that the ranking rests on a part of the bank only: half of the models or more
    are flagged (most of the bank segments something else, or nothing), or too few models look
    plausible for a consensus, so that only the checks that need no bank could run. The few
    models left are not outliers for it: they are what the ranking can still offer.

    Parameters
    ----------
    guards : mapping of str to ModelGuards
    consistency : str
    config : GuardConfig
        Its ``min_models``.

    Returns
    -------
    str or None
        None also when every model is flagged (:func:`bank_verdict` says that).
    """
    flagged = {name: g.flags_for(consistency) for name, g in guards.items() if g.flags_for(consistency)}
    if not flagged or len(flagged) == len(guards):
        return None
    others = [name for name in guards if name not in flagged]
    sentences = []
    if 2 * len(flagged) >= len(guards):
        codes: dict[str, int] = {}
        for flags in flagged.values():
            for flag in dict.fromkeys(f.code for f in flags):
                codes[flag] = codes.get(flag, 0) + 1
        sentences.append(f"the bank disagrees with itself: {len(flagged)} of {len(guards)} models are flagged ("
                         + ", ".join(f"{code} {n}" for code, n in codes.items()) + "); the ranking rests on the "
                         + f"other {len(others)} ({', '.join(others)})")
    plausible = [name for name, g in guards.items() if g.plausible]
    if len(plausible) < config.min_models <= len(guards):
        sentences.append(f"only {len(plausible)} model{'s' if len(plausible) != 1 else ''} look plausible for the "
                         f"task, fewer than the {config.min_models} a consensus needs: they were checked against "
                         "the task's expectations, not against each other")
    return "; ".join(sentences) if sentences else None


def bank_verdict(guards: Mapping[str, ModelGuards], consistency: str = "hard",
                 config: GuardConfig = GuardConfig()) -> str | None:
    """A sentence when no model of the bank can be recommended for ``consistency``, else None.

    No model can be recommended when every model is flagged, nor when a bank of at least
    ``config.min_models`` models leaves one unflagged model that no consensus checked (fewer
    plausible models than a consensus needs): CTE then had nothing to rank it against and the
    checks that need no bank are all that speaks for it - the cell bank without the usiigaci models
    leaves a nuclei model alone this way on usiigaci_cells, with an mAP of 0.00. Two survivors are
    still ranked: CTE chooses between them. The parameters are :func:`bank_disagreement`'s.
    """
    if guards and all(g.flags_for(consistency) for g in guards.values()):
        return ("every model of the bank is flagged: none of them can be recommended for this target; "
                "its outputs look degenerate or the bank does not agree on what the objects are")
    unflagged = [name for name, g in guards.items() if not g.flags_for(consistency)]
    plausible = sum(g.plausible for g in guards.values())
    if len(unflagged) == 1 and plausible < config.min_models <= len(guards):
        return (f"only {unflagged[0]} passes the guards, and fewer models than a consensus needs look plausible: "
                f"CTE had nothing to rank it against and it was checked against the task's expectations only - "
                f"none can be recommended; look at {unflagged[0]}'s output before using it")
    return None
