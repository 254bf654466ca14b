"""Sparse-RS: query-efficient random search for k-pixel (L0) black-box attacks.

After Croce, Andriushchenko, Singh, Flammarion and Hein, "Sparse-RS: a versatile framework
for query-efficient sparse black-box adversarial attacks" (AAAI 2022), L0 version: the
attacked set is k pixel positions, each set to a corner of the value cube (every band at
the lowest or the highest value of the range). Starting from k random positions with
random corners, each iteration i resamples ``max(floor(alpha_i k), 1)`` of the k pixels:
that many positions of the current set go back to their clean values and as many new
positions, drawn from outside the set, get random corners. The candidate replaces the
current set if its loss is strictly lower. ``alpha_i`` follows the paper's piecewise
constant schedule (:func:`alpha_schedule`), defined for 10,000 queries and rescaled to the
budget. Losses, smaller is better: targeted, the cross-entropy of the target,
-log p(target); untargeted, the margin log p(true) - max_{j != true} log p(j) (the logit
margin; ``loss="ce"``: log p(true)).

Queries are counted exactly: one per evaluated candidate, the initial one included; a
search stops at its first success under the attack's rule (:func:`deepadversaries.attacks.rules.is_success`),
re-checked by a plain forward pass (re-checks are not queries), or when the budget is
spent. Each (image, target) search draws from ``np.random.default_rng([seed, key,
target])``, one candidate per round, so the searches of many images fill each forward
pass and neither the chunk size nor the number of images searched together changes any
search.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from deepadversaries.attacks.base import Attack, SearchState
from deepadversaries.attacks.candidates import pixel_candidates
from deepadversaries.errors import OptionError, check_choice

#: the paper's alpha_init for the L0 (pixel) attack
ALPHA_INIT = 0.3
#: query budget per target by default: DE's 400 x (80 + 1), for like-for-like comparisons
DEFAULT_QUERIES = 400 * 81
LOSSES: tuple[str, ...] = ("auto", "margin", "ce")
#: the L0 schedule: (iteration bound on the 10,000-query scale, divisor of alpha_init),
#: alpha_i = alpha_init / divisor for the first bound >= i; alpha_init itself at i = 0
_SCHEDULE: tuple[tuple[int, int], ...] = ((0, 1), (50, 2), (200, 4), (500, 5), (1000, 6), (2000, 8), (4000, 10),
                                          (6000, 12), (8000, 15))
_LAST_DIVISOR = 20


def alpha_schedule(iteration: int, max_queries: int, alpha_init: float = ALPHA_INIT) -> float:
    """The fraction of the k pixels resampled at ``iteration`` (Sparse-RS, L0).

    The paper's piecewise-constant schedule on a budget of 10,000 queries: alpha_init
    at i = 0, then alpha_init / 2 up to 50, / 4 up to 200, / 5 up to 500, / 6 up to 1000,
    / 8 up to 2000, / 10 up to 4000, / 12 up to 6000, / 15 up to 8000 and / 20 beyond;
    other budgets use i' = floor(i / max_queries x 10,000).

    Args:
        iteration: i >= 0, the iteration (0 = the initial candidate).
        max_queries: the budget of the search.
        alpha_init: the initial fraction [default: :data:`ALPHA_INIT`].

    Returns:
        alpha_i.
    """
    it = int(iteration / max_queries * 10000)
    for bound, divisor in _SCHEDULE:
        if it <= bound:
            return alpha_init / divisor
    return alpha_init / _LAST_DIVISOR


class _SparseRSSearch(SearchState):
    """One Sparse-RS search per target: one candidate per round."""

    def start_target(self) -> None:
        atk: SparseRS = self.attack  # type: ignore[assignment]
        n_pix = self.height * self.width
        if atk.pixels > n_pix:
            raise OptionError(f"--pixels {atk.pixels} is more than the image's {n_pix} pixels")
        order = self.rng.permutation(n_pix)
        self.inside = order[: atk.pixels].copy()  # the current set (k,)
        self.outside = order[atk.pixels:].copy()  # every other position (H W - k,)
        self.corners = self.rng.integers(0, 2, (atk.pixels, atk.bands)).astype(np.float64)  # unit corners (k, B)
        self.iteration = 0
        self.best_loss = np.inf
        self.best: tuple[np.ndarray, np.ndarray, float] | None = None  # candidate, probs, fitness
        self.proposal: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self._propose(self.inside, self.corners)

    def _propose(self, inside: np.ndarray, corners: np.ndarray) -> None:
        rows, cols = np.divmod(inside, self.width)
        self.set_pending(pixel_candidates(rows[None], cols[None], corners[None], self.height, self.width))

    def receive(self, start: int, probs: np.ndarray) -> None:
        atk: SparseRS = self.attack  # type: ignore[assignment]
        cand = self.pending[0]
        p = probs[0]
        self.evaluations += 1
        self.n_evaluated = 1
        fit = float(atk.fitness(p[None], self.label, self.target)[0])
        if atk.is_success(p, self.label, self.target):
            if atk.verify:
                p, fit = self.recheck(cand)
            if not atk.verify or atk.is_success(p, self.label, self.target):
                self.finish_target(True, cand, p, fit, self.iteration)
                return
            self.reject()
        loss = float(atk.loss(p[None], self.label, self.target)[0])
        if loss < self.best_loss:  # accept: the proposal becomes the current set
            self.best_loss = loss
            self.best = (cand.copy(), np.array(p), fit)
            if self.proposal is not None:
                self.inside, self.outside, self.corners = self.proposal[:3]
        if self.iteration + 1 >= atk.max_queries:
            c, bp, bf = self.best
            self.finish_target(False, c, bp, bf, self.iteration)
            return
        self.iteration += 1
        k = atk.pixels
        n = max(int(alpha_schedule(self.iteration, atk.max_queries, atk.alpha_init) * k), 1)
        drop = self.rng.choice(k, n, replace=False)  # positions of the set that go back to clean
        take = self.rng.choice(len(self.outside), n, replace=False)  # new positions from outside
        inside, outside, corners = self.inside.copy(), self.outside.copy(), self.corners.copy()
        inside[drop], outside[take] = self.outside[take], self.inside[drop]
        corners[drop] = self.rng.integers(0, 2, (n, atk.bands))
        self.proposal = (inside, outside, corners, drop)
        self._propose(inside, corners)


class SparseRS(Attack):
    """Sparse-RS (Croce et al., AAAI 2022), L0: random search over sets of k pixels.

    See the module docstring for the algorithm. ``pixels`` = k; values at the corners of
    ``value_range``; a budget of ``max_queries`` queries per target (the initial candidate
    included). ``AttackResult.iterations`` counts the iterations after the initial
    candidate; ``evaluations`` the queries over all targets tried (for a success, the query
    count at which it succeeded).

    Args:
        model: the classifier (see :class:`attacks.Attack`).
        pixels: k, pixels changed, >= 1 and at most H x W [default: 1].
        max_queries: queries per target, >= 1 [default: :data:`DEFAULT_QUERIES` = 32,400,
            DE's 400 x 81; the paper used 10,000 for its L0 attacks].
        alpha_init: the schedule's initial fraction, in (0, 1] [default: :data:`ALPHA_INIT`].
        loss: ``"auto"`` (targeted: cross-entropy; untargeted: margin — the paper's),
            ``"margin"`` or ``"ce"`` (untargeted only; targeted always uses cross-entropy)
            [default: "auto"].
        **kwargs: :class:`attacks.Attack`'s ``mode``, ``success``, ``value_range``, ``seed``,
            ``device``, ``dtype``, ``chunk_size``, ``batch_images`` (default 64 on a CPU,
            1024 on a GPU: one candidate per image per round), ``local``, ``optimize``,
            ``channels_last``, ``bf16``, ``verify``, ``threads``.

    Raises:
        OptionError: any argument out of range or unknown.
    """

    search_class = _SparseRSSearch
    batch_images_default = (64, 1024)

    def __init__(self, model: nn.Module, *, pixels: int = 1, max_queries: int = DEFAULT_QUERIES,
                 alpha_init: float = ALPHA_INIT, loss: str = "auto", **kwargs) -> None:
        if kwargs.pop("max_iter", None) is not None:
            raise OptionError("Sparse-RS is capped by max_queries (queries per target), not max_iter")
        if int(max_queries) < 1:
            raise OptionError(f"the query budget must be at least 1, got {max_queries}")
        if not 0.0 < float(alpha_init) <= 1.0:
            raise OptionError(f"alpha_init must lie in (0, 1], got {alpha_init}")
        check_choice(loss, LOSSES, "Sparse-RS loss")
        super().__init__(model, max_iter=0, pixels=pixels, **kwargs)
        if loss == "margin" and self.mode == "targeted":
            raise OptionError("Sparse-RS's targeted attack uses the cross-entropy loss; the margin loss is "
                              "untargeted only")
        self.max_queries = int(max_queries)
        self.alpha_init = float(alpha_init)
        self.loss_name = loss

    def loss(self, probs: np.ndarray, label: int, target: int | None) -> np.ndarray:
        """Smaller is better, (B, n_classes) -> (B,): -log p(target) targeted; the margin
        log p(true) - max_{j != true} log p(j) untargeted (``ce``: log p(true))."""
        logp = np.log(np.maximum(np.asarray(probs, dtype=np.float64), np.finfo(np.float64).tiny))
        if target is not None:
            return -logp[:, target]
        if self.loss_name == "ce":
            return logp[:, label]
        others = np.delete(logp, label, axis=1)
        return logp[:, label] - others.max(axis=1)


def build_search(model: nn.Module, config: Any, *, batch_images: int | None = None, **common: Any) -> SparseRS:
    """The campaign's Sparse-RS engine (``--search sparse-rs``, the registry's builder): the config's
    pixels and query budget per target, with the settings every search shares (``common``)."""
    return SparseRS(model, pixels=config.pixels, max_queries=config.query_budget, batch_images=batch_images,
                    **common)
