"""Large images in tiles: windows, stitching, and a tiled U-Net that predicts what the whole image gives."""

import numpy as np
import pytest
import torch
from skimage import measure

from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.estimators.cte import pair_scores
from cte_kit.models.tiling import Stitcher, Tiling, tile_windows
from cte_kit.models.unet import UNetConfig, UNetModel, receptive_radius
from cte_kit.perturb import FeatureDropout, InputPerturbation
from cte_kit.types import Prediction


def test_cores_partition_the_image_and_tiles_meet_the_pooling_grid():
    tiling = Tiling(size=100, margin=13, align=8)  # margin rounds up to 16: cores of 64
    assert tiling.core == 64 and not tiling.applies((100, 100)) and tiling.applies((101, 40))
    windows = tile_windows((150, 203, 3), tiling)
    covered = np.zeros((150, 203), int)
    for window in windows:
        covered[window.core] += 1
        tile_rows, tile_columns = window.tile
        assert tile_rows.start % 8 == 0 and tile_columns.start % 8 == 0
        assert tile_rows.stop - tile_rows.start <= 100 and tile_columns.stop - tile_columns.start <= 100
        for tile, core, inner in zip(window.tile, window.core, window.inner):
            assert core.start - tile.start == inner.start and core.stop - tile.start == inner.stop
            assert tile.start == max(core.start - 16, 0) and tile.stop == min(core.stop + 16, (150, 203)[window.tile.index(tile)])
    assert (covered == 1).all() and len(windows) == 3 * 4
    with pytest.raises(ValueError, match="leaves no core"):
        Tiling(size=36, margin=16, align=8)


def _cut(labels, probability):
    """A predictor of tiles that crops a known whole-image prediction (a perfectly translation-invariant model)."""
    return lambda window: Prediction(probability=probability[window.tile], labels=labels[window.tile])


def _same_objects(a, b) -> bool:
    """Two label images with the same objects, whatever their ids."""
    pairs = {(x, y) for x, y in zip(a.ravel(), b.ravel())}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def test_stitched_objects_are_whole_when_no_wider_than_the_margin():
    data = generate(DEMO_TARGET, 1, shape=(180, 170), seed=4)
    labels = data.labels[0].astype(np.int32)
    widest = max(max(r.bbox[2] - r.bbox[0], r.bbox[3] - r.bbox[1]) for r in measure.regionprops(labels))
    probability = (labels > 0).astype(np.float32) * 0.9
    tiling = Tiling(size=32 + 2 * widest, margin=widest, align=4)
    stitcher = Stitcher(labels.shape)
    for window in tile_windows(labels.shape, tiling):
        stitcher.add(window, _cut(labels, probability)(window))
    stitched = stitcher.result()
    assert np.array_equal(stitched.probability, probability) and stitched.labels.dtype == np.uint16
    assert _same_objects(stitched.labels, labels)
    # an object wider than the margin (a band across every seam) is split at seams, but no pixel is lost
    band = np.zeros((100, 100), np.int32)
    band[40:60, :] = 1
    stitcher = Stitcher(band.shape)
    for window in tile_windows(band.shape, Tiling(size=48, margin=8, align=4)):
        stitcher.add(window, _cut(band, band.astype(np.float32))(window))
    assert np.array_equal(stitcher.result().labels > 0, band > 0)


def test_stitched_labels_take_the_smallest_type_that_holds_their_ids():
    # 67 600 one-pixel objects (260 x 260, two pixels apart): more than uint16 holds
    dots = np.zeros((520, 520), np.int32)
    dots[::2, ::2] = np.arange(1, 260 * 260 + 1).reshape(260, 260)
    tiling = Tiling(size=128, margin=8, align=4)
    stitcher = Stitcher(dots.shape)
    for window in tile_windows(dots.shape, tiling):
        stitcher.add(window, _cut(dots, (dots > 0).astype(np.float32))(window))
    labels = stitcher.result().labels
    assert labels.dtype == np.int32 and labels.max() == 260 * 260 and _same_objects(labels, dots)
    # tiles whose ids are far apart (a library that numbers objects sparsely) stitch in uint16: ids are
    # given to the objects of each core, not taken from the tile
    sparse = np.where(dots[:64, :64] > 0, dots[:64, :64] * 1000, 0)
    stitcher = Stitcher(sparse.shape)
    for window in tile_windows(sparse.shape, Tiling(size=32, margin=8, align=4)):
        stitcher.add(window, _cut(sparse, (sparse > 0).astype(np.float32))(window))
    labels = stitcher.result().labels
    assert labels.dtype == np.uint16 and labels.max() == 32 * 32 and _same_objects(labels, sparse)


@pytest.fixture(scope="module")
def image():
    return generate(DEMO_TARGET, 1, shape=(200, 150), seed=1).images[0]


def _network(levels: int, output: str = "foreground"):
    """An untrained U-Net whose head is scaled so that its probabilities are decisive (few pixels near 0.5)."""
    torch.manual_seed(levels)
    config = UNetConfig(levels=levels, width=4, output=output)
    network = config.build().eval()
    network.head.weight.data.mul_(300.0)
    return network, config


@pytest.mark.parametrize("levels, tile", [(3, 128), (4, 192)])
def test_a_tiled_unet_predicts_what_the_whole_image_gives(image, levels, tile):
    network, config = _network(levels, "foreground+boundary")
    whole = UNetModel(name="whole", network=network, config=config, instances="watershed", tile_size=None)
    tiled = UNetModel(name="tiled", network=network, config=config, instances="watershed", tile_size=tile)
    assert tiled._tiling().margin == receptive_radius(levels) and len(tile_windows(image.shape, tiled._tiling())) >= 6
    for perturbation in (InputPerturbation("gamma", 0.7), InputPerturbation("contrast", 0.6), FeatureDropout(0.3),
                         FeatureDropout(0.2, ("all",))):
        (expected,), (found,) = (model.predict_pairs([image], perturbation, image_ids=[7]) for model in (whole, tiled))
        for a, b in ((expected.clean, found.clean), (expected.perturbed[0], found.perturbed[0])):
            assert np.abs(a.probability - b.probability).max() < 1e-4, perturbation
            assert ((a.labels > 0) != (b.labels > 0)).mean() < 1e-3, perturbation
        values = [pair_scores([pair], ("hard", "soft", "instance")) for pair in (expected, found)]
        for consistency in ("hard", "soft", "instance"):
            assert values[0][consistency][0] == pytest.approx(values[1][consistency][0], abs=1e-3, nan_ok=True), consistency
    # a dropout pair whose clean prediction is known (the runner's second setting) tiles the same way
    (again,) = tiled.predict_pairs([image], FeatureDropout(0.3), image_ids=[7], clean=whole.predict([image]))
    (reference,) = whole.predict_pairs([image], FeatureDropout(0.3), image_ids=[7])
    assert np.abs(again.perturbed[0].probability - reference.perturbed[0].probability).max() < 1e-4


def test_a_model_at_half_scale_tiles_with_its_context_in_image_pixels(image):
    network, config = _network(3)
    whole, tiled = (UNetModel(name="m", network=network, config=config, scale=0.5, tile_size=size) for size in (None, 128))
    assert tiled._tiling().margin == -(-(receptive_radius(3) + 2) * 2 // 1) and tiled._tiling().align == 2 * network.divisor
    assert len(tile_windows(image.shape, tiled._tiling())) >= 4
    (expected,), (found,) = whole.predict([image]), tiled.predict([image])
    # a tile is resampled on its own grid, which meets the whole image's grid at the aligned starts
    assert np.abs(expected.probability - found.probability).max() < 1e-3
    assert ((expected.labels > 0) != (found.labels > 0)).mean() < 1e-3


def test_tiled_components_are_the_whole_images_components(image):
    network, config = _network(3)
    whole, tiled = (UNetModel(name="m", network=network, config=config, tile_size=size) for size in (None, 96))
    expected, found = whole.predict([image])[0], tiled.predict([image])[0]
    assert len(tile_windows(image.shape, tiled._tiling())) == 20
    same = (expected.labels > 0) == (found.labels > 0)
    assert same.mean() > 0.999 and _same_objects(expected.labels[same], found.labels[same])


def test_tiles_and_batches_do_not_change_a_result(image):
    network, config = _network(3)
    model = UNetModel(name="m", network=network, config=config, tile_size=96)
    small = image[:80, :90]
    for perturbation in (FeatureDropout(0.3), InputPerturbation("noise", 0.1)):
        together = model.predict_pairs([image, small, image[::-1]], perturbation, image_ids=[1, 2, 3])
        apart = [model.predict_pairs([array], perturbation, image_ids=[i])[0]
                 for i, array in zip((1, 2, 3), (image, small, image[::-1]))]
        for a, b in zip(together, apart):
            assert np.array_equal(a.perturbed[0].probability, b.perturbed[0].probability), perturbation
    # a large image is normalised tile by tile, exactly as the whole image is
    assert np.array_equal(model.prepare(image)[:, :], UNetModel(name="w", network=network, config=config,
                                                                tile_size=None).prepare(image))
    with pytest.raises(ValueError, match="in tiles of 96 pixels"):
        model.layer_features([image], "bottleneck")


def test_a_tile_size_that_leaves_no_core_is_refused_when_the_model_loads():
    network, config = _network(4)  # margin 56 px on a stride of 8: a tile needs 2 * 56 + 8 px
    assert network.divisor == 8 and receptive_radius(4) == 56
    with pytest.raises(ValueError, match="tile_size 112 leaves no core inside margins of 56 pixels: use a tile_size of at least 120"):
        UNetModel(name="m", network=network, config=config, tile_size=112)
    assert UNetModel(name="m", network=network, config=config, tile_size=120)._tiling().core == 8


def test_pairs_without_probability_keep_the_labels_and_stitch_no_map(image):
    network, config = _network(3)
    tiled = UNetModel(name="m", network=network, config=config, tile_size=96)
    for perturbation in (InputPerturbation("gamma", 0.7), FeatureDropout(0.3)):
        (full,), (lean,) = (tiled.predict_pairs([image], perturbation, image_ids=[3], probability=keep)
                            for keep in (True, False))
        for a, b in ((full.clean, lean.clean), (full.perturbed[0], lean.perturbed[0])):
            assert a.probability is not None and b.probability is None
            np.testing.assert_array_equal(a.labels, b.labels)
    # a prediction without labels keeps its map: it is its foreground
    stitcher = Stitcher((10, 10), probability=False)
    for window in tile_windows((10, 10), Tiling(size=8, margin=2)):
        shape = tuple(part.stop - part.start for part in window.tile)
        stitcher.add(window, Prediction(probability=np.full(shape, 0.7, np.float32)))
    assert np.array_equal(stitcher.result().probability, np.full((10, 10), 0.7, np.float32))
