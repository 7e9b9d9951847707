import numpy as np
import pytest
import torch

from cte_kit.data.synthetic import SyntheticDomain, generate
from cte_kit.models import NotGreyBoxError, SegmentationModel, read_bank, load_bank
from cte_kit.types import Prediction
from cte_kit.models.instances import connected_components, seeded_watershed
from cte_kit.models.training import TrainingConfig, train_unet, training_targets
from cte_kit.models.unet import UNetConfig, UNetModel, load_checkpoint, save_checkpoint
from cte_kit.perturb import FeatureDropout, InputPerturbation


def _random_unet(levels=3, output="foreground", seed=0):
    torch.manual_seed(seed)
    config = UNetConfig(levels=levels, width=8, output=output)
    network = config.build()
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return UNetModel(name=f"random{levels}", network=network, config=config)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 4000, size=(60, 90)).astype(np.uint16) for _ in range(3)]


@pytest.mark.parametrize("levels", [3, 4])
def test_layers_and_bottleneck(levels):
    model = _random_unet(levels)
    assert model.grey_box and model.bottleneck == "bottleneck"
    assert model.layers == tuple(f"encoder{i}" for i in range(levels - 1)) + ("bottleneck",) + tuple(f"decoder{i}" for i in range(levels - 1))
    bottleneck_channels = model.network.layer("bottleneck")[-2].num_features
    assert bottleneck_channels == 8 * 2 ** (levels - 1)


@pytest.mark.parametrize("levels", [3, 4])
def test_dropout_p0_reproduces_plain_prediction_exactly(images, levels):
    model = _random_unet(levels)
    plain = model.predict(images)
    for layers in (("bottleneck",), ("encoder0", "decoder1")):
        pairs = model.predict_pairs(images, FeatureDropout(0.0, layers))
        for pair, reference in zip(pairs, plain):
            assert np.array_equal(pair.clean.probability, reference.probability)
            assert np.array_equal(pair.perturbed[0].probability, reference.probability)
            assert np.array_equal(pair.perturbed[0].labels, reference.labels)


def test_dropout_changes_prediction_and_is_seeded(images):
    model = _random_unet()
    first = model.predict_pairs(images, FeatureDropout(0.3), seed=1)
    again = model.predict_pairs(images, FeatureDropout(0.3), seed=1)
    other = model.predict_pairs(images, FeatureDropout(0.3), seed=2)
    for a, b, c in zip(first, again, other):
        assert not np.array_equal(a.clean.probability, a.perturbed[0].probability)
        assert np.array_equal(a.perturbed[0].probability, b.perturbed[0].probability)
        assert not np.array_equal(a.perturbed[0].probability, c.perturbed[0].probability)


def test_results_do_not_depend_on_batching_or_order(images):
    model = _random_unet()
    batched = model.predict_pairs(images, FeatureDropout(0.3), seed=4)
    model.batch_size = 1
    reversed_pairs = model.predict_pairs(images[::-1], FeatureDropout(0.3), seed=4)[::-1]  # ids from the pixels
    for a, b in zip(batched, reversed_pairs):
        assert np.allclose(a.perturbed[0].probability, b.perturbed[0].probability, atol=1e-6)


def test_forked_pass_equals_hooked_full_pass(images):
    """Encoder-once/decoder-twice gives the same perturbed output as a separate perturbed forward."""
    model = _random_unet()
    forked = model.predict_pairs(images[:1], FeatureDropout(0.4), seed=0, image_ids=[0])[0]
    generic = SegmentationModel._predict_feature_pairs(model, [model.prepare(images[0])], FeatureDropout(0.4),
                                                        [forked_seed(0, 0)])[1][0]
    assert np.allclose(forked.perturbed[0].probability, generic.probability, atol=1e-5)


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.3), InputPerturbation("noise", 0.2)], ids=["grey", "black"])
def test_n_pert_computes_the_clean_pass_once_and_clean_reuse_gives_the_same_pairs(images, perturbation):
    model = _random_unet()
    encoder, decoder = [], []
    handles = [model.network.encoders[0].register_forward_pre_hook(lambda m, inputs: encoder.append(inputs[0].shape[0])),
               model.network.decoders[-1].register_forward_pre_hook(lambda m, inputs: decoder.append(inputs[0].shape[0]))]
    try:
        pairs = model.predict_pairs(images, perturbation, seed=6, n_pert=3)
    finally:
        for handle in handles:
            handle.remove()
    # draw 0 computes the clean pass too (dropout: encoder once, decoder on both halves; an input
    # perturbation: a call of its own, never more images than batch_size); draws 1 and 2 only the perturbed images
    if isinstance(perturbation, FeatureDropout):
        assert encoder == [3, 3, 3] and decoder == [6, 3, 3]
    else:
        assert encoder == decoder == [3, 3, 3, 3]
    reused = model.predict_pairs(images, perturbation, seed=6, n_pert=3, clean=model.predict(images))
    for pair, again in zip(pairs, reused):
        for a, b in zip(pair.perturbed, again.perturbed):
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.3), InputPerturbation("noise", 0.2)], ids=["grey", "black"])
def test_cte_does_not_depend_on_the_batch(images, perturbation):
    """Resuming after a crash batches images differently: one image alone (batch 1) or among others
    (batch 4) gets the same pair within float32 rounding of batched convolutions, and the same CTE."""
    from cte_kit.estimators.cte import pair_scores

    model = _random_unet()
    together = model.predict_pairs(images, perturbation, seed=3, image_ids=[10, 11, 12])
    model.batch_size = 1
    alone = model.predict_pairs(images[1:2], perturbation, seed=3, image_ids=[11])
    for a, b in zip((together[1].clean, together[1].perturbed[0]), (alone[0].clean, alone[0].perturbed[0])):
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-6)
    kinds = ("hard", "soft", "instance")
    for kind, score in pair_scores(alone, kinds).items():
        assert score[0] == pytest.approx(pair_scores(together[1:2], kinds)[kind][0], abs=1e-6), kind


def test_input_pairs_run_in_batches_of_batch_size_and_their_clean_pass_is_predict(images):
    """A doubled batch (clean + perturbed in one call) cost a kit U-Net 16 % more per image on a CPU."""
    model = _random_unet()
    model.batch_size = 2
    sizes = []
    handle = model.network.encoders[0].register_forward_pre_hook(lambda m, inputs: sizes.append(inputs[0].shape[0]))
    try:
        pairs = model.predict_pairs(images, InputPerturbation("gamma", 0.7), seed=1)
    finally:
        handle.remove()
    assert max(sizes) <= 2 and sum(sizes) == 2 * len(images)
    for pair, plain in zip(pairs, model.predict(images)):
        assert np.array_equal(pair.clean.probability, plain.probability)
        assert np.array_equal(pair.clean.labels, plain.labels)


def forked_seed(seed, image_id):
    from cte_kit.perturb import image_seed

    return image_seed(seed, image_id, 0)


@pytest.mark.parametrize("kind, neutral", [("noise", 0.0), ("brightness", 0.0), ("contrast", 1.0), ("gamma", 1.0)])
def test_neutral_input_perturbation_reproduces_prediction(images, kind, neutral):
    model = _random_unet()
    for pair in model.predict_pairs(images, InputPerturbation(kind, neutral)):
        assert np.array_equal(pair.clean.probability, pair.perturbed[0].probability)


def test_n_pert_draws_differ(images):
    model = _random_unet()
    pair = model.predict_pairs(images[:1], FeatureDropout(0.3), n_pert=3)[0]
    assert len(pair.perturbed) == 3
    assert not np.array_equal(pair.perturbed[0].probability, pair.perturbed[1].probability)


def test_unknown_layer_and_bad_inputs(images):
    model = _random_unet()
    with pytest.raises(ValueError, match="no layer"):
        model.predict_pairs(images, FeatureDropout(0.2, ("decoder7",)))
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        model.predict([np.zeros((2, 30, 30, 30))])
    with pytest.raises(ValueError, match="grey image"):
        model.predict([np.zeros((30, 30, 3), np.uint8)])
    with pytest.raises(ValueError, match="NaN"):
        model.predict([np.full((30, 30), np.nan, np.float32)])
    with pytest.raises(ValueError, match="sequence of images"):
        model.predict(np.zeros((30, 30)))
    with pytest.raises(TypeError, match="numeric"):
        model.predict([np.zeros((30, 30), bool)])


def test_rgb_can_be_converted_when_asked():
    model = _random_unet()
    model.rgb = "grey"
    colour = np.random.default_rng(0).integers(0, 255, (32, 32, 3)).astype(np.uint8)
    assert model.predict([colour])[0].probability.shape == (32, 32)


class _BlackBox(SegmentationModel):
    def _predict_normalised(self, batch):
        return [Prediction(probability=np.clip(image, 0, 1)) for image in batch]


def test_black_box_refuses_feature_dropout_but_takes_input_perturbation(images):
    model = _BlackBox(name="bb")
    assert not model.grey_box and model.bottleneck is None
    with pytest.raises(NotGreyBoxError, match="black box"):
        model.predict_pairs(images, FeatureDropout(0.2))
    pairs = model.predict_pairs(images, InputPerturbation("brightness", 0.1))
    assert np.allclose(pairs[0].perturbed[0].probability, np.clip(model.prepare(images[0]) + 0.1, 0, 1))


def test_checkpoint_roundtrip_and_errors(tmp_path, images):
    model = _random_unet(output="foreground+boundary")
    path = save_checkpoint(model.network, model.config, tmp_path / "m.pt", settings={"threshold": 0.4, "instances": "watershed"})
    reloaded = UNetModel.from_checkpoint(path)
    assert reloaded.threshold == 0.4 and reloaded.instances == "watershed" and reloaded.name == "m"
    assert np.array_equal(reloaded.predict(images)[0].probability, model.predict(images)[0].probability)
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a cte_kit U-Net checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="unknown U-Net setting"):
        UNetModel.from_checkpoint(path, colour="blue")


def test_bank_yaml_loads_unets(tmp_path):
    model = _random_unet()
    save_checkpoint(model.network, model.config, tmp_path / "weights" / "a.pt")
    bank = tmp_path / "bank.yaml"
    bank.write_text("models:\n  - name: first\n    kind: unet\n    path: weights/a.pt\n    threshold: 0.6\n")
    entries = read_bank(bank)
    assert entries[0].path == str((tmp_path / "weights" / "a.pt").resolve())
    loaded = load_bank(bank)[0]
    assert loaded.name == "first" and loaded.threshold == 0.6
    for text, message in [("models: []", "non-empty"), ("models:\n  - {name: a, kind: tf, path: x}", "unknown kind"),
                          ("models:\n  - {name: a, kind: unet}", "exactly one of"),
                          ("models:\n  - {name: a, kind: unet, path: x}\n  - {name: a, kind: unet, path: y}", "duplicate")]:
        bank.write_text(text)
        with pytest.raises(ValueError, match=message):
            read_bank(bank)


def test_instances_components_and_watershed():
    probability = np.zeros((40, 60), np.float32)
    yy, xx = np.mgrid[:40, :60]
    for cy, cx in ((20, 20), (20, 33)):
        probability[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = 0.9
    assert connected_components(probability).max() == 1  # touching discs merge
    split = seeded_watershed(probability)
    assert split.max() == 2
    assert np.array_equal(split > 0, probability > 0.5)
    boundary = np.zeros_like(probability)
    boundary[:, 26:28] = 0.9
    assert seeded_watershed(probability, boundary).max() == 2
    assert seeded_watershed(np.zeros((10, 10))).max() == 0


def test_training_targets():
    labels = np.zeros((10, 10), int)
    labels[2:5, 2:5] = 1
    labels[2:5, 5:8] = 2
    targets = training_targets(labels, "foreground+boundary")
    assert targets.shape == (2, 10, 10)
    assert targets[0].sum() == 18
    assert targets[1][3, 4] == 1 and targets[1][3, 5] == 1 and targets[1][3, 3] == 0


def test_training_learns_and_checkpoint_reloads(tmp_path):
    domain = SyntheticDomain(radius=(5, 7), density=20, snr=20, blur=0.5)
    data = generate(domain, 6, shape=(64, 64), seed=0)
    torch.set_num_threads(2)
    model = train_unet(data.images, data.labels, UNetConfig(width=8), TrainingConfig(steps=60, batch_size=4, patch_size=48),
                       out=tmp_path / "m.pt", progress=False)
    test = generate(domain, 2, shape=(64, 64), seed=99)
    prediction = model.predict(test.images)[0]
    foreground = test.labels[0] > 0
    dice = 2 * (prediction.probability > 0.5)[foreground].sum() / ((prediction.probability > 0.5).sum() + foreground.sum())
    assert dice > 0.6
    reloaded = UNetModel.from_checkpoint(tmp_path / "m.pt")
    assert np.array_equal(reloaded.predict(test.images)[0].probability, prediction.probability)
    _, _, settings, history = load_checkpoint(tmp_path / "m.pt")
    assert settings["percentiles"] == [1.0, 99.8] and history["n_images"] == 6


def test_dropping_every_channel_of_the_last_decoder_leaves_a_constant_map(images):
    model = _random_unet()
    pair = model.predict_pairs(images[:1], FeatureDropout(1 - 1e-7, ("decoder1",)))[0]
    # the head sees only zeros, so every pixel gets sigmoid(bias)
    expected = torch.sigmoid(model.network.head.bias[0]).item()
    np.testing.assert_allclose(pair.perturbed[0].probability, expected, atol=1e-6)
    assert np.ptp(pair.clean.probability) > 0


def test_training_device_is_checked_before_any_work():
    with pytest.raises(ValueError, match="unknown torch device 'gpu0'"):
        train_unet([np.zeros((64, 64))], [np.zeros((64, 64), int)], training=TrainingConfig(device="gpu0"), progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train_unet([np.zeros((64, 64))], [np.zeros((64, 64), int)], training=TrainingConfig(device="cuda"),
                       progress=False)


def test_training_input_errors():
    with pytest.raises(ValueError, match="no training images"):
        train_unet([], [], progress=False)
    with pytest.raises(ValueError, match="label images"):
        train_unet([np.zeros((64, 64))], [], progress=False)
    with pytest.raises(ValueError, match="does not match"):
        train_unet([np.zeros((64, 64))], [np.zeros((32, 32), int)], training=TrainingConfig(steps=1, patch_size=32),
                   progress=False)


def _unet_seeing(probability, boundary, **settings):
    """A foreground+boundary kit U-Net whose network outputs exactly these maps, whatever the image."""
    model = _random_unet(output="foreground+boundary")
    logits = torch.logit(torch.from_numpy(np.stack([probability, boundary])).clamp(1e-4, 1 - 1e-4))[None]
    model.network.register_forward_hook(lambda _module, inputs, _output: logits.expand(inputs[0].shape[0], -1, -1, -1))
    for key, value in settings.items():
        setattr(model, key, value)
    return model


def test_declared_instance_method_is_used(tmp_path):
    from test_models_instances import dense_tissue

    truth, probability, boundary = dense_tissue(3)
    n_true = len(np.unique(truth))
    image = np.zeros((128, 128), np.float32)
    assert _unet_seeing(probability, boundary, instances="components").predict([image])[0].labels.max() == 1
    labels = _unet_seeing(probability, boundary, instances="dt_watershed").predict([image])[0].labels
    assert abs(labels.max() - n_true) <= 0.1 * n_true and (labels > 0).all()
    # the method travels in the checkpoint and a bank entry overrides it
    model = _unet_seeing(probability, boundary)
    path = save_checkpoint(model.network, model.config, tmp_path / "m.pt", settings={"instances": "dt_watershed"})
    assert UNetModel.from_checkpoint(path).instances == "dt_watershed"
    bank = tmp_path / "bank.yaml"
    bank.write_text("models:\n  - {name: a, kind: unet, path: m.pt}\n  - {name: b, kind: unet, path: m.pt, instances: components}\n")
    assert [m.instances for m in load_bank(bank)] == ["dt_watershed", "components"]
    with pytest.raises(ValueError, match="unknown instance method"):
        UNetModel.from_checkpoint(path, instances="plantseg")


def test_training_declares_dt_watershed_for_dense_tissue(tmp_path):
    from test_models_instances import dense_tissue

    dense = [dense_tissue(seed)[0] for seed in range(2)]
    sparse = [np.where(labels % 3 == 0, labels, 0) for labels in dense]  # a third of the cells on a background
    images = [np.random.default_rng(seed).normal(size=(128, 128)).astype(np.float32) for seed in range(2)]
    config, training = UNetConfig(width=4, output="foreground+boundary"), TrainingConfig(steps=1, batch_size=1, patch_size=32)
    assert train_unet(images, dense, config, training, out=tmp_path / "d.pt", progress=False).instances == "dt_watershed"
    assert load_checkpoint(tmp_path / "d.pt")[2]["instances"] == "dt_watershed"
    assert train_unet(images, sparse, config, training, progress=False).instances == "watershed"
    assert train_unet(images, dense, UNetConfig(width=4), training, progress=False).instances == "components"
    assert train_unet(images, dense, config, training, instances="watershed", progress=False).instances == "watershed"
    with pytest.raises(ValueError, match="unknown instance method"):
        train_unet(images, dense, config, training, instances="plantseg", progress=False)


def test_boundary_weight_weighs_the_boundary_loss():
    from cte_kit.models.training import _loss

    logits = torch.zeros(1, 2, 4, 4)
    target = torch.zeros(1, 2, 4, 4)
    target[:, 1, 0, 0] = 1  # only the boundary channel is wrong somewhere
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((0, 2, 3))
    dice = 1 - (2 * (0.5 * target).sum((0, 2, 3)) + 1) / (0.5 * 16 + target.sum((0, 2, 3)) + 1)
    for weight in (1.0, 3.0):
        weights = torch.tensor([1.0, weight]) / (1 + weight)
        expected = ((bce + dice) * weights).sum()
        assert torch.isclose(_loss(logits, target, weights), expected)
    with pytest.raises(ValueError, match="boundary_weight"):
        TrainingConfig(boundary_weight=0)


def test_scaled_model_predicts_at_its_scale_and_returns_the_image_size(images):
    from skimage.transform import resize as sk_resize

    half = _random_unet(output="foreground+boundary")
    half.scale, half.percentiles = 0.5, None
    full = UNetModel(name="full", network=half.network, config=half.config, percentiles=None)
    image = np.random.default_rng(1).random((64, 96)).astype(np.float32)
    image = ndi_smooth(image)
    prediction = half.predict([image])[0]
    assert prediction.probability.shape == prediction.labels.shape == (64, 96)
    # reference: scikit-image shrinks the image, the unscaled model predicts it, scikit-image enlarges the result
    small = full.predict([sk_resize(image, (32, 48), order=1, anti_aliasing=True).astype(np.float32)])[0].probability
    reference = sk_resize(small, (64, 96), order=1)
    assert np.abs(prediction.probability - reference).mean() < 0.02
    assert np.corrcoef(prediction.probability.ravel(), reference.ravel())[0, 1] > 0.95
    with pytest.raises(ValueError, match="scale"):
        UNetModel(name="bad", network=half.network, config=half.config, scale=0)


def ndi_smooth(image):
    from scipy import ndimage as ndi

    return ndi.gaussian_filter(image, 2.0)


def test_training_at_a_scale_is_stored_and_used(tmp_path):
    domain = SyntheticDomain(radius=(8, 10), density=15, snr=20, blur=0.5)
    data = generate(domain, 2, shape=(96, 96), seed=0)
    model = train_unet(data.images, data.labels, UNetConfig(width=4, output="foreground+boundary"),
                       TrainingConfig(steps=2, batch_size=2, patch_size=32, scale=0.5), out=tmp_path / "m.pt", progress=False)
    reloaded = UNetModel.from_checkpoint(tmp_path / "m.pt")
    assert model.scale == reloaded.scale == 0.5
    probability = reloaded.predict(data.images[:1])[0].probability
    assert probability.shape == (96, 96)
    assert np.array_equal(probability, model.predict(data.images[:1])[0].probability)
    with pytest.raises(ValueError, match="scale"):
        TrainingConfig(scale=-1)


def test_training_resizes_labels_by_nearest_neighbour():
    from cte_kit.models.training import _rescale

    labels = np.zeros((40, 40), np.int64)
    labels[4:20, 4:20], labels[20:36, 10:30] = 70000, 3  # an id beyond float32's exact integers
    image = np.linspace(0, 1, 1600, dtype=np.float32).reshape(40, 40)
    small_image, small_labels = _rescale(image, labels, 0.5)
    assert small_image.shape == small_labels.shape == (20, 20) and small_labels.dtype == labels.dtype
    assert set(np.unique(small_labels)) == {0, 3, 70000}
    # the same pixels as scikit-image's nearest-neighbour rescale of the label image
    from skimage.transform import rescale

    expected = rescale(labels, 0.5, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)
    assert (small_labels == expected).mean() > 0.95
