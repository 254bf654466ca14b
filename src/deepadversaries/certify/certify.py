"""Provable one-pixel robustness, resumable: ``deepadv certify``.

For each attacked test image the stage decides one of three answers:

- ``flippable``: a witness — a pixel position, a value for every band inside the value range
  and a target — that a plain float32 forward pass of the model confirms as a successful
  attack under the campaign's success rule (:func:`deepadversaries.attacks.rules.is_success`);
- ``certified``: sound bounds (:mod:`deepadversaries.certify.bounds`) prove that no value in the
  range at any position reaches the success rule for any target;
- ``undecided``: the per-image time budget ran out first. Undecided images are counted in
  every summary (the upper bound of the flip rate includes them), never dropped.

Per image: (1) a scan of every position at a grid of values (the corners of the value
cube and its centre by default; the 3^B grid with ``scan_levels=3``) with the fast
candidate evaluator, whose successes are re-checked by the plain model; (2) if that finds no flip, branch and bound:
every position's full value box is bounded (forward bounds, and the backward pass for boxes
they nearly prove); a box not certified has its centre evaluated (the fast evaluator, then
re-checked by the plain model when it succeeds) and is split in halves along its three widest
sides (relative to the range); boxes are taken from a stack in batches, so positions are
decided group by group (a box split more than DEPTH_STEP times waits for the other positions);
this repeats until every box is certified, a witness is re-checked, or the budget is spent.
Branch and bound is complete in the limit: once
every ReLU and max-pool choice is stable in a box, its bounds are exact.

Images: by default the images of the run's DE campaign (``RUN/attack/results.csv``), so the
rates pair with DE's and the corner search's (``RUN/attack_exhaustive/``); without a DE
campaign, the campaign's seeded subsample (150 images, correctly classified ones only).
Targets: ``paper`` — the K - 1 other classes, the targeted rule the campaign uses; ``all``
— those and the untargeted rule.

Files in ``RUN/certify/``: ``results.csv`` (one row per image), ``certmap.npz`` (per image
and position: status 0 certified / 1 witness / 2 undecided, and the certified lower bound
of the margin, NaN where no bound was computed), ``summary.json`` (written last: counts,
the flip-rate sandwich with Clopper-Pearson intervals, DE's and the corner search's rates
on the same images, and the images they missed, where those searched the same value range
under the same rule). Each finished image is appended to ``progress.jsonl`` (its maps to
``.maps/``); a killed certification, run again with the same settings (any number of
workers), resumes. Deterministic: no randomness is drawn; only the budget (wall time) can
change an answer, from ``undecided`` to a decided one. ``workers`` > 1 certifies that many
images at once in spawned processes of one torch thread each (CPU), recorded as they finish.
"""

from __future__ import annotations

import concurrent.futures
import csv
import multiprocessing as mp
import queue as queue_module
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import TextColumn
from scipy import stats

from deepadversaries.certify import bounds
from deepadversaries.attacks.choices import VALUE_RANGES
from deepadversaries.attacks.evaluators import make_evaluator, optimized_for_inference
from deepadversaries.attacks.rules import is_success, subsample_index
from deepadversaries.attacks.values import ValueRange, make_value_range
from deepadversaries.data.dataset import GalaxyDataset, image_file, load_dataset
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, check_choice, file_error
from deepadversaries.io import (
    OutputLock, append_json_line, read_json, read_progress_log, remove_temporaries, write_csv, write_json,
    write_npz,
)
from deepadversaries.models.networks import check_input_shape, load_model
from deepadversaries.progress import info, make_progress
from deepadversaries.models.runs import attack_dir, check_same_classes, kept_model_path, read_run_config

CERTIFY_DIR = "certify"
RESULTS_NAME = "results.csv"
CERTMAP_NAME = "certmap.npz"
SUMMARY_NAME = "summary.json"
PROGRESS_NAME = "progress.jsonl"
MAPS_DIR = ".maps"
KIND = "deepadv-certify"
TARGET_SETS: tuple[str, ...] = ("paper", "all")
STATUSES: tuple[str, ...] = ("flippable", "certified", "undecided")
#: certmap codes per position
CERTIFIED, WITNESS, UNDECIDED = 0, 1, 2
#: boxes bounded per batch (128 ran faster per box than 512 on the quick ConvNet: the window tensors stay in cache)
BOX_BATCH = 128
#: plain-model re-checks tried per round before moving on
RECHECKS = 16
#: a box the forward bounds leave less than this (logit units) from proved gets the backward bounds too
BACKWARD_GAP = 4.0
#: sides halved at once when a box is split (2^SPLIT_SIDES children)
SPLIT_SIDES = 3
#: splits of a box before it waits for the other positions (the cap then grows by as much again)
DEPTH_STEP = 3
#: seconds between two reports of an image's decided positions (the per-image progress bar)
PROGRESS_EVERY_S = 1.0


@dataclass(frozen=True)
class CertifyConfig:
    """Settings of ``deepadv certify``.

    Attributes:
        n_images: how many of the campaign's images to certify, in campaign order [default:
            None = all].
        value_range: ``input`` ([0, 1]) or ``physical`` (0 e- to the full well) [default: "input"].
        targets: ``paper`` (the other classes, targeted) or ``all`` (also the untargeted rule)
            [default: "paper"].
        budget_s: seconds per image before it is called undecided [default: 120].
        success: ``paper`` or ``top-class``; None = the DE campaign's rule, else ``paper``
            [default: None].
        scan_levels: values per band of the witness scan's grid: 2 = the corners (and the
            centre), 3 = the 3^B grid [default: 2].
        seed: the subsample's seed when the run has no DE campaign [default: 0].
        subsample: test images drawn when the run has no DE campaign [default: 150].
        workers: processes certifying images at once, one torch thread each (CPU only); the
            answers do not depend on it, only the wall time does [default: 1].
    """

    n_images: int | None = None
    value_range: str = "input"
    targets: str = "paper"
    budget_s: float = 120.0
    success: str | None = None
    scan_levels: int = 2
    seed: int = 0
    subsample: int = 150
    workers: int = 1

    def __post_init__(self) -> None:
        if self.n_images is not None and (not isinstance(self.n_images, int) or self.n_images < 1):
            raise OptionError(f"--n-images must be a positive whole number, got {self.n_images}")
        check_choice(self.value_range, VALUE_RANGES, "--value-range")
        check_choice(self.targets, TARGET_SETS, "--targets")
        if not (isinstance(self.budget_s, (int, float)) and np.isfinite(self.budget_s) and self.budget_s > 0):
            raise OptionError(f"--budget must be a positive number of seconds per image, got {self.budget_s}")
        if self.success is not None:
            check_choice(self.success, ("paper", "top-class"), "--success")
        if not isinstance(self.scan_levels, int) or self.scan_levels < 2:
            raise OptionError(f"the scan needs at least 2 values per band, got {self.scan_levels}")
        if self.subsample < 1:
            raise OptionError(f"the subsample needs at least one image, got {self.subsample}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise OptionError(f"--workers must be a positive whole number of processes, got {self.workers}")

    def to_json(self) -> dict[str, Any]:
        """The settings that decide the answers (what a resumed run must share): all but ``workers``."""
        out = asdict(self)
        out.pop("workers")
        return out


def certify_dir(run: str | Path) -> Path:
    """``RUN/certify``."""
    return Path(run) / CERTIFY_DIR


# --------------------------------------------------------------------------------------
# one image
# --------------------------------------------------------------------------------------
@dataclass
class ImageCertificate:
    """The answer for one image.

    Attributes:
        status: ``flippable``, ``certified`` or ``undecided``.
        target: the witness's target (None: untargeted, or no witness).
        row, col: the witness pixel (-1 without one).
        value: (B,) the witness value, model input (NaN without one).
        p_target: p(target) (untargeted: p(true)) of the witness by the plain model.
        status_map: (H, W) int8 per position: 0 certified, 1 witness, 2 undecided.
        margin_map: (H, W) float32 certified lower bound of the margin (min over targets of
            minus the success score's upper bound; > 0 means certified), NaN where unbounded.
        boxes: boxes bounded; seconds: wall time; found_by: ``scan`` or ``branch-and-bound``.
    """

    status: str
    target: int | None
    row: int
    col: int
    value: np.ndarray
    p_target: float
    status_map: np.ndarray
    margin_map: np.ndarray
    boxes: int
    seconds: float
    found_by: str


class ImageCertifier:
    """Certifies single images of one model (compiled once).

    Args:
        model: the classifier (eval mode, CPU float32): the reference for every re-check.
        value_range: the allowed values per band.
        rule: ``paper`` or ``top-class``.
        untargeted: also certify the untargeted rule [default: False].
        scan_levels: values per band of the witness scan [default: 2: the corners and the centre].
        device: where the scan evaluates candidates [default: CPU].
        float32_convolutions: bound the convolutions after the first relaxation in float32 with
            their rounding margins (sound; :func:`~deepadversaries.certify.bounds.compile_network`);
            False: every convolution in float64 (slower, the same answers up to the margins)
            [default: True].

    Raises:
        OptionError: a layer :mod:`deepadversaries.certify.bounds` cannot bound (named).
    """

    def __init__(self, model: torch.nn.Module, value_range: ValueRange, rule: str = "paper", *,
                 untargeted: bool = False, scan_levels: int = 2, device: torch.device | None = None,
                 float32_convolutions: bool = True) -> None:
        self.model = model.eval()
        self.net = bounds.compile_network(model, float32_convolutions=float32_convolutions)
        self.value_range = value_range
        self.rule = rule
        self.untargeted = untargeted
        self.device = device or torch.device("cpu")
        self.scan_values = _scan_values(value_range, scan_levels)
        self._fast = optimized_for_inference(model).to(self.device)
        self._evaluators: dict[tuple, Any] = {}

    # -- plain checks ------------------------------------------------------------------
    def plain_probabilities(self, image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                            values: np.ndarray) -> np.ndarray:
        """(P, K) softmax of plain float32 forward passes with one pixel changed per candidate."""
        x = torch.from_numpy(np.repeat(np.asarray(image, np.float32)[None], len(rows), axis=0))
        for i, (r, c) in enumerate(zip(rows, cols)):
            x[i, :, int(r), int(c)] = torch.from_numpy(np.asarray(values[i], np.float32))
        with torch.inference_mode():
            logits = self.model(x)[0]
        return torch.softmax(logits.double(), dim=1).numpy()

    def _confirm(self, image: np.ndarray, label: int, targets: list[int | None], rows: np.ndarray,
                 cols: np.ndarray, values: np.ndarray, order: np.ndarray, t_index: np.ndarray):
        """The first candidate (in ``order``) that the plain model confirms: (k, target, probs) or None."""
        for a in range(0, min(len(order), RECHECKS), 8):
            idx = order[a: min(a + 8, RECHECKS)]
            probs = self.plain_probabilities(image, rows[idx], cols[idx], values[idx])
            for j, k in enumerate(idx):
                t = targets[int(t_index[k])]
                if is_success(probs[j], label, t, self.rule):
                    return int(k), t, probs[j]
        return None

    # -- the scan ----------------------------------------------------------------------
    def _evaluator(self, image: np.ndarray):
        """The fast candidate evaluator (float32, local) with ``image`` loaded in its slot 0."""
        shape = tuple(image.shape)
        evaluator = self._evaluators.get(shape)
        if evaluator is None:
            evaluator = make_evaluator(self._fast, 1, shape, self.device, torch.float32)
            self._evaluators[shape] = evaluator
        evaluator.load(0, torch.from_numpy(np.asarray(image, np.float32)))
        return evaluator

    def _scan(self, image: np.ndarray, label: int, targets: list[int | None], deadline: float):
        """The first confirmed flip on the scan's grid: (row, col, value, target, probs); None when
        there is none or the deadline (``time.perf_counter()``) passes first."""
        evaluator = self._evaluator(image)
        _, h, w = image.shape
        nv = len(self.scan_values)
        total = h * w * nv
        best = None
        chunk = 4096
        for a in range(0, total, chunk):
            if time.perf_counter() > deadline:
                return None
            j = np.arange(a, min(a + chunk, total))
            pos, vi = np.divmod(j, nv)
            rows, cols = np.divmod(pos, w)
            probs = evaluator.evaluate(np.zeros(len(j), np.int64), rows[:, None], cols[:, None],
                                       self.scan_values[vi][:, None, :])
            for k, t in enumerate(targets):
                ok = np.flatnonzero(is_success(probs, label, t, self.rule))
                if not len(ok):
                    continue
                score = probs[ok, t] if t is not None else -probs[ok, label]
                order = ok[np.argsort(-score, kind="stable")]
                found = self._confirm(image, label, targets, rows, cols, self.scan_values[vi], order,
                                      np.full(len(j), k))
                if found is not None:
                    kk, t_found, p = found
                    return int(rows[kk]), int(cols[kk]), self.scan_values[vi[kk]].copy(), t_found, p
        return best

    # -- branch and bound --------------------------------------------------------------
    def _success_bounds(self, clean: bounds.CleanImage, rules: list, rows_matrix: torch.Tensor, rr: np.ndarray,
                        cc: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
        """(P, T) upper bounds of every target's success score over the boxes: the forward bounds,
        then, for the boxes they do not prove but come within BACKWARD_GAP of proving, the backward
        (back-substituted) bounds; the smaller of the two counts (both are sound)."""
        _, upper = bounds.box_bounds(self.net, clean, rr, cc, low, high, rows_matrix, backward=False, lower=False)
        s_up = bounds.success_upper_bounds(upper, rules)
        worst = s_up.max(axis=1)
        again = np.flatnonzero((worst >= -bounds.CERTIFY_TOLERANCE) & (worst < BACKWARD_GAP))
        if len(again):
            _, upper = bounds.box_bounds(self.net, clean, rr[again], cc[again], low[again], high[again], rows_matrix,
                                         backward=True, lower=False)
            s_up[again] = np.minimum(s_up[again], bounds.success_upper_bounds(upper, rules))
        return s_up

    def _centre_witness(self, evaluator: Any, image: np.ndarray, label: int, targets: list[int | None],
                        rules: list, rr: np.ndarray, cc: np.ndarray, low: np.ndarray, high: np.ndarray
                        ) -> tuple[int, int | None, np.ndarray, np.ndarray] | None:
        """The centres of open boxes as witnesses: scored by the scan's fast evaluator, the best
        candidates confirmed on the plain model. Returns (box index, target, centre value, probs) or None."""
        centre = (low + high) / 2
        probs = evaluator.evaluate(np.zeros(len(rr), np.int64), rr[:, None], cc[:, None],
                                   centre[:, None, :].astype(np.float32))
        logits = np.log(np.maximum(np.asarray(probs, np.float64), 1e-300))  # shift-invariant scores
        score = bounds.success_scores(logits, label, rules, self.rule)  # (n, T)
        best_t = score.argmax(axis=1)
        best = score[np.arange(len(rr)), best_t]
        hits = np.flatnonzero(best > 0)
        if not len(hits):
            return None
        order = hits[np.argsort(-best[hits], kind="stable")]
        got = self._confirm(image, label, targets, rr, cc, centre, order, best_t)
        if got is None:
            return None
        k, t, p = got
        return k, t, centre[k].copy(), p

    def certify(self, image: np.ndarray, label: int, targets: list[int], budget_s: float,
                on_progress: Callable[[int, int], None] | None = None) -> ImageCertificate:
        """Decide one image (B, H, W), model input, true class ``label``, within ``budget_s`` seconds.
        ``on_progress(decided, positions)``, when given, hears how many positions are decided (every
        box certified), at most every :data:`PROGRESS_EVERY_S` seconds and once at the end.

        First the scan (a grid of values at every position, confirmed on the plain model); then
        branch and bound over (position, value box) pairs: a batch of boxes is bounded
        (:meth:`_success_bounds`); proved boxes fold their margin into the map; the centres of the
        others are tried as witnesses (:meth:`_centre_witness`); the rest are split
        (:func:`_split`) and queued (:class:`_BoxQueue`). The image is ``flippable`` at the first
        confirmed witness, ``certified`` when no box is left, ``undecided`` when the budget ends.
        """
        t0 = time.perf_counter()
        image = np.asarray(image, dtype=np.float32)
        _, h, w = image.shape
        all_targets: list[int | None] = list(targets) + ([None] if self.untargeted else [])
        status_map = np.full((h, w), UNDECIDED, np.int8)
        margin_map = np.full((h, w), np.nan, np.float32)
        found = self._scan(image, label, all_targets, t0 + budget_s)
        if found is not None:
            r, c, v, t, p = found
            status_map[r, c] = WITNESS
            return ImageCertificate("flippable", t, r, c, v, _p_of(p, label, t), status_map, margin_map, 0,
                                    time.perf_counter() - t0, "scan")
        evaluator = self._evaluator(image)
        clean = bounds.clean_pass(self.net, image.astype(np.float64))
        rules = bounds.target_rules(label, all_targets, self.rule, self.net.n_classes, clean.logits.numpy())
        rows_matrix = bounds.stacked_rows(rules)
        lo_range, hi_range = self.value_range.low_array, self.value_range.high_array
        queue = _BoxQueue(h * w, lo_range, hi_range)
        open_boxes = np.ones(h * w, np.int64)  # per position: boxes not yet certified
        n_boxes = 0
        told = time.perf_counter()
        while queue and time.perf_counter() - t0 <= budget_s:
            p_, lo_, hi_, _, depth = queue.next_batch(BOX_BATCH)
            rr, cc = np.divmod(p_, w)
            s_up = self._success_bounds(clean, rules, rows_matrix, rr, cc, lo_, hi_)  # (P, T)
            n_boxes += len(p_)
            margin = -s_up.max(axis=1)
            done = margin > bounds.CERTIFY_TOLERANCE
            np.fmin.at(margin_map, (rr[done], cc[done]), margin[done].astype(np.float32))
            np.subtract.at(open_boxes, p_[done], 1)
            if on_progress is not None and time.perf_counter() - told >= PROGRESS_EVERY_S:
                told = time.perf_counter()
                on_progress(int((open_boxes == 0).sum()), h * w)
            rest = np.flatnonzero(~done)
            if not len(rest):
                continue
            got = self._centre_witness(evaluator, image, label, all_targets, rules, rr[rest], cc[rest], lo_[rest],
                                       hi_[rest])
            if got is not None:
                k, t, value, p = got
                r, c = int(rr[rest][k]), int(cc[rest][k])
                status_map.reshape(-1)[open_boxes == 0] = CERTIFIED
                status_map[r, c] = WITNESS
                queue.fold_open_margins(margin_map, p_[rest], margin[rest], width=w)
                return ImageCertificate("flippable", t, r, c, value, _p_of(p, label, t), status_map, margin_map,
                                        n_boxes, time.perf_counter() - t0, "branch-and-bound")
            # split along the SPLIT_SIDES widest sides (relative to the range) at once
            child_lo, child_hi, parent = _split(lo_[rest], hi_[rest], hi_range - lo_range)
            np.add.at(open_boxes, p_[rest], np.bincount(parent, minlength=len(rest)) - 1)
            order = np.argsort(parent, kind="stable")  # a box's children together, in the batch's order
            child_lo, child_hi, parent = child_lo[order], child_hi[order], parent[order]
            queue.push((p_[rest][parent], child_lo, child_hi, margin[rest][parent], depth[rest][parent] + 1))
        queue.fold_open_margins(margin_map, np.zeros(0, np.int64), np.zeros(0), width=w)
        status_map.reshape(-1)[open_boxes == 0] = CERTIFIED
        if on_progress is not None:
            on_progress(int((open_boxes == 0).sum()), h * w)
        status = "certified" if not queue else "undecided"
        return ImageCertificate(status, None, -1, -1, np.full(self.value_range.bands, np.nan), float("nan"),
                                status_map, margin_map, n_boxes, time.perf_counter() - t0, "branch-and-bound")


class _BoxQueue:
    """The boxes still to bound, as chunks ``(positions, lows, highs, the parent's proved margin (NaN:
    none), splits so far)``: a stack whose top chunk is consumed from the front, so a batch's children
    (pushed on top) are decided before the next group of positions starts and the map fills
    position by position. A box split more than ``cap`` times waits in ``deferred`` until the stack
    is empty; then the cap grows by :data:`DEPTH_STEP`: no single position holds the budget while
    others wait unbounded.

    Args:
        n_positions: pixels of the image (one whole-range box each to start with).
        low, high: the value range's bounds per band (B,).
    """

    def __init__(self, n_positions: int, low: np.ndarray, high: np.ndarray) -> None:
        self.stack: list[tuple[np.ndarray, ...]] = [(
            np.arange(n_positions), np.repeat(low[None], n_positions, axis=0),
            np.repeat(high[None], n_positions, axis=0), np.full(n_positions, np.nan), np.zeros(n_positions, np.int64))]
        self.deferred: list[tuple[np.ndarray, ...]] = []
        self.cap = DEPTH_STEP

    def __bool__(self) -> bool:
        return bool(self.stack or self.deferred)

    def next_batch(self, size: int) -> tuple[np.ndarray, ...]:
        """Up to ``size`` boxes from the top of the stack (the deferred ones, with a higher cap, once it is empty)."""
        if not self.stack:
            self.stack, self.deferred = self.deferred[::-1], []
            self.cap += DEPTH_STEP
        parts, count = [], 0
        while self.stack and count < size:
            chunk = self.stack.pop()
            take = min(size - count, len(chunk[0]))
            parts.append(tuple(x[:take] for x in chunk))
            if take < len(chunk[0]):
                self.stack.append(tuple(x[take:] for x in chunk))
            count += take
        return tuple(np.concatenate(x) for x in zip(*parts))

    def push(self, children: tuple[np.ndarray, ...]) -> None:
        """Queue split boxes: those split more than the cap wait in ``deferred``."""
        deep = children[4] > self.cap
        if deep.any():
            self.deferred.append(tuple(x[deep] for x in children))
        if (~deep).any():
            self.stack.append(tuple(x[~deep] for x in children))

    def fold_open_margins(self, margin_map: np.ndarray, positions: np.ndarray, margins: np.ndarray, *,
                          width: int) -> None:
        """Fold the parent margins of every queued box, and of the given open boxes, into the per-position
        minimum (:func:`_open_margins`)."""
        waiting = self.stack + self.deferred
        _open_margins(margin_map, [x[0] for x in waiting] + [positions], [x[3] for x in waiting] + [margins],
                      width=width)


def _split(low: np.ndarray, high: np.ndarray, span: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split boxes (N, B) in halves along their ``SPLIT_SIDES`` widest sides (relative to the range
    ``span``) at once: the children's lows and highs (M, B) and each child's parent (M,)."""
    n, b = low.shape
    k = min(SPLIT_SIDES, b)
    width = (high - low) / np.where(span > 0, span, 1.0)
    axes = np.argsort(-width, axis=1, kind="stable")[:, :k]  # (N, k)
    lows, highs, parents = [], [], []
    rows = np.arange(n)
    for code in range(2 ** k):
        lo, hi = low.copy(), high.copy()
        for j in range(k):
            ax = axes[:, j]
            mid = (low[rows, ax] + high[rows, ax]) / 2
            if (code >> j) & 1:
                lo[rows, ax] = mid
            else:
                hi[rows, ax] = mid
        lows.append(lo)
        highs.append(hi)
        parents.append(rows)
    return np.concatenate(lows), np.concatenate(highs), np.concatenate(parents)


def _open_margins(margin_map: np.ndarray, positions: list, margins: list, *, width: int) -> None:
    """Fold the bounds of the boxes still open (positions and margins: matching lists of arrays) into the
    per-position minimum; a box never bounded (NaN) adds nothing."""
    pos = np.concatenate([np.asarray(p, np.int64) for p in positions])
    m = np.concatenate([np.asarray(x, np.float64) for x in margins])
    keep = np.isfinite(m)
    rr, cc = np.divmod(pos[keep], width)
    np.fmin.at(margin_map, (rr, cc), m[keep].astype(np.float32))


def _p_of(probs: np.ndarray, label: int, target: int | None) -> float:
    return float(probs[target]) if target is not None else float(probs[label])


def _scan_values(value_range: ValueRange, levels: int) -> np.ndarray:
    """The scan's values (V, B): the corners first, then the rest of a ``levels``^B grid and the centre."""
    corners = value_range.corners()
    grid = np.stack(np.meshgrid(*[np.linspace(0.0, 1.0, levels)] * value_range.bands, indexing="ij"),
                    -1).reshape(-1, value_range.bands)
    centre = np.full((1, value_range.bands), 0.5)
    values = np.concatenate([corners, value_range.to_values(grid), value_range.to_values(centre)])
    _, first = np.unique(values, axis=0, return_index=True)
    return values[np.sort(first)]


# --------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------
@dataclass
class _Images:
    """The images to certify, in campaign order."""

    test_index: np.ndarray  # (n,)
    images: np.ndarray  # (n, B, H, W) model input
    labels: np.ndarray  # (n,)
    source: str


def certify_run(run: str | Path, config: CertifyConfig | None = None, *, data: str | Path | None = None,
                device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """Certify (or resume certifying) a run's images against one-pixel attacks.

    Args:
        run: a run folder with a kept ConvNet, d4-convnet or ResNet18 checkpoint.
        config: the settings [default: ``CertifyConfig()``].
        data: the dataset folder [default: the one recorded in the run's ``config.json``].
        device: where the witness scan runs, ``auto``, ``cpu`` or ``cuda``; the bounds are
            computed on the CPU in float64 [default: "auto"].
        overwrite: discard a finished or unfinished certification [default: False].

    Returns:
        The content of ``summary.json``.

    Raises:
        FileError: no checkpoint, a finished result without ``overwrite``, a progress file
            with other settings.
        OptionError: a bad setting or a layer the bounds do not support (nothing is written).
    """
    t_start = time.perf_counter()
    run = Path(run)
    config = config if config is not None else CertifyConfig()
    run_config = read_run_config(run)
    ckpt = kept_model_path(run, run_config)
    if not ckpt.is_file():
        raise file_error(ckpt, "checkpoint not found; train the run first ('deepadv train')")
    dataset = load_dataset(Path(data) if data is not None else Path(run_config.data))
    dev = resolve_device(device)
    model = load_model(run, "cpu")
    check_input_shape(model, dataset.image_shape, dataset.path / image_file("Y10", "test"))
    check_same_classes(run_config, dataset.classes, dataset.path)
    rule, de_settings = _success_rule(run, config)
    value_range = _value_range(config.value_range, dataset)
    if config.workers > 1 and dev.type != "cpu":
        raise OptionError(f"--workers {config.workers} certifies on the CPU (one process per image); with "
                          f"--device {dev.type} use one worker")
    certifier = ImageCertifier(model, value_range, rule, untargeted=config.targets == "all",
                               scan_levels=config.scan_levels, device=dev)  # refuses unsupported layers
    out = certify_dir(run)
    settings = {**config.to_json(), "success": rule}
    with OutputLock(out, "certify"):
        _prepare_output(out, overwrite)
        chosen = _choose_images(run, model, dataset, config, de_settings)
        records, wall_before, sessions = read_progress_log(out / PROGRESS_NAME, settings, "certification")
        index_set = set(chosen.test_index.tolist())
        if set(records) - index_set:
            raise file_error(out / PROGRESS_NAME, "records images this certification does not cover; add "
                                                  "--overwrite to start afresh")
        todo = [k for k, t in enumerate(chosen.test_index) if int(t) not in records]
        if len(todo) < len(chosen.test_index):
            info(f"resuming: {len(chosen.test_index) - len(todo)} of {len(chosen.test_index)} images already decided")
        counts = {s: sum(r["status"] == s for r in records.values()) for s in STATUSES}
        progress = make_progress(TextColumn("{task.fields[counts]}"))
        with progress:
            task = progress.add_task("certify", total=len(chosen.test_index),
                                     completed=len(chosen.test_index) - len(todo), counts=_counts_text(counts))
            bars = _ImageBars(progress, chosen.test_index)
            for k, cert in _certificates(certifier, chosen, todo, config.budget_s, config.workers,
                                         (model, value_range, rule, config.targets == "all", config.scan_levels),
                                         on_progress=bars.report):
                bars.finish(k)
                t_idx = int(chosen.test_index[k])
                write_npz(out / MAPS_DIR / f"{t_idx}.npz", status=cert.status_map, margin=cert.margin_map)
                rec = _progress_record(cert, t_idx, int(chosen.labels[k]), sessions, time.perf_counter() - t_start)
                append_json_line(out / PROGRESS_NAME, rec)
                records[t_idx] = rec
                counts[cert.status] += 1
                progress.update(task, advance=1, counts=_counts_text(counts))
        _write_results(out, chosen, records, dataset)
        wall = wall_before + time.perf_counter() - t_start
        summary = _summary(run, run_config, dataset, chosen, records, config, rule, value_range,
                           bounds.arithmetic(certifier.net), timing={
            "wall_time_s": round(wall, 3), "sessions": sessions + 1, "device": str(dev),
            "torch_threads": torch.get_num_threads() if config.workers == 1 else 1, "workers": config.workers})
        write_json(out / SUMMARY_NAME, summary)
        (out / PROGRESS_NAME).unlink(missing_ok=True)
        shutil.rmtree(out / MAPS_DIR, ignore_errors=True)
    return summary


class _ImageBars:
    """One progress bar per image in branch and bound, counting its positions decided.

    Args:
        progress: the stage's rich progress display (its tasks carry a ``counts`` field).
        test_index: the chosen images' test indices (a bar's name).
    """

    def __init__(self, progress: Any, test_index: np.ndarray) -> None:
        self.progress, self.test_index = progress, test_index
        self.tasks: dict[int, Any] = {}
        self.finished: set[int] = set()  # a worker's last report may come after its result

    def report(self, k: int, decided: int, positions: int) -> None:
        """Image ``k`` (its place among the chosen) has ``decided`` of ``positions`` positions decided."""
        if k in self.finished:
            return
        if k not in self.tasks:
            self.tasks[k] = self.progress.add_task(f"  image {int(self.test_index[k])}: positions decided",
                                                   total=positions, counts="")
        self.progress.update(self.tasks[k], completed=decided)

    def finish(self, k: int) -> None:
        """Image ``k`` is decided: its bar goes, later reports are ignored."""
        self.finished.add(k)
        if k in self.tasks:
            self.progress.remove_task(self.tasks.pop(k))


def _progress_record(cert: ImageCertificate, test_index: int, label: int, session: int,
                     elapsed_s: float) -> dict[str, Any]:
    """One image's line of ``progress.jsonl`` (JSON-ready: NaN as None)."""
    return {"test_index": test_index, "label": label, "status": cert.status, "target": cert.target,
            "row": cert.row, "col": cert.col, "value": [float(v) if np.isfinite(v) else None for v in cert.value],
            "p_target": cert.p_target if np.isfinite(cert.p_target) else None, "boxes": cert.boxes,
            "seconds": round(cert.seconds, 3), "found_by": cert.found_by,
            "positions_certified": int((cert.status_map == CERTIFIED).sum()),
            "session": session, "elapsed_s": round(elapsed_s, 3)}


#: the certifier of a worker process, built once by :func:`_start_worker`
_WORKER_CERTIFIER: ImageCertifier | None = None
#: the worker's queue for its images' decided positions (None: not reported)
_WORKER_REPORTS: Any = None


def _start_worker(model: torch.nn.Module, value_range: ValueRange, rule: str, untargeted: bool,
                  scan_levels: int, reports: Any = None) -> None:
    """Initialise a worker process: one torch thread (the processes share the cores), its certifier,
    and the queue its images' decided positions are reported on (None: not reported)."""
    global _WORKER_CERTIFIER, _WORKER_REPORTS
    torch.set_num_threads(1)
    _WORKER_CERTIFIER = ImageCertifier(model, value_range, rule, untargeted=untargeted, scan_levels=scan_levels)
    _WORKER_REPORTS = reports


def _certify_in_worker(k: int, image: np.ndarray, label: int, targets: list[int], budget_s: float) -> ImageCertificate:
    assert _WORKER_CERTIFIER is not None, "the worker was not initialised"
    reports = _WORKER_REPORTS
    report = None if reports is None else (lambda decided, total: reports.put((k, decided, total)))
    return _WORKER_CERTIFIER.certify(image, label, targets, budget_s, on_progress=report)


def _certificates(certifier: ImageCertifier, chosen: _Images, todo: list[int], budget_s: float, workers: int,
                  worker_args: tuple, on_progress: Callable[[int, int, int], None] | None = None
                  ) -> Iterator[tuple[int, ImageCertificate]]:
    """(position in ``chosen``, certificate) for every image of ``todo``: in order by ``certifier``
    itself, or with ``workers`` > 1 in that many spawned processes (``worker_args``: what
    :func:`_start_worker` needs, less the report queue), in the order they finish. Leaving early
    (an interruption) cancels the images not started; the caller's progress file holds the
    finished ones. ``on_progress(k, decided, positions)`` hears each image's decided positions
    (:meth:`ImageCertifier.certify`), from the workers too."""
    n_classes = certifier.net.n_classes

    def job(k: int) -> tuple[np.ndarray, int, list[int], float]:
        label = int(chosen.labels[k])
        return chosen.images[k], label, [c for c in range(n_classes) if c != label], budget_s

    if workers <= 1 or len(todo) <= 1:
        for k in todo:
            report = None if on_progress is None else (lambda decided, total, k=k: on_progress(k, decided, total))
            yield k, certifier.certify(*job(k), on_progress=report)
        return
    context = mp.get_context("spawn")
    reports = context.Queue() if on_progress is not None else None
    pool = concurrent.futures.ProcessPoolExecutor(min(workers, len(todo)), mp_context=context,
                                                  initializer=_start_worker, initargs=(*worker_args, reports))

    def drain() -> None:
        while reports is not None:
            try:
                on_progress(*reports.get_nowait())
            except queue_module.Empty:
                return

    try:
        futures = {pool.submit(_certify_in_worker, k, *job(k)): k for k in todo}
        pending = set(futures)
        while pending:
            finished, pending = concurrent.futures.wait(pending, timeout=PROGRESS_EVERY_S,
                                                        return_when=concurrent.futures.FIRST_COMPLETED)
            drain()
            for done in finished:
                yield futures[done], done.result()
        pool.shutdown(wait=True)  # the workers have flushed their last reports
        drain()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if reports is not None:
            reports.close()
            reports.join_thread()


def _counts_text(counts: dict[str, int]) -> str:
    return f"{counts['flippable']} flippable, {counts['certified']} certified, {counts['undecided']} undecided"


def _success_rule(run: Path, config: CertifyConfig) -> tuple[str, dict | None]:
    """The success rule (the config's, else the DE campaign's, else ``paper``) and DE's settings."""
    de_summary = attack_dir(run, "de") / "summary.json"
    de_settings = None
    if de_summary.is_file():
        de_settings = read_json(de_summary).get("settings") or {}
    rule = config.success or (de_settings or {}).get("success") or "paper"
    if de_settings is not None and de_settings.get("mode", "targeted") != "targeted" and config.targets == "paper":
        info("the DE campaign was untargeted; add --targets all to certify the untargeted rule too")
    return rule, de_settings


def _value_range(kind: str, dataset: GalaxyDataset) -> ValueRange:
    bands = len(dataset.bands)
    if kind == "input":
        return make_value_range("input", bands=bands)
    forward, inverse = dataset.input_transform("Y10")
    return make_value_range(kind, forward, inverse, bands=bands)


def _prepare_output(out: Path, overwrite: bool) -> None:
    summary = out / SUMMARY_NAME
    if summary.is_file() and not overwrite:
        (out / PROGRESS_NAME).unlink(missing_ok=True)
        raise file_error(summary, "this run's certification is finished; add --overwrite to run it again")
    remove_temporaries(out)
    if overwrite:
        for name in (SUMMARY_NAME, RESULTS_NAME, CERTMAP_NAME, PROGRESS_NAME):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / MAPS_DIR, ignore_errors=True)


def _choose_images(run: Path, model: Any, dataset: GalaxyDataset, config: CertifyConfig,
                   de_settings: dict | None) -> _Images:
    """The DE campaign's attacked images (results.csv order), else the campaign's subsample's
    correctly classified images; the first ``n_images`` of them."""
    labels_all = dataset.labels("test")
    results = attack_dir(run, "de") / "results.csv"
    if de_settings is not None and results.is_file():
        with open(results, newline="", encoding="utf-8") as fh:
            index = np.array([int(r["test_index"]) for r in csv.DictReader(fh)], dtype=np.int64)
        source = "the DE campaign's attacked images (RUN/attack/results.csv)"
        if config.n_images is not None:
            index = index[: config.n_images]
        if len(index) and (index.min() < 0 or index.max() >= len(labels_all)):
            raise file_error(results, "names test images outside this dataset's test split")
        raw = dataset.images("Y10", "test", stretched=False)
        images = dataset.model_input(np.asarray(raw[np.sort(index)]), "Y10")
        order = np.argsort(np.argsort(index))
        images = images[order]
        return _Images(index, images, labels_all[index], source)
    n_test = len(labels_all)
    n_draw = min(config.subsample, n_test)
    index = subsample_index(n_test, n_draw, config.seed)
    images = dataset.model_input(np.asarray(dataset.images("Y10", "test", stretched=False)[index]), "Y10")
    predicted = forward_batches(model, images, batch_size=64, device="cpu").predicted
    rows = np.flatnonzero(predicted == labels_all[index])
    if config.n_images is not None:
        rows = rows[: config.n_images]
    return _Images(index[rows], images[rows], labels_all[index][rows],
                   f"the campaign's seeded subsample ({n_draw} images, seed {config.seed}), correctly classified ones")


def result_columns(bands: tuple[str, ...]) -> list[str]:
    """The columns of ``results.csv``."""
    return (["test_index", "galaxy_id", "label", "true", "status", "target", "row", "col"]
            + [f"value_{b}" for b in bands]
            + ["p_target", "found_by", "positions_certified", "boxes", "seconds"])


def _write_results(out: Path, chosen: _Images, records: dict[int, dict], dataset: GalaxyDataset) -> None:
    classes, bands = dataset.classes, dataset.bands
    galaxy_ids = dataset.galaxy_ids("test")
    rows, statuses, margins = [], [], []
    for t in chosen.test_index:
        rec = records[int(t)]
        row = {"test_index": int(t), "galaxy_id": int(galaxy_ids[int(t)]), "label": rec["label"],
               "true": classes[rec["label"]], "status": rec["status"],
               "target": "" if rec["target"] is None else classes[rec["target"]],
               "row": rec["row"] if rec["row"] >= 0 else "", "col": rec["col"] if rec["col"] >= 0 else "",
               "p_target": "" if rec["p_target"] is None else rec["p_target"], "found_by": rec["found_by"],
               "positions_certified": rec["positions_certified"], "boxes": rec["boxes"], "seconds": rec["seconds"]}
        for b, v in zip(bands, rec["value"]):
            row[f"value_{b}"] = "" if v is None else float(np.float32(v))
        rows.append(row)
        with np.load(out / MAPS_DIR / f"{int(t)}.npz", allow_pickle=False) as npz:
            statuses.append(np.asarray(npz["status"]))
            margins.append(np.asarray(npz["margin"]))
    write_csv(out / RESULTS_NAME, rows, result_columns(bands))
    h, w = dataset.image_shape[1:]
    write_npz(out / CERTMAP_NAME, test_index=chosen.test_index.astype(np.int64),
              status=np.stack(statuses) if statuses else np.zeros((0, h, w), np.int8),
              margin_lower=np.stack(margins) if margins else np.zeros((0, h, w), np.float32),
              status_codes=np.array(["certified", "witness", "undecided"]))


def rate_interval(k: int, n: int, level: float = 0.95) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high", "n"}``: k / n with its Clopper-Pearson interval (None when n = 0)."""
    if n == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0}
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return {"value": k / n, "ci_low": float(ci.low), "ci_high": float(ci.high), "n": int(n),
            "method": "Clopper-Pearson 95%"}


def _flipped_by(run: Path, search: str, index: np.ndarray) -> set[int] | None:
    """Test indices the campaign of ``search`` flipped, when it covers every image of ``index``."""
    path = attack_dir(run, search) / "results.csv"
    if not (attack_dir(run, search) / "summary.json").is_file() or not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    covered = {int(r["test_index"]) for r in rows}
    if not set(index.tolist()) <= covered:
        return None
    return {int(r["test_index"]) for r in rows if r["success"] == "True"}


def campaign_mismatch(campaign: Mapping[str, Any], value_range: ValueRange, rule: str, targets: str) -> str | None:
    """Why a finished attack campaign (its ``summary.json``) answers another question than this
    certification, or None when its flips are flips under the certification's rule: the same value
    range (kind and per-band limits, to 1e-9), the same success rule, and a targeted campaign (or
    ``--targets all``, which also certifies the untargeted rule). Only then can a flip the campaign
    found on a certified image be called a contradiction, and a flippable image one it missed.

    Args:
        campaign: the campaign's summary (``settings`` and ``value_range`` are read).
        value_range: the certification's.
        rule: the certification's success rule (``paper`` or ``top-class``).
        targets: the certification's target set (``paper`` or ``all``).
    """
    settings = campaign.get("settings") or {}
    theirs = campaign.get("value_range") or {"kind": settings.get("value_range", "input")}
    ours = value_range.describe()
    if theirs.get("kind") != ours["kind"]:
        return f"its value range is {theirs.get('kind')}, the certification's {ours['kind']}"
    for side in ("low", "high"):
        if side in theirs and not np.allclose(theirs[side], ours[side], rtol=0.0, atol=1e-9):
            return f"its value range's {side} limits {theirs[side]} differ from the certification's {ours[side]}"
    if settings.get("success", rule) != rule:
        return f"its success rule is {settings.get('success')}, the certification's {rule}"
    if settings.get("mode", "targeted") != "targeted" and targets != "all":
        return f"it was {settings.get('mode')}; the certification's --targets {targets} covers targeted flips only"
    return None


def _summary(run: Path, run_config: Any, dataset: GalaxyDataset, chosen: _Images, records: dict[int, dict],
             config: CertifyConfig, rule: str, value_range: ValueRange, arithmetic: str,
             timing: dict[str, Any]) -> dict[str, Any]:
    recs = [records[int(t)] for t in chosen.test_index]
    n = len(recs)
    count = {s: sum(r["status"] == s for r in recs) for s in STATUSES}
    flippable = {int(r["test_index"]) for r in recs if r["status"] == "flippable"}
    undecided = {int(r["test_index"]) for r in recs if r["status"] == "undecided"}
    seconds = np.array([r["seconds"] for r in recs], dtype=np.float64)
    others: dict[str, Any] = {}
    not_compared: dict[str, str] = {}
    for search, name in (("de", "de"), ("exhaustive", "corner_search")):
        flipped = _flipped_by(run, search, chosen.test_index)
        if flipped is None:
            others[name] = None
            continue
        why = campaign_mismatch(read_json(attack_dir(run, search) / "summary.json"), value_range, rule,
                                config.targets)
        if why is not None:
            others[name] = None
            not_compared[name] = why
            continue
        flipped &= set(chosen.test_index.tolist())
        missed = sorted(flippable - flipped)
        others[name] = {"rate": rate_interval(len(flipped), n),
                        "missed_flippable": len(missed), "missed_test_index": missed,
                        "flipped_but_certified": sorted(flipped - flippable - undecided)}
    return {
        "kind": KIND,
        "run": str(run.resolve()), "data": str(dataset.path.resolve()), "model": run_config.model,
        "method": run_config.method, "classes": list(dataset.classes), "bands": list(dataset.bands),
        "images": chosen.source,
        "n_images": n, **count,
        "rate_lower": rate_interval(count["flippable"], n),
        "rate_upper": rate_interval(count["flippable"] + count["undecided"], n),
        "rate_note": "one-pixel flip rate: at least flippable / n (witnesses re-checked by a plain forward pass), "
                     "at most (flippable + undecided) / n (the rest are certified by sound bounds)",
        "de": others["de"], "corner_search": others["corner_search"], "not_compared": not_compared,
        "found_by": {k: sum(r["found_by"] == k for r in recs if r["status"] == "flippable")
                     for k in ("scan", "branch-and-bound")},
        "seconds_per_image": ({"median": float(np.median(seconds)), "max": float(seconds.max()),
                               "p25": float(np.percentile(seconds, 25)), "p75": float(np.percentile(seconds, 75)),
                               "n": n} if n else None),
        "success_rule": rule, "targets": config.targets, "value_range": value_range.describe(),
        "budget_s": config.budget_s, "tolerance": bounds.CERTIFY_TOLERANCE, "bounds_arithmetic": arithmetic,
        "test_index": chosen.test_index.tolist(),
        "settings": config.to_json(),
        "timing": timing,
    }
