"""The forked dropout pass and the relay the library adapters share, on a kit U-Net's torch network."""

import numpy as np
import pytest
import torch

from cte_kit.models._common import Fork, Relay, channel_scales, image_dropout
from cte_kit.models.unet import UNetConfig


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return UNetConfig(levels=3, width=8).build().eval()


@pytest.fixture(scope="module")
def tiles():
    return torch.from_numpy(np.random.default_rng(0).normal(size=(3, 1, 32, 32)).astype(np.float32))


@pytest.mark.parametrize("layers", [("bottleneck",), ("encoder1", "decoder0")])
def test_fork_gives_the_plain_output_then_the_image_dropout_output(network, tiles, layers):
    modules = [network.layer(name) for name in layers]
    with torch.no_grad():
        plain = network(tiles)
        with image_dropout(modules, 0.5, seed=9):
            perturbed = network(tiles)
        with Fork(network, modules, 0.5, seed=9).active() as fork:
            forked = fork(tiles)
    assert forked.shape[0] == 2 * tiles.shape[0]
    torch.testing.assert_close(forked[:3], plain, atol=1e-6, rtol=0)
    torch.testing.assert_close(forked[3:], perturbed, atol=1e-6, rtol=0)
    assert not torch.equal(plain, perturbed)
    assert not any(module._forward_hooks for module in network.modules())


def test_fork_masks_are_those_drawn_for_the_image(network, tiles):
    """Every tile of the perturbed half has the channels of channel_scales(seed) dropped, whichever call."""
    captured = []
    handle = network.decoders[0].register_forward_pre_hook(lambda module, inputs: captured.append(inputs[0]))
    try:
        with torch.no_grad(), Fork(network, [network.layer("bottleneck")], 0.5, seed=4).active() as fork:
            fork(tiles)
            fork(tiles[:1])  # a second call (the next batch of tiles) keeps the image's mask
    finally:
        handle.remove()
    dropped = (channel_scales([32], 0.5, 4)[0] == 0).numpy()  # width 8, 3 levels: 32 bottleneck channels
    assert dropped.any()
    for features, n in zip(captured, (3, 1)):
        deep = features[:, -32:].numpy()  # the decoder reads cat([skip, upsampled bottleneck])
        assert np.all(deep[n:, dropped] == 0) and np.abs(deep[:n, dropped]).sum() > 0
        np.testing.assert_allclose(deep[n:, ~dropped], 2 * deep[:n, ~dropped], rtol=1e-6)  # survivors / (1 - 0.5)


def test_relay_replays_in_call_order_and_refuses_other_calls():
    relay = Relay(lambda inputs, scale=1: (inputs * scale, inputs * -scale))
    first, second = np.ones((1, 2)), np.ones((1, 3))
    assert relay(first, scale=2).sum() == 4 and relay(second).sum() == 3
    relay.replay()
    assert relay(first).sum() == -4
    with pytest.raises(RuntimeError, match=r"\(1, 2\), not as the clean one did \(\(1, 3\)\)"):
        relay(first)
    assert relay(second).sum() == -3
    with pytest.raises(RuntimeError, match="no more calls"):
        relay(second)
