"""The robustness card of a trained run: ``deepadv card``.

One command from a model and a survey's cutouts to one answer: how robust is this model?
:func:`card_run` runs the stages a card needs that the run folder lacks — evaluate
(:func:`deepadversaries.evaluation.evaluate.evaluate_run`), the survey corruptions
(:func:`deepadversaries.corruptions.benchmark.robustness_run`), the one-pixel attack (differential
evolution) and the corner search (:func:`deepadversaries.attacks.campaign.attack_run`), and the
certification (:func:`deepadversaries.certify.certify.certify_run`; a model whose layers the bounds do
not cover is named in ``absent``)
— with the protocol of the chosen level (:data:`PROTOCOLS`), then collects their files into
one dict, the card, written as ``CARD/card.json`` (last: it marks a finished card; the
layout is :data:`SCHEMA_FILE`, JSON Schema draft 2020-12, shipped in the package).

Every number of the card's ``results`` and ``headline`` is ``{"value", "ci_low", "ci_high",
"n", "method"}`` with a 95 % interval (``None`` bounds where undefined):

- a rate or an accuracy (k of n images): Clopper–Pearson, the exact binomial interval
  (``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``);
- a mean over corruption × severity cells of one rate on the same n images: Clopper–Pearson
  at n — conservative, since the variance of a mean of correlated binomial proportions is at
  most p̄(1 − p̄)/n;
- the depth-shift drop (Y10 − Y1 accuracy on the same galaxies):
  :func:`deepadversaries.analysis.stats.accuracy_difference` (paired bootstrap over images);
- ECE, Brier score and NLL: a percentile bootstrap over test images
  (:func:`deepadversaries.analysis.stats.bootstrap_interval`) of the same functions the evaluate stage
  uses (:mod:`deepadversaries.evaluation.calibration`);
- CE of one corruption (ImageNet-C: Σ_s E_run / Σ_s E_baseline): Katz's log interval of a
  ratio of two proportions at n images each, treating the two as independent — conservative
  when the run's and the baseline's errors on the same images are positively correlated;
  mCE: mCE ± 1.96 · mean_c sd(CE_c), conservative for any correlation between corruptions;
- the share of dangerous pixels in an annulus: a paired bootstrap over attacked images of
  Σ (flipping positions in the annulus) / Σ (flipping positions).

``unreliable`` lists every number whose n is below :data:`MIN_N` or whose interval is
undefined or wider than :data:`MAX_WIDTH` (rates and accuracies); ``absent`` says, per
section, why it is not on the card (no Y1 images, bands the corruption model does not know,
a model the certification refuses, ...).

Label-free mode (``unlabelled=True``): the card measures prediction *stability*, not
accuracy. A dataset folder ``CARD/stages/data`` is made whose test labels are the model's
own clean Y10 predictions (images and other splits linked, not copied), so every stage
measures agreement with the clean prediction: the share of galaxies whose predicted class
survives each corruption and severity, the Y1 (shallower) image, and a one-pixel change
(every galaxy is attacked, against its predicted class). The data's own labels, if any,
are never read.

Where the stages run: on the run folder itself when the card uses the run's own dataset
with labels; otherwise on a copy of the run in ``CARD/stages/run`` (config, checkpoints,
training marker) pointed at the card's dataset, so that the run's own results are never
mixed with another dataset's. The protocol's actual settings (read back from the stages'
summaries) and the dataset's SHA-256 go into the card, so that a leaderboard compares only
cards measured the same way (:mod:`deepadversaries.card.leaderboard`).

Determinism: the stages are seeded by the protocol's seed; the bootstrap intervals by
:data:`BOOTSTRAP_SEED`; the same files give the same card (``created`` and timings aside).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
from scipy import stats as scipy_stats

from deepadversaries import SPLITS, __version__
from deepadversaries.analysis.latent import DANGER_RADII, dangerous_pixel_shares, light_centroid
from deepadversaries.evaluation.calibration import brier_score, expected_calibration_error, negative_log_likelihood
from deepadversaries.attacks.campaign import attack_run
from deepadversaries.certify.certify import CertifyConfig, certify_run
from deepadversaries.config import AttackConfig
from deepadversaries.data.dataset import GalaxyDataset, image_file, label_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.errors import DeepAdvError, OptionError, check_choice, file_error
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.formatting import utc_now
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.io import OutputLock, read_json, sha256_of, write_json, write_npy
from deepadversaries.models.networks import load_model
from deepadversaries.plots.attacks import save_success_curves
from deepadversaries.progress import info
from deepadversaries.corruptions.benchmark import robustness_dir, robustness_run, why_not_applicable
from deepadversaries.models.runs import (
    CONFIG_NAME, METRICS_NAME, PREDICTIONS_NAME, RELIABILITY_NAME, TRAINING_DONE, RunConfig, attack_dir,
    kept_model_path, read_run_config,
)
from deepadversaries.analysis.stats import DEFAULT_LEVEL, accuracy_difference, bootstrap_interval, success_curve
from deepadversaries.simulation.survey import PIXEL_SCALE
from deepadversaries.training.survey_mix import held_out_corruptions


KIND = "deepadv-card"
#: the card layout's version; a leaderboard refuses cards of another major version
SCHEMA_VERSION = "1.2"
SCHEMA_FILE = "schema.json"
CARD_NAME = "card.json"
STAGES_DIR = "stages"
FIGURES_DIR = "figures"
#: the protocol definitions' version: part of the protocol id that a leaderboard groups by
PROTOCOL_VERSION = 1
LEVELS = ("tiny", "quick", "full")
#: a number resting on fewer observations is listed as unreliable
MIN_N = 30
#: a rate or accuracy whose 95 % interval is wider than this (a fraction) is listed as unreliable
MAX_WIDTH = 0.2
BOOTSTRAP_SEED = 0
#: bootstrap resamples of the calibration and dangerous-pixel intervals: fewer than the findings'
#: (``stats.DEFAULT_RESAMPLES``) because a card is made on a laptop in minutes; these intervals are
#: descriptive, no verdict rests on them
CARD_RESAMPLES = 999
#: the shares of the budget at which the success against queries is read
QUERY_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
#: the band whose light centres a galaxy (the dangerous-pixel table), when the data have it
CENTRE_BAND = "r"


@dataclass(frozen=True)
class Protocol:
    """What a card runs when the run lacks a stage, fixed per level.

    Attributes:
        level: ``tiny`` (smoke tests), ``quick`` or ``full``.
        severities: corruption severities (every corruption of the table).
        attack_preset: the one-pixel campaign's preset (population, generations).
        attack_images: test images drawn for DE and the corner search (the same subsample).
        certify_images: images certified (None: every image DE attacked; 0: none).
        certify_budget_s: seconds per image before an image is left undecided.
    """

    level: str
    severities: tuple[int, ...]
    attack_preset: str
    attack_images: int
    certify_images: int | None
    certify_budget_s: float

    @property
    def id(self) -> str:
        """``deepadv-card/<version>/<level>``: cards with the same id were measured the same way."""
        return f"{KIND}/{PROTOCOL_VERSION}/{self.level}"


PROTOCOLS: dict[str, Protocol] = {
    "tiny": Protocol("tiny", (1,), "tiny", 12, 0, 2.0),  # smoke tests and CI; too few images for a verdict
    "quick": Protocol("quick", (1, 3, 5), "quick", 150, 20, 5.0),
    "full": Protocol("full", (1, 2, 3, 4, 5), "paper", 500, None, 30.0),
}
#: measured seconds per unit on the 2-core development CPU (quick ConvNet, 100 × 100 × 3), for
#: the cost statement printed before a card runs: evaluate per test image and domain, one
#: corruption × severity per test image, DE per attacked image and generation, the corner
#: search per attacked image, certification per image (the budget is the ceiling)
COST_PER_UNIT = {"evaluate": 0.0015, "corruption": 0.00003, "de_generation": 0.012, "corner": 0.5,
                 "certify": 2.0}


# --------------------------------------------------------------------------------------
# numbers with intervals
# --------------------------------------------------------------------------------------
def _clean(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if not math.isfinite(x) else x


def number(value: float | None, low: float | None, high: float | None, n: int, method: str) -> dict[str, Any]:
    """One card number: ``{"value", "ci_low", "ci_high", "n", "method"}`` (NaN/inf → None)."""
    return {"value": _clean(value), "ci_low": _clean(low), "ci_high": _clean(high), "n": int(n), "method": method}


def rate_number(k: int, n: int, what: str = "images") -> dict[str, Any]:
    """k of n as a rate with its Clopper–Pearson 95 % interval (n = 0: every field None but n)."""
    k, n = int(k), int(n)
    if n == 0:
        return number(None, None, None, 0, f"Clopper-Pearson exact binomial interval; no {what}")
    if not 0 <= k <= n:
        raise OptionError(f"a count of {k} out of {n} is not a rate")
    ci = scipy_stats.binomtest(k, n).proportion_ci(confidence_level=DEFAULT_LEVEL, method="exact")
    return number(k / n, ci.low, ci.high, n, f"{k} of {n} {what}; Clopper-Pearson exact binomial interval")


def mean_rate_number(value: float, n: int, cells: int, what: str) -> dict[str, Any]:
    """A mean over ``cells`` rates measured on the same n images, with the conservative
    Clopper–Pearson interval at n images (see the module docstring)."""
    if n == 0 or not math.isfinite(value):
        return number(None, None, None, n, f"mean of {cells} {what}; no images")
    k = float(value) * n
    low = 0.0 if k <= 0 else float(scipy_stats.beta.ppf((1 - DEFAULT_LEVEL) / 2, k, n - k + 1))
    high = 1.0 if k >= n else float(scipy_stats.beta.ppf(1 - (1 - DEFAULT_LEVEL) / 2, k + 1, n - k))
    return number(value, low, high, n, f"mean of {cells} {what} on the same {n} images; Clopper-Pearson "
                                       "interval at n (conservative for a mean of correlated rates)")


def interval_number(interval: Any, scale: float = 1.0) -> dict[str, Any]:
    """A :class:`deepadversaries.analysis.stats.Interval` as a card number (multiplied by ``scale``)."""
    return number(interval.estimate * scale, interval.low * scale, interval.high * scale, interval.n,
                  interval.method)


def ratio_number(errors_run: float, errors_base: float, n: int, what: str) -> dict[str, Any]:
    """A ratio of two error proportions at n images each, with Katz's log interval."""
    p1, p2 = float(errors_run), float(errors_base)
    if n == 0 or p2 <= 0:
        return number(None, None, None, n, f"{what}: the baseline made no error, the ratio is undefined")
    ratio = p1 / p2
    if p1 <= 0:
        return number(ratio, None, None, n, f"{what}: the run made no error, Katz's interval is undefined")
    se = math.sqrt((1 - p1) / (n * p1) + (1 - p2) / (n * p2))
    z = float(scipy_stats.norm.ppf(0.5 + DEFAULT_LEVEL / 2))
    return number(ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se), n,
                  f"{what}; Katz log interval of a ratio of proportions at {n} images each, "
                  "independence assumed (conservative for positively correlated errors)")


def is_number(obj: Any) -> bool:
    """Whether ``obj`` is a card number (a dict with value, ci_low, ci_high and n)."""
    return isinstance(obj, Mapping) and {"value", "ci_low", "ci_high", "n"} <= set(obj)


def iter_numbers(obj: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every card number inside ``obj``, with its dotted path (list items as ``[i]``)."""
    if is_number(obj):
        yield path, obj  # type: ignore[misc]
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from iter_numbers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from iter_numbers(v, f"{path}[{i}]")


def unreliable_numbers(results: Any, prefix: str = "results") -> list[dict[str, str]]:
    """The card's ``unreliable`` list: numbers on fewer than :data:`MIN_N` observations, with an
    undefined interval, or (rates and accuracies, values in [0, 1]) an interval wider than
    :data:`MAX_WIDTH`."""
    out = []
    for path, num in iter_numbers(results, prefix):
        why = None
        if num["value"] is None:
            why = "undefined (no data)"
        elif num["n"] < MIN_N:
            why = f"n = {num['n']} < {MIN_N}"
        elif num["ci_low"] is None or num["ci_high"] is None:
            why = "its interval is undefined"
        elif (0.0 <= num["value"] <= 1.0 and "ratio" not in num["method"] and "bootstrap" not in num["method"]
              and num["ci_high"] - num["ci_low"] > MAX_WIDTH):
            why = f"its 95 % interval is {num['ci_high'] - num['ci_low']:.2f} wide (> {MAX_WIDTH})"
        if why is not None:
            out.append({"path": path, "why": why})
    return out


# --------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=1)
def card_schema() -> dict[str, Any]:
    """The card's JSON Schema (draft 2020-12), shipped as package data."""
    return json.loads(resources.files("deepadversaries.card").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def validate_card(card: Any, source: str | Path = CARD_NAME) -> dict[str, Any]:
    """Check a card: its schema version (same major version as :data:`SCHEMA_VERSION`), then
    the JSON Schema.

    Raises:
        FileError: not a card, an unknown schema version, or a card that breaks the schema
            (one line naming the first violation).
    """
    if not isinstance(card, Mapping) or card.get("kind") != KIND:
        raise file_error(source, f"not a robustness card (no \"kind\": \"{KIND}\")")
    version = str(card.get("schema_version", ""))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise file_error(source, f"unknown card schema version {version!r}; this deepadversaries {__version__} "
                                 f"reads version {SCHEMA_VERSION.split('.')[0]}.x (make the card again)")
    validator = jsonschema.Draft202012Validator(card_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(card))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise file_error(source, f"does not follow the card schema at {where}: {error.message}")
    return dict(card)


def read_card(path: str | Path) -> dict[str, Any]:
    """A card from ``card.json`` (or a folder holding one), validated (:func:`validate_card`)."""
    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    if not path.is_file():
        raise file_error(path, "card not found; make one with 'deepadv card --run RUN --out CARD'")
    return validate_card(read_json(path), path)


# --------------------------------------------------------------------------------------
# the data and the model
# --------------------------------------------------------------------------------------
def dataset_sha256(dataset: GalaxyDataset, *, labelled: bool = True) -> tuple[str, list[str]]:
    """SHA-256 of the test split that a card measures: the hex digest of the sorted
    ``name:sha256`` lines of the test images of every domain (and the test labels when
    ``labelled``), and the files hashed."""
    names = [image_file(d, "test") for d in dataset.domains] + ([label_file("test")] if labelled else [])
    lines = "".join(f"{name}:{sha256_of(dataset.path / name)}\n" for name in sorted(names))
    return hashlib.sha256(lines.encode()).hexdigest(), sorted(names)


def _value_range(dataset: GalaxyDataset) -> dict[str, Any]:
    """The raw pixel range of the Y10 test images (0.1/99.9 percentiles, min, max) and its unit."""
    raw = np.asarray(dataset.images("Y10", "test", stretched=False), dtype=np.float64)
    simulated = dataset.metadata.get("kind") == "deepadv-dataset" and "simulator_version" in (
        dataset.metadata.get("config") or {})
    lo, hi = np.percentile(raw, [0.1, 99.9])
    return {"unit": "electrons" if simulated else "as stored (units of the source)",
            "p0.1": float(lo), "p99.9": float(hi), "min": float(raw.min()), "max": float(raw.max()),
            "normalisation": {d: dataset.describe_normalisation(d) for d in dataset.domains}}


def _model_block(run: Path, config: RunConfig) -> dict[str, Any]:
    model = load_model(run, device="cpu")
    path = kept_model_path(run, config)
    return {"run": str(run.resolve()), "name": run.name, "architecture": config.model, "method": config.recipe,
            "training_seed": int(config.seed), "parameters": int(sum(p.numel() for p in model.parameters())),
            "checkpoint": path.name, "checkpoint_sha256": sha256_of(path), "adopted": bool(config.adopted),
            "classes": list(config.classes)}


# --------------------------------------------------------------------------------------
# where the stages run
# --------------------------------------------------------------------------------------
def _same_path(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _link_or_copy(source: Path, target: Path) -> None:
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # a file system without links
        shutil.copy2(source, target)


def predicted_dataset(dataset: GalaxyDataset, run: Path, out: Path, device: Any) -> Path:
    """A dataset folder whose test labels are the run's clean Y10 predictions (label-free mode).

    The images and the other splits' labels are linked from ``dataset``; ``dataset.json``
    is the original's with ``"labels": "predicted by <run>"``; written last.
    """
    out.mkdir(parents=True, exist_ok=True)
    marker = out / "dataset.json"
    model_sha = sha256_of(kept_model_path(run, read_run_config(run)))
    if marker.is_file():
        if read_json(marker).get("labels_model_sha256") != model_sha:
            raise file_error(out, "holds the predictions of another model; use another --out")
        return out
    model = load_model(run, device=device)
    predicted = forward_batches(model, dataset.images("Y10", "test"), batch_size=128, device=device,
                                progress="predict (label-free)").predicted
    for domain in dataset.domains:
        for split in SPLITS:
            _link_or_copy(dataset.path / image_file(domain, split), out / image_file(domain, split))
    for split in ("train", "valid"):
        _link_or_copy(dataset.path / label_file(split), out / label_file(split))
    for split in SPLITS:
        catalog = dataset.path / f"catalog_{split}.csv"
        if catalog.is_file():
            _link_or_copy(catalog, out / catalog.name)
    write_npy(out / label_file("test"), np.eye(dataset.n_classes, dtype=np.float32)[predicted])
    meta = dict(dataset.metadata)
    meta.update({"classes": list(dataset.classes), "bands": list(dataset.bands),
                 "labels": f"test labels predicted by {run.resolve()} on the clean Y10 images (label-free card)",
                 "labels_model_sha256": model_sha,
                 "stretch": {d: list(dataset.stretch(d)) for d in dataset.domains}
                 if dataset.normalisation_kind == "paper" else meta.get("stretch", {})})
    write_json(marker, meta)
    return out


def work_run(run: Path, config: RunConfig, data: Path, out: Path) -> Path:
    """A copy of ``run`` (config, checkpoints, training marker) in ``out``, pointed at ``data``."""
    out.mkdir(parents=True, exist_ok=True)
    marker = out / TRAINING_DONE
    if marker.is_file():
        copied = read_run_config(out)
        if (not _same_path(copied.data, data)
                or sha256_of(kept_model_path(out, copied)) != sha256_of(kept_model_path(run, config))):
            raise file_error(out, "holds a copy of another run or for another dataset; use another --out")
        return out
    shutil.copytree(run / "checkpoints", out / "checkpoints", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("last.ckpt"))
    write_json(out / CONFIG_NAME, config.replace(data=str(data.resolve())).to_json())
    shutil.copy2(run / TRAINING_DONE, marker)
    return out


# --------------------------------------------------------------------------------------
# running what is missing
# --------------------------------------------------------------------------------------
def estimate_seconds(protocol: Protocol, n_test: int, domains: int = 2, corruptions: int = 0) -> float:
    """The expected seconds of a card on an empty run, from :data:`COST_PER_UNIT` (2-core CPU)."""
    n_attack = min(protocol.attack_images, n_test)
    generations = AttackConfig.from_preset(protocol.attack_preset).max_iter + 1
    n_cert = n_attack if protocol.certify_images is None else min(protocol.certify_images, n_attack)
    return (COST_PER_UNIT["evaluate"] * n_test * domains
            + COST_PER_UNIT["corruption"] * n_test * corruptions * len(protocol.severities) * 100
            + COST_PER_UNIT["de_generation"] * n_attack * generations
            + COST_PER_UNIT["corner"] * n_attack
            + COST_PER_UNIT["certify"] * n_cert)


def _run_missing(stage_run: Path, protocol: Protocol, seed: int, baseline: Path | None, device: str,
                 run_missing: bool, absent: dict[str, str], unlabelled: bool) -> dict[str, float]:
    """Run the stages the card needs that ``stage_run`` lacks; their seconds."""
    timing: dict[str, float] = {}

    def stage(name: str, done: Path, action: Callable[[], Any]) -> None:
        if done.is_file():
            return
        if not run_missing:
            absent[name] = f"{done} is missing and the card was made with --no-run"
            return
        info(f"card: running {name}")
        t0 = time.perf_counter()
        action()
        timing[name] = round(time.perf_counter() - t0, 2)

    stage("evaluate", stage_run / METRICS_NAME, lambda: evaluate_run(stage_run, device=device))
    config = read_run_config(stage_run)
    n_images = min(protocol.attack_images, len(load_dataset(config.data).labels("test")))
    attack = AttackConfig.from_preset(protocol.attack_preset, n_images=n_images, seed=seed)
    stage("one_pixel_de", attack_dir(stage_run, "de") / "summary.json",
          lambda: attack_run(stage_run, attack, device=device))
    corner = AttackConfig.from_preset(protocol.attack_preset, n_images=n_images, seed=seed,
                                      search="exhaustive")
    stage("one_pixel_corner_search", attack_dir(stage_run, "exhaustive") / "summary.json",
          lambda: attack_run(stage_run, corner, device=device))
    if protocol.certify_images == 0:
        absent["certified"] = f"the {protocol.level} level certifies no image"
    else:
        def certify() -> None:
            cfg = CertifyConfig(n_images=protocol.certify_images, budget_s=protocol.certify_budget_s)
            try:
                certify_run(stage_run, cfg, device=device)
            except DeepAdvError as exc:  # e.g. a layer the bounds do not cover: the card says why
                absent["certified"] = f"the certification refused this model: {exc}"
        stage("certified", stage_run / "certify" / "summary.json", certify)
    why = why_not_applicable(config.data)
    if why is None:
        def corruptions() -> None:
            try:
                robustness_run(stage_run, severities=protocol.severities, seed=seed,
                               baseline=None if unlabelled else baseline, device=device)
            except DeepAdvError as exc:  # e.g. data whose noise is not the survey model's: the card says why
                absent["corruptions"] = f"the corruption benchmark refused this dataset: {exc}"
        stage("corruptions", robustness_dir(stage_run) / "summary.json", corruptions)
    else:
        absent["corruptions"] = f"the corruption benchmark does not apply to this dataset: {why}"
    return timing


# --------------------------------------------------------------------------------------
# collecting the numbers
# --------------------------------------------------------------------------------------
def _clean_section(stage_run: Path, dataset: GalaxyDataset, unlabelled: bool, absent: dict[str, str]
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Accuracy and calibration per domain (or agreement, label-free), and the depth-shift drop."""
    path = stage_run / PREDICTIONS_NAME
    if not path.is_file():
        absent["clean"] = f"{path} is missing (run 'deepadv evaluate')"
        return {}, None
    with np.load(path, allow_pickle=False) as npz:
        labels = np.asarray(npz["labels"], dtype=np.int64)
        probs = {d: np.asarray(npz[f"probabilities_{d}"]) for d in dataset.domains if f"probabilities_{d}" in npz}
    n = len(labels)
    out: dict[str, Any] = {}
    correct = {d: p.argmax(axis=1) == labels for d, p in probs.items()}
    for domain, p in probs.items():
        entry: dict[str, Any] = {"name": dataset.domain_names.get(domain, domain)}
        if unlabelled:
            entry["agreement"] = rate_number(int(correct[domain].sum()), n, "galaxies whose prediction equals the "
                                                                            "clean Y10 prediction")
        else:
            entry["accuracy"] = rate_number(int(correct[domain].sum()), n, "test images classified correctly")
            entry.update(_calibration_numbers(p, labels))
        out[domain] = entry
    if unlabelled:
        absent["calibration"] = "label-free card: calibration needs true labels"
    drop = None
    if "Y1" in correct:
        diff = accuracy_difference(correct["Y1"], correct["Y10"], n_resamples=CARD_RESAMPLES, seed=BOOTSTRAP_SEED)
        drop = interval_number(diff)
        drop["method"] = ("Y10 minus Y1 " + ("agreement" if unlabelled else "accuracy")
                          + " on the same galaxies; " + drop["method"])
    else:
        absent["depth_shift"] = f"{dataset.path}: no Y1 (second-domain) images"
    return out, drop


def _calibration_numbers(p: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    index = np.arange(len(labels), dtype=np.float64)

    def boot(fn: Callable[[np.ndarray, np.ndarray], float], what: str) -> dict[str, Any]:
        def statistic(idx: np.ndarray) -> float:
            i = idx.astype(np.int64)
            return fn(p[i], labels[i])
        interval = bootstrap_interval((index,), statistic, n_resamples=CARD_RESAMPLES, seed=BOOTSTRAP_SEED, unit="images")
        out = interval_number(interval)
        out["method"] = f"{what}; {out['method']}"
        return out

    return {"ece": boot(expected_calibration_error, "expected calibration error, 15 bins"),
            "brier": boot(brier_score, "multiclass Brier score"),
            "nll": boot(negative_log_likelihood, "negative log-likelihood, nats")}


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _corruption_section(stage_run: Path, unlabelled: bool, absent: dict[str, str]) -> dict[str, Any] | None:
    folder = robustness_dir(stage_run)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        absent.setdefault("corruptions", f"{summary_path} is missing")
        return None
    summary = read_json(summary_path)
    rows = []
    for r in _read_rows(folder / "robustness.csv"):
        if r.get("corruption") in (None, "none") or int(float(r["severity"])) == 0:
            continue
        n = int(float(r["n"]))
        row: dict[str, Any] = {"corruption": r["corruption"], "severity": int(float(r["severity"]))}
        if r.get("flip_rate") not in (None, ""):
            flips = round(float(r["flip_rate"]) * n)
            row["stability"] = rate_number(n - flips, n, "galaxies whose predicted class survives the corruption")
        if not unlabelled:
            row["accuracy"] = rate_number(round(float(r["accuracy"]) * n), n, "corrupted test images "
                                                                               "classified correctly")
        rows.append(row)
    if not rows:
        absent["corruptions"] = f"{folder / 'robustness.csv'} holds no corrupted rows"
        return None
    n = rows[0]["stability" if unlabelled else "accuracy"]["n"]
    key = "stability" if unlabelled else "accuracy"
    values = [r[key]["value"] for r in rows]
    out: dict[str, Any] = {"domain": summary.get("domain", "Y10"), "rows": rows,
                           f"mean_{key}": mean_rate_number(float(np.mean(values)), n, len(rows),
                                                           f"{key} values over corruption x severity"),
                           f"worst_{key}": min((r[key] for r in rows), key=lambda x: x["value"])}
    worst = min(rows, key=lambda r: r[key]["value"])
    out["worst_cell"] = {"corruption": worst["corruption"], "severity": worst["severity"]}
    if not unlabelled:
        out.update(_corruption_errors(rows, summary, n, absent))
    return out


def _corruption_errors(rows: list[dict[str, Any]], summary: Mapping[str, Any], n: int,
                       absent: dict[str, str]) -> dict[str, Any]:
    """CE per corruption and mCE against the baseline recorded in the benchmark's summary."""
    base = summary.get("baseline") or {}
    errors = base.get("errors")
    if base.get("run") is None or not errors:
        absent["corruption_error"] = ("no baseline run for CE and mCE: " + str(base.get("chosen_by") or "none given")
                                      + " (pass --baseline REGULAR_RUN)")
        return {"baseline": None}
    try:
        base_errors = {(e["corruption"], int(e["severity"])): float(e["error"]) for e in errors}
    except (KeyError, TypeError, ValueError):
        absent["corruption_error"] = "the benchmark's summary records no per-severity errors of its baseline"
        return {"baseline": str(base.get("run"))}
    by_name: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        k = (r["corruption"], r["severity"])
        if k in base_errors:
            by_name.setdefault(r["corruption"], []).append((1.0 - r["accuracy"]["value"], base_errors[k]))
    ce = {name: ratio_number(np.mean([a for a, _ in v]), np.mean([b for _, b in v]), n,
                             f"CE of {name} (sum of errors over {len(v)} severities, run / baseline)")
          for name, v in by_name.items()}
    held_out = [name for name in held_out_corruptions() if name in ce]
    out = {"baseline": str(base.get("run")), "ce": ce, "mce": _mean_ce(list(ce.values()), n, "CEs")}
    if held_out:
        out["held_out_mce"] = _mean_ce([ce[name] for name in held_out], n,
                                       "CEs of the corruptions survey-mix never trains on (" + ", ".join(held_out) + ")")
        out["held_out"] = held_out
    return out


def _mean_ce(ces: list[dict[str, Any]], n: int, what: str) -> dict[str, Any]:
    """The mean of CE numbers with ± z · the mean of their standard errors (None bounds if any CE has none)."""
    defined = [c for c in ces if c["value"] is not None]
    if defined and all(c["ci_low"] is not None for c in defined):
        value = float(np.mean([c["value"] for c in defined]))
        z = float(scipy_stats.norm.ppf(0.5 + DEFAULT_LEVEL / 2))
        sd = float(np.mean([(c["ci_high"] - c["ci_low"]) / (2 * z) for c in defined]))  # ~ per-CE standard error
        return number(value, value - z * sd, value + z * sd, n,
                      f"mean of {len(defined)} {what}; ± 1.96 x the mean of their standard errors (conservative for "
                      "any correlation between corruptions)")
    return number(float(np.mean([c["value"] for c in defined])) if defined else None, None, None, n,
                  f"mean of {what}; undefined interval (a CE without one)")


def _attack_rows(folder: Path) -> list[dict[str, str]]:
    path = folder / "results.csv"
    return _read_rows(path) if path.is_file() else []


def _flipped(row: Mapping[str, str]) -> bool:
    return str(row.get("success", "")).strip().lower() in ("true", "1")


def _one_pixel_section(stage_run: Path, dataset: GalaxyDataset, unlabelled: bool, absent: dict[str, str],
                       figures: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    what = "galaxies whose predicted class one pixel changes" if unlabelled else "attacked images flipped"
    de_rows = _attack_rows(attack_dir(stage_run, "de"))
    if (attack_dir(stage_run, "de") / "summary.json").is_file():
        out["de_rate"] = rate_number(sum(map(_flipped, de_rows)), len(de_rows), what + " by differential evolution")
    else:
        absent.setdefault("one_pixel_de", "no finished DE campaign")
    corner_dir = attack_dir(stage_run, "exhaustive")
    corner_rows = _attack_rows(corner_dir)
    if (corner_dir / "summary.json").is_file():
        out["corner_search_rate"] = rate_number(sum(map(_flipped, corner_rows)), len(corner_rows),
                                                what + " by the corner search (every position x the value-cube "
                                                       "corners; a lower bound)")
    else:
        absent.setdefault("one_pixel_corner_search", "no finished corner search")
    certified = _certified_section(stage_run, absent)
    if certified is not None:
        out["certified"] = certified
    ranges = {name: kind for name, path in (("de", attack_dir(stage_run, "de") / "summary.json"),
                                            ("corner_search", corner_dir / "summary.json"),
                                            ("certified", stage_run / "certify" / "summary.json"))
              if (kind := _value_range_kind(path)) is not None}
    if ranges:
        out["value_ranges"] = ranges
    curves = {}
    sq = []
    for search, rows in (("de", de_rows), ("exhaustive", corner_rows)):
        if not rows:
            continue
        times = np.array([float(r["evaluations"]) for r in rows])
        flipped = np.array([_flipped(r) for r in rows])
        budget = float(times.max()) if len(times) else 0.0
        for fraction in QUERY_FRACTIONS:
            q = budget * fraction
            sq.append({"search": search, "queries": round(q), "rate": rate_number(
                int((flipped & (times <= q)).sum()), len(rows), f"{what} within {round(q)} queries")})
        t, f = success_curve(times, flipped)
        curves[search] = {"t": t.tolist(), "fraction": f.tolist(), "budget": budget}
    if sq:
        out["success_against_queries"] = sq
        save_success_curves(figures / "success_queries.png", {"": curves})
    danger = _dangerous_pixels(corner_dir, dataset, absent)
    if danger is not None:
        out["dangerous_pixels"] = danger
    return out


def _value_range_kind(summary: Path) -> str | None:
    """The value range (``input`` or ``physical``) a one-pixel search's summary records, or None."""
    if not summary.is_file():
        return None
    value_range = read_json(summary).get("value_range")
    kind = value_range.get("kind") if isinstance(value_range, Mapping) else value_range
    return kind if kind in VALUE_RANGE_WORDS else None


#: how a one-pixel rate's label names the values its search allowed
VALUE_RANGE_WORDS: dict[str, str] = {"input": "pixel values 0-1 of the model input",
                                     "physical": "pixel values 0 e- to the full well"}


def pixel_values_suffix(one: Mapping[str, Any], search: str) -> str:
    """", pixel values ..." naming the values a one-pixel search (``de``, ``corner_search``,
    ``certified``) allowed, from a card's one-pixel section; "" where it records none."""
    kind = (one.get("value_ranges") or {}).get(search)
    return f", {VALUE_RANGE_WORDS[kind]}" if kind in VALUE_RANGE_WORDS else ""


def _pixel_label(label: str, one: Mapping[str, Any], search: str) -> str:
    """A one-pixel rate's label with the values its search allowed, where the card records them
    (rates over different value ranges are different threat models)."""
    return label + pixel_values_suffix(one, search)


def _certified_section(stage_run: Path, absent: dict[str, str]) -> dict[str, Any] | None:
    path = stage_run / "certify" / "summary.json"
    if not path.is_file():
        absent.setdefault("certified", f"{path} is missing")
        return None
    summary = read_json(path)
    n = int(summary["n_images"])
    out = {k: rate_number(int(summary[k]), n, f"images {k}") for k in ("flippable", "certified", "undecided")}
    for k in ("rate_lower", "rate_upper"):
        v = summary.get(k)
        if is_number(v):
            out[k] = number(v["value"], v["ci_low"], v["ci_high"], v["n"], v.get("method", f"certify's {k}"))
    out.setdefault("rate_lower", rate_number(int(summary["flippable"]), n, "flippable images (lower bound)"))
    out.setdefault("rate_upper", rate_number(int(summary["flippable"]) + int(summary["undecided"]), n,
                                             "flippable or undecided images (upper bound)"))
    return out


def _dangerous_pixels(corner_dir: Path, dataset: GalaxyDataset, absent: dict[str, str]) -> list[dict] | None:
    flipmap = corner_dir / "flipmap.npz"
    catalog = dataset.catalog("test")
    if not flipmap.is_file():
        absent["dangerous_pixels"] = "no corner-search flip map"
        return None
    if not catalog or "rpetro_arcsec" not in catalog[0] or CENTRE_BAND not in dataset.bands:
        absent["dangerous_pixels"] = ("the test catalogue has no Petrosian radii (rpetro_arcsec) or the data no "
                                      f"{CENTRE_BAND} band: the flipping pixels cannot be placed in units of the "
                                      "galaxy's size")
        return None
    with np.load(flipmap, allow_pickle=False) as npz:
        index, flips = np.asarray(npz["test_index"]), np.asarray(npz["flips"]).any(axis=1)
    raw = dataset.images("Y10", "test", stretched=False)
    band = dataset.bands.index(CENTRE_BAND)
    counts, area = [], None
    for t, f in zip(index, flips):
        centre = np.array([light_centroid(np.asarray(raw[int(t)][band]))])
        scale = np.array([float(catalog[int(t)]["rpetro_arcsec"]) / PIXEL_SCALE])
        shares = dangerous_pixel_shares(f[None], centre, scale, DANGER_RADII)
        total = shares["n_positions"]
        counts.append([0.0 if total == 0 else s * total for s in shares["shares"].values()])
        area = shares["area_shares"] if area is None else area
    counts_arr = np.asarray(counts)
    totals = counts_arr.sum(axis=1)
    regions = list(area) if area is not None else []
    out = []
    for j, region in enumerate(regions):
        def share(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
            return np.sum(a, axis=axis) / np.sum(b, axis=axis)
        interval = bootstrap_interval((counts_arr[:, j], totals), share, n_resamples=CARD_RESAMPLES, seed=BOOTSTRAP_SEED,
                                      unit="attacked images")
        num = interval_number(interval)
        num["method"] = f"share of the {int(totals.sum())} flipping positions in {region}; {num['method']}"
        out.append({"region": region, "share": num, "area_share": float(area[region])})
    return out


# --------------------------------------------------------------------------------------
# the headline
# --------------------------------------------------------------------------------------
def _pick(d: Mapping[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


#: the range each card number cannot leave (accuracies, rates, agreements, ECE: [0, 1]; an accuracy
#: drop: [-1, 1]); mCEs are ratios without a bound. Pooled intervals are cut to it.
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    **{key: (0.0, 1.0) for key in (
        "clean_accuracy", "corruption_accuracy", "ece", "one_pixel_flip_rate", "depth_agreement",
        "corruption_stability", "worst_corruption_stability", "de_flip_rate", "clean_accuracy_y1", "ece_y1",
        "corner_flip_rate", "certified_flippable_rate", "certified_upper_rate")},
    "depth_shift_drop": (-1.0, 1.0),
}


def headline(results: Mapping[str, Any], unlabelled: bool) -> list[dict[str, Any]]:
    """The five numbers of the card's headline panel (those the card has), each with its key,
    label and which direction is better."""
    one = results.get("one_pixel", {})
    if _pick(one, "certified", "rate_lower") is not None:
        pixel = ("one_pixel_flip_rate", _pixel_label("one-pixel flip rate (certified lower bound)", one, "certified"),
                 one["certified"]["rate_lower"])
    elif "corner_search_rate" in one:
        pixel = ("one_pixel_flip_rate", _pixel_label("one-pixel flip rate (corner search, a lower bound)", one,
                                                     "corner_search"), one["corner_search_rate"])
    elif "de_rate" in one:
        pixel = ("one_pixel_flip_rate", _pixel_label("one-pixel flip rate (differential evolution)", one, "de"),
                 one["de_rate"])
    else:
        pixel = None
    corr = results.get("corruptions") or {}
    if unlabelled:
        items = [("depth_agreement", "prediction kept on the shallower (Y1) image",
                  _pick(results, "clean", "Y1", "agreement"), "higher"),
                 ("corruption_stability", "prediction kept under survey corruptions (mean)",
                  corr.get("mean_stability"), "higher"),
                 ("worst_corruption_stability", "prediction kept, worst corruption x severity",
                  corr.get("worst_stability"), "higher"),
                 ("de_flip_rate", _pixel_label("one-pixel flip rate (differential evolution)", one, "de"),
                  one.get("de_rate"), "lower")]
    else:
        items = [("clean_accuracy", "clean accuracy (Y10)", _pick(results, "clean", "Y10", "accuracy"), "higher"),
                 ("depth_shift_drop", "accuracy drop Y10 -> Y1", results.get("depth_shift_drop"), "lower"),
                 ("corruption_accuracy", "accuracy under survey corruptions (mean)", corr.get("mean_accuracy"),
                  "higher"),
                 ("ece", "calibration error (ECE, Y10)", _pick(results, "clean", "Y10", "ece"), "lower")]
    if pixel is not None and not (unlabelled and pixel[2] is one.get("de_rate")):  # not DE's rate twice
        items.append((pixel[0], pixel[1], pixel[2], "lower"))
    return [{"key": k, "label": label, "number": num, "better": better}
            for k, label, num, better in items if num is not None]


def board(results: Mapping[str, Any], unlabelled: bool) -> list[dict[str, Any]]:
    """The numbers a leaderboard shows beside the headline (those the card has), headline-shaped:
    Y1 accuracy and calibration, mCE and the mCE on the corruptions survey-mix never trains on,
    and each one-pixel search's rate apart (DE, corner search, certified lower and upper bound)."""
    one = results.get("one_pixel", {})
    corr = results.get("corruptions") or {}
    items = [] if unlabelled else [
        ("clean_accuracy_y1", "clean accuracy (Y1)", _pick(results, "clean", "Y1", "accuracy"), "higher"),
        ("ece_y1", "calibration error (ECE, Y1)", _pick(results, "clean", "Y1", "ece"), "lower"),
        ("mce", "mCE (all corruptions, vs the baseline)", corr.get("mce"), "lower"),
        ("held_out_mce", "mCE on corruptions survey-mix never trains on", corr.get("held_out_mce"), "lower")]
    items += [("de_flip_rate", _pixel_label("one-pixel flip rate, differential evolution", one, "de"),
               one.get("de_rate"), "lower"),
              ("corner_flip_rate", _pixel_label("one-pixel flip rate, corner search (lower bound)", one, "corner_search"),
               one.get("corner_search_rate"), "lower"),
              ("certified_flippable_rate", _pixel_label("one-pixel flip rate, proven flippable (lower bound)", one,
                                                        "certified"), _pick(one, "certified", "rate_lower"), "lower"),
              ("certified_upper_rate", _pixel_label("one-pixel flip rate, not certified robust (upper bound)", one,
                                                    "certified"), _pick(one, "certified", "rate_upper"), "lower")]
    return [{"key": k, "label": label, "number": num, "better": better}
            for k, label, num, better in items if num is not None]


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
def _stage_settings(stage_run: Path) -> dict[str, Any]:
    """The settings the stages actually used, from their summaries."""
    out: dict[str, Any] = {}
    for name, path in (("corruptions", robustness_dir(stage_run) / "summary.json"),
                       ("de", attack_dir(stage_run, "de") / "summary.json"),
                       ("corner_search", attack_dir(stage_run, "exhaustive") / "summary.json"),
                       ("certify", stage_run / "certify" / "summary.json")):
        if path.is_file():
            s = read_json(path)
            settings = dict(s.get("settings") or {})
            for k in ("data", "device", "batch_size"):
                settings.pop(k, None)
            if name in ("de", "corner_search"):
                settings.update({"attacked": s.get("attacked"), "images_drawn": s.get("images_drawn"),
                                 "value_range": s.get("value_range")})
            if name == "certify":
                settings = {k: s.get(k) for k in ("n_images", "settings", "config") if k in s}
            out[name] = settings
    return out


#: settings that vary between models measured with one protocol (not part of its fingerprint)
PER_MODEL_SETTINGS = ("attacked", "run", "baseline")


def protocol_fingerprint(settings: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) of the settings the stages used, less :data:`PER_MODEL_SETTINGS`:
    cards with the same fingerprint ran the same corruptions, attack subsample and budgets."""
    kept = {stage: {k: v for k, v in s.items() if k not in PER_MODEL_SETTINGS} if isinstance(s, Mapping) else s
            for stage, s in settings.items()}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _copy_figures(stage_run: Path, figures: Path) -> None:
    for source, name in ((stage_run / RELIABILITY_NAME, "reliability.png"),
                         (stage_run / "confusion_Y10.png", "confusion_Y10.png"),
                         (stage_run / "confusion_Y1.png", "confusion_Y1.png"),
                         (robustness_dir(stage_run) / "accuracy.png", "corruption_accuracy.png"),
                         (robustness_dir(stage_run) / "corruption_grid.png", "corruption_grid.png")):
        if source.is_file():
            shutil.copy2(source, figures / name)


def card_run(run: str | Path, out: str | Path, *, data: str | Path | None = None, level: str = "quick",
             seed: int = 0, unlabelled: bool = False, baseline: str | Path | None = None, device: str = "auto",
             run_missing: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Make the robustness card of a run: run what is missing, collect, write ``CARD/card.json``.

    Args:
        run: a finished run folder (trained, or a TorchScript model adopted with ``--model-file``).
        out: the card folder (``card.json``, ``figures/``, ``stages/`` when the stages run on a copy).
        data: the dataset to measure on [default: the run's own].
        level: ``tiny`` (smoke tests), ``quick`` or ``full`` (:data:`PROTOCOLS`) [default: "quick"].
        seed: seed of the corruptions and of the attacks' subsample [default: 0].
        unlabelled: label-free card: prediction stability instead of accuracy [default: False].
        baseline: the regular run whose errors normalise CE and mCE [default: the benchmark's own
            choice, a regular run of the same model beside the run].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        run_missing: run the stages the run lacks [default: True]; else leave them absent.
        overwrite: replace a finished card in ``out`` [default: False].

    Returns:
        The card (also in ``CARD/card.json``; render it with
        :func:`deepadversaries.card.render.render_card`).

    Raises:
        OptionError: an unknown level; FileError: a run that is not finished, a dataset that is
            missing, a finished card without ``overwrite``.
    """
    started = time.perf_counter()
    protocol = PROTOCOLS[check_choice(level, PROTOCOLS, "--level")]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise OptionError(f"--seed must be a non-negative integer, got {seed!r}")
    run, out = Path(run), Path(out)
    config = read_run_config(run)
    if not (run / TRAINING_DONE).is_file():
        raise file_error(run, f"the training has not finished (no {TRAINING_DONE}); run 'deepadv train' first")
    if not kept_model_path(run, config).is_file():
        raise file_error(kept_model_path(run, config), "checkpoint not found")
    data_path = Path(data) if data is not None else Path(config.data)
    if not data_path.is_dir():
        raise file_error(data_path, "the run's dataset folder is missing" if data is None else
                         "dataset folder not found")
    dataset = load_dataset(data_path)
    if out.exists() and (out / CARD_NAME).is_file() and not overwrite:
        raise file_error(out / CARD_NAME, "a finished card exists; pass --overwrite to replace it")
    baseline_path = Path(baseline) if baseline is not None else None
    if baseline_path is not None:
        read_run_config(baseline_path)
    n_test = len(dataset.labels("test"))
    info(f"card ({protocol.level}): at most ~{estimate_seconds(protocol, n_test, len(dataset.domains), 14) / 60:.0f}"
         " min on a 2-core CPU for a run with no stage done")
    out.mkdir(parents=True, exist_ok=True)
    absent: dict[str, str] = {}
    with OutputLock(out, "card"):
        (out / CARD_NAME).unlink(missing_ok=True)
        stage_run = _stage_run(run, config, dataset, data_path, out, unlabelled, device)
        timing = _run_missing(stage_run, protocol, int(seed), baseline_path, device, run_missing, absent, unlabelled)
        figures = out / FIGURES_DIR
        figures.mkdir(exist_ok=True)
        _copy_figures(stage_run, figures)
        results = _results(stage_run, unlabelled, absent, figures)
        timing["card_s"] = round(time.perf_counter() - started, 2)
        card = _assemble_card(run, config, dataset, stage_run, protocol, int(seed), unlabelled, results, absent,
                              timing, figures)
        validate_card(card, out / CARD_NAME)
        write_json(out / CARD_NAME, card)
    return card


def _stage_run(run: Path, config: RunConfig, dataset: GalaxyDataset, data_path: Path, out: Path, unlabelled: bool,
               device: str) -> Path:
    """Where the card's stages run: the run itself (its own labelled dataset), or a copy of it in
    ``CARD/stages/run`` pointed at the card's dataset (another dataset, or the model's own
    predictions as labels in label-free mode)."""
    if unlabelled:
        stage_data = predicted_dataset(dataset, run, out / STAGES_DIR / "data", resolve_device(device))
        return work_run(run, config, stage_data, out / STAGES_DIR / "run")
    if not _same_path(data_path, config.data):
        return work_run(run, config, data_path, out / STAGES_DIR / "run")
    return run


def _results(stage_run: Path, unlabelled: bool, absent: dict[str, str], figures: Path) -> dict[str, Any]:
    """The card's ``results``: clean accuracy and calibration, the depth-shift drop, the corruptions and the
    one-pixel section, each read from the stage files (what is missing is said in ``absent``)."""
    stage_dataset = load_dataset(read_run_config(stage_run).data)
    clean, drop = _clean_section(stage_run, stage_dataset, unlabelled, absent)
    results: dict[str, Any] = {"clean": clean}
    if drop is not None:
        results["depth_shift_drop"] = drop
    corruptions = _corruption_section(stage_run, unlabelled, absent)
    if corruptions is not None:
        results["corruptions"] = corruptions
    results["one_pixel"] = _one_pixel_section(stage_run, stage_dataset, unlabelled, absent, figures)
    return results


def _assemble_card(run: Path, config: RunConfig, dataset: GalaxyDataset, stage_run: Path, protocol: Protocol,
                   seed: int, unlabelled: bool, results: dict[str, Any], absent: dict[str, str],
                   timing: dict[str, Any], figures: Path) -> dict[str, Any]:
    """The card dict (schema :data:`SCHEMA_VERSION`): model, data, protocol, headline, results, what is absent
    and what is unreliable."""
    sha, hashed = dataset_sha256(dataset, labelled=not unlabelled)
    settings = _stage_settings(stage_run)
    return {
        "kind": KIND, "schema_version": SCHEMA_VERSION, "created": utc_now(),
        "model": _model_block(run, config),
        "data": {"path": str(dataset.path.resolve()), "sha256": sha, "sha256_of": hashed,
                 "labelled": not unlabelled, "domains": dataset.domain_names, "bands": list(dataset.bands),
                 "classes": list(dataset.classes), "image_shape": list(dataset.image_shape),
                 "n_test": len(dataset.labels("test")), "value_range": _value_range(dataset)},
        "protocol": {"id": protocol.id + ("/unlabelled" if unlabelled else ""), "version": PROTOCOL_VERSION,
                     "level": protocol.level, "mode": "unlabelled" if unlabelled else "labelled", "seed": seed,
                     "definition": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(protocol).items()},
                     "settings": settings, "fingerprint": protocol_fingerprint(settings),
                     "package_version": __version__, "stages_run_in": str(stage_run.resolve()),
                     "images": _images(results), "timing": timing},
        "headline": headline(results, unlabelled),
        "board": board(results, unlabelled),
        "results": results,
        "absent": absent,
        "unreliable": unreliable_numbers(results),
        "figures": sorted(p.name for p in figures.glob("*.png")),
    }


def _images(results: Mapping[str, Any]) -> dict[str, int]:
    """How many images each part of the card rests on."""
    out = {}
    for key, path in (("evaluate", ("clean", "Y10", "accuracy")), ("evaluate", ("clean", "Y10", "agreement")),
                      ("de", ("one_pixel", "de_rate")), ("corner_search", ("one_pixel", "corner_search_rate")),
                      ("certify", ("one_pixel", "certified", "flippable"))):
        num = _pick(results, *path)
        if num is not None:
            out[key] = int(num["n"])
    rows = _pick(results, "corruptions", "rows")
    if rows:
        out["corruptions"] = int(next(iter(v for k, v in rows[0].items() if is_number(v)))["n"])
    return out
