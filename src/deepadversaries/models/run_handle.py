"""A read-only handle on a run folder for notebooks: ``run = da.Run("runs/convnet_regular")``.

Contract: :class:`Run` never writes. It reads what the stages wrote (layout in
:mod:`deepadversaries.models.runs`) through the readers the stages use themselves —
:func:`~deepadversaries.models.runs.read_run_config` for ``config.json``,
:func:`~deepadversaries.models.networks.load_model` for the kept model,
:func:`~deepadversaries.data.dataset.load_dataset` for the dataset — so a handle sees exactly what
``deepadv evaluate``/``attack`` see. Missing results are one-line
:class:`~deepadversaries.errors.FileError`\\ s naming the stage that writes them; an attack search
that was not run is a :class:`KeyError` naming the searches that were.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deepadversaries.attacks.campaign import RESULTS_NAME, SUMMARY_NAME
from deepadversaries.data.dataset import GalaxyDataset, load_dataset
from deepadversaries.errors import file_error
from deepadversaries.io import read_json
from deepadversaries.models.networks import load_model
from deepadversaries.models.runs import (
    METRICS_NAME, TRAINING_DONE, RunConfig, attack_dir, attack_folders, read_run_config,
)


def _cell(text: str) -> Any:
    """A ``results.csv`` cell as a Python value: int, float, bool, None (empty) or the text itself."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


@dataclass(frozen=True)
class AttackRecord:
    """One finished attack search of a run (``RUN/attack*/``).

    Attributes:
        search: the search's name (``de``, ``exhaustive``, ``sparse-rs``).
        folder: its folder in the run.
        summary: ``summary.json``: counts, success rate, settings, timing.
        results: ``results.csv``, one dict per attacked image (numbers and booleans parsed; an empty cell
            is None), in the file's order.
    """

    search: str
    folder: Path
    summary: dict[str, Any]
    results: list[dict[str, Any]]

    def __repr__(self) -> str:
        rate = self.summary.get("success_rate")
        shown = f"{rate:.3g}" if isinstance(rate, (int, float)) else rate
        return f"AttackRecord(search={self.search!r}, images={len(self.results)}, success_rate={shown})"


class RunAttacks(Mapping[str, AttackRecord]):
    """The finished attack searches of a run, by search name: ``run.attacks["de"]``.

    Only searches whose ``summary.json`` exists (a finished campaign) are keys; indexing another
    raises a :class:`KeyError` that names the available ones.
    """

    def __init__(self, run: Path) -> None:
        self._run = run

    def _finished(self) -> list[str]:
        return [s for s in attack_folders() if (attack_dir(self._run, s) / SUMMARY_NAME).is_file()]

    def __getitem__(self, search: str) -> AttackRecord:
        finished = self._finished()
        if search not in finished:
            known = f"; searches: {', '.join(attack_folders())}" if search not in attack_folders() else ""
            have = ", ".join(finished) if finished else "none (run da.attack_run or 'deepadv attack')"
            raise KeyError(f"{self._run}: no finished {search!r} attack{known}; finished: {have}")
        folder = attack_dir(self._run, search)
        results_path = folder / RESULTS_NAME
        rows: list[dict[str, Any]] = []
        if results_path.is_file():
            with open(results_path, newline="", encoding="utf-8") as fh:
                rows = [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]
        return AttackRecord(search=search, folder=folder, summary=read_json(folder / SUMMARY_NAME), results=rows)

    def __iter__(self) -> Iterator[str]:
        return iter(self._finished())

    def __len__(self) -> int:
        return len(self._finished())

    def __repr__(self) -> str:
        return f"RunAttacks({self._finished()!r})"


class Run:
    """A handle on a run folder (read-only).

    Args:
        path: a run folder written by ``train_model``/``da.train``/``deepadv train`` (or an adoption).

    Attributes:
        path: the folder, absolute.
        config: its :class:`~deepadversaries.models.runs.RunConfig` (read once, when the handle is made).
        attacks: the finished attack searches (:class:`RunAttacks`): ``run.attacks["de"].summary``.

    Raises:
        FileError: ``path`` is not a run folder (no valid ``config.json``).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()
        self.config: RunConfig = read_run_config(self.path)
        self.attacks = RunAttacks(self.path)

    @property
    def trained(self) -> bool:
        """Whether the training finished (``training.json`` exists)."""
        return (self.path / TRAINING_DONE).is_file()

    def model(self, domain: str = "Y10", device: str | torch.device = "cpu") -> nn.Module:
        """The kept model in eval mode (:func:`~deepadversaries.models.networks.load_model`).

        Args:
            domain: the images it will see, ``Y10`` or ``Y1`` (an ``adabn`` run's Y1 model differs)
                [default: "Y10"].
            device: where to put it [default: "cpu"].

        Returns:
            The classifier; ``model(x)`` for x (N, B, H, W) of model input returns ``(logits (N, K), z (N, D))``.
        """
        return load_model(self.path, device=device, domain=domain)

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict, ``{"Y10": {...}, "Y1": {...}}`` (SPEC 6 layout).

        Raises:
            FileError: the run was not evaluated yet.
        """
        path = self.path / METRICS_NAME
        if not path.is_file():
            raise file_error(self.path, f"not evaluated yet (no {METRICS_NAME}); run da.evaluate_run(run.path) "
                                        "or 'deepadv evaluate'")
        return read_json(path)

    @cached_property
    def dataset(self) -> GalaxyDataset:
        """The dataset the run was trained on (the folder its ``config.json`` records)."""
        return load_dataset(self.config.data)

    def __repr__(self) -> str:
        state = "trained" if self.trained else "training unfinished"
        extra = [name for name, done in (("evaluated", (self.path / METRICS_NAME).is_file()),) if done]
        attacked = list(self.attacks)
        if attacked:
            extra.append("attacked: " + ", ".join(attacked))
        return (f"Run({str(self.path)!r}: {self.config.model} {self.config.method}, seed {self.config.seed}, "
                f"{', '.join([state, *extra])})")
