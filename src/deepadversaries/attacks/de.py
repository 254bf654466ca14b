"""The authors' one-pixel (L-pixel) attack: differential evolution after Su et al. (SPEC 7).

:class:`OnePixelDE` writes the search rule on :class:`~deepadversaries.attacks.base.Attack`:
the initial population, the mutation, the parent-versus-child selection and the keep rule
(``fittest``, the authors', or ``first``), with :class:`_DESearch` its per-image state.
:func:`reference_attack` is the published per-candidate loop with the same random streams,
the reference the batched engine must agree with. :func:`build_search` is its entry in the
search registry (:mod:`deepadversaries.attacks.searches`, ``--search de``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from deepadversaries.attacks.base import Attack, AttackResult, SearchState
from deepadversaries.attacks.candidates import candidate_pixels
from deepadversaries.attacks.rules import is_success
from deepadversaries.attacks.values import ValueRange
from deepadversaries.errors import OptionError


class _DESearch(SearchState):
    """Differential evolution: a population per target, evaluated a generation at a time."""

    def start_target(self) -> None:
        self.generation = 0
        self.population: np.ndarray | None = None
        self.fitness: np.ndarray | None = None
        self.probs: np.ndarray | None = None
        self._new_pending(self.attack.initial_population(self.rng))

    def _new_pending(self, candidates: np.ndarray) -> None:
        self.set_pending(candidates)
        self.pending_fitness = np.empty(len(candidates))
        self.pending_probs = np.empty((len(candidates), self.attack.n_classes))

    def receive(self, start: int, probs: np.ndarray) -> None:
        attack = self.attack
        stop = start + len(probs)
        fit = attack.fitness(probs, self.label, self.target)
        claims = np.flatnonzero(self._wins(probs, fit, start)) if attack.keep == "first" else []
        if len(claims):  # keep "first": stop at the first successful child (in index order)
            k = 0
            if attack.verify:
                k, checked, checked_fit = self.confirm(self.pending[start + claims], lambda i, p, f: bool(
                    self._wins(p[None], np.array([f]), start + claims[i])[0]))
                probs[claims[:len(checked)]], fit[claims[:len(checked)]] = checked, checked_fit
                self.reject(len(checked) if k is None else k)
            if k is not None:
                j = int(claims[k])
                self.evaluations += int(start + j + 1 - self.n_evaluated)
                self.finish_target(True, self.pending[start + j], probs[j], float(fit[j]), self.generation)
                return
        self.pending_fitness[start:stop] = fit
        self.pending_probs[start:stop] = probs
        self.evaluations += stop - self.n_evaluated
        self.n_evaluated = stop
        if self.n_pending == 0:
            self._generation_evaluated()

    def _wins(self, probs: np.ndarray, fit: np.ndarray, start: int) -> np.ndarray:
        """Successful candidates that also enter the population (a child must beat its parent)."""
        ok = self.attack.is_success(probs, self.label, self.target)
        if self.population is not None:
            ok &= fit > self.fitness[start:start + len(fit)]
        return ok

    def _generation_evaluated(self) -> None:
        attack = self.attack
        if self.population is None:
            self.population, self.fitness, self.probs = self.pending, self.pending_fitness, self.pending_probs
        else:
            self.population, self.fitness, self.probs = attack.select(
                self.population, self.fitness, self.probs, self.pending, self.pending_fitness, self.pending_probs)
        if attack.keep == "fittest" and self._keep_fittest():
            return
        if self.generation >= attack.max_iter:
            best = int(np.argmax(self.fitness))
            self.finish_target(False, self.population[best], self.probs[best], float(self.fitness[best]),
                               self.generation)
            return
        self.generation += 1
        self._new_pending(attack.next_generation(self.rng, self.population))

    def _keep_fittest(self) -> bool:
        """The authors' rule: after a generation (and its selection) holding a success, keep
        the population's fittest member — the fittest successful one, which is the argmax
        under the paper's rule. A member the plain model does not confirm is rejected (it
        keeps the plain model's probabilities) and the next fittest successful one is tried;
        if none is confirmed the search goes on."""
        attack = self.attack
        members = np.flatnonzero(attack.is_success(self.probs, self.label, self.target))
        if not len(members):
            return False
        order = members[np.argsort(-self.fitness[members], kind="stable")]
        k = 0
        if attack.verify:
            k, checked, checked_fit = self.confirm(self.population[order], lambda i, p, f: bool(
                attack.is_success(p, self.label, self.target)))
            rejected = len(checked) if k is None else k
            self.probs[order[:rejected]], self.fitness[order[:rejected]] = checked[:rejected], checked_fit[:rejected]
            self.reject(rejected)
            if k is None:
                return False
            j = int(order[k])
            self.probs[j], self.fitness[j] = checked[k], checked_fit[k]
        j = int(order[k])
        self.finish_target(True, self.population[j], self.probs[j], float(self.fitness[j]), self.generation)
        return True


def distinct_triples(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` rows of three distinct indices in [0, n), each triple uniform over ordered triples."""
    if n < 3:
        raise OptionError(f"need at least 3 population members to draw three distinct ones, got {n}")
    a = rng.integers(0, n, size)
    b = rng.integers(0, n - 1, size)
    b = b + (b >= a)
    c = rng.integers(0, n - 2, size)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    c = c + (c >= lo)
    c = c + (c >= hi)
    return np.stack([a, b, c], axis=1)


class OnePixelDE(Attack):
    """The authors' one-pixel (L-pixel) attack: differential evolution after Su et al.

    Population ``pop_size`` of unit candidates (L, 2 + B); initial positions uniform, unit
    values clip(N(0.5, 0.5), 0, 1) (mapped into the value range); each child = x1 + F
    (x2 - x3) from three distinct random members (no crossover); coordinates that leave
    [0, 1] are redrawn uniformly; a child replaces its own parent only if strictly fitter.
    Fitness: p(target) targeted, -p(true) untargeted. A search ends at a success or after
    ``max_iter`` generations (then it reports the fittest member).

    Keep rule (``keep``):

    - ``"fittest"`` (default; the authors' ``onepixel_attack.py``): every generation is
      evaluated whole and the selection applied; if the population then holds a success,
      the search keeps its fittest successful member (under the paper's rule that is
      ``fitness.argmax()``), re-checked by the plain model; if that check fails the next
      fittest successful member is tried (each failure counted in ``rejected``), and if
      none holds the search goes on. Evaluations count the whole success generation.
    - ``"first"``: the first successful child in index order that beats its parent (also
      re-checked) ends the search; its p(target) lies just past the boundary.

    Args:
        model: the classifier (see :class:`Attack`).
        pop_size: population size, >= 4 [default: 400].
        max_iter: generations evolved at most, >= 0 [default: 80].
        pixels: L, pixels per candidate [default: 1].
        F: the mutation's scale factor [default: 0.5].
        keep: ``"fittest"`` or ``"first"`` [default: "fittest"].
        **kwargs: the rest of :class:`Attack`'s arguments (mode, success, value_range, seed,
            device, dtype, chunk_size, batch_images, local, optimize, channels_last, bf16,
            verify, threads).

    Raises:
        OptionError: any argument out of range or unknown.
    """

    search_class = _DESearch

    def __init__(self, model: nn.Module, *, pop_size: int = 400, max_iter: int = 80, pixels: int = 1,
                 F: float = 0.5, keep: str = "fittest", **kwargs) -> None:
        if int(pop_size) < 4:
            raise OptionError(f"population size must be at least 4, got {pop_size}")
        super().__init__(model, max_iter=max_iter, pixels=pixels, keep=keep, **kwargs)
        self.pop_size = int(pop_size)
        self.F = float(F)

    def initial_population(self, rng: np.random.Generator) -> np.ndarray:
        """(pop_size, L, 2 + B): positions uniform, unit values clip(N(0.5, 0.5), 0, 1)."""
        pos = rng.random((self.pop_size, self.pixels, 2))
        vals = np.clip(rng.normal(0.5, 0.5, (self.pop_size, self.pixels, self.bands)), 0.0, 1.0)
        return np.concatenate([pos, vals], axis=2)

    def next_generation(self, rng: np.random.Generator, population: np.ndarray) -> np.ndarray:
        """Children (pop_size, L, 2 + B): x1 + F (x2 - x3), coordinates outside [0, 1] redrawn."""
        idx = distinct_triples(rng, len(population), len(population))
        child = population[idx[:, 0]] + self.F * (population[idx[:, 1]] - population[idx[:, 2]])
        redraw = rng.random(child.shape)
        out = (child < 0.0) | (child > 1.0)
        return np.where(out, redraw, child)

    def select(self, population: np.ndarray, fitness: np.ndarray, probs: np.ndarray, children: np.ndarray,
               child_fitness: np.ndarray, child_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each child replaces its own parent if strictly fitter: the new (population, fitness, probs)."""
        better = child_fitness > fitness
        return (np.where(better[:, None, None], children, population), np.where(better, child_fitness, fitness),
                np.where(better[:, None], child_probs, probs))


def reference_attack(model: nn.Module, image: np.ndarray, label: int, target: int | None, *, pop_size: int = 400,
                     max_iter: int = 80, pixels: int = 1, seed: int = 0, key: int = 0, F: float = 0.5,
                     success: str = "paper", keep: str = "fittest", value_range: ValueRange | None = None,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> AttackResult:
    """The published per-candidate loop, one forward pass per candidate, with the same random
    streams as :class:`OnePixelDE`: the reference the engine must agree with.

    ``keep="fittest"`` follows the authors' ``attack()`` in ``onepixel_attack.py`` line by
    line: the fitness is p(label) with label = target (or the true class untargeted);
    ``for iteration in range(iters)``: stop if the population holds a success
    (``fitness.max() > 0.5``, or ``fitness.min() < 0.05`` untargeted), else evolve a whole
    generation, evaluate every child, and let each child replace its parent where better;
    after the loop keep ``fitness.argmax()`` (``argmin`` untargeted) — under the top-class
    rule the fittest successful member. (The authors' give-up rule, ``fitness.max() < 0.4
    and iteration > 80``, never fires at caps up to 81 and is left out.) ``keep="first"``
    evaluates the children one at a time and stops at the first successful child that
    beats its parent.

    Args:
        model: the classifier; image (B, H, W) in model-input space; label the true class;
            target the class attacked, or None (untargeted).
        pop_size, max_iter, pixels, F, success, keep, value_range: as :class:`OnePixelDE`.
        seed, key: the stream is ``np.random.default_rng([seed, key, target])`` (target K,
            the number of classes, untargeted) [defaults: 0, 0].
        device, dtype: where and in which precision [defaults: "cpu", float32].

    Returns:
        An :class:`AttackResult` (index 0) with the kept candidate and the evaluations.
    """
    atk = OnePixelDE(model, pop_size=pop_size, max_iter=max_iter, pixels=pixels, F=F, seed=seed, success=success,
                     keep=keep, value_range=value_range, device=device, dtype=dtype, optimize=False, verify=False,
                     mode="untargeted" if target is None else "targeted")
    loop = _ReferenceLoop(atk, np.asarray(image, dtype=np.float32), int(label), target, success, dtype)
    code = atk.n_classes if target is None else int(target)
    rng = np.random.default_rng([atk.seed, int(key), code])
    candidates = atk.initial_population(rng)
    probs = loop.evaluate(candidates)
    score = probs[:, loop.fitness_label].copy()  # the authors' fitness: p(label)
    run = loop.fittest if keep == "fittest" else loop.first
    generation, found, evaluations = run(rng, candidates, probs, score, max_iter)
    targeted = target is not None
    best = found if found is not None else int(np.argmax(score) if targeted else np.argmin(score))
    rows, cols, values = candidate_pixels(candidates[best][None], *loop.size, atk.value_range)
    fit = float(score[best]) if targeted else -float(score[best])
    return AttackResult(index=0, label=int(label), target=target, success=found is not None, iterations=generation,
                        pixels=np.stack([cols[0], rows[0]], axis=1), values=values[0], probabilities=probs[best],
                        fitness=fit, evaluations=evaluations,
                        targets_tried=() if target is None else (int(target),), iterations_total=generation)


class _ReferenceLoop:
    """:func:`reference_attack`'s search on one image: one plain forward pass per candidate; the
    population (``candidates``, ``probs``, ``score``) is updated in place by :meth:`fittest` or
    :meth:`first`, which return (generations evolved, the successful member or None, evaluations
    counted, the initial population's included)."""

    def __init__(self, atk: OnePixelDE, image: np.ndarray, label: int, target: int | None, success: str,
                 dtype: torch.dtype) -> None:
        self.atk, self.net, self.dtype = atk, atk.reference_model, dtype
        atk.prepare(image[None])
        self.x0 = torch.as_tensor(image, device=atk.device, dtype=dtype)
        self.size = image.shape[1:]
        self.label, self.target, self.success = label, target, success
        self.targeted = target is not None
        self.fitness_label = int(target) if self.targeted else label

    def evaluate_one(self, cand: np.ndarray) -> np.ndarray:
        rows, cols, values = candidate_pixels(cand[None], *self.size, self.atk.value_range)
        x = self.x0.clone()
        for k in range(rows.shape[1]):
            x[:, rows[0, k], cols[0, k]] = torch.as_tensor(values[0, k], dtype=self.dtype, device=self.atk.device)
        with torch.inference_mode():
            return torch.softmax(self.net(x[None])[0], dim=1)[0].double().cpu().numpy()

    def evaluate(self, cands: np.ndarray) -> np.ndarray:
        return np.stack([self.evaluate_one(c) for c in cands])

    def succeeded(self, probs: np.ndarray) -> np.ndarray:
        return is_success(probs, self.label, self.target, self.success)

    def better(self, new: np.ndarray | float, old: np.ndarray | float) -> np.ndarray | bool:
        return new > old if self.targeted else new < old

    def fittest(self, rng: np.random.Generator, candidates: np.ndarray, probs: np.ndarray, score: np.ndarray,
                max_iter: int) -> tuple[int, int | None, int]:
        """The authors' loop: stop when the population holds a success, else evolve and evaluate a whole
        generation; keep the fittest successful member."""
        generation, evaluations = 0, len(candidates)
        for _ in range(max_iter):
            if self.succeeded(probs).any():  # early stopping: the population holds a success
                break
            children = self.atk.next_generation(rng, candidates)
            child_probs = self.evaluate(children)
            evaluations += len(children)
            child_score = child_probs[:, self.fitness_label]
            successors = self.better(child_score, score)
            candidates[successors] = children[successors]
            probs[successors] = child_probs[successors]
            score[successors] = child_score[successors]
            generation += 1
        ok = self.succeeded(probs)
        if not ok.any():
            return generation, None, evaluations
        members = np.flatnonzero(ok)  # the fittest successful member: fitness.argmax() under the paper's rule
        pick = np.argmax(score[members]) if self.targeted else np.argmin(score[members])
        return generation, int(members[pick]), evaluations

    def first(self, rng: np.random.Generator, candidates: np.ndarray, probs: np.ndarray, score: np.ndarray,
              max_iter: int) -> tuple[int, int | None, int]:
        """Children one at a time; stop at the first successful child that beats its parent. The
        initial population counts up to its first successful member, as the engine's does."""
        ok = self.succeeded(probs)
        found = int(np.flatnonzero(ok)[0]) if ok.any() else None
        generation, evaluations = 0, len(candidates) if found is None else found + 1
        while found is None and generation < max_iter:
            generation += 1
            children = self.atk.next_generation(rng, candidates)
            for i, child in enumerate(children):
                p = self.evaluate_one(child)
                evaluations += 1
                if self.better(p[self.fitness_label], score[i]):
                    candidates[i], probs[i], score[i] = child, p, p[self.fitness_label]
                    if self.succeeded(p):
                        found = i
                        break
        return generation, found, evaluations


def build_search(model: nn.Module, config: Any, *, batch_images: int | None = None, **common: Any) -> OnePixelDE:
    """The campaign's DE engine (``--search de``, the registry's builder): the config's population,
    iteration cap, pixels and keep rule, with the settings every search shares (``common``)."""
    return OnePixelDE(model, pop_size=config.pop_size, max_iter=config.max_iter, pixels=config.pixels,
                      keep=config.keep, batch_images=batch_images, **common)
