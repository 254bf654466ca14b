"""AdaBN: batch-norm statistics re-estimated on the unlabelled target domain (Li et al. 2016).

The ``adabn`` method trains exactly as ``regular`` (same loss, same checkpoint: the best Y10
validation accuracy, ties by the lower Y10 validation loss; no Y1 label is read anywhere).
Before any Y1 inference the kept model is copied and every batch-norm layer's running mean
and variance are replaced by the statistics of the unlabelled Y1 training images
(:func:`adapt_batchnorm`); Y10 inference keeps the trained model. It is the cheapest
domain-adaptation baseline: no training step sees Y1, and the adaptation is one pass over
the Y1 images.

Reference: Li, Y., Wang, N., Shi, J., Liu, J. & Hou, X. 2016, "Revisiting Batch Normalization
For Practical Domain Adaptation", arXiv:1603.04779, Algorithm 1.
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import torch
from torch import nn

from deepadversaries.errors import OptionError

#: images per forward pass during the re-estimation
ADABN_BATCH_SIZE = 128


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers (BatchNorm1d/2d/3d, SyncBatchNorm), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def check_adabn_model(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The model's batch-norm layers, or :class:`OptionError` if AdaBN cannot adapt it.

    AdaBN needs at least one batch-norm layer, and every one must keep running statistics
    (``track_running_stats=True``; without them the layer always normalises by the batch).

    Raises:
        OptionError: no batch-norm layer, or one without running statistics.
    """
    layers = batchnorm_layers(model)
    name = type(model).__name__
    if not layers:
        raise OptionError(f"--method adabn needs a model with batch normalisation; {name} has none")
    if any(not m.track_running_stats or m.running_mean is None for m in layers):
        raise OptionError(f"--method adabn needs batch-norm layers with running statistics; {name} has one "
                          "built with track_running_stats=False")
    return layers


@torch.no_grad()
def adapt_batchnorm(model: nn.Module, images_y1: np.ndarray | torch.Tensor, *,
                    batch_size: int = ADABN_BATCH_SIZE, device: str | torch.device | None = None) -> nn.Module:
    """A copy of ``model`` whose batch-norm running statistics are those of the Y1 images.

    One pass over the images with the batch-norm layers in training mode (each normalises
    by its batch, so later layers see target-normalised inputs, as in ``torch.optim.swa_utils
    .update_bn``) and every other module in eval mode: dropout stays off, so the result does
    not depend on the random state. Each layer's input is accumulated per channel in float64
    (Chan et al.'s pairwise update of count, mean and sum of squared deviations), so the new
    running mean is the exact mean over all images and pixels and the running variance the
    unbiased variance, whatever ``batch_size`` (the layers' own cumulative average would weight
    batches, not images, and miss the between-batch variance).

    What changes: ``running_mean`` and ``running_var`` of every batch-norm layer on the forward
    path. Everything else — weights, biases, affine γ/β, ``num_batches_tracked``, momentum — is
    bit-identical to ``model``, which itself is not modified. The layers' momentum is not used:
    the new statistics are the target's alone (Li et al.), not a blend with the source's.

    Args:
        model: a trained classifier with batch-norm layers (ConvNet, ResNet18); ``model(x)``
            takes a (N, bands, H, W) float32 batch.
        images_y1: the unlabelled target images (N, bands, H, W), normalised as for inference
            (array or tensor; any (N, ...) batch of model inputs); N ≥ 2. Only these images
            are seen; no label is read.
        batch_size: images per forward pass [default: 128].
        device: where to run [default: the device of the model's first parameter or buffer].

    Returns:
        The adapted copy, in eval mode, on ``device``.

    Raises:
        OptionError: the model has no batch-norm layer (or one without running statistics),
            fewer than 2 images, a 1-d array instead of a batch, or ``batch_size`` < 1.
    """
    check_adabn_model(model)
    n = _check_adabn_inputs(images_y1, batch_size)
    device = _adabn_device(model, device)
    adapted = copy.deepcopy(model).to(device)
    layers = batchnorm_layers(adapted)
    tracked = {bn: bn.num_batches_tracked.clone() for bn in layers if bn.num_batches_tracked is not None}
    stats: dict[nn.Module, list] = {bn: [0, None, None] for bn in layers}  # count, mean, M2 (float64)
    _forward_target_images(adapted, layers, images_y1, n, batch_size, device, stats)
    _replace_running_stats(layers, stats, tracked)
    return adapted


def _check_adabn_inputs(images_y1: np.ndarray | torch.Tensor, batch_size: int) -> int:
    """N, the number of target images, after checking ``batch_size`` and the batch's shape."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"AdaBN batch size must be a positive integer, got {batch_size!r}")
    shape = tuple(images_y1.shape)
    if len(shape) < 2:
        raise OptionError(f"AdaBN needs a batch of model inputs, (N, C, H, W) for images, got shape {shape}")
    n = shape[0]
    if n < 2:
        raise OptionError(f"AdaBN needs at least 2 target images to estimate a variance, got {n}")
    return n


def _adabn_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    """The device given, or that of the model's first parameter or buffer (the CPU when it has none)."""
    if device is None:
        tensors = [*model.parameters(), *model.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
    return torch.device(device)


def _accumulate_moments(stats: dict[nn.Module, list], module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
    """Forward pre-hook: merge the batch's per-channel count, mean and M2 into ``stats[module]`` (Chan et al.)."""
    x = inputs[0].detach().to(torch.float64)
    dims = [0] + list(range(2, x.ndim))
    count = x.numel() // x.shape[1]
    mean = x.mean(dim=dims)
    m2 = ((x - mean.view(1, -1, *([1] * (x.ndim - 2)))) ** 2).sum(dim=dims)
    seen, seen_mean, seen_m2 = stats[module]
    if seen_mean is None:
        stats[module] = [count, mean, m2]
        return
    total = seen + count
    delta = mean - seen_mean
    stats[module] = [total, seen_mean + delta * (count / total), seen_m2 + m2 + delta**2 * (seen * count / total)]


def _forward_target_images(adapted: nn.Module, layers: list[nn.modules.batchnorm._BatchNorm],
                           images_y1: np.ndarray | torch.Tensor, n: int, batch_size: int, device: torch.device,
                           stats: dict[nn.Module, list]) -> None:
    """One pass over the images, batch-norm layers in training mode, accumulating their inputs' moments."""
    handles = [bn.register_forward_pre_hook(functools.partial(_accumulate_moments, stats)) for bn in layers]
    try:
        adapted.eval()
        for bn in layers:
            bn.train()
        # nearly equal chunks: no batch of one image (BatchNorm1d cannot normalise it)
        for idx in np.array_split(np.arange(n), -(-n // batch_size)):
            chunk = images_y1[int(idx[0]):int(idx[-1]) + 1]
            x = chunk if torch.is_tensor(chunk) else torch.from_numpy(np.asarray(chunk))
            adapted(x.to(device=device, dtype=torch.float32))
    finally:
        for h in handles:
            h.remove()
        adapted.eval()


def _replace_running_stats(layers: list[nn.modules.batchnorm._BatchNorm], stats: dict[nn.Module, list],
                           tracked: dict[nn.Module, torch.Tensor]) -> None:
    """Set each layer's running mean and unbiased variance from its moments; keep the trained batch count."""
    for bn in layers:
        if bn in tracked:  # the training-mode passes counted batches; keep the trained count
            bn.num_batches_tracked.copy_(tracked[bn])
        count, mean, m2 = stats[bn]
        if mean is None:  # a layer off the forward path keeps its statistics
            continue
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_((m2 / max(count - 1, 1)).to(bn.running_var.dtype))
