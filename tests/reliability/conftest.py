"""Fixtures of the reliability suite: a fork server to run ``deepadv`` as real processes, and folder checks."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from deepadversaries.io import LOCK_NAME, TMP_MARK

SERVER = Path(__file__).with_name("forkserver.py")


@dataclass
class Child:
    """A ``deepadv`` process started by the fork server."""

    pid: int
    stdout: Path
    stderr: Path


@dataclass
class Result:
    """How a ``deepadv`` process ended: exit status (or -signal) and its output."""

    pid: int
    rc: int
    out: str
    err: str
    timed_out: bool


class ForkServer:
    """Client of ``forkserver.py``: start, kill and wait for ``deepadv`` processes."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.count = 0
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "DEEPADV_DEBUG": ""}
        for name in ("DEEPADV_FAULT_AFTER", "DEEPADV_FAULT_DURING"):
            env.pop(name, None)
        self.proc = subprocess.Popen([sys.executable, str(SERVER)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)
        ready = self._reply()
        assert ready.get("ready") and ready["threads"] == 1, ready

    def _reply(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fork server died (exit {self.proc.poll()})")
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def preload(self, *modules: str) -> None:
        """Import more modules in the server so that later commands start fast."""
        reply = self._ask({"op": "preload", "modules": list(modules)})
        assert reply["threads"] == 1, f"importing {modules} started threads; forking would be unsafe"

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> Child:
        self.count += 1
        out, err = self.logs / f"{self.count:03d}.out", self.logs / f"{self.count:03d}.err"
        reply = self._ask({"op": "start", "argv": [str(a) for a in argv], "env": env or {},
                           "stdout": str(out), "stderr": str(err)})
        return Child(reply["pid"], out, err)

    def wait(self, child: Child, timeout: float = 300) -> Result:
        reply = self._ask({"op": "wait", "pid": child.pid, "timeout": timeout})
        return Result(child.pid, reply["rc"], child.stdout.read_text(errors="replace"),
                      child.stderr.read_text(errors="replace"), reply["timed_out"])

    def run(self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 300) -> Result:
        return self.wait(self.start(argv, env), timeout)

    def kill(self, child: Child) -> Result:
        os.kill(child.pid, signal.SIGKILL)
        return self.wait(child, timeout=30)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread for the stages run in this process (as in the fork server's children):
    on two shared cores, two threads make the small attack batches ten times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory) -> ForkServer:
    server = ForkServer(tmp_path_factory.mktemp("forkserver-logs"))
    yield server
    server.close()


# -- folder checks --------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (to prove nothing changed)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files, lock files and work folders left under ``folder``."""
    folder = Path(folder)
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if TMP_MARK in p.name or p.name == LOCK_NAME or p.name == ".work")


def read_or_none(path: Path) -> str | None:
    """The text of a file, or None when it does not exist (yet)."""
    try:
        return Path(path).read_text()
    except OSError:
        return None


def wait_for(predicate, child: Child | None = None, timeout: float = 120, poll: float = 0.01) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes or ``child`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if child is not None and not _alive(child.pid):
            return bool(predicate())
        time.sleep(poll)
    return False


def mount_tmpfs(mnt: Path, options: str) -> bool:
    """Create ``mnt`` and mount a tmpfs there with ``options``; False where mounting is not allowed."""
    mnt.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)],
                          capture_output=True).returncode == 0


#: set to 1 to let the tmpfs disk-full tests skip under CI where ``mount`` is not allowed (docs/reliability.md)
SKIP_TMPFS_VARIABLE = "DEEPADV_SKIP_TMPFS"


def in_ci() -> bool:
    """CI as tests/test_report_browser.py reads it (``.ci/run`` exports CI=true): true, 1 or yes."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def tmpfs_or_skip(mnt: Path, options: str) -> Path:
    """Mount a tmpfs at ``mnt`` for a disk-full test; where mounting is refused, skip it — or fail it
    under CI unless DEEPADV_SKIP_TMPFS=1 says this CI cannot mount (so CI never skips it silently)."""
    if mount_tmpfs(mnt, options):
        return mnt
    why = ("cannot mount a tmpfs here ('mount -t tmpfs' needs root in a privileged container); the "
           "patched-writer case covers disk full meanwhile")
    if in_ci() and os.environ.get(SKIP_TMPFS_VARIABLE, "").strip() != "1":
        pytest.fail(f"CI is set but {why}: run CI where mount works, or set {SKIP_TMPFS_VARIABLE}=1 to skip")
    pytest.skip(why)


def unmount(mnt: Path) -> None:
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by the server) counts as dead
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def assert_clean_error(result: Result, *fragments: str) -> str:
    """A refused command: exit status 2, one line ``error: ...`` naming the problem, no traceback."""
    err = result.err.strip()
    # progress bars go to stderr only on long work; a refusal must not get that far
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.rc == 2, f"exit {result.rc}: {err}"
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


# -- shared stage outputs -----------------------------------------------------------------


@pytest.fixture(scope="session")
def attack_forkserver(forkserver) -> ForkServer:
    """The fork server with the attack campaign imported before forking."""
    forkserver.preload("deepadversaries.attacks.campaign")
    return forkserver


@pytest.fixture(scope="session")
def warm_forkserver(attack_forkserver) -> ForkServer:
    """The fork server with every stage imported (Lightning, scikit-learn, matplotlib) before forking."""
    attack_forkserver.preload("deepadversaries.training.train", "deepadversaries.evaluation.evaluate", "deepadversaries.analysis.analyze",
                              "deepadversaries.workflow.reproduce", "deepadversaries.reporting.report")
    return attack_forkserver


@pytest.fixture(scope="session")
def attack_template(tiny_dataset, tmp_path_factory) -> Path:
    """A run folder (config.json + checkpoints/best.pt) of the hand-built ConvNet of the attack tests,
    its brightness split at the median of the tiny test set: it classifies most test images correctly,
    so that a small campaign has several images to attack (the tiny trained models get one or two)."""
    import torch
    from attack_support import bright_pixel_convnet, make_run

    from deepadversaries.data.dataset import load_dataset

    ds = load_dataset(tiny_dataset)
    with torch.no_grad():
        z1 = bright_pixel_convnet().embed(torch.from_numpy(ds.images("Y10", "test")))[:, 1]
    return make_run(tmp_path_factory.mktemp("attack-template") / "run", tiny_dataset,
                    bright_pixel_convnet(float(z1.median())))


def copy_run(template: Path, dest: Path) -> Path:
    """A fresh copy of a run folder (without its attack results)."""
    import shutil

    shutil.copytree(template, dest, ignore=shutil.ignore_patterns("attack"))
    return dest


#: the small campaign of the reliability tests: tiny preset, 12 images, population 20, 2 generations
CAMPAIGN = ["--preset", "tiny", "--n-images", "12", "--pop-size", "20", "--max-iter", "2", "--device", "cpu",
            "--seed", "0"]


@pytest.fixture(scope="session")
def attacked_run(attack_template, tmp_path_factory) -> Path:
    """A copy of the template run with a finished small campaign (made in this process; the
    campaign's files do not depend on the process, which the attack kill tests rely on)."""
    import torch

    from deepadversaries.cli import main

    run = copy_run(attack_template, tmp_path_factory.mktemp("attacked") / "run")
    n = torch.get_num_threads()  # a session fixture is made before the module's one_torch_thread
    torch.set_num_threads(1)
    try:
        assert main(["attack", "--run", str(run), *CAMPAIGN]) == 0
    finally:
        torch.set_num_threads(n)
    return run
