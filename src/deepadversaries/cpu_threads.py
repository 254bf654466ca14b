"""Keep torch's CPU threads at what the machine can give right now.

torch's intra-op threads wait for each other at every layer. When another process keeps
one of the cores busy, the thread on the shared core falls behind and the others spin
waiting for it: on the 2-core development machine the one-pixel attack then ran 2-24x
*slower* with two threads than with one (and only 1.1-1.3x faster with two on an idle
machine; ``benchmarks/cpu_threads.py``). ``ThreadGovernor`` samples, every few
seconds, how much CPU the other processes used on the cores this process may run on
(``/proc/stat`` minus this process's own CPU time) and sets ``torch.set_num_threads`` to
the cores left, between 1 and the ceiling it started with. On the ConvNet the attack's
numbers are bit-identical with one or two threads (tested), so the governor changes speed,
not results. Where ``/proc/stat`` is missing (not Linux) it leaves the threads alone.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from deepadversaries.errors import OptionError

#: fraction of a core that other processes may use before the governor gives that core up
SPARE = 0.3
#: seconds between two looks at /proc/stat
INTERVAL_S = 2.0
#: /proc/stat counts in USER_HZ ticks
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


@dataclass(frozen=True)
class CpuSample:
    """Busy CPU-seconds of the watched cores (all processes) and of this process, at a time."""

    wall_s: float
    busy_s: float
    own_s: float


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def busy_seconds(stat_text: str, cpus: list[int]) -> float | None:
    """Busy CPU-seconds summed over ``cpus`` from the per-CPU lines of ``/proc/stat``.

    Busy = user + nice + system + irq + softirq + steal (a virtual machine's stolen time is
    a core somebody else has); idle and iowait are not busy. None when a CPU is missing.
    """
    wanted = {f"cpu{c}" for c in cpus}
    total, seen = 0, 0
    for line in stat_text.splitlines():
        parts = line.split()
        if not parts or parts[0] not in wanted:
            continue
        ticks = [int(v) for v in parts[1:9]] + [0] * max(0, 9 - len(parts))
        user, nice, system, _idle, _iowait, irq, softirq, steal = ticks[:8]
        total += user + nice + system + irq + softirq + steal
        seen += 1
    return total * _TICK_S if seen == len(wanted) else None


def threads_for(other_cores: float, n_cpus: int, ceiling: int) -> int:
    """Threads to use when other processes keep ``other_cores`` of ``n_cpus`` cores busy."""
    free = math.floor(n_cpus - max(0.0, other_cores) + SPARE)
    return max(1, min(int(ceiling), free))


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


@dataclass
class ThreadGovernor:
    """Lowers (and restores) torch's CPU threads while other processes hold cores.

    Use as a context manager around CPU work and call :meth:`update` often (it looks at
    the machine at most every ``interval_s``); leaving the context restores the thread
    count it found. ``adaptive=False`` only applies ``ceiling``.
    """

    ceiling: int | None = None
    adaptive: bool = True
    interval_s: float = INTERVAL_S
    stat_path: Path = Path("/proc/stat")
    cpus: list[int] = field(default_factory=allowed_cpus)
    clock: Callable[[], float] = time.monotonic
    own_cpu: Callable[[], float] = _own_cpu_seconds
    #: every change: (seconds since entering, other processes' cores, threads set)
    history: list[tuple[float, float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._previous: int | None = None
        self._last: CpuSample | None = None
        self._start = 0.0

    # -- sampling ------------------------------------------------------------------------
    def sample(self) -> CpuSample | None:
        """Busy seconds now, or None when /proc/stat cannot be read."""
        try:
            busy = busy_seconds(self.stat_path.read_text(), self.cpus)
        except OSError:
            return None
        if busy is None:
            return None
        return CpuSample(self.clock(), busy, self.own_cpu())

    # -- the context -----------------------------------------------------------------------
    def __enter__(self) -> "ThreadGovernor":
        self._previous = torch.get_num_threads()
        if self.ceiling is None:
            self.ceiling = self._previous
        if int(self.ceiling) < 1:
            raise OptionError(f"--threads must be at least 1, got {self.ceiling}")
        torch.set_num_threads(int(self.ceiling))
        self._start = self.clock()
        self._last = self.sample() if self.adaptive else None
        self.history = []
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            torch.set_num_threads(self._previous)

    def update(self) -> int:
        """Re-decide the thread count when ``interval_s`` has passed; return the count in use."""
        current = torch.get_num_threads()
        if self._last is None or self.clock() - self._last.wall_s < self.interval_s:
            return current
        now = self.sample()
        if now is None:
            return current
        wall = now.wall_s - self._last.wall_s
        other = max(0.0, (now.busy_s - self._last.busy_s) - (now.own_s - self._last.own_s)) / wall
        self._last = now
        threads = threads_for(other, len(self.cpus), int(self.ceiling))
        if threads != current:
            torch.set_num_threads(threads)
            self.history.append((round(now.wall_s - self._start, 2), round(other, 2), threads))
        return threads

    def summary(self) -> dict[str, Any]:
        """What the governor did, for a stage's summary.json."""
        ceiling = int(self.ceiling or 0)
        return {"ceiling": ceiling, "adaptive": self.adaptive,
                "min_threads": min([ceiling] + [n for _, _, n in self.history]), "changes": len(self.history),
                "trace": [{"t_s": t, "other_cores": o, "threads": n} for t, o, n in self.history[:49]]}
