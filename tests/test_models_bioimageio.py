"""bioimage.io adapter and export, on a tiny kit U-Net exported here; and a mixed bank ranked by the CLI."""

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

from cte_kit.scoring.consistency import summarize
from cte_kit.estimators.cte import pair_scores
from cte_kit.models import BankEntry, NotGreyBoxError, load_model
from cte_kit.models._common import PretrainedDownloadError
from cte_kit.models.bioimageio import BioImageIOModel
from cte_kit.models.unet import UNetModel
from cte_kit.perturb import FeatureDropout, InputPerturbation

pytestmark = pytest.mark.adapters


@pytest.fixture(scope="module")
def model(tiny_bioimageio_zip):
    return BioImageIOModel.from_source(tiny_bioimageio_zip)


@pytest.fixture(scope="module")
def unet(tiny_unet_checkpoint):
    return UNetModel.from_checkpoint(tiny_unet_checkpoint)


def test_exported_package_is_complete_and_valid(tiny_bioimageio_zip):
    from bioimageio.core import load_model_description, test_model

    with zipfile.ZipFile(tiny_bioimageio_zip) as package:
        names = set(package.namelist())
    assert {"rdf.yaml", "weights.pt", "weights_torchscript.pt", "unet_arch.py", "test_input.npy", "test_output.npy",
            "cover.png", "README.md"} <= names
    assert test_model(tiny_bioimageio_zip).status == "passed"
    description = load_model_description(tiny_bioimageio_zip)
    assert "scale_range" in [p.id for p in description.inputs[0].preprocessing]
    assert "sigmoid" in [p.id for p in description.outputs[0].postprocessing]
    assert description.config.model_extra["cte_kit"]["instances"] == "components"


def test_predictions_equal_the_kit_unet(model, unet, adapter_images):
    """Model preprocessing + padding + sigmoid postprocessing reproduce the kit's own U-Net adapter."""
    assert model.layers == unet.layers and model.bottleneck == "bottleneck" and model.channels == 1
    for perturbation in (None, FeatureDropout(0.3), FeatureDropout(0.2, ("sym1",))):
        if perturbation is None:
            ours, theirs = model.predict(adapter_images), unet.predict(adapter_images)
        else:
            ours = [p.perturbed[0] for p in model.predict_pairs(adapter_images, perturbation, seed=5)]
            theirs = [p.perturbed[0] for p in unet.predict_pairs(adapter_images, perturbation, seed=5)]
        for a, b in zip(ours, theirs):
            assert a.probability.shape == b.probability.shape
            np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)
            assert np.mean(a.labels == b.labels) > 0.999 and a.labels.max() > 0


def test_dropout_zero_exact_changes_and_seeded(model, adapter_images):
    plain = model.predict(adapter_images)
    for pair, reference in zip(model.predict_pairs(adapter_images, FeatureDropout(0.0), seed=1), plain):
        assert np.array_equal(pair.perturbed[0].probability, reference.probability)
        assert np.array_equal(pair.perturbed[0].labels, reference.labels)
    first = model.predict_pairs(adapter_images, FeatureDropout(0.3), seed=1)
    again = model.predict_pairs(adapter_images, FeatureDropout(0.3), seed=1)
    for a, b, reference in zip(first, again, plain):
        assert not np.array_equal(a.perturbed[0].probability, reference.probability)
        assert np.array_equal(a.perturbed[0].probability, b.perturbed[0].probability)
    assert not model._module.encoders[-1]._forward_hooks


@pytest.mark.parametrize("blocksize", [None, 12], ids=["whole", "blocks"])
def test_forked_pair_equals_the_per_image_path(tiny_bioimageio_zip, adapter_images, blocksize):
    """Kit U-Net export: encoder once per block, decoder on a doubled batch; within float32 rounding
    (probabilities within 1e-6, labels equal) of a clean and a separate dropout prediction."""
    from cte_kit.models.base import SegmentationModel
    from cte_kit.perturb import image_seed

    model = BioImageIOModel.from_source(tiny_bioimageio_zip, blocksize=blocksize)
    assert model._forks(["bottleneck"])
    dropout = FeatureDropout(0.3, ("sym1",))
    arrays = [model.prepare(image) for image in adapter_images]
    seeds = [image_seed(5, index, 0) for index in range(len(arrays))]
    calls = []
    handle = model._module.decoders[-1].register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    try:
        clean, perturbed = model._predict_feature_pairs(arrays, dropout, seeds)
    finally:
        handle.remove()
    assert set(calls) == {2}, "every forward call carries the clean and the dropout half"
    reference_clean, reference_perturbed = SegmentationModel._predict_feature_pairs(model, arrays, dropout, seeds)
    for shared, reference in zip(clean + perturbed, reference_clean + reference_perturbed):
        np.testing.assert_allclose(shared.probability, reference.probability, atol=1e-6)
        assert np.array_equal(shared.labels, reference.labels)
    assert not np.array_equal(perturbed[0].probability, clean[0].probability)
    assert model._adapter.relay is None and not model._module.encoders[1]._forward_hooks


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.3), InputPerturbation("noise", 0.2)], ids=["grey", "black"])
def test_pairs_do_not_depend_on_the_batch(model, adapter_images, perturbation):
    """Resuming after a crash batches images differently: an image's pair must not change, bit for bit."""
    together = model.predict_pairs(adapter_images, perturbation, seed=3, image_ids=[10, 11, 12])
    alone = model.predict_pairs(adapter_images[1:2], perturbation, seed=3, image_ids=[11])
    for a, b in zip((together[1].clean, together[1].perturbed[0]), (alone[0].clean, alone[0].perturbed[0])):
        assert np.array_equal(a.probability, b.probability) and np.array_equal(a.labels, b.labels)


@pytest.mark.parametrize("perturbation", [FeatureDropout(0.2), InputPerturbation("gamma", 1.3)], ids=["grey", "black"])
def test_cte_scores(model, adapter_images, perturbation):
    pairs = model.predict_pairs(adapter_images, perturbation, seed=0)
    for consistency, per_image in pair_scores(pairs, ("hard", "soft", "instance"), threshold=model.threshold).items():
        assert np.isfinite(per_image).all() and ((0 <= per_image) & (per_image <= 1)).all(), consistency
        assert 0 <= summarize(per_image).score <= 1


def test_torchscript_weights_are_a_black_box(tiny_bioimageio_zip, model, adapter_images):
    traced = BioImageIOModel.from_source(tiny_bioimageio_zip, weights_format="torchscript")
    assert not traced.grey_box
    np.testing.assert_allclose(traced.predict(adapter_images[:1])[0].probability,
                               model.predict(adapter_images[:1])[0].probability, atol=1e-6)
    assert traced.predict_pairs(adapter_images[:1], InputPerturbation("noise", 0.05))[0].perturbed
    with pytest.raises(NotGreyBoxError, match="pytorch_state_dict"):
        traced.predict_pairs(adapter_images[:1], FeatureDropout(0.2))


def test_named_bottleneck_and_blockwise_prediction(tiny_bioimageio_zip, model, adapter_images):
    named = BioImageIOModel.from_source(tiny_bioimageio_zip, bottleneck_layer="encoders.2")
    assert "bottleneck" in named.layers and named.feature_modules(["bottleneck"])[0] is named._module.encoders[2]
    with pytest.raises(AttributeError):
        BioImageIOModel.from_source(tiny_bioimageio_zip, bottleneck_layer="no.such.module")
    image = adapter_images[1]  # 100 x 100; the model takes 4 + 4 n pixels per side
    whole = model.predict([image])[0].probability
    one_block = BioImageIOModel.from_source(tiny_bioimageio_zip, blocksize=24).predict([image])[0].probability
    assert np.array_equal(one_block, whole)
    blocks = BioImageIOModel.from_source(tiny_bioimageio_zip, blocksize=12).predict([image])[0].probability
    assert blocks.shape == image.shape
    assert np.median(np.abs(blocks - whole)) < 0.01  # the package declares no halo: only block seams differ


def test_bank_entry_settings(tiny_bioimageio_zip):
    model = load_model(BankEntry("bmz", "bioimageio", path=str(tiny_bioimageio_zip), settings={"threshold": 0.6, "min_size": 5}))
    assert isinstance(model, BioImageIOModel) and model.name == "bmz" and model.threshold == 0.6 and model.min_size == 5
    with pytest.raises(ValueError, match="unknown BioImageIOModel setting.*diameter"):
        load_model(BankEntry("bmz", "bioimageio", path=str(tiny_bioimageio_zip), settings={"diameter": 3}))
    with pytest.raises(ValueError, match="probability_channel 1 is out of range"):
        BioImageIOModel.from_source(tiny_bioimageio_zip, probability_channel=1)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BioImageIOModel.from_source(tiny_bioimageio_zip.parent / "missing.zip")


def test_offline_zoo_id_error_says_what_to_do(monkeypatch):
    import httpx

    def offline(url, *args, **kwargs):
        raise httpx.ConnectError(f"[Errno -3] Temporary failure in name resolution ({url})")

    monkeypatch.setattr(httpx, "get", offline)
    with pytest.raises(PretrainedDownloadError) as info:
        BioImageIOModel.from_pretrained("affable-shark")
    message = str(info.value)
    assert "rdf.yaml" in message and "https://hypha.aicell.io/bioimage-io/artifacts/affable-shark/files/rdf.yaml" in message
    assert "BIOIMAGEIO_CACHE_PATH" in message and "path:" in message and "bioimage.io/#/?id=affable-shark" in message


def test_cli_ranks_a_mixed_bank(tmp_path, tiny_unet_checkpoint, tiny_stardist_folder, tiny_cellpose_file, tiny_bioimageio_zip):
    """U-Net, StarDist, Cellpose and bioimage.io models in one `cte-kit rank` call, grey- and black-box."""
    import tifffile

    from cte_kit.cli import main
    from tiny_models import training_data
    from cte_kit.evaluation.sweep import read_results

    images, labels = training_data(n_images=3, size=80, seed=21)
    for folder, arrays in (("images", images), ("labels", labels)):
        (tmp_path / folder).mkdir()
        for index, array in enumerate(arrays):
            tifffile.imwrite(tmp_path / folder / f"img{index}.tif", array)
    bank = tmp_path / "bank.yaml"
    bank.write_text(f"""models:
  - name: unet
    kind: unet
    path: {tiny_unet_checkpoint}
  - name: stardist
    kind: stardist
    path: {tiny_stardist_folder}
  - name: cellpose
    kind: cellpose
    path: {tiny_cellpose_file}
    channels: [0, 0]
  - name: bioimageio
    kind: bioimageio
    path: {tiny_bioimageio_zip}
""")
    out, summary = tmp_path / "results.csv", tmp_path / "summary.json"
    argv = ["rank", "--bank", str(bank), "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
            "--perturbation", "dropout:0.2", "--perturbation", "noise:0.05", "--consistency", "hard",
            "--consistency", "soft", "--out", str(out), "--summary", str(summary), "--no-progress"]
    assert main(argv) == 0
    rows = read_results(out)
    assert len(rows) == 4 * 3 * 2 * 2
    assert {(r["model"], r["perturbation"]) for r in rows} == {
        (m, p) for m in ("unet", "stardist", "cellpose", "bioimageio") for p in ("dropout:0.2", "noise:0.05")}
    assert all(np.isfinite(float(r["cte"])) for r in rows)
    document = json.loads(summary.read_text())
    assert len(document["settings"]) == 4 and not document["failures"]
    for setting in document["settings"]:
        models = {m["name"]: m for m in setting["models"]}
        assert set(models) == {"unet", "stardist", "cellpose", "bioimageio"}
        assert sum(m["rank_cte"] for m in models.values()) == 1 + 2 + 3 + 4
        # the exported package is the same network: same CTE, tied rank
        assert models["bioimageio"]["cte"] == pytest.approx(models["unet"]["cte"], abs=1e-3)


def test_a_model_trained_at_a_scale_is_not_exported(tiny_unet_checkpoint, tmp_path):
    from cte_kit.models.bioimageio import export_unet

    model = UNetModel.from_checkpoint(tiny_unet_checkpoint, scale=0.5)
    with pytest.raises(ValueError, match="scale 0.5"):
        export_unet(model, tmp_path / "scaled.zip")
    assert not (tmp_path / "scaled.zip").exists()
