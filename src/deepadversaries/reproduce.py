"""``deepadv reproduce``: the paper's whole study, end to end, then a report.

Stages, in order: simulate → train {model} × {regular, mmd} → evaluate → attack →
analyze (per model, regular vs MMD) → report. Output layout under ``OUT``::

    OUT/reproduce.json            what this folder is: preset, seed, grid (written once)
    OUT/data/                     the simulated dataset (dataset.json marks it finished)
    OUT/runs/<model>_<method>/    run folders (training.json, metrics.json, attack/summary.json)
    OUT/analysis/<model>/         regular-vs-MMD analysis (analysis.json, figures 3-6)
    OUT/figures/                  Figures 1-2 of the dataset
    OUT/report.md, report.html    the report; OUT/findings.json its findings
    OUT/timings.json              per-stage wall time, status and input fingerprints
    OUT/logs/<stage>.log          each stage's log (and traceback when it fails)

A stage is skipped when its finished marker exists and the markers of the stages it
depends on are the ones it was run from (their size and modification time are recorded
in ``timings.json``). Deleting a stage's outputs therefore re-runs that stage and the
stages that depend on it, and nothing else; an interrupted stage resumes where the stage
itself can (simulate, train, attack).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from . import PRESETS, __version__
from .errors import DeepAdvError, check_preset, file_error
from .io import LOCK_NAME, OutputLock, read_json, remove_stale_locks, remove_temporaries, write_json
from .progress import console, info

MANIFEST_KIND = "deepadv-reproduce"
TIMINGS_KIND = "deepadv-reproduce-timings"
METHODS: tuple[str, ...] = ("regular", "mmd")
MODELS: tuple[str, ...] = ("convnet", "resnet18")

#: The experiment grid of each preset. ``tiny`` and ``quick`` drop ResNet18: on a 2-core
#: CPU one ResNet18 run (11.3 M parameters) costs more than the whole 15-minute budget of
#: ``quick``; ``paper`` runs the paper's full grid and is meant for a GPU.
PRESET_GRID: dict[str, dict[str, Any]] = {
    "tiny": {"models": ("convnet",)},
    "quick": {"models": ("convnet",)},
    "paper": {"models": ("convnet", "resnet18")},
}
DROPPED_MODEL_REASON = {
    "tiny": "ResNet18 is not trained in the tiny preset (a seconds-long smoke test).",
    "quick": ("ResNet18 is not trained in the quick preset: one ResNet18 run alone exceeds the "
              "preset's 15-minute budget on a 2-core CPU. Run the paper preset on a GPU "
              "(or pass --models convnet,resnet18) for Tables 2-3."),
}

#: Expected seconds per stage kind, for the ETA: tiny and quick measured on an idle 2-core
#: CPU (quick: a fresh-clone run, 2026-11-29); paper: rough GPU estimates, not yet measured.
#: Keys ``train_<method>``, ``train_<model>`` and ``train_<model>_<method>`` refine ``train``.
EXPECTED_SECONDS: dict[str, dict[str, float]] = {
    "tiny": {"simulate": 4, "train": 2, "evaluate": 1, "attack": 1, "analyze": 5, "report": 1},
    "quick": {"simulate": 80, "train": 90, "train_mmd": 180, "evaluate": 4, "attack": 133, "analyze": 12,
              "report": 3},
    "paper": {"simulate": 900, "train": 900, "train_resnet18": 3600, "evaluate": 60, "attack": 600,
              "analyze": 180, "report": 30},
}


def expected_train_seconds(preset: str, model: str, method: str) -> float:
    """Expected seconds of one training run (the most specific key of EXPECTED_SECONDS)."""
    table = EXPECTED_SECONDS[preset]
    for key in (f"train_{model}_{method}", f"train_{model}", f"train_{method}", "train"):
        if key in table:
            return float(table[key])
    return 60.0


# --------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where everything lives in a reproduction folder.

    ``dataset`` is an existing dataset folder used instead of simulating one (``--data``,
    e.g. the published Zenodo data); None means the simulated ``OUT/data``.
    """

    root: Path
    dataset: Path | None = None

    @classmethod
    def of(cls, out: str | Path) -> "Layout":
        """The layout of an existing reproduction folder (reads its manifest)."""
        root = Path(out)
        manifest = read_manifest(root)
        data = manifest.get("data")
        return cls(root, Path(data) if data else None)

    @property
    def manifest(self) -> Path:
        return self.root / "reproduce.json"

    @property
    def data(self) -> Path:
        return self.dataset if self.dataset is not None else self.root / "data"

    @property
    def data_check(self) -> Path:
        """Marker of the check of an external dataset folder."""
        return self.root / "data_check.json"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run(self, model: str, method: str) -> Path:
        return self.runs / f"{model}_{method}"

    def analysis(self, model: str) -> Path:
        return self.root / "analysis" / model

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    @property
    def findings(self) -> Path:
        return self.root / "findings.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The ``reproduce.json`` of a reproduction folder, with a clear error if it is not one."""
    layout = Layout(Path(out))
    if not layout.manifest.is_file():
        raise file_error(layout.root, "not a reproduction folder (no reproduce.json); make one with 'deepadv reproduce'")
    manifest = read_json(layout.manifest)
    if not isinstance(manifest, dict) or manifest.get("kind") != MANIFEST_KIND:
        raise file_error(layout.manifest, f"not a deepadv reproduction manifest (expected \"kind\": \"{MANIFEST_KIND}\")")
    for key, typ in (("preset", str), ("seed", int), ("models", list)):
        if not isinstance(manifest.get(key), typ) or isinstance(manifest.get(key), bool):
            raise file_error(layout.manifest, f"missing or malformed key {key!r}")
    return manifest


def read_timings(out: str | Path) -> dict[str, Any]:
    """``timings.json`` of a reproduction folder (an empty record when there is none yet)."""
    path = Layout(Path(out)).timings
    if not path.is_file():
        return {"kind": TIMINGS_KIND, "stages": {}, "invocations": []}
    timings = read_json(path)
    if not isinstance(timings, dict) or not isinstance(timings.get("stages"), dict):
        raise file_error(path, "not a reproduce timings file (no 'stages' object)")
    timings.setdefault("invocations", [])
    return timings


# --------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------
@dataclass
class Stage:
    """One step of the pipeline: what it writes last, what it depends on, how to run it."""

    name: str                      # unique, e.g. "train:convnet_mmd"
    kind: str                      # simulate | train | evaluate | attack | analyze | report
    marker: Path                   # written last by the stage: its presence means "finished"
    depends: tuple[str, ...]       # names of the stages whose outputs it reads
    outputs: tuple[Path, ...]      # removed before a fresh re-run (stale results)
    run: Callable[[bool], Any]     # run(fresh) -> stage result; fresh=False may resume
    expected_s: float = 1.0
    extra_inputs: tuple[Path, ...] = ()  # files outside the pipeline whose change re-runs the stage
    adopt_check: Callable[[], None] | None = None  # vets finished outputs this folder did not record

    @property
    def log_name(self) -> str:
        return self.name.replace(":", "_") + ".log"


class StageFailed(DeepAdvError):
    """A stage of the reproduction failed; the message names the stage and its log."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fingerprint(path: Path) -> list[int] | None:
    """(modification time in ns, size) of a marker file, or None when it is missing."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_mtime_ns, st.st_size]


def build_stages(layout: Layout, preset: str, seed: int, models: tuple[str, ...], device: str,
                 workers: int) -> list[Stage]:
    """The stage list of a reproduction, in execution order."""
    expected = EXPECTED_SECONDS[preset]
    stages: list[Stage] = []

    if layout.dataset is None:
        def simulate(fresh: bool) -> Any:
            from .simulate import simulate_dataset

            return simulate_dataset(layout.data, preset=preset, seed=seed, workers=workers, overwrite=fresh)

        stages.append(Stage("simulate", "simulate", layout.data / "dataset.json", (), (layout.data,),
                            simulate, expected["simulate"],
                            adopt_check=_adopt_check(layout.data / "dataset.json", {"config.preset": preset,
                                                                                    "seed": seed})))
    else:
        def check_data(fresh: bool) -> Any:
            return check_external_dataset(layout)

        stages.append(Stage("data", "data", layout.data_check, (), (layout.data_check,), check_data, 5.0,
                            external_dataset_files(layout.data)))
    data_stage = stages[0].name
    for model in models:
        for method in METHODS:
            run_dir = layout.run(model, method)
            tag = f"{model}_{method}"
            stages.append(Stage(f"train:{tag}", "train", run_dir / "training.json", (data_stage,), (run_dir,),
                                _train_action(layout, run_dir, model, method, preset, seed, device),
                                expected_train_seconds(preset, model, method),
                                adopt_check=_adopt_check(run_dir / "config.json", {
                                    "model": model, "method": method, "preset": preset, "seed": seed,
                                    "data": str(layout.data.resolve())})))
        for method in METHODS:
            run_dir = layout.run(model, method)
            tag = f"{model}_{method}"
            stages.append(Stage(f"evaluate:{tag}", "evaluate", run_dir / "metrics.json", (f"train:{tag}",),
                                (run_dir / "metrics.json",), _evaluate_action(layout, run_dir, device),
                                expected["evaluate"]))
        for method in METHODS:
            run_dir = layout.run(model, method)
            tag = f"{model}_{method}"
            stages.append(Stage(f"attack:{tag}", "attack", run_dir / "attack" / "summary.json", (f"train:{tag}",),
                                (run_dir / "attack",), _attack_action(layout, run_dir, preset, seed, device),
                                expected["attack"],
                                adopt_check=_adopt_check(run_dir / "attack" / "summary.json",
                                                         {"settings.preset": preset, "settings.seed": seed})))
        stages.append(Stage(f"analyze:{model}", "analyze", layout.analysis(model) / "analysis.json",
                            tuple(f"{k}:{model}_{m}" for k in ("train", "attack") for m in METHODS),
                            (layout.analysis(model),),
                            _analyze_action(layout, model, preset, seed, device), expected["analyze"]))

    def report(fresh: bool) -> Any:
        from .report import write_report

        return write_report(layout.root)

    stages.append(Stage("report", "report", layout.report_html, tuple(s.name for s in stages),
                        (layout.report_md, layout.report_html, layout.findings, layout.figures),
                        report, expected["report"]))
    return stages


def _adopt_check(path: Path, expected: dict[str, Any]) -> Callable[[], None]:
    """A check that finished outputs found in the folder (not made by this reproduction) fit it."""
    def check() -> None:
        record = read_json(path)
        for dotted, want in expected.items():
            have: Any = record
            for part in dotted.split("."):
                have = have.get(part) if isinstance(have, dict) else None
            if have != want:
                raise file_error(path, f"{dotted} is {have!r} but this reproduction needs {want!r}; remove the "
                                       "folder or choose another --out")
    return check


def external_dataset_files(path: Path) -> tuple[Path, ...]:
    """The files of a dataset folder whose change invalidates everything trained on it."""
    from . import DOMAINS, SPLITS
    from .data import image_file, label_file

    names = [label_file(s) for s in SPLITS] + [image_file(d, s) for d in DOMAINS for s in SPLITS] + ["dataset.json"]
    return tuple(path / n for n in names)


def check_external_dataset(layout: Layout) -> dict[str, Any]:
    """Validate an existing dataset folder (every file, both domains) and record what it holds."""
    from . import SPLITS
    from .data import load_dataset

    ds = load_dataset(layout.data)
    if not ds.has_domain("Y1"):
        raise file_error(layout.data, "has no Y1 images (images_Y1_{train,valid,test}.npy); the study needs both domains")
    ds.validate()
    record = {"kind": "deepadv-data-check", "data": str(layout.data), "image_shape": list(ds.image_shape),
              "counts": {s: int(len(ds.labels(s))) for s in SPLITS}, "domains": list(ds.domains),
              "stretch": {d: list(ds.stretch(d)) for d in ds.domains},
              "has_metadata": bool(ds.metadata), "has_catalog": bool(ds.catalog("train")), "checked": _now()}
    write_json(layout.data_check, record)
    return record


def _train_action(layout: Layout, run_dir: Path, model: str, method: str, preset: str, seed: int,
                  device: str) -> Callable[[bool], Any]:
    def action(fresh: bool) -> Any:
        from .runs import last_checkpoint_path
        from .training import train_model

        resume = not fresh and last_checkpoint_path(run_dir).is_file()
        if not resume and run_dir.exists():
            shutil.rmtree(run_dir)  # an earlier attempt that left nothing to resume from
        return train_model(layout.data, run_dir, model=model, method=method, preset=preset, seed=seed,
                           device=device, resume=resume)

    return action


def _evaluate_action(layout: Layout, run_dir: Path, device: str) -> Callable[[bool], Any]:
    def action(fresh: bool) -> Any:
        from .evaluation import evaluate_run

        return evaluate_run(run_dir, layout.data, device=device)

    return action


def _attack_action(layout: Layout, run_dir: Path, preset: str, seed: int, device: str) -> Callable[[bool], Any]:
    def action(fresh: bool) -> Any:
        from .campaign import attack_run

        return attack_run(run_dir, layout.data, preset=preset, seed=seed, device=device)

    return action


def _analyze_action(layout: Layout, model: str, preset: str, seed: int, device: str) -> Callable[[bool], Any]:
    def action(fresh: bool) -> Any:
        from .analysis import analyze_runs

        out = layout.analysis(model)
        if out.exists():
            shutil.rmtree(out)  # analysis has nothing to resume; start clean
        return analyze_runs(layout.run(model, "regular"), layout.run(model, "mmd"), out, seed=seed, preset=preset,
                            device=device)

    return action


# --------------------------------------------------------------------------------------
# planning: which stages run
# --------------------------------------------------------------------------------------
def _current_inputs(stage: Stage, by_name: dict[str, Stage]) -> dict[str, list[int] | None]:
    inputs = {dep: fingerprint(by_name[dep].marker) for dep in stage.depends}
    inputs.update({str(p): fingerprint(p) for p in stage.extra_inputs})
    return inputs


def decide(stage: Stage, by_name: dict[str, Stage], record: dict[str, Any] | None,
           rerun: set[str]) -> tuple[bool, bool, str]:
    """Whether ``stage`` must run, whether from scratch, and why.

    ``rerun`` holds the stages that run (or ran) in this invocation before this one.
    """
    upstream = [dep for dep in stage.depends if dep in rerun]
    inputs_now = _current_inputs(stage, by_name)
    recorded = None if record is None else record.get("inputs")
    inputs_changed = recorded is not None and recorded != inputs_now
    if not stage.marker.is_file():
        # resume what is there unless it was made from other inputs
        fresh = bool(upstream) or inputs_changed
        return True, fresh, "not finished" if not (fresh and record) else "not finished; its inputs changed"
    if upstream:
        return True, True, f"{upstream[0]} re-ran"
    if inputs_changed:
        return True, True, "its inputs changed"
    return False, False, "finished"


def plan(stages: list[Stage], timings: dict[str, Any]) -> list[tuple[Stage, bool, str]]:
    """For each stage (in order): whether it will run, and why."""
    by_name = {s.name: s for s in stages}
    records = timings.get("stages", {})
    rerun: set[str] = set()
    result = []
    for stage in stages:
        runs, _fresh, why = decide(stage, by_name, records.get(stage.name), rerun)
        if runs:
            rerun.add(stage.name)
        result.append((stage, runs, why))
    return result


# --------------------------------------------------------------------------------------
# running one stage: its log, its timing, its failure
# --------------------------------------------------------------------------------------
_QUIET_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")


@contextlib.contextmanager
def stage_log(path: Path) -> Iterator[Any]:
    """Send the stage's stdout, warnings and library logging (Lightning's too) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        saved = {}
        for name in _QUIET_LOGGERS:
            lg = logging.getLogger(name)
            saved[name] = (lg.handlers[:], lg.propagate)
            lg.handlers = [handler]
            lg.propagate = False
        root.addHandler(handler)
        logging.captureWarnings(True)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(fh):
                warnings.simplefilter("default")
                yield fh
        finally:
            logging.captureWarnings(False)
            root.removeHandler(handler)
            for name, (handlers, propagate) in saved.items():
                lg = logging.getLogger(name)
                lg.handlers = handlers
                lg.propagate = propagate


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "-:--:--"
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Clock:
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
            elapsed = time.perf_counter() - self.started
            rest += max(self.current.expected_s * scale - elapsed, 0.0)
        return rest


class _EtaColumn(ProgressColumn):
    def __init__(self, clock: _Clock) -> None:
        super().__init__()
        self.clock = clock

    def render(self, task: Any) -> Text:
        return Text(f"ETA {_fmt_seconds(self.clock.eta())}", style="progress.remaining")


# --------------------------------------------------------------------------------------
# the entry point
# --------------------------------------------------------------------------------------
def _resolve_models(preset: str, models: tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    if models is None:
        return tuple(PRESET_GRID[preset]["models"])
    chosen = tuple(dict.fromkeys(m.strip().lower() for m in models if m.strip()))
    if not chosen:
        raise DeepAdvError("--models is empty; choose from " + ", ".join(MODELS))
    for m in chosen:
        if m not in MODELS:
            raise DeepAdvError(f"unknown model {m!r}; choose from {', '.join(MODELS)}")
    return chosen


def _check_or_write_manifest(layout: Layout, preset: str, seed: int, models: tuple[str, ...]) -> dict[str, Any]:
    data = str(layout.dataset) if layout.dataset is not None else None
    if layout.manifest.is_file():
        manifest = read_manifest(layout.root)
        mine = (manifest["preset"], manifest["seed"], tuple(manifest["models"]), manifest.get("data"))
        if mine != (preset, seed, models, data):
            where = f"data {mine[3]}" if mine[3] else "simulated data"
            raise file_error(
                layout.manifest,
                f"this folder holds a reproduction with preset {mine[0]!r}, seed {mine[1]}, models "
                f"{','.join(mine[2])}, {where}; run with those to resume it, or choose another --out")
        return manifest
    # a new folder, or one holding only stage folders made beforehand (e.g. runs trained on several GPUs)
    allowed = {LOCK_NAME, "data", "runs", "analysis", "figures", "logs"}
    others = [p.name for p in layout.root.iterdir() if p.name not in allowed] if layout.root.is_dir() else []
    if others:
        raise file_error(layout.root, f"folder is not empty ({others[0]}) and is not a reproduction folder; choose "
                                      "a new or empty --out")
    manifest = {
        "kind": MANIFEST_KIND, "version": __version__, "preset": preset, "seed": seed, "models": list(models),
        "methods": list(METHODS), "data": data, "created": _now(),
    }
    write_json(layout.manifest, manifest)
    return manifest


def environment(device: str) -> dict[str, Any]:
    """Device, machine and package versions of this process, for the record."""
    import importlib.metadata as md
    import platform

    import torch

    from .devices import resolve_device

    dev = resolve_device(device)
    versions = {"python": platform.python_version(), "deepadversaries": __version__}
    for pkg in ("torch", "torchvision", "lightning", "galsim", "numpy", "scipy", "scikit-learn", "matplotlib",
                "statmorph", "photutils", "astropy", "rich", "typer", "pillow"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    env = {
        "device": str(dev), "device_requested": device,
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(), "versions": versions,
    }
    return env


def reproduce(out: str | Path, preset: str = "quick", *, seed: int = 0, device: str = "auto",
              models: tuple[str, ...] | list[str] | None = None, workers: int | None = None,
              data: str | Path | None = None) -> Path:
    """Run the whole study into ``out`` (resuming what is there) and write its report.

    ``data`` is an existing dataset folder (ours, or the published Zenodo files) to use
    instead of simulating one. Returns the path of ``report.html``. Raises
    :class:`StageFailed` (one line naming the stage and its log) when a stage fails.
    """
    check_preset(preset, {p: {} for p in PRESETS})
    models_t = _resolve_models(preset, models)
    if workers is None:
        workers = max(1, os.cpu_count() or 1)
    external = None
    if data is not None:
        external = Path(data).expanduser().resolve()
        if not external.is_dir():
            raise file_error(external, "dataset folder not found")
    layout = Layout(Path(out).expanduser().resolve(), external)
    if external is not None and (external == layout.root or layout.root in external.parents):
        raise file_error(external, "the dataset folder must not lie inside the output folder")
    from .devices import resolve_device

    resolve_device(device)  # refuse --device cuda without a GPU before any work
    with OutputLock(layout.root, "reproduce"):
        remove_temporaries(layout.root)
        remove_stale_locks(layout.root)  # of stages killed after their marker (they are skipped now)
        _check_or_write_manifest(layout, preset, seed, models_t)
        env = environment(device)
        stages = build_stages(layout, preset, seed, models_t, device, workers)
        timings = read_timings(layout.root)
        timings.update({"kind": TIMINGS_KIND, "preset": preset, "seed": seed, "models": list(models_t)})
        records: dict[str, Any] = timings["stages"]
        for name in list(records):  # forget stages that are no longer part of the grid
            if name not in {s.name for s in stages}:
                del records[name]
        planned = plan(stages, timings)
        to_run = [s for s, runs, _ in planned if runs]
        invocation = {"started": _now(), "device": env["device"], "ran": [], "skipped": []}
        timings["invocations"] = (timings.get("invocations") or [])[-19:] + [invocation]
        timings["environment"] = env
        write_json(layout.timings, timings)
        source = f"data {layout.data}" if external is not None else "simulated data"
        info(f"reproduce: preset {preset}, seed {seed}, models {', '.join(models_t)}, {source}, device "
             f"{env['device']} -> {layout.root}; {len(to_run)} of {len(stages)} stages to run")

        by_name = {s.name: s for s in stages}
        clock = _Clock(to_run)
        t_all = time.perf_counter()
        progress = Progress(
            TextColumn("[bold]reproduce[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), _EtaColumn(clock), console=console, disable=not sys.stderr.isatty(),
        )
        rerun: set[str] = set()
        with progress:
            task = progress.add_task("planning", total=len(to_run) or 1)
            done = 0
            for stage in stages:
                runs, fresh, why = decide(stage, by_name, records.get(stage.name), rerun)
                if not runs:
                    if stage.name not in records and stage.adopt_check is not None:
                        stage.adopt_check()  # finished outputs this folder has no record of
                    rec = records.setdefault(stage.name, {"kind": stage.kind})
                    rec.update({"status": "skipped", "inputs": _current_inputs(stage, by_name),
                                "marker": fingerprint(stage.marker)})
                    invocation["skipped"].append(stage.name)
                    write_json(layout.timings, timings)
                    continue
                rerun.add(stage.name)
                label = stage.name.replace(":", " ")
                progress.update(task, description=f"[{done + 1}/{len(to_run)}] {label}")
                info(f"[{done + 1}/{len(to_run)}] {label} ({why})")
                clock.start(stage)
                wall = _run_stage(stage, fresh, layout, by_name, timings, env)
                clock.finish(wall)
                invocation["ran"].append(stage.name)
                write_json(layout.timings, timings)
                done += 1
                progress.update(task, completed=done)
                info(f"    {label}: done in {_fmt_seconds(wall)}")
        invocation["finished"] = _now()
        invocation["wall_s"] = round(time.perf_counter() - t_all, 3)
        write_json(layout.timings, timings)
        if to_run:
            info(f"reproduce: finished in {_fmt_seconds(invocation['wall_s'])}; report: {layout.report_html}")
        else:
            info(f"reproduce: every stage was already finished; report: {layout.report_html}")
    return layout.report_html


def _run_stage(stage: Stage, fresh: bool, layout: Layout, by_name: dict[str, Stage], timings: dict[str, Any],
               env: dict[str, Any]) -> float:
    """Run one stage with its log; record its timing; turn a failure into one clear line."""
    if fresh:
        for path in stage.outputs:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    log_path = layout.logs / stage.log_name
    rec = timings["stages"].setdefault(stage.name, {"kind": stage.kind})
    rec.update({"status": "running", "started": _now(), "log": str(log_path.relative_to(layout.root))})
    write_json(layout.timings, timings)
    t0 = time.perf_counter()
    with stage_log(log_path) as log:
        log.write(f"# deepadv {__version__}: stage {stage.name} ({'from scratch' if fresh else 'resuming if possible'}), "
                  f"started {rec['started']}\n")
        try:
            stage.run(fresh)
        except KeyboardInterrupt:
            log.write("# interrupted\n")
            rec["status"] = "interrupted"
            write_json(layout.timings, timings)
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure becomes one line + its log
            traceback.print_exc(file=log)
            rec.update({"status": "failed", "error": _first_line(exc)})
            write_json(layout.timings, timings)
            code = exc.exit_code if isinstance(exc, DeepAdvError) else 1
            raise StageFailed(f"stage {stage.name} failed: {_first_line(exc)} (log: {log_path})", code) from exc
        wall = time.perf_counter() - t0
        log.write(f"# finished in {wall:.1f} s\n")
    if not stage.marker.is_file():
        rec.update({"status": "failed", "error": f"{stage.marker.name} was not written"})
        write_json(layout.timings, timings)
        raise StageFailed(f"stage {stage.name} ended without writing {stage.marker} (log: {log_path})", 1)
    rec.update({"status": "ran", "finished": _now(), "wall_s": round(wall, 3), "device": env["device"],
                "inputs": _current_inputs(stage, by_name), "marker": fingerprint(stage.marker)})
    rec.pop("error", None)
    return wall
