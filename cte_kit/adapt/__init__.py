"""After the ranking: adapt the chosen model to the unlabelled target (the SelfAdapt paper's recipe).

:func:`adapt_target` exposes a kit U-Net, a Cellpose 3 CPnet or a bioimage.io export of a kit
U-Net; :func:`adapt` runs the student-teacher loop with L2-SP, keeps a checkpoint at every
evaluation and records both label-free stopping signals; :func:`save_checkpoints` and
:func:`save_adapted` write weights a bank entry loads (:func:`checkpoint_entry`), with provenance.
All settings live in :class:`AdaptConfig`. Which checkpoint to keep is chosen on the runs floor
(:func:`cte_kit.runs.checkpoints.adapt_and_choose`), by ranking every checkpoint with the kit's
estimator.
"""

from .config import CRITERIA, AdaptConfig
from .loop import Adaptation, EvalPoint, adapt, load_step, save_adapted, save_checkpoints, weight_distance
from .stopping import StopPoint, choose_stop, embedding_distance, fn_rate
from .targets import ADAPTABLE_KINDS, AdaptTarget, adapt_target, checkpoint_entry, provenance_path

__all__ = ["AdaptConfig", "CRITERIA", "Adaptation", "EvalPoint", "adapt", "load_step", "save_adapted",
           "save_checkpoints", "weight_distance", "StopPoint", "choose_stop", "embedding_distance", "fn_rate",
           "ADAPTABLE_KINDS", "AdaptTarget", "adapt_target", "checkpoint_entry", "provenance_path"]
