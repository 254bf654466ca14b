"""The finished results of a reproduction folder, read once for the report and the findings.

Everything is read from the stages' own files (``dataset.json``, each run's
``config.json``/``training.json``/``metrics.json``/``attack/summary.json``, each
analysis's ``analysis.json``, ``timings.json``) and kept as it is there: the report
derives differences and ratios from those numbers but never recomputes a metric. A
missing file is a one-line :class:`~deepadversaries.errors.FileError` saying to finish the
reproduction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepadversaries import REFERENCE_METHOD
from deepadversaries.errors import file_error
from deepadversaries.io import read_json
from deepadversaries.workflow.layout import Layout, read_manifest, read_timings
from deepadversaries.models.runs import RunConfig, read_run_config


@dataclass
class RunFiles:
    """The finished files of one run folder."""

    path: Path
    config: RunConfig
    training: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]

    @property
    def attack_seed(self) -> int:
        """The seed of the run's attack campaign."""
        return int(self.summary.get("settings", {}).get("seed", self.config.seed))


@dataclass
class ReportInputs:
    """Everything the report reads from a reproduction folder.

    Attributes:
        root: the folder.
        layout: its layout.
        manifest, timings, dataset: ``reproduce.json``, ``timings.json``, the dataset's
            ``dataset.json`` (or the check of an external dataset, with ``"external"``).
        runs: (model, method) → the run's files.
        analyses: (model, adapted method) → ``analysis.json``.
        models, methods: the grid.
    """

    root: Path
    layout: Layout
    manifest: dict[str, Any]
    timings: dict[str, Any]
    dataset: dict[str, Any]
    runs: dict[tuple[str, str], RunFiles]
    analyses: dict[tuple[str, str], dict[str, Any]]
    models: tuple[str, ...]
    methods: tuple[str, ...]

    def run(self, model: str, method: str) -> RunFiles:
        return self.runs[(model, method)]

    @property
    def adapted_methods(self) -> tuple[str, ...]:
        return tuple(m for m in self.methods if m != REFERENCE_METHOD)


def need_path(path: Path) -> Path:
    """A stage file's path, or a one-line error saying to finish the reproduction."""
    if not path.is_file():
        raise file_error(path, "file not found; finish the reproduction first ('deepadv reproduce' resumes it)")
    return path


def need_json(path: Path) -> Any:
    """A stage file's JSON, or a one-line error saying to finish the reproduction."""
    return read_json(need_path(path))


def load_inputs(out: str | Path) -> ReportInputs:
    """Read every stage file of a reproduction folder (clear errors for missing ones)."""
    manifest = read_manifest(out)
    layout = Layout.of(out)
    models = tuple(manifest["models"])
    methods = tuple(manifest.get("methods") or ("regular", "mmd"))
    runs = {}
    for model in models:
        for method in methods:
            rd = layout.run(model, method)
            need_json(rd / "config.json")
            runs[(model, method)] = RunFiles(rd, read_run_config(rd), need_json(rd / "training.json"),
                                             need_json(rd / "metrics.json"), need_json(rd / "attack" / "summary.json"))
    analyses = {(model, method): need_json(layout.analysis(model, method) / "analysis.json")
                for model in models for method in methods if method != REFERENCE_METHOD}
    if layout.dataset is None:
        dataset = need_json(layout.data() / "dataset.json")
    else:  # an external folder: its own metadata when it has some, else our check of it
        meta = layout.data() / "dataset.json"
        dataset = read_json(meta) if meta.is_file() else {"check": need_json(layout.data_check)}
        dataset["external"] = str(layout.data())
    return ReportInputs(layout.root, layout, manifest, read_timings(layout.root), dataset, runs, analyses,
                        models, methods)


def n_test_images(metrics: dict[str, Any], domain: str) -> int:
    """How many test images a metrics block rests on (the sum of its confusion matrix)."""
    conf = metrics[domain].get("confusion")
    return int(sum(sum(row) for row in conf)) if conf else 0


def get_path(d: dict[str, Any], *paths: str, default: Any = None) -> Any:
    """The first of several dotted paths present in ``d`` (metadata written by different stages)."""
    for path in paths:
        cur: Any = d
        for part in path.split("."):
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if cur is not None:
            return cur
    return default
