"""The kernel choice cache: timings of one process serve the next one in the same context."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from vitsuite.core.layers import fast as fast_path
from vitsuite.core.layers import kernel_cache


def _new_process(monkeypatch: pytest.MonkeyPatch, path: Path | str) -> None:
    """What a fresh process sees: the cache file at ``path``, no choices in memory."""
    monkeypatch.setenv(kernel_cache.ENV, str(path))
    monkeypatch.setattr(kernel_cache, "_STATE", {"loaded": False, "path": None, "entries": {}, "new": {},
                                                 "at_exit": True})  # no atexit hook from tests
    monkeypatch.setattr(fast_path, "_CHOICE", {})
    monkeypatch.setattr(fast_path, "_RETUNE", {})


def _candidates(calls: list[str]) -> dict:
    def slow() -> torch.Tensor:
        calls.append("slow")
        time.sleep(0.002)
        return torch.zeros(2)

    def quick() -> torch.Tensor:
        calls.append("quick")
        return torch.zeros(2)

    return {"slow": slow, "quick": quick}


def test_a_later_process_takes_the_stored_choice_without_timing(tmp_path, monkeypatch):
    path = tmp_path / "choices.json"
    _new_process(monkeypatch, path)
    calls: list[str] = []
    fast_path.choose_kernel(("shape", 3, (4, 5)), _candidates(calls))
    assert fast_path._CHOICE[("shape", 3, (4, 5))] == "quick" and calls.count("slow") >= 8  # timed here
    assert kernel_cache.save() == path and kernel_cache.save() is None  # nothing new the second time
    data = json.loads(path.read_text())
    (entry_key, best), = data["entries"].items()
    assert data["format"] == kernel_cache.FORMAT and entry_key.endswith("('shape', 3, (4, 5))")
    assert set(best) == {"slow", "quick"} and best["quick"] < best["slow"]

    _new_process(monkeypatch, path)
    calls.clear()
    fast_path.choose_kernel(("shape", 3, (4, 5)), _candidates(calls))
    assert calls == ["quick"]  # one call, no timing
    assert fast_path._CHOICE[("shape", 3, (4, 5))] == "quick"
    # another shape, another candidate set, another thread count: timed afresh
    for key, cands in ((("shape", 4, (4, 5)), _candidates(calls)),
                       (("shape", 3, (4, 5)), {**_candidates(calls), "third": lambda: torch.zeros(2)})):
        fast_path._CHOICE.clear()
        calls.clear()
        fast_path.choose_kernel(key, cands)
        assert calls.count("slow") >= 8
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        fast_path._CHOICE.clear()
        calls.clear()
        fast_path.choose_kernel(("shape", 3, (4, 5)), _candidates(calls))
        assert calls.count("slow") >= 8
    finally:
        torch.set_num_threads(threads)


def test_a_close_call_is_stored_and_updated_by_its_second_timing(tmp_path, monkeypatch):
    _new_process(monkeypatch, tmp_path / "choices.json")
    monkeypatch.setattr(fast_path, "RETUNE_AFTER_S", 0.0)
    monkeypatch.setattr(fast_path, "RETUNE_MARGIN", 1e9)  # every choice is a close call
    same = {"a": lambda: torch.zeros(2), "b": lambda: torch.zeros(2)}
    fast_path.choose_kernel(("close",), same)
    assert ("close",) in fast_path._RETUNE
    (first,) = kernel_cache._STATE["new"].values()  # stored already: a one-image run never times twice
    first = dict(first)
    fast_path.choose_kernel(("close",), same)
    assert ("close",) not in fast_path._RETUNE
    (second,) = kernel_cache._STATE["new"].values()
    assert all(second[n] <= first[n] for n in first)  # both timings' fastest calls


def test_damaged_disabled_and_unwritable_caches(tmp_path, monkeypatch, caplog):
    path = tmp_path / "choices.json"
    path.write_text("{not json")
    _new_process(monkeypatch, path)
    calls: list[str] = []
    with caplog.at_level("WARNING", logger=kernel_cache.__name__):
        fast_path.choose_kernel(("k",), _candidates(calls))
    assert "ignoring kernel choice cache" in caplog.text and calls.count("slow") >= 8
    assert kernel_cache.save() == path and json.loads(path.read_text())["entries"]  # replaced by a valid file
    assert [p.name for p in tmp_path.iterdir()] == ["choices.json"]  # no temp file left behind

    for off in ("0", "off"):
        _new_process(monkeypatch, off)
        assert kernel_cache.cache_path() is None
        fast_path.choose_kernel(("k",), _candidates(calls))
        assert kernel_cache.save() is None and not kernel_cache._STATE["new"]

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    _new_process(monkeypatch, blocker / "choices.json")  # its directory cannot be created
    fast_path.choose_kernel(("k",), _candidates(calls))
    assert kernel_cache.save() is None  # not written, no exception


def test_default_location_follows_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.delenv(kernel_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert kernel_cache.cache_path() == tmp_path / "vitsuite" / "kernel-choices.json"


def test_choices_cross_process_boundaries(tmp_path):
    """Two real processes: the first times a linear layer's kernels and writes the file at exit, the
    second runs the same layer with timing made impossible."""
    path = tmp_path / "choices.json"
    script = textwrap.dedent(
        """
        import sys, torch
        from vitsuite.core.layers import fast
        torch.set_num_threads(2)
        torch.manual_seed(0)
        x, w, b = torch.randn(64, 96), torch.randn(128, 96), torch.randn(128)
        if sys.argv[1] == "second":
            def no_timing(*a, **k):
                raise AssertionError("timed again")
            fast._time_candidates = no_timing
        with torch.inference_mode():
            y = fast.linear(x, w, b, fast=True)
        torch.testing.assert_close(y, torch.nn.functional.linear(x, w, b), rtol=1e-5, atol=1e-5)
        print(sorted(fast._CHOICE.values()))
        """)
    env = {**os.environ, kernel_cache.ENV: str(path)}
    first = subprocess.run([sys.executable, "-c", script, "first"], env=env, capture_output=True, text=True,
                           timeout=300)
    assert first.returncode == 0, first.stderr
    entries = json.loads(path.read_text())["entries"]
    assert entries and all(f"threads 2|('linear'" in k for k in entries)
    second = subprocess.run([sys.executable, "-c", script, "second"], env=env, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # the same kernel, taken from the file
