"""After the ranking: adapt the chosen model to the unlabelled target (SelfAdapt, seed 004).

:func:`adapt_target` exposes a kit U-Net, a Cellpose 3 CPnet or a bioimage.io export of a kit
U-Net; :func:`adapt` runs the student-teacher loop with L2-SP and records both label-free
stopping signals; :func:`save_adapted` writes weights a bank entry loads, with provenance. All
settings live in :class:`AdaptConfig`.
"""

from .config import CRITERIA, AdaptConfig
from .loop import Adaptation, EvalPoint, adapt, load_step, save_adapted, weight_distance
from .stopping import StopPoint, choose_stop, embedding_distance, fn_rate
from .targets import ADAPTABLE_KINDS, AdaptTarget, adapt_target, provenance_path

__all__ = ["AdaptConfig", "CRITERIA", "Adaptation", "EvalPoint", "adapt", "load_step", "save_adapted",
           "weight_distance", "StopPoint", "choose_stop", "embedding_distance", "fn_rate", "ADAPTABLE_KINDS",
           "AdaptTarget", "adapt_target", "provenance_path"]
