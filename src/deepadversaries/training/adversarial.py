"""One-pixel adversarial examples for training (``--method adv-1p``, ``--adv-share``).

For a share of each training batch, every image is replaced by its most damaging one-pixel
change found by a cheap corner search:

1. rank the positions: one backward pass gives the gradient ``g`` of the cross-entropy with
   respect to the image; at each pixel the corner of the value range that raises the loss
   most to first order (each band at the high end where ``g > 0``, else at the low end) has
   the first-order gain ``Σ_b g_b (v_b − x_b)``; the ``positions`` pixels with the largest
   gain are kept (the one-pixel analogue of a saliency map, Papernot et al. 2016);
2. evaluate exactly: each kept (position, corner) is applied and the image evaluated by the
   attacks' candidate evaluator (:func:`~deepadversaries.attacks.evaluators.make_evaluator`, batched
   full forward passes of an :func:`~deepadversaries.attacks.evaluators.optimized_for_inference` copy),
   and the candidate with the lowest probability of the true class replaces the image.

The corners are those of the input value range [0, 1]^B
(:func:`~deepadversaries.attacks.exhaustive.value_set`, the exhaustive search's default set), the
criterion is the untargeted one of the attacks (lowest p(true)), and the model is judged as
the attacks judge it: in evaluation mode (batch-norm running statistics). The changed image
keeps its label and enters the same training step as the rest of the batch (Madry et al.
2018's min–max training, the inner maximisation restricted to one pixel and approximated by
this search). Where the position ranking is too greedy, ``corner_search`` also takes explicit
positions (``flat_positions``) and every corner value.

Contract: the images replaced are the first ``round(share × n)`` of the batch (the batch
order is already a seeded shuffle); the search draws no random numbers, so a run and a
resumed run change the same pixels; the model's parameters, mode and gradients are left as
they are. Cost: one forward and backward pass of the changed images plus
``round(share × n) × positions`` forward passes per step (``benchmarks/train.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepadversaries.attacks.evaluators import default_channels_last, make_evaluator, optimized_for_inference
from deepadversaries.attacks.values import input_range
from deepadversaries.errors import OptionError
from deepadversaries.attacks.exhaustive import value_set
from deepadversaries.methods import ADV_1P_POSITIONS as DEFAULT_POSITIONS

#: candidates per forward pass of the search (full images; a training batch's worth)
SEARCH_CHUNK = 256


@dataclass(frozen=True)
class AdversarialBatch:
    """What :func:`one_pixel_adversarial_batch` did to one batch.

    Attributes:
        images: (n, B, H, W) the batch with its first ``n_changed`` images replaced.
        n_changed: images replaced.
        rows, cols: (n_changed,) the changed pixel of each replaced image.
        values: (n_changed, B) its new model-input values.
        p_true: (n_changed,) the true class's probability after the change (evaluation mode).
        flipped: (n_changed,) whether the changed image's predicted class (evaluation mode) is not
            the true class.
    """

    images: torch.Tensor
    n_changed: int
    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    p_true: np.ndarray
    flipped: np.ndarray


def check_share(share: float) -> float:
    """``share`` as a float in [0, 1]; :class:`OptionError` otherwise (the default share of
    ``adv-1p`` is :data:`deepadversaries.methods.ADV_1P_SHARE`)."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= float(share) <= 1.0:
        raise OptionError(f"--adv-share must be a number in [0, 1], got {share!r}")
    return float(share)


def rank_positions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, positions: int,
                   low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``positions`` pixels of each image whose best corner change raises the loss most to first order.

    Args:
        model: an evaluation-mode classifier returning ``(logits, z)``.
        images: (m, B, H, W) model-input images.
        labels: (m,) true classes.
        positions: P, pixels kept per image (at most H·W).
        low, high: (B,) the value range's ends.

    Returns:
        ``(flat, values)``: (m, P) pixel indices ``row * W + col`` in decreasing first-order
        gain, and (m, P, B) the corner chosen at each.
    """
    m, bands, height, width = images.shape
    p = min(int(positions), height * width)
    x = images.detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)[0]
        (grad,) = torch.autograd.grad(F.cross_entropy(logits.float(), labels, reduction="sum"), x)
    lo = torch.as_tensor(low, dtype=x.dtype, device=x.device).view(1, bands, 1, 1)
    hi = torch.as_tensor(high, dtype=x.dtype, device=x.device).view(1, bands, 1, 1)
    corner = torch.where(grad > 0, hi, lo)
    gain = ((corner - x.detach()) * grad).sum(dim=1).reshape(m, -1)
    flat = torch.topk(gain, p, dim=1).indices  # (m, P)
    values = corner.reshape(m, bands, -1).gather(2, flat[:, None, :].expand(m, bands, p)).permute(0, 2, 1)
    return flat.cpu().numpy(), values.detach().cpu().double().numpy()


@torch.no_grad()
def corner_search(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *,
                  positions: int = DEFAULT_POSITIONS, flat_positions: np.ndarray | None = None,
                  all_corners: bool = False, chunk_size: int = SEARCH_CHUNK) -> tuple[np.ndarray, ...]:
    """The most damaging (lowest p(true)) one-pixel corner change of each image among its candidates.

    Args:
        model: a classifier returning ``(logits, z)``; an evaluation-mode, inference-optimised
            copy is searched (the model itself is left as it is).
        images: (m, B, H, W) model-input images.
        labels: (m,) their true classes.
        positions: P, positions ranked by :func:`rank_positions` [default: 8].
        flat_positions: (m, P) pixel indices ``row * W + col`` to try instead of the ranking
            [default: None]; they are tried with every corner.
        all_corners: try all 2^B corners at the ranked positions, not only the first-order best
            one [default: False].
        chunk_size: candidates per forward pass [default: 256].

    Returns:
        ``(rows, cols, values, p_true, predicted)``: per image the chosen pixel, its (B,) value,
        the true class's probability after the change and the predicted class (numpy arrays;
        the first candidate in order on ties).
    """
    m, bands, height, width = images.shape
    if m == 0:
        return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, bands)), np.zeros(0), np.zeros(0, np.int64))
    value_range = input_range(bands)
    corners = value_set(value_range)  # (2^B, B)
    device = images.device
    channels_last = default_channels_last(device)
    fast = optimized_for_inference(model, channels_last)  # an evaluation-mode copy
    if flat_positions is None:
        flat, best = rank_positions(fast, images, labels, positions, value_range.low_array, value_range.high_array)
        if all_corners:
            flat, cand_values = np.repeat(flat, len(corners), axis=1), np.tile(corners, (m, flat.shape[1], 1))
        else:
            cand_values = best
    else:
        flat = np.repeat(np.asarray(flat_positions, np.int64), len(corners), axis=1)
        cand_values = np.tile(corners, (m, flat.shape[1] // len(corners), 1))
    per_image = flat.shape[1]
    evaluator = make_evaluator(fast, m, (bands, height, width), device, torch.float32, pixels=1, local=False,
                               channels_last=channels_last)
    for slot in range(m):
        evaluator.load(slot, images[slot].detach().float())
    slots_all = np.repeat(np.arange(m), per_image)
    rows_all, cols_all = np.divmod(flat.reshape(-1), width)
    values_all = cand_values.reshape(-1, bands)
    y = labels.detach().cpu().numpy().astype(np.int64)
    total = m * per_image
    p_true = np.empty(total)
    predicted = np.empty(total, np.int64)
    for a in range(0, total, chunk_size):
        j = slice(a, min(a + chunk_size, total))
        probs = evaluator.evaluate(slots_all[j], rows_all[j, None], cols_all[j, None], values_all[j][:, None, :])
        p_true[j] = probs[np.arange(len(probs)), y[slots_all[j]]]
        predicted[j] = probs.argmax(axis=1)
    best_j = np.argmin(p_true.reshape(m, per_image), axis=1) + np.arange(m) * per_image
    return rows_all[best_j], cols_all[best_j], values_all[best_j], p_true[best_j], predicted[best_j]


def one_pixel_adversarial_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, share: float,
                                positions: int = DEFAULT_POSITIONS, all_corners: bool = False) -> AdversarialBatch:
    """Replace the first ``round(share · n)`` images of a batch by their most damaging corner change.

    Args:
        model: the classifier being trained (searched in evaluation mode on a copy).
        images: (n, B, H, W) the batch, model-input values.
        labels: (n,) true classes.
        share: the fraction of the batch replaced, in [0, 1].
        positions: pixel positions ranked and tried per image [default: 8].
        all_corners: try every corner at those positions [default: False: the first-order best].

    Returns:
        An :class:`AdversarialBatch`; ``images`` is a new tensor (the input is not modified).
    """
    share = check_share(share)
    m = int(round(share * images.shape[0]))
    rows, cols, vals, p_true, predicted = corner_search(model, images[:m], labels[:m], positions=positions,
                                                        all_corners=all_corners)
    out = images.detach().clone()
    if m:
        idx = torch.arange(m, device=images.device)
        r = torch.as_tensor(rows, device=images.device)
        c = torch.as_tensor(cols, device=images.device)
        out[idx, :, r, c] = torch.as_tensor(vals, device=images.device, dtype=images.dtype)
    flipped = predicted != labels[:m].detach().cpu().numpy()
    return AdversarialBatch(out, m, rows, cols, vals, p_true, flipped)


__all__ = ["AdversarialBatch", "DEFAULT_POSITIONS", "SEARCH_CHUNK", "check_share", "corner_search",
           "one_pixel_adversarial_batch", "rank_positions"]
