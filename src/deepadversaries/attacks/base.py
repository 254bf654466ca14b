"""The base of the pixel attacks (SPEC 7): :class:`Attack`, the scheduler, and one image's search state.

The design follows torchattacks: :class:`Attack` owns everything that is not the search
rule itself — the model's evaluation mode and device (any classifier: one that returns
logits only is wrapped, :mod:`deepadversaries.attacks.classifier`), the choice of target
classes, the fitness and success rules (:func:`~deepadversaries.attacks.rules.is_success`),
the range of values a changed pixel may take (:mod:`deepadversaries.attacks.values`), the
re-check of every claimed success by a plain forward pass, and the scheduling of many
candidates (of one image or of several images at once) into chunked, batched forward
passes of an inference-optimised copy of the model (:mod:`deepadversaries.attacks.evaluators`).
A search writes only its own step, as a :class:`SearchState` subclass, and an
:class:`Attack` subclass naming it: differential evolution in :mod:`deepadversaries.attacks.de`,
Sparse-RS in :mod:`deepadversaries.attacks.sparse_rs`, the corner search in
:mod:`deepadversaries.attacks.exhaustive`. Candidates are unit arrays (L, 2 + B)
(:mod:`deepadversaries.attacks.candidates`). Images of any band count and models of any
number of classes K are attacked alike (targeted attacks try the K - 1 other classes in turn).

Calling an attack, ``attack(images, labels)``, returns the adversarial images (as
torchattacks does; the full :class:`AttackResult` of each image is then in
``attack.last_results``); :meth:`Attack.results` returns the results themselves, and
:meth:`Attack.run` yields them as images finish.

Determinism: every (image, target) search draws from its own random stream, seeded by
``(seed, key, target)``, and its candidates are evaluated in index order. With the keep
rule ``fittest`` (the default, the authors') every generation is evaluated whole and the
success test, the choice of the kept member and its re-check happen once the generation
is complete; with ``first`` a search stops at the first successful candidate in index
order. Either way neither the chunk size nor the number of images evaluated together
changes any image's search (up to floating-point ties; exactly in float64).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from deepadversaries.attacks.candidates import candidate_fields, candidate_pixels, perturb, set_pixels
from deepadversaries.attacks.choices import KEEP_RULES, MODES, SUCCESS_RULES
from deepadversaries.attacks.classifier import as_classifier
from deepadversaries.attacks.evaluators import (
    CandidateEvaluator, LocalConvNetEvaluator, default_channels_last, default_chunk_size, make_evaluator,
    optimized_for_inference,
)
from deepadversaries.attacks.rules import is_success
from deepadversaries.attacks.values import ValueRange, input_range
from deepadversaries.cpu_threads import ThreadGovernor
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.models.networks import model_classes


@dataclass
class AttackResult:
    """The outcome of attacking one image (any search)."""

    #: index of the image in the call's ``images``
    index: int
    #: true class
    label: int
    #: the class attacked (targeted), or None (untargeted)
    target: int | None
    success: bool
    #: rounds of the reported search: DE generations evolved (0 = the initial population
    #: succeeded); Sparse-RS iterations after the initial candidate; 0 for the exhaustive map
    iterations: int
    #: (L, 2) int: pixel (x, y) = (column, row) of each changed pixel
    pixels: np.ndarray
    #: (L, B) float: the new values of each pixel (g, r, i for the paper's images), in model-input space
    values: np.ndarray
    #: (n_classes,) class probabilities of the perturbed image (the plain model's for a success)
    probabilities: np.ndarray
    #: fitness of the reported candidate: p(target), or -p(true) untargeted
    fitness: float
    #: model queries (candidates evaluated) over all targets tried, up to the moment the
    #: search decided: for a success, the query count at which it succeeded (DE ``first``:
    #: up to the successful candidate; DE ``fittest``: the whole success generation;
    #: Sparse-RS: its queries; exhaustive: every position x value). Re-checks by the plain
    #: model are not counted.
    evaluations: int
    #: the targets tried, in order (empty untargeted)
    targets_tried: tuple[int, ...] = ()
    #: rounds over all targets tried
    iterations_total: int = 0
    #: claimed successes that the plain model's re-check rejected (the search went on)
    rejected: int = 0
    #: the perturbed image (B, H, W) float32, on request
    image: np.ndarray | None = field(default=None, repr=False)

    @property
    def p_target(self) -> float | None:
        """p(target) of the kept candidate (``probabilities[target]``); None untargeted."""
        return None if self.target is None else float(self.probabilities[self.target])

    @property
    def queries_to_success(self) -> int | None:
        """Queries spent until the search succeeded (``evaluations``), None if it failed —
        the abscissa of success-versus-queries curves."""
        return int(self.evaluations) if self.success else None


# --------------------------------------------------------------------------------------
# the state of one image's search
# --------------------------------------------------------------------------------------
class SearchState:
    """One image's attack: its targets tried in turn, each a search with its own stream.

    The scheduler (:meth:`Attack.run`) reads ``pending`` — (N, L, 2 + B) unit candidates —
    and ``n_evaluated`` (how many of them have been evaluated), and hands the class
    probabilities of the next ones, in index order, to :meth:`receive`. A search rule
    subclasses this and writes :meth:`start_target` (the first pending candidates of a new
    target, drawn from ``self.rng``) and :meth:`receive` (counting ``self.evaluations``,
    setting new pending candidates, or calling :meth:`finish_target`); it re-checks a
    claimed success with :meth:`recheck` and counts a rejected claim with :meth:`reject`.
    """

    def __init__(self, attack: Attack, index: int, slot: int, label: int, targets: Sequence[int | None],
                 key: int, image: np.ndarray) -> None:
        self.attack = attack
        self.index = index
        self.slot = slot
        self.label = int(label)
        self.targets = list(targets)
        self.key = int(key)
        self.image = image
        self.height, self.width = image.shape[1:]
        self.target_pos = -1
        self.evaluations = 0
        self.iterations_total = 0
        self.rejected = 0  # successes the search claimed that the plain model did not confirm
        self.finished: list[dict] = []  # one record per target tried
        self.done = False
        self.pending = np.zeros((0, attack.pixels, candidate_fields(attack.bands)))
        self.n_evaluated = 0
        self._start_next_target()

    # -- written by a search rule ---------------------------------------------------------
    def start_target(self) -> None:
        """Set the first pending candidates of ``self.target``'s search."""
        raise NotImplementedError

    def receive(self, start: int, probs: np.ndarray) -> None:
        """Take the probabilities (n, n_classes) of pending candidates [start, start + n)."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------
    def _start_next_target(self) -> None:
        self.target_pos += 1
        self.target = self.targets[self.target_pos]
        code = self.attack.n_classes if self.target is None else int(self.target)
        self.rng = np.random.default_rng([self.attack.seed, self.key, code])
        self.start_target()

    @property
    def n_pending(self) -> int:
        return len(self.pending) - self.n_evaluated

    def set_pending(self, candidates: np.ndarray) -> None:
        """Make ``candidates`` (N, L, 2 + B) the next to evaluate."""
        self.pending = np.asarray(candidates, dtype=np.float64)
        self.n_evaluated = 0

    def recheck(self, candidate: np.ndarray) -> tuple[np.ndarray, float]:
        """The plain model's probabilities (n_classes,) and fitness of one candidate (L, 2 + B)."""
        probs = self.attack.reference_probabilities(self.image, candidate)
        return probs, float(self.attack.fitness(probs[None], self.label, self.target)[0])

    def confirm(self, candidates: np.ndarray, accept: Callable[[int, np.ndarray, float], bool]
                ) -> tuple[int | None, np.ndarray, np.ndarray]:
        """Re-check claimed successes (n, L, 5) in order (:meth:`Attack.confirm_in_order`);
        ``accept(i, probs, fitness)``. Returns the first accepted index (or None) and the plain
        probabilities (m, n_classes) and fitness (m,) of the claims re-checked."""
        attack = self.attack
        rows, cols, values = candidate_pixels(candidates, self.height, self.width, attack.value_range)
        pixels = np.stack([cols, rows], axis=-1)

        def fit(p: np.ndarray) -> float:
            return float(attack.fitness(p[None], self.label, self.target)[0])

        k, probs = attack.confirm_in_order(self.image, pixels, values, lambda i, p: accept(i, p, fit(p)))
        fits = attack.fitness(probs, self.label, self.target) if len(probs) else np.zeros(0)
        return k, probs, fits

    def reject(self, count: int = 1) -> None:
        """Count claimed successes that the plain model did not confirm."""
        self.attack.n_unverified += int(count)
        self.rejected += int(count)

    def finish_target(self, success: bool, candidate: np.ndarray, probs: np.ndarray, fitness: float,
                      iterations: int) -> None:
        """Record the decided search of ``self.target``; go on to the next target unless done."""
        self.iterations_total += int(iterations)
        self.finished.append({"target": self.target, "success": bool(success), "candidate": np.array(candidate),
                              "probs": np.array(probs, dtype=np.float64), "fitness": float(fitness),
                              "iterations": int(iterations)})
        if success or self.target_pos + 1 >= len(self.targets):
            self.done = True
            self.pending = self.pending[:0]
            self.n_evaluated = 0
        else:
            self._start_next_target()

    def result(self, return_image: bool) -> AttackResult:
        """The image's result: the first success over the targets tried, else the closest try."""
        wins = [f for f in self.finished if f["success"]]
        best = wins[0] if wins else max(self.finished, key=lambda f: f["fitness"])
        vr = self.attack.value_range
        rows, cols, values = candidate_pixels(best["candidate"][None], self.height, self.width, vr)
        return AttackResult(
            index=self.index, label=self.label, target=best["target"], success=bool(best["success"]),
            iterations=int(best["iterations"]), pixels=np.stack([cols[0], rows[0]], axis=1),
            values=values[0].astype(np.float64), probabilities=best["probs"], fitness=best["fitness"],
            evaluations=int(self.evaluations),
            targets_tried=tuple(int(f["target"]) for f in self.finished if f["target"] is not None),
            iterations_total=self.iterations_total, rejected=self.rejected,
            image=perturb(self.image, best["candidate"], value_range=vr) if return_image else None,
        )


# --------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------
class Attack:
    """Base of black-box pixel attacks (torchattacks-style).

    Handles the model (an inference-optimised eval-mode copy on ``device`` in ``dtype``
    for the search, a plain copy to re-check successes; the caller's model is untouched),
    targeting (``mode``; targeted attacks try the given targets in turn, by default every
    other class in ascending order, and keep the first success), the fitness and success
    rules (:func:`is_success`), the value range of changed pixels, and batching: up to
    ``batch_images`` images are searched at once, and their pending candidates are
    evaluated ``chunk_size`` at a time. A subclass names its :class:`SearchState` in
    ``search_class`` and writes the steps that state calls.

    Images of any band count B and models of any number of classes K are attacked alike:
    K comes from the model (``model.n_classes``, else one forward pass of the first image),
    B from the images (the default ``input`` value range follows them; a given range must
    have B bands).

    Args:
        model: any classifier of images x (N, B, H, W): one that returns ``(logits, latent)``
            (the package's models) or the logits (N, K) only (a torchvision or timm model;
            wrapped by :func:`~deepadversaries.attacks.classifier.as_classifier`). It is
            copied; the caller's model is untouched.
        max_iter: the iteration cap of iterative searches (DE: generations) [default: 0].
        pixels: L, pixels changed per candidate [default: 1].
        mode: ``"targeted"`` or ``"untargeted"`` [default: "targeted"].
        success: the success rule, ``"paper"`` or ``"top-class"`` (see :func:`is_success`)
            [default: "paper"].
        keep: which success a search keeps when one round of it holds several:
            ``"fittest"`` (the authors') or ``"first"`` (see :class:`~deepadversaries.attacks.de.OnePixelDE`);
            searches that evaluate one candidate per round are the same under both [default: "fittest"].
        value_range: the values a changed pixel may take [default: None = :func:`input_range`,
            [0, 1] in every band of the images].
        seed: the attack's seed, >= 0; each (image, target) search draws from
            ``np.random.default_rng([seed, key, target])`` (target K = untargeted) [default: 0].
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device`` [default: "auto"].
        dtype: ``torch.float32`` or ``torch.float64`` [default: float32].
        chunk_size: candidates per forward pass [default: None = :func:`default_chunk_size`].
        batch_images: images searched at once [default: None = the search's default for the device].
        local: use (True) or forbid (False) :class:`LocalConvNetEvaluator` [default: None = where exact].
        optimize: search with :func:`optimized_for_inference`'s copy [default: True].
        channels_last: NHWC layout [default: None = :func:`default_channels_last`].
        bf16: search in bfloat16 autocast; successes are still re-checked in ``dtype``
            [default: False].
        verify: re-check every claimed success with a plain forward pass of the unfused
            model before accepting it [default: True].
        threads: a :class:`ThreadGovernor`, entered by the caller, consulted between chunks
            on the CPU [default: None].

    Raises:
        OptionError: any argument out of range or unknown.
    """

    search_class: type[SearchState] = SearchState
    #: images searched at once by default: (CPU, CUDA)
    batch_images_default: tuple[int, int] = (2, 64)

    def __init__(self, model: nn.Module, *, max_iter: int = 0, pixels: int = 1, mode: str = "targeted",
                 success: str = "paper", keep: str = "fittest", value_range: ValueRange | None = None,
                 seed: int = 0, device: str | torch.device = "auto", dtype: torch.dtype = torch.float32,
                 chunk_size: int | None = None, batch_images: int | None = None, local: bool | None = None,
                 optimize: bool = True, channels_last: bool | None = None, bf16: bool = False,
                 verify: bool = True, threads: ThreadGovernor | None = None) -> None:
        check_choice(mode, MODES, "attack mode")
        check_choice(success, SUCCESS_RULES, "success rule")
        check_choice(keep, KEEP_RULES, "keep rule")
        if int(pixels) < 1:
            raise OptionError(f"pixels must be at least 1, got {pixels}")
        if int(seed) < 0:
            raise OptionError(f"the seed must be 0 or more, got {seed}")
        if int(max_iter) < 0:
            raise OptionError(f"the iteration cap must be 0 or more, got {max_iter}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise OptionError(f"chunk size must be at least 1, got {chunk_size}")
        if batch_images is not None and int(batch_images) < 1:
            raise OptionError(f"batch images must be at least 1, got {batch_images}")
        if dtype not in (torch.float32, torch.float64):
            raise OptionError(f"dtype must be float32 or float64 (use bf16=True for bfloat16), got {dtype}")
        if value_range is not None and not isinstance(value_range, ValueRange):
            raise OptionError(f"value_range must be a ValueRange (see make_value_range), got {value_range!r}")
        self.max_iter = int(max_iter)
        self.pixels = int(pixels)
        self.mode = mode
        self.success_rule = success
        self.keep = keep
        self.value_range_given = value_range is not None
        self.value_range = value_range or input_range()
        model = as_classifier(model)
        self.n_classes: int | None = model_classes(model)
        self.seed = int(seed)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = dtype
        self.local = local
        self.verify = verify
        self.bf16 = bool(bf16)
        self.n_unverified = 0
        self.reference_model = copy.deepcopy(model).to(self.device, dtype).eval()
        self.channels_last = default_channels_last(self.device) if channels_last is None else bool(channels_last)
        self.channels_last = self.channels_last and optimize
        self.eval_model = (optimized_for_inference(self.reference_model, self.channels_last) if optimize
                           else self.reference_model)
        self.chunk_size = chunk_size
        self.batch_images = batch_images
        self.threads = threads
        self.last_evaluator: str | None = None
        self.last_results: list[AttackResult] = []

    @property
    def bands(self) -> int:
        """B, the band count of the images attacked (the value range's)."""
        return self.value_range.bands

    def prepare(self, images: np.ndarray) -> None:
        """Fit the attack to the images (N, B, H, W) before a search: the default value range
        takes their B bands, and K is read off one forward pass when the model does not say.

        Raises:
            OptionError: a value range given for another band count.
        """
        bands = int(images.shape[1])
        if self.value_range.bands != bands:
            if self.value_range_given:
                raise OptionError(f"the {self.value_range.kind} value range has {self.value_range.bands} bands but "
                                  f"the images have {bands}")
            self.value_range = input_range(bands)
            self.value_range_changed()
        if self.n_classes is None:
            with torch.inference_mode():
                x = torch.as_tensor(np.asarray(images[:1], dtype=np.float32), device=self.device, dtype=self.dtype)
                self.n_classes = int(self.reference_model(x)[0].shape[1])

    def value_range_changed(self) -> None:
        """Called when :meth:`prepare` replaced the default value range (a search derives sets from it)."""

    # -- fitness and success -----------------------------------------------------------
    def fitness(self, probs: np.ndarray, label: int, target: int | None) -> np.ndarray:
        """Larger is better: p(target) targeted, -p(true) untargeted; probs (B, n_classes) -> (B,)."""
        return probs[:, target].copy() if target is not None else -probs[:, label]

    def is_success(self, probs: np.ndarray, label: int, target: int | None) -> np.ndarray | bool:
        """:func:`is_success` under this attack's rule."""
        return is_success(probs, label, target, self.success_rule)

    #: the most claimed successes re-checked in one plain forward pass (blocks grow 1, 2, 4, ...)
    RECHECK_BLOCK = 64

    @torch.inference_mode()
    def plain_probabilities_batch(self, image: np.ndarray, pixels: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Probabilities (n, n_classes) of n perturbed copies of ``image`` (B, H, W) — copy k
        with pixels[k] (L, 2) = (x, y) set to model-input values[k] (L, 3) — by one plain
        forward pass of the unfused model over the n copies."""
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        x = np.stack([set_pixels(image, p, v, np_dtype) for p, v in zip(pixels, values)])
        x = torch.as_tensor(x, device=self.device, dtype=self.dtype)
        return torch.softmax(self.reference_model(x)[0], dim=1).double().cpu().numpy()

    def plain_probabilities(self, image: np.ndarray, pixels: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Probabilities (n_classes,) of ``image`` (B, H, W) with pixels (L, 2) = (x, y) set to
        model-input values (L, B), by a plain forward pass of the unfused model."""
        return self.plain_probabilities_batch(image, np.asarray(pixels)[None], np.asarray(values)[None])[0]

    def reference_probabilities(self, image: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """Probabilities (n_classes,) of one perturbed image (candidate (L, 2 + B)), by a plain
        forward pass of the unfused model."""
        rows, cols, values = candidate_pixels(np.asarray(candidate)[None], image.shape[1], image.shape[2],
                                              self.value_range)
        return self.plain_probabilities(image, np.stack([cols[0], rows[0]], axis=1), values[0])

    def confirm_in_order(self, image: np.ndarray, pixels: np.ndarray, values: np.ndarray,
                         accept: Callable[[int, np.ndarray], bool]) -> tuple[int | None, np.ndarray]:
        """Re-check claimed successes in order with the plain model; stop at the first it confirms.

        The claims are re-checked in blocks of 1, 2, 4, ... (at most :attr:`RECHECK_BLOCK`)
        plain forward passes: a true first claim costs one pass, a run of false ones (a
        bfloat16 search near the boundary) a few.

        Args:
            image: (B, H, W) the clean image.
            pixels: (n, L, 2) the claims' pixels (x, y); values (n, L, B) their values.
            accept: ``accept(i, probs)`` — whether claim i holds given the plain model's
                probabilities (n_classes,).

        Returns:
            (i, probs): the first accepted claim (None if none) and the plain probabilities
            (m, n_classes) of the claims re-checked up to it (m = i + 1), or of all n.
        """
        n = len(pixels)
        checked: list[np.ndarray] = []
        start, size = 0, 1
        while start < n:
            stop = min(n, start + size)
            probs = self.plain_probabilities_batch(image, pixels[start:stop], values[start:stop])
            for i in range(start, stop):
                checked.append(probs[i - start])
                if accept(i, probs[i - start]):
                    return i, np.array(checked)
            start, size = stop, min(2 * size, self.RECHECK_BLOCK)
        return None, np.array(checked).reshape(len(checked), -1)

    # -- inputs --------------------------------------------------------------------------
    def default_images_at_once(self) -> int:
        """Images searched at once when ``batch_images`` is not given."""
        return self.batch_images_default[1 if self.device.type == "cuda" else 0]

    def targets_for(self, labels: np.ndarray, targets) -> list[list[int | None]]:
        """Per image, the targets to try in turn ([None] untargeted)."""
        n = len(labels)
        if self.mode == "untargeted":
            return [[None] for _ in range(n)]
        k = self.n_classes
        if targets is None:
            return [[c for c in range(k) if c != int(labels[i])] for i in range(n)]
        out = []
        for i, t in enumerate(targets):
            ts = [int(t)] if np.ndim(t) == 0 else [int(u) for u in t]
            if not ts or any(u < 0 or u >= k for u in ts):
                raise OptionError(f"image {i}: targets must be class indices 0..{k - 1}, got {ts}")
            out.append(ts)
        if len(out) != n:
            raise OptionError(f"{len(out)} target entries for {n} images")
        return out

    @staticmethod
    def check_inputs(images: np.ndarray | torch.Tensor, labels: Sequence[int],
                     keys: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``images`` (N, B, H, W) as numpy, ``labels`` (N,) int64 and ``keys`` (N,) int64, checked."""
        imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if imgs.ndim != 4 or min(imgs.shape[1:]) < 1:
            raise OptionError(f"images must have shape (N, bands, H, W), got {imgs.shape}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(imgs):
            raise OptionError(f"{len(labels)} labels for {len(imgs)} images")
        keys = np.arange(len(imgs)) if keys is None else np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) != len(imgs):
            raise OptionError(f"{len(keys)} keys for {len(imgs)} images")
        return imgs, labels, keys

    # -- running -------------------------------------------------------------------------
    def run(self, images: np.ndarray | torch.Tensor, labels: Sequence[int], targets=None,
            keys: Sequence[int] | None = None, return_images: bool = False) -> Iterator[AttackResult]:
        """Attack every image; yield each result as soon as its image is finished.

        Args:
            images: (N, B, H, W) in model-input space (stretched, [0, 1]).
            labels: (N,) the true classes.
            targets: targeted mode: per image one class or a sequence of classes tried in
                turn [default: None = every other class, ascending]; ignored untargeted.
            keys: (N,) integers that seed each image's streams; the campaign passes
                test-set indices [default: None = 0..N-1].
            return_images: also return each perturbed image [default: False].

        Yields:
            One :class:`AttackResult` per image, in the order images finish
            (``result.index`` is the position in ``images``).

        Raises:
            OptionError: shapes or targets that do not fit.
        """
        imgs, labels, keys = self.check_inputs(images, labels, keys)
        if len(imgs) == 0:
            return
        self.prepare(imgs)
        target_lists = self.targets_for(labels, targets)
        n_slots = min(len(imgs), self.batch_images or self.default_images_at_once())
        evaluator, chunk = self._make_evaluator(n_slots, tuple(imgs.shape[1:]))
        queue = deque(range(len(imgs)))
        free = list(range(n_slots))[::-1]
        active: list[SearchState] = []
        while queue or active:
            if self.threads is not None:
                self.threads.update()  # fewer CPU threads while other processes hold cores
            while queue and free:
                i = queue.popleft()
                active.append(self._start_search(evaluator, free.pop(), i, imgs, labels, target_lists, keys))
            self._evaluate_chunk(evaluator, self._next_chunk(active, chunk), imgs.shape[2:])
            active = yield from self._release_finished(active, free, return_images)

    def _make_evaluator(self, n_slots: int, shape: tuple[int, ...]) -> tuple[CandidateEvaluator, int]:
        """The candidate evaluator for ``n_slots`` images of ``shape`` (B, H, W) and the candidates per chunk."""
        evaluator = make_evaluator(self.eval_model, n_slots, shape, self.device, self.dtype, pixels=self.pixels,
                                   local=self.local, channels_last=self.channels_last, bf16=self.bf16)
        local = isinstance(evaluator, LocalConvNetEvaluator)
        chunk = self.chunk_size or default_chunk_size(self.device, local)
        self.last_evaluator = type(evaluator).__name__
        return evaluator, chunk

    def _start_search(self, evaluator: CandidateEvaluator, slot: int, i: int, imgs: np.ndarray, labels: np.ndarray,
                      target_lists: list[list[int | None]], keys: np.ndarray) -> SearchState:
        """Load image ``i`` of ``imgs`` (N, B, H, W) into ``slot`` of the evaluator and start its search."""
        image = np.asarray(imgs[i], dtype=np.float32)
        evaluator.load(slot, torch.from_numpy(image))
        return self.search_class(self, i, slot, int(labels[i]), target_lists[i], int(keys[i]), image)

    @staticmethod
    def _next_chunk(active: list[SearchState], chunk: int) -> list[tuple[SearchState, int, int]]:
        """Up to ``chunk`` pending candidates, in search order: (search, first, stop) per search."""
        parts: list[tuple[SearchState, int, int]] = []
        room = chunk
        for search in active:
            if room == 0:
                break
            take = min(room, search.n_pending)
            if take:
                parts.append((search, search.n_evaluated, search.n_evaluated + take))
                room -= take
        return parts

    def _evaluate_chunk(self, evaluator: CandidateEvaluator, parts: list[tuple[SearchState, int, int]],
                        size: tuple[int, int]) -> None:
        """Evaluate the chunk's candidates in one pass and hand each search its probabilities."""
        if not parts:
            return
        h, w = size
        cands = np.concatenate([s.pending[a:b] for s, a, b in parts])
        slots = np.concatenate([np.full(b - a, s.slot) for s, a, b in parts])
        rows, cols, values = candidate_pixels(cands, h, w, self.value_range)
        probs = evaluator.evaluate(slots, rows, cols, values)
        pos = 0
        for search, a, b in parts:
            if not search.done and search.n_evaluated == a:  # a search takes each part once
                search.receive(a, probs[pos: pos + b - a])
            pos += b - a

    @staticmethod
    def _release_finished(active: list[SearchState], free: list[int],
                          return_images: bool) -> Generator[AttackResult, None, list[SearchState]]:
        """Yield the result of each finished search and free its slot; return the searches still running."""
        still = []
        for search in active:
            if search.done:
                free.append(search.slot)
                yield search.result(return_images)
            else:
                still.append(search)
        return still

    def results(self, images: np.ndarray | torch.Tensor, labels: Sequence[int], targets=None,
                keys: Sequence[int] | None = None, return_images: bool = False) -> list[AttackResult]:
        """Attack every image (as :meth:`run`); one :class:`AttackResult` per image, in the order of ``images``."""
        results = list(self.run(images, labels, targets, keys, return_images))
        return sorted(results, key=lambda r: r.index)

    def __call__(self, images: np.ndarray | torch.Tensor, labels: Sequence[int] | torch.Tensor, targets=None,
                 keys: Sequence[int] | None = None) -> np.ndarray | torch.Tensor:
        """Attack every image and return the adversarial images (torchattacks' call).

        Args:
            images: (N, B, H, W) in model-input space, a tensor or an array.
            labels: (N,) the true classes.
            targets, keys: as :meth:`run`.

        Returns:
            (N, B, H, W), of the type, dtype and device of ``images``: each image with the kept
            change where the attack succeeded, unchanged where it failed (so the model's
            accuracy on them is its accuracy under attack). The results
            (:meth:`results`) are kept in ``self.last_results``.
        """
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        self.last_results = self.results(images, labels, targets, keys)
        clean = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        adversarial = np.array(clean, copy=True)
        for res in self.last_results:
            if res.success:
                adversarial[res.index] = set_pixels(clean[res.index], res.pixels, res.values, clean.dtype)
        if isinstance(images, torch.Tensor):
            return torch.as_tensor(adversarial, dtype=images.dtype, device=images.device)
        return adversarial
