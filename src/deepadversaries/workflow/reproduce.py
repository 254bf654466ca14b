"""``deepadv reproduce``: the paper's whole study for one seed, end to end, then a report.

Stages, in order (:mod:`deepadversaries.workflow.grid`): simulate → train {model} × {regular, mmd}
→ evaluate → attack → analyze (per model, regular vs MMD) → report, run one after the
other in this process (:func:`deepadversaries.workflow.stages.run_in_order`). The folder layout
is :mod:`deepadversaries.workflow.layout`'s; ``OUT/reproduce.json`` records the grid (written once).

A stage is skipped when its finished marker exists and the markers of the stages it
depends on are the ones it was run from (their size and modification time are recorded
in ``timings.json``). Deleting a stage's outputs therefore re-runs that stage and the
stages that depend on it, and nothing else; an interrupted stage resumes where the stage
itself can (simulate, train, attack).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepadversaries import PAPER_METHODS, PRESETS, __version__
from deepadversaries.devices import resolve_device
from deepadversaries.errors import check_choice, file_error
from deepadversaries.formatting import fmt_clock, utc_now
from deepadversaries.workflow.grid import (
    Grid, build_stages, parse_list, parse_methods, report_stage, resolve_models,
)
from deepadversaries.io import LOCK_NAME, OutputLock, remove_stale_locks, remove_temporaries, write_json
from deepadversaries.workflow.layout import MANIFEST_KIND, TIMINGS_KIND, Layout, read_manifest, read_timings
from deepadversaries.workflow.stages import Recorder, environment, plan, run_in_order
from deepadversaries.progress import info

#: what a folder may hold before it becomes a reproduction (stage folders made beforehand,
#: e.g. runs trained on several GPUs)
ADOPTABLE = {LOCK_NAME, "data", "runs", "analysis", "figures", "logs"}


def reproduce(out: str | Path, preset: str = "quick", *, seed: int = 0, device: str = "auto",
              models: tuple[str, ...] | list[str] | None = None, methods: Sequence[str] | str = PAPER_METHODS,
              workers: int | None = None, data: str | Path | None = None,
              attacks: Sequence[str] | str = ("de",)) -> Path:
    """Run the whole study into ``out`` (resuming what is there) and write its report.

    Args:
        out: the reproduction folder (created when missing).
        preset: ``tiny``, ``quick`` or ``paper`` [default: "quick"].
        seed: the seed of every stage: data, training, attack, analysis [default: 0].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        models: the architectures [default: the preset's: ConvNet; both for ``paper``].
        methods: the training methods, ``regular`` among them [default: the paper's regular and mmd].
        workers: processes simulating the dataset [default: the number of CPUs].
        data: an existing dataset folder (ours, or the published Zenodo files) to use instead
            of simulating one [default: None, simulate].
        attacks: the one-pixel searches, ``de`` among them, e.g. ``"de,exhaustive,sparse-rs"``
            [default: the paper's differential evolution only].

    Returns:
        The path of ``report.html``.

    Raises:
        StageFailed: one line naming the failing stage and its log.
    """
    check_choice(preset, PRESETS, "preset")
    resolve_device(device)  # refuse --device cuda without a GPU before any work
    layout = _layout(out, data)
    grid = Grid(preset=preset, models=resolve_models(preset, models), methods=parse_methods(methods), seeds=(seed,),
                data_seed=seed, device=device, workers=max(1, os.cpu_count() or 1) if workers is None else workers,
                attacks=parse_list(attacks))
    with OutputLock(layout.root, "reproduce"):
        remove_temporaries(layout.root)
        remove_stale_locks(layout.root)  # of stages killed after their marker (they are skipped now)
        _check_or_write_manifest(layout, grid)
        stages = build_stages(layout, grid)
        stages.append(report_stage(layout, grid, stages))
        timings = read_timings(layout.root)
        timings.update({"kind": TIMINGS_KIND, "preset": preset, "seed": seed, "models": list(grid.models)})
        recorder = Recorder(layout.timings, timings, stages, environment(device))
        planned = plan(stages, timings)
        n_run = sum(d.runs for _, d in planned)
        source = f"data {layout.data()}" if layout.dataset is not None else "simulated data"
        info(f"reproduce: preset {preset}, seed {seed}, models {', '.join(grid.models)}, {source}, device "
             f"{recorder.env['device']} -> {layout.root}; {n_run} of {len(stages)} stages to run")
        ran = run_in_order(planned, recorder, root=layout.root, logs=layout.logs)
        wall = recorder.close()
        if ran:
            info(f"reproduce: finished in {fmt_clock(wall)}; report: {layout.report_html}")
        else:
            info(f"reproduce: every stage was already finished; report: {layout.report_html}")
    return layout.report_html


def _layout(out: str | Path, data: str | Path | None) -> Layout:
    """The layout of ``out``, with ``data`` (an existing dataset folder) checked."""
    external = None
    if data is not None:
        external = Path(data).expanduser().resolve()
        if not external.is_dir():
            raise file_error(external, "dataset folder not found")
    layout = Layout(Path(out).expanduser().resolve(), external)
    if external is not None and (external == layout.root or layout.root in external.parents):
        raise file_error(external, "the dataset folder must not lie inside the output folder")
    return layout


def _check_or_write_manifest(layout: Layout, grid: Grid) -> dict[str, Any]:
    """The folder's manifest; a new one for a new folder, an error for a reproduction of another grid."""
    data = str(layout.dataset) if layout.dataset is not None else None
    seed = grid.seeds[0]
    if layout.manifest.is_file():
        manifest = read_manifest(layout.root)
        mine = (manifest["preset"], manifest["seed"], tuple(manifest["models"]), manifest.get("data"),
                tuple(manifest.get("methods") or PAPER_METHODS))
        if mine != (grid.preset, seed, grid.models, data, grid.methods):
            where = f"data {mine[3]}" if mine[3] else "simulated data"
            raise file_error(
                layout.manifest,
                f"this folder holds a reproduction with preset {mine[0]!r}, seed {mine[1]}, models "
                f"{','.join(mine[2])}, methods {','.join(mine[4])}, {where}; run with those to resume it, or "
                "choose another --out")
        return manifest
    others = [p.name for p in layout.root.iterdir() if p.name not in ADOPTABLE] if layout.root.is_dir() else []
    if others:
        raise file_error(layout.root, f"folder is not empty ({others[0]}) and is not a reproduction folder; choose "
                                      "a new or empty --out")
    manifest = {"kind": MANIFEST_KIND, "version": __version__, "preset": grid.preset, "seed": seed,
                "models": list(grid.models), "methods": list(grid.methods), "data": data, "created": utc_now()}
    write_json(layout.manifest, manifest)
    return manifest
