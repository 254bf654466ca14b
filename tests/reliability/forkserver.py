"""A fork server for the reliability tests: import the CLI once, then fork one process per command.

Starting ``deepadv`` costs seconds of imports (torch, Lightning, GalSim); the kill tests
run dozens of commands. This process imports everything once and forks a child per
request, so each command is a real, separate process (killable with SIGKILL, with its
own PID, lock and fault-injection counters) that starts in milliseconds. Nothing has
run in the server before the fork (no torch threads), so forking is safe. Children run
torch with one intra-op thread.

Protocol: one JSON object per line on stdin, one JSON reply per line on stdout.
``{"op": "start", "argv": [...], "env": {...}, "stdout": path, "stderr": path}`` -> ``{"pid": n}``;
``{"op": "wait", "pid": n, "timeout": s}`` -> ``{"pid": n, "rc": code or -signal, "timed_out": bool}``
(a child still running after ``timeout`` seconds is SIGKILLed);
``{"op": "preload", "modules": [...]}`` imports more modules before later forks -> ``{"threads": n}``.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time

PRELOAD = ("deepadversaries.cli", "deepadversaries.simulation.simulate", "deepadversaries.data.dataset")


def _child(request: dict) -> None:
    """Run one command in the forked child; never returns."""
    code = 1
    try:
        os.environ.update(request.get("env", {}))
        for fd, key, flags in ((0, None, os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                               (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            target = os.open(request[key] if key else os.devnull, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        if request.get("cwd"):
            os.chdir(request["cwd"])
        from deepadversaries.cli import main

        code = main(list(request["argv"]))
    except BaseException:  # noqa: BLE001 - report anything on the child's stderr
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code if isinstance(code, int) else 1)


def _wait(pid: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.01)
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    return {"pid": pid, "rc": rc, "timed_out": timed_out}


def serve() -> None:
    for name in PRELOAD + tuple(sys.argv[1:]):
        importlib.import_module(name)
    import torch

    # one intra-op thread in every child: several processes share two cores, and two torch
    # threads each slow small batches down many times over; it also makes the children alike
    torch.set_num_threads(1)
    replies = sys.stdout
    print(json.dumps({"ready": True, "threads": threading.active_count()}), file=replies, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            reply = {"pid": pid}
        elif request["op"] == "preload":
            for name in request["modules"]:
                importlib.import_module(name)
            reply = {"threads": threading.active_count()}
        elif request["op"] == "wait":
            reply = _wait(int(request["pid"]), float(request.get("timeout", 600)))
        else:
            reply = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(reply), file=replies, flush=True)
    os._exit(0)  # skip the interpreter's slow teardown of torch


if __name__ == "__main__":
    serve()
