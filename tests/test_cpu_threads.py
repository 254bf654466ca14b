"""The CPU thread governor: /proc/stat arithmetic, decisions, and that it changes speed only."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deepadversaries import cpu_threads
from deepadversaries.attacks.de import OnePixelDE
from deepadversaries.cpu_threads import ThreadGovernor, busy_seconds, threads_for

from attack_support import bright_pixel_convnet

TICK = cpu_threads._TICK_S


def stat_text(per_cpu: dict[int, tuple[int, ...]]) -> str:
    """A /proc/stat with an aggregate line, the given per-CPU tick counts and other lines."""
    lines = ["cpu  " + " ".join(str(sum(v[i] for v in per_cpu.values())) for i in range(10))]
    lines += [f"cpu{c} " + " ".join(map(str, v)) for c, v in sorted(per_cpu.items())]
    lines += ["intr 12345 0 0", "ctxt 99", "btime 1700000000", "processes 42"]
    return "\n".join(lines) + "\n"


def test_busy_seconds_sums_the_busy_fields_of_the_watched_cpus_only():
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = stat_text({0: (100, 5, 20, 1000, 30, 1, 2, 7, 50, 0), 1: (10, 0, 3, 2000, 0, 0, 0, 0, 0, 0),
                      2: (999, 999, 999, 0, 0, 0, 0, 0, 0, 0)})
    assert busy_seconds(text, [0]) == pytest.approx((100 + 5 + 20 + 1 + 2 + 7) * TICK)  # guest is inside user
    assert busy_seconds(text, [0, 1]) == pytest.approx((135 + 13) * TICK)
    assert busy_seconds(text, [3]) is None  # a CPU the file does not list
    # old kernels without the steal/guest columns
    assert busy_seconds("cpu0 1 2 3 4 5 6 7\n", [0]) == pytest.approx((1 + 2 + 3 + 6 + 7) * TICK)


@pytest.mark.parametrize("other, cpus, ceiling, expected", [
    (0.0, 2, 2, 2), (0.25, 2, 2, 2), (0.4, 2, 2, 1), (1.0, 2, 2, 1), (2.0, 2, 2, 1), (5.0, 2, 2, 1),
    (0.0, 16, 4, 4), (13.5, 16, 8, 2), (1.0, 8, 8, 7), (-0.1, 2, 2, 2),
])
def test_threads_for_leaves_the_busy_cores_to_the_others(other, cpus, ceiling, expected):
    assert threads_for(other, cpus, ceiling) == expected


class FakeMachine:
    """A /proc/stat file and clocks that a test advances by hand."""

    def __init__(self, path: Path, cpus: int = 2) -> None:
        self.path, self.cpus = path, cpus
        self.t, self.own = 100.0, 0.0
        self.ticks = {c: [0] * 10 for c in range(cpus)}
        self.write()

    def write(self) -> None:
        self.path.write_text(stat_text({c: tuple(v) for c, v in self.ticks.items()}))

    def advance(self, seconds: float, other_cores: float, own_cores: float) -> None:
        """Let ``seconds`` pass with other processes and this one using so many cores."""
        busy = round((other_cores + own_cores) * seconds / TICK)
        for c in range(self.cpus):
            self.ticks[c][0] += busy // self.cpus
            self.ticks[c][3] += round(seconds / TICK) - busy // self.cpus
        self.t += seconds
        self.own += own_cores * seconds
        self.write()

    def governor(self, **kw) -> ThreadGovernor:
        return ThreadGovernor(stat_path=self.path, cpus=list(range(self.cpus)), clock=lambda: self.t,
                              own_cpu=lambda: self.own, **kw)


def test_governor_gives_a_core_up_while_another_process_holds_it_and_takes_it_back(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    before = torch.get_num_threads()
    with machine.governor(ceiling=2, interval_s=1.0) as gov:
        assert torch.get_num_threads() == 2
        machine.advance(0.5, other_cores=1.0, own_cores=1.0)
        assert gov.update() == 2  # not yet time to look
        machine.advance(1.5, other_cores=1.0, own_cores=1.0)
        assert gov.update() == 1 and torch.get_num_threads() == 1
        machine.advance(2.0, other_cores=0.9, own_cores=1.0)
        assert gov.update() == 1
        machine.advance(2.0, other_cores=0.05, own_cores=1.0)  # its own load never counts
        assert gov.update() == 2
        summary = gov.summary()
    assert torch.get_num_threads() == before
    assert summary["min_threads"] == 1 and summary["changes"] == 2 and summary["ceiling"] == 2
    assert [e["threads"] for e in summary["trace"]] == [1, 2]


def test_fixed_threads_and_unreadable_stat_leave_the_count_alone(tmp_path):
    machine = FakeMachine(tmp_path / "stat")
    with machine.governor(ceiling=2, adaptive=False, interval_s=1.0) as gov:
        machine.advance(5.0, other_cores=2.0, own_cores=0.0)
        assert gov.update() == 2
    with ThreadGovernor(2, stat_path=tmp_path / "missing", interval_s=0.0) as gov:
        assert gov.update() == 2 and gov.summary()["changes"] == 0
    with pytest.raises(ValueError, match="at least 1"):
        with ThreadGovernor(0):
            pass


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux /proc/stat")
def test_governor_sees_a_real_busy_process():
    cpus = cpu_threads.allowed_cpus()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with ThreadGovernor(len(cpus), interval_s=0.0) as gov:
            time.sleep(0.3)  # the hog starts
            gov.update()
            time.sleep(1.0)  # this process sleeps: everything busy is somebody else
            assert gov.update() <= max(1, len(cpus) - 1)
    finally:
        hog.kill()


class Flipper:
    """A governor stand-in that switches between one and two threads at every chunk."""

    def __init__(self) -> None:
        self.calls = 0

    def update(self) -> int:
        self.calls += 1
        torch.set_num_threads(1 + self.calls % 2)
        return torch.get_num_threads()


def test_thread_changes_during_a_search_do_not_change_its_result():
    model = bright_pixel_convnet()
    rng = np.random.default_rng(3)
    images = (rng.random((4, 3, 100, 100)) * 0.5).astype(np.float32)
    labels = [0, 0, 2, 2]
    before = torch.get_num_threads()

    def run(threads):
        attack = OnePixelDE(model, pop_size=60, max_iter=3, seed=1, device="cpu", chunk_size=50,
                            threads=threads)
        return [(r.success, r.iterations, r.evaluations, r.pixels.tolist(), r.values.tolist(),
                 r.probabilities.tolist()) for r in attack.results(images, labels)]

    try:
        torch.set_num_threads(1)
        fixed = run(None)
        flipper = Flipper()
        assert run(flipper) == fixed
        assert flipper.calls > 10
    finally:
        torch.set_num_threads(before)
