"""The stage graph that ``reproduce`` and ``study`` share: stages, planning, running a stage.

A :class:`Stage` names what it writes last (its *marker*), the stages whose outputs it
reads, the outputs to delete before a fresh run, and its action. Planning (:func:`plan`)
decides, from ``timings.json``, which stages run and why; :func:`execute_stage` runs one
stage with its own log file and turns any failure into one :class:`StageFailed` line; the
:class:`Recorder` keeps ``timings.json`` (one writer: the process that plans). An executor
runs the planned stages — in order in this process (:func:`run_in_order`, ``reproduce``)
or as a task graph on a Dask cluster (``study``).

Contract (resumption): a stage is skipped when its marker exists and the markers of the
stages it depends on are the ones it was run from (their modification time and size are
recorded in ``timings.json``). Deleting a stage's outputs therefore re-runs that stage and
the stages that depend on it, and nothing else; an interrupted stage resumes where the
stage itself can (simulate, train, attack). Every stage writes atomically, so a stage
killed mid-way costs only its own re-run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import logging
import os
import platform
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from deepadversaries import __version__
from deepadversaries.devices import resolve_device
from deepadversaries.errors import DeepAdvError, StageFailed
from deepadversaries.formatting import first_line, fmt_clock, utc_now
from deepadversaries.io import write_json
from deepadversaries.progress import LIGHTNING_LOGGERS, console, info

#: packages whose versions the run record lists
RECORDED_PACKAGES = ("torch", "torchvision", "lightning", "galsim", "numpy", "scipy", "scikit-learn", "matplotlib",
                     "statmorph", "photutils", "astropy", "rich", "typer", "pillow", "dask", "distributed")


@dataclass
class Stage:
    """One step of the pipeline.

    Attributes:
        name: unique, e.g. ``train:convnet_mmd``.
        kind: simulate | data | train | evaluate | attack | analyze | report | …
        marker: the file the stage writes last; its presence means "finished".
        depends: names of the stages whose outputs it reads.
        outputs: files and folders removed before a fresh re-run (stale results).
        action: ``action(fresh)`` runs the stage; ``fresh=False`` lets it resume. It must be
            picklable (a module-level function or a ``functools.partial`` of one) so that a
            Dask worker can run it.
        expected_s: expected seconds, for the ETA [default: 1].
        extra_inputs: files outside the pipeline whose change re-runs the stage.
        adopt_check: vets finished outputs that this folder has no record of (e.g. runs
            trained elsewhere and copied in) [default: none].
    """

    name: str
    kind: str
    marker: Path
    depends: tuple[str, ...]
    outputs: tuple[Path, ...]
    action: Callable[[bool], Any]
    expected_s: float = 1.0
    extra_inputs: tuple[Path, ...] = ()
    adopt_check: Callable[[], None] | None = None

    @property
    def log_name(self) -> str:
        return self.name.replace(":", "_") + ".log"


@dataclass(frozen=True)
class Decision:
    """Whether a stage runs, whether from scratch, and why (one line for the user)."""

    runs: bool
    fresh: bool
    why: str


def fingerprint(path: Path) -> list[int] | None:
    """(modification time in ns, size) of a marker file, or None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_mtime_ns, st.st_size]


def current_inputs(stage: Stage, by_name: dict[str, Stage]) -> dict[str, list[int] | None]:
    """The fingerprints of everything ``stage`` reads: its upstream markers and extra inputs."""
    inputs = {dep: fingerprint(by_name[dep].marker) for dep in stage.depends}
    inputs.update({str(p): fingerprint(p) for p in stage.extra_inputs})
    return inputs


def decide(stage: Stage, by_name: dict[str, Stage], record: dict[str, Any] | None, rerun: set[str]) -> Decision:
    """Whether ``stage`` must run, whether from scratch, and why.

    Args:
        stage: the stage.
        by_name: every stage of the graph by name.
        record: the stage's entry of ``timings.json`` (None when it has none).
        rerun: the stages that run in this invocation before this one.
    """
    upstream = [dep for dep in stage.depends if dep in rerun]
    inputs_now = current_inputs(stage, by_name)
    recorded = None if record is None else record.get("inputs")
    inputs_changed = recorded is not None and recorded != inputs_now
    if not stage.marker.is_file():
        # resume what is there unless it was made from other inputs
        fresh = bool(upstream) or inputs_changed
        return Decision(True, fresh, "not finished" if not (fresh and record) else "not finished; its inputs changed")
    if upstream:
        return Decision(True, True, f"{upstream[0]} re-ran")
    if inputs_changed:
        return Decision(True, True, "its inputs changed")
    return Decision(False, False, "finished")


def plan(stages: list[Stage], timings: dict[str, Any]) -> list[tuple[Stage, Decision]]:
    """For each stage (in the list's order, which must respect dependencies): its decision."""
    by_name = {s.name: s for s in stages}
    records = timings.get("stages", {})
    rerun: set[str] = set()
    result = []
    for stage in stages:
        decision = decide(stage, by_name, records.get(stage.name), rerun)
        if decision.runs:
            rerun.add(stage.name)
        result.append((stage, decision))
    return result


# --------------------------------------------------------------------------------------
# running one stage
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def stage_log(path: Path, capture_stderr: bool = False) -> Iterator[Any]:
    """Send the stage's stdout, warnings and library logging (Lightning's too) to ``path``;
    with ``capture_stderr`` its stderr too (the status lines of a stage run on a Dask worker)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        saved = {}
        for name in LIGHTNING_LOGGERS:
            lg = logging.getLogger(name)
            saved[name] = (lg.handlers[:], lg.propagate)
            lg.handlers = [handler]
            lg.propagate = False
        root.addHandler(handler)
        logging.captureWarnings(True)
        try:
            stderr = contextlib.redirect_stderr(fh) if capture_stderr else contextlib.nullcontext()
            with warnings.catch_warnings(), contextlib.redirect_stdout(fh), stderr:
                warnings.simplefilter("default")
                yield fh
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            for name, (handlers, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.handlers = handlers
                lg.propagate = propagate


def execute_stage(stage: Stage, fresh: bool, log_path: Path, capture_stderr: bool = False) -> float:
    """Run one stage with its log; return its wall time in seconds.

    A fresh run first deletes the stage's outputs. A resuming run whose marker appeared after
    the plan was made (a task of an earlier, killed driver that its worker finished anyway) is
    not run again: its outputs are vetted by ``adopt_check`` when the stage has one, and the
    stage counts as done in 0 s. Runs in any process (a Dask worker too): it writes only the
    stage's own files and its log, never ``timings.json``.

    Raises:
        StageFailed: one line naming the stage, the cause and the log (exit status 1 for an
            internal error, the error's own otherwise); the traceback is in the log.
        KeyboardInterrupt: passed on after noting it in the log.
    """
    if fresh:
        for path in stage.outputs:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    t0 = time.perf_counter()
    with stage_log(log_path, capture_stderr) as log:
        log.write(f"# deepadv {__version__}: stage {stage.name} ({'from scratch' if fresh else 'resuming if possible'}), "
                  f"started {utc_now()}\n")
        try:
            if not fresh and stage.marker.is_file():
                # planned as unfinished, finished since: an orphaned task of a killed driver
                if stage.adopt_check is not None:
                    stage.adopt_check()
                log.write(f"# {stage.marker.name} appeared after the plan (a task of an earlier run finished "
                          "it); nothing to do\n")
                return 0.0
            stage.action(fresh)
        except KeyboardInterrupt:
            log.write("# interrupted\n")
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + its log
            traceback.print_exc(file=log)
            code = exc.exit_code if isinstance(exc, DeepAdvError) else 1
            raise StageFailed(f"stage {stage.name} failed: {first_line(exc)} (log: {log_path})", code) from exc
        wall = time.perf_counter() - t0
        log.write(f"# finished in {wall:.1f} s\n")
    if not stage.marker.is_file():
        raise StageFailed(f"stage {stage.name} ended without writing {stage.marker} (log: {log_path})", 1)
    return wall


class Recorder:
    """Keeps ``timings.json``: each stage's status, wall time, device and input fingerprints.

    Only the planning process writes it (atomically, after every change).

    Args:
        path: the ``timings.json`` file.
        timings: its current content (``layout.read_timings``).
        stages: the graph, to forget records of stages no longer in it.
        env: the environment record (:func:`environment`).
    """

    def __init__(self, path: Path, timings: dict[str, Any], stages: list[Stage], env: dict[str, Any]) -> None:
        self.path = path
        self.timings = timings
        self.by_name = {s.name: s for s in stages}
        self.env = env
        self.records: dict[str, Any] = timings.setdefault("stages", {})
        for name in list(self.records):  # forget stages that are no longer part of the grid
            if name not in self.by_name:
                del self.records[name]
        self.invocation: dict[str, Any] = {"started": utc_now(), "device": env["device"], "ran": [], "skipped": []}
        timings["invocations"] = (timings.get("invocations") or [])[-19:] + [self.invocation]
        timings["environment"] = env
        self._t0 = time.perf_counter()
        self.save()

    def save(self) -> None:
        write_json(self.path, self.timings)

    def record(self, name: str) -> dict[str, Any]:
        return self.records.get(name) or {}

    def skipped(self, stage: Stage) -> None:
        """A stage that did not need to run: vet adopted outputs, record its fingerprints."""
        if stage.name not in self.records and stage.adopt_check is not None:
            stage.adopt_check()  # finished outputs this folder has no record of
        rec = self.records.setdefault(stage.name, {"kind": stage.kind})
        rec.update({"status": "skipped", "inputs": current_inputs(stage, self.by_name),
                    "marker": fingerprint(stage.marker)})
        self.invocation["skipped"].append(stage.name)
        self.save()

    def started(self, stage: Stage, log_path: Path, root: Path) -> None:
        rec = self.records.setdefault(stage.name, {"kind": stage.kind})
        rec.update({"status": "running", "started": utc_now(), "log": str(log_path.relative_to(root))})
        self.save()

    def failed(self, stage: Stage, exc: BaseException) -> None:
        rec = self.records.setdefault(stage.name, {"kind": stage.kind})
        if isinstance(exc, KeyboardInterrupt):
            rec["status"] = "interrupted"
        else:
            rec.update({"status": "failed", "error": first_line(exc.__cause__ or exc)})
        self.save()

    def finished(self, stage: Stage, wall: float, device: str | None = None) -> None:
        rec = self.records.setdefault(stage.name, {"kind": stage.kind})
        rec.update({"status": "ran", "finished": utc_now(), "wall_s": round(wall, 3),
                    "device": device or self.env["device"], "inputs": current_inputs(stage, self.by_name),
                    "marker": fingerprint(stage.marker)})
        rec.pop("error", None)
        self.invocation["ran"].append(stage.name)
        self.save()

    def close(self) -> float:
        """Note the invocation's end; return its wall time."""
        self.invocation["finished"] = utc_now()
        self.invocation["wall_s"] = round(time.perf_counter() - self._t0, 3)
        self.save()
        return self.invocation["wall_s"]


def run_recorded(stage: Stage, fresh: bool, recorder: Recorder, layout_root: Path, logs: Path) -> float:
    """Run one stage in this process and record it (running → ran / failed / interrupted)."""
    log_path = logs / stage.log_name
    recorder.started(stage, log_path, layout_root)
    try:
        wall = execute_stage(stage, fresh, log_path)
    except (StageFailed, KeyboardInterrupt) as exc:
        recorder.failed(stage, exc)
        raise
    recorder.finished(stage, wall)
    return wall


# --------------------------------------------------------------------------------------
# the in-order executor and its progress display
# --------------------------------------------------------------------------------------
class Clock:
    """ETA of the remaining stages from their expected times, scaled by how fast this machine is."""

    def __init__(self, pending: list[Stage]) -> None:
        self.pending = list(pending)
        self.current: Stage | None = None
        self.started = 0.0
        self.expected_done = 0.0
        self.actual_done = 0.0

    def start(self, stage: Stage) -> None:
        self.current = stage
        self.started = time.perf_counter()
        if stage in self.pending:
            self.pending.remove(stage)

    def finish(self, wall: float) -> None:
        if self.current is not None:
            self.expected_done += self.current.expected_s
            self.actual_done += wall
        self.current = None

    def eta(self) -> float:
        scale = self.actual_done / self.expected_done if self.expected_done > 0 else 1.0
        rest = sum(s.expected_s for s in self.pending) * scale
        if self.current is not None:
            rest += max(self.current.expected_s * scale - (time.perf_counter() - self.started), 0.0)
        return rest


class EtaColumn(ProgressColumn):
    """A rich column showing the :class:`Clock`'s ETA."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, task: Any) -> Text:
        return Text(f"ETA {fmt_clock(self.clock.eta())}", style="progress.remaining")


def run_in_order(planned: list[tuple[Stage, Decision]], recorder: Recorder, *, root: Path, logs: Path,
                 label: str = "reproduce") -> list[str]:
    """Run the planned stages one after the other in this process; return the names that ran.

    The decisions are taken again as the stages go (a stage whose upstream re-ran starts
    fresh); a failing stage stops the run with its :class:`StageFailed`.
    """
    stages = [s for s, _ in planned]
    by_name = {s.name: s for s in stages}
    to_run = [s for s, d in planned if d.runs]
    clock = Clock(to_run)
    progress = Progress(TextColumn(f"[bold]{label}[/bold] {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), EtaColumn(clock), console=console, disable=not sys.stderr.isatty())
    rerun: set[str] = set()
    ran: list[str] = []
    with progress:
        task = progress.add_task("planning", total=len(to_run) or 1)
        for stage in stages:
            decision = decide(stage, by_name, recorder.record(stage.name) or None, rerun)
            if not decision.runs:
                recorder.skipped(stage)
                continue
            rerun.add(stage.name)
            name = stage.name.replace(":", " ")
            progress.update(task, description=f"[{len(ran) + 1}/{len(to_run)}] {name}")
            info(f"[{len(ran) + 1}/{len(to_run)}] {name} ({decision.why})")
            clock.start(stage)
            wall = run_recorded(stage, decision.fresh, recorder, root, logs)
            clock.finish(wall)
            ran.append(stage.name)
            progress.update(task, completed=len(ran))
            info(f"    {name}: done in {fmt_clock(wall)}")
    return ran


def environment(device: str) -> dict[str, Any]:
    """Device, machine and package versions of this process, for the run record."""
    dev = resolve_device(device)
    versions: dict[str, str | None] = {"python": platform.python_version(), "deepadversaries": __version__}
    for pkg in RECORDED_PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "device": str(dev), "device_requested": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "versions": versions,
    }
