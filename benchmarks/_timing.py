"""Timing helpers shared by the benchmark scripts (run them as `python benchmarks/NAME.py`)."""

import statistics
import time


def _times(function, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return times


def best_of(function, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls: the least disturbed by other load on the machine."""
    return min(_times(function, repeats))


def median_of(function, repeats: int) -> float:
    """Median wall time of ``repeats`` calls: one slow or one lucky call does not move it."""
    return statistics.median(_times(function, repeats))


def wall_and_cpu(function) -> tuple[float, float]:
    """Wall and CPU seconds of one call (CPU: the process's, every thread's; less inflated by other load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu
