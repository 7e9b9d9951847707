"""benchmarks/bench_rank_floor.py in its short mode: it runs and prints the ratio and the breakdown for
both banks. No timing is asserted (speed is measured by the benchmark, never asserted in tests)."""

import importlib.util
import re
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_rank_floor.py"


def test_short_mode_prints_the_ratio_and_where_the_time_goes(tmp_path, capsys, tiny_stardist_folder,
                                                              tiny_cellpose_file):
    spec = importlib.util.spec_from_file_location("bench_rank_floor", BENCHMARK)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--short", "--cache", str(tmp_path), "--stardist", str(tiny_stardist_folder),
                           "--cellpose", str(tiny_cellpose_file)]) == 0
    printed = capsys.readouterr().out
    for bank, kinds in (("unet", "unet"), ("mixed", "cellpose, stardist, unet")):
        assert f"bank '{bank}': " in printed and f"({kinds})" in printed
        ratio = re.search(rf"RATIO rank / predict \[{bank}\]: ([0-9.]+) wall, ([0-9.]+) CPU", printed)
        assert ratio and float(ratio.group(1)) > 0 and float(ratio.group(2)) > 0
        breakdown = printed.split(f"Where the time goes [{bank}]")[1]
        for step in ("network (forward pass, adapter)", "instance post-processing", "consistency", "store writes",
                     "guards", "total"):
            assert step in breakdown
