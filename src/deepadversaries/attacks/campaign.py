"""The one-pixel attack campaign of the paper (SPEC 7), resumable: ``deepadv attack``.

Protocol: a seeded random subsample of the Y10 test set; only images the model
classifies correctly are attacked; in targeted mode the other K - 1 classes are tried in
turn (ascending class order; the paper's K = 3) and the first success is kept. Classes,
bands and image shape are the dataset's (``dataset.json``), the model the run's
(trained, or an adopted TorchScript model). The search is differential
evolution (the paper's, ``RUN/attack/``), the corner search — every position × a value set,
exhaustive over that set only (``RUN/attack_exhaustive/``, which also writes ``flipmap.npz``) or Sparse-RS
(``RUN/attack_sparse_rs/``); the new pixel's values lie in the ``input`` range [0, 1] or the
``physical`` one (:func:`deepadversaries.attacks.values.make_value_range`). Writes, in that folder:

- ``results.csv``: one row per attacked image (subsample order);
- ``latents.npz``: ``test_index``, ``z_y10``, ``z_y1``, ``z_1p`` (n, D; D = 256 for the
  package's models), ``success`` — rows in the order of ``results.csv``;
- ``flipmap.npz`` (exhaustive only): per attacked image, per target and position, the best
  p(target) and whether the position flips the image (``map_targets``, ``best_target_prob``,
  ``flips``, ``min_true_prob``, ``flips_untargeted``, ``values_tried``);
- ``summary.json``: counts, success rate, iterations, queries, settings, departures from the
  paper's settings, wall time — written last, it marks a finished campaign.

Each finished image is appended (one ``write`` + ``fsync``) to ``progress.jsonl``; a
killed campaign, run again with the same settings, skips those images. Every image's
search is seeded by (seed, test index), and the final probabilities and latents are
computed once at the end in a fixed order, so a resumed campaign ends with the same
files as an uninterrupted one (only ``summary.json``'s ``timing`` differs).
"""

from __future__ import annotations

import contextlib
import csv
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import TextColumn

from deepadversaries import BANDS, CLASSES
from deepadversaries.attacks.base import Attack
from deepadversaries.attacks.candidates import set_pixels
from deepadversaries.attacks.exhaustive import ExhaustiveResult
from deepadversaries.attacks.rules import is_success, subsample_index
from deepadversaries.attacks.searches import search_spec
from deepadversaries.attacks.values import ValueRange, make_value_range
from deepadversaries.config import AttackConfig
from deepadversaries.cpu_threads import ThreadGovernor
from deepadversaries.data.dataset import GalaxyDataset, image_file, load_dataset
from deepadversaries.devices import resolve_device
from deepadversaries.models.equivariant import TTA_CHOICES, with_tta
from deepadversaries.errors import OptionError, check_choice, file_error
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.io import (
    OutputLock, append_json_line, read_json, read_progress_log, remove_temporaries, write_csv, write_json,
    write_npz,
)
from deepadversaries.models.networks import check_input_shape, load_model
from deepadversaries.progress import info, make_progress
from deepadversaries.models.runs import RunConfig, attack_dir, check_same_classes, kept_model_path, read_run_config

PROGRESS_NAME = "progress.jsonl"
RESULTS_NAME = "results.csv"
LATENTS_NAME = "latents.npz"
SUMMARY_NAME = "summary.json"
FLIPMAP_NAME = "flipmap.npz"
#: per-image maps of an unfinished exhaustive campaign (stacked into flipmap.npz at the end)
MAPS_DIR = ".maps"
#: the arrays of flipmap.npz, stacked over the attacked images
MAP_ARRAYS = ("best_target_prob", "flips", "min_true_prob", "flips_untargeted")
#: images per forward pass when computing the final probabilities and latents
EVAL_BATCH = 64


def result_columns(pixels: int, classes: tuple[str, ...] = CLASSES, bands: tuple[str, ...] = BANDS) -> list[str]:
    """The columns of ``results.csv`` for an L-pixel campaign: a ``value_<band>`` per band and
    a ``p_<class>`` per class (the paper's: value_g, value_r, value_i; p_spiral, ...)."""
    cols = ["test_index", "galaxy_id", "true", "predicted", "target", "success", "iterations"]
    for k in range(1, pixels + 1):
        sfx = "" if pixels == 1 else f"_{k}"
        cols += [f"x{sfx}", f"y{sfx}"] + [f"value_{b}{sfx}" for b in bands]
    cols += [f"p_{c}" for c in classes]
    cols += ["iterations_total", "evaluations", "targets_tried"]
    return cols


# --------------------------------------------------------------------------------------
# the campaign
# --------------------------------------------------------------------------------------
@dataclass
class Subsample:
    """The drawn test images and which of them are attacked.

    Attributes:
        test_index: (n_images,) sorted test-set indices drawn with the campaign's seed.
        images: (n_images, B, H, W) Y10 images, model input.
        labels: (n_images,) true classes.
        predicted: (n_images,) the model's classes.
        attacked_rows: positions in the subsample of the correctly classified images.
    """

    test_index: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    attacked_rows: np.ndarray

    @property
    def attacked_index(self) -> np.ndarray:
        """Test-set indices of the attacked images."""
        return self.test_index[self.attacked_rows]


def attack_run(run: str | Path, config: AttackConfig | None = None, *, data: str | Path | None = None,
               device: str = "auto", batch_images: int | None = None, chunk_size: int | None = None,
               threads: int | None = None, adaptive_threads: bool = True, overwrite: bool = False,
               tta: str = "none") -> dict[str, Any]:
    """Run (or resume) the one-pixel attack campaign on a run's kept model.

    Steps: check the inputs; draw the seeded subsample and keep the correctly classified
    images; resume the images already in ``progress.jsonl``; search the others; compute the
    final probabilities and latents (Y10, Y1, 1P) of every attacked image; write
    ``results.csv``, ``latents.npz`` and, last, ``summary.json``.

    Args:
        run: a run folder with a kept checkpoint (``deepadv train``).
        config: the campaign's settings [default: ``AttackConfig.from_preset("quick")``].
        data: the dataset folder [default: the one recorded in the run's ``config.json``].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        batch_images: images searched at once [default: 2 on a CPU, 64 on a GPU].
        chunk_size: candidates per forward pass [default: the evaluator's].
        threads: the CPU threads' ceiling [default: torch's count].
        adaptive_threads: on a CPU, fewer threads while other processes hold cores
            (:class:`~deepadversaries.cpu_threads.ThreadGovernor`; results unchanged) [default: True].
        overwrite: discard a finished or unfinished campaign and start afresh [default: False].
        tta: ``none`` or ``d4``: attack the model averaged over the eight rotations and flips
            of each image (:class:`~deepadversaries.models.equivariant.D4Average`, every candidate costs
            eight forward passes); written to ``<attack folder>_tta_d4/`` [default: "none"].

    Returns:
        The content of ``summary.json``.
    """
    t_start = time.perf_counter()
    run = Path(run)
    config = config if config is not None else AttackConfig()
    for name, value in (("--batch-images", batch_images), ("--threads", threads), ("--chunk-size", chunk_size)):
        if value is not None and int(value) < 1:
            raise OptionError(f"{name} must be at least 1, got {value}")
    run_config, dataset = _check_inputs(run, config, data)
    dev = resolve_device(device)
    out = attack_dir(run, config.search)
    if check_choice(tta, TTA_CHOICES, "--tta") != "none":
        out = out.with_name(f"{out.name}_tta_{tta}")
    with OutputLock(out, "attack"):
        _prepare_output(out, overwrite)
        model = with_tta(load_model(run, dev), tta)
        check_input_shape(model, dataset.image_shape, dataset.path / image_file("Y10", "test"))
        check_same_classes(run_config, dataset.classes, dataset.path)
        value_range = _value_range(config, dataset)
        sample = draw_subsample(model, dataset, config, dev)
        records, wall_before, sessions = read_progress_log(out / PROGRESS_NAME, config.to_json(), "campaign")
        todo = _images_to_attack(out / PROGRESS_NAME, sample, records)
        governor = ThreadGovernor(threads, adaptive=adaptive_threads) if dev.type == "cpu" else None
        attack = _make_search(config, model, value_range, dev, batch_images=batch_images, chunk_size=chunk_size,
                              threads=governor)
        _search(attack, sample, todo, records, out, governor, session=sessions, t_start=t_start)
        success = _write_results(run, out, model, dataset, sample, records, config, dev, tta=tta)
        wall = wall_before + time.perf_counter() - t_start
        summary = _summary(run, run_config, dataset, sample, records, success, config, timing={
            "wall_time_s": round(wall, 3), "sessions": sessions + 1,
            "images_resumed": len(sample.attacked_rows) - len(todo), "device": str(dev),
            "evaluator": getattr(attack, "last_evaluator", None),
            "cpu_threads": governor.summary() if governor is not None else None})
        summary["value_range"] = value_range.describe()
        summary["tta"] = tta
        if config.search == "exhaustive":
            summary.update(_write_flipmap(out, sample, records, run, dataset.classes))
        write_json(out / SUMMARY_NAME, summary)
        (out / PROGRESS_NAME).unlink(missing_ok=True)
    return summary


def _value_range(config: AttackConfig, dataset: GalaxyDataset) -> ValueRange:
    """The values a changed pixel may take, one interval per band of the dataset (through the
    Y10 domain's normalisation for ``physical``, which reads the raw pixels as electrons)."""
    bands = len(dataset.bands)
    if config.value_range == "input":
        return make_value_range("input", bands=bands)
    forward, inverse = dataset.input_transform("Y10")
    return make_value_range(config.value_range, forward, inverse, bands=bands)


def _make_search(config: AttackConfig, model: Any, value_range: ValueRange, device: Any, *,
                 batch_images: int | None, chunk_size: int | None, threads: ThreadGovernor | None) -> Attack:
    """The campaign's search engine: the registered search's builder
    (:mod:`deepadversaries.attacks.searches`), with the settings every search shares."""
    common = dict(mode=config.mode, success=config.success, seed=config.seed, device=device, chunk_size=chunk_size,
                  bf16=config.precision == "bf16", value_range=value_range, threads=threads)
    return search_spec(config.search).build(model, config, batch_images=batch_images, **common)


def _check_inputs(run: Path, config: AttackConfig, data: str | Path | None) -> tuple[RunConfig, GalaxyDataset]:
    """The run's config and dataset; clear errors for a missing checkpoint or a too large sample."""
    run_config = read_run_config(run)
    ckpt = kept_model_path(run, run_config)
    if not ckpt.is_file():
        raise file_error(ckpt, "checkpoint not found; train the run first ('deepadv train')")
    dataset = load_dataset(Path(data) if data is not None else Path(run_config.data))
    bands = dataset.bands
    for value in config.values:
        if len(value) != len(bands):
            raise OptionError(f"--values {','.join(f'{v:g}' for v in value)}: a value has {_count(len(bands))} "
                              f"band{'s' if len(bands) > 1 else ''} ({', '.join(bands)}), one number each")
    n_test = len(dataset.labels("test"))
    if config.n_images > n_test:
        raise file_error(dataset.path, f"--n-images {config.n_images} is larger than the test set ({n_test} images)")
    return run_config, dataset


def _count(n: int) -> str:
    """A small count in words (one ... ten), else digits."""
    words = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse a finished campaign unless ``overwrite``; clear temporaries (and everything, with overwrite)."""
    summary_path = out / SUMMARY_NAME
    if summary_path.is_file() and not overwrite:
        (out / PROGRESS_NAME).unlink(missing_ok=True)  # left by a run killed right after its summary
        raise file_error(summary_path, "this run's attack campaign is finished; add --overwrite to run it again")
    remove_temporaries(out)
    if overwrite:
        for name in (SUMMARY_NAME, RESULTS_NAME, LATENTS_NAME, PROGRESS_NAME, FLIPMAP_NAME):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / MAPS_DIR, ignore_errors=True)


def draw_subsample(model: Any, dataset: GalaxyDataset, config: AttackConfig, device: Any) -> Subsample:
    """The campaign's seeded random subsample of the test set (``config.n_images`` images drawn with
    ``config.seed``), as model input, with the model's predictions (``deepadv certify`` draws the same)."""
    labels_all = dataset.labels("test")
    subsample = subsample_index(len(labels_all), config.n_images, config.seed)
    raw = dataset.images("Y10", "test", stretched=False)
    images = dataset.model_input(np.asarray(raw[subsample]), "Y10")
    labels = labels_all[subsample]
    predicted = forward_batches(model, images, batch_size=EVAL_BATCH, device=device).predicted
    return Subsample(subsample, images, labels, predicted, np.flatnonzero(predicted == labels))


def _images_to_attack(progress_path: Path, sample: Subsample, records: dict[int, dict]) -> np.ndarray:
    """Subsample rows still to attack; an error when the progress file records foreign images."""
    attacked = sample.attacked_index
    unknown = set(records) - set(attacked.tolist())
    if unknown:
        raise file_error(progress_path, f"records images {sorted(unknown)[:5]} that this campaign does not "
                                        "attack; add --overwrite to start afresh")
    todo = np.array([r for r, t in zip(sample.attacked_rows, attacked) if int(t) not in records], dtype=np.int64)
    if len(todo) < len(attacked):
        info(f"resuming: {len(attacked) - len(todo)} of {len(attacked)} images already attacked")
    return todo


def _search(attack: Attack, sample: Subsample, todo: np.ndarray, records: dict[int, dict],
            out: Path, governor: ThreadGovernor | None, *, session: int, t_start: float) -> None:
    """Attack the images of ``todo``; append each finished image to the progress file (an
    exhaustive search's maps go to ``.maps/<test index>.npz`` first)."""
    progress_path = out / PROGRESS_NAME
    flips = sum(bool(r["success"]) for r in records.values())
    progress = make_progress(TextColumn("{task.fields[flipped]} flipped"))
    with progress, (governor or contextlib.nullcontext()):
        task = progress.add_task("one-pixel attack", total=len(sample.attacked_rows),
                                 completed=len(sample.attacked_rows) - len(todo), flipped=flips)
        if not len(todo):
            return
        keys = sample.test_index[todo]
        for res in attack.run(sample.images[todo], sample.labels[todo], keys=keys):
            rec = {"test_index": int(keys[res.index]), "target": res.target, "success": res.success,
                   "iterations": res.iterations, "iterations_total": res.iterations_total,
                   "evaluations": int(res.evaluations), "targets_tried": list(res.targets_tried),
                   "rejected": res.rejected, "pixels": res.pixels.tolist(), "values": res.values.tolist(),
                   "p_target": res.p_target, "session": session,
                   "elapsed_s": round(time.perf_counter() - t_start, 3)}
            if isinstance(res, ExhaustiveResult):
                write_npz(out / MAPS_DIR / f"{rec['test_index']}.npz", map_targets=np.asarray(res.map_targets),
                          values_tried=res.values_tried, **{k: getattr(res, k) for k in MAP_ARRAYS})
                rec.update(flip_positions=res.flip_positions(), seconds=round(res.seconds, 3))
            append_json_line(progress_path, rec)
            records[rec["test_index"]] = rec
            flips += int(res.success)
            progress.update(task, advance=1, flipped=flips)


def _write_results(run: Path, out: Path, model: Any, dataset: GalaxyDataset, sample: Subsample,
                   records: dict[int, dict], config: AttackConfig, device: Any, tta: str = "none") -> np.ndarray:
    """Re-verify every kept pixel, compute the latents and write results.csv and latents.npz.

    Returns the (n_attacked,) success flags: a claimed success counts only when the plain
    forward pass of the rebuilt image confirms it.
    """
    rows_sub, index = sample.attacked_rows, sample.attacked_index
    perturbed = np.stack([set_pixels(sample.images[r], records[int(t)]["pixels"], records[int(t)]["values"])
                          for r, t in zip(rows_sub, index)]) if len(rows_sub) else sample.images[:0]
    one_pixel = forward_batches(model, perturbed, batch_size=EVAL_BATCH, device=device)
    z_y10 = forward_batches(model, sample.images[rows_sub], batch_size=EVAL_BATCH, device=device).latents
    if dataset.has_domain("Y1"):
        y1 = dataset.model_input(np.asarray(dataset.images("Y1", "test", stretched=False)[index]), "Y1")
        model_y1 = with_tta(load_model(run, device, domain="Y1"), tta)  # AdaBN: Y1 statistics; else the same
        z_y1 = forward_batches(model_y1, y1, batch_size=EVAL_BATCH, device=device).latents
    else:
        z_y1 = np.full_like(z_y10, np.nan)
    p_1p = one_pixel.probabilities
    galaxy_ids = dataset.galaxy_ids("test")
    classes, bands = dataset.classes, dataset.bands
    rows, success = [], []
    for k, (r, t) in enumerate(zip(rows_sub, index)):
        rec = records[int(t)]
        confirmed = bool(is_success(p_1p[k:k + 1], int(sample.labels[r]), rec["target"], config.success)[0])
        success.append(confirmed and bool(rec["success"]))
        rows.append(_result_row(rec, int(t), galaxy_ids, int(sample.labels[r]), int(sample.predicted[r]),
                                success[-1], p_1p[k], config.pixels, classes, bands))
    write_csv(out / RESULTS_NAME, rows, result_columns(config.pixels, classes, bands))
    success_flags = np.asarray(success, bool)
    write_npz(out / LATENTS_NAME, test_index=index.astype(np.int64), z_y10=z_y10.astype(np.float32),
              z_y1=z_y1.astype(np.float32), z_1p=one_pixel.latents.astype(np.float32), success=success_flags)
    return success_flags


def _result_row(rec: dict[str, Any], test_index: int, galaxy_ids: np.ndarray, true: int, predicted: int,
                success: bool, probs: np.ndarray, pixels: int, classes: tuple[str, ...] = CLASSES,
                bands: tuple[str, ...] = BANDS) -> dict[str, Any]:
    """One row of results.csv (class names from ``classes``, value columns from ``bands``)."""
    target = rec["target"]
    row = {"test_index": test_index, "galaxy_id": int(galaxy_ids[test_index]), "true": classes[true],
           "predicted": classes[predicted], "target": "" if target is None else classes[target],
           "success": success, "iterations": rec["iterations"]}
    for j, ((px, py), v) in enumerate(zip(rec["pixels"], rec["values"])):
        sfx = "" if pixels == 1 else f"_{j + 1}"
        row.update({f"x{sfx}": px, f"y{sfx}": py})
        row.update({f"value_{b}{sfx}": float(np.float32(v[k])) for k, b in enumerate(bands)})
    row.update({f"p_{c}": float(probs[j]) for j, c in enumerate(classes)})
    row.update({"iterations_total": rec["iterations_total"], "evaluations": rec["evaluations"],
                "targets_tried": " ".join(classes[c] for c in rec["targets_tried"])})
    return row


def _summary(run: Path, run_config: RunConfig, dataset: GalaxyDataset, sample: Subsample, records: dict[int, dict],
             success: np.ndarray, config: AttackConfig, timing: dict[str, Any]) -> dict[str, Any]:
    """The content of summary.json: counts, rates, iterations, settings, departures, timing."""
    index = sample.attacked_index
    recs = [records[int(t)] for t in index]
    iters = np.array([r["iterations"] for r in recs], dtype=np.float64)
    iters_ok = iters[success] if len(success) else iters
    n_flip = int(success.sum())
    return {
        "kind": "deepadv-attack",
        "run": str(run.resolve()), "data": str(dataset.path.resolve()), "model": run_config.model,
        "method": run_config.method, "classes": list(dataset.classes), "bands": list(dataset.bands),
        "image_shape": list(dataset.image_shape),
        "images_drawn": int(len(sample.test_index)), "correctly_classified": int(len(sample.attacked_rows)),
        "attacked": int(len(index)), "flipped": n_flip,
        "success_rate": n_flip / len(index) if len(index) else None,
        "mean_iterations": float(iters.mean()) if len(iters) else None,
        "median_iterations": float(np.median(iters)) if len(iters) else None,
        "mean_iterations_flipped": float(iters_ok.mean()) if n_flip else None,
        "median_iterations_flipped": float(np.median(iters_ok)) if n_flip else None,
        "flipped_in_initial_population": int(sum(1 for r, ok in zip(recs, success) if ok and r["iterations"] == 0)),
        "success_claims_not_confirmed": int(sum(1 for r, ok in zip(recs, success) if r["success"] and not ok)),
        "claims_rejected_during_search": int(sum(r.get("rejected", 0) for r in recs)),
        "evaluations": int(sum(r["evaluations"] for r in recs)),
        "search": config.search,
        "queries_to_flip": _quantiles([r["evaluations"] for r, ok in zip(recs, success) if ok]),
        "median_p_target_flipped": (float(np.median([r["p_target"] for r, ok in zip(recs, success)
                                                     if ok and r.get("p_target") is not None]))
                                    if n_flip and config.mode == "targeted" else None),
        "settings": config.to_json(),
        "departures_from_paper": config.departures_from_paper(),
        "y1_latents": dataset.has_domain("Y1"),
        "subsample_test_index": sample.test_index.tolist(),
        "iterations_note": "generations evolved before the first success (0 = the initial population "
                           "already held a successful pixel); the cap for failures",
        "timing": timing,
    }


def _quantiles(values: list[float]) -> dict[str, float] | None:
    """Median and quartiles of a list (None when empty)."""
    if not values:
        return None
    q = np.percentile(np.asarray(values, dtype=np.float64), [25, 50, 75])
    return {"p25": float(q[0]), "median": float(q[1]), "p75": float(q[2]), "n": len(values)}


def _write_flipmap(out: Path, sample: Subsample, records: dict[int, dict], run: Path,
                   classes: tuple[str, ...] = CLASSES) -> dict[str, Any]:
    """Stack the per-image maps into ``flipmap.npz`` (attacked order) and summarise them.

    Returns the summary's extra fields: the corner search's flip rate (a lower bound of the
    one-pixel flip rate: only the value set was tried) overall and per target, the flipping
    positions per image, seconds per image and, when the run has a finished DE campaign on
    the same images, the share of the images flippable under the value set that DE flipped.
    ``exact_flip_rate`` and ``exact_flip_rate_per_target`` repeat the corner rates under
    their old names for readers written before ``deepadv certify``; they are not exact.
    """
    index = sample.attacked_index
    maps = []
    for t in index:
        with np.load(out / MAPS_DIR / f"{int(t)}.npz", allow_pickle=False) as npz:
            maps.append({k: np.asarray(npz[k]) for k in npz.files})
    if maps:
        arrays = {k: np.stack([m[k] for m in maps]) for k in MAP_ARRAYS}
        write_npz(out / FLIPMAP_NAME, test_index=index.astype(np.int64), map_targets=np.stack(
            [m["map_targets"] for m in maps]), values_tried=maps[0]["values_tried"], **arrays)
    flippable = np.array([bool(records[int(t)]["success"]) for t in index], dtype=bool)
    per_target: dict[str, float] = {}
    for m in maps:
        for k, target in enumerate(m["map_targets"].tolist()):
            name = classes[int(target)]
            per_target.setdefault(name, 0.0)
            per_target[name] += float(m["flips"][k].any())
    n_true = {classes[c]: int(sum(int(c) in m["map_targets"].tolist() for m in maps)) for c in range(len(classes))}
    extra: dict[str, Any] = {
        "corner_flip_rate": float(flippable.mean()) if len(flippable) else None,
        "corner_flip_rate_per_target": {c: per_target[c] / n_true[c] for c in per_target if n_true[c]},
        "flip_positions_per_image": _quantiles([records[int(t)]["flip_positions"] for t in index]),
        "seconds_per_image": _quantiles([records[int(t)]["seconds"] for t in index]),
        "de_found": None,
    }
    de = attack_dir(run, "de") / SUMMARY_NAME
    if de.is_file():
        de_summary = read_json(de)
        if de_summary.get("subsample_test_index") == sample.test_index.tolist():
            with open(attack_dir(run, "de") / RESULTS_NAME, newline="", encoding="utf-8") as fh:
                de_flipped = {int(r["test_index"]) for r in csv.DictReader(fh) if r["success"] == "True"}
            exact = {int(t) for t, ok in zip(index, flippable) if ok}
            extra["de_found"] = {"flippable": len(exact), "found_by_de": len(exact & de_flipped),
                                 "share": len(exact & de_flipped) / len(exact) if exact else None}
    extra["exact_flip_rate"] = extra["corner_flip_rate"]  # old names (not exact: see the docstring)
    extra["exact_flip_rate_per_target"] = extra["corner_flip_rate_per_target"]
    shutil.rmtree(out / MAPS_DIR, ignore_errors=True)
    return extra
