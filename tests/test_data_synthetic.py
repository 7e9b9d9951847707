"""Synthetic domains beyond nuclei: EM sections with mitochondria and dense tissue."""

import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import measure

from cte_kit.data.synthetic import DENSE_TISSUE, EM_FIBSEM, EM_SSTEM, SyntheticTissueDomain, generate_tissue


def test_dense_tissue_is_all_cells_with_walls_between_them():
    tissue = generate_tissue(DENSE_TISSUE, 2, shape=(80, 96), seed=3)
    for image, cells, walls, mito in zip(tissue.images, tissue.cells, tissue.membranes, tissue.mitochondria):
        assert image.shape == cells.shape == (80, 96) and image.dtype == np.uint8
        assert cells.min() >= 1 and not mito.any()  # every pixel belongs to a cell; no mitochondria
        # a wall pixel is within one pixel of another cell's pixel (checked by hand with shifted copies)
        neighbour_differs = np.zeros(cells.shape, bool)
        for axis in (0, 1):
            for shift in (1, -1):
                neighbour_differs |= np.roll(cells, shift, axis=axis) != cells
        assert (walls.astype(bool) <= ndi.binary_dilation(neighbour_differs, iterations=2)).all()
        assert image[walls > 0].mean() > image[walls == 0].mean() + 20  # a membrane stain: bright walls


def test_em_mitochondria_are_sparse_dark_objects_inside_single_cells():
    for domain in (EM_SSTEM, EM_FIBSEM):
        em = generate_tissue(domain, 4, shape=(192, 192), seed=1)
        fraction = np.mean([(mito > 0).mean() for mito in em.mitochondria])
        assert 0.02 < fraction < 0.12, (domain.name, fraction)  # a few % of the section
        for image, cells, walls, mito in zip(em.images, em.cells, em.membranes, em.mitochondria):
            sizes = np.bincount(mito.ravel())[1:]
            assert (sizes[sizes > 0] >= 100).all()  # 0.1 um and more at ~5 nm per pixel
            assert not (walls.astype(bool) & (mito > 0)).any()
            for region in measure.regionprops(mito.astype(np.int32)):
                assert len(np.unique(cells[tuple(region.coords.T)])) == 1  # a mitochondrion never crosses a membrane
            cytoplasm = (mito == 0) & (walls == 0)
            assert image[mito > 0].mean() < image[cytoplasm].mean() - 15  # darker than the cytoplasm


def test_tissue_is_a_function_of_domain_count_shape_and_seed():
    first = generate_tissue(EM_SSTEM, 3, shape=(64, 64), seed=9)
    again = generate_tissue(EM_SSTEM, 2, shape=(64, 64), seed=9)
    assert all(np.array_equal(a, b) for a, b in zip(first.images[:2], again.images))
    assert not np.array_equal(first.images[0], generate_tissue(EM_SSTEM, 1, shape=(64, 64), seed=10).images[0])
    assert first.names == ["em_sstem_000", "em_sstem_001", "em_sstem_002"]
    with pytest.raises(ValueError, match="mito_radius"):
        SyntheticTissueDomain(mito_radius=(5.0, 2.0))
    with pytest.raises(ValueError, match="n_images"):
        generate_tissue(EM_SSTEM, 0)
