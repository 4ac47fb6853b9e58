"""The notebooks' timing helper: interleaved repeats, no oversubscription, an honest note."""

from __future__ import annotations

import time

import torch

from course_lib import timing


def test_candidates_run_interleaved_after_a_warm_up(monkeypatch):
    monkeypatch.setattr(timing, "load_average", lambda window=0.5: 0.0)
    calls = []
    report = timing.compare_timings({name: (lambda n=name: calls.append(n)) for name in "abc"}, repeats=3,
                                    progress=False)
    assert calls[:3] == ["a", "b", "c"]                     # one warm-up each
    assert calls[3:] == list("abc") + list("bca") + list("cab")  # who goes first rotates
    assert all(len(v) == 3 for v in report.seconds.values())


def test_threads_stay_below_what_other_programs_leave_free(monkeypatch):
    monkeypatch.setattr(timing, "cpu_count", lambda: 4)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert timing.quiet_threads(load=0.0) == 4
        assert timing.quiet_threads(load=2.6) == 1
        assert timing.quiet_threads(load=9.0) == 1
        seen = []
        monkeypatch.setattr(timing, "load_average", lambda window=0.5: 3.0)
        report = timing.compare_timings({"x": lambda: seen.append(torch.get_num_threads())}, repeats=2,
                                        progress=False)
        assert set(seen) == {1} and report.threads == 1
        assert torch.get_num_threads() == 4  # restored
    finally:
        torch.set_num_threads(before)


def test_the_note_says_when_numbers_may_not_mean_much(monkeypatch):
    monkeypatch.setattr(timing, "load_average", lambda window=0.5: 0.0)
    steady = timing.TimingReport({"a": [0.010, 0.0101, 0.0102]}, threads=2, load=0.1, cpus=2)
    assert not steady.busy and "looks busy" not in steady.note()
    noisy = timing.TimingReport({"a": [0.010, 0.020, 0.030]}, threads=2, load=0.1, cpus=2)
    assert noisy.busy and "looks busy" in noisy.note() and "'a'" in noisy.note()
    loaded = timing.TimingReport({"a": [0.010, 0.0101, 0.0102]}, threads=1, load=1.9, cpus=2)
    assert loaded.busy and "load 1.9 on 2 CPUs" in loaded.note()


def test_ratios_tables_and_rates():
    report = timing.TimingReport({"slow": [0.04, 0.05, 0.06], "fast": [0.01, 0.01, 0.012]}, threads=1, load=0.0,
                                 cpus=2)
    assert abs(report.ratio("slow", "fast") - 5.0) < 1e-9
    assert "50.0 ms (median)" in report.table()
    assert "6400.0 tokens/s" in report.table(per={"fast": 64}, per_unit="tokens/s")


def test_the_load_of_other_programs_is_measured_without_our_own(monkeypatch):
    load = timing.load_average(window=0.2)
    assert load is None or load >= 0.0
    # our own busy loop during the window is not counted as "other programs"
    ticks = iter([(1000, 0), (1000 + 40, 40)])
    monkeypatch.setattr(timing, "_busy_jiffies", lambda: next(ticks))
    monkeypatch.setattr(timing, "_system_load", lambda: 0.2)
    assert timing.load_average(window=0.01) == 0.2
    # ... and a quiet moment between another program's bursts does not hide a high load average
    ticks = iter([(1000, 0), (1000, 0)])
    monkeypatch.setattr(timing, "_busy_jiffies", lambda: next(ticks))
    monkeypatch.setattr(timing, "_system_load", lambda: 5.5)
    assert timing.load_average(window=0.01) == 5.5


def test_a_long_timing_shows_a_progress_bar(monkeypatch, capsys):
    monkeypatch.setattr(timing, "load_average", lambda window=0.5: 0.0)
    monkeypatch.setattr(timing, "PROGRESS_AFTER_S", 0.0)
    timing.compare_timings({"sleep": lambda: time.sleep(0.001)}, repeats=2)
    assert "timing" in capsys.readouterr().err
