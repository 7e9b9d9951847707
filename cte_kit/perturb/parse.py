"""A perturbation from its command-line form (``"dropout:0.2"``, ``"noise:0.03-0.07"``, ``"gamma:0.8"``)."""

from __future__ import annotations

from typing import Union

from .dropout import FeatureDropout
from .input import InputPerturbation

__all__ = ["Perturbation", "parse_perturbation"]

Perturbation = Union[InputPerturbation, FeatureDropout]


def parse_perturbation(text: str) -> Perturbation:
    """Read a perturbation from its command-line form.

    ``'dropout:0.2'``, ``'dropout:0.1@encoder2+bottleneck'``, ``'noise:0.05'``,
    ``'noise:0.03-0.07'`` (per-image range), ``'brightness:0.1'``, ``'contrast:0.8'``,
    ``'gamma:1.2'``.

    Examples
    --------
    >>> parse_perturbation("dropout:0.2")
    FeatureDropout(rate=0.2, layers=('bottleneck',))
    >>> parse_perturbation("noise:0.03-0.07").strength
    (0.03, 0.07)
    """
    if not isinstance(text, str) or ":" not in text:
        raise ValueError(
            f"perturbation {text!r} must look like KIND:STRENGTH, e.g. dropout:0.2 or noise:0.05"
        )
    kind, _, value = text.strip().partition(":")
    kind = kind.strip().lower()
    try:
        if kind == "dropout":
            value, _, layers = value.partition("@")
            layer_names = tuple(name for name in layers.split("+") if name) or ("bottleneck",)
            return FeatureDropout(float(value), layer_names)
        if "-" in value[1:]:
            split_at = value.index("-", 1)
            strength = (float(value[:split_at]), float(value[split_at + 1 :]))
        else:
            strength = float(value)
    except ValueError as error:
        raise ValueError(f"cannot read the strength in perturbation {text!r}: {error}") from None
    return InputPerturbation(kind, strength)
