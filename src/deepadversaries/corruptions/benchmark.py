"""The survey-corruption benchmark of a trained run: ``deepadv robustness``.

Every chosen corruption of the registry (:mod:`deepadversaries.corruptions.registry`, applied by
:mod:`deepadversaries.corruptions.suite`) at every chosen severity is applied to the
raw test images of one domain (Y10, the default, or Y1), which are then normalised as the dataset
says (the paper's stretch with that domain's constants, or an imported dataset's asinh/zscore) and
classified by the run's kept model. The corruptions model LSST co-adds in electrons, so the dataset
must hold raw electrons (not ``--stretch none``) in LSST bands (g, r, i or a subset), and its noise
must look like the survey model's (:func:`check_survey_noise`, on the border pixels); anything else
is refused with one line.

Per (corruption, severity): accuracy, flip rate (prediction differs from the clean prediction), mean
p(true class), and what the model's input saw: the mean |Δ model input| against the clean input, the
fraction of pixels changed and the fraction at the stretch's clip limits (paper stretch only). Against
a baseline run (by default the regular run of the same model beside a non-regular run), the
corruption error of :mod:`deepadversaries.corruptions.error`: ΔE in points with a paired bootstrap
interval for every corruption, CE / relative CE and their means only where the baseline is
significantly degraded (one-sided exact sign test), the rest named "not degraded".

Files, in :func:`robustness_dir` (``RUN/robustness`` for Y10 with the Rubin tables and dithered
defects; ``RUN/robustness_Y1``, ``..._stress``, ``..._masked``, ``..._no-dither`` for the other
domain, table set and placements, in that order): ``robustness.csv`` (one row per (corruption,
severity), the clean row first as corruption "none", severity 0), ``outcomes.npz`` (per test image
and row: wrong or right, for pairing with another run), ``accuracy.png``, ``corruption_grid.png``
(test image 0 under every corruption and severity: the very images the model was scored on) and
``summary.json``, written last: it marks a finished result.

Determinism and pairing: the images are corrupted in chunks of :data:`CHUNK` test images (in
test-set order), chunk k of corruption c with ``numpy.random.default_rng([seed, crc32(c), k])``
(plus crc32 of the domain for Y1) for every severity: the draws are nested (higher severities keep
the positions of lower ones), and the corrupted images depend only on the dataset, the seed, the
domain, the options and the tables, never on the model, the batch size or the device. The stage
corrupts a chunk at all its severities together and makes the draws once (:func:`corrupted_chunks`:
the same images, bit for bit, as one fresh stream per severity), in :func:`corrupting_threads`
threads ahead of the evaluation. Models are
evaluated with their BatchNorm folded into the convolutions, NHWC
(:func:`deepadversaries.attacks.evaluators.optimized_for_inference`). ``timing`` in the summary gives the seconds
spent corrupting (with the stretch and the input statistics; summed over the corrupting threads of
:func:`corrupting_threads`, so it can exceed the wall time) and evaluating, and the wall time.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import itertools
import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepadversaries import BANDS, REFERENCE_METHOD
from deepadversaries.attacks.evaluators import optimized_for_inference
from deepadversaries.corruptions.draws import ReplayGenerator
from deepadversaries.corruptions.error import CLEAN, corruption_errors, pool_corruptions_over_seeds
from deepadversaries.corruptions.registry import CORRUPTIONS, table_fingerprint
from deepadversaries.corruptions.survey_numbers import SurveyNumbers, read_survey
from deepadversaries.corruptions.suite import (
    DEFAULT_OPTIONS, MAX_SEVERITY, SEVERITIES, CorruptionOptions, band_sky, check_bands, corrupt, shared_spectra,
)
from deepadversaries.data.dataset import GalaxyDataset, image_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import DeepAdvError, OptionError, check_choice, file_error
from deepadversaries.evaluation.inference import forward_batches, softmax
from deepadversaries.io import OutputLock, read_json, write_csv, write_json, write_npz
from deepadversaries.models.networks import check_input_shape, load_model
from deepadversaries.plots.robustness import plot_accuracy_curves, plot_corruption_grid
from deepadversaries.progress import info, make_progress
from deepadversaries.models.runs import (
    TRAINING_DONE, RunConfig, check_same_classes, kept_model_path, read_run_config,
)

__all__ = ["robustness_run", "robustness_dir", "pool_corruptions_over_seeds", "corrupted_chunk", "corrupted_chunks", "check_survey_noise"]

KIND = "deepadv-robustness"
VERSION = 2
FOLDER = "robustness"
CSV_NAME = "robustness.csv"
OUTCOMES_NAME = "outcomes.npz"
SUMMARY_NAME = "summary.json"
ACCURACY_FIGURE = "accuracy.png"
GRID_FIGURE = "corruption_grid.png"
#: test images per corruption draw; part of the determinism contract (changing it changes the images)
CHUNK = 256
#: images per forward pass: on the 2-core CPU one torch thread evaluates 704 images in 0.86 s with 64
#: and 1.36 s with 256 (the logits are bit-identical: batching does not change them here)
BATCH_SIZE = 64
#: the default domain whose test images are corrupted
DOMAIN = "Y10"
DOMAINS = ("Y10", "Y1")
FIELDS = ("corruption", "severity", "accuracy", "flip_rate", "mean_p_true", "n", "mean_abs_delta_input",
          "frac_pixels_changed", "frac_clipped")
#: border-noise check: the measured border sigma over the survey's sqrt(B) must lie in this range
NOISE_RATIO_RANGE = (0.7, 1.4)
NOISE_CHECKS = ("refuse", "warn", "off")
#: width of the border frame whose pixels measure the noise, pixels
BORDER_PIXELS = 4
#: test sets up to this size keep their clean model input in memory for the input statistics
CLEAN_CACHE_IMAGES = 4096

Key = tuple[str, int]


def robustness_dir(run: str | Path, domain: str = DOMAIN, options: CorruptionOptions = DEFAULT_OPTIONS) -> Path:
    """The benchmark's output folder of a run: ``RUN/robustness`` for Y10, Rubin tables, dithered defects;
    ``_Y1``, ``_stress`` and ``_masked`` / ``_no-dither`` appended (in that order) otherwise."""
    name = FOLDER + ("" if domain == DOMAIN else f"_{domain}") + ("_stress" if options.tables == "stress" else "")
    name += "" if options.defects == "dithered" else f"_{options.defects}"
    return Path(run) / name


# --- option parsing ------------------------------------------------------------------------------
def parse_corruptions(spec: str | Iterable[str]) -> tuple[str, ...]:
    """Corruption names from ``"all"``, ``"a,b"`` or a sequence of names, in the registry's order
    (:data:`deepadversaries.corruptions.registry.CORRUPTIONS`, run-time registrations included).

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
def corruption_rng(seed: int, name: str, chunk: int, domain: str = DOMAIN) -> np.random.Generator:
    """The random stream of chunk ``chunk`` of corruption ``name``: the same for every severity (nested
    draws: higher severities keep the lower ones' positions); Y10 keeps the first version's three-number
    key, another domain adds its name's crc32."""
    return np.random.default_rng(_rng_key(seed, name, chunk, domain))


def _rng_key(seed: int, name: str, chunk: int, domain: str) -> list[int]:
    key = [int(seed), zlib.crc32(name.encode()), int(chunk)]
    if domain != DOMAIN:
        key.append(zlib.crc32(domain.encode()))
    return key


def corrupted_chunk(raw: np.ndarray, name: str, severity: int, chunk: int, *, seed: int = 0,
                    domain: str = DOMAIN, bands: Sequence[str] = BANDS,
                    options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """Chunk ``chunk`` (images ``chunk*CHUNK ...``) of a test set, corrupted as the benchmark does.

    Args:
        raw: (N, B, H, W) raw electrons of the whole test set (memory-mapped is fine).
        name: a corruption name.
        severity: 0-5.
        chunk: index of the chunk of :data:`CHUNK` images.
        seed: the benchmark's seed [default: 0].
        domain: depth of ``raw`` [default: "Y10"].
        bands: the LSST bands of ``raw``'s channels [default: g, r, i].
        options: table set and defect placement [default: Rubin tables, dithered defects].

    Returns:
        (<= CHUNK, B, H, W) float32 corrupted electrons.
    """
    images = np.asarray(raw[chunk * CHUNK:(chunk + 1) * CHUNK], dtype=np.float32)
    return corrupt(images, name, severity, corruption_rng(seed, name, chunk, domain), domain, bands, options)


def corrupted_chunks(raw: np.ndarray, name: str, severities: Sequence[int], chunk: int, *, seed: int = 0,
                     domain: str = DOMAIN, bands: Sequence[str] = BANDS,
                     options: CorruptionOptions = DEFAULT_OPTIONS) -> list[np.ndarray]:
    """Chunk ``chunk`` under one corruption at several severities: for each, what
    :func:`corrupted_chunk` returns, bit for bit, with the random draws made once and replayed for
    the later severities (:class:`~deepadversaries.corruptions.draws.ReplayGenerator`) and the
    FFT convolutions' spectra shared (:func:`~deepadversaries.corruptions.suite.shared_spectra`).

    Args:
        raw: (N, B, H, W) raw electrons of the whole test set (memory-mapped is fine).
        name: a corruption name.
        severities: severities 0-5, in any order.
        chunk: index of the chunk of :data:`CHUNK` images.
        seed, domain, bands, options: as for :func:`corrupted_chunk`.

    Returns:
        One (<= CHUNK, B, H, W) float32 array per severity, in the order of ``severities``.
    """
    images = np.asarray(raw[chunk * CHUNK:(chunk + 1) * CHUNK], dtype=np.float32)
    key = _rng_key(seed, name, chunk, domain)
    first: ReplayGenerator | None = None
    out = []
    with shared_spectra():  # the same planes at every severity: each spectrum computed once
        for severity in severities:
            rng = ReplayGenerator(key, None if first is None else first.draws)
            out.append(corrupt(images, name, severity, rng, domain, bands, options))
            if first is None and severity != 0:
                first = rng
    return out


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


def _reusable_outcomes(baseline: Path, domain: str, options: CorruptionOptions, settings: Mapping[str, Any],
                       needed: Iterable[Key]) -> tuple[dict[Key, np.ndarray], Path] | None:
    """The baseline's own finished benchmark (its per-image outcomes), if it used the same data, seed,
    domain, options, tables and chunking and holds every needed row; else None."""
    folder = robustness_dir(baseline, domain, options)
    path = folder / SUMMARY_NAME
    if not path.is_file() or not (folder / OUTCOMES_NAME).is_file():
        return None
    try:
        summary = read_json(path)
        theirs = summary["settings"]
        same = (summary.get("kind") == KIND and summary.get("version") == VERSION
                and all(theirs.get(k) == settings[k] for k in
                        ("seed", "table_fingerprint", "chunk", "data", "n", "domain", "tables", "defects"))
                and theirs.get("survey") == settings.get("survey"))
        outcomes = _read_outcomes(folder / OUTCOMES_NAME)
    except (DeepAdvError, KeyError, TypeError, ValueError, AttributeError, OSError):  # older or damaged
        return None
    if not same or not set(needed) | {(CLEAN, 0)} <= set(outcomes):
        return None
    return outcomes, path


def _read_outcomes(path: Path) -> dict[Key, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        keys = [str(k) for k in npz["keys"]]
        wrong = np.asarray(npz["wrong"], dtype=bool)
    out = {}
    for key, row in zip(keys, wrong):
        name, _, severity = key.rpartition(":")
        out[(name, int(severity))] = row
    return out


# --- imported data: does the noise look like the survey's? ------------------------------------------------
def check_survey_noise(dataset: GalaxyDataset, domain: str, bands: Sequence[str], mode: str = "refuse",
                       max_images: int = 256, survey: SurveyNumbers | None = None) -> dict[str, Any]:
    """Compare the noise of the test images' border pixels with the survey model's sqrt(B) (or, with
    ``survey``, the user's sqrt(B + N read_noise^2)).

    The corruptions add LSST sky, exposure and PSF of ``domain``; on images of another survey they
    would be the wrong size. sigma per band is 1.4826 x the median absolute deviation of the outer
    :data:`BORDER_PIXELS`-pixel frame of up to ``max_images`` test images (galaxies are centred, so
    the frame is sky); the ratio sigma / sqrt(B) must lie in :data:`NOISE_RATIO_RANGE`.

    Args:
        dataset: the dataset.
        domain: the domain whose test images are corrupted.
        bands: the dataset's LSST bands.
        mode: "refuse" (raise a one-line :class:`FileError`), "warn" (log and go on) or "off" [default: "refuse"].
        max_images: images measured [default: 256].
        survey: the user's survey numbers (``--survey``) [default: None: the LSST model at ``domain``'s depth].

    Returns:
        {"ratios": {band: sigma / expected sigma}, "ok": bool, "mode": mode}, plus "survey": the file with ``survey``.
    """
    check_choice(mode, NOISE_CHECKS, "noise check")
    if mode == "off":
        return {"ratios": None, "ok": None, "mode": mode}
    raw = np.asarray(dataset.images(domain, "test", stretched=False)[:max_images], dtype=np.float64)
    frame = np.ones(raw.shape[-2:], dtype=bool)
    frame[BORDER_PIXELS:-BORDER_PIXELS, BORDER_PIXELS:-BORDER_PIXELS] = False
    variance = survey.noise_variance(bands) if survey is not None else band_sky(domain, bands)
    ratios = {}
    for b, band in enumerate(bands):
        pixels = raw[:, b][:, frame].ravel()
        sigma = 1.4826 * float(np.median(np.abs(pixels - np.median(pixels))))
        ratios[band] = sigma / math.sqrt(variance[b])
    lo, hi = NOISE_RATIO_RANGE
    ok = all(lo <= r <= hi for r in ratios.values())
    model = "LSST" if survey is None else survey.source
    if not ok:
        text = ", ".join(f"{b} {r:.2f}" for b, r in ratios.items())
        if survey is None:
            message = (f"the border-pixel noise of the {domain} test images is {text} times the LSST {domain} survey "
                       f"model's sqrt(sky) (expected {lo}-{hi}): the corruptions would add LSST sky, exposure and "
                       "PSF of another size than your survey's; give your survey's sky, exposure and zero point per "
                       "band with --survey FILE.json (docs/robustness.md), or pass --noise-check warn")
        else:
            message = (f"the border-pixel noise of the {domain} test images is {text} times the sqrt(sky + visits x "
                       f"read noise^2) of the survey file {survey.source} (expected {lo}-{hi}): check its "
                       "sky_e_per_pixel, exposure_s and read_noise_e, or pass --noise-check warn")
        if mode == "refuse":
            raise file_error(dataset.path / image_file(domain, "test"), message)
        info(f"warning: {message}")
    result = {"ratios": ratios, "ok": ok, "mode": mode}
    if survey is not None:  # the LSST default adds no key: its summaries stay as they were
        result["survey"] = model
    return result


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
                   domain: str = DOMAIN, stress: bool = False, defects: str = "dithered",
                   noise_check: str = "refuse", device: str = "auto", batch_size: int = BATCH_SIZE, overwrite: bool = False,
                   figures: bool = True, survey: str | Path | None = None) -> dict[str, Any]:
    """Run the corruption benchmark on a run's kept checkpoint; write :func:`robustness_dir`.

    Args:
        run: a finished run folder (``config.json``, ``checkpoints/best.pt``, ``training.json``).
        data: dataset folder [default: the one in the run's ``config.json``].
        corruptions: ``"all"``, ``"a,b"`` or a sequence of names of
            :data:`~deepadversaries.corruptions.registry.CORRUPTIONS` [default: "all"].
        severities: ``"1-5"``, ``"1,3,5"`` or a sequence of ints in 0-5 [default: 1-5].
        seed: seed of the corruptions; the same seed gives every run the same images [default: 0].
        baseline: run whose per-image outcomes give the corruption errors [default: :func:`find_baseline`].
        domain: the test images to corrupt, "Y10", "Y1" or "both" (Y1, then Y10; returns Y10's summary with
            ``other_domains`` naming Y1's summary file) [default: "Y10"].
        stress: use the stress table set (the first version's strongest levels) [default: False: Rubin's].
        defects: detector-defect placement, "dithered", "masked" or "no-dither" [default: "dithered"].
        noise_check: imported data whose border noise is not the survey's: "refuse", "warn" or "off"
            [default: "refuse"].
        device: "auto", "cpu" or "cuda" [default: "auto"].
        batch_size: images per forward pass [default: :data:`BATCH_SIZE`, 64].
        overwrite: replace a finished result [default: False].
        figures: draw accuracy.png and corruption_grid.png [default: True].
        survey: a survey file (JSON, :mod:`deepadversaries.corruptions.survey_numbers`): the sky, exposure
            and zero point per band of the co-add corrupted, in place of the LSST model's; recorded in the
            summary's settings; one domain only [default: None, LSST's].

    Returns:
        The summary written to ``summary.json``.

    Raises:
        OptionError: bad options. FileError: no checkpoint, unfinished training, an unsuitable dataset or
            noise, a finished result without ``overwrite``, an unusable baseline.
    """
    check_choice(domain, (*DOMAINS, "both"), "domain")
    if domain == "both":
        return _both_domains(run, data, corruptions=corruptions, severities=severities, seed=seed, baseline=baseline,
                             stress=stress, defects=defects, noise_check=noise_check, device=device,
                             batch_size=batch_size, overwrite=overwrite, figures=figures, survey=survey)
    started = time.perf_counter()
    job = _prepare(Path(run), data, corruptions=corruptions, severities=severities, seed=seed, baseline=baseline,
                   stress=stress, defects=defects, noise_check=noise_check, device=device, batch_size=batch_size,
                   overwrite=overwrite, survey=survey, domain=domain)
    with OutputLock(job.out_dir, "robustness"):
        _retire_finished(job.out_dir / SUMMARY_NAME, overwrite)
        summary = _score_and_write(job, figures, started)
    return summary


def _both_domains(run: str | Path, data: str | Path | None, *, survey: str | Path | None,
                  **kwargs: Any) -> dict[str, Any]:
    """:func:`robustness_run` on Y1, then Y10 (Y10's summary, written last, marks the pair finished)."""
    if survey is not None:
        raise OptionError("--survey describes one co-add depth: run --domain Y10 or --domain Y1 with it, not both")
    y1 = robustness_run(run, data, domain="Y1", **kwargs)
    summary = robustness_run(run, data, domain="Y10", **kwargs)
    options = CorruptionOptions("stress" if kwargs["stress"] else "rubin", kwargs["defects"])
    return summary | {"other_domains": {"Y1": str(robustness_dir(run, "Y1", options) / SUMMARY_NAME)},
                      "y1_mce": y1["mce"]}


@dataclass
class _Job:
    """A checked robustness run, ready to score: where it writes, what it corrupts and with which models."""

    run: Path
    config: RunConfig
    out_dir: Path
    baseline_path: Path | None
    chosen_by: str
    dataset: GalaxyDataset
    names: tuple[str, ...]
    options: CorruptionOptions
    settings: dict[str, Any]
    needed: list[Key]
    reused: tuple[dict[Key, np.ndarray], str] | None
    bench: _Benchmark
    noise: dict[str, Any]
    seed: int


def _prepare(run: Path, data: str | Path | None, *, corruptions: str | Sequence[str], severities: str | Sequence[int],
             seed: int, baseline: str | Path | None, stress: bool, defects: str, noise_check: str, device: str,
             batch_size: int, overwrite: bool, survey: str | Path | None, domain: str) -> _Job:
    """Check every option, the run, its baseline and the dataset, load the models: nothing is written."""
    names, levels = _check_options(corruptions, severities, batch_size, seed)
    options = CorruptionOptions("stress" if stress else "rubin", defects)
    config = _check_run(run)
    baseline_path, chosen_by = _choose_baseline(run, config, baseline)
    out_dir = robustness_dir(run, domain, options)
    if (out_dir / SUMMARY_NAME).is_file() and not overwrite:
        raise file_error(out_dir / SUMMARY_NAME, "a finished robustness result exists; pass --overwrite to replace it")
    dataset, bands = _checked_dataset(config, data)
    if survey is not None:
        options = CorruptionOptions(options.tables, options.defects, read_survey(survey, bands))
    noise = check_survey_noise(dataset, domain, bands, noise_check, survey=options.survey)
    torch_device = resolve_device(device)
    model = load_model(run, device=torch_device)
    check_input_shape(model, dataset.image_shape, dataset.path / image_file(domain, "test"))
    settings = _settings(names, levels, seed, dataset, bands, batch_size, torch_device, domain, options)
    needed = [(c, s) for c in names for s in levels]
    reused = (_reusable_outcomes(baseline_path, domain, options, settings, needed)
              if baseline_path is not None else None)
    models = _benchmark_models(model, baseline_path if reused is None else None, torch_device)
    bench = _Benchmark(dataset, models, seed=seed, batch_size=batch_size, device=torch_device, domain=domain,
                       options=options)
    return _Job(run, config, out_dir, baseline_path, chosen_by, dataset, names, options, settings, needed, reused,
                bench, noise, seed)


def _score_and_write(job: _Job, figures: bool, started: float) -> dict[str, Any]:
    """Score every (corruption, severity), write the table, the outcomes, the figures and (last) the summary."""
    rows, wrong = job.bench.table(job.needed)
    write_csv(job.out_dir / CSV_NAME, rows, FIELDS)
    keys = [(CLEAN, 0)] + job.needed
    write_npz(job.out_dir / OUTCOMES_NAME, keys=np.array([f"{c}:{s}" for c, s in keys]),
              wrong=np.stack([wrong["run"][k] for k in keys]))
    if job.reused is not None:
        base_wrong, source = job.reused[0], f"its own benchmark ({job.reused[1]})"
    elif "baseline" in wrong:
        base_wrong, source = wrong["baseline"], "evaluated here on the same corrupted images"
    else:
        base_wrong, source = None, None
    summary = _summarise(job.run, job.config, rows, job.settings, job.baseline_path, job.chosen_by, wrong["run"],
                         base_wrong, source, job.seed)
    summary["noise_check"] = job.noise
    summary["timing"] = _timing(job.bench.timing, started)
    if figures:
        _write_figures(job.out_dir, summary, job.config, job.dataset, job.names, job.bench.panels, job.options)
    write_json(job.out_dir / SUMMARY_NAME, summary)
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
              bands: tuple[str, ...], batch_size: int, device: Any, domain: str,
              options: CorruptionOptions) -> dict[str, Any]:
    """The ``settings`` block of the summary: what decides the corrupted images and how they were evaluated."""
    settings = {
        "corruptions": list(names), "severities": list(levels), "seed": int(seed), "domain": domain,
        "tables": options.tables, "defects": options.defects, "chunk": CHUNK,
        "table_fingerprint": table_fingerprint(options.tables), "data": str(dataset.path.resolve()),
        "n": len(dataset.labels("test")), "batch_size": batch_size, "device": str(device),
    }
    if bands != BANDS:
        settings["bands"] = list(bands)
    if options.survey is not None:
        settings["survey"] = options.survey.as_dict()
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
    """The run whose outcomes normalise CE (the user's, or :func:`find_baseline`'s), and why."""
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


def _input_statistics(corrupted: np.ndarray, clean: np.ndarray, corrupted_raw: np.ndarray,
                      clean_raw: np.ndarray, limits: tuple[float, float] | None) -> np.ndarray:
    """Sums over a chunk: |Δ model input|, pixels changed, pixels at the stretch's clip limits, pixels."""
    delta = np.subtract(corrupted, clean, dtype=np.float32)
    np.abs(delta, out=delta)  # in place: the same values as np.abs(corrupted - clean), one array fewer
    changed = np.count_nonzero(corrupted_raw != clean_raw)
    clipped = 0
    if limits is not None:
        lo, hi = limits
        clipped = int(np.count_nonzero(corrupted_raw < lo)) + int(np.count_nonzero(corrupted_raw > hi))
    # numpy's pairwise float32 sum (relative error ~1e-7 x log2 of the chunk's pixels), summed over chunks in float64
    return np.array([float(delta.sum()), changed, clipped, delta.size], dtype=np.float64)


class _Benchmark:
    """Evaluates one or two models (the run, the baseline) on the corrupted test set, chunk by chunk."""

    def __init__(self, dataset: GalaxyDataset, models: dict[str, Any], *, seed: int, batch_size: int,
                 device: Any, domain: str = DOMAIN, options: CorruptionOptions = DEFAULT_OPTIONS) -> None:
        self.raw = dataset.images(domain, "test", stretched=False)
        self.labels = dataset.labels("test")
        self.dataset, self.domain, self.options = dataset, domain, options
        self.bands = check_bands(dataset.bands)
        self.models, self.seed, self.batch_size, self.device = models, seed, batch_size, device
        self.n_chunks = max(1, math.ceil(len(self.labels) / CHUNK))
        self.limits = dataset.stretch(domain) if dataset.normalisation_kind == "paper" else None
        #: seconds corrupting (summed over the corrupting threads) and evaluating
        self.timing = {"corrupt_s": 0.0, "evaluate_s": 0.0}
        self._timing_lock = threading.Lock()
        #: test image 0 as scored under each (corruption, severity): the grid figure's panels
        self.panels: dict[Key, np.ndarray] = {}
        self._clean_cache: dict[int, np.ndarray] = {}

    def logits(self, name: str, severity: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Logits of every model on the test set under one corruption (severity 0: clean), and the
        input statistics' sums (see :func:`_input_statistics`); one thread, nothing ahead."""
        chunks = (self._prepare(name, (severity,), k)[0] for k in range(self.n_chunks))
        return self._evaluate(name, (severity,), ([c] for c in chunks))[severity]

    def _prepare(self, name: str, severities: Sequence[int], chunk: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """One chunk's model input under one corruption at each of ``severities`` (draws made once,
        :func:`corrupted_chunks`), with its input statistics' sums.

        Runs in the corrupting threads of :meth:`table`, several chunks at once: a corrupted chunk
        whose clean input is not cached yet computes it itself (the same numbers)."""
        t0 = time.perf_counter()
        k = chunk
        clean_raw = np.asarray(self.raw[k * CHUNK:(k + 1) * CHUNK], dtype=np.float32)
        corrupted = (corrupted_chunks(self.raw, name, severities, k, seed=self.seed, domain=self.domain,
                                      bands=self.bands, options=self.options) if name != CLEAN else [clean_raw])
        prepared = []
        for severity, electrons in zip(severities, corrupted):
            if k == 0 and len(electrons):
                self.panels[(name, severity)] = np.array(electrons[0])
            images = self.dataset.model_input(electrons, self.domain)
            if severity == 0 and len(self.labels) <= CLEAN_CACHE_IMAGES:
                self._clean_cache[k] = images  # the clean input, for the input statistics of every row
            stats = np.zeros(4)
            if severity != 0:
                stats += _input_statistics(images, self._clean_input(k, clean_raw), electrons, clean_raw, self.limits)
            elif self.limits is not None:
                lo, hi = self.limits
                stats += np.array([0.0, 0.0, np.count_nonzero((clean_raw < lo) | (clean_raw > hi)), clean_raw.size])
            prepared.append((images, stats))
        with self._timing_lock:
            self.timing["corrupt_s"] += time.perf_counter() - t0
        return prepared

    def _evaluate(self, name: str, severities: Sequence[int], chunks: Iterable[list[tuple[np.ndarray, np.ndarray]]]
                  ) -> dict[int, tuple[dict[str, np.ndarray], np.ndarray]]:
        """Every model's logits and the input statistics' sums per severity, from the prepared chunks
        of one corruption (each chunk: one (images, stats) per severity), in chunk order."""
        out: dict[int, dict[str, list[np.ndarray]]] = {s: {k: [] for k in self.models} for s in severities}
        stats = {s: np.zeros(4) for s in severities}
        for per_severity in chunks:
            t1 = time.perf_counter()
            for severity, (images, chunk_stats) in zip(severities, per_severity):
                stats[severity] += chunk_stats
                for key, m in self.models.items():
                    out[severity][key].append(
                        forward_batches(m, images, batch_size=self.batch_size, device=self.device).logits)
            self.timing["evaluate_s"] += time.perf_counter() - t1
        return {s: ({k: np.concatenate(v) for k, v in out[s].items()}, stats[s]) for s in severities}

    def _clean_input(self, chunk: int, clean_raw: np.ndarray) -> np.ndarray:
        """The clean model input of a chunk, kept for test sets up to CLEAN_CACHE_IMAGES images."""
        if chunk in self._clean_cache:
            return self._clean_cache[chunk]
        images = self.dataset.model_input(clean_raw, self.domain)
        if len(self.labels) <= CLEAN_CACHE_IMAGES:
            self._clean_cache[chunk] = images
        return images

    def _row(self, name: str, severity: int, logits: np.ndarray, clean_pred: np.ndarray,
             stats: np.ndarray) -> dict[str, Any]:
        pixels = max(stats[3], 1.0)
        row = {"corruption": name, "severity": severity, **_metrics(logits, self.labels, clean_pred),
               "mean_abs_delta_input": float(stats[0] / pixels) if severity else 0.0,
               "frac_pixels_changed": float(stats[1] / pixels) if severity else 0.0,
               "frac_clipped": float(stats[2] / pixels) if self.limits is not None else ""}
        return row

    def table(self, needed: list[Key]) -> tuple[list[dict[str, Any]], dict[str, dict[Key, np.ndarray]]]:
        """The run's rows (clean first, then every (corruption, severity) in the order of ``needed``)
        and every model's per-image outcomes ({"run" / "baseline": {key: (N,) bool wrong}}).

        Corrupting and evaluating overlap: :func:`corrupting_threads` threads corrupt the chunks ahead
        (:meth:`_prepare`: one chunk of one corruption at all its severities, at most one more than
        the threads waiting or running) while this one evaluates, with one torch thread less on a
        CPU until the last chunk is handed to the corrupting threads (a fixed chunk, so the logits'
        rounding does not depend on timing). Every chunk's draws are keyed by (seed, corruption,
        chunk, domain), so the images and the numbers do not depend on the overlap or on the
        severities run together.
        """
        groups: dict[str, list[int]] = {}
        for name, severity in needed:
            groups.setdefault(name, []).append(severity)
        work = [(name, tuple(levels), k) for name, levels in [(CLEAN, [0]), *groups.items()]
                for k in range(self.n_chunks)]
        threads = corrupting_threads(models=len(self.models))
        ahead = _Ahead(lambda item: self._prepare(*item), work, threads + 1, workers=threads)
        with ahead as in_order, _one_thread_less(self.device) as restore:

            def prepared_chunks() -> Iterator[Any]:  # torch's thread back for the last chunks
                for chunk in in_order:
                    if ahead.all_submitted():
                        restore()
                    yield chunk

            prepared = prepared_chunks()
            clean, clean_stats = self._evaluate(CLEAN, (0,), itertools.islice(prepared, self.n_chunks))[0]
            clean_pred = {k: v.argmax(axis=1) for k, v in clean.items()}
            wrong = {k: {(CLEAN, 0): clean_pred[k] != self.labels} for k in clean}
            scored: dict[Key, dict[str, Any]] = {}
            bar = make_progress()
            task = bar.add_task(f"robustness {self.domain}", total=len(needed))
            with bar:
                for name, levels in groups.items():
                    bar.update(task, description=f"{name} {', '.join(map(str, levels))}")
                    per_severity = self._evaluate(name, levels, itertools.islice(prepared, self.n_chunks))
                    for severity, (logits, stats) in per_severity.items():
                        scored[(name, severity)] = self._row(name, severity, logits["run"], clean_pred["run"], stats)
                        for key, value in logits.items():
                            wrong[key][(name, severity)] = value.argmax(axis=1) != self.labels
                    bar.advance(task, len(levels))
        rows = [self._row(CLEAN, 0, clean["run"], clean_pred["run"], clean_stats), *(scored[key] for key in needed)]
        return rows, wrong


def corrupting_threads(cores: int | None = None, models: int = 1) -> int:
    """Threads that corrupt chunks ahead of the evaluation: a quarter of the cores (at most eight),
    and at least two when one model is evaluated, one when more are (a baseline evaluated beside the
    run). numpy, scipy.fft and astropy's quantiser release the GIL, so the threads share the cores
    with torch's (which keep one thread less). On two cores: one model's evaluation costs about
    two thirds of the corrupting's CPU, so two corrupting threads keep both cores busy; two models'
    cost more than the corrupting, and a second corrupting thread would only slow them down.

    Args:
        cores: CPU cores [default: ``os.cpu_count()``].
        models: models evaluated on each chunk [default: 1].

    Returns:
        The number of corrupting threads, 1-8.
    """
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(2 if models <= 1 else 1, min(8, cores // 4))


class _Ahead:
    """Results of ``fn`` over ``items`` in order, computed by ``workers`` background threads, at most
    ``depth`` ahead of the consumer; an error in ``fn`` is raised where its result is taken, and
    leaving the context cancels what was not started and waits for the running calls."""

    def __init__(self, fn: Callable[[Any], Any], items: Sequence[Any], depth: int, workers: int = 1) -> None:
        self.fn, self.items, self.depth = fn, list(items), max(1, int(depth))
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, int(workers)),
                                                          thread_name_prefix="corrupt")
        self.pending: collections.deque = collections.deque()
        self.next = 0

    def __enter__(self) -> Iterator[Any]:
        return self._results()

    def _fill(self) -> None:
        while len(self.pending) < self.depth and self.next < len(self.items):
            self.pending.append(self.pool.submit(self.fn, self.items[self.next]))
            self.next += 1

    def _results(self) -> Iterator[Any]:
        self._fill()
        while self.pending:
            result = self.pending.popleft().result()
            self._fill()
            yield result

    def all_submitted(self) -> bool:
        """Whether every item has been handed to the threads: true from a fixed point of the
        consumption on (``depth`` results before the end), whatever the threads' timing."""
        return self.next >= len(self.items)

    def __exit__(self, *exc: Any) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _one_thread_less(device: Any) -> Iterator[Callable[[], None]]:
    """On a CPU, torch's intra-op threads less one while the corrupting threads hold the cores; yields
    a function that gives the thread back (once the corrupting is done), and gives it back on exit."""
    before = torch.get_num_threads()
    if getattr(device, "type", str(device)) == "cpu" and before > 1:
        torch.set_num_threads(before - 1)

    def restore() -> None:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

    try:
        yield restore
    finally:
        restore()


def _summarise(run: Path, config: RunConfig, rows: list[dict[str, Any]], settings: Mapping[str, Any],
               baseline_path: Path | None, chosen_by: str, run_wrong: Mapping[Key, np.ndarray],
               base_wrong: Mapping[Key, np.ndarray] | None, source: str | None, seed: int) -> dict[str, Any]:
    clean, corrupted = rows[0], rows[1:]
    errors = {(r["corruption"], r["severity"]): 1.0 - r["accuracy"] for r in corrupted}
    by_name: dict[str, list[float]] = {}
    for (name, _), e in errors.items():
        by_name.setdefault(name, []).append(e)
    mean_errors = {name: float(np.mean(v)) for name, v in by_name.items()}
    summary: dict[str, Any] = {
        "kind": KIND, "version": VERSION, "run": str(run), "model": config.model, "method": config.method,
        "domain": settings["domain"], "n": clean["n"], "settings": dict(settings),
        "clean": {k: clean[k] for k in ("accuracy", "mean_p_true")} | {"error": 1.0 - clean["accuracy"]},
        "results": [dict(r) for r in corrupted],
        "mean_errors": mean_errors,
        "mean_error": float(np.mean(list(mean_errors.values()))) if mean_errors else None,
        "corruption_errors": None, "mce": None, "relative_mce": None,
    }
    base_block: dict[str, Any] = {"run": None, "chosen_by": chosen_by}
    if baseline_path is not None and base_wrong is not None and errors:
        block = corruption_errors(run_wrong, {k: base_wrong[k] for k in run_wrong}, seed=seed)
        summary.update({"corruption_errors": block, "mce": block["mce"], "relative_mce": block["relative_mce"]})
        base_block = {
            "run": str(baseline_path), "chosen_by": chosen_by, "errors_from": source,
            "clean_error": float(np.mean(base_wrong[(CLEAN, 0)])),
            "errors": [{"corruption": c, "severity": s, "error": float(np.mean(base_wrong[(c, s)]))}
                       for (c, s) in errors],
        }
    summary["baseline"] = base_block
    return summary


def baseline_results(summary: Mapping[str, Any]) -> dict[str, Any] | None:
    """The baseline's accuracies recorded in a summary, shaped like a summary (``clean``, ``results``)
    for :func:`deepadversaries.plots.robustness.plot_accuracy_curves`; None without a baseline."""
    base = summary.get("baseline") or {}
    if base.get("run") is None or "errors" not in base:
        return None
    return {
        "clean": {"accuracy": 1.0 - float(base["clean_error"])},
        "results": [{"corruption": r["corruption"], "severity": int(r["severity"]), "accuracy": 1.0 - float(r["error"])}
                    for r in base["errors"]],
    }


def _write_figures(out_dir: Path, summary: Mapping[str, Any], config: RunConfig, dataset: GalaxyDataset,
                   names: Sequence[str], panels: Mapping[Key, np.ndarray], options: CorruptionOptions) -> None:
    label = f"{config.model} {config.method}"
    domain = summary["domain"]
    curves = {label: summary}
    base = baseline_results(summary)
    if base is not None:
        curves = {f"baseline ({Path(summary['baseline']['run']).name})": base, **curves}
    plot_accuracy_curves(curves, out_dir / ACCURACY_FIGURE)
    if (CLEAN, 0) not in panels:
        return
    image = panels[(CLEAN, 0)]
    true = dataset.classes[int(dataset.labels("test")[0])]
    lo, hi, to_input = grid_normalisation(dataset, domain)
    severities = sorted({0} | {s for (c, s) in panels if c != CLEAN})
    shown = {(c, s): panels[(c, s)] for c in names for s in severities if (c, s) in panels}
    shown.update({(c, 0): image for c in names})
    plot_corruption_grid(image, lo, hi, out_dir / GRID_FIGURE, corruptions=names, severities=severities,
                         domain=domain, bands=dataset.bands, to_input=to_input, panels=shown, options=options,
                         title=f"{domain} test image 0 ({true}) as {label} was scored on it")


def grid_normalisation(dataset: GalaxyDataset, domain: str) -> tuple[float | None, float | None, Any]:
    """How the corruption grid normalises a domain's images: the paper stretch's (lo, hi) and no
    function, or (None, None) and the dataset's own normalisation (``dataset.model_input``)."""
    if dataset.normalisation_kind == "paper":
        lo, hi = dataset.stretch(domain)
        return lo, hi, None
    return None, None, functools.partial(dataset.model_input, domain=domain)
