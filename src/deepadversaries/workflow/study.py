"""``deepadv study``: the experiment grid over seeds, run on Dask, every verdict with an interval.

A study trains, evaluates and attacks every (model, method, seed) cell, analyses every
(model, adapted method, seed) pair against the regular run of the same seed, then pools
the seeds (:mod:`deepadversaries.reporting.findings`, :mod:`deepadversaries.analysis.stats`) into
``DIR/study.json`` and a report. The stage graph is ``reproduce``'s
(:func:`deepadversaries.workflow.grid.build_stages`); only the grid (several seeds) and the
executor differ. Layout (:mod:`deepadversaries.workflow.layout`, ``kind="study"``)::

    DIR/study-manifest.json                the grid (written once; another grid is refused)
    DIR/data/ (or DIR/data_s<seed>/)       the simulated dataset(s)
    DIR/cells/<model>_<method>_s<seed>/    run folders: every verb works on a cell
    DIR/analysis/<model>_<method>_s<seed>/ regular-vs-method analyses (figures for the first seed)
    DIR/cards/<model>_<method>_s<seed>/    each cell's robustness card (card.json, card.html, card.md)
    DIR/leaderboard/                       the cards pooled over seeds: leaderboard.{csv,md,html}
    DIR/timings.json, DIR/logs/            stage records and logs
    DIR/study.json                         the findings with intervals (written last)
    DIR/report.md, DIR/report.html         the report

Executor. The dataset stages run first, in this process, with every CPU (GalSim work).
The cell stages are submitted to a ``dask.distributed`` cluster as one task graph: without
``scheduler``, a ``LocalCluster`` of ``workers`` processes with one task each and
``max(1, cores // workers)`` torch threads per task, so that workers × threads never
exceed the cores; with ``scheduler`` (``tcp://host:8786``), an existing cluster whose
workers see ``DIR`` at the same path and run the same package version (docs/study.md shows
SLURM and Kubernetes). The report stage runs in this process at the end.

Contracts. Every task is a stage of the pipeline: idempotent, writing atomically, its
finished marker last; a worker lost mid-task costs only a re-run of that task (Dask
re-schedules it; the stage resumes or restarts from its files). A killed study, run again
with the same command, skips every finished stage (fingerprints in ``timings.json``) and
ends with the same ``study.json`` as an uninterrupted one, timings aside.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dask
import torch
from distributed import Client, Future, LocalCluster, as_completed
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from deepadversaries import PAPER_METHODS, PRESETS, __version__
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, StageFailed, check_choice, file_error
from deepadversaries.formatting import first_line, fmt_clock, utc_now
from deepadversaries.workflow.grid import (
    Grid, build_stages, leaderboard_stage, parse_list, parse_methods, resolve_models,
)
from deepadversaries.io import (
    LOCK_NAME, OutputLock, remove_stale_locks, remove_temporaries, write_json, write_text,
)
from deepadversaries.workflow.layout import STUDY_MANIFEST_KIND, TIMINGS_KIND, Layout, read_manifest, read_timings
from deepadversaries.workflow.stages import (
    Decision, Recorder, Stage, environment, execute_stage, plan, run_recorded,
)
from deepadversaries.progress import console, info
from deepadversaries.reporting.study_report import aggregate_action

#: the preset's one-pixel attack in a study, where it differs from ``reproduce``'s: a study
#: needs enough images flipped under both models per seed for finding (d) (see docs/study.md)
STUDY_ATTACK: dict[str, dict[str, Any]] = {"tiny": {}, "quick": {"n_images": 500}, "paper": {}}
#: seconds to wait for an existing scheduler
CONNECT_TIMEOUT_S = 10
#: the current invocation's token: tasks of an earlier (killed) invocation do not run
INVOCATION_NAME = ".invocation"
#: what a folder may hold before it becomes a study
ADOPTABLE = {LOCK_NAME, INVOCATION_NAME, "data", "cells", "analysis", "figures", "logs"}


def parse_seeds(text: str) -> tuple[int, ...]:
    """Seeds from ``"0-4"``, ``"0,2,5"`` or ``"0-2,7"``: sorted, without duplicates.

    Raises:
        OptionError: an empty or malformed range.
    """
    seeds: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise OptionError(f"--seeds {text!r}: expected numbers and ranges such as 0-4 or 0,2,5")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        if hi < lo:
            raise OptionError(f"--seeds {text!r}: the range {part} is empty (write the smaller seed first)")
        seeds.update(range(lo, hi + 1))
    return tuple(sorted(seeds))


def study(out: str | Path, preset: str = "quick", *, seeds: Sequence[int] | str = (0, 1, 2, 3, 4),
          models: Sequence[str] | None = None, methods: Sequence[str] | str = PAPER_METHODS,
          data: str | Path | None = None, vary_data: bool = False, scheduler: str | None = None,
          workers: int | None = None, device: str = "auto", attacks: Sequence[str] | str = ("de",),
          attack_images: int | None = None) -> Path:
    """Run (or resume) a study into ``out`` and write ``study.json`` and its report.

    Args:
        out: the study folder (created when missing).
        preset: ``tiny``, ``quick`` or ``paper`` [default: "quick"].
        seeds: training and attack seeds, or a string like ``"0-4"`` [default: 0–4].
        models: the architectures [default: the preset's].
        methods: the training methods, ``regular`` among them [default: the paper's regular, mmd].
        data: an existing dataset folder instead of simulating one [default: simulate].
        vary_data: simulate one dataset per seed (``--data-seeds``) [default: one dataset].
        scheduler: the address of an existing Dask scheduler [default: a LocalCluster].
        workers: LocalCluster worker processes [default: the number of CPUs].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        attacks: the one-pixel searches, ``de`` among them [default: differential evolution only].
        attack_images: Y10 test images drawn for every cell's attack [default: ``STUDY_ATTACK`` of the
            preset, else the preset's attack size: tiny 6, quick 500, paper 150].

    Returns:
        The path of ``report.html``.

    Raises:
        OptionError: a bad option, or a scheduler that cannot be reached.
        FileError: ``out`` holds a study of another grid, or something else.
        StageFailed: a stage failed (one line naming it and its log); the others finished.
    """
    check_choice(preset, PRESETS, "preset")
    seed_list = _seed_list(seeds)
    n_workers = _check_workers(workers)
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    resolve_device(device)
    layout = _layout(out, data)
    if data is not None and vary_data:
        raise OptionError("--data-seeds simulates one dataset per seed; it cannot be used with --data")
    if scheduler:
        _check_scheduler(scheduler)  # before anything is written
    grid = Grid(preset=preset, models=resolve_models(preset, models), methods=parse_methods(methods),
                seeds=seed_list, data_seed=seed_list[0], vary_data=vary_data, device=device,
                workers=os.cpu_count() or 1, attack=_attack_settings(preset, attack_images), threads=threads,
                figures=False, attacks=parse_list(attacks), cards=True)
    with OutputLock(layout.root, "study"):
        remove_temporaries(layout.root)
        remove_stale_locks(layout.root)
        _check_or_write_manifest(layout, grid)
        stages = _study_stages(layout, grid)
        recorder = _open_recorder(layout, grid, stages, device)
        planned = plan(stages, recorder.timings)
        _announce(layout, grid, planned, len(stages))
        _run_planned(planned, recorder, layout, scheduler, n_workers, threads)
        wall = recorder.close()
    info(f"study: finished in {fmt_clock(wall)}; {layout.root / 'study.json'}, report: {layout.report_html}")
    return layout.report_html


def _attack_settings(preset: str, attack_images: int | None) -> tuple[tuple[str, Any], ...]:
    """The study's attack overrides of the preset: ``STUDY_ATTACK``, and ``--attack-images`` when given."""
    settings = dict(STUDY_ATTACK[preset])
    if attack_images is not None:
        if isinstance(attack_images, bool) or int(attack_images) < 1:
            raise OptionError(f"--attack-images must be at least 1, got {attack_images}")
        settings["n_images"] = int(attack_images)
    return tuple(settings.items())


def _seed_list(seeds: Sequence[int] | str) -> tuple[int, ...]:
    """The seeds sorted and without duplicates, from a string like ``"0-4"`` or a sequence; never empty."""
    seed_list = parse_seeds(seeds) if isinstance(seeds, str) else tuple(sorted(set(int(s) for s in seeds)))
    if not seed_list:
        raise OptionError("--seeds is empty; give seeds such as 0-4")
    return seed_list


def _study_stages(layout: Layout, grid: Grid) -> list[Stage]:
    """The pipeline's stages of the grid, then the study's own: pool the seeds and write the report."""
    stages = build_stages(layout, grid)
    stages.append(leaderboard_stage(layout, grid, stages))
    final = Stage("study", "study", layout.root / "study.json", tuple(s.name for s in stages),
                  (layout.root / "study.json", layout.report_md, layout.report_html, layout.figures),
                  functools.partial(aggregate_action, root=layout.root), 5.0)
    stages.append(final)
    return stages


def _open_recorder(layout: Layout, grid: Grid, stages: list[Stage], device: str) -> Recorder:
    """The recorder of ``timings.json``, its content updated with this study's grid."""
    timings = read_timings(layout.root)
    timings.update({"kind": TIMINGS_KIND, "preset": grid.preset, "seeds": list(grid.seeds),
                    "models": list(grid.models), "methods": list(grid.methods)})
    return Recorder(layout.timings, timings, stages, environment(device))


def _announce(layout: Layout, grid: Grid, planned: list[tuple[Stage, Decision]], n_stages: int) -> None:
    """Log the grid, the study folder and how many stages will run."""
    n_run = sum(d.runs for _, d in planned)
    info(f"study: preset {grid.preset}, seeds {','.join(map(str, grid.seeds))}, models {','.join(grid.models)}, "
         f"methods {','.join(grid.methods)} -> {layout.root}; {n_run} of {n_stages} stages to run")


def _run_planned(planned: list[tuple[Stage, Decision]], recorder: Recorder, layout: Layout, scheduler: str | None,
                 n_workers: int, threads: int) -> None:
    """The dataset stages here, the cell stages on Dask (when any must run), the study's report stage here."""
    local = [(s, d) for s, d in planned if s.kind in ("simulate", "data")]
    remote = [(s, d) for s, d in planned if s.kind not in ("simulate", "data", "study")]
    _run_locally(local, recorder, layout)
    if any(d.runs for _, d in remote):
        with _dask_client(scheduler, n_workers, threads) as client:
            info(f"study: Dask dashboard {client.dashboard_link}" if client.dashboard_link
                 else "study: Dask dashboard not available")
            run_on_dask(client, remote, recorder, root=layout.root, logs=layout.logs, threads=threads)
    else:
        for stage, _ in remote:
            recorder.skipped(stage)
    _run_locally([(s, d) for s, d in planned if s.kind == "study"], recorder, layout)


def _connect(scheduler: str) -> Client:
    try:
        return Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError, ValueError) as exc:
        raise OptionError(f"--scheduler {scheduler}: cannot reach the Dask scheduler ({first_line(exc)})") from exc


def _check_scheduler(scheduler: str) -> None:
    """A clear error, before any work, when the scheduler cannot be reached."""
    _connect(scheduler).close()


def _check_workers(workers: int | None) -> int:
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or int(workers) < 1:
        raise OptionError(f"--workers must be at least 1, got {workers}")
    return int(workers)


def _layout(out: str | Path, data: str | Path | None) -> Layout:
    external = None
    if data is not None:
        external = Path(data).expanduser().resolve()
        if not external.is_dir():
            raise file_error(external, "dataset folder not found")
    layout = Layout(Path(out).expanduser().resolve(), external, kind="study")
    if external is not None and (external == layout.root or layout.root in external.parents):
        raise file_error(external, "the dataset folder must not lie inside the output folder")
    return layout


def _grid_record(layout: Layout, grid: Grid) -> dict[str, Any]:
    return {"preset": grid.preset, "seeds": list(grid.seeds), "models": list(grid.models),
            "methods": list(grid.methods), "data": str(layout.dataset) if layout.dataset is not None else None,
            "vary_data": grid.vary_data, "attack": dict(grid.attack), "attacks": list(grid.attacks)}


def _check_or_write_manifest(layout: Layout, grid: Grid) -> None:
    """Refuse a folder holding a study of another grid (or anything else); write a new manifest."""
    mine = _grid_record(layout, grid)
    if layout.manifest.is_file():
        manifest = read_manifest(layout.root)
        theirs = {k: manifest.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(f"{k} {theirs[k]!r}" for k in mine if theirs[k] != mine[k])
            raise file_error(layout.manifest, f"this folder holds a study of another grid ({diff}); run with its "
                                              "options to resume it, or choose another --out")
        return
    others = [p.name for p in layout.root.iterdir() if p.name not in ADOPTABLE] if layout.root.is_dir() else []
    if others:
        raise file_error(layout.root, f"folder is not empty ({others[0]}) and is not a study folder; choose a new "
                                      "or empty --out")
    write_json(layout.manifest, {"kind": STUDY_MANIFEST_KIND, "version": __version__, **mine,
                                 "seed": grid.seeds[0], "created": utc_now()})


def _run_locally(planned: list[tuple[Stage, Decision]], recorder: Recorder, layout: Layout) -> None:
    """Run stages in this process, in order (the dataset first, the study's report last)."""
    for stage, decision in planned:
        if not decision.runs:
            recorder.skipped(stage)
            continue
        info(f"study: {stage.name.replace(':', ' ')} ({decision.why})")
        wall = run_recorded(stage, decision.fresh, recorder, layout.root, layout.logs)
        info(f"    {stage.name.replace(':', ' ')}: done in {fmt_clock(wall)}")


# --------------------------------------------------------------------------------------
# the Dask executor
# --------------------------------------------------------------------------------------
class _dask_client:
    """A client on an existing scheduler, or on a LocalCluster sized to this machine."""

    def __init__(self, scheduler: str | None, workers: int, threads: int) -> None:
        self.scheduler, self.workers, self.threads = scheduler, workers, threads
        self.cluster: LocalCluster | None = None
        self.client: Client | None = None

    def __enter__(self) -> Client:
        if self.scheduler:
            self.client = _connect(self.scheduler)
            return self.client
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        with dask.config.set({"distributed.worker.daemon": False, "distributed.nanny.pre-spawn-environ": env,
                              "distributed.scheduler.work-stealing": False}):
            self.cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                        dashboard_address=":0", silence_logs=40)
        self.client = Client(self.cluster)
        return self.client

    def __exit__(self, *exc: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def run_stage_task(stage: Stage, fresh: bool, log_path: Path, threads: int, token: str,
                   *upstream: Any) -> tuple[float, str]:
    """A stage as a Dask task: run it with ``threads`` torch threads; return (wall seconds, where).

    ``token`` is the submitting invocation's; a task whose study has since been started
    again (a killed driver's task that the cluster still ran) does nothing and returns
    where ``"superseded"``. ``upstream`` holds the results of the stages it depends on
    (unused: passing them makes Dask wait for them).
    """
    if _current_token(log_path.parent.parent) != token:
        return 0.0, "superseded"
    torch.set_num_threads(max(1, int(threads)))
    wall = execute_stage(stage, fresh, log_path, capture_stderr=True)
    return wall, f"{socket.gethostname()}:{os.getpid()}"


def _current_token(root: Path) -> str | None:
    try:
        return (root / INVOCATION_NAME).read_text().strip()
    except OSError:
        return None


def run_on_dask(client: Client, planned: list[tuple[Stage, Decision]], recorder: Recorder, *, root: Path,
                logs: Path, threads: int) -> list[str]:
    """Submit the stages that must run as one task graph; record each as it finishes.

    Independent stages go on when one fails; the first failure is raised at the end as
    :class:`StageFailed` (its dependents are recorded as not run).
    """
    futures: dict[str, Future] = {}
    stage_of: dict[str, Stage] = {}
    token = uuid.uuid4().hex
    write_text(root / INVOCATION_NAME, token + "\n")
    for stage, decision in planned:
        if not decision.runs:
            recorder.skipped(stage)
            continue
        deps = [futures[d] for d in stage.depends if d in futures]
        log_path = logs / stage.log_name
        fut = client.submit(run_stage_task, stage, decision.fresh, log_path, threads, token, *deps, pure=False)
        futures[stage.name] = fut
        stage_of[fut.key] = stage
        recorder.started(stage, log_path, root)
    failures: list[BaseException] = []
    ran: list[str] = []
    progress = Progress(TextColumn("[bold]study[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console, disable=not sys.stderr.isatty())
    started = time.perf_counter()
    try:
        with progress:
            task = progress.add_task("running on Dask", total=len(futures) or 1)
            for fut in as_completed(list(futures.values())):
                stage = stage_of[fut.key]
                if fut.status == "error":
                    exc = fut.exception()
                    recorder.failed(stage, exc)
                    if not failures or not _is_upstream_failure(exc, failures):
                        failures.append(exc)
                    info(f"    {stage.name}: failed ({first_line(exc)})")
                else:
                    wall, where = fut.result()
                    recorder.finished(stage, wall, device=f"{recorder.env['device']} ({where})")
                    ran.append(stage.name)
                    info(f"    {stage.name.replace(':', ' ')}: done in {fmt_clock(wall)} "
                         f"[{len(ran)}/{len(futures)}, {fmt_clock(time.perf_counter() - started)}]")
                progress.advance(task)
    except KeyboardInterrupt:
        for fut in futures.values():
            fut.cancel()
        raise
    if failures:
        first = failures[0]
        raise first if isinstance(first, StageFailed) else StageFailed(f"a study stage failed: {first_line(first)}", 1)
    return ran


def _is_upstream_failure(exc: BaseException, failures: list[BaseException]) -> bool:
    """Whether ``exc`` is a failure already counted (Dask hands a dependent its upstream's exception)."""
    return any(exc is f or (type(exc) is type(f) and str(exc) == str(f)) for f in failures)


