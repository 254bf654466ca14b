"""The corner search: every pixel position × every value of a value set (``--search exhaustive``).

DE samples the space of one-pixel changes; a DE failure does not mean that no pixel
flips the image. This search evaluates every pixel position with every value of a value
set — by default the 8 corners of the value cube (each band at the lowest or the highest
value of the range) — and so is exhaustive *over the value set*: which positions flip
the image to which class with one of those values, how confident the most dangerous of
them is, and whether some value of the set flips the image at all. Its query count is
fixed: H x W x V per image.

It is a lower bound on one-pixel vulnerability, not the exact answer: the logit margin as
a function of one pixel's band values is piecewise linear (ReLU, max-pool) and p(target)
is not monotone in it, so a flip may need a value inside the cube that no corner reaches
(``tests/test_exhaustive.py`` has a model where DE finds such a flip and this search
cannot). The exact, provable answer is ``deepadv certify`` (:mod:`deepadversaries.certify.certify`).

The maps come from the same evaluators as the searches (:class:`LocalConvNetEvaluator`
for the ConvNet, exact to float rounding; batched full forward passes otherwise), so the
kept (most confident) flip is re-checked by a plain forward pass of the unfused model,
and with ``verify_map`` every flagged position is re-evaluated by the plain model too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from deepadversaries.attacks.base import Attack, AttackResult
from deepadversaries.attacks.candidates import set_pixels
from deepadversaries.attacks.evaluators import CandidateEvaluator, LocalConvNetEvaluator, make_evaluator
from deepadversaries.attacks.rules import is_success
from deepadversaries.attacks.values import ValueRange, input_range
from deepadversaries.errors import OptionError


def value_set(value_range: ValueRange, values: np.ndarray | Sequence[Sequence[float]] | None = None,
              corners: bool = True) -> np.ndarray:
    """The values tried at every position: the range's corners, then ``values``.

    Args:
        value_range: the allowed values (B bands).
        values: extra model-input values (V', B), each inside the range [default: None].
        corners: start with the 2^B corners of the value cube (8 for g, r, i) [default: True].

    Returns:
        (V, B) float64, without repeats (first occurrence kept).

    Raises:
        OptionError: a value outside the range, a badly shaped value set, or an empty one.
    """
    parts = [value_range.corners()] if corners else []
    if values is not None:
        extra = np.asarray(values, dtype=np.float64)
        bands = value_range.bands
        if extra.ndim == 1 and extra.size == bands:
            extra = extra[None]
        if extra.ndim != 2 or extra.shape[1] != bands or not np.all(np.isfinite(extra)):
            raise OptionError(f"values must be rows of {bands} finite numbers (one per band), got shape "
                              f"{extra.shape}")
        outside = ~value_range.contains(extra)
        if outside.any():
            bad = extra[np.flatnonzero(outside)[0]].tolist()
            raise OptionError(f"value {bad} lies outside the {value_range.kind} value range "
                              f"[{list(value_range.low)}, {list(value_range.high)}]")
        parts.append(extra)
    if not parts or sum(len(p) for p in parts) == 0:
        raise OptionError("the value set is empty: keep the corners or give --values")
    allv = np.concatenate(parts)
    _, first = np.unique(allv, axis=0, return_index=True)
    return allv[np.sort(first)]


def exhaustive_chunk_size(device: torch.device, local: bool) -> int:
    """Candidates per forward pass of the exhaustive map: 512 on a CPU with the local
    evaluator (measured: 1.9 s per 100x100 image against 2.7 s at 1024), large on a GPU."""
    if device.type == "cuda":
        return 16384 if local else 2048
    return 512 if local else 16


@dataclass
class ExhaustiveResult(AttackResult):
    """An :class:`AttackResult` (the kept, most confident flip) plus the image's maps.

    Map arrays are indexed [t, row, col] over ``map_targets`` and pixel rows and columns.
    """

    #: the classes mapped, in the order tried (targeted: the targets given; untargeted:
    #: every other class, ascending)
    map_targets: tuple[int, ...] = ()
    #: (T, H, W) float64: per target and position, the highest p(target) over the value set
    best_target_prob: np.ndarray | None = field(default=None, repr=False)
    #: (T, H, W, B) float64: the value reaching it (the first in value-set order on ties)
    best_target_value: np.ndarray | None = field(default=None, repr=False)
    #: (T, H, W) bool: whether some value at the position is a targeted success
    flips: np.ndarray | None = field(default=None, repr=False)
    #: (H, W) float64: per position, the lowest p(true class) over the value set
    min_true_prob: np.ndarray | None = field(default=None, repr=False)
    #: (H, W, B) float64: the value reaching it
    min_true_value: np.ndarray | None = field(default=None, repr=False)
    #: (H, W) bool: whether some value at the position is an untargeted success
    flips_untargeted: np.ndarray | None = field(default=None, repr=False)
    #: (V, B) float64: the value set, model-input space
    values_tried: np.ndarray | None = field(default=None, repr=False)
    #: flagged (target or untargeted, position) entries the plain model's re-check cleared
    #: (``verify_map``), or set
    map_corrections: int = 0
    #: seconds spent on this image (maps, re-checks and all)
    seconds: float = 0.0

    #: True in targeted mode (the kept change is a targeted one)
    targeted: bool = True

    def flip_positions(self, target: int | None = None) -> int:
        """Positions that flip the image: to ``target``; else, in targeted mode, to any
        mapped target, and in untargeted mode away from the true class."""
        if target is not None:
            return int(self.flips[self.map_targets.index(int(target))].sum())
        return int(self.flips.any(axis=0).sum()) if self.targeted else int(self.flips_untargeted.sum())


class ExhaustiveSearch(Attack):
    """Every pixel position x every value of the value set, for one pixel.

    Per image it evaluates H x W x V perturbed images (position-major, values in value-set
    order), builds the maps of :class:`ExhaustiveResult`, and keeps the most confident
    flip: targeted, for the first target in order that some change flips, the (position,
    value) with the highest p(target); untargeted, the one with the lowest p(true). The
    kept change is re-checked by a plain forward pass; a change the plain model does not
    confirm is counted in ``rejected`` and the next most confident one is tried. Without
    any flip the result reports the closest change (highest p(target) over the targets,
    or lowest p(true)). ``evaluations`` = H x W x V (re-checks not counted).

    Args:
        model: the classifier (see :class:`Attack`).
        values: extra model-input values (V', B) tried at every position, inside the
            value range [default: None].
        corners: include the 2^B corners of the value range (8 for g, r, i) [default: True].
        verify_map: re-evaluate every flagged position (all its values) with the plain
            model and correct the maps where it disagrees (``map_corrections``)
            [default: False].
        **kwargs: :class:`Attack`'s ``mode``, ``success``, ``value_range``, ``device``,
            ``dtype``, ``chunk_size`` (default :func:`exhaustive_chunk_size`), ``local``,
            ``optimize``, ``channels_last``, ``bf16``, ``verify``, ``threads``.

    Raises:
        OptionError: a bad value set or any bad :class:`Attack` argument.
    """

    def __init__(self, model: nn.Module, *, values: np.ndarray | None = None, corners: bool = True,
                 verify_map: bool = False, **kwargs) -> None:
        if int(kwargs.pop("pixels", 1)) != 1:
            raise OptionError("the exhaustive search changes one pixel; use --search de or sparse-rs for k > 1")
        if kwargs.pop("max_iter", None) is not None:
            raise OptionError("the exhaustive search has no iteration cap (it evaluates every position and value)")
        super().__init__(model, max_iter=0, pixels=1, **kwargs)
        self.extra_values = None if values is None else np.asarray(values, dtype=np.float64)
        if self.extra_values is not None and not self.value_range_given and self.extra_values.ndim in (1, 2):
            self.value_range = input_range(self.extra_values.shape[-1])  # the default range, in the values' bands
        self.corners = bool(corners)
        self.values = value_set(self.value_range, self.extra_values, self.corners)
        self.verify_map = bool(verify_map)

    def value_range_changed(self) -> None:
        self.values = value_set(self.value_range, self.extra_values, self.corners)

    @property
    def n_values(self) -> int:
        return len(self.values)

    def map_probabilities(self, evaluator: CandidateEvaluator, slot: int, height: int, width: int,
                          chunk: int) -> np.ndarray:
        """Probabilities (H*W, V, n_classes) of every position x value for the image in ``slot``."""
        n_pos, n_val = height * width, self.n_values
        total = n_pos * n_val
        out = np.empty((total, self.n_classes))
        for a in range(0, total, chunk):
            if self.threads is not None:
                self.threads.update()
            j = np.arange(a, min(a + chunk, total))
            pos, vi = np.divmod(j, n_val)
            rows, cols = np.divmod(pos, width)
            out[a: a + len(j)] = evaluator.evaluate(np.full(len(j), slot), rows[:, None], cols[:, None],
                                                    self.values[vi][:, None, :])
        return out.reshape(n_pos, n_val, self.n_classes)

    def _maps(self, probs: np.ndarray, label: int, map_targets: Sequence[int], height: int,
              width: int) -> dict[str, np.ndarray]:
        n_pos, n_val, n_cls = probs.shape
        flat = probs.reshape(-1, n_cls)
        t_idx = list(map_targets)
        best_vi = np.argmax(probs[:, :, t_idx], axis=1) if t_idx else np.zeros((n_pos, 0), np.int64)  # (P, T)
        best_p = np.take_along_axis(probs[:, :, t_idx], best_vi[:, None, :], axis=1)[:, 0]  # (P, T)
        flips = np.stack([is_success(flat, label, t, self.success_rule).reshape(n_pos, n_val).any(axis=1)
                          for t in t_idx]) if t_idx else np.zeros((0, n_pos), bool)
        min_vi = np.argmin(probs[:, :, label], axis=1)
        untargeted = is_success(flat, label, None, self.success_rule).reshape(n_pos, n_val).any(axis=1)
        return {
            "best_target_prob": best_p.T.reshape(len(t_idx), height, width),
            "best_target_value": self.values[best_vi.T].reshape(len(t_idx), height, width, self.bands),
            "flips": flips.reshape(len(t_idx), height, width),
            "min_true_prob": probs[np.arange(n_pos), min_vi, label].reshape(height, width),
            "min_true_value": self.values[min_vi].reshape(height, width, self.bands),
            "flips_untargeted": untargeted.reshape(height, width),
        }

    def _recheck_map(self, image: np.ndarray, probs: np.ndarray, label: int, map_targets: Sequence[int],
                     plain: CandidateEvaluator, width: int) -> np.ndarray:
        """Re-evaluate every position some target (or the untargeted rule) flags, with the plain model."""
        n_pos, n_val, n_cls = probs.shape
        flat = probs.reshape(-1, n_cls)
        flagged = is_success(flat, label, None, self.success_rule).reshape(n_pos, n_val).any(axis=1)
        for t in map_targets:
            flagged |= is_success(flat, label, t, self.success_rule).reshape(n_pos, n_val).any(axis=1)
        positions = np.flatnonzero(flagged)
        if len(positions) == 0:
            return probs
        plain.load(0, torch.from_numpy(image))
        out = probs.copy()
        j = (positions[:, None] * n_val + np.arange(n_val)).reshape(-1)
        chunk = 64
        for a in range(0, len(j), chunk):
            jj = j[a: a + chunk]
            pos, vi = np.divmod(jj, n_val)
            rows, cols = np.divmod(pos, width)
            out.reshape(-1, n_cls)[jj] = plain.evaluate(np.zeros(len(jj), np.int64), rows[:, None], cols[:, None],
                                                         self.values[vi][:, None, :])
        return out

    def _keep(self, image: np.ndarray, probs: np.ndarray, label: int, order: Sequence[int | None],
              width: int) -> tuple[dict, int, tuple[int, ...]]:
        """The kept change: (record, rejected claims, targets tried)."""
        n_cls = probs.shape[2]
        flat = probs.reshape(-1, n_cls)
        rejected = 0
        tried: list[int] = []
        for t in order:
            if t is not None:
                tried.append(int(t))
            score = flat[:, t] if t is not None else -flat[:, label]
            ok = np.flatnonzero(is_success(flat, label, t, self.success_rule))
            ranked = ok[np.argsort(-score[ok], kind="stable")]
            if not len(ranked):
                continue
            k, p = 0, flat[ranked[:1]]
            if self.verify:
                pixels, values = zip(*(self._pixel(j, width) for j in ranked))
                k, p = self.confirm_in_order(image, np.array(pixels), np.array(values), lambda i, q, t=t: bool(
                    is_success(q, label, t, self.success_rule)))
                missed = len(p) if k is None else k
                rejected += missed
                self.n_unverified += missed
                if k is None:
                    continue
            return {"success": True, "target": t, "j": int(ranked[k]), "probs": p[k]}, rejected, tuple(tried)
        # no flip: the closest change over the targets tried
        best = None
        for t in order:
            score = flat[:, t] if t is not None else -flat[:, label]
            j = int(np.argmax(score))
            if best is None or score[j] > best[0]:
                best = (float(score[j]), t, j)
        _, t, j = best
        return {"success": False, "target": t, "j": j, "probs": flat[j]}, rejected, tuple(tried)

    def _pixel(self, j: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        pos, vi = divmod(int(j), self.n_values)
        row, col = divmod(pos, width)
        return np.array([[col, row]], dtype=np.int64), self.values[vi][None].copy()

    def run(self, images: np.ndarray | torch.Tensor, labels: Sequence[int], targets=None,
            keys: Sequence[int] | None = None, return_images: bool = False) -> Iterator[ExhaustiveResult]:
        """Map every image; yield each result as soon as its image is done (in image order).

        Args:
            images: (N, B, H, W) in model-input space.
            labels: (N,) the true classes.
            targets: targeted mode: per image one class or a sequence, mapped and tried in
                that order [default: None = every other class, ascending]; untargeted mode
                maps every other class and keeps the untargeted success.
            keys: accepted for the common interface; the search draws nothing [default: None].
            return_images: also return the perturbed image of the kept change [default: False].

        Yields:
            One :class:`ExhaustiveResult` per image.

        Raises:
            OptionError: shapes or targets that do not fit.
        """
        imgs, labels, keys = self.check_inputs(images, labels, keys)
        if len(imgs) == 0:
            return
        self.prepare(imgs)
        if self.mode == "targeted":
            target_lists = self.targets_for(labels, targets)
        else:
            target_lists = [[c for c in range(self.n_classes) if c != int(lab)] for lab in labels]
        shape = tuple(imgs.shape[1:])
        h, w = shape[1:]
        evaluator = make_evaluator(self.eval_model, 1, shape, self.device, self.dtype, pixels=1, local=self.local,
                                   channels_last=self.channels_last, bf16=self.bf16)
        chunk = self.chunk_size or exhaustive_chunk_size(self.device, isinstance(evaluator, LocalConvNetEvaluator))
        self.last_evaluator = type(evaluator).__name__
        plain = CandidateEvaluator(self.reference_model, 1, shape, self.device, self.dtype) if self.verify_map else None
        for i in range(len(imgs)):
            t0 = time.perf_counter()
            image = np.asarray(imgs[i], dtype=np.float32)
            label = int(labels[i])
            map_targets = tuple(int(t) for t in target_lists[i])
            evaluator.load(0, torch.from_numpy(image))
            probs = self.map_probabilities(evaluator, 0, h, w, chunk)
            corrections = 0
            if plain is not None:
                checked = self._recheck_map(image, probs, label, map_targets, plain, w)
                before = self._maps(probs, label, map_targets, h, w)
                probs = checked
            maps = self._maps(probs, label, map_targets, h, w)
            if plain is not None:
                corrections = int((before["flips"] != maps["flips"]).sum()
                                  + (before["flips_untargeted"] != maps["flips_untargeted"]).sum())
            order = list(map_targets) if self.mode == "targeted" else [None]
            kept, rejected, tried = self._keep(image, probs, label, order, w)
            pixel, value = self._pixel(kept["j"], w)
            t = kept["target"]
            p = np.asarray(kept["probs"], dtype=np.float64)
            yield ExhaustiveResult(
                index=i, label=label, target=t, success=kept["success"], iterations=0, pixels=pixel, values=value,
                probabilities=p, fitness=float(p[t]) if t is not None else -float(p[label]),
                evaluations=h * w * self.n_values, targets_tried=tried, iterations_total=0, rejected=rejected,
                image=set_pixels(image, pixel, value) if return_images else None, map_targets=map_targets,
                values_tried=self.values.copy(), map_corrections=corrections, seconds=time.perf_counter() - t0,
                targeted=self.mode == "targeted", **maps)


def build_search(model: nn.Module, config: Any, *, batch_images: int | None = None,
                 **common: Any) -> ExhaustiveSearch:
    """The campaign's corner search (``--search exhaustive``, the registry's builder): the config's
    ``--values`` besides the corners, its own images-at-once default (``batch_images`` is not used)."""
    return ExhaustiveSearch(model, values=np.asarray(config.values) if config.values else None, **common)
