"""Keys and seeds come from what is computed, never from positions."""

import hashlib

import numpy as np

from cte_kit.types import content_name, image_id, name_seed


def test_image_id_depends_on_the_name_only():
    assert image_id("cell_01") == image_id("cell_01") != image_id("cell_02")
    assert 0 <= image_id("x") < 2**32
    assert image_id("cell_01") == int.from_bytes(hashlib.sha256(b"cell_01").digest()[:4], "little")


def test_name_seed_separates_its_parts():
    assert name_seed("a", "b") == name_seed("a", "b") != name_seed("ab")
    assert 0 <= name_seed("x", 1) < 2**63


def test_content_name_follows_the_pixels():
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert content_name(image) == content_name(image.copy()) != content_name(image.T.copy())
    assert content_name(image) != content_name(image.astype(np.uint16))
    assert content_name(image).startswith("px:")
