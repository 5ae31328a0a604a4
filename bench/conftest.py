"""Speed suite: ``pytest bench --benchmark-only`` (kept out of the default test run).

Each benchmark times an mdm_ext op with pytest-benchmark and its PyTorch reference in the same
run, and stores the speed-up (reference time / op time) in the benchmark's extra_info.
"""
import statistics
import time

import pytest
import torch


def median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@pytest.fixture
def compare(benchmark):
    """compare(op, reference, **sizes): benchmark `op`, time `reference`, record the ratio."""

    def run(op, reference, **sizes):
        benchmark.extra_info.update(sizes)
        benchmark.pedantic(op, rounds=5, warmup_rounds=1)
        reference_s = median_seconds(reference)
        benchmark.extra_info["reference_ms"] = reference_s * 1e3
        benchmark.extra_info["speedup_vs_reference"] = reference_s / benchmark.stats.stats.median
        print(f"\n{benchmark.name}: {benchmark.stats.stats.median * 1e3:.1f} ms, reference "
              f"{reference_s * 1e3:.1f} ms, speed-up {benchmark.extra_info['speedup_vs_reference']:.2f}x")

    torch.manual_seed(0)
    return run
