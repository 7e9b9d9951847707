import numpy as np
import pytest
import torch

from cte_kit.perturb import (
    FeatureDropout,
    InputPerturbation,
    feature_dropout,
    parse_perturbation,
    spatial_dropout,
)


@pytest.fixture
def image():
    return np.random.default_rng(0).normal(0.3, 0.4, size=(32, 40)).astype(np.float32)


@pytest.mark.parametrize("kind, neutral", [("noise", 0.0), ("brightness", 0.0), ("contrast", 1.0), ("gamma", 1.0)])
def test_neutral_strength_is_identity(image, kind, neutral):
    perturbation = InputPerturbation(kind, neutral)
    assert perturbation.is_neutral
    assert np.array_equal(perturbation.apply(image, np.random.default_rng(1)), image)


def test_input_formulas_match_the_paper(image):
    rng = np.random.default_rng
    assert np.allclose(InputPerturbation("brightness", 0.2).apply(image, rng(0)), image + 0.2)
    mean = image.mean()
    assert np.allclose(InputPerturbation("contrast", 0.5).apply(image, rng(0)), mean + 0.5 * (image - mean), atol=1e-6)
    expected_gamma = np.sign(image) * np.abs(image) ** 1.5
    assert np.allclose(InputPerturbation("gamma", 1.5).apply(image, rng(0)), expected_gamma, atol=1e-6)
    noisy = InputPerturbation("noise", 0.1).apply(image, rng(3))
    assert np.allclose(noisy - image, rng(3).normal(0, 0.1, image.shape), atol=1e-6)


def test_no_clipping(image):
    out = InputPerturbation("brightness", 5.0).apply(image, np.random.default_rng(0))
    assert out.max() > 5.0


def test_range_draws_per_image_and_is_seeded(image):
    perturbation = InputPerturbation("brightness", (0.1, 0.3))
    a = perturbation.apply(image, np.random.default_rng(5))
    b = perturbation.apply(image, np.random.default_rng(5))
    c = perturbation.apply(image, np.random.default_rng(6))
    assert np.array_equal(a, b)
    shift = float((a - image).mean())
    assert 0.1 <= shift <= 0.3
    assert not np.array_equal(a, c)


def test_input_perturbation_refuses_integer_images():
    with pytest.raises(TypeError, match="normalised float"):
        InputPerturbation("noise", 0.1).apply(np.zeros((8, 8), np.uint16), np.random.default_rng(0))


@pytest.mark.parametrize("bad", [("noise", -0.1), ("gamma", 0.0), ("blur", 1.0), ("noise", (0.3, 0.1)), ("noise", float("nan"))])
def test_invalid_input_perturbations(bad):
    with pytest.raises(ValueError):
        InputPerturbation(*bad)


def test_parse_perturbation():
    assert parse_perturbation("dropout:0.2") == FeatureDropout(0.2)
    assert parse_perturbation("dropout:0.1@encoder1+bottleneck") == FeatureDropout(0.1, ("encoder1", "bottleneck"))
    assert parse_perturbation("noise:0.03-0.07") == InputPerturbation("noise", (0.03, 0.07))
    assert parse_perturbation("brightness:-0.1") == InputPerturbation("brightness", -0.1)
    assert parse_perturbation("gamma:1.2").label == "gamma:1.2"
    assert parse_perturbation("noise:0.03-0.07").label == "noise:0.03-0.07"
    for text in ("dropout", "dropout:x", "dropout:1.0", "warp:0.1"):
        with pytest.raises(ValueError):
            parse_perturbation(text)


def test_spatial_dropout_zeroes_whole_channels_and_rescales():
    features = torch.ones(2, 400, 5, 5)
    out = spatial_dropout(features, 0.25, torch.Generator().manual_seed(0))
    per_channel = out.reshape(2, 400, -1)
    # each channel is either all zero or all 1/(1-p)
    assert torch.all((per_channel == 0).all(-1) | (per_channel == 1 / 0.75).all(-1))
    dropped = (per_channel[..., 0] == 0).float().mean()
    assert 0.18 < float(dropped) < 0.32


def test_spatial_dropout_p0_returns_input():
    features = torch.randn(1, 3, 4, 4)
    assert spatial_dropout(features, 0.0, torch.Generator()) is features


def test_per_sample_generators_make_masks_batch_independent():
    features = torch.ones(3, 64, 2, 2)
    batch = spatial_dropout(features, 0.5, [torch.Generator().manual_seed(s) for s in (1, 2, 3)])
    alone = spatial_dropout(features[1:2], 0.5, [torch.Generator().manual_seed(2)])
    assert torch.equal(batch[1:2], alone)


def test_feature_dropout_hook_is_removed_and_seeded():
    layer = torch.nn.Conv2d(1, 16, 1)
    network = torch.nn.Sequential(layer, torch.nn.Conv2d(16, 1, 1)).eval()
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        clean = network(x)
        with feature_dropout([layer], 0.5, seed=3):
            first = network(x)
        with feature_dropout([layer], 0.5, seed=3):
            second = network(x)
        after = network(x)
    assert not torch.equal(first, clean)
    assert torch.equal(first, second)
    assert torch.equal(after, clean)
    assert not layer._forward_hooks


def test_feature_dropout_hook_removed_after_exception():
    layer = torch.nn.Identity()
    with pytest.raises(RuntimeError):
        with feature_dropout([layer], 0.5, seed=0):
            raise RuntimeError("boom")
    assert not layer._forward_hooks


def test_feature_dropout_does_not_touch_global_rng():
    layer = torch.nn.Identity()
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    with feature_dropout([layer], 0.5, seed=0):
        layer(torch.ones(1, 8, 2, 2))
    assert torch.equal(torch.rand(3), expected)


def test_fork_doubles_batch_with_clean_first_half():
    layer = torch.nn.Identity()
    x = torch.randn(2, 32, 3, 3)
    with feature_dropout([layer], 0.5, seed=[1, 2], fork=True):
        out = layer(x)
    assert out.shape[0] == 4
    assert torch.equal(out[:2], x)
    assert not torch.equal(out[2:], x)


def test_sequence_outputs_perturb_the_deepest_map():
    class Encoder(torch.nn.Module):
        def forward(self, x):
            return [x, x * 2]

    encoder = Encoder()
    x = torch.ones(1, 64, 2, 2)
    with feature_dropout([encoder], 0.5, seed=0):
        shallow, deep = encoder(x)
    assert torch.equal(shallow, x)
    assert (deep == 0).any()
