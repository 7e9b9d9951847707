"""Layer names and aliases shared by every grey-box adapter (cte_kit.models.layers)."""

import pytest

from cte_kit.models.layers import LayerMap


def test_unet_layers_and_symmetric_aliases_by_hand():
    layers = LayerMap.unet(3)
    assert layers.plain == ("encoder0", "encoder1", "bottleneck", "decoder0", "decoder1")
    # the official "symmetric" layer k: the skip k levels above the bottleneck and the decoder of that resolution
    assert layers.aliases["sym0"] == ("bottleneck",)
    assert layers.aliases["sym1"] == ("encoder1", "decoder0")
    assert layers.aliases["sym2"] == ("encoder0", "decoder1")
    assert "sym3" not in layers.aliases
    assert layers.aliases["encoders"] == ("encoder0", "encoder1")
    assert layers.aliases["decoders"] == ("decoder0", "decoder1")
    assert layers.aliases["all"] == layers.plain


def test_cellpose_style_decoder_at_the_bottleneck_shifts_the_symmetric_pairs():
    layers = LayerMap.unet(4, decoder_at_bottleneck=True)
    assert layers.decoders == ("decoder0", "decoder1", "decoder2", "decoder3")
    assert layers.aliases["sym1"] == ("encoder2", "decoder1")
    assert layers.aliases["sym3"] == ("encoder0", "decoder3")
    assert "decoder0" in layers.aliases["decoders"] and "decoder0" not in sum(
        (layers.aliases[f"sym{k}"] for k in range(4)), ())


def test_resolve_expands_aliases_once_in_network_order():
    layers = LayerMap.unet(3)
    assert layers.resolve(["decoder1", "sym1", "bottleneck", "encoder1"]) == (
        "encoder1", "bottleneck", "decoder0", "decoder1")
    assert layers.resolve("sym0") == ("bottleneck",)
    assert layers.resolve(["sym0", "sym1", "sym2"]) == layers.resolve(["all"])


def test_resolve_refuses_unknown_names_listing_layers_and_aliases():
    with pytest.raises(ValueError, match=r"model 'm' has no layer\(s\) \['decoder7'\].*encoder0.*sym2.*all"):
        LayerMap.unet(3).resolve(["bottleneck", "decoder7"], model="m")


def test_bottleneck_only_network_has_no_group_aliases():
    layers = LayerMap()
    assert layers.plain == ("bottleneck",)
    assert layers.resolve(["sym0"]) == ("bottleneck",)
    assert layers.resolve(["all"]) == ("bottleneck",)
    with pytest.raises(ValueError, match="encoders"):
        layers.resolve(["encoders"])
    with pytest.raises(ValueError, match="at least 2"):
        LayerMap.unet(1)
