"""What the kit assumes about each segmentation problem: the task's defaults, in one place.

Seed 001 evaluates three problems, and the right defaults differ between them: the consistency
that means something (hard consistency of a dense tissue, where every pixel belongs to a cell, is
1 for every model), the perturbation and statistic, and what a degenerate output looks like (80 %
foreground is a failure for nuclei and the norm for dense tissue). Each :class:`Task` holds them
as data; the estimators, the guards and every client (``cte-kit rank``, ``sweep``, ``compare``,
the demo, the notebooks, quality control, adaptation) read them through :func:`task_defaults`,
never through a branch on the task's name.

A task is declared in the bank YAML (``task: mitochondria``), a sweep config, on the command
line (``--task``) or in code; :func:`resolve_task` says which one it took and why, so the task is
never assumed silently. Without a declaration the kit assumes ``nuclei``, the problem its defaults were
first chosen on, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from ..perturb import parse_perturbation
from ..scoring.consistency import CONSISTENCY_KINDS, STATISTICS
from .guards import GuardConfig, ModelGuards

__all__ = ["DEFAULT_TASK", "TASKS", "Task", "TaskChoice", "resolve_task", "task_defaults", "task_hint"]


@dataclass(frozen=True)
class Task:
    """The defaults of one segmentation problem.

    Attributes
    ----------
    name : str
    description : str
        What the objects are, in a few words (printed when the task is chosen).
    consistencies : tuple of str
        The consistencies scored when the user names none.
    perturbations : mapping of str -> str
        The kit's default perturbation label of each consistency.
    statistic : {'mean', 'median', 'trimmed', 'tie-aware'}
        Aggregation of the per-image consistency over images.
    guards : GuardConfig
        When an output counts as degenerate for this task, and the task's expected foreground.
    paper_perturbation, paper_statistic : str
        Seed 001's setting for this task (no guards): the baseline the defaults must beat.
    recommend_from : float
        The consistency the most consistent unflagged model needs to be recommended: a model whose
        prediction keeps less than this under a mild perturbation (IoU or Rand score) is too unstable
        to be followed, however it ranks. Applied with the guards (the kit's ranking), not to the
        raw CTE order.
    evidence : str
        Where the defaults were chosen (a benchmark of ``benchmarks/`` and its README section).
    """

    name: str
    description: str
    consistencies: tuple[str, ...]
    perturbations: Mapping[str, str] = field(hash=False)
    statistic: str
    guards: GuardConfig
    paper_perturbation: str
    paper_statistic: str
    evidence: str
    recommend_from: float = 0.5

    def __post_init__(self):
        missing = [kind for kind in CONSISTENCY_KINDS if kind not in self.perturbations]
        if missing:
            raise ValueError(f"task {self.name!r} has no default perturbation for {missing}")
        for label in (*self.perturbations.values(), self.paper_perturbation):
            parse_perturbation(label)
        unknown = [kind for kind in self.consistencies if kind not in CONSISTENCY_KINDS]
        if unknown or not self.consistencies:
            raise ValueError(f"task {self.name!r}: consistencies must be some of {CONSISTENCY_KINDS}, got "
                             f"{self.consistencies}")
        if not 0 <= self.recommend_from < 1:
            raise ValueError(f"task {self.name!r}: recommend_from must lie in [0, 1), got {self.recommend_from}")
        for statistic in (self.statistic, self.paper_statistic):
            if statistic not in STATISTICS:
                raise ValueError(f"task {self.name!r}: unknown statistic {statistic!r}; choose from {STATISTICS}")

    def settings(self, consistencies: Sequence[str] | None = None) -> dict[str, list[str]]:
        """``{perturbation label: [consistencies scored under it]}`` (default: the task's consistencies)."""
        settings: dict[str, list[str]] = {}
        for consistency in dict.fromkeys(self.consistencies if consistencies is None else consistencies):
            if consistency not in self.perturbations:
                raise ValueError(f"unknown consistency {consistency!r}; choose from {CONSISTENCY_KINDS}")
            settings.setdefault(self.perturbations[consistency], []).append(consistency)
        return settings

    def summary(self) -> str:
        """One line: the consistencies, perturbations, statistic and guards this task ranks with."""
        pairs = ", ".join(f"{kind} consistency under {self.perturbations[kind]}" for kind in self.consistencies)
        return (f"{pairs}, {self.statistic} over images, guards for {self.guards.describe()}; "
                f"the paper's setting for this task: {self.paper_perturbation}, {self.paper_statistic}, no guards")


#: Every task the kit knows. The perturbations and statistics were chosen by leave-one-target-out
#: on the shared data (``benchmarks/bench_dsb_ranking.py`` for nuclei, ``benchmarks/bench_tasks.py``
#: for mitochondria and cells; README, "Tasks"); the guards' expected foreground is what the task's
#: objects cover, from the field's datasets, never from a target's labels.
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("nuclei", "nuclei in light microscopy: separate objects on a background",
             consistencies=("hard",),
             perturbations={"hard": "gamma:0.7", "soft": "gamma:0.7", "instance": "gamma:0.7"},
             statistic="mean", guards=GuardConfig(),
             paper_perturbation="dropout:0.2", paper_statistic="median",
             evidence="leave-one-sub-domain-out on DSB2018 (benchmarks/bench_dsb_ranking.py)"),
        Task("mitochondria", "mitochondria in electron microscopy: small sparse objects, a few % of the section",
             consistencies=("hard",),
             perturbations={"hard": "gamma:0.7", "soft": "gamma:0.7", "instance": "gamma:0.7"},
             statistic="mean", guards=GuardConfig(foreground=(0.005, 0.35), flood_fraction=0.5, network_solidity=0.5,
                                                   min_object_area=200.0, clump_spread=None),
             paper_perturbation="dropout:0.05", paper_statistic="median",
             evidence="leave-one-target-out on vnc_mito and epfl_mito (benchmarks/bench_tasks.py mitochondria)"),
        Task("cells", "cells in light microscopy, dense tissue included: every pixel may belong to a cell",
             consistencies=("instance",),
             perturbations={"hard": "gamma:0.7", "soft": "gamma:0.7", "instance": "gamma:0.7"},
             statistic="mean", guards=GuardConfig(flood_fraction=None, region_foreground=0.0, network_solidity=0.5),
             paper_perturbation="dropout:0.2", paper_statistic="median",
             evidence="leave-one-target-out on usiigaci_cells and ovules_mini (benchmarks/bench_tasks.py cells)"),
    )
}

#: The task assumed when none is declared: the problem the kit's defaults were first chosen on.
DEFAULT_TASK = "nuclei"


def task_defaults(task: str | Task | None = None) -> Task:
    """The defaults of a task: the one entry point every client reads them through.

    Parameters
    ----------
    task : str, Task or None
        A name of :data:`TASKS`, a :class:`Task` (returned as is), or None for :data:`DEFAULT_TASK`.

    Returns
    -------
    Task

    Raises
    ------
    ValueError
        An unknown task name (the message lists the known ones).
    """
    if isinstance(task, Task):
        return task
    name = DEFAULT_TASK if task is None else str(task).strip().lower()
    if name not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


@dataclass(frozen=True)
class TaskChoice:
    """The task a run uses, where it came from and the sentence that says so.

    Attributes
    ----------
    task : Task
    source : str
        Where it was declared (``'--task'``, the bank's file), or ``'assumed'``.
    message : str
        Printed by every client before it ranks: the task is never assumed silently.
    """

    task: Task
    source: str
    message: str


def resolve_task(*declarations: tuple[str, str | Task | None]) -> TaskChoice:
    """The task to rank for: the first one declared, else :data:`DEFAULT_TASK`, with a sentence saying which and why.

    Parameters
    ----------
    *declarations : (where, task) pairs, most binding first
        Where a task may be declared and what it declares there (None: nothing), e.g.
        ``("--task", args.task), ("bank.yaml", bank_task("bank.yaml"))``.

    Returns
    -------
    TaskChoice
        Its ``message`` names the task, where it was declared (or that it was assumed, and how to
        declare another), what the task's defaults are, and any later declaration it overrides.

    Raises
    ------
    ValueError
        An unknown task name, wherever it is declared (the message names where).

    Examples
    --------
    >>> resolve_task(("--task", "cells"), ("bank.yaml", "nuclei")).message.split(". ")[0]
    "Task: cells (declared by --task, overriding bank.yaml's task: nuclei)"
    """
    declared = []
    for where, task in declarations:
        if task is not None:
            try:
                declared.append((where, task_defaults(task)))
            except ValueError as error:  # say where the unknown name was declared
                raise ValueError(f"{where}: {error}") from None
    if declared:
        (where, task), others = declared[0], declared[1:]
        why = f"declared by {where}" + "".join(f", overriding {other_where}'s task: {other.name}"
                                               for other_where, other in others if other.name != task.name)
        source = where
    else:
        task, source = task_defaults(None), "assumed"
        places = " or ".join(where for where, _ in declarations) or "the bank (`task:`) or --task"
        why = (f"assumed: no task declared in {places}; for electron microscopy or dense tissue declare "
               + " or ".join(repr(name) for name in TASKS if name != DEFAULT_TASK))
    return TaskChoice(task, source, f"Task: {task.name} ({why}). Defaults for {task.description}: {task.summary()}.")


#: A bank whose typical model marks more than this share of the image as foreground is looking at dense tissue
#: (or fails on the whole image): worth saying when the task was only assumed.
DENSE_HINT_FRACTION = 0.9


def task_hint(choice: TaskChoice, guards: Mapping[str, ModelGuards]) -> str | None:
    """A sentence when an *assumed* task looks wrong for what the bank's clean predictions show, else None.

    Parameters
    ----------
    choice : TaskChoice
        From :func:`resolve_task`; a declared task is never second-guessed.
    guards : mapping of str to ModelGuards
        The guards of the bank on the target (their foreground fractions, no labels).

    Returns
    -------
    str or None
    """
    fractions = [g.foreground_fraction for g in guards.values() if g.foreground_fraction == g.foreground_fraction]
    if choice.source != "assumed" or not fractions:
        return None
    typical = sorted(fractions)[len(fractions) // 2]
    if typical > DENSE_HINT_FRACTION and choice.task.guards.flood_fraction is not None:
        return (f"the bank's typical model marks {typical:.0%} of the image as foreground, as on a dense tissue where "
                f"every pixel belongs to a cell; the assumed task ({choice.task.name}) calls that flooding. If this is "
                "dense tissue, declare the task: --task cells, or `task: cells` in the bank")
    return None
