"""The survey-corruption benchmark of a trained run: ``deepadv robustness``.

Every corruption of :mod:`deepadversaries.corruptions` at every chosen severity is applied
to the raw Y10 test images, which are then normalised as the dataset says (the paper's
stretch with the Y10 constants, or an imported dataset's asinh/zscore) and classified by
the run's kept model (a trained checkpoint or an adopted TorchScript model). The
corruptions model LSST co-adds in electrons, so the dataset must hold raw electrons (not
``--stretch none``) in LSST bands (g, r, i or a subset); anything else is refused with one
line. Per (corruption, severity): accuracy, flip rate
(prediction differs from the clean prediction) and mean p(true class). ImageNet-C's
corruption error (Hendrycks & Dietterich 2019) compares the run with a baseline run:

    CE_c = sum_s E_{s,c}(run) / sum_s E_{s,c}(baseline),  E = 1 - accuracy,  mCE = mean_c CE_c

(and the relative CE, which subtracts each model's clean error first). The default baseline
of a run whose method is not "regular" is the regular run of the same model beside it
(``RUN/../{model}_regular``, the reproduce layout, or the only such sibling); a regular run
has no default baseline, and then only the unnormalised mean errors are given.

Files, in ``RUN/robustness/``: ``robustness.csv`` (one row per (corruption, severity), the
clean row first as corruption "none", severity 0), ``accuracy.png`` (accuracy versus
severity, with the baseline when there is one), ``corruption_grid.png`` (the first test
galaxy under every corruption and severity) and ``summary.json``, written last: it marks a
finished result.

Determinism and pairing: the images are corrupted in chunks of :data:`CHUNK` test images
(in test-set order), chunk k of corruption c at severity s with
``numpy.random.default_rng([seed, crc32(c), s, k])``. So the corrupted images depend only
on the dataset, the seed and the corruption table, never on the model, the batch size or
the device: every run (regular or domain-adapted) is evaluated on the same images. Models are
evaluated with their BatchNorm folded into the convolutions, NHWC
(:func:`deepadversaries.attacks.optimized_for_inference`): the same function to float rounding,
about twice as fast on a CPU. ``timing`` in the summary splits the wall time into corrupting
(with the stretch) and evaluating.
"""

from __future__ import annotations

import functools
import math
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import BANDS, REFERENCE_METHOD
from .attacks import optimized_for_inference
from .corruptions import (
    CORRUPTIONS,
    MAX_SEVERITY,
    SEVERITIES,
    check_bands,
    corrupt,
    table_fingerprint,
)
from .data import GalaxyDataset, image_file, load_dataset
from .devices import resolve_device
from .errors import DeepAdvError, OptionError, file_error
from .inference import forward_batches, softmax
from .io import OutputLock, read_json, write_csv, write_json
from .models import check_input_shape, load_model
from .plots.robustness import plot_accuracy_curves, plot_corruption_grid
from .progress import make_progress
from .runs import TRAINING_DONE, RunConfig, check_same_classes, kept_model_path, read_run_config

KIND = "deepadv-robustness"
VERSION = 1
FOLDER = "robustness"
CSV_NAME = "robustness.csv"
SUMMARY_NAME = "summary.json"
ACCURACY_FIGURE = "accuracy.png"
GRID_FIGURE = "corruption_grid.png"
#: test images per corruption draw; part of the determinism contract (changing it changes the images)
CHUNK = 256
#: the domain whose test images are corrupted
DOMAIN = "Y10"
FIELDS = ("corruption", "severity", "accuracy", "flip_rate", "mean_p_true", "n")
CLEAN = "none"

Key = tuple[str, int]


def robustness_dir(run: str | Path) -> Path:
    """The benchmark's output folder of a run: ``RUN/robustness``."""
    return Path(run) / FOLDER


# --- option parsing ------------------------------------------------------------------------------
def parse_corruptions(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Corruption names from ``"all"``, ``"a,b"`` or a sequence of names, in table order.

    Raises:
        OptionError: an unknown name, or none given.
    """
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    names = [n for n in names if n]
    if names == ["all"]:
        return tuple(CORRUPTIONS)
    if not names:
        raise OptionError(f"no corruption given; choose 'all' or some of {', '.join(CORRUPTIONS)}")
    for name in names:
        if name not in CORRUPTIONS:
            raise OptionError(f"unknown corruption {name!r}; choose 'all' or some of {', '.join(CORRUPTIONS)}")
    return tuple(n for n in CORRUPTIONS if n in names)


def parse_severities(spec: str | Iterable[int]) -> tuple[int, ...]:
    """Severities from ``"1-5"``, ``"1,3,5"``, ``"2"`` or a sequence of ints; sorted, unique.

    Severity 0 (no corruption) is allowed but adds nothing: the clean images are always
    evaluated.

    Raises:
        OptionError: not a severity list, or a severity outside 0-5.
    """
    values: list[int] = []
    if isinstance(spec, str):
        for part in (p.strip() for p in spec.split(",")):
            lo, sep, hi = part.partition("-")
            try:
                values += list(range(int(lo), int(hi) + 1)) if sep else [int(part)]
            except ValueError:
                raise OptionError(f"--severities {spec!r} is not a list like '1-5' or '1,3,5'") from None
            if sep and int(hi) < int(lo):
                raise OptionError(f"--severities {spec!r}: the range {part!r} is empty")
    else:
        for v in spec:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise OptionError(f"severity {v!r} is not an integer 0-{MAX_SEVERITY}")
            values.append(int(v))
    if not values:
        raise OptionError("no severity given; use e.g. '1-5'")
    bad = [v for v in values if not 0 <= v <= MAX_SEVERITY]
    if bad:
        raise OptionError(f"severity {bad[0]} is outside 0-{MAX_SEVERITY} (0 = no corruption)")
    return tuple(sorted(set(values)))


# --- the corrupted test set ------------------------------------------------------------------------
def corruption_rng(seed: int, name: str, severity: int, chunk: int) -> np.random.Generator:
    """The random stream of chunk ``chunk`` of corruption ``name`` at ``severity``."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode()), int(severity), int(chunk)])


def corrupted_chunk(raw: np.ndarray, name: str, severity: int, chunk: int, *, seed: int = 0,
                    domain: str = DOMAIN, bands: Sequence[str] = BANDS) -> np.ndarray:
    """Chunk ``chunk`` (images ``chunk*CHUNK ...``) of a test set, corrupted as the benchmark does.

    Args:
        raw: (N, B, H, W) raw electrons of the whole test set (memory-mapped is fine).
        name: a corruption name.
        severity: 0-5.
        chunk: index of the chunk of :data:`CHUNK` images.
        seed: the benchmark's seed [default: 0].
        domain: depth of ``raw`` [default: "Y10"].
        bands: the LSST bands of ``raw``'s channels [default: g, r, i].

    Returns:
        (<= CHUNK, B, H, W) float32 corrupted electrons.
    """
    images = np.asarray(raw[chunk * CHUNK:(chunk + 1) * CHUNK], dtype=np.float32)
    return corrupt(images, name, severity, corruption_rng(seed, name, severity, chunk), domain, bands)


# --- corruption error ---------------------------------------------------------------------------------
def _by_corruption(errors: Mapping[Key, float]) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for (name, severity), e in errors.items():
        if severity != 0:
            table.setdefault(name, {})[int(severity)] = float(e)
    return table


def mean_corruption_error(errors: Mapping[Key, float],
                          baseline_errors: Mapping[Key, float]) -> tuple[dict[str, float], float]:
    """ImageNet-C's corruption errors and their mean.

    CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c} over the severities s >= 1 of corruption c
    present in ``errors``; mCE = the unweighted mean of CE_c over the corruptions.

    Args:
        errors: {(corruption, severity): top-1 error in [0, 1]} of the model; severity-0 entries
            are ignored.
        baseline_errors: the same for the baseline; it must hold every (corruption, severity)
            of ``errors``.

    Returns:
        ({corruption: CE_c}, mCE). When the baseline made no error on c, CE_c is 1 if the model
        made none either (as good as the baseline) and ``inf`` otherwise.

    Raises:
        OptionError: a (corruption, severity) of ``errors`` is missing from ``baseline_errors``,
            or no corruption at all.
    """
    model, base = _by_corruption(errors), _by_corruption(baseline_errors)
    if not model:
        raise OptionError("no corruption errors to average")
    ce: dict[str, float] = {}
    for name, by_severity in model.items():
        missing = [s for s in by_severity if s not in base.get(name, {})]
        if missing:
            raise OptionError(f"the baseline has no error for {name} at severity {missing[0]}")
        num = sum(by_severity.values())
        den = sum(base[name][s] for s in by_severity)
        ce[name] = num / den if den > 0 else (1.0 if num == 0 else math.inf)
    return ce, float(np.mean(list(ce.values())))


def relative_mean_corruption_error(errors: Mapping[Key, float], clean_error: float,
                                   baseline_errors: Mapping[Key, float],
                                   baseline_clean_error: float) -> tuple[dict[str, float], float]:
    """ImageNet-C's relative corruption errors: the degradation beyond each model's clean error.

    Relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^b_{s,c} - E^b_clean); relative mCE is
    their mean. Same arguments and conventions as :func:`mean_corruption_error`, plus the clean
    (severity-0) errors of the model and of the baseline.
    """
    shifted = {k: e - clean_error for k, e in errors.items() if k[1] != 0}
    base = {k: e - baseline_clean_error for k, e in baseline_errors.items() if k[1] != 0}
    return mean_corruption_error(shifted, base)


# --- baseline -----------------------------------------------------------------------------------------
def _finished_run(path: Path) -> bool:
    try:
        config = read_run_config(path)
    except DeepAdvError:
        return False
    return (path / TRAINING_DONE).is_file() and kept_model_path(path, config).is_file()


def find_baseline(run: str | Path, config: RunConfig | None = None) -> tuple[Path | None, str]:
    """The default baseline of a run: the regular run of the same model beside it.

    Args:
        run: the run folder.
        config: its config [default: read from ``run``].

    Returns:
        (baseline folder or None, a sentence saying how it was chosen or why there is none).
    """
    run = Path(run)
    config = config if config is not None else read_run_config(run)
    model, method = config.model, config.method
    if method == REFERENCE_METHOD:
        return None, "the run is itself a regular run; pass --baseline to compare it with another run"
    parent = run.resolve().parent
    named = parent / f"{model}_regular"
    candidates = [named] if _is_regular(named, model) else [
        p for p in sorted(parent.iterdir()) if p.is_dir() and p.resolve() != run.resolve() and _is_regular(p, model)]
    if len(candidates) == 1:
        return candidates[0], f"the regular {model} run beside it ({candidates[0].name})"
    if not candidates:
        return None, f"no regular {model} run was found beside the run in {parent}; pass --baseline"
    return None, (f"{len(candidates)} regular {model} runs are beside the run "
                  f"({', '.join(p.name for p in candidates)}); pass --baseline to choose one")


def _is_regular(path: Path, model: str) -> bool:
    if not (path / "config.json").is_file():
        return False
    try:
        config = read_run_config(path)
    except DeepAdvError:  # not a run folder after all
        return False
    return config.model == model and config.method == REFERENCE_METHOD


def _errors_from_summary(summary: Mapping[str, Any]) -> tuple[dict[Key, float], float]:
    errors = {(r["corruption"], int(r["severity"])): 1.0 - float(r["accuracy"]) for r in summary["results"]}
    return errors, 1.0 - float(summary["clean"]["accuracy"])


def _reusable_summary(baseline: Path, settings: Mapping[str, Any], needed: Iterable[Key]) -> dict | None:
    """The baseline's own finished benchmark, if it used the same data, seed, tables and images."""
    path = robustness_dir(baseline) / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        summary = read_json(path)
        theirs = summary["settings"]
        same = (summary.get("kind") == KIND and theirs["seed"] == settings["seed"]
                and theirs["table_fingerprint"] == settings["table_fingerprint"]
                and theirs["chunk"] == settings["chunk"] and theirs["data"] == settings["data"]
                and summary["n"] == settings["n"])
        have = {(r["corruption"], int(r["severity"])) for r in summary["results"]}
    except (DeepAdvError, KeyError, TypeError, ValueError, AttributeError):  # older or damaged: evaluate afresh
        return None
    return summary if same and set(needed) <= have else None


# --- the stage ------------------------------------------------------------------------------------------
def _metrics(logits: np.ndarray, labels: np.ndarray, clean_pred: np.ndarray) -> dict[str, Any]:
    """Accuracy, flip rate against ``clean_pred``, mean p(true) and n of (N, C) logits."""
    p = softmax(logits)
    pred = logits.argmax(axis=1)
    return {
        "accuracy": float(np.mean(pred == labels)),
        "flip_rate": float(np.mean(pred != clean_pred)),
        "mean_p_true": float(np.mean(p[np.arange(len(labels)), labels])),
        "n": len(labels),
    }


def robustness_run(run: str | Path, data: str | Path | None = None, *, corruptions: str | Sequence[str] = "all",
                   severities: str | Sequence[int] = SEVERITIES, seed: int = 0, baseline: str | Path | None = None,
                   device: str = "auto", batch_size: int = 256, overwrite: bool = False,
                   figures: bool = True) -> dict[str, Any]:
    """Run the corruption benchmark on a run's kept checkpoint; write ``RUN/robustness/``.

    Args:
        run: a finished run folder (``config.json``, ``checkpoints/best.pt``, ``training.json``).
        data: dataset folder [default: the one in the run's ``config.json``].
        corruptions: ``"all"``, ``"a,b"`` or a sequence of names of
            :data:`~deepadversaries.corruptions.CORRUPTIONS` [default: "all"].
        severities: ``"1-5"``, ``"1,3,5"`` or a sequence of ints in 0-5 [default: 1-5].
        seed: seed of the corruptions (the same seed gives every run the same images) [default: 0].
        baseline: the run whose errors normalise CE and mCE [default: :func:`find_baseline`].
        device: "auto", "cpu" or "cuda" [default: "auto"].
        batch_size: images per forward pass [default: 256].
        overwrite: replace a finished result [default: False].
        figures: also write ``accuracy.png`` and ``corruption_grid.png`` [default: True].

    Returns:
        The summary (also ``summary.json``): ``clean``, ``results`` (rows of the CSV),
        ``corruption_errors`` and ``mce`` (None without a baseline), ``relative_corruption_errors``,
        ``relative_mce``, ``mean_errors`` and ``mean_error`` (unnormalised), ``baseline``,
        ``settings``, ``timing``.

    Raises:
        OptionError: unknown corruption, severity outside 0-5, batch size < 1, negative seed.
        FileError: not a finished run, no checkpoint, a finished result without ``overwrite``, an
            unusable baseline given with ``baseline``.
    """
    started = time.perf_counter()
    names, levels = _check_options(corruptions, severities, batch_size, seed)
    run = Path(run)
    config = _check_run(run)
    baseline_path, chosen_by = _choose_baseline(run, config, baseline)
    out_dir = robustness_dir(run)
    summary_path = out_dir / SUMMARY_NAME
    if summary_path.is_file() and not overwrite:
        raise file_error(summary_path, "a finished robustness result exists; pass --overwrite to replace it")
    dataset, bands = _checked_dataset(config, data)
    torch_device = resolve_device(device)
    model = load_model(run, device=torch_device)
    check_input_shape(model, dataset.image_shape, dataset.path / image_file(DOMAIN, "test"))
    settings = _settings(names, levels, seed, dataset, bands, batch_size, torch_device)
    needed = [(c, s) for c in names for s in levels]
    reused = _reusable_summary(baseline_path, settings, needed) if baseline_path is not None else None
    models = _benchmark_models(model, baseline_path if reused is None else None, torch_device)
    bench = _Benchmark(dataset, models, seed=seed, batch_size=batch_size, device=torch_device)
    with OutputLock(out_dir, "robustness"):
        _retire_finished(summary_path, overwrite)
        rows, baseline_rows = bench.table(needed)
        write_csv(out_dir / CSV_NAME, rows, FIELDS)
        summary = _summarise(run, config, rows, settings, baseline_path, chosen_by, reused, baseline_rows)
        summary["timing"] = _timing(bench.timing, started)
        if figures:
            _write_figures(out_dir, summary, config, dataset, names, seed)
        write_json(summary_path, summary)
    return summary


def _check_options(corruptions: str | Sequence[str], severities: str | Sequence[int], batch_size: int,
                   seed: int) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The corruption names and the severities other than 0, after checking the batch size and seed."""
    names = parse_corruptions(corruptions)
    levels = tuple(s for s in parse_severities(severities) if s != 0)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"--batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"--seed must be a non-negative integer, got {seed!r}")
    return names, levels


def _checked_dataset(config: RunConfig, data: str | Path | None) -> tuple[GalaxyDataset, tuple[str, ...]]:
    """The dataset (``data`` or the run's) and its bands, checked to suit the corruptions and the run's classes."""
    dataset = load_dataset(data if data is not None else config.data)
    bands = check_dataset(dataset)
    check_same_classes(config, dataset.classes, dataset.path)
    return dataset, bands


def _settings(names: Sequence[str], levels: Sequence[int], seed: int, dataset: GalaxyDataset,
              bands: tuple[str, ...], batch_size: int, device: Any) -> dict[str, Any]:
    """The ``settings`` block of the summary: what decides the corrupted images and how they were evaluated."""
    settings = {
        "corruptions": list(names), "severities": list(levels), "seed": int(seed), "domain": DOMAIN,
        "chunk": CHUNK, "table_fingerprint": table_fingerprint(), "data": str(dataset.path.resolve()),
        "n": len(dataset.labels("test")), "batch_size": batch_size, "device": str(device),
    }
    if bands != BANDS:
        settings["bands"] = list(bands)
    return settings


def _benchmark_models(model: Any, evaluate_baseline: Path | None, device: Any) -> dict[str, Any]:
    """The run's model and the baseline run's to evaluate here (None: none, or its results are reused),
    optimised for inference."""
    models = {"run": optimized_for_inference(model, channels_last=True)}
    if evaluate_baseline is not None:
        models["baseline"] = optimized_for_inference(load_model(evaluate_baseline, device=device),
                                                     channels_last=True)
    return models


def _timing(timing: Mapping[str, float], started: float) -> dict[str, float]:
    """Seconds corrupting and evaluating and the wall time since ``started`` (perf_counter), to 1 ms."""
    return {k: round(v, 3) for k, v in {**timing, "wall_time_s": time.perf_counter() - started}.items()}


def _retire_finished(summary_path: Path, overwrite: bool) -> None:
    """Under the lock: refuse a finished result without ``overwrite``, else remove its summary first."""
    if summary_path.is_file():
        if not overwrite:
            raise file_error(summary_path, "a finished robustness result exists; pass --overwrite to replace it")
        summary_path.unlink()  # the old result stops being "finished" before anything is replaced


def check_dataset(dataset: GalaxyDataset) -> tuple[str, ...]:
    """The dataset's bands, if the corruptions can act on it: raw electrons (not stored already
    normalised) in LSST bands; else a one-line :class:`FileError`."""
    if dataset.raw_is_model_input:
        raise file_error(dataset.path / "dataset.json", "holds images already normalised (--stretch none): the "
                                                        "corruptions act on raw electrons before the normalisation; "
                                                        "import the raw electrons (--stretch paper, asinh:Q or "
                                                        "zscore) to run robustness")
    try:
        return check_bands(dataset.bands)
    except OptionError as exc:
        raise file_error(dataset.path / "dataset.json", str(exc)) from None


def why_not_applicable(data: str | Path) -> str | None:
    """Why the benchmark cannot run on a dataset folder (stored already normalised, or bands the
    corruption table does not model), or None when it can: for pipelines that skip it and say why."""
    try:
        check_dataset(load_dataset(data))
    except DeepAdvError as exc:
        return str(exc)
    return None


def _check_run(run: Path) -> RunConfig:
    """The run's config; a clear error when it has no checkpoint or no finished training."""
    config = read_run_config(run)
    if not kept_model_path(run, config).is_file():
        raise file_error(kept_model_path(run, config), "checkpoint not found; train the run first ('deepadv train')")
    if not (run / TRAINING_DONE).is_file():
        raise file_error(run, f"the training has not finished (no {TRAINING_DONE}); run 'deepadv train' first")
    return config


def _choose_baseline(run: Path, config: RunConfig, baseline: str | Path | None) -> tuple[Path | None, str]:
    """The run whose errors normalise CE (the user's, or :func:`find_baseline`'s), and why."""
    if baseline is not None:
        path = Path(baseline)
        base_config = read_run_config(path)
        if not kept_model_path(path, base_config).is_file():
            raise file_error(kept_model_path(path, base_config), "checkpoint of the --baseline run not found")
        return path, "--baseline"
    path, chosen_by = find_baseline(run, config)
    if path is not None and not _finished_run(path):
        return None, f"{chosen_by} has no finished training, so there is no baseline"
    return path, chosen_by


class _Benchmark:
    """Evaluates one or two models (the run, the baseline) on the corrupted Y10 test set, chunk by chunk."""

    def __init__(self, dataset: GalaxyDataset, models: dict[str, Any], *, seed: int, batch_size: int,
                 device: Any) -> None:
        self.raw = dataset.images(DOMAIN, "test", stretched=False)
        self.labels = dataset.labels("test")
        self.dataset = dataset
        self.bands = check_bands(dataset.bands)
        self.models, self.seed, self.batch_size, self.device = models, seed, batch_size, device
        self.n_chunks = max(1, math.ceil(len(self.labels) / CHUNK))
        self.timing = {"corrupt_s": 0.0, "evaluate_s": 0.0}

    def logits(self, name: str, severity: int) -> dict[str, np.ndarray]:
        """Logits of every model on the test set under one corruption (severity 0: clean)."""
        out: dict[str, list[np.ndarray]] = {k: [] for k in self.models}
        for k in range(self.n_chunks):
            t0 = time.perf_counter()
            electrons = (np.asarray(self.raw[k * CHUNK:(k + 1) * CHUNK]) if severity == 0
                         else corrupted_chunk(self.raw, name, severity, k, seed=self.seed, bands=self.bands))
            images = self.dataset.model_input(electrons, DOMAIN)
            t1 = time.perf_counter()
            for key, m in self.models.items():
                out[key].append(forward_batches(m, images, batch_size=self.batch_size, device=self.device).logits)
            self.timing["corrupt_s"] += t1 - t0
            self.timing["evaluate_s"] += time.perf_counter() - t1
        return {k: np.concatenate(v) for k, v in out.items()}

    def table(self, needed: list[Key]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows (clean first, then every (corruption, severity)) for the run and, when evaluated, the baseline."""
        clean = self.logits(CLEAN, 0)
        clean_pred = {k: v.argmax(axis=1) for k, v in clean.items()}
        rows = {k: [{"corruption": CLEAN, "severity": 0, **_metrics(v, self.labels, clean_pred[k])}]
                for k, v in clean.items()}
        bar = make_progress()
        task = bar.add_task("robustness", total=len(needed))
        with bar:
            for name, severity in needed:
                bar.update(task, description=f"{name} {severity}")
                for key, logits in self.logits(name, severity).items():
                    rows[key].append({"corruption": name, "severity": severity,
                                      **_metrics(logits, self.labels, clean_pred[key])})
                bar.advance(task)
        return rows["run"], rows.get("baseline", [])


def _summarise(run: Path, config: RunConfig, rows: list[dict[str, Any]], settings: Mapping[str, Any],
               baseline_path: Path | None, chosen_by: str, reused: Mapping[str, Any] | None,
               baseline_rows: list[dict[str, Any]]) -> dict[str, Any]:
    clean = rows[0]
    corrupted = rows[1:]
    errors = {(r["corruption"], r["severity"]): 1.0 - r["accuracy"] for r in corrupted}
    by_name: dict[str, list[float]] = {}
    for (name, _), e in errors.items():
        by_name.setdefault(name, []).append(e)
    mean_errors = {name: float(np.mean(v)) for name, v in by_name.items()}
    summary: dict[str, Any] = {
        "kind": KIND, "version": VERSION, "run": str(run), "model": config.model, "method": config.method,
        "domain": DOMAIN, "n": clean["n"], "settings": dict(settings),
        "clean": {k: clean[k] for k in ("accuracy", "mean_p_true")} | {"error": 1.0 - clean["accuracy"]},
        "results": [dict(r) for r in corrupted],
        "mean_errors": mean_errors,
        "mean_error": float(np.mean(list(mean_errors.values()))) if mean_errors else None,
        "definition": ("CE_c = sum_s E_sc(run) / sum_s E_sc(baseline), E = 1 - accuracy, over the severities "
                       "evaluated; mCE = mean over corruptions (ImageNet-C, Hendrycks & Dietterich 2019); the "
                       "relative CE subtracts each model's clean error from every E first"),
    }
    base_block: dict[str, Any] = {"run": None, "chosen_by": chosen_by}
    summary.update({"corruption_errors": None, "mce": None, "relative_corruption_errors": None,
                    "relative_mce": None})
    if baseline_path is not None and errors:
        if reused is not None:
            base_errors, base_clean = _errors_from_summary(reused)
            source = f"its own benchmark ({robustness_dir(baseline_path) / SUMMARY_NAME})"
        else:
            base_errors = {(r["corruption"], r["severity"]): 1.0 - r["accuracy"] for r in baseline_rows[1:]}
            base_clean = 1.0 - baseline_rows[0]["accuracy"]
            source = "evaluated here on the same corrupted images"
        base_errors = {k: v for k, v in base_errors.items() if k in errors}
        ce, mce = mean_corruption_error(errors, base_errors)
        rce, rmce = relative_mean_corruption_error(errors, summary["clean"]["error"], base_errors, base_clean)
        summary.update({"corruption_errors": ce, "mce": mce, "relative_corruption_errors": rce, "relative_mce": rmce})
        base_block = {
            "run": str(baseline_path), "chosen_by": chosen_by, "errors_from": source,
            "clean_error": base_clean,
            "errors": [{"corruption": c, "severity": s, "error": e} for (c, s), e in sorted(
                base_errors.items(), key=lambda kv: (list(CORRUPTIONS).index(kv[0][0]), kv[0][1]))],
        }
    summary["baseline"] = base_block
    return summary


def baseline_results(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The baseline's accuracies recorded in a summary, shaped like a summary (``clean``,
    ``results``) for :func:`deepadversaries.plots.robustness.plot_accuracy_curves`; None
    without a baseline."""
    base = summary.get("baseline") or {}
    if base.get("run") is None or "errors" not in base:
        return None
    return {
        "clean": {"accuracy": 1.0 - float(base["clean_error"])},
        "results": [{"corruption": r["corruption"], "severity": int(r["severity"]), "accuracy": 1.0 - float(r["error"])}
                    for r in base["errors"]],
    }


def _write_figures(out_dir: Path, summary: Mapping[str, Any], config: RunConfig, dataset: GalaxyDataset,
                   names: Sequence[str], seed: int) -> None:
    label = f"{config.model} {config.method}"
    curves = {label: summary}
    base = baseline_results(summary)
    if base is not None:
        curves = {f"baseline ({Path(summary['baseline']['run']).name})": base, **curves}
    plot_accuracy_curves(curves, out_dir / ACCURACY_FIGURE)
    image = np.asarray(dataset.images(DOMAIN, "test", stretched=False)[0])
    true = dataset.classes[int(dataset.labels("test")[0])]
    lo, hi, to_input = grid_normalisation(dataset, DOMAIN)
    plot_corruption_grid(image, lo, hi, out_dir / GRID_FIGURE, corruptions=names, seed=seed, bands=dataset.bands,
                         to_input=to_input, title=f"test image 0 ({true}) under every corruption, as {label} sees it")


def grid_normalisation(dataset: GalaxyDataset, domain: str) -> tuple[float | None, float | None, Any]:
    """How the corruption grid normalises a domain's images: the paper stretch's (lo, hi) and no
    function, or (None, None) and the dataset's own normalisation (``dataset.model_input``)."""
    if dataset.normalisation_kind == "paper":
        lo, hi = dataset.stretch(domain)
        return lo, hi, None
    return None, None, functools.partial(dataset.model_input, domain=domain)
