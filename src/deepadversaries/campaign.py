"""The one-pixel attack campaign of the paper (SPEC 7), resumable: ``deepadv attack``.

Protocol: a seeded random subsample of the Y10 test set; only images the model
classifies correctly are attacked; in targeted mode the other two classes are tried in
turn (ascending class order) and the first success is kept. Writes, in ``RUN/attack/``:

- ``results.csv``: one row per attacked image (subsample order);
- ``latents.npz``: ``test_index``, ``z_y10``, ``z_y1``, ``z_1p`` (n, 256), ``success`` —
  rows in the order of ``results.csv``;
- ``summary.json``: counts, success rate, iterations, settings, departures from the
  paper's settings, wall time — written last, it marks a finished campaign.

Each finished image is appended (one ``write`` + ``fsync``) to ``progress.jsonl``; a
killed campaign, run again with the same settings, skips those images. Every image's
search is seeded by (seed, test index), and the final probabilities and latents are
computed once at the end in a fixed order, so a resumed campaign ends with the same
files as an uninterrupted one (only ``summary.json``'s ``timing`` differs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn

from . import CLASSES
from .attacks import MODES, SUCCESS_RULES, TARGET_THRESHOLD, UNTARGETED_THRESHOLD, OnePixelDE, set_pixels
from .cpu_threads import ThreadGovernor
from .data import apply_stretch, load_dataset
from .devices import resolve_device
from .errors import DeepAdvError, check_preset, file_error
from .io import OutputLock, remove_temporaries, write_csv, write_json, write_npz
from .models import check_input_shape, load_model
from .progress import info, make_progress
from .runs import attack_dir, best_checkpoint_path, read_run_config

#: campaign sizes; ``paper`` is the paper's, the others say how they depart from it
ATTACK_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_images": 6, "pop_size": 40, "max_iter": 4},
    "quick": {"n_images": 150, "pop_size": 400, "max_iter": 10},
    "paper": {"n_images": 150, "pop_size": 400, "max_iter": 80},
}
PAPER = ATTACK_PRESETS["paper"]
#: arithmetic of the search: float32, or bfloat16 autocast (successes verified in float32)
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
PROGRESS_NAME = "progress.jsonl"
RESULTS_NAME = "results.csv"
LATENTS_NAME = "latents.npz"
SUMMARY_NAME = "summary.json"
#: images per forward pass when computing the final probabilities and latents
EVAL_BATCH = 64


def result_columns(pixels: int) -> list[str]:
    """The columns of ``results.csv`` for an L-pixel campaign."""
    cols = ["test_index", "galaxy_id", "true", "predicted", "target", "success", "iterations"]
    for k in range(1, pixels + 1):
        sfx = "" if pixels == 1 else f"_{k}"
        cols += [f"x{sfx}", f"y{sfx}", f"value_g{sfx}", f"value_r{sfx}", f"value_i{sfx}"]
    cols += [f"p_{c}" for c in CLASSES]
    cols += ["iterations_total", "evaluations", "targets_tried"]
    return cols


def resolve_settings(preset: str, n_images: int | None, pop_size: int | None, max_iter: int | None, pixels: int,
                     mode: str, success: str, seed: int, precision: str = "fp32") -> dict[str, Any]:
    """The campaign's full settings from a preset and overrides, validated."""
    table = check_preset(preset, ATTACK_PRESETS)
    s = {"preset": preset,
         "n_images": table["n_images"] if n_images is None else int(n_images),
         "pop_size": table["pop_size"] if pop_size is None else int(pop_size),
         "max_iter": table["max_iter"] if max_iter is None else int(max_iter),
         "pixels": int(pixels), "mode": mode, "success": success, "seed": int(seed),
         "precision": precision, "F": 0.5, "split": "test", "domain": "Y10"}
    if s["n_images"] < 1:
        raise DeepAdvError(f"--n-images must be at least 1, got {s['n_images']}")
    if s["pop_size"] < 4:
        raise DeepAdvError(f"--pop-size must be at least 4 (mutation needs three other members), got {s['pop_size']}")
    if s["max_iter"] < 0:
        raise DeepAdvError(f"--max-iter must be 0 or more, got {s['max_iter']}")
    if s["pixels"] < 1:
        raise DeepAdvError(f"--pixels must be at least 1, got {s['pixels']}")
    if mode not in MODES:
        raise DeepAdvError(f"unknown --mode {mode!r}; choose one of {', '.join(MODES)}")
    if success not in SUCCESS_RULES:
        raise DeepAdvError(f"unknown --success {success!r}; choose one of {', '.join(SUCCESS_RULES)}")
    if precision not in PRECISIONS:
        raise DeepAdvError(f"unknown --precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if s["seed"] < 0:
        raise DeepAdvError(f"--seed must be 0 or more, got {s['seed']}")
    return s


def departures_from_paper(settings: dict[str, Any]) -> list[str]:
    """Plain statements of every setting that differs from the paper's campaign."""
    out = []
    names = {"n_images": "images in the subsample", "pop_size": "population size", "max_iter": "iteration cap"}
    for key, what in names.items():
        if settings[key] != PAPER[key]:
            out.append(f"{what} {settings[key]} (paper: {PAPER[key]})")
    if settings["pixels"] != 1:
        out.append(f"{settings['pixels']}-pixel attack (paper: one pixel)")
    if settings["mode"] != "targeted":
        out.append("untargeted attack, success at p(true) < 0.05 (paper: targeted, p(target) > 0.5)")
    if settings["success"] != "paper":
        out.append("success when the target becomes the top class (paper: p(target) > 0.5)")
    if settings.get("precision", "fp32") != "fp32":
        out.append("search in bfloat16 mixed precision, successes verified in float32 (paper: float32)")
    return out


# --------------------------------------------------------------------------------------
# the progress file
# --------------------------------------------------------------------------------------
def _append_line(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line with a single write, then fsync."""
    data = (json.dumps(record) + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if os.write(fd, data) != len(data):  # a short write: the disk filled up
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:  # a torn last line is dropped when the campaign resumes
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise file_error(path, "no space left on device; free some space and run again") from exc
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise file_error(path, f"cannot write ({exc.strerror})") from exc
        raise


def _read_progress(path: Path, settings: dict[str, Any]) -> tuple[dict[int, dict], float, int]:
    """Finished records by test index, earlier sessions' wall time and count; drops a torn last line."""
    if not path.is_file():
        _append_line(path, {"settings": settings, "version": 1})
        return {}, 0.0, 0
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    records: dict[int, dict] = {}
    elapsed: dict[int, float] = {}  # per earlier session: time to its last finished image
    good = 0  # bytes of complete, parseable lines
    for i, line in enumerate(lines[:-1]):  # the last element follows the final newline
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if i == 0:
            if rec.get("settings") != settings:
                raise file_error(path, "holds an unfinished campaign with other settings; run again with the "
                                       "same options to resume it, or add --overwrite to start afresh")
        else:
            records[int(rec["test_index"])] = rec
            session = int(rec.get("session", 0))
            elapsed[session] = max(elapsed.get(session, 0.0), float(rec.get("elapsed_s", 0.0)))
        good += len(line) + 1
    if good == 0:  # not even a header: start again
        path.unlink()
        return _read_progress(path, settings)
    if good < len(raw):
        with open(path, "r+b") as fh:
            fh.truncate(good)
    sessions = max(elapsed) + 1 if elapsed else 0
    return records, float(sum(elapsed.values())), sessions


# --------------------------------------------------------------------------------------
# the campaign
# --------------------------------------------------------------------------------------
@torch.inference_mode()
def _forward(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (N, 3) float64 and latents (N, 256) float32, in fixed batches."""
    probs, zs = [], []
    for a in range(0, len(images), EVAL_BATCH):
        x = torch.as_tensor(np.ascontiguousarray(images[a: a + EVAL_BATCH]), device=device, dtype=torch.float32)
        logits, z = model(x)
        probs.append(torch.softmax(logits, dim=1).double().cpu().numpy())
        zs.append(z.float().cpu().numpy())
    if not probs:
        return np.zeros((0, len(CLASSES))), np.zeros((0, model.bottleneck.out_features), np.float32)
    return np.concatenate(probs), np.concatenate(zs)


def _is_success(p: np.ndarray, true: int, target: int | None, rule: str) -> bool:
    if rule == "top-class":
        top = int(np.argmax(p))
        return top == target if target is not None else top != true
    if target is not None:
        return bool(p[target] > TARGET_THRESHOLD)
    return bool(p[true] < UNTARGETED_THRESHOLD)


def attack_run(run: str | Path, data: str | Path | None = None, *, preset: str = "quick",
               n_images: int | None = None, pop_size: int | None = None, max_iter: int | None = None,
               pixels: int = 1, mode: str = "targeted", success: str = "paper", seed: int = 0,
               batch_images: int | None = None, device: str = "auto", overwrite: bool = False,
               chunk_size: int | None = None, precision: str = "fp32", threads: int | None = None,
               adaptive_threads: bool = True) -> dict[str, Any]:
    """Run (or resume) the one-pixel attack campaign on a run's kept model; return the summary.

    On a CPU the search uses ``threads`` torch threads (default: torch's own count) and,
    with ``adaptive_threads``, fewer while other processes hold cores (``ThreadGovernor``).
    """
    t_start = time.perf_counter()
    run = Path(run)
    config = read_run_config(run)
    ckpt = best_checkpoint_path(run)
    if not ckpt.is_file():
        raise file_error(ckpt, "checkpoint not found; train the run first ('deepadv train')")
    settings = resolve_settings(preset, n_images, pop_size, max_iter, pixels, mode, success, seed, precision)
    if batch_images is not None and int(batch_images) < 1:
        raise DeepAdvError(f"--batch-images must be at least 1, got {batch_images}")
    if threads is not None and int(threads) < 1:
        raise DeepAdvError(f"--threads must be at least 1, got {threads}")
    data_path = Path(data) if data is not None else Path(config["data"])
    dataset = load_dataset(data_path)
    labels_all = dataset.labels("test")
    n_test = len(labels_all)
    if settings["n_images"] > n_test:
        raise file_error(data_path, f"--n-images {settings['n_images']} is larger than the test set ({n_test} images)")
    dev = resolve_device(device)

    out = attack_dir(run)
    summary_path = out / SUMMARY_NAME
    progress_path = out / PROGRESS_NAME
    with OutputLock(out, "attack"):
        if summary_path.is_file() and not overwrite:
            progress_path.unlink(missing_ok=True)  # left by a run killed right after its summary
            raise file_error(summary_path, "this run's attack campaign is finished; add --overwrite to run it again")
        remove_temporaries(out)
        if overwrite:
            for name in (SUMMARY_NAME, RESULTS_NAME, LATENTS_NAME, PROGRESS_NAME):
                (out / name).unlink(missing_ok=True)

        # the subsample, the model's predictions, and the images to attack
        rng = np.random.default_rng(settings["seed"])
        subsample = np.sort(rng.choice(n_test, settings["n_images"], replace=False))
        raw = dataset.images("Y10", "test", stretched=False)
        model = load_model(run, dev)
        check_input_shape(model, tuple(raw.shape[1:]), dataset.path / "images_Y10_test.npy")
        lo, hi = dataset.stretch("Y10")
        x_sub = apply_stretch(np.asarray(raw[subsample]), lo, hi)
        labels = labels_all[subsample]
        p_sub, _ = _forward(model, x_sub, dev)
        predicted = np.argmax(p_sub, axis=1)
        correct = predicted == labels
        att_rows = np.flatnonzero(correct)  # positions in the subsample
        att_index = subsample[att_rows]

        records, wall_before, sessions = _read_progress(progress_path, settings)
        unknown = set(records) - set(att_index.tolist())
        if unknown:
            raise file_error(progress_path, f"records images {sorted(unknown)[:5]} that this campaign does not "
                                            "attack; add --overwrite to start afresh")
        todo = [r for r, t in zip(att_rows, att_index) if int(t) not in records]
        n_resumed = len(att_index) - len(todo)
        if n_resumed:
            info(f"resuming: {n_resumed} of {len(att_index)} images already attacked")

        governor = ThreadGovernor(threads, adaptive=adaptive_threads) if dev.type == "cpu" else None
        attack = OnePixelDE(model, pop_size=settings["pop_size"], max_iter=settings["max_iter"],
                            pixels=settings["pixels"], mode=settings["mode"], success=settings["success"],
                            seed=settings["seed"], device=dev, batch_images=batch_images, chunk_size=chunk_size,
                            bf16=settings["precision"] == "bf16", threads=governor)
        flips = sum(bool(r["success"]) for r in records.values())
        progress = make_progress(TextColumn("{task.fields[flipped]} flipped"))
        with progress, (governor or contextlib.nullcontext()):
            task = progress.add_task("one-pixel attack", total=len(att_index), completed=n_resumed, flipped=flips)
            if todo:
                todo = np.asarray(todo)
                for res in attack.run(x_sub[todo], labels[todo], keys=subsample[todo]):
                    rec = {"test_index": int(subsample[todo[res.index]]), "target": res.target,
                           "success": res.success, "iterations": res.iterations,
                           "iterations_total": res.iterations_total, "evaluations": int(res.evaluations),
                           "targets_tried": list(res.targets_tried), "rejected": res.rejected,
                           "pixels": res.pixels.tolist(), "values": res.values.tolist(),
                           "session": sessions, "elapsed_s": round(time.perf_counter() - t_start, 3)}
                    _append_line(progress_path, rec)
                    records[rec["test_index"]] = rec
                    flips += int(res.success)
                    progress.update(task, advance=1, flipped=flips)

        # final probabilities and latents, in subsample order, in fixed batches
        pert = np.stack([set_pixels(x_sub[r], records[int(t)]["pixels"], records[int(t)]["values"])
                         for r, t in zip(att_rows, att_index)]) if len(att_rows) else x_sub[:0]
        p_1p, z_1p = _forward(model, pert, dev)
        _, z_y10 = _forward(model, x_sub[att_rows], dev)
        if dataset.has_domain("Y1"):
            lo1, hi1 = dataset.stretch("Y1")
            x_y1 = apply_stretch(np.asarray(dataset.images("Y1", "test", stretched=False)[att_index]), lo1, hi1)
            _, z_y1 = _forward(model, x_y1, dev)
        else:
            z_y1 = np.full_like(z_y10, np.nan)
        galaxy_ids = dataset.galaxy_ids("test")

        rows, success, unconfirmed = [], [], 0
        columns = result_columns(settings["pixels"])
        for k, (r, t) in enumerate(zip(att_rows, att_index)):
            rec = records[int(t)]
            true = int(labels[r])
            target = rec["target"]
            ok = _is_success(p_1p[k], true, target, settings["success"])
            if rec["success"] and not ok:
                unconfirmed += 1
            ok = ok and bool(rec["success"])
            success.append(ok)
            row = {"test_index": int(t), "galaxy_id": int(galaxy_ids[t]), "true": CLASSES[true],
                   "predicted": CLASSES[int(predicted[r])], "target": "" if target is None else CLASSES[target],
                   "success": ok, "iterations": rec["iterations"]}
            for j, ((px, py), v) in enumerate(zip(rec["pixels"], rec["values"])):
                sfx = "" if settings["pixels"] == 1 else f"_{j + 1}"
                row.update({f"x{sfx}": px, f"y{sfx}": py, f"value_g{sfx}": float(np.float32(v[0])),
                            f"value_r{sfx}": float(np.float32(v[1])), f"value_i{sfx}": float(np.float32(v[2]))})
            row.update({f"p_{c}": float(p_1p[k, j]) for j, c in enumerate(CLASSES)})
            row.update({"iterations_total": rec["iterations_total"], "evaluations": rec["evaluations"],
                        "targets_tried": " ".join(CLASSES[c] for c in rec["targets_tried"])})
            rows.append(row)
        write_csv(out / RESULTS_NAME, rows, columns)
        write_npz(out / LATENTS_NAME, test_index=att_index.astype(np.int64), z_y10=z_y10.astype(np.float32),
                  z_y1=z_y1.astype(np.float32), z_1p=z_1p.astype(np.float32), success=np.asarray(success, bool))

        iters = np.array([records[int(t)]["iterations"] for t in att_index], dtype=np.float64)
        iters_ok = iters[np.asarray(success, bool)] if len(success) else iters
        n_flip = int(np.sum(success))
        wall = time.perf_counter() - t_start
        summary = {
            "kind": "deepadv-attack",
            "run": str(run.resolve()), "data": str(dataset.path.resolve()), "model": config["model"],
            "method": config["method"],
            "images_drawn": int(len(subsample)), "correctly_classified": int(correct.sum()),
            "attacked": int(len(att_index)), "flipped": n_flip,
            "success_rate": n_flip / len(att_index) if len(att_index) else None,
            "mean_iterations": float(iters.mean()) if len(iters) else None,
            "median_iterations": float(np.median(iters)) if len(iters) else None,
            "mean_iterations_flipped": float(iters_ok.mean()) if n_flip else None,
            "median_iterations_flipped": float(np.median(iters_ok)) if n_flip else None,
            "flipped_in_initial_population": int(sum(1 for t, ok in zip(att_index, success)
                                                     if ok and records[int(t)]["iterations"] == 0)),
            "success_claims_not_confirmed": unconfirmed,
            "claims_rejected_during_search": int(sum(records[int(t)].get("rejected", 0) for t in att_index)),
            "evaluations": int(sum(records[int(t)]["evaluations"] for t in att_index)),
            "settings": settings,
            "departures_from_paper": departures_from_paper(settings),
            "y1_latents": dataset.has_domain("Y1"),
            "subsample_test_index": subsample.tolist(),
            "iterations_note": "generations evolved before the first success (0 = the initial population "
                               "already held a successful pixel); the cap for failures",
            "timing": {"wall_time_s": round(wall_before + wall, 3), "sessions": sessions + 1,
                       "images_resumed": n_resumed, "device": str(dev), "evaluator": getattr(
                           attack, "last_evaluator", None),
                       "cpu_threads": governor.summary() if governor is not None else None},
        }
        write_json(summary_path, summary)
        progress_path.unlink(missing_ok=True)
    return summary
