"""Output-folder locks: one process per folder, never stuck after a crash (deepadversaries.io.OutputLock)."""

from __future__ import annotations

import os
import time

import pytest

from deepadversaries.errors import DeepAdvError
from deepadversaries.io import LOCK_NAME, STARTING_LOCK_S, OutputLock
from deepadversaries.simulation.simulate import WORK_DIR

from .conftest import assert_clean_error, wait_for


@pytest.mark.parametrize("round_", range(3))
def test_two_processes_started_together_exactly_one_runs(forkserver, tmp_path, round_):
    """Both start on the same new folder within a millisecond: one works, the other refuses clearly."""
    out = tmp_path / "data"
    argv = ["simulate", "--preset", "tiny", "--out", str(out)]
    a, b = forkserver.start(argv), forkserver.start(argv)
    # the loser exits at once; the winner writes its work folder and keeps going
    assert wait_for(lambda: (out / WORK_DIR / "config.json").exists(), timeout=60)
    time.sleep(0.2)
    owner = int((out / LOCK_NAME).read_text())
    assert owner in (a.pid, b.pid)
    winner, loser = (a, b) if owner == a.pid else (b, a)
    assert_clean_error(forkserver.wait(loser, timeout=30), str(out), "in use by another deepadv process")
    assert forkserver.kill(winner).rc == -9


def test_empty_lock_of_a_starting_process_is_respected_then_expires(tmp_path):
    """A lock file exists but is still empty (its owner has not written its PID yet)."""
    lock = tmp_path / LOCK_NAME
    lock.write_text("")
    with pytest.raises(DeepAdvError, match="in use by another deepadv process \\(starting up\\)"):
        OutputLock(tmp_path).acquire()
    old = time.time() - STARTING_LOCK_S - 1  # its owner died before writing: stale after a few seconds
    os.utime(lock, (old, old))
    with OutputLock(tmp_path):
        assert lock.read_text() == str(os.getpid())
    assert not lock.exists()


@pytest.mark.parametrize("content", ["garbage", "-5", "0", "99999999"])
def test_unreadable_or_dead_lock_contents_are_taken_over(tmp_path, content):
    (tmp_path / LOCK_NAME).write_text(content)
    old = time.time() - 60
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with OutputLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
