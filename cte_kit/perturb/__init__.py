"""Perturbations of the input image (:mod:`.input`) and of intermediate features (:mod:`.dropout`).

Two families, as in Talks & Kreshuk (section 2.2). A perturbation is a small frozen dataclass;
:func:`parse_perturbation` reads the command-line form (``"dropout:0.2"``, ``"noise:0.03-0.07"``,
``"gamma:0.8"``) and :func:`image_seed` fixes every random number from the image's key.
"""

from .dropout import DEFAULT_DROPOUT, FeatureDropout, capture_outputs, feature_dropout, spatial_dropout
from .input import INPUT_KINDS, NEUTRAL_STRENGTH, InputPerturbation
from .parse import Perturbation, parse_perturbation
from .seeds import image_seed

__all__ = ["DEFAULT_DROPOUT", "INPUT_KINDS", "NEUTRAL_STRENGTH", "FeatureDropout", "InputPerturbation",
           "Perturbation", "capture_outputs", "feature_dropout", "image_seed", "parse_perturbation",
           "spatial_dropout"]
