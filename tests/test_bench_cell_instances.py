"""benchmarks/bench_cell_instances.py: where objects go wrong (hand-counted), and network maps of whole large images."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def test_object_errors_count_matches_merges_cuts_and_specks():
    errors = _load("bench_cell_instances").object_errors
    truth = np.zeros((20, 60), np.int32)
    truth[2:18, 2:10], truth[2:18, 10:20] = 1, 2  # two touching cells of 128 and 160 px
    truth[2:18, 25:35] = 3  # a lone cell of 160 px
    truth[2:18, 40:50] = 4  # a lone cell of 160 px, cut in two below
    predicted = np.zeros_like(truth)
    predicted[2:18, 2:20] = 1  # merges 1 and 2: IoU 128/288 = 0.44 with cell 1, 160/288 = 0.56 with cell 2
    predicted[2:18, 27:33] = 2  # inside cell 3: IoU 96/160 = 0.6
    predicted[2:18, 40:45], predicted[2:18, 45:50] = 3, 4  # cell 4 in halves: IoU 0.5 each
    predicted[0, 59] = 5  # a speck on the background
    assert errors(truth, predicted) == {"true": 4, "matched": 3, "in_merge": 1, "other": 0, "predicted": 5,
                                        "merges": 1, "specks": 1}
    predicted[2:18, 44:50] = 0  # cell 4 cut to its first 4 columns: IoU 0.4, no match, no merge
    assert errors(truth, predicted)["other"] == 1


def test_output_maps_of_an_image_larger_than_the_tile_size():
    """An image above the adapter's tile size is prepared lazily (tile by tile): the maps still come whole."""
    from cte_kit.models.unet import UNetConfig, UNetModel

    torch.manual_seed(0)
    config = UNetConfig(levels=2, width=4, output="foreground+boundary")
    model = UNetModel(name="tiny", network=config.build(), config=config, tile_size=64)
    image = np.random.default_rng(0).random((100, 90)).astype(np.float32)
    ((foreground, boundary),) = _load("bench_instances").output_maps(model, [image])
    assert foreground.shape == boundary.shape == (100, 90)
    assert 0 <= foreground.min() and foreground.max() <= 1
