"""StarDist adapter on a tiny StarDist2D trained here (no pretrained weights offline)."""

import numpy as np
import pytest

pytest.importorskip("stardist")

from cte_kit.scoring.consistency import summarize
from cte_kit.estimators.cte import pair_scores
from cte_kit.models import BankEntry, load_model
from cte_kit.models._common import PretrainedDownloadError
from cte_kit.models.stardist import StarDistModel
from cte_kit.perturb import FeatureDropout, InputPerturbation

pytestmark = pytest.mark.adapters


@pytest.fixture(scope="module")
def model(tiny_stardist_folder):
    return StarDistModel.from_folder(tiny_stardist_folder)


def test_plain_prediction_is_stardists_own(model, adapter_images):
    from csbdeep.utils import normalize

    predictions = model.predict(adapter_images)
    for image, prediction in zip(adapter_images, predictions):
        (labels, _), (prob, _) = model.stardist.predict_instances(normalize(image, 1, 99.8), sparse=False, return_predict=True)
        assert prediction.labels.dtype == np.int32 and np.array_equal(prediction.labels, labels)
        assert prediction.labels.max() > 0, "the tiny model should find nuclei"
        assert prediction.probability.shape == image.shape and prediction.probability.dtype == np.float32
        # grid (2, 2): each grid cell covers 2 x 2 pixels, starting at the top left
        np.testing.assert_allclose(prediction.probability[::2, ::2], prob[: (image.shape[0] + 1) // 2, : (image.shape[1] + 1) // 2], atol=1e-6)
    assert model.grey_box and model.bottleneck == "bottleneck" and model.bottleneck_layer == "middle_2"
    assert model.threshold == pytest.approx(model.stardist.thresholds.prob)


def test_dropout_zero_is_exact_and_rebuilt_model_shares_weights(model, adapter_images):
    plain = model.predict(adapter_images)
    for rate in (0.0, 1e-9):  # 1e-9: survivors scaled by 1/(1-1e-9) == 1 in float32, through the rebuilt model
        for pair, reference in zip(model.predict_pairs(adapter_images, FeatureDropout(rate), seed=3), plain):
            assert np.array_equal(pair.clean.probability, reference.probability)
            assert np.array_equal(pair.perturbed[0].probability, reference.probability)
            assert np.array_equal(pair.perturbed[0].labels, reference.labels)
    rebuilt, _ = model._perturbed_model(("middle_2",))
    assert rebuilt.get_layer("prob") is model.stardist.keras_model.get_layer("prob")
    assert rebuilt is not model.stardist.keras_model  # the plain model is back in place


def test_dropout_changes_output_and_is_seeded(model, adapter_images):
    first = model.predict_pairs(adapter_images, FeatureDropout(0.3), seed=1)
    again = model.predict_pairs(adapter_images, FeatureDropout(0.3), seed=1)
    other = model.predict_pairs(adapter_images, FeatureDropout(0.3), seed=2)
    for a, b, c in zip(first, again, other):
        assert not np.array_equal(a.clean.probability, a.perturbed[0].probability)
        assert np.array_equal(a.perturbed[0].probability, b.perturbed[0].probability)
        assert np.array_equal(a.perturbed[0].labels, b.perturbed[0].labels)
        assert not np.array_equal(a.perturbed[0].probability, c.perturbed[0].probability)
    # a batch of one gives the same draw as the image inside a batch of three
    alone = model.predict_pairs(adapter_images[1:2], FeatureDropout(0.3), seed=1)  # ids from the pixels
    assert np.array_equal(alone[0].perturbed[0].probability, first[1].perturbed[0].probability)


def test_layers_follow_csbdeep_naming(model):
    # unet_n_depth=2: two encoder levels above the bottleneck, two decoder levels below it
    assert model.layers == ("encoder0", "encoder1", "bottleneck", "decoder0", "decoder1")
    assert model._keras_names == {"bottleneck": "middle_2", "encoder0": "down_level_0_no_1", "encoder1": "down_level_1_no_1",
                                  "decoder0": "up_level_1_no_2", "decoder1": "up_level_0_no_2"}
    assert model.check_layers(["sym1"]) == ("encoder1", "decoder0")
    with pytest.raises(ValueError, match="sym2.*all"):
        model.check_layers(["sym5"])


def test_dropout_at_several_layers_draws_one_mask_per_layer(model, adapter_images):
    from cte_kit.models._common import channel_scales
    from cte_kit.perturb import image_seed

    targets = tuple(model._keras_names[n] for n in model.layers)
    pairs = model.predict_pairs(adapter_images[:1], FeatureDropout(0.5, ("all",)), seed=4, image_ids=[0])
    forked, forks = model._forked_model(targets)  # the clean + dropout pair runs forked
    model.predict_pairs(adapter_images[:1], FeatureDropout(0.5, ("all",)), seed=4, image_ids=[0], clean=[pairs[0].clean])
    rebuilt, scales = model._perturbed_model(targets)  # the dropout prediction alone
    for network, layers in ((forked, forks), (rebuilt, scales)):
        assert len(layers) == 5 and network.get_layer("prob") is model.stardist.keras_model.get_layer("prob")
        expected = channel_scales([int(s.scale.shape[0]) for s in layers], 0.5, image_seed(4, 0, 0))
        for scale, mask in zip(layers, expected):
            np.testing.assert_array_equal(scale.scale.numpy(), mask.numpy())
    assert not np.array_equal(pairs[0].perturbed[0].probability, pairs[0].clean.probability)
    bottleneck = model.predict_pairs(adapter_images[:1], FeatureDropout(0.5), seed=4)
    assert not np.array_equal(bottleneck[0].perturbed[0].probability, pairs[0].perturbed[0].probability)


def test_dropping_every_channel_of_the_last_decoder_leaves_a_constant_map(model, adapter_images):
    # nothing of the image reaches the heads, so the object probability is the same everywhere
    pair = model.predict_pairs(adapter_images[1:2], FeatureDropout(1 - 1e-7, ("decoder1",)), seed=0)[0]
    perturbed = pair.perturbed[0].probability
    assert np.ptp(pair.clean.probability) > 0.5 and np.ptp(perturbed) < 1e-6


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.2), InputPerturbation("noise", 0.1)], ids=["grey", "black"])
def test_cte_scores(model, adapter_images, perturbation):
    pairs = model.predict_pairs(adapter_images, perturbation, seed=0)
    for consistency, per_image in pair_scores(pairs, ("hard", "soft", "instance"), threshold=model.threshold).items():
        assert np.isfinite(per_image).all() and ((0 <= per_image) & (per_image <= 1)).all(), consistency
        assert 0 <= summarize(per_image).score <= 1


@pytest.mark.parametrize("layers", [("bottleneck",), ("encoder1",), ("encoder0", "decoder0")])
def test_forked_pair_equals_the_per_image_path_bit_for_bit(model, adapter_images, layers):
    """The forked Keras model (layers before the perturbed one run once) gives exactly the plain
    prediction and exactly the dropout prediction of the rebuilt model."""
    from cte_kit.models.base import SegmentationModel
    from cte_kit.perturb import image_seed

    dropout = FeatureDropout(0.3, layers)
    arrays = [model.prepare(image) for image in adapter_images]
    seeds = [image_seed(5, index, 0) for index in range(len(arrays))]
    clean, perturbed = model._predict_feature_pairs(arrays, dropout, seeds)
    reference_clean, reference_perturbed = SegmentationModel._predict_feature_pairs(model, arrays, dropout, seeds)
    for shared, reference in zip(clean + perturbed, reference_clean + reference_perturbed):
        assert np.array_equal(shared.probability, reference.probability) and np.array_equal(shared.labels, reference.labels)
    assert not np.array_equal(perturbed[0].probability, clean[0].probability)


def test_n_pert_runs_the_network_once_per_draw_and_clean_reuse_gives_the_same_pairs(model, adapter_images, monkeypatch):
    from keras import Model

    calls = []
    predict = Model.predict
    monkeypatch.setattr(Model, "predict", lambda self, x, **kw: calls.append((self, len(x))) or predict(self, x, **kw))
    pairs = model.predict_pairs(adapter_images[:1], FeatureDropout(0.3), seed=2, n_pert=3)
    targets = (model.bottleneck_layer,)
    forked, rebuilt = model._forked_model(targets)[0], model._perturbed_model(targets)[0]
    # draw 0: one forked call (clean + perturbed); draws 1 and 2: the dropout model alone; never the plain one
    assert calls == [(forked, 1), (rebuilt, 1), (rebuilt, 1)]
    monkeypatch.setattr(Model, "predict", predict)
    reused = model.predict_pairs(adapter_images[:1], FeatureDropout(0.3), seed=2, n_pert=3, clean=model.predict(adapter_images[:1]))
    for a, b in zip(pairs[0].perturbed, reused[0].perturbed):
        assert np.array_equal(a.probability, b.probability) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.3), InputPerturbation("noise", 0.2)], ids=["grey", "black"])
def test_pairs_do_not_depend_on_the_batch(model, adapter_images, perturbation):
    """Resuming after a crash batches images differently: an image's pair must not change, bit for bit."""
    together = model.predict_pairs(adapter_images, perturbation, seed=3, image_ids=[10, 11, 12])
    alone = model.predict_pairs(adapter_images[1:2], perturbation, seed=3, image_ids=[11])
    for a, b in zip((together[1].clean, together[1].perturbed[0]), (alone[0].clean, alone[0].perturbed[0])):
        assert np.array_equal(a.probability, b.probability) and np.array_equal(a.labels, b.labels)


def test_foreground_of_hard_consistency_and_f1_is_the_mask_foreground(model, adapter_images):
    """StarDist's object probability is high only near object centres: its masks, not that map, are the foreground."""
    from tiny_models import training_data

    from cte_kit.evaluation.performance import performance
    from cte_kit.scoring.consistency import pair_consistency

    _, labels = training_data(n_images=3, size=100, seed=11)  # the labels of the conftest's adapter images
    truth = [labels[0][:90, :77], labels[1][:100, :100], labels[2][:72, :95]]
    pairs = model.predict_pairs(adapter_images, InputPerturbation("noise", 0.2), seed=0)
    clean = [pair.clean for pair in pairs]
    scores = performance(truth, clean, model.threshold)
    def overlap(a, b):  # by hand: |A & B|, |A| + |B|, |A | B|
        return np.sum(a & b), np.sum(a) + np.sum(b), np.sum(a | b)

    for index, (pair, reference) in enumerate(zip(pairs, truth)):
        masks = pair.clean.labels > 0
        # the test can fail: the map binarised at prob_thresh is a different foreground
        assert (masks != (pair.clean.probability > model.threshold)).mean() > 0.02
        both, total, union = overlap(reference > 0, masks)
        assert scores["f1"][index] == pytest.approx(2 * both / total)
        assert scores["iou"][index] == pytest.approx(both / union)
        both, _, union = overlap(masks, pair.perturbed[0].labels > 0)
        assert pair_consistency(pair.clean, pair.perturbed[0], "hard", threshold=model.threshold) == pytest.approx(both / union)


def test_tiling_matches_whole_image(tiny_stardist_folder, adapter_images):
    tiled = StarDistModel.from_folder(tiny_stardist_folder, tile_size=48)
    whole = StarDistModel.from_folder(tiny_stardist_folder)
    image = adapter_images[1]
    assert tiled._n_tiles(image.shape) == (3, 3)
    a, b = tiled.predict([image])[0], whole.predict([image])[0]
    np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)
    pairs = tiled.predict_pairs([image], FeatureDropout(0.3), seed=1)
    assert not np.array_equal(pairs[0].perturbed[0].probability, a.probability)


def test_bank_entry_and_settings(tiny_stardist_folder):
    entry = BankEntry("sd", "stardist", path=str(tiny_stardist_folder),
                      settings={"percentiles": [2, 99], "prob_thresh": 0.6, "nms_thresh": 0.3, "batch_size": 2})
    model = load_model(entry)
    assert isinstance(model, StarDistModel) and model.name == "sd"
    assert model.percentiles == (2.0, 99.0) and model.prob_thresh == 0.6 and model.batch_size == 2
    assert model.describe()["box"] == "grey"
    with pytest.raises(ValueError, match="unknown StarDistModel setting.*diameter.*known"):
        load_model(BankEntry("sd", "stardist", path=str(tiny_stardist_folder), settings={"diameter": 17}))
    with pytest.raises(FileNotFoundError, match="config.json"):
        StarDistModel.from_folder(tiny_stardist_folder.parent)


def test_offline_pretrained_error_says_what_to_place_where(monkeypatch, tmp_path):
    import csbdeep.models.pretrained as pretrained

    def offline(fname, origin, **kwargs):
        raise Exception(f"URL fetch failure on {origin}: None -- [Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(pretrained, "get_file", offline)
    with pytest.raises(PretrainedDownloadError) as info:
        StarDistModel.from_pretrained("2D_versatile_fluo")
    message = str(info.value)
    assert "2D_versatile_fluo.zip" in message
    assert "https://github.com/stardist/stardist-models/releases/download/v0.1/python_2D_versatile_fluo.zip" in message
    assert str(tmp_path / "models" / "StarDist2D" / "2D_versatile_fluo" / "2D_versatile_fluo.zip") in message
    assert "KERAS_HOME" in message and "path:" in message
    with pytest.raises(ValueError, match="unknown StarDist pretrained model 'nonsense'.*2D_versatile_fluo"):
        StarDistModel.from_pretrained("nonsense")
    # through a bank entry, whose `name` must not collide with the pretrained name
    with pytest.raises(PretrainedDownloadError, match="2D_versatile_fluo.zip"):
        load_model(BankEntry("versatile", "stardist", pretrained="2D_versatile_fluo"))


def test_without_tensorflow_the_error_says_what_to_install(monkeypatch):
    """csbdeep's bare "RuntimeError: Please install TensorFlow" becomes the kit's ImportError naming the extra."""
    import builtins
    import sys

    from cte_kit.models.stardist import _import_stardist

    for name in [name for name in sys.modules if name.split(".")[0] in ("tensorflow", "stardist", "csbdeep", "keras")]:
        monkeypatch.delitem(sys.modules, name)
    real_import = builtins.__import__

    def no_tensorflow(name, *args, **kwargs):
        if name.split(".")[0] == "tensorflow":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorflow)
    with pytest.raises(ImportError, match=r"cte_kit\[tensorflow\]"):
        _import_stardist()
