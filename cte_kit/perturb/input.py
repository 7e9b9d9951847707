"""Input perturbations (black box), as in Talks & Kreshuk (section 2.2).

Additive Gaussian noise ``x + N(0, theta_N)``, brightness ``x + theta_B``, contrast
``mu(x) + theta_C (x - mu(x))`` and gamma ``sign(x) |x| ** theta_gamma``. They act on the
*normalised* float image and never clip, exactly as the official implementation inserts them
after percentile normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..types import InputTypeError

__all__ = ["INPUT_KINDS", "NEUTRAL_STRENGTH", "InputPerturbation"]

#: The input perturbation kinds and the strength at which each leaves the image unchanged.
NEUTRAL_STRENGTH = {"noise": 0.0, "brightness": 0.0, "contrast": 1.0, "gamma": 1.0}
INPUT_KINDS = tuple(NEUTRAL_STRENGTH)

def _as_strength(value) -> float | tuple[float, float]:
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"a strength range needs two values (low, high), got {value!r}")
        low, high = float(value[0]), float(value[1])
        if not (np.isfinite(low) and np.isfinite(high)) or low > high:
            raise ValueError(f"invalid strength range ({low}, {high}): need finite low <= high")
        return (low, high)
    strength = float(value)
    if not np.isfinite(strength):
        raise ValueError(f"strength must be finite, got {value!r}")
    return strength


@dataclass(frozen=True)
class InputPerturbation:
    """One input perturbation with a fixed strength or a per-image range.

    Parameters
    ----------
    kind : {'noise', 'brightness', 'contrast', 'gamma'}
        Which transform of eq. (1) of the paper.
    strength : float or (float, float)
        ``theta`` of the transform. A pair ``(low, high)`` draws ``theta ~ U(low, high)`` once
        per image, as the official implementation does.
    """

    kind: str
    strength: float | tuple[float, float]

    def __post_init__(self):
        if self.kind not in NEUTRAL_STRENGTH:
            raise ValueError(f"unknown input perturbation {self.kind!r}; choose from {INPUT_KINDS}")
        strength = _as_strength(self.strength)
        low = strength[0] if isinstance(strength, tuple) else strength
        if self.kind == "noise" and low < 0:
            raise ValueError("noise strength (standard deviation) must be >= 0")
        if self.kind == "gamma" and low <= 0:
            raise ValueError("gamma must be > 0")
        object.__setattr__(self, "strength", strength)

    @property
    def is_neutral(self) -> bool:
        """True when the transform returns its input unchanged."""
        return self.strength == NEUTRAL_STRENGTH[self.kind]

    @property
    def label(self) -> str:
        """Command-line form, e.g. ``'noise:0.05'`` or ``'gamma:0.8-1.2'``."""
        if isinstance(self.strength, tuple):
            return f"{self.kind}:{self.strength[0]:g}-{self.strength[1]:g}"
        return f"{self.kind}:{self.strength:g}"

    def draw_strength(self, rng: np.random.Generator) -> float:
        """The strength for one image: fixed, or drawn uniformly from the range."""
        if isinstance(self.strength, tuple):
            return float(rng.uniform(*self.strength))
        return float(self.strength)

    def apply(self, image: np.ndarray, rng: np.random.Generator, strength: float | None = None,
              mean: float | None = None) -> np.ndarray:
        """Perturb one normalised image, or one tile of a large image.

        Parameters
        ----------
        image : (H, W) or (H, W, C) float ndarray
            Normalised image. Integer images are refused: perturbations act after normalisation.
        rng : numpy.random.Generator
            Source of the noise and of a per-image strength.
        strength : float, optional
            The strength already drawn for the whole image (a tile of it is being perturbed).
        mean : float, optional
            The whole image's mean, which ``contrast`` scales about (a tile of it is being perturbed).

        Returns
        -------
        (H, W) or (H, W, C) float32 ndarray
            The perturbed image, not clipped. At the neutral strength the input values are
            returned unchanged (as float32).
        """
        image = np.asarray(image)
        if not np.issubdtype(image.dtype, np.floating):
            raise InputTypeError(
                f"input perturbations act on normalised float images, got dtype {image.dtype}; "
                "normalise first (cte_kit.data.normalize_percentile)"
            )
        image = image.astype(np.float32, copy=False)
        theta = self.draw_strength(rng) if strength is None else float(strength)
        if theta == NEUTRAL_STRENGTH[self.kind]:
            return image.copy()
        if self.kind == "noise":
            noise = rng.normal(0.0, theta, size=image.shape).astype(np.float32)
            return image + noise
        if self.kind == "brightness":
            return image + np.float32(theta)
        if self.kind == "contrast":
            mean = image.mean(dtype=np.float64) if mean is None else mean
            return (mean + theta * (image - mean)).astype(np.float32)
        # gamma: sign-preserving so that negative values of a normalised image stay defined
        return (np.sign(image) * np.abs(image) ** theta).astype(np.float32)
