"""Percentile normalisation bounds: numpy's percentiles of the float32 image, and the image left as it was."""

import numpy as np
import pytest

from cte_kit.data.images import normalize_percentile, percentile_range


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.float64])
def test_percentile_range_is_numpys_and_leaves_the_image_alone(dtype):
    rng = np.random.default_rng(1)
    image = (rng.gamma(2.0, 300.0, (301, 97))).astype(dtype)
    before = image.copy()
    bounds = percentile_range(image, 1.0, 99.8)
    assert bounds == tuple(np.percentile(image.astype(np.float32), [1.0, 99.8]))
    np.testing.assert_array_equal(image, before)  # the partition works on a copy, never on the caller's array
    x = image.astype(np.float32)
    np.testing.assert_array_equal(normalize_percentile(image), ((x - bounds[0]) / (bounds[1] - bounds[0] + 1e-10)).astype(np.float32))
