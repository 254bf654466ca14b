"""L-pixel adversarial attacks, evaluated in batches (SPEC 7): the base class, the success
rule, value ranges, the candidate evaluators and the authors' differential evolution.

The design follows torchattacks: :class:`Attack` (the base class) owns everything that
is not the search rule itself — the model's evaluation mode and device, the choice of
target classes, the fitness and success rules (:func:`is_success` is their one home),
the range of values a changed pixel may take (:class:`ValueRange`), the re-check of
every claimed success by a plain forward pass, and the scheduling of many candidates
(of one image or of several images at once) into chunked, batched forward passes of an
inference-optimised copy of the model (:func:`optimized_for_inference`; for the
ConvNet, :class:`LocalConvNetEvaluator` recomputes only the cone of activations a pixel
changes). A search writes only its own step, as a :class:`SearchState` subclass:
:class:`OnePixelDE` here (the initial population, the mutation, the parent-versus-child
selection and the keep rule), Sparse-RS in :mod:`deepadversaries.attacks.sparse_rs`; the
exhaustive one-pixel map is :mod:`deepadversaries.attacks.exhaustive`.

A candidate is an array (L, 2 + B) for images of B bands (the paper's g, r, i: (L, 5)):
for each of its L pixels (x, y, u_1, …, u_B), all in [0, 1] — x and y are the pixel column
and row scaled to [0, 1), u the new values of the B bands as fractions of the value
range: value = low + u (high - low), so with the default ``input`` range [0, 1] (the
paper's) u is the new stretched model-input value. Images of any band count and models
of any number of classes K are attacked alike (targeted attacks try the K - 1 other
classes in turn).
Pixel ``(row, col) = (min(floor(y H), H - 1), min(floor(x W), W - 1))``, so every pixel
is equally likely.

Determinism: every (image, target) search draws from its own random stream, seeded by
``(seed, key, target)``, and its candidates are evaluated in index order. With the keep
rule ``fittest`` (the default, the authors') every generation is evaluated whole and the
success test, the choice of the kept member and its re-check happen once the generation
is complete; with ``first`` a search stops at the first successful candidate in index
order. Either way neither the chunk size nor the number of images evaluated together
changes any image's search (up to floating-point ties; exactly in float64).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from deepadversaries.cpu_threads import ThreadGovernor
from deepadversaries.devices import resolve_device
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.models.networks import ConvNet, model_classes

MODES: tuple[str, ...] = ("targeted", "untargeted")
SUCCESS_RULES: tuple[str, ...] = ("paper", "top-class")
#: which successful candidate a DE search keeps: the authors' population argmax after the
#: success generation, or the first successful candidate in index order
KEEP_RULES: tuple[str, ...] = ("fittest", "first")
#: the values a changed pixel may take: any stretched value in [0, 1] (the paper's), or
#: what a detector pixel can hold (0 e- to the full well) mapped through the stretch
VALUE_RANGES: tuple[str, ...] = ("input", "physical")
#: targeted success: p(target) above this (paper rule)
TARGET_THRESHOLD = 0.5
#: untargeted success: p(true class) below this (paper rule)
UNTARGETED_THRESHOLD = 0.05
#: candidate fields per pixel of a 3-band image: x (column), y (row), and the unit values of
#: g, r, i (B bands: 2 + B, :func:`candidate_fields`)
CANDIDATE_FIELDS = 5
#: LSST full-well capacity (electrons per pixel) bounding ``physical`` values: the LSST
#: system requirement is > 90,000 e- (LSST Document-10512), and LSSTCam's sensors measured
#: 103,000 e- (e2v) and 129,000 e- (ITL) at the PTC turnoff under the final operating
#: settings (Rubin technote SITCOMTN-148, "LSST Camera Electro-Optical Test Results",
#: https://sitcomtn-148.lsst.io); 100,000 e- is the round figure between them
FULL_WELL_ELECTRONS = 100_000.0
#: the paper's band count (g, r, i): the default of the value ranges
N_BANDS = 3


def candidate_fields(bands: int) -> int:
    """Fields per pixel of a candidate for images of ``bands`` bands: x, y and one unit value per band."""
    return 2 + int(bands)


# --------------------------------------------------------------------------------------
# the success rule
# --------------------------------------------------------------------------------------
def is_success(probs: np.ndarray, label: int, target: int | None, rule: str = "paper") -> np.ndarray | bool:
    """Whether perturbed images count as successful attacks: the one home of the rule.

    Args:
        probs: class probabilities (softmax), shape (n_classes,) for one image or
            (B, n_classes) for B images.
        label: the true class of the attacked image.
        target: the class attacked (targeted), or None (untargeted).
        rule: ``"paper"`` — targeted: p(target) > 0.5 (:data:`TARGET_THRESHOLD`);
            untargeted: p(true) < 0.05 (:data:`UNTARGETED_THRESHOLD`); or ``"top-class"``
            — targeted: the target is the predicted class; untargeted: the true class is
            not [default: "paper"].

    Returns:
        A bool for one image, else a bool array (B,).

    Raises:
        OptionError: an unknown rule.
    """
    check_choice(rule, SUCCESS_RULES, "success rule")
    p = np.asarray(probs)
    single = p.ndim == 1
    p = p[None] if single else p
    if rule == "top-class":
        top = np.argmax(p, axis=1)
        ok = top == target if target is not None else top != label
    elif target is not None:
        ok = p[:, target] > TARGET_THRESHOLD
    else:
        ok = p[:, label] < UNTARGETED_THRESHOLD
    return bool(ok[0]) if single else ok


def subsample_index(n_test: int, n_images: int, seed: int) -> np.ndarray:
    """The attack campaign's seeded test subsample: ``n_images`` distinct indices of ``n_test``
    test images drawn with ``seed``, sorted (``deepadv attack`` and ``deepadv certify`` draw the same)."""
    return np.sort(np.random.default_rng(seed).choice(n_test, n_images, replace=False))


# --------------------------------------------------------------------------------------
# value ranges
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ValueRange:
    """The values a changed pixel may take: band b in [low[b], high[b]], model-input space.

    Attributes:
        kind: ``"input"`` or ``"physical"`` (see :data:`VALUE_RANGES`).
        low: per band (g, r, i for the paper's images; any number B >= 1), the smallest
            allowed model-input value.
        high: per band, the largest allowed model-input value.
        electrons: for ``physical``, the electron interval (0, full well) it models; else None.
    """

    kind: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    electrons: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        if lo.ndim != 1 or len(lo) < 1 or hi.shape != lo.shape:
            raise OptionError(f"a value range needs one low and one high value per band, got low {self.low} and "
                              f"high {self.high}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise OptionError(f"the {self.kind} value range is empty or not finite: low {tuple(lo)}, "
                              f"high {tuple(hi)}")

    @property
    def bands(self) -> int:
        """B, the number of bands."""
        return len(self.low)

    @property
    def low_array(self) -> np.ndarray:
        """(B,) float64."""
        return np.asarray(self.low, dtype=np.float64)

    @property
    def high_array(self) -> np.ndarray:
        """(B,) float64."""
        return np.asarray(self.high, dtype=np.float64)

    def to_values(self, unit: np.ndarray) -> np.ndarray:
        """Model-input values (..., B) of unit values (..., B) in [0, 1]: low + u (high - low).

        Exact at the ends (u = 0 gives low, u = 1 gives high), and the identity for ``input``.
        """
        lo, hi = self.low_array, self.high_array
        return np.clip(lo + np.asarray(unit, dtype=np.float64) * (hi - lo), lo, hi)

    def corners(self) -> np.ndarray:
        """The 2^B corners of the value cube (2^B, B), 8 for g, r, i: each band at its low or high
        end, in the order of ``itertools.product`` (the first band slowest; all low first)."""
        pairs = [(lo, hi) for lo, hi in zip(self.low, self.high)]
        return np.array(list(itertools.product(*pairs)), dtype=np.float64)

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Whether each row of values (V, B) lies inside the range (per row, all bands)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1, self.bands)
        return np.all((v >= self.low_array) & (v <= self.high_array), axis=1)

    def describe(self) -> dict:
        """A JSON-ready description (for ``summary.json``)."""
        out = {"kind": self.kind, "low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}
        if self.electrons is not None:
            out["electrons"] = [float(v) for v in self.electrons]
        return out


def input_range(bands: int = N_BANDS) -> ValueRange:
    """The paper's range: any stretched value in [0, 1] in every band (``bands`` of them [default: 3])."""
    return ValueRange("input", (0.0,) * int(bands), (1.0,) * int(bands))


def _float32_towards(x: float, direction: float) -> float:
    """``x`` rounded to a float32 no farther than ``x`` in ``direction`` (+inf: up, -inf: down)."""
    f = np.float32(x)
    if (direction > 0 and f < x) or (direction < 0 and f > x):
        f = np.nextafter(f, np.float32(direction))
    return float(f)


def physical_range(stretch: Callable[[np.ndarray], np.ndarray], inverse: Callable[[np.ndarray], np.ndarray],
                   full_well: float = FULL_WELL_ELECTRONS, bands: int = N_BANDS) -> ValueRange:
    """The model-input values a detector pixel can produce: stretch(0 e-) ... stretch(full well), per band.

    Args:
        stretch: the domain's normalisation, raw electrons -> model input, on image-shaped
            arrays (..., B, H, W), non-decreasing in each pixel
            (``partial(data.apply_stretch, lo=lo, hi=hi)`` for the paper's, element-wise; or
            :meth:`~deepadversaries.data.dataset.GalaxyDataset.input_transform`). The paper's clips
            to its [lo, hi], so counts above hi all map to stretch(hi): the upper end is then
            stretch(min(full well, hi)).
        inverse: its inverse, model input -> electrons (``partial(data.invert_stretch, hi=hi)``).
        full_well: the full-well capacity, electrons [default: :data:`FULL_WELL_ELECTRONS`].
        bands: B, the images' band count [default: 3].

    Returns:
        A ``physical`` :class:`ValueRange`, one interval per band (the same for the three
        bands of the paper's one stretch per domain). Its ends are float32 values rounded
        inwards, so that ``inverse`` of any allowed float32 value lies in [0, full well].

    Raises:
        OptionError: a full well that is not positive, or a normalisation that maps every count
            from 0 to the full well onto one value (or is not finite there) in some band.
    """
    if not np.isfinite(full_well) or full_well <= 0:
        raise OptionError(f"the full well must be a positive number of electrons, got {full_well}")
    bands = int(bands)
    counts = np.zeros((bands, 1, 2), dtype=np.float32)
    counts[:, 0, 1] = full_well
    ends = np.asarray(stretch(counts), dtype=np.float64).reshape(bands, 2)
    for b in range(bands):
        if not np.all(np.isfinite(ends[b])) or not ends[b, 1] > ends[b, 0]:
            raise OptionError(f"the stretch cannot express physical values: it maps 0 and {full_well:g} e- (the "
                              f"full well) to {ends[b].tolist()}" + (f" in band {b}" if bands > 1 else "") +
                              ", not to an interval")
    low = np.array([_float32_towards(v, np.inf) for v in ends[:, 0]], dtype=np.float32)
    high = np.array([_float32_towards(v, -np.inf) for v in ends[:, 1]], dtype=np.float32)

    def electrons(values: np.ndarray) -> np.ndarray:
        return np.asarray(inverse(values.reshape(bands, 1, 1)), dtype=np.float64).reshape(bands)

    # round inwards until the inverse stays inside [0, full well] (it may round, too)
    for _ in range(64):
        over = electrons(high) > full_well
        if not over.any():
            break
        high[over] = np.nextafter(high[over], np.float32(-np.inf))
    for _ in range(64):
        under = electrons(low) < 0.0
        if not under.any():
            break
        low[under] = np.nextafter(low[under], np.float32(np.inf))
    return ValueRange("physical", tuple(float(v) for v in low), tuple(float(v) for v in high),
                      electrons=(0.0, float(full_well)))


def make_value_range(kind: str = "input", stretch: Callable[[np.ndarray], np.ndarray] | None = None,
                     inverse: Callable[[np.ndarray], np.ndarray] | None = None,
                     full_well: float = FULL_WELL_ELECTRONS, bands: int = N_BANDS) -> ValueRange:
    """The value range named ``kind`` (``--value-range``), checked.

    Args:
        kind: ``"input"`` or ``"physical"`` [default: "input"].
        stretch, inverse: the domain's stretch and its inverse (``physical`` only; see
            :func:`physical_range`).
        full_well: electrons [default: :data:`FULL_WELL_ELECTRONS`].
        bands: B, the images' band count [default: 3].

    Raises:
        OptionError: an unknown kind, ``physical`` without a stretch, or a stretch that
            cannot express it.
    """
    check_choice(kind, VALUE_RANGES, "value range")
    if kind == "input":
        return input_range(bands)
    if stretch is None or inverse is None:
        raise OptionError("the physical value range needs the domain's stretch and its inverse")
    return physical_range(stretch, inverse, full_well, bands)


# --------------------------------------------------------------------------------------
# results and candidate geometry
# --------------------------------------------------------------------------------------
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


def candidate_pixels(candidates: np.ndarray, height: int, width: int,
                     value_range: ValueRange | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels and values of candidates.

    Args:
        candidates: (N, L, 2 + B) unit candidates (see the module docstring).
        height, width: the image size, pixels.
        value_range: the range the unit values map into [default: None = ``input``, [0, 1]].

    Returns:
        rows (N, L) int64, columns (N, L) int64 and values (N, L, B) float64 (model input).
    """
    cand = np.asarray(candidates, dtype=np.float64)
    cols = np.minimum((cand[..., 0] * width).astype(np.int64), width - 1)
    rows = np.minimum((cand[..., 1] * height).astype(np.int64), height - 1)
    values = cand[..., 2:] if value_range is None else value_range.to_values(cand[..., 2:])
    return rows, cols, values


def pixel_candidates(rows: np.ndarray, cols: np.ndarray, unit_values: np.ndarray, height: int,
                     width: int) -> np.ndarray:
    """Unit candidates (N, L, 2 + B) that select exactly pixels (rows, cols) (N, L) with unit
    values (N, L, B): the inverse of :func:`candidate_pixels` (pixel centres)."""
    x = (np.asarray(cols, dtype=np.float64) + 0.5) / width
    y = (np.asarray(rows, dtype=np.float64) + 0.5) / height
    return np.concatenate([x[..., None], y[..., None], np.asarray(unit_values, dtype=np.float64)], axis=-1)


def perturb(image: np.ndarray | torch.Tensor, candidate: np.ndarray, dtype: np.dtype = np.float32,
            value_range: ValueRange | None = None) -> np.ndarray:
    """A copy of ``image`` (B, H, W) with the candidate's (L, 2 + B) pixels set; later pixels win."""
    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    rows, cols, values = candidate_pixels(np.asarray(candidate)[None], img.shape[1], img.shape[2], value_range)
    return set_pixels(img, np.stack([cols[0], rows[0]], axis=1), values[0], dtype)


def set_pixels(image: np.ndarray, pixels: np.ndarray, values: np.ndarray, dtype: np.dtype = np.float32) -> np.ndarray:
    """A copy of ``image`` (B, H, W) with pixels (L, 2) = (x, y) set to values (L, B); later pixels win."""
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
            for a, b in itertools.pairwise(names):
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


def _max_pool_2x2_hwc(x: torch.Tensor) -> torch.Tensor:
    """2x2 max pooling, stride 2, of even-sized (B, 2h, 2w, C) patches."""
    rows = torch.maximum(x[:, 0::2], x[:, 1::2])
    return torch.maximum(rows[:, :, 0::2], rows[:, :, 1::2])


class LocalConvNetEvaluator(CandidateEvaluator):
    """Exact one-pixel evaluation of the ConvNet that recomputes only the cone a pixel changes.

    Every activation of the clean image is stored once per image, channels last and
    padded by ``PAD`` so that no patch leaves its array. A pixel at row r changes the
    first convolution's output in rows r-2..r+2, hence block 1's pooled output in the 3
    rows a..a+2, a = floor((r - 2) / 2) (a pool pairs rows 2k, 2k + 1); the second
    convolution then changes rows a-1..a+3 and needs rows a-2..a+4 of block 1's output;
    block 2's pooled output changes in rows b..b+2, b = floor((a - 1) / 2), and the same
    again gives rows g..g+2, g = floor((b - 1) / 2), of the 12x12 feature map (likewise
    for columns). Per candidate only those patches are computed: the first convolution's
    change W[:, :, 2 - dy, 2 - dx] dv added to a 6x6 patch of its stored pre-activation
    output, block 1's activation and pooling (3x3), the second convolution on a 7x7 patch
    (5x5 out) and pooling (3x3), the third likewise, and the latent moved by the
    bottleneck weights of the changed features (one ``embedding_bag``); then the output
    layer. Rows outside a map are the layers' zero padding (pooled rows outside are set to
    zero; rows the floor pooling of the 25-row map drops get zero weight), so the edges are
    exact too: the same probabilities as the full forward pass to float rounding. (It
    replaces an evaluator that ran blocks 2 and 3 on a whole 44x44 window around the pixel:
    4-5x faster.)
    """

    PAD = 4

    def __init__(self, model: nn.Module, n_slots: int, image_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype, channels_last: bool = False,
                 bf16: bool = False) -> None:
        super().__init__(model, n_slots, image_shape, device, dtype, channels_last, bf16)
        f = model.features
        self.convs = (f[0], f[4], f[8])
        self.posts = (f[1:3], f[5:7], f[9:11])
        self.pools = (f[3], f[7], f[11])
        c1, c2, c3 = (m.out_channels for m in self.convs)
        n0 = image_shape[1]
        n1, n2 = n0 // 2, n0 // 4
        n3 = n2 // 2
        self.sizes = (n0, n1, n2, n3)
        p = 2 * self.PAD

        def store(c: int, n: int) -> torch.Tensor:  # (slots, H + 2 PAD, W + 2 PAD, C)
            return torch.zeros((n_slots, n + p, n + p, c), device=device, dtype=dtype)

        self.z1, self.p1, self.a2 = store(c1, n0), store(c1, n1), store(c2, n1)
        self.p2, self.a3, self.p3 = store(c2, n2), store(c3, n2), store(c3, n3)
        self.clean_latent = torch.zeros((n_slots, model.bottleneck.out_features), device=device, dtype=dtype)
        self.kernel = self.convs[0].weight.detach().flip(2, 3).to(device, dtype)  # (c1, 3, 5, 5)
        self.bottleneck_rows = model.bottleneck.weight.detach().t().contiguous().to(device, dtype)  # (4608, 256)

    @staticmethod
    def applies(model: nn.Module, image_shape: tuple[int, ...], pixels: int) -> bool:
        """Whether this evaluator serves ``model``: the paper's ConvNet at 3 x 100 x 100 (any number of
        classes), one pixel per candidate; other shapes and models get batched full forward passes."""
        return isinstance(model, ConvNet) and tuple(image_shape) == (3, 100, 100) and pixels == 1

    @torch.inference_mode()
    def load(self, slot: int, image: torch.Tensor) -> None:
        super().load(slot, image)
        x = self.images[slot][None].contiguous(memory_format=self.memory_format)
        with self.autocast():
            z1 = self.convs[0](x)
            p1 = self.pools[0](self.posts[0](z1.clone()))  # (its ReLU may work in place)
            a2 = self.posts[1](self.convs[1](p1))
            p2 = self.pools[1](a2)
            a3 = self.posts[2](self.convs[2](p2))
            p3 = self.pools[2](a3)
        c = slice(self.PAD, -self.PAD)
        for dest, value in ((self.z1, z1), (self.p1, p1), (self.a2, a2), (self.p2, p2), (self.a3, a3),
                            (self.p3, p3)):
            dest[slot, c, c] = value[0].permute(1, 2, 0).to(self.dtype)
        self.clean_latent[slot] = self.model.bottleneck(torch.flatten(p3.to(self.dtype), 1))[0]

    def _patch(self, store: torch.Tensor, s: torch.Tensor, r0: torch.Tensor, c0: torch.Tensor,
               size: int) -> torch.Tensor:
        """(B, size, size, C) copies of ``store[s]`` from unpadded row r0 and column c0 on."""
        _, hp, wp, ch = store.shape
        k = torch.arange(size, device=self.device)
        rr = (s * hp + r0 + self.PAD)[:, None] + k  # (B, size)
        idx = (rr[:, :, None] * wp + (c0 + self.PAD)[:, None, None] + k).reshape(-1)
        return store.view(-1, ch).index_select(0, idx).view(len(s), size, size, ch)

    def _put(self, dest: torch.Tensor, src: torch.Tensor, dr: torch.Tensor, dc: torch.Tensor,
             accumulate: bool = False) -> None:
        """Write (or add) ``src`` (B, h, w, C) into ``dest`` (B, H, W, C) at per-candidate offsets."""
        b, h, w, ch = src.shape
        size_h, size_w = dest.shape[1:3]
        rr = (torch.arange(b, device=self.device) * size_h + dr)[:, None] + torch.arange(h, device=self.device)
        idx = (rr[:, :, None] * size_w + dc[:, None, None] + torch.arange(w, device=self.device)).reshape(-1)
        flat, rows = dest.view(-1, ch), src.reshape(-1, ch)
        if accumulate:
            flat.index_add_(0, idx, rows)
        else:
            flat.index_copy_(0, idx, rows)

    def _inside(self, start: torch.Tensor, size: int, limit: int) -> torch.Tensor:
        """(B, size) whether rows start..start+size-1 lie in [0, limit)."""
        k = start[:, None] + torch.arange(size, device=self.device)
        return (k >= 0) & (k < limit)

    def _grid(self, start_r: torch.Tensor, start_c: torch.Tensor, size: int, limit: int) -> torch.Tensor:
        """(B, size, size, 1) mask of the patch positions inside a limit x limit map."""
        inside = self._inside(start_r, size, limit)[:, :, None] & self._inside(start_c, size, limit)[:, None, :]
        return inside[..., None].to(self.dtype)

    def _block(self, k: int, x: torch.Tensor) -> torch.Tensor:
        """Block k's convolution (valid, on a padded patch) and activation, (B, h, w, C) -> (B, h-2, w-2, C')."""
        conv = self.convs[k]
        with self.autocast():
            y = torch.nn.functional.conv2d(x.permute(0, 3, 1, 2), conv.weight, conv.bias)
            y = self.posts[k](y)
        return y.permute(0, 2, 3, 1).to(self.dtype).contiguous()

    @torch.inference_mode()
    def evaluate(self, slots: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> np.ndarray:
        dev = self.device
        s = torch.as_tensor(slots, device=dev)
        r = torch.as_tensor(rows[:, 0], device=dev)
        c = torch.as_tensor(cols[:, 0], device=dev)
        v = torch.as_tensor(values[:, 0], device=dev, dtype=self.dtype)
        n0, n1, n2, n3 = self.sizes

        def half(t: torch.Tensor) -> torch.Tensor:
            return torch.div(t, 2, rounding_mode="floor")

        # block 1: the first convolution's change (rows r-2..r+2) on a 6x6 patch (rows 2a..2a+5)
        delta = v - self.images[s, :, r, c]  # (B, 3)
        change = torch.einsum("bi,oikl->bklo", delta, self.kernel)  # (B, 5, 5, c1)
        change = change * self._grid(r - 2, c - 2, 5, n0)
        ar, ac = half(r - 2), half(c - 2)
        z1 = self._patch(self.z1, s, 2 * ar, 2 * ac, 6)
        self._put(z1, change, r - 2 - 2 * ar, c - 2 - 2 * ac, accumulate=True)
        with self.autocast():
            a1 = self.posts[0](z1.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).to(self.dtype)
        p1 = _max_pool_2x2_hwc(a1) * self._grid(ar, ac, 3, n1)  # rows a..a+2
        # block 2: convolution on rows a-2..a+4 -> a-1..a+3; pooling -> b..b+2
        x2 = self._patch(self.p1, s, ar - 2, ac - 2, 7)
        x2[:, 2:5, 2:5] = p1
        a2 = self._block(1, x2)
        br, bc = half(ar - 1), half(ac - 1)
        y2 = self._patch(self.a2, s, 2 * br, 2 * bc, 6)
        self._put(y2, a2, ar - 1 - 2 * br, ac - 1 - 2 * bc)
        p2 = _max_pool_2x2_hwc(y2) * self._grid(br, bc, 3, n2)
        # block 3: convolution on rows b-2..b+4 -> b-1..b+3; pooling -> g..g+2 of the feature map
        x3 = self._patch(self.p2, s, br - 2, bc - 2, 7)
        x3[:, 2:5, 2:5] = p2
        a3 = self._block(2, x3)
        gr, gc = half(br - 1), half(bc - 1)
        y3 = self._patch(self.a3, s, 2 * gr, 2 * gc, 6)
        self._put(y3, a3, br - 1 - 2 * gr, bc - 1 - 2 * gc)
        diff = (_max_pool_2x2_hwc(y3) - self._patch(self.p3, s, gr, gc, 3)) * self._grid(gr, gc, 3, n3)
        # the latent: clean plus the bottleneck weights of the changed features times their change
        k3 = torch.arange(3, device=dev)
        fr = (gr[:, None] + k3).clamp(0, n3 - 1)[:, :, None, None]
        fc = (gc[:, None] + k3).clamp(0, n3 - 1)[:, None, :, None]
        ch = torch.arange(diff.shape[-1], device=dev)[None, None, None, :]
        flat = (ch * n3 + fr) * n3 + fc  # (B, 3, 3, c3) indices into the flattened (C, 12, 12) features
        z = self.clean_latent[s] + torch.nn.functional.embedding_bag(
            flat.reshape(len(s), -1), self.bottleneck_rows, per_sample_weights=diff.reshape(len(s), -1), mode="sum")
        logits = self.model.head(z)
        return torch.softmax(logits.to(self.dtype), dim=1).double().cpu().numpy()


def default_channels_last(device: torch.device) -> bool:
    """NHWC layout: faster for these convolutions on a CPU (oneDNN) and on recent GPUs."""
    return True


def default_chunk_size(device: torch.device, local: bool) -> int:
    """Candidates per forward pass: on a CPU 512 with the local evaluator (its per-pass
    overhead is amortised by then; measured) and 16 full images, large on a GPU."""
    if device.type == "cuda":
        return 8192 if local else 4096
    return 512 if local else 16


def default_batch_images(device: torch.device) -> int:
    """Images a DE attack searches at once: a few on a CPU (fills chunk tails), many on a GPU."""
    return 64 if device.type == "cuda" else 2


def make_evaluator(model: nn.Module, n_slots: int, image_shape: tuple[int, int, int], device: torch.device,
                   dtype: torch.dtype, *, pixels: int = 1, local: bool | None = None, channels_last: bool = False,
                   bf16: bool = False) -> CandidateEvaluator:
    """The evaluator for ``model``: :class:`LocalConvNetEvaluator` where it is exact, else batched full passes.

    Args:
        model: the (inference-optimised) model, on ``device`` in ``dtype``.
        n_slots: images held at once.
        image_shape: (B, H, W) of one image.
        device, dtype: where and in which precision to evaluate.
        pixels: pixels per candidate (the local evaluator serves one) [default: 1].
        local: force (True) or forbid (False) the local evaluator [default: None = where it applies].
        channels_last: NHWC layout [default: False].
        bf16: bfloat16 autocast [default: False].

    Raises:
        OptionError: ``local=True`` where the local evaluator does not apply.
    """
    applies = LocalConvNetEvaluator.applies(model, image_shape, pixels)
    if local is None:
        local = applies
    elif local and not applies:
        raise OptionError("the local evaluator only serves one-pixel attacks on the ConvNet at 100x100")
    cls = LocalConvNetEvaluator if local else CandidateEvaluator
    return cls(model, n_slots, tuple(image_shape), device, dtype, channels_last, bf16)


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
        model: the classifier; ``model(x)`` returns ``(logits, latent)`` for x (N, B, H, W).
        max_iter: the iteration cap of iterative searches (DE: generations) [default: 0].
        pixels: L, pixels changed per candidate [default: 1].
        mode: ``"targeted"`` or ``"untargeted"`` [default: "targeted"].
        success: the success rule, ``"paper"`` or ``"top-class"`` (see :func:`is_success`)
            [default: "paper"].
        keep: which success a search keeps when one round of it holds several:
            ``"fittest"`` (the authors') or ``"first"`` (see :class:`OnePixelDE`); searches
            that evaluate one candidate per round are the same under both [default: "fittest"].
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

    def __call__(self, images, labels, targets=None, keys=None, return_images: bool = False) -> list[AttackResult]:
        """Attack every image (as :meth:`run`); results in the order of ``images``."""
        results = list(self.run(images, labels, targets, keys, return_images))
        return sorted(results, key=lambda r: r.index)


# --------------------------------------------------------------------------------------
# differential evolution
# --------------------------------------------------------------------------------------
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
    net = atk.reference_model
    image = np.asarray(image, dtype=np.float32)
    atk.prepare(image[None])
    x0 = torch.as_tensor(image, device=atk.device, dtype=dtype)
    h, w = image.shape[1:]
    targeted = target is not None
    label_of_fitness = int(target) if targeted else int(label)

    def evaluate_one(cand: np.ndarray) -> np.ndarray:
        rows, cols, values = candidate_pixels(cand[None], h, w, atk.value_range)
        x = x0.clone()
        for k in range(rows.shape[1]):
            x[:, rows[0, k], cols[0, k]] = torch.as_tensor(values[0, k], dtype=dtype, device=atk.device)
        with torch.inference_mode():
            return torch.softmax(net(x[None])[0], dim=1)[0].double().cpu().numpy()

    def evaluate(cands: np.ndarray) -> np.ndarray:
        return np.stack([evaluate_one(c) for c in cands])

    def success_of(probs: np.ndarray) -> np.ndarray:
        return is_success(probs, label, target, success)

    code = atk.n_classes if target is None else int(target)
    rng = np.random.default_rng([atk.seed, int(key), code])
    candidates = atk.initial_population(rng)
    probs = evaluate(candidates)
    score = probs[:, label_of_fitness].copy()  # the authors' fitness: p(label)
    evaluations = len(candidates)
    generation = 0
    found: int | None = None
    if keep == "fittest":
        for _ in range(max_iter):
            if success_of(probs).any():  # early stopping: the population holds a success
                break
            children = atk.next_generation(rng, candidates)
            child_probs = evaluate(children)
            evaluations += len(children)
            child_score = child_probs[:, label_of_fitness]
            successors = child_score > score if targeted else child_score < score
            candidates[successors] = children[successors]
            probs[successors] = child_probs[successors]
            score[successors] = child_score[successors]
            generation += 1
        ok = success_of(probs)
        if ok.any():  # the fittest successful member: fitness.argmax() under the paper's rule
            members = np.flatnonzero(ok)
            found = int(members[np.argmax(score[members]) if targeted else np.argmin(score[members])])
    else:
        ok = success_of(probs)
        if ok.any():
            found = int(np.flatnonzero(ok)[0])
        while found is None and generation < max_iter:
            generation += 1
            children = atk.next_generation(rng, candidates)
            for i, child in enumerate(children):
                p = evaluate_one(child)
                evaluations += 1
                s = p[label_of_fitness]
                if (s > score[i]) if targeted else (s < score[i]):
                    candidates[i], probs[i], score[i] = child, p, s
                    if success_of(p):
                        found = i
                        break
    best = found if found is not None else int(np.argmax(score) if targeted else np.argmin(score))
    rows, cols, values = candidate_pixels(candidates[best][None], h, w, atk.value_range)
    fit = float(score[best]) if targeted else -float(score[best])
    return AttackResult(index=0, label=int(label), target=target, success=found is not None, iterations=generation,
                        pixels=np.stack([cols[0], rows[0]], axis=1), values=values[0], probabilities=probs[best],
                        fitness=fit, evaluations=evaluations, targets_tried=() if target is None else (int(target),),
                        iterations_total=generation)
