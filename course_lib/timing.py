"""Timing that cannot teach the wrong lesson on a busy laptop.

A notebook that times two things one after the other, once each, with every core busy, can
print that the KV cache makes generation *slower*. :func:`compare_timings` is what every
timing cell in the course uses instead:

* the candidates run **interleaved** (A B C, B C A, C A B, ...), so a burst of load from
  another program hits all of them alike, after one warm-up call each;
* it reports the **minimum** and the **median** of the repeats (the minimum is the machine's
  best, the median what you would see);
* it runs with a **thread count that does not oversubscribe** the machine: torch's threads,
  but no more than the CPUs other programs leave free (the larger of what ``/proc`` shows them
  using over half a second and the 1-minute load average);
* a progress bar (``tqdm.auto``) appears when the timing will take more than a few seconds;
* :meth:`TimingReport.note` says, in the printed text, when the machine looked too busy for
  the numbers to mean much (other programs using the CPUs, or repeats that disagree by more
  than 30 %).

    report = compare_timings({"with cache": lambda: ..., "without": lambda: ...}, repeats=5)
    print(report.table())
    print(report.note())
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import statistics
import time
from typing import Any, Callable

NOISY_SPREAD = 0.30      # median more than 30 % above the minimum: the repeats disagree
PROGRESS_AFTER_S = 3.0   # show a progress bar when the whole timing should take longer than this


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` says), for reports."""
    import platform
    from pathlib import Path

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask on Linux, else os.cpu_count())."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_jiffies() -> tuple[int, int] | None:
    """(CPU time used by every process, by this one), in clock ticks (Linux /proc)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, int(mine[11]) + int(mine[12])


def _system_load() -> float | None:
    """The 1-minute load average (runnable threads, this process's included), or None."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def load_average(window: float = 0.5) -> float | None:
    """How many CPUs other programs keep busy: the larger of what /proc shows them using over the
    next ``window`` seconds (Linux; this process's own work left out) and the 1-minute load average.

    Both, because each misses something: a short window can fall between the bursts of a busy
    browser, and the load average counts this process's own recent work. Erring towards "busy"
    costs a timing one thread; erring the other way oversubscribes the cores, and then a timing
    can run 20 times slower and rank the candidates wrongly."""
    measured = None
    before = _busy_jiffies()
    if before is not None:
        start = time.perf_counter()
        time.sleep(window)
        after = _busy_jiffies()
        elapsed = time.perf_counter() - start
        if after is not None and elapsed > 0:
            ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
            others = (after[0] - before[0]) - (after[1] - before[1])
            measured = max(0.0, others / ticks / elapsed)
    system = _system_load()
    found = [v for v in (measured, system) if v is not None]
    return max(found) if found else None


def quiet_threads(load: float | None = None) -> int:
    """Threads for a timing: torch's current count, capped by the CPUs that look free."""
    import torch

    cpus = cpu_count()
    load = load_average() if load is None else load
    free = cpus if load is None else max(1, int(cpus - load + 0.5))
    return max(1, min(torch.get_num_threads(), cpus, free))


@contextlib.contextmanager
def torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class TimingReport:
    seconds: dict[str, list[float]]   # every repeat, per candidate
    threads: int
    load: float | None
    cpus: int

    def best(self, name: str) -> float:
        return min(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def ratio(self, slow: str, fast: str) -> float:
        """How many times faster ``fast`` is than ``slow``, from the medians."""
        return self.median(slow) / self.median(fast)

    def spread(self, name: str) -> float:
        return self.median(name) / self.best(name) - 1

    @property
    def busy(self) -> bool:
        loaded = self.load is not None and self.load > max(self.cpus - self.threads, 0) + 0.5
        return loaded or any(self.spread(n) > NOISY_SPREAD for n in self.seconds)

    def table(self, unit: str = "ms", per: dict[str, float] | None = None, per_unit: str = "") -> str:
        """One line per candidate: median and best time, or a rate when ``per`` gives the work
        done per call (``per={"name": 64}`` with ``per_unit="tokens/s"``)."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        width = max(len(n) for n in self.seconds)
        lines = []
        for name in self.seconds:
            if per and name in per:
                lines.append(f"{name:<{width}}  {per[name] / self.median(name):8.1f} {per_unit} (median), "
                             f"{per[name] / self.best(name):8.1f} at best")
            else:
                lines.append(f"{name:<{width}}  {self.median(name) * scale:8.1f} {unit} (median), "
                             f"{self.best(name) * scale:8.1f} {unit} at best")
        return "\n".join(lines)

    def note(self) -> str:
        """What the numbers were measured under, and a warning when they may not mean much."""
        repeats = len(next(iter(self.seconds.values())))
        text = f"({repeats} interleaved repeats, {self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.load is not None:
            text += f"; load {self.load:.1f} on {self.cpus} CPU{'s' if self.cpus != 1 else ''}"
        text += ")"
        if self.busy:
            worst = max(self.seconds, key=self.spread)
            text += (f"\nThe machine looks busy (repeats of {worst!r} vary by {self.spread(worst):.0%}): these "
                     f"numbers may not mean much. Close other programs and run this cell again.")
        return text


def compare_timings(candidates: dict[str, Callable[[], Any]], repeats: int = 5, warmup: int = 1,
                    threads: int | None = None, progress: bool | None = None) -> TimingReport:
    """Time each candidate ``repeats`` times, interleaved, after ``warmup`` calls each."""
    import torch

    names = list(candidates)
    load = load_average()
    n_threads = quiet_threads(load) if threads is None else threads
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with torch_threads(n_threads), torch.inference_mode():
        estimate = 0.0
        for name in names:
            for _ in range(max(warmup, 1)):
                start = time.perf_counter()
                candidates[name]()
                estimate += time.perf_counter() - start
        estimate = estimate / max(warmup, 1) * repeats
        show = progress if progress is not None else estimate > PROGRESS_AFTER_S
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=repeats * len(names), desc="timing", leave=False)
        try:
            for r in range(repeats):
                order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
                for name in order:
                    start = time.perf_counter()
                    candidates[name]()
                    seconds[name].append(time.perf_counter() - start)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    return TimingReport(seconds, n_threads, load, cpu_count())
