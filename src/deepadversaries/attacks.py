"""L-pixel adversarial attacks by differential evolution (SPEC 7), evaluated in batches.

The design follows torchattacks: :class:`Attack` (the base class) owns everything that
is not the search rule itself — the model's evaluation mode and device, the choice of
target classes, the fitness and success rules, and the scheduling of many candidates
(of one image or of several images at once) into chunked, batched forward passes of an
inference-optimised copy of the model (:func:`optimized_for_inference`; for the ConvNet,
:class:`LocalConvNetEvaluator` recomputes only the window a pixel can change).
:class:`OnePixelDE` only writes the differential-evolution step: the initial
population, the mutation and the parent-versus-child selection.

A candidate is an array (L, 5): for each of its L pixels (x, y, v_g, v_r, v_i), all in
[0, 1] — x and y are the pixel column and row scaled to [0, 1), the values are the new
model-input (stretched) values of the three bands. Pixel ``(row, col) =
(min(floor(y H), H - 1), min(floor(x W), W - 1))``, so every pixel is equally likely.

Every (image, target) search draws from its own random stream, seeded by
``(seed, key, target)``, and its candidates are evaluated in index order; a search stops
at the first successful candidate. So neither the chunk size nor the number of images
evaluated together changes any image's search (up to floating-point ties; exactly in
float64).
"""

from __future__ import annotations

import contextlib
import copy
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from . import CLASSES
from .cpu_threads import ThreadGovernor
from .devices import resolve_device
from .errors import DeepAdvError

MODES: tuple[str, ...] = ("targeted", "untargeted")
SUCCESS_RULES: tuple[str, ...] = ("paper", "top-class")
#: targeted success: p(target) above this (paper rule)
TARGET_THRESHOLD = 0.5
#: untargeted success: p(true class) below this (paper rule)
UNTARGETED_THRESHOLD = 0.05
#: candidate fields per pixel: x (column), y (row), and values of g, r, i
CANDIDATE_FIELDS = 5


# --------------------------------------------------------------------------------------
# results and candidate geometry
# --------------------------------------------------------------------------------------
@dataclass
class AttackResult:
    """The outcome of attacking one image."""

    #: index of the image in the call's ``images``
    index: int
    #: true class
    label: int
    #: the class attacked (targeted), or None (untargeted)
    target: int | None
    success: bool
    #: generations evolved in the reported search; 0 = the initial population succeeded
    iterations: int
    #: (L, 2) int: pixel (x, y) = (column, row) of each changed pixel
    pixels: np.ndarray
    #: (L, 3) float: the new (g, r, i) values of each pixel, in model-input space
    values: np.ndarray
    #: (n_classes,) class probabilities of the perturbed image
    probabilities: np.ndarray
    #: fitness of the reported candidate: p(target), or -p(true) untargeted
    fitness: float
    #: candidates evaluated over all targets tried (up to and including the success)
    evaluations: int
    #: the targets tried, in order (empty untargeted)
    targets_tried: tuple[int, ...] = ()
    #: generations evolved over all targets tried
    iterations_total: int = 0
    #: claimed successes that the plain model's verification rejected (the search went on)
    rejected: int = 0
    #: the perturbed image (3, H, W) float32, on request
    image: np.ndarray | None = field(default=None, repr=False)


def candidate_pixels(candidates: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (B, L), columns (B, L) and values (B, L, 3) of candidates (B, L, 5)."""
    cand = np.asarray(candidates, dtype=np.float64)
    cols = np.minimum((cand[..., 0] * width).astype(np.int64), width - 1)
    rows = np.minimum((cand[..., 1] * height).astype(np.int64), height - 1)
    return rows, cols, cand[..., 2:5]


def perturb(image: np.ndarray | torch.Tensor, candidate: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """A copy of ``image`` (3, H, W) with the candidate's (L, 5) pixels set; later pixels win."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    rows, cols, values = candidate_pixels(np.asarray(candidate)[None], img.shape[1], img.shape[2])
    return set_pixels(img, np.stack([cols[0], rows[0]], axis=1), values[0], dtype)


def set_pixels(image: np.ndarray, pixels: np.ndarray, values: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """A copy of ``image`` (3, H, W) with pixels (L, 2) = (x, y) set to values (L, 3); later pixels win."""
    out = np.array(image, dtype=dtype, copy=True)
    for (x, y), v in zip(np.asarray(pixels, dtype=np.int64), np.asarray(values, dtype=np.float64)):
        out[:, y, x] = v
    return out


# --------------------------------------------------------------------------------------
# evaluating candidates
# --------------------------------------------------------------------------------------
class MaxPool2x2(nn.Module):
    """``nn.MaxPool2d(2)`` as two element-wise maxima of strided views: the same values,
    several times faster on a CPU for few channels (PyTorch's kernel also computes indices)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = x[..., : h // 2 * 2, : w // 2 * 2]
        rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _is_plain_2x2_pool(m: nn.Module) -> bool:
    def pair(v):
        return tuple(v) if isinstance(v, (tuple, list)) else (v, v)

    return (isinstance(m, nn.MaxPool2d) and pair(m.kernel_size) == (2, 2) and pair(m.stride) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


def optimized_for_inference(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """A copy of ``model`` in eval mode computing the same function (to float rounding), faster.

    Every BatchNorm that follows a convolution is folded into it (the ConvNet's conv -> BN
    sequences and torchvision's ResNet blocks), every plain 2x2 max-pool becomes
    :class:`MaxPool2x2`, and with ``channels_last`` the weights are stored NHWC.
    """
    fused = copy.deepcopy(model).eval()

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
            setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
            setattr(parent, bn_name, nn.Identity())

    for module in list(fused.modules()):
        if isinstance(module, nn.Sequential):
            names = [n for n, _ in module.named_children()]
            for a, b in zip(names, names[1:]):
                fold(module, a, b)
        for conv_name, bn_name in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):
            if hasattr(module, conv_name) and hasattr(module, bn_name):
                fold(module, conv_name, bn_name)
        for name, child in list(module.named_children()):
            if _is_plain_2x2_pool(child):
                setattr(module, name, MaxPool2x2())
    if channels_last:
        fused = fused.to(memory_format=torch.channels_last)
    return fused


class CandidateEvaluator:
    """Class probabilities of perturbed images, in batched forward passes.

    Images are loaded into numbered slots (one per image under attack); ``evaluate``
    takes, per candidate, a slot and its pixels and returns (B, n_classes) probabilities.
    """

    def __init__(self, model: nn.Module, n_slots: int, image_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype, channels_last: bool = False,
                 bf16: bool = False) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.image_shape = tuple(image_shape)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.bf16 = bf16
        self.images = torch.zeros((n_slots, *image_shape), device=device, dtype=dtype)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for the model's layers when asked (mixed precision), else nothing."""
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def load(self, slot: int, image: torch.Tensor) -> None:
        self.images[slot] = image.to(self.device, self.dtype)

    @torch.inference_mode()
    def evaluate(self, slots: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        x = self.images[torch.as_tensor(slots, device=self.device)]  # a copy (advanced indexing)
        b = torch.arange(len(slots), device=self.device)
        r = torch.as_tensor(rows, device=self.device)
        c = torch.as_tensor(cols, device=self.device)
        v = torch.as_tensor(values, device=self.device, dtype=self.dtype)
        for k in range(r.shape[1]):  # later pixels win, as in perturb()
            x[b, :, r[:, k], c[:, k]] = v[:, k]
        with self.autocast():
            logits = self.model(x.contiguous(memory_format=self.memory_format))[0]
        return torch.softmax(logits.to(self.dtype), dim=1).double().cpu().numpy()


class LocalConvNetEvaluator(CandidateEvaluator):
    """Exact one-pixel evaluation of the ConvNet that recomputes only what a pixel changes.

    Three conv(pad k//2) -> pool(2) blocks make feature (i, j) of the last 12x12 map
    depend on input rows [8i - 8, 8i + 15] (and the same columns). A pixel at row r
    therefore changes at most 3 consecutive rows of that map, starting at
    i0 = ceil((r - 15) / 8). A 44-row window starting at 8m, m = clip(i0 - 1, 0, 7),
    computes those rows exactly: inside the image it has the margin they need, and at
    the image edges (m = 0 or m = 7, since 56 + 44 = 100) the layers' zero padding falls
    where the full image's does.

    Per candidate: the first convolution is not recomputed — its clean output is stored
    per image and window, and a pixel change d adds W[:, :, 2 - dy, 2 - dx] d at offsets
    (dy, dx) in [-2, 2]^2; the rest of the feature extractor runs on the 44x44 window; the latent is
    the clean one plus the bottleneck weights of the 3x3x32 changed features times their
    change (one ``embedding_bag``); then the output layer.
    """

    CROP = 44
    STEP = 8
    PATCH = 3
    GRID = 12
    KERNEL = 5

    def __init__(self, model: nn.Module, n_slots: int, image_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype, channels_last: bool = False,
                 bf16: bool = False) -> None:
        super().__init__(model, n_slots, image_shape, device, dtype, channels_last, bf16)
        self.n_off = (image_shape[1] - self.CROP) // self.STEP + 1  # 8 window offsets per axis
        self.conv1 = model.features[0]
        self.rest = model.features[1:]
        c1 = self.conv1.out_channels
        # clean first-conv output cut into the 8x8 windows, stored (window, H, W, C) so that a
        # gather of windows is one contiguous copy, already in channels-last order
        self.windows = torch.zeros((n_slots * self.n_off ** 2, self.CROP, self.CROP, c1), device=device, dtype=dtype)
        self.clean_features = torch.zeros((n_slots, 32, self.GRID, self.GRID), device=device, dtype=dtype)
        self.clean_latent = torch.zeros((n_slots, model.bottleneck.out_features), device=device, dtype=dtype)
        # change of the first conv's output at offset (dy, dx) per unit change of band i
        self.kernel = self.conv1.weight.detach().flip(2, 3).to(device, dtype)  # (c1, 3, 5, 5)
        self.bottleneck_rows = model.bottleneck.weight.detach().t().contiguous().to(device, dtype)  # (4608, 256)

    @staticmethod
    def applies(model: nn.Module, image_shape: tuple[int, ...], pixels: int) -> bool:
        """Whether this evaluator is exact for ``model`` (the ConvNet) at this input size."""
        from .models import ConvNet

        return isinstance(model, ConvNet) and tuple(image_shape) == (3, 100, 100) and pixels == 1

    @torch.inference_mode()
    def load(self, slot: int, image: torch.Tensor) -> None:
        super().load(slot, image)
        img = self.images[slot][None].contiguous(memory_format=self.memory_format)
        with self.autocast():
            a1 = self.conv1(img)[0].to(self.dtype)
        hwc = a1.permute(1, 2, 0)
        base = slot * self.n_off ** 2
        for a in range(self.n_off):
            for b in range(self.n_off):
                self.windows[base + a * self.n_off + b] = hwc[a * self.STEP: a * self.STEP + self.CROP,
                                                              b * self.STEP: b * self.STEP + self.CROP]
        with self.autocast():
            feats = self.rest(a1[None].contiguous(memory_format=self.memory_format)).to(self.dtype)
        self.clean_features[slot] = feats[0]
        self.clean_latent[slot] = self.model.bottleneck(torch.flatten(feats, 1))[0]

    def _window(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(window offset m, first changed feature row g) for pixel coordinates ``p``."""
        i0 = -torch.div(15 - p, self.STEP, rounding_mode="floor")  # ceil((p - 15) / 8)
        m = torch.clamp(i0 - 1, 0, self.n_off - 1)
        g = torch.clamp(i0, 0, self.GRID - self.PATCH)
        return m, g

    @torch.inference_mode()
    def evaluate(self, slots: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        dev = self.device
        s = torch.as_tensor(slots, device=dev)
        r = torch.as_tensor(rows[:, 0], device=dev)
        c = torch.as_tensor(cols[:, 0], device=dev)
        v = torch.as_tensor(values[:, 0], device=dev, dtype=self.dtype)
        n = len(s)
        mr, gr = self._window(r)
        mc, gc = self._window(c)
        # first conv: clean window plus the change the pixel makes in its 5x5 neighbourhood
        delta = v - self.images[s, :, r, c]  # (B, 3)
        change = torch.einsum("bi,oikl->bokl", delta, self.kernel)  # (B, c1, 5, 5)
        flat_win = (s * self.n_off + mr) * self.n_off + mc
        win = self.windows.index_select(0, flat_win).permute(0, 3, 1, 2)  # (B, c1, 44, 44), channels-last
        k5 = torch.arange(self.KERNEL, device=dev) - self.KERNEL // 2
        bi = torch.arange(n, device=dev)[:, None, None, None]
        ch = torch.arange(win.shape[1], device=dev)[None, :, None, None]
        wr = ((r - self.STEP * mr)[:, None] + k5)[:, None, :, None]  # rows r-2..r+2 in the window
        wc = ((c - self.STEP * mc)[:, None] + k5)[:, None, None, :]
        # only at the image's edges does the 5x5 neighbourhood leave the window: those rows
        # and columns lie outside the image and take no change
        inside = (wr >= 0) & (wr < self.CROP) & (wc >= 0) & (wc < self.CROP)
        win.index_put_((bi, ch, wr.clamp(0, self.CROP - 1), wc.clamp(0, self.CROP - 1)),
                       change * inside, accumulate=True)
        if not self.memory_format == torch.channels_last:
            win = win.contiguous()
        with self.autocast():
            local = self.rest(win).to(self.dtype)  # (B, 32, 5, 5)
        # the changed 3x3 patch of the last feature map, and the latent it moves
        k3 = torch.arange(self.PATCH, device=dev)
        ch = torch.arange(local.shape[1], device=dev)[None, :, None, None]
        kr = ((gr - mr)[:, None] + k3)[:, None, :, None]
        kc = ((gc - mc)[:, None] + k3)[:, None, None, :]
        fr = (gr[:, None] + k3)[:, None, :, None]
        fc = (gc[:, None] + k3)[:, None, None, :]
        change = local[bi, ch, kr, kc] - self.clean_features[s[:, None, None, None], ch, fr, fc]  # (B, 32, 3, 3)
        flat = (ch * self.GRID + fr) * self.GRID + fc  # indices into the flattened 32x12x12 features
        z = self.clean_latent[s] + torch.nn.functional.embedding_bag(
            flat.reshape(n, -1), self.bottleneck_rows, per_sample_weights=change.reshape(n, -1), mode="sum")
        logits = self.model.head(z)
        return torch.softmax(logits.to(self.dtype), dim=1).double().cpu().numpy()


def default_channels_last(device: torch.device) -> bool:
    """NHWC layout: faster for these convolutions on a CPU (oneDNN) and on recent GPUs."""
    return True


def default_chunk_size(device: torch.device, local: bool) -> int:
    """Candidates per forward pass: small on a CPU (cache-friendly), large on a GPU."""
    if device.type == "cuda":
        return 8192 if local else 4096
    return 32 if local else 16


def default_batch_images(device: torch.device) -> int:
    """Images attacked at once: a few on a CPU (fills chunk tails), many on a GPU."""
    return 64 if device.type == "cuda" else 2


# --------------------------------------------------------------------------------------
# the base class
# --------------------------------------------------------------------------------------
class _Search:
    """The state of one image's attack: its targets in turn, each a population search."""

    def __init__(self, attack: "Attack", index: int, slot: int, label: int, targets: Sequence[int | None],
                 key: int, image: np.ndarray) -> None:
        self.attack = attack
        self.index = index
        self.slot = slot
        self.label = int(label)
        self.targets = list(targets)
        self.key = int(key)
        self.image = image
        self.target_pos = -1
        self.evaluations = 0
        self.iterations_total = 0
        self.rejected = 0  # successes the search claimed that the plain model did not confirm
        self.finished: list[dict] = []  # one record per target tried
        self.done = False
        self._start_next_target()

    # -- one target's search ---------------------------------------------------------
    def _start_next_target(self) -> None:
        self.target_pos += 1
        self.target = self.targets[self.target_pos]
        code = len(CLASSES) if self.target is None else int(self.target)
        self.rng = np.random.default_rng([self.attack.seed, self.key, code])
        self.generation = 0
        self.population: np.ndarray | None = None
        self.fitness: np.ndarray | None = None
        self.probs: np.ndarray | None = None
        self.pending = self.attack.initial_population(self.rng)
        self.pending_fitness = np.empty(len(self.pending))
        self.pending_probs = np.empty((len(self.pending), len(CLASSES)))
        self.n_evaluated = 0

    @property
    def n_pending(self) -> int:
        return len(self.pending) - self.n_evaluated

    def receive(self, start: int, probs: np.ndarray) -> None:
        """Take the probabilities of pending candidates [start, start + len(probs))."""
        attack = self.attack
        stop = start + len(probs)
        fit = attack.fitness(probs, self.label, self.target)
        ok = self._wins(probs, fit, start)
        for j in np.flatnonzero(ok):
            cand = self.pending[start + j]
            if attack.verify:
                checked = attack.reference_probabilities(self.image, cand)
                probs[j] = checked
                fit[j] = attack.fitness(checked[None], self.label, self.target)[0]
                if not self._wins(checked[None], fit[j:j + 1], start + j)[0]:
                    attack.n_unverified += 1
                    self.rejected += 1
                    continue
            self.evaluations += start + j + 1 - self.n_evaluated
            self._finish_target(True, cand, probs[j], float(fit[j]))
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
        if self.generation >= attack.max_iter:
            best = int(np.argmax(self.fitness))
            self._finish_target(False, self.population[best], self.probs[best], float(self.fitness[best]))
            return
        self.generation += 1
        self.pending = attack.next_generation(self.rng, self.population)
        self.pending_fitness = np.empty(len(self.pending))
        self.pending_probs = np.empty((len(self.pending), len(CLASSES)))
        self.n_evaluated = 0

    def _finish_target(self, success: bool, candidate: np.ndarray, probs: np.ndarray, fitness: float) -> None:
        self.iterations_total += self.generation
        self.finished.append({"target": self.target, "success": success, "candidate": np.array(candidate),
                              "probs": np.array(probs, dtype=np.float64), "fitness": fitness,
                              "iterations": self.generation})
        if success or self.target_pos + 1 >= len(self.targets):
            self.done = True
        else:
            self._start_next_target()

    def result(self, return_image: bool) -> AttackResult:
        wins = [f for f in self.finished if f["success"]]
        best = wins[0] if wins else max(self.finished, key=lambda f: f["fitness"])
        h, w = self.image.shape[1:]
        rows, cols, values = candidate_pixels(best["candidate"][None], h, w)
        return AttackResult(
            index=self.index, label=self.label, target=best["target"], success=bool(best["success"]),
            iterations=int(best["iterations"]), pixels=np.stack([cols[0], rows[0]], axis=1),
            values=values[0].astype(np.float64), probabilities=best["probs"], fitness=best["fitness"],
            evaluations=self.evaluations,
            targets_tried=tuple(int(f["target"]) for f in self.finished if f["target"] is not None),
            iterations_total=self.iterations_total, rejected=self.rejected,
            image=perturb(self.image, best["candidate"]) if return_image else None,
        )


class Attack:
    """Base of population-based black-box attacks (torchattacks-style).

    Handles the model (an inference-optimised eval-mode copy on ``device`` in ``dtype``
    for the search, a plain copy to verify successes; the caller's model is untouched),
    targeting (``mode``; targeted attacks try the given targets in turn, by default every
    other class in ascending order, and keep the first success), the fitness and success
    rules (``success``: ``paper`` thresholds or ``top-class``), and batching: up to
    ``batch_images`` images are searched at once, and their pending candidates are
    evaluated ``chunk_size`` at a time. ``bf16=True`` runs the search's layers in bfloat16
    (autocast; much faster on CPUs with AMX and on GPUs; a different rounding, so not
    the same search as float32), while successes are still verified by the plain model in
    full precision. ``threads``, a :class:`ThreadGovernor` entered by the caller, is
    consulted between chunks on the CPU. Subclasses write :meth:`initial_population`,
    :meth:`next_generation` and :meth:`select`.
    """

    def __init__(self, model: nn.Module, *, max_iter: int, pixels: int = 1, mode: str = "targeted",
                 success: str = "paper", seed: int = 0, device: str | torch.device = "auto",
                 dtype: torch.dtype = torch.float32, chunk_size: int | None = None,
                 batch_images: int | None = None, local: bool | None = None, optimize: bool = True,
                 channels_last: bool | None = None, bf16: bool = False, verify: bool = True,
                 threads: ThreadGovernor | None = None) -> None:
        if mode not in MODES:
            raise DeepAdvError(f"unknown attack mode {mode!r}; choose one of {', '.join(MODES)}")
        if success not in SUCCESS_RULES:
            raise DeepAdvError(f"unknown success rule {success!r}; choose one of {', '.join(SUCCESS_RULES)}")
        if int(pixels) < 1:
            raise DeepAdvError(f"pixels must be at least 1, got {pixels}")
        if int(seed) < 0:
            raise DeepAdvError(f"the seed must be 0 or more, got {seed}")
        if int(max_iter) < 0:
            raise DeepAdvError(f"the iteration cap must be 0 or more, got {max_iter}")
        if chunk_size is not None and int(chunk_size) < 1:
            raise DeepAdvError(f"chunk size must be at least 1, got {chunk_size}")
        if batch_images is not None and int(batch_images) < 1:
            raise DeepAdvError(f"batch images must be at least 1, got {batch_images}")
        self.max_iter = int(max_iter)
        self.pixels = int(pixels)
        self.mode = mode
        self.success_rule = success
        self.seed = int(seed)
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self.dtype = dtype
        self.local = local
        self.verify = verify
        self.bf16 = bool(bf16)
        self.n_unverified = 0
        if dtype not in (torch.float32, torch.float64):
            raise DeepAdvError(f"dtype must be float32 or float64 (use bf16=True for bfloat16), got {dtype}")
        self.reference_model = copy.deepcopy(model).to(self.device, dtype).eval()
        self.channels_last = default_channels_last(self.device) if channels_last is None else bool(channels_last)
        self.channels_last = self.channels_last and optimize
        self.eval_model = (optimized_for_inference(self.reference_model, self.channels_last) if optimize
                           else self.reference_model)
        self.chunk_size = chunk_size
        self.batch_images = batch_images
        self.threads = threads

    # -- the step, written by subclasses ----------------------------------------------
    def initial_population(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def next_generation(self, rng: np.random.Generator, population: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def select(self, population: np.ndarray, fitness: np.ndarray, probs: np.ndarray, children: np.ndarray,
               child_fitness: np.ndarray, child_probs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    # -- fitness and success -----------------------------------------------------------
    def fitness(self, probs: np.ndarray, label: int, target: int | None) -> np.ndarray:
        """Larger is better: p(target) targeted, -p(true) untargeted."""
        return probs[:, target].copy() if target is not None else -probs[:, label]

    def is_success(self, probs: np.ndarray, label: int, target: int | None) -> np.ndarray:
        if self.success_rule == "top-class":
            top = np.argmax(probs, axis=1)
            return top == target if target is not None else top != label
        if target is not None:
            return probs[:, target] > TARGET_THRESHOLD
        return probs[:, label] < UNTARGETED_THRESHOLD

    @torch.inference_mode()
    def reference_probabilities(self, image: np.ndarray, candidate: np.ndarray) -> np.ndarray:
        """Probabilities of one perturbed image by a plain forward pass of the unfused model."""
        np_dtype = np.float64 if self.dtype == torch.float64 else np.float32
        x = torch.as_tensor(perturb(image, candidate, np_dtype)[None], device=self.device, dtype=self.dtype)
        return torch.softmax(self.reference_model(x)[0], dim=1)[0].double().cpu().numpy()

    # -- running -------------------------------------------------------------------------
    def _targets_for(self, labels: np.ndarray, targets) -> list[list[int | None]]:
        n = len(labels)
        if self.mode == "untargeted":
            return [[None] for _ in range(n)]
        if targets is None:
            return [[c for c in range(len(CLASSES)) if c != int(labels[i])] for i in range(n)]
        out = []
        for i, t in enumerate(targets):
            ts = [int(t)] if np.ndim(t) == 0 else [int(u) for u in t]
            if not ts or any(u < 0 or u >= len(CLASSES) for u in ts):
                raise DeepAdvError(f"image {i}: targets must be class indices 0..{len(CLASSES) - 1}, got {ts}")
            out.append(ts)
        if len(out) != n:
            raise DeepAdvError(f"{len(out)} target entries for {n} images")
        return out

    def run(self, images: np.ndarray | torch.Tensor, labels: Sequence[int], targets=None,
            keys: Sequence[int] | None = None, return_images: bool = False) -> Iterator[AttackResult]:
        """Attack every image; yield each result as soon as its image is finished.

        ``images`` (N, 3, H, W) in model-input space [0, 1]; ``labels`` the true classes;
        ``targets`` per image one class or a sequence tried in turn (targeted mode; default
        every other class); ``keys`` per-image integers that seed each image's random
        streams (default 0..N-1; the campaign passes test-set indices).
        """
        imgs = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        if imgs.ndim != 4 or imgs.shape[1] != 3:
            raise DeepAdvError(f"images must have shape (N, 3, H, W), got {imgs.shape}")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != len(imgs):
            raise DeepAdvError(f"{len(labels)} labels for {len(imgs)} images")
        keys = np.arange(len(imgs)) if keys is None else np.asarray(keys, dtype=np.int64).reshape(-1)
        if len(keys) != len(imgs):
            raise DeepAdvError(f"{len(keys)} keys for {len(imgs)} images")
        target_lists = self._targets_for(labels, targets)
        if len(imgs) == 0:
            return
        shape = tuple(imgs.shape[1:])
        local = self.local
        if local is None:
            local = LocalConvNetEvaluator.applies(self.eval_model, shape, self.pixels)
        elif local and not LocalConvNetEvaluator.applies(self.eval_model, shape, self.pixels):
            raise DeepAdvError("the local evaluator only serves one-pixel attacks on the ConvNet at 100x100")
        n_slots = min(len(imgs), self.batch_images or default_batch_images(self.device))
        chunk = self.chunk_size or default_chunk_size(self.device, local)
        evaluator_cls = LocalConvNetEvaluator if local else CandidateEvaluator
        evaluator = evaluator_cls(self.eval_model, n_slots, shape, self.device, self.dtype, self.channels_last,
                                  self.bf16)
        self.last_evaluator = evaluator_cls.__name__
        h, w = shape[1:]

        queue = deque(range(len(imgs)))
        free = list(range(n_slots))[::-1]
        active: list[_Search] = []
        while queue or active:
            if self.threads is not None:
                self.threads.update()  # fewer CPU threads while other processes hold cores
            while queue and free:
                i = queue.popleft()
                slot = free.pop()
                image = np.asarray(imgs[i], dtype=np.float32)
                evaluator.load(slot, torch.from_numpy(image))
                active.append(_Search(self, i, slot, int(labels[i]), target_lists[i], int(keys[i]), image))
            parts: list[tuple[_Search, int, int]] = []
            room = chunk
            for search in active:
                if room == 0:
                    break
                take = min(room, search.n_pending)
                if take:
                    parts.append((search, search.n_evaluated, search.n_evaluated + take))
                    room -= take
            cands = np.concatenate([s.pending[a:b] for s, a, b in parts])
            slots = np.concatenate([np.full(b - a, s.slot) for s, a, b in parts])
            rows, cols, values = candidate_pixels(cands, h, w)
            probs = evaluator.evaluate(slots, rows, cols, values)
            pos = 0
            for search, a, b in parts:
                if not search.done and search.n_evaluated == a:  # a search takes each part once
                    search.receive(a, probs[pos: pos + b - a])
                pos += b - a
            still = []
            for search in active:
                if search.done:
                    free.append(search.slot)
                    yield search.result(return_images)
                else:
                    still.append(search)
            active = still

    def __call__(self, images, labels, targets=None, keys=None, return_images: bool = False) -> list[AttackResult]:
        """Attack every image; results in the order of ``images``."""
        results = list(self.run(images, labels, targets, keys, return_images))
        return sorted(results, key=lambda r: r.index)


# --------------------------------------------------------------------------------------
# differential evolution
# --------------------------------------------------------------------------------------
def distinct_triples(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``size`` rows of three distinct indices in [0, n), each triple uniform over ordered triples."""
    if n < 3:
        raise DeepAdvError(f"need at least 3 population members to draw three distinct ones, got {n}")
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

    Population ``pop_size`` (400) of candidates (L, 5); initial positions uniform, values
    clip(N(0.5, 0.5), 0, 1); each child = x1 + F (x2 - x3) from three distinct random
    members (F = 0.5, no crossover); coordinates that leave [0, 1] are redrawn uniformly;
    a child replaces its own parent only if strictly fitter. Stops at the first success
    or after ``max_iter`` (80) generations.
    """

    def __init__(self, model: nn.Module, *, pop_size: int = 400, max_iter: int = 80, pixels: int = 1,
                 F: float = 0.5, **kwargs) -> None:
        if int(pop_size) < 4:
            raise DeepAdvError(f"population size must be at least 4, got {pop_size}")
        super().__init__(model, max_iter=max_iter, pixels=pixels, **kwargs)
        self.pop_size = int(pop_size)
        self.F = float(F)

    def initial_population(self, rng: np.random.Generator) -> np.ndarray:
        pos = rng.random((self.pop_size, self.pixels, 2))
        vals = np.clip(rng.normal(0.5, 0.5, (self.pop_size, self.pixels, 3)), 0.0, 1.0)
        return np.concatenate([pos, vals], axis=2)

    def next_generation(self, rng: np.random.Generator, population: np.ndarray) -> np.ndarray:
        idx = distinct_triples(rng, len(population), len(population))
        child = population[idx[:, 0]] + self.F * (population[idx[:, 1]] - population[idx[:, 2]])
        redraw = rng.random(child.shape)
        out = (child < 0.0) | (child > 1.0)
        return np.where(out, redraw, child)

    def select(self, population, fitness, probs, children, child_fitness, child_probs):
        better = child_fitness > fitness
        return (np.where(better[:, None, None], children, population), np.where(better, child_fitness, fitness),
                np.where(better[:, None], child_probs, probs))


def reference_attack(model: nn.Module, image: np.ndarray, label: int, target: int | None, *, pop_size: int = 400,
                     max_iter: int = 80, pixels: int = 1, seed: int = 0, key: int = 0, F: float = 0.5,
                     success: str = "paper", device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> AttackResult:
    """The published per-candidate loop (one forward pass per candidate, every candidate
    of a generation evaluated), with the same random streams as :class:`OnePixelDE`.

    For benchmarks and tests: it must reach the same decisions as the batched engine.
    """
    atk = OnePixelDE(model, pop_size=pop_size, max_iter=max_iter, pixels=pixels, F=F, seed=seed,
                     success=success, device=device, dtype=dtype, optimize=False, verify=False,
                     mode="untargeted" if target is None else "targeted")
    net = atk.reference_model
    image = np.asarray(image, dtype=np.float32)
    x0 = torch.as_tensor(image, device=atk.device, dtype=dtype)
    h, w = image.shape[1:]

    def evaluate(cands: np.ndarray) -> np.ndarray:
        rows, cols, values = candidate_pixels(cands, h, w)
        out = np.empty((len(cands), len(CLASSES)))
        with torch.inference_mode():
            for i in range(len(cands)):
                x = x0.clone()
                for k in range(rows.shape[1]):
                    x[:, rows[i, k], cols[i, k]] = torch.as_tensor(values[i, k], dtype=dtype, device=atk.device)
                out[i] = torch.softmax(net(x[None])[0], dim=1)[0].double().cpu().numpy()
        return out

    code = len(CLASSES) if target is None else int(target)
    rng = np.random.default_rng([atk.seed, int(key), code])
    pop = atk.initial_population(rng)
    probs = evaluate(pop)
    fit = atk.fitness(probs, label, target)
    evaluations = len(pop)
    generation = 0
    while True:
        ok = atk.is_success(probs, label, target)
        if ok.any() or generation >= max_iter:
            break
        generation += 1
        children = atk.next_generation(rng, pop)
        child_probs = evaluate(children)
        evaluations += len(children)
        child_fit = atk.fitness(child_probs, label, target)
        pop, fit, probs = atk.select(pop, fit, probs, children, child_fit, child_probs)
    ok = atk.is_success(probs, label, target)
    best = int(np.flatnonzero(ok)[0]) if ok.any() else int(np.argmax(fit))
    rows, cols, values = candidate_pixels(pop[best][None], h, w)
    return AttackResult(index=0, label=int(label), target=target, success=bool(ok.any()), iterations=generation,
                        pixels=np.stack([cols[0], rows[0]], axis=1), values=values[0], probabilities=probs[best],
                        fitness=float(fit[best]), evaluations=evaluations,
                        targets_tried=() if target is None else (int(target),), iterations_total=generation)
