"""Tests of cte_kit.adapt: views, masks, stopping signals, L2-SP, the loop on U-Nets and a CPnet, the CLI."""

from dataclasses import replace

import numpy as np
import pytest
import tifffile
import torch
from torch.nn import functional as F

from cte_kit.adapt import (AdaptConfig, adapt, adapt_target, choose_stop, embedding_distance, fn_rate, load_step,
                           provenance_path, save_adapted)
from cte_kit.adapt.views import DIHEDRAL_VIEWS, MovingPercentile, apply_view, invert_view, teacher_views, uncertainty
from cte_kit.data.synthetic import DEMO_TARGET, generate
from cte_kit.teaching.demo import demo_checkpoint
from cte_kit.scoring.metrics import match_instances
from cte_kit.models.bank import BankEntry, load_model, read_bank, write_bank
from cte_kit.types import Prediction
from cte_kit.models.base import SegmentationModel
from cte_kit.models.unet import UNetModel
from cte_kit.perturb import FeatureDropout

QUICK = AdaptConfig(steps=6, eval_every=3, batch_size=2, patch_size=64, n_eval=2)


# -- views --------------------------------------------------------------------------------------------
def _equivariant_toy(images: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) -> (flow_y, flow_x, class logit): central differences and an isotropic blur.

    Both commute with every symmetry of the square (the differences as vectors), so each
    inverted view must reproduce the plain output exactly.
    """
    padded = F.pad(images, (1, 1, 1, 1), mode="replicate")
    dy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    dx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2
    kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).view(1, 1, 3, 3) / 16
    return torch.cat([dy, dx, F.conv2d(padded, kernel)], dim=1)


def test_averaging_is_exact_for_an_equivariant_model():
    images = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    views = teacher_views(_equivariant_toy, images, ("flow_y", "flow_x", "class"))
    plain = _equivariant_toy(images)
    expected = torch.cat([plain[:, :2], torch.sigmoid(plain[:, 2:])], dim=1)
    assert views.shape == (8, 2, 3, 16, 16)
    for view in views:
        torch.testing.assert_close(view, expected, atol=1e-6, rtol=0)
    # treating the flows as scalars (pixels turned, components not) breaks the agreement
    scalars = teacher_views(_equivariant_toy, images, ("class", "class", "class"))
    assert not torch.allclose(torch.logit(scalars[1, :, :2].clamp(1e-6, 1 - 1e-6)), plain[:, :2], atol=1e-3)


def test_flow_components_turn_as_vectors_hand_built():
    # the ramp u = x has the flow (dy, dx) = (0, 1); turned a quarter it reads u' = 15 - y, flow (-1, 0)
    ramp = torch.arange(16.0).repeat(16, 1)[None, None]
    turned = apply_view(ramp, (1, False))
    assert torch.equal(turned[0, 0, :, 0], 15 - torch.arange(16.0))
    seen = torch.stack([-torch.ones(16, 16), torch.zeros(16, 16)])[None]  # what the turned view's flow is
    torch.testing.assert_close(invert_view(seen, (1, False), ("flow_y", "flow_x")),
                               torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])[None])
    # the flipped ramp 15 - x has flow (0, -1); inverting gives (0, 1) back
    flipped = torch.stack([torch.zeros(16, 16), -torch.ones(16, 16)])[None]
    torch.testing.assert_close(invert_view(flipped, (0, True), ("flow_y", "flow_x")),
                               torch.stack([torch.zeros(16, 16), torch.ones(16, 16)])[None])
    # three turns then a flip: (dy, dx) = (1, 0) pointing down, seen as ... composed by hand
    field = torch.stack([torch.ones(16, 16), torch.zeros(16, 16)])[None]
    for view in DIHEDRAL_VIEWS:
        roundtrip = invert_view(_seen_flow(field, view), view, ("flow_y", "flow_x"))
        torch.testing.assert_close(roundtrip, field)


def _seen_flow(field: torch.Tensor, view) -> torch.Tensor:
    """The constant flow (dy, dx) of a potential after ``apply_view``, from finite differences of the potential."""
    potential = (torch.arange(16.0)[:, None] * field[0, 0, 0, 0] + torch.arange(16.0)[None] * field[0, 1, 0, 0])
    seen = apply_view(potential[None, None], view)[0, 0]
    dy, dx = float(seen[1, 0] - seen[0, 0]), float(seen[0, 1] - seen[0, 0])
    return torch.stack([torch.full((16, 16), dy), torch.full((16, 16), dx)])[None]


def test_uncertainty_and_moving_percentile():
    views = torch.tensor([[0.9, 2.0], [0.7, 4.0]]).view(2, 1, 2, 1, 1)  # 2 views, channels (class, flow)
    spread = uncertainty(views, ("class", "flow_y"))
    # class: min(p, 1 - p) of the mean 0.8; flow: population std of (2, 4)
    torch.testing.assert_close(spread.flatten(), torch.tensor([0.2, 1.0]))
    moving = MovingPercentile(50.0, 0.5)
    values = torch.arange(10.0).view(1, 1, 10, 1)
    torch.testing.assert_close(moving.update(values), torch.tensor([float(np.percentile(np.arange(10.0), 50))]))
    torch.testing.assert_close(moving.update(values + 10), torch.tensor([0.5 * 4.5 + 0.5 * 14.5]))


# -- stopping signals ---------------------------------------------------------------------------------
def test_fn_rate_counts_lost_initial_objects():
    initial = np.zeros((20, 20), int)
    initial[2:8, 2:8], initial[12:18, 12:18], initial[2:8, 12:18] = 1, 2, 3
    current = np.zeros_like(initial)
    current[2:8, 2:8] = 5  # kept
    current[12:15, 12:15] = 6  # IoU 9/36 < 0.5: lost; object 3 vanished
    assert fn_rate([initial], [current]) == pytest.approx(2 / 3)
    match = match_instances(initial, current)
    assert fn_rate([initial, initial], [current, initial]) == pytest.approx(match.fn / (2 * match.n_true))
    assert fn_rate([np.zeros((4, 4), int)], [current[:4, :4]]) == 0.0


def test_embedding_distance_and_stop_choice():
    initial = np.array([[3.0, 4.0], [0.0, 5.0]])
    current = np.array([[3.0, 5.0], [0.0, 2.0]])
    assert embedding_distance(initial, current) == pytest.approx((1.0 + 3.0) / 2 / 5.0)
    assert embedding_distance(initial, initial) == 0.0
    with pytest.raises(ValueError, match="same shape|one shape"):
        embedding_distance(initial, current[:1])
    stop = choose_stop([0, 10, 20, 30], [0.0, 0.05, 0.2, 0.1], 0.1, "embedding")
    assert (stop.step, stop.crossed) == (10, True)
    assert choose_stop([0, 10], [0.0, 0.05], 0.1, "fn_rate").step == 10


# -- the loop -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def target_data():
    return generate(DEMO_TARGET, 6, shape=(96, 96), seed=7)


def test_short_run_records_both_signals(target_data):
    target = adapt_target(UNetModel.from_checkpoint(demo_checkpoint("near_target")))
    run = adapt(target, target_data.images, QUICK, progress=False)
    assert [p.step for p in run.curve] == [0, 3, 6] and sorted(run.checkpoints) == [0, 3, 6]
    assert run.curve[0].fn_rate == 0.0 and run.curve[0].embedding == 0.0
    assert all(0.0 <= p.fn_rate <= 1.0 and p.embedding > 0 and p.weight_distance > 0 for p in run.curve[1:])
    # the drift grows as the teacher follows the student
    assert run.curve[2].weight_distance > run.curve[1].weight_distance
    assert set(run.stops) == {"fn_rate", "embedding"}
    tight = adapt(adapt_target(UNetModel.from_checkpoint(demo_checkpoint("near_target"))), target_data.images,
                  replace(QUICK, embedding_threshold=1e-9), progress=False)
    assert tight.stops["embedding"].step == 0 and tight.stops["embedding"].crossed
    assert tight.curve[1:] == run.curve[1:]  # same seed, same run


def test_l2sp_keeps_the_weights_near_the_pretrained_ones(target_data):
    distances = {}
    for weight in (0.0, 1000.0):
        target = adapt_target(UNetModel.from_checkpoint(demo_checkpoint("near_target")))
        run = adapt(target, target_data.images, replace(QUICK, steps=12, eval_every=12, l2sp=weight,
                                                        learning_rate=2e-3, ema_decay=0.5), progress=False)
        distances[weight] = run.curve[-1].weight_distance
    assert distances[1000.0] < 0.5 * distances[0.0]


def test_adaptation_raises_true_f1_of_the_worst_demo_model():
    data = generate(DEMO_TARGET, 8, shape=(128, 128), seed=7)
    model = UNetModel.from_checkpoint(demo_checkpoint("sharp_clean"))

    def f1():
        return np.mean([match_instances(t, p.labels).f1 for t, p in zip(data.labels, model.predict(data.images))])

    before = f1()
    run = adapt(adapt_target(model), data.images, AdaptConfig(steps=40, eval_every=40, n_eval=4), progress=False)
    load_step(adapt_target(model), run, 40)
    assert f1() > before + 0.1


# -- kinds ----------------------------------------------------------------------------------------------
class _BlackBox(SegmentationModel):
    def _predict_normalised(self, batch):
        return [Prediction(probability=np.zeros(a.shape[:2], np.float32)) for a in batch]


def test_unsupported_kinds_fail_clearly():
    with pytest.raises(TypeError, match="kind 'stardist', which cannot be adapted"):
        adapt_target(BankEntry("sd", "stardist", pretrained="2D_versatile_fluo"))
    with pytest.raises(TypeError, match="cannot be adapted: only kit U-Nets"):
        adapt_target(_BlackBox(name="box"))


def test_a_model_trained_at_a_scale_adapts_at_that_scale(tmp_path):
    from cte_kit.models.unet import UNetConfig, load_checkpoint

    torch.manual_seed(0)
    config = UNetConfig(width=4, output="foreground+boundary")
    model = UNetModel(name="half", network=config.build(), config=config, scale=0.5, percentiles=None)
    target = adapt_target(model)
    image = torch.rand(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = target.outputs(target.network.eval(), image)
    # what the adapter predicts: the network at half size, resized back to the image
    assert outputs.shape == (1, 2, 64, 64)
    predicted = model.predict([image[0, 0].numpy()])[0].probability
    np.testing.assert_allclose(torch.sigmoid(outputs[0, 0]).numpy(), predicted, atol=1e-5)
    target.writer(target.network, tmp_path / "adapted.pt", {})
    assert load_checkpoint(tmp_path / "adapted.pt")[2]["scale"] == 0.5


@pytest.mark.adapters
def test_cellpose_cpnet_runs_through_the_loop(tiny_cellpose_file, target_data, tmp_path):
    from cte_kit.models.cellpose import CellposeModel

    target = adapt_target(CellposeModel.from_file(tiny_cellpose_file))
    assert target.roles == ("flow_y", "flow_x", "class")
    run = adapt(target, target_data.images[:3], replace(QUICK, steps=2, eval_every=1), progress=False)
    assert len(run.curve) == 3 and run.curve[-1].weight_distance > 0
    kind, path = save_adapted(target, run, tmp_path / "cp_adapted", {"source_model": "tiny"}, step=1)
    reloaded = load_model(BankEntry("cp_adapted", kind, str(path)))
    state = reloaded.cellpose.net.state_dict()
    assert all(torch.equal(state[k], v) for k, v in run.checkpoints[1].items())


# -- the command line -----------------------------------------------------------------------------------
def test_cli_adapts_without_reading_labels_writes_the_chosen_checkpoint_and_joins_the_bank(tmp_path, monkeypatch,
                                                                                           target_data, capsys):
    import json

    import cte_kit.data.folder as folder
    from cte_kit.cli import main
    from cte_kit.evaluation.sweep import read_results, run_sweep

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for name, image, labels in zip(target_data.names, target_data.images, target_data.labels):
        tifffile.imwrite(tmp_path / "images" / f"{name}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", labels.astype(np.uint16))
    bank = write_bank([BankEntry("near", "unet", demo_checkpoint("near_target").as_posix())]
                      + [BankEntry(name, "unet", demo_checkpoint(name).as_posix())
                         for name in ("sharp_clean", "large_nuclei", "very_noisy")], tmp_path / "bank.yaml")
    stardist = write_bank([BankEntry("sd", "stardist", pretrained="2D_versatile_fluo")], tmp_path / "sd.yaml")
    read = []
    original = folder.read_array
    monkeypatch.setattr(folder, "read_array", lambda path: read.append(path) or original(path))
    monkeypatch.setattr(folder, "_read_labels", lambda *a: pytest.fail("adapt read a label file"))
    out = tmp_path / "adapted" / "near_adapted.pt"
    assert main(["adapt", "--bank", str(bank), "--model", "near", "--images", str(tmp_path / "images"),
                 "--out", str(out), "--steps", "4", "--eval-every", "2", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert read and all(path.parent == tmp_path / "images" for path in read)
    assert out.is_file() and provenance_path(out).is_file()
    checkpoints = out.parent / "near_adapted_checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*.pt")) == ["step_00000.pt", "step_00002.pt", "step_00004.pt"]
    assert (checkpoints / "ranking.sqlite").is_file()
    assert main(["adapt", "--bank", str(stardist), "--model", "sd", "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert main(["adapt", "--bank", str(bank), "--model", "nope", "--images", str(tmp_path / "images"),
                 "--out", str(tmp_path / "x.pt")]) == 2
    if not torch.cuda.is_available():
        assert main(["adapt", "--bank", str(bank), "--model", "near", "--images", str(tmp_path / "images"),
                     "--out", str(tmp_path / "x.pt"), "--device", "cuda"]) == 2
    monkeypatch.undo()

    report = json.loads(provenance_path(out).read_text())
    assert report["source_model"] == "near" and report["settings"]["steps"] == 4
    assert [p["step"] for p in report["curve"]] == [0, 2, 4]
    choice = report["choice"]
    assert [c["step"] for c in choice["checkpoints"]] == [0, 2, 4] and choice["estimator"].startswith("hard CTE")
    # the rest of the bank is the consensus the checkpoints are compared with (the guards may leave one out)
    assert set(choice["reference_models"]) | set(choice["left_out_of_the_reference"]) == {
        "sharp_clean", "large_nuclei", "very_noisy"}
    assert len(choice["reference_models"]) >= 2 and all(0 <= c["agreement"] <= 1 for c in choice["checkpoints"])
    # --out holds the chosen checkpoint, and the report and the console say which and why
    chosen = UNetModel.from_checkpoint(checkpoints / f"step_{choice['chosen_step']:05d}.pt").network.state_dict()
    written = UNetModel.from_checkpoint(out).network.state_dict()
    assert all(torch.equal(written[k], v) for k, v in chosen.items())
    assert report["step"] == choice["chosen_step"] and choice["reason"] in printed
    if choice["chosen_step"] == 0:
        assert choice["reason"].startswith("adaptation did not help here")
    entries = [read_bank(bank)[0], BankEntry("near_adapted", "unet", str(out))]
    run_sweep(entries, target_data.images[:2], target_data.names[:2], tmp_path / "rank.csv", [FeatureDropout(0.2)],
              labels=target_data.labels[:2], progress=False)
    assert {row["model"] for row in read_results(tmp_path / "rank.csv")} == {"near", "near_adapted"}


@pytest.mark.adapters
def test_bioimageio_export_of_a_kit_unet_adapts_into_a_kit_checkpoint(tiny_bioimageio_zip, target_data, tmp_path):
    from cte_kit.models.bioimageio import BioImageIOModel

    exported = BioImageIOModel.from_source(tiny_bioimageio_zip)
    target = adapt_target(exported)
    run = adapt(target, target_data.images[:3], replace(QUICK, steps=2, eval_every=2), progress=False)
    kind, path = save_adapted(target, run, tmp_path / "adapted.pt", {"source_model": "tiny"}, step=2)
    reloaded = load_model(BankEntry("adapted", kind, str(path)))
    assert kind == "unet" and reloaded.percentiles == (1.0, 99.8)
    state = reloaded.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in run.checkpoints[2].items())
    # the kit checkpoint predicts what the adapted export predicts
    np.testing.assert_allclose(reloaded.predict(target_data.images[:1])[0].probability,
                               exported.predict(target_data.images[:1])[0].probability, atol=1e-4)
