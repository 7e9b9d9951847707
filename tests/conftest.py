"""Shared test configuration: the `slow` marker is skipped unless --runslow is given."""

from pathlib import Path

import pytest

#: Real data for validation, beside the repository (absent on most machines: tests skip).
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# -- Tiny trained models for the StarDist / Cellpose / bioimage.io adapter tests ----------------------
# Pretrained weights cannot be downloaded offline, so each is trained once per session on synthetic
# nuclei (tiny_models); a fixture skips when its optional library is not installed.


@pytest.fixture(scope="session")
def tiny_stardist_folder(tmp_path_factory):
    """Model folder of a StarDist2D trained for a few steps."""
    pytest.importorskip("stardist")
    from tiny_models import train_tiny_stardist

    return train_tiny_stardist(tmp_path_factory.mktemp("stardist"))


@pytest.fixture(scope="session")
def tiny_cellpose_file(tmp_path_factory):
    """Model file of a Cellpose 3 CPnet trained from scratch for a few epochs."""
    pytest.importorskip("cellpose")
    from tiny_models import train_tiny_cellpose
    from cte_kit.models.cellpose import cellpose_major_version

    if cellpose_major_version() >= 4:
        pytest.skip("the tiny model is a Cellpose 3 CPnet; Cellpose 4 cannot train one")

    return train_tiny_cellpose(tmp_path_factory.mktemp("cellpose"))


@pytest.fixture(scope="session")
def tiny_unet_checkpoint(tmp_path_factory):
    """Checkpoint of a small kit U-Net trained for a few optimiser steps."""
    from tiny_models import train_tiny_unet

    return train_tiny_unet(tmp_path_factory.mktemp("unet") / "tiny_unet.pt")


@pytest.fixture(scope="session")
def tiny_bioimageio_zip(tmp_path_factory, tiny_unet_checkpoint):
    """The tiny kit U-Net exported as a bioimage.io package (validated by bioimageio.core.test_model)."""
    pytest.importorskip("bioimageio.core")
    from cte_kit.models.bioimageio import export_unet

    return export_unet(tiny_unet_checkpoint, tmp_path_factory.mktemp("bioimageio") / "tiny_unet.zip", torchscript=True)


@pytest.fixture(scope="session")
def adapter_images():
    """Three raw synthetic nuclei images (uint16) of different sizes; most need padding to a model's divisor."""
    from tiny_models import training_data

    images, _ = training_data(n_images=3, size=100, seed=11)
    return [images[0][:90, :77], images[1][:100, :100], images[2][:72, :95]]


@pytest.fixture
def warnings_shown(monkeypatch):
    """Warnings reach stderr through ``warnings.formatwarning``, as outside pytest.

    pytest records warnings instead of showing them; a ``showwarning`` that writes
    ``formatwarning``'s text is what Python's own ``showwarning`` does.
    """
    import sys
    import warnings

    def showwarning(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    monkeypatch.setattr(warnings, "showwarning", showwarning)
