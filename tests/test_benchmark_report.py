"""The model benchmark's report logic (benchmarks/models.py): pooling the calls of several processes."""

import statistics
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("models")


def _row(official, ours, diff):
    row = {"key": "m", "status": "ok", "gflops": 10.0, "matmul_gflops": 100.0, "max_diff": diff, "rel_diff": diff,
           "peak_rss_mb": 500.0 + diff, "official_times": official, "ours_times": ours,
           "official_s": statistics.median(official), "ours_s": statistics.median(ours)}
    bench.derive_ratios(row)
    return row


def test_processes_are_pooled_call_by_call():
    a = _row([2.0, 2.2, 2.1], [1.0, 1.0, 1.1], 1e-6)  # a process where the official ran slowly: 2.1 / 1.0
    b = _row([1.5, 1.6], [1.0, 1.05], 3e-6)           # and one where it ran fast: 1.55 / 1.025
    a["kernel_choices"] = {"linear": {"native": 3}}
    row = bench.merge_processes([a, b])
    assert row["processes"] == 2 and row["process_ratios"] == pytest.approx([2.1, 1.55 / 1.025])
    assert row["kernel_choices"] == [{"linear": {"native": 3}}, {}]  # each process's own
    assert row["official_times"] == [2.0, 2.2, 2.1, 1.5, 1.6] and row["official_s"] == 2.0
    assert row["ours_s"] == 1.0 and row["ratio_official_over_ours"] == 2.0
    assert row["ratio_paired_median"] == statistics.median([2.0, 2.2, 2.1 / 1.1, 1.5, 1.6 / 1.05])
    assert row["max_diff"] == 3e-6 and row["peak_rss_mb"] == 500.0 + 3e-6
    assert row["limit_s"] == 0.1 and row["ours_over_limit"] == 10.0
    assert a["official_times"] == [2.0, 2.2, 2.1]  # inputs untouched


def test_a_process_without_timings_is_left_out():
    failed = {"key": "m", "status": "worker failed (exit 1)"}
    ok = _row([2.0], [1.0], 0.0)
    assert bench.merge_processes([failed, ok])["ratio_official_over_ours"] == 2.0
    assert "processes" not in bench.merge_processes([failed, ok])
    assert bench.merge_processes([failed])["status"] == "worker failed (exit 1)"


def test_kernel_choices_are_counted_per_op_and_kernel():
    choices = {("linear", "none", 325, 512, 1536, True): "native", ("linear", "gelu", 325, 512, 512, True): "mkl",
               ("linear_add", 325, 512, 512, True): "native", ("attention", (1, 8, 325, 64)): "native",
               ("linear", "none", 321, 512, 96, True): "native"}
    assert bench.kernel_choices(choices) == {"attention": {"native": 1}, "linear": {"mkl": 1, "native": 2},
                                             "linear_add": {"native": 1}}
    assert bench.kernel_choices({}) == {}
