"""Seeds of perturbations, from what is perturbed: the run seed, the image's key and the draw."""

from __future__ import annotations

import numpy as np

__all__ = ["image_seed"]


def image_seed(seed: int, image_id: int, draw: int) -> int:
    """A 63-bit seed for one (run seed, image, draw), independent of batching and order."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(image_id) & 0xFFFFFFFF, int(draw)])
    return int(state.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))
