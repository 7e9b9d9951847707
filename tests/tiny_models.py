"""Tiny models trained in seconds on synthetic nuclei, one per adapter.

Pretrained weights cannot be downloaded everywhere (CI, air-gapped machines), so the adapter
tests and benchmarks train their own: a StarDist2D with a tiny configuration, a Cellpose CPnet
from scratch, and a small kit U-Net. They segment the synthetic nuclei of
:mod:`cte_kit.data.synthetic` well enough to give non-empty, perturbation-sensitive predictions;
they are not meant for real data.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from cte_kit.data.images import normalize_percentile
from cte_kit.data.synthetic import SyntheticDomain, generate

__all__ = ["training_data", "train_tiny_stardist", "train_tiny_cellpose", "train_tiny_unet"]


def training_data(n_images: int = 8, size: int = 96, seed: int = 0):
    """Seeded synthetic nuclei: (raw uint16 images, int32 instance labels)."""
    data = generate(SyntheticDomain(), n_images, shape=(size, size), seed=seed)
    return list(data.images), [np.asarray(labels, dtype=np.int32) for labels in data.labels]


def train_tiny_stardist(folder: str | Path, name: str = "tiny_stardist", epochs: int = 10, steps_per_epoch: int = 20,
                        seed: int = 0, data=None, n_rays: int = 16, depth: int = 2, width: int = 8,
                        patch: int = 64) -> Path:
    """Train a StarDist2D (16 rays, grid 2, depth-2 U-Net of width 8) and return its model folder.

    ``data``: (raw images, instance labels) to train on instead of the synthetic nuclei (the last two
    are the validation images); the benchmarks pass a real training split and a larger network.
    """
    from cte_kit.models.stardist import _import_stardist, _quietly

    StarDist2D = _import_stardist()
    from csbdeep.utils.tf import keras_import
    from stardist.models import Config2D

    keras_import("utils", "set_random_seed")(seed)
    images, labels = training_data(seed=seed) if data is None else data
    images = [normalize_percentile(image, 1.0, 99.8) for image in images]
    config = Config2D(n_rays=n_rays, grid=(2, 2), n_channel_in=1, unet_n_depth=depth, unet_n_filter_base=width,
                      train_patch_size=(patch, patch), train_batch_size=4, train_epochs=epochs,
                      train_steps_per_epoch=steps_per_epoch, train_learning_rate=1e-3, train_tensorboard=False)
    model = _quietly(StarDist2D, config, name=name, basedir=str(folder))
    with warnings.catch_warnings():
        # Keras notes that StarDist's data generator shuffles itself
        warnings.filterwarnings("ignore", message=".*shuffle=True.*")
        _quietly(model.train, images[:-2], labels[:-2], validation_data=(images[-2:], labels[-2:]), seed=seed)
    return Path(folder) / name


def train_tiny_cellpose(folder: str | Path, name: str = "tiny_cellpose", epochs: int = 40, seed: int = 0, data=None,
                        diameter: float = 17.0, patch: int = 64) -> Path:
    """Train a Cellpose 3 CPnet from scratch (``cellpose.train.train_seg``) and return the model file.

    ``data``: (raw images, instance labels) to train on instead of the synthetic nuclei, with their
    typical object ``diameter`` (pixels); the benchmarks pass a real training split.
    """
    import torch
    from cellpose import models, train

    torch.manual_seed(seed)
    images, labels = training_data(seed=seed) if data is None else data
    network = models.CellposeModel(gpu=False, pretrained_model=False, diam_mean=diameter)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path, _, _ = train.train_seg(
        network.net, train_data=[image.astype(np.float32) for image in images], train_labels=labels, channels=[0, 0],
        n_epochs=epochs, batch_size=8, bsize=patch, learning_rate=0.005, min_train_masks=1, save_path=str(folder),
        model_name=name,
    )
    return Path(path)


def train_tiny_unet(path: str | Path, steps: int = 40, levels: int = 3, width: int = 8, seed: int = 0) -> Path:
    """Train a small kit U-Net (foreground output, BCE, Adam) and save its checkpoint at ``path``."""
    import torch
    from torch.nn import functional as F

    from cte_kit.models.unet import UNetConfig, save_checkpoint

    torch.manual_seed(seed)
    images, labels = training_data(n_images=8, size=64, seed=seed)
    inputs = torch.from_numpy(np.stack([normalize_percentile(image, 1.0, 99.8) for image in images])[:, None])
    targets = torch.from_numpy(np.stack([labels > 0 for labels in labels]).astype(np.float32)[:, None])
    config = UNetConfig(levels=levels, width=width)
    network = config.build()
    optimizer = torch.optim.Adam(network.parameters(), lr=5e-3)
    network.train()
    for _ in range(steps):
        optimizer.zero_grad()
        F.binary_cross_entropy_with_logits(network(inputs), targets).backward()
        optimizer.step()
    network.eval()
    return save_checkpoint(network, config, path, settings={"percentiles": [1.0, 99.8]})
