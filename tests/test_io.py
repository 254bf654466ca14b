"""Atomic writers and the output-folder lock."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from deepadversaries.errors import DeepAdvError
from deepadversaries.io import (
    LOCK_NAME,
    OutputLock,
    atomic_path,
    read_json,
    remove_temporaries,
    write_csv,
    write_json,
    write_npy,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "result.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_writers_round_trip(tmp_path):
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    write_npy(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), arr)
    write_json(tmp_path / "b.json", {"x": np.float32(0.5), "v": np.arange(3)})
    assert read_json(tmp_path / "b.json") == {"x": 0.5, "v": [0, 1, 2]}
    write_csv(tmp_path / "c.csv", [{"i": 1, "p": 0.1}, {"i": 2, "p": 1 / 3}])
    lines = (tmp_path / "c.csv").read_text().splitlines()
    assert lines[0] == "i,p" and float(lines[2].split(",")[1]) == 1 / 3


def test_read_json_errors_name_the_file(tmp_path):
    with pytest.raises(DeepAdvError, match="missing.json: file not found"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DeepAdvError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_remove_temporaries(tmp_path):
    (tmp_path / ".x.npy.tmp-abc").write_text("partial")
    (tmp_path / "keep.npy").write_text("ok")
    assert remove_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.npy"]


def test_lock_refuses_live_owner_and_takes_over_dead_one(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / LOCK_NAME).write_text(str(child.pid))
        with pytest.raises(DeepAdvError, match=f"in use by another deepadv process \\(pid {child.pid}\\)"):
            OutputLock(tmp_path).acquire()
    finally:
        child.kill()
        child.wait()
    # the owner is dead now: the stale lock is taken over and released afterwards
    with OutputLock(tmp_path) as lock:
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())
    assert not lock.path.exists()


def test_lock_on_unwritable_folder(tmp_path):
    if os.geteuid() == 0:
        target = "/proc/deepadv-cannot-exist"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "out"
    with pytest.raises(DeepAdvError, match="cannot"):
        OutputLock(target).acquire()


def test_results_are_readable_by_others(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    write_json(tmp_path / "r.json", {})
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o666 & ~mask
