"""Adapt, then choose without labels: every checkpoint of an adaptation is ranked like a bank.

Self-training can hurt a model that already transfers well, and neither stopping rule of the
SelfAdapt paper finds the best checkpoint reliably (``benchmarks/bench_adapt.py``). So the kit
keeps a checkpoint at every evaluation, the starting weights included, and ranks them on the
target images with its own default estimator and guards, through the runner and its store - the
ranking that chose the model in the first place::

    result = adapt_and_choose(entry, images, names, AdaptConfig(steps=200), "adapted/near.pt")
    result.choice.step          # 0: the starting weights were kept
    print(result.choice.reason)

:func:`choose_checkpoint` is the choice alone, for checkpoints already written
(:func:`cte_kit.adapt.save_checkpoints`). The rule (:class:`ChoiceRule`):

* a checkpoint flagged by the guards (degenerate output, or far from the other checkpoints) is
  never chosen. The starting weights are the reference: the checks against the other checkpoints
  do not apply to them (the checkpoints descend from them and, when adaptation collapses, outvote
  them together), only the checks that need no bank (floods, nothing on most images, one region,
  a network of lines, a foreground the task's objects never cover);
* an adapted checkpoint replaces the starting weights only when its score beats theirs by more
  than a margin, in at least 95 % of bootstrap resamples of the images (a gain within the
  image-to-image spread is not evidence);
* self-training teaches a model to agree with itself, which raises its consistency whether or not
  it got better. So when the rest of the bank is given, its consensus (the majority vote of the
  models the guards do not flag) is a pseudo ground truth the adaptation never saw: an adapted
  checkpoint must not agree less with it than the starting weights do;
* of the checkpoints left, the highest score wins; with none left, the starting weights are kept
  and the reason says "adaptation did not help here".

Labels never enter: the runner hands none to anything, and true performance, when a benchmark
wants it, is filled into the same store afterwards by the evaluation floor
(:func:`cte_kit.evaluation.performance.checkpoint_performance`). ``benchmarks/bench_adapt.py``
validates the rule on the DSB2018 leave-one-sub-domain-out protocol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..adapt import AdaptConfig, Adaptation, adapt, adapt_target, checkpoint_entry, save_adapted, save_checkpoints
from ..estimators.cte import default_settings
from ..estimators.guards import GuardConfig, foreground_agreement
from ..estimators.tasks import Task, task_defaults
from ..models.bank import BankEntry
from ..models.base import SegmentationModel
from ..scoring.consistency import CONSISTENCY_KINDS, summarize
from ..scoring.ranking import bootstrap_scores
from .runner import RunReport, RunTarget, estimate, rows, run, store_guards
from .store import ResultStore
from .units import Setting

__all__ = ["AdaptedModel", "CheckpointChoice", "CheckpointScore", "ChoiceRule", "NO_GAIN", "adapt_and_choose",
           "choose_checkpoint"]

#: What the report says when the starting weights are kept.
NO_GAIN = "adaptation did not help here"


@dataclass(frozen=True)
class ChoiceRule:
    """How the checkpoints are ranked and when an adapted one replaces the starting weights.

    Attributes
    ----------
    task : str, Task or None
        Whose defaults rank the checkpoints (:func:`cte_kit.estimators.tasks.task_defaults`: the
        consistency, its perturbation, the statistic over images and the guards - the kit's
        default estimator for the task, as ``cte-kit rank`` uses it); None: the default task.
    consistency : {'hard', 'soft', 'instance'} or None
        Default: the task's first consistency.
    margin : float
        An adapted checkpoint is chosen only when its score exceeds the starting weights' by more
        than this; ties and smaller gains keep the starting weights.
    confidence : float
        ... and only when it does so in at least this share of bootstrap resamples of the images
        (paired: one draw of images for both), so that a gain no larger than the image-to-image
        spread does not replace the model the user started with.
    n_boot : int
        Bootstrap replicates.
    guards : bool
        Apply the task's label-free guards to the checkpoints (False: rank by the score alone).
    min_reference : int
        Fewest models of the rest of the bank (not flagged by the guards) whose consensus the
        checkpoints are compared with; with fewer, the agreement check is skipped.
    seed : int
        Perturbation seed of the run (with each image's name it fixes every draw).
    """

    task: str | Task | None = None
    consistency: str | None = None
    margin: float = 0.01
    confidence: float = 0.95
    n_boot: int = 1000
    guards: bool = True
    min_reference: int = 2
    seed: int = 0

    def __post_init__(self):
        if not self.margin >= 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0 <= self.confidence < 1:
            raise ValueError(f"confidence must lie in [0, 1), got {self.confidence}")
        defaults = task_defaults(self.task)  # an unknown task fails here
        if self.consistency is None:
            object.__setattr__(self, "consistency", defaults.consistencies[0])
        if self.consistency not in CONSISTENCY_KINDS:
            raise ValueError(f"unknown consistency {self.consistency!r}; choose from {CONSISTENCY_KINDS}")

    @property
    def defaults(self) -> Task:
        return task_defaults(self.task)

    @property
    def perturbation(self) -> str:
        return next(iter(default_settings([self.consistency], self.defaults)))

    @property
    def guard_config(self) -> GuardConfig | None:
        return self.defaults.guards if self.guards else None

    def settings(self) -> list[Setting]:
        """The runner's settings: the task's default perturbation of the consistency."""
        return [Setting(label, tuple(kinds), self.seed)
                for label, kinds in default_settings([self.consistency], self.defaults).items()]

    def describe(self) -> str:
        return f"{self.consistency} CTE under {self.perturbation}, {self.defaults.statistic} over images"


@dataclass(frozen=True)
class CheckpointScore:
    """One checkpoint in the ranking.

    Attributes
    ----------
    step : int
        0 is the starting weights.
    model : str
        Its name in the result store.
    score : float
        The estimator's value (NaN: no image with foreground, or the checkpoint failed).
    n_images : int
        Images whose per-image value is defined.
    flags : tuple of str
        The guards' reasons; a flagged checkpoint is never chosen.
    agreement : float
        Mean IoU over images of its foreground with the consensus of the rest of the bank (NaN
        without a reference bank).
    p_gain : float
        Share of bootstrap resamples of the images in which its score beats the starting
        weights' by more than the margin (NaN for the starting weights).
    """

    step: int
    model: str
    score: float
    n_images: int
    flags: tuple[str, ...] = ()
    agreement: float = float("nan")
    p_gain: float = float("nan")

    @property
    def eligible(self) -> bool:
        return not self.flags and bool(np.isfinite(self.score))


@dataclass(frozen=True)
class CheckpointChoice:
    """Which checkpoint the kit keeps, and why.

    Attributes
    ----------
    step : int
        The chosen checkpoint (0: the starting weights).
    reason : str
        One or two sentences for the user; starts with :data:`NO_GAIN` when the starting
        weights are kept.
    rule : ChoiceRule
    scores : tuple of CheckpointScore
        Every checkpoint, in step order.
    report : RunReport
        The runner's report (model and image keys in the store, failures).
    reference : tuple of str
        The models of the bank whose consensus the checkpoints were compared with (empty: none).
    left_out : dict of str -> str
        Models of the rest of the bank that are not in the consensus, with the reason (flagged by
        the guards, failed to predict).
    """

    step: int
    reason: str
    rule: ChoiceRule
    scores: tuple[CheckpointScore, ...]
    report: RunReport
    reference: tuple[str, ...] = ()
    left_out: Mapping[str, str] = field(default_factory=dict)

    @property
    def kept_start(self) -> bool:
        return self.step == 0

    def record(self) -> dict:
        """JSON-ready: the chosen step, the reason, the estimator and every checkpoint's score."""
        return {"chosen_step": self.step, "kept_start": self.kept_start, "reason": self.reason,
                "task": self.rule.defaults.name, "estimator": self.rule.describe(), "margin": self.rule.margin,
                "guards": self.rule.guards,
                "reference_models": list(self.reference), "left_out_of_the_reference": dict(self.left_out),
                "checkpoints": [{**asdict(s), "flags": list(s.flags)} for s in self.scores],
                "failures": [f"{f.model}: {f.error}" for f in self.report.failures]}


def choose_checkpoint(checkpoints: Mapping[int, BankEntry], target: RunTarget, store: ResultStore,
                      rule: ChoiceRule = ChoiceRule(), reference: Sequence[BankEntry | SegmentationModel] = (),
                      backend=None, progress: bool = True) -> CheckpointChoice:
    """Rank the checkpoints of one adaptation on the target and choose one, without labels.

    Parameters
    ----------
    checkpoints : mapping of int -> BankEntry
        ``{step: entry}``; step 0 (the starting weights) must be there
        (:func:`cte_kit.adapt.checkpoint_entry`).
    target : RunTarget
        The unlabelled target images.
    store : ResultStore
        Rows already there are reused (a rerun resumes).
    rule : ChoiceRule
    reference : sequence of BankEntry or SegmentationModel
        The rest of the bank (not the adapted model). When at least
        :attr:`ChoiceRule.min_reference` of them are not flagged by the guards, their majority vote
        is a pseudo ground truth that self-training cannot inflate: an adapted checkpoint must
        not agree less with it than the starting weights do. Each is predicted once, clean.
    backend : SerialBackend or DaskBackend, optional
    progress : bool

    Returns
    -------
    CheckpointChoice
    """
    if 0 not in checkpoints:
        raise ValueError("the checkpoints must include step 0, the starting weights: the choice compares with them")
    steps = sorted(checkpoints)
    bank = [checkpoints[step] for step in steps]
    settings = rule.settings()
    report = run(bank, target, settings, store, backend=backend, progress=progress)
    images = report.images[target.name]
    per_model: dict[str, list[float]] = {entry.name: [] for entry in bank}
    for row in rows(store, report.models, images, settings):
        if row["consistency"] == rule.consistency:
            per_model[row["model"]].append(row["cte"])
    failed = set(report.failed_models)
    complete = [e.name for e in bank if e.name not in failed and len(per_model[e.name]) == len(images)]
    config = rule.guard_config
    guards = store_guards(store, report, target.name, complete, config) if config and complete else {}
    start = bank[0].name
    if start in guards:
        # The adapted checkpoints descend from the starting weights and fail together when they fail (a collapse
        # to empty masks outvotes the start), so only the checks that need no bank may flag the starting weights.
        guards[start] = store_guards(store, report, target.name, [start], config)[start]
    voters, left_out = _reference_voters(reference, target, store, report, start, rule, backend, progress)
    if voters and len(voters) < rule.min_reference:
        left_out.update({name: f"fewer than {rule.min_reference} usable models: no consensus" for name in voters})
        voters = {}
    agreement = _agreement(store, report, images, complete, voters) if voters else {}
    table = np.array([per_model[e.name] if e.name in complete else [np.nan] * len(images) for e in bank], dtype=float)
    p_gain = _p_gain(table, rule)
    scores = []
    for index, (step, entry) in enumerate(zip(steps, bank)):
        summary = summarize(table[index], rule.defaults.statistic)
        flags = tuple(f.reason for f in guards[entry.name].flags_for(rule.consistency)) if entry.name in guards else ()
        if entry.name not in complete:
            flags += ("failed on some images (see the result store)",)
        scores.append(CheckpointScore(step, entry.name, summary.score if entry.name in complete else float("nan"),
                                      summary.n_images, flags, agreement.get(entry.name, float("nan")), p_gain[index]))
    step, reason = _decide(scores, rule, len(voters))
    return CheckpointChoice(step, reason, rule, tuple(scores), report, tuple(voters), left_out)


def _p_gain(table: np.ndarray, rule: ChoiceRule) -> list[float]:
    """Per row after the first, the bootstrap share of image resamples in which it beats row 0 by more than the margin.

    Raising the starting weights' per-image values by the margin raises their mean (or median) by
    exactly the margin, so the share of replicates in which a checkpoint is on top of the pair is
    the share in which it wins by more than the margin.
    """
    found = [float("nan")]
    for row in table[1:]:
        if not (np.isfinite(row).any() and np.isfinite(table[0]).any()):
            found.append(float("nan"))
            continue
        pair = bootstrap_scores(np.stack([table[0] + rule.margin, row]), n_boot=rule.n_boot,
                                statistic=rule.defaults.statistic, seed=rule.seed)
        found.append(float(pair.p_top[1]))
    return found


def _reference_voters(reference, target: RunTarget, store: ResultStore, report: RunReport, start: str,
                      rule: ChoiceRule, backend, progress: bool) -> tuple[dict[str, str], dict[str, str]]:
    """``({name: model key}, {name: why left out})``: the reference models that predicted the target and that
    the guards do not flag (seen with the starting weights, as a ranking of the bank would see them)."""
    if not reference:
        return {}, {}
    found = estimate(reference, target, [], store, backend=backend, progress=progress)
    left_out = {f.model: f"failed: {f.error}" for f in found.failures}
    predicted = {name: key for name, key in found.models.items() if name in found.forward}
    if rule.guard_config is not None and predicted:
        both = RunReport(models={start: report.models[start], **predicted}, images=report.images)
        guards = store_guards(store, both, target.name, config=rule.guard_config)
        for name in list(predicted):
            flags = guards[name].flags_for(rule.consistency)
            if flags:
                left_out[name] = "flagged by the guards: " + "; ".join(flag.reason for flag in flags)
                del predicted[name]
    return predicted, left_out


def _agreement(store: ResultStore, report: RunReport, images: Mapping[str, str], models: Sequence[str],
               voters: Mapping[str, str]) -> dict[str, float]:
    """Mean IoU over images of each model's foreground with the strict majority vote of the voters."""
    found: dict[str, list[float]] = {name: [] for name in models}
    for key in images.values():
        masks = [store.clean_prediction(voter, key)[0] for voter in voters.values()]
        consensus = 2 * np.sum(masks, axis=0, dtype=np.int32) > len(masks)
        for name in models:
            found[name].append(foreground_agreement(consensus, store.clean_prediction(report.models[name], key)[0]))
    return {name: float(np.mean(values)) for name, values in found.items()}


def _decide(scores: Sequence[CheckpointScore], rule: ChoiceRule, n_reference: int) -> tuple[int, str]:
    """The chosen step and the sentence that says why."""
    start = scores[0]
    candidates = [s for s in scores[1:] if s.eligible]
    what = rule.describe()
    if not candidates:
        why = "every adapted checkpoint was flagged by the guards or has no score"
        return 0, f"{NO_GAIN}: {why}; the starting weights are kept."
    if not start.eligible:
        # ties go to the earlier checkpoint: it drifted less from the starting weights
        best = max(candidates, key=lambda s: (s.score, -s.step))
        problem = "; ".join(start.flags) if start.flags else "has no score"
        return best.step, (f"step {best.step}: the starting weights {problem}; of the adapted checkpoints not "
                           f"flagged by the guards, step {best.step} has the highest {what} ({best.score:.3f}).")
    higher = [s for s in candidates if s.score - start.score > rule.margin and s.p_gain >= rule.confidence]
    if not higher:
        best = max(candidates, key=lambda s: (s.score, -s.step))
        return 0, (f"{NO_GAIN}: no adapted checkpoint beats the starting weights' {what} ({start.score:.3f}) by "
                   f"more than {rule.margin:g} in {rule.confidence:.0%} of bootstrap resamples of the images (best: "
                   f"step {best.step}, {best.score:.3f}, in {best.p_gain:.0%}); the starting weights are kept.")
    bank = f"the other {n_reference} models of the bank"
    if n_reference:
        agreeing = [s for s in higher if s.agreement >= start.agreement]
        if not agreeing:
            closest = max(higher, key=lambda s: s.agreement)
            return 0, (f"{NO_GAIN}: the adapted checkpoints whose {what} is higher (by up to "
                       f"{max(s.score for s in higher) - start.score:.3f}) agree less with {bank} than the starting "
                       f"weights (foreground IoU with their consensus at most {closest.agreement:.3f}, the starting "
                       f"weights {start.agreement:.3f}): self-training made the model more consistent with itself, "
                       "not closer to what the bank finds; the starting weights are kept.")
        higher = agreeing
    best = max(higher, key=lambda s: (s.score, -s.step))
    gain = best.score - start.score
    reason = (f"step {best.step}: the highest {what} of {len(scores)} checkpoints ({best.score:.3f}, the starting "
              f"weights {start.score:.3f}: +{gain:.3f}, more than the margin {rule.margin:g} in {best.p_gain:.0%} of "
              "bootstrap resamples of the images)")
    if n_reference:
        reason += (f", and it agrees at least as well with {bank} (foreground IoU with their consensus "
                   f"{best.agreement:.3f}, the starting weights {start.agreement:.3f})")
    return best.step, reason + "."


@dataclass(frozen=True)
class AdaptedModel:
    """What :func:`adapt_and_choose` did and wrote.

    Attributes
    ----------
    run : Adaptation
        The adaptation (curve, stopping rules, checkpoints in memory).
    choice : CheckpointChoice
    kind : str
        Bank kind of the written weights.
    path : Path
        The chosen checkpoint, with its provenance and choice in ``<path>.adapt.json``.
    checkpoints : dict of int -> BankEntry
        Every written checkpoint as a bank entry.
    """

    run: Adaptation
    choice: CheckpointChoice
    kind: str
    path: Path
    checkpoints: dict

    def entry(self, name: str | None = None) -> BankEntry:
        """The chosen model as a bank entry (default name: the source's, with ``_adapted``)."""
        chosen = self.checkpoints[self.choice.step]
        return BankEntry(name or chosen.name.rsplit("@", 1)[0] + "_adapted", self.kind, str(self.path), None,
                         chosen.settings, chosen.source)


def adapt_and_choose(entry: BankEntry, images: Sequence[np.ndarray], names: Sequence[str], config: AdaptConfig,
                     out: str | Path, rule: ChoiceRule = ChoiceRule(),
                     reference: Sequence[BankEntry | SegmentationModel] = (),
                     store: str | Path | ResultStore | None = None, provenance: Mapping | None = None,
                     target_name: str = "target", backend=None, progress: bool = True, **settings) -> AdaptedModel:
    """Adapt a bank model to unlabelled images, rank every checkpoint, write the chosen one.

    Parameters
    ----------
    entry : BankEntry
        A kit U-Net, Cellpose 3 model or bioimage.io export of a kit U-Net.
    images : sequence of (H, W) or (H, W, C) arrays
    names : sequence of str
        One unique name per image (seeds and keys).
    config : AdaptConfig
    out : path
        Weights of the chosen checkpoint; ``<out>.adapt.json`` holds the provenance and the
        choice, ``<stem>_checkpoints/`` every checkpoint (``step_<n><suffix>``).
    rule : ChoiceRule
    reference : sequence of BankEntry or SegmentationModel
        The rest of the bank (see :func:`choose_checkpoint`); the CLI passes every other model of
        the bank file.
    store : path or ResultStore, optional
        The result store of the ranking (default: ``ranking.sqlite`` in the checkpoint folder).
    provenance : mapping, optional
        Recorded with every checkpoint (source model, target folder, ...).
    target_name : str
        The target's name in the store.
    backend : optional
        The runner's backend for the ranking.
    progress : bool
    **settings
        Adapter settings added to the entry's (``device='cuda'``).

    Returns
    -------
    AdaptedModel
    """
    out = Path(out)
    entry = BankEntry(entry.name, entry.kind, entry.path, entry.pretrained, {**entry.settings, **settings}, entry.source)
    target = adapt_target(entry)
    adaptation = adapt(target, images, config, names=names, progress=progress)
    record = {"source_model": entry.name, **(provenance or {})}
    folder = out.with_name(out.stem + "_checkpoints")
    kind, paths = save_checkpoints(target, adaptation, folder, record, out.suffix)
    checkpoints = {step: checkpoint_entry(entry, kind, path, step) for step, path in paths.items()}
    store = folder / "ranking.sqlite" if store is None else store
    opened = store if isinstance(store, ResultStore) else ResultStore(store)
    try:
        choice = choose_checkpoint(checkpoints, RunTarget(target_name, tuple(images), tuple(names)), opened, rule,
                                   reference, backend=backend, progress=progress)
    finally:
        if not isinstance(store, ResultStore):
            opened.close()
    _, path = save_adapted(target, adaptation, out, {**record, "choice": choice.record()}, choice.step)
    return AdaptedModel(adaptation, choice, kind, path, checkpoints)
