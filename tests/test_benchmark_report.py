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


def test_quiet_pairs_need_both_probes_around_them_fast():
    probes = [100.0, 95.0, 60.0, 92.0, 99.0]  # before pairs 0..3, after pair 3
    assert bench.quiet_pairs(probes) == [True, False, False, True]
    assert bench.quiet_pairs(probes, reference=200.0) == [False] * 4  # against another process's fastest
    assert bench.quiet_pairs(probes, fraction=0.5) == [True] * 4
    assert bench.quiet_pairs([100.0]) == []


def test_quiet_summary_takes_only_quiet_pairs():
    summary = bench.quiet_summary([2.0, 3.0, 2.2], [1.0, 2.0, 1.0], [True, False, True])
    assert summary == {"quiet_pairs": 2, "official_quiet_s": 2.1, "ours_quiet_s": 1.0,
                       "ratio_quiet_median": pytest.approx(2.1)}
    assert bench.quiet_summary([2.0], [1.0], [False]) == {"quiet_pairs": 0}


def test_timed_pair_probes_before_each_pair_and_after_the_last():
    calls = []
    speeds = iter([100.0, 50.0, 100.0, 100.0, 100.0, 100.0])
    a = lambda: calls.append("a")
    b = lambda: calls.append("b")

    def probe():
        calls.append("p")
        return next(speeds)

    *_, probes = bench.timed_pair(a, b, warmup=0, repeat=3, min_time=0.0, probe=probe)
    timed_calls = calls[calls.index("p"):]
    assert timed_calls == ["p", "a", "b", "p", "a", "b", "p", "a", "b", "p"]
    assert probes == [100.0, 50.0, 100.0, 100.0] and bench.quiet_pairs(probes) == [False, False, True]
    assert bench.timed_pair(a, b, 0, 2, 0.0)[4] == []  # no probe, no probes


def test_machine_probe_measures_a_positive_rate():
    assert bench.MachineProbe(n=64, calls=2)() > 0


def test_pooled_quiet_pairs_use_the_fastest_probe_of_all_processes():
    a = _row([2.0, 2.0], [1.0, 1.0], 0.0)
    a["probe_gflops"] = [100.0, 100.0, 100.0]
    b = _row([2.0, 3.0], [2.0, 1.0], 0.0)
    b["probe_gflops"] = [50.0, 50.0, 50.0]  # quiet by its own probes, a slow process against a's
    assert bench.quiet_pairs(b["probe_gflops"]) == [True, True]
    row = bench.merge_processes([a, b])
    assert row["quiet_pairs"] == 2 and row["ratio_quiet_median"] == 2.0 and row["ratio_paired_median"] == 2.0
    assert row["probe_gflops"] == [[100.0, 100.0, 100.0], [50.0, 50.0, 50.0]]
