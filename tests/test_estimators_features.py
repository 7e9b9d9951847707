"""Features of a named layer from every grey-box adapter (layer_features), as the feature-based estimators read them."""

import numpy as np
import pytest
import torch

from cte_kit.estimators import run_estimator
from cte_kit.estimators.label_free import Dispersion
from cte_kit.models.base import NotGreyBoxError
from cte_kit.models.unet import UNetModel


def test_unet_decoder_features_feed_the_head(tiny_unet_checkpoint, adapter_images):
    model = UNetModel.from_checkpoint(tiny_unet_checkpoint)
    layer = model.layers[-1]
    features = model.layer_features(adapter_images, layer)
    for image, feature, prediction in zip(adapter_images, features, model.predict(adapter_images)):
        assert feature.dtype == np.float32 and feature.shape[1] >= image.shape[0] and feature.shape[2] >= image.shape[1]
        with torch.inference_mode():
            logits = model.network.head(torch.from_numpy(feature[None]))[0, 0].numpy()
        probability = 1 / (1 + np.exp(-logits[: image.shape[0], : image.shape[1]]))
        np.testing.assert_allclose(probability, prediction.probability, atol=1e-5)
    with pytest.raises(ValueError, match="one plain layer"):
        model.layer_features(adapter_images, "decoders")


def test_bioimageio_export_gives_the_unets_features(tiny_unet_checkpoint, tiny_bioimageio_zip, adapter_images):
    from cte_kit.models.bioimageio import BioImageIOModel

    exported = BioImageIOModel.from_source(tiny_bioimageio_zip, name="exported")
    original = UNetModel.from_checkpoint(tiny_unet_checkpoint)
    images = [image[:64, :64] for image in adapter_images]
    for layer in ("bottleneck", original.layers[-1]):
        for a, b in zip(exported.layer_features(images, layer), original.layer_features(images, layer)):
            np.testing.assert_allclose(a, b, atol=1e-4)


def test_stardist_features_and_a_feature_estimator(tiny_stardist_folder, adapter_images):
    from cte_kit.models.stardist import StarDistModel

    model = StarDistModel.from_folder(tiny_stardist_folder, name="tiny")
    for layer in model.layers:
        features = model.layer_features(adapter_images, layer)
        assert len(features) == 3 and all(f.ndim == 3 and np.isfinite(f).all() for f in features)
    score = run_estimator(Dispersion(n_pixels=50), [model], adapter_images, ["a", "b", "c"])[0].score
    assert np.isfinite(score)


def test_cellpose_features(tiny_cellpose_file, adapter_images):
    from cte_kit.models.cellpose import CellposeModel

    model = CellposeModel.from_file(tiny_cellpose_file)
    features = model.layer_features(adapter_images[:1], "bottleneck")
    assert features[0].ndim == 3 and np.isfinite(features[0]).all()


def test_black_box_has_no_features():
    from cte_kit.types import Prediction
    from cte_kit.models.base import SegmentationModel

    class BlackBox(SegmentationModel):
        def _predict_normalised(self, batch):
            return [Prediction(probability=np.full(image.shape[:2], 0.5, np.float32)) for image in batch]

    with pytest.raises(NotGreyBoxError, match="black box"):
        BlackBox(name="box").layer_features([np.zeros((8, 8))], "bottleneck")
