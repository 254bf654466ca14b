"""Sound bounds of a classifier's logits when one pixel takes any value in a box (no file I/O).

The certification of :mod:`deepadversaries.certify.certify` asks, for one image and one pixel
position, whether any value ``v`` of the pixel's B bands inside a box ``[lo, hi]`` makes a
one-pixel attack succeed. This module answers with bounds that are *sound* (they hold for
every value in the box) and that become *exact* as the box shrinks (every ReLU and every
max-pool choice stable), so that splitting boxes (branch and bound, in ``certify``) is
complete in the limit.

Geometry (the pixel's cone). Only activations inside the receptive cone of the pixel
change. For a batch of P boxes (positions and value boxes) the module keeps, per layer,
a *window* of the same size for every box (its top-left corner differs per box), which
covers every changed activation and lies inside the layer's map; everything outside it is
the clean image's activation, computed once (:func:`clean_pass`). A convolution or a
max-pool gathers the patch it needs from the clean map (with its zero or -inf padding)
and overwrites it with the window; a residual add embeds both branches in the union of
their windows. After the last spatial layer the remaining layers (adaptive average
pooling to 1 x 1, flatten, the bottleneck and the output Linear layers, with no
non-linearity between them in :class:`~deepadversaries.models.networks.GalaxyClassifier`) are one
linear map, composed exactly in float64.

Relaxations (forward linear bounds, DeepPoly/CROWN style). Every activation ``a`` inside a
window has a lower and an upper *linear function* of the box coordinates ``e`` in
[-1, 1]^B (``v = mid + rad * e``): ``L(e) <= a(e) <= U(e)``, stored as centre ``c = (L+U)/2``
and radius ``r = (U-L)/2`` with B+1 coefficients (constant first). The first convolution
is affine in ``v``: exact. An affine layer ``W`` maps (c, r) to (W c + b, |W| r) — the same
as ``W+ L + W- U`` for the lower function. A ReLU whose input lies in [l, u] (the
concretised bounds) is exact when l >= 0 or u <= 0; otherwise it is bounded above by the
chord ``u (x - l) / (u - l)`` applied to U and below by ``alpha x`` applied to L (alpha = 1
when u > -l, else 0: the adaptive lower bound). A max of two inputs is written
``max(m, x) = m + relu(x - m)``: exact when ``x - m`` has a fixed sign over the box,
otherwise bounded above by ``U_m + s (U_x - L_m - l_d)`` (the chord of that ReLU; or the
constant ``max(u_m, u_x)`` when its value is smaller at the box centre) and below by the
input with the larger lower bound; a k x k max-pool folds its inputs in this way.

The first block, jointly. Before the first ReLU the window is exact, so a ReLU followed by a
max-pool there (the ConvNet's first block, ResNet18's stem) computes relu(max_i z_i(e)) with every
z_i affine in e: a convex function of e on the box. It is bounded above by the least-squares plane
through its exact values at the 2^B corners raised by the largest residual (a convex function lies
below a plane that lies above it at the corners of the box) and below by its tangent at the box
centre (:func:`_relu_pool_exact`), instead of the separate relaxations above. The convolution
after it is bounded by its convex parts too (:func:`_conv_convex_parts`: z = W+ * y - |W-| * y + b,
each part convex in e and known exactly at the corners), where that is tighter.

Backward pass (CROWN / DeepPoly back-substitution, :func:`box_bounds`). The forward pass records
every ReLU's concrete input bounds and every pairwise max-pool relaxation (the *trace*). The
objective, a linear function of the logits, is written as ``lam . a + const`` on the last window
and substituted back: through a convolution by its transpose (cells of the patch outside the
window contribute their clean value to the constant), through a ReLU by the chord where lam > 0
and alpha x where lam < 0, through a max-pool by the recorded relaxations (upper where lam > 0,
lower where lam < 0), through a residual add into both branches, down to the box coordinates
(or the joint first block's linear bounds), where it is maximised exactly. Coefficients of all
paths into a neuron are summed before its bound is chosen, so opposite contributions cancel;
with the same intermediate bounds it is never looser than the forward bound (tested; the
convex-parts bound of the second convolution feeds only the forward bounds, which can then be
the tighter ones), and :func:`box_bounds` returns the tighter of the two. ``refine`` first tightens the input bounds of
each top-level ReLU by back-substituting its unstable pre-activations (full CROWN).

Success rules (:func:`target_rows`, :func:`success_upper_bounds`). For a targeted attack
under the paper's rule (p(target) > 0.5) the attack succeeds iff
``s = l_t - logsumexp_{j != t} l_j > 0``. Since ``logsumexp(l) >= sum_j w_j l_j + H(w)`` for
any weights w on the simplex (H the entropy; equality at w = softmax(l)), ``s <= l_t - w.l
- H(w)`` for every w: its maximum over the box is bounded by bounding one linear function
of the logits, for a few w (each one-hot, the uniform one, the clean image's softmax), and
taking the smallest. The top-class rule uses ``s = l_t - max_{j != t} l_j <= l_t - w.l``;
the untargeted paper rule (p(true) < 0.05) ``s = logsumexp_{j != y}(l_j - l_y) - log 19``,
bounded by the log-sum-exp of the upper bounds of ``l_j - l_y``; untargeted top-class
``s = max_{j != y}(l_j - l_y)``.

Floating point. Everything is computed in float64 from the model's float32 weights
(BatchNorm folded in float64), except, by default, the convolutions of inexact windows (every
convolution after the first relaxation): those run in float32, about 7x faster than float64 on a
CPU, and the bound of their rounding error is added to the radius (outward): for each output,
``2 gamma_{n+2}`` times ``|W| * sum_j |x_j|`` over the E + 1 coefficients of the centre and
radius functions (computed by one more float32 convolution of a single map), with
``gamma_m = m u / (1 - m u)``, u = 2^-24, n the weights per output, plus n * 2^-120 for
underflow (:class:`Float32Weights`, :func:`_conv_rounding`). This assumes what PyTorch's CPU
convolutions do: each output a sum of float32 products, in any order, fused or not
(the standard inner-product bound, Higham eq. 3.5): oneDNN's direct convolution or im2col and a
matrix product, the two CPU paths PyTorch takes for these shapes; NNPACK, whose Winograd and FFT
algorithms are not sums of products, is switched off around these convolutions. Reduced precision
would break it too: where a global PyTorch setting lets float32 convolutions
run in TF32 or bfloat16 (``torch.backends.mkldnn.conv.fp32_precision``,
``torch.backends.mkldnn.matmul.fp32_precision`` or ``torch.backends.fp32_precision`` other than
``"none"``/``"ieee"``, or ``torch.set_float32_matmul_precision`` below ``"highest"``), every convolution runs in
float64 instead (:func:`_float32_is_ieee`; the bounds run on the CPU). An exact window
(the input box, or a zero-width box) is convolved in float64 and stays exact, which the joint
first block needs. With ``compile_network(..., float32_convolutions=False)`` every
convolution is float64. The bounds then hold for the network evaluated in exact
arithmetic up to the float64 rounding of the rest of this computation (relative error about
1e-15 per operation, far below the ``CERTIFY_TOLERANCE`` a certificate must clear); the deployed
float32 forward pass differs from exact arithmetic by about 1e-6 relative, which the same
tolerance covers for logits of ordinary size. Witnesses are never taken from these bounds:
every flip is re-checked with a plain float32 forward pass of the model.

Supported layers: exactly ``Conv2d`` (zero padding, no dilation, one group),
``BatchNorm2d`` in eval mode (folded into the preceding convolution, or a per-channel
affine map), ``ReLU``, ``MaxPool2d`` (no dilation, floor mode), ``AdaptiveAvgPool2d`` to
1 x 1 as the last spatial layer, ``Dropout`` (the identity in eval mode), ``Flatten``,
``Linear``, torchvision's ``BasicBlock`` (the residual add), and the d4-convnet's
:class:`~deepadversaries.models.equivariant.D4Features`. Any other layer is refused with an
:class:`~deepadversaries.errors.OptionError` naming it.

The d4-convnet (:func:`_d4_ops`, :func:`_invariant_window`). Each lifting or group convolution
is one ``conv2d`` with its expanded filters (the model's own ``expanded_weight``), the group
batch norm folded in per field channel; its symmetric max-pools are plain 2 x 2 or 3 x 3
pools, resolved for the model's input size (``Network.input_size``; another size is refused).
The invariant pooling moves each orientation's window by T_g^-1 onto the clean aligned map
(a rotation or flip of a rectangle is a rectangle, :func:`_transformed_box`), then takes the
mean over g (an affine map with positive weights: exact) and the max (folded pairwise like a
max-pool's inputs). The backward pass goes back the same way (:func:`_invariant_back`): the
mean's share and the max chain's share of each orientation, through its gather, turned back by
T_g.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepadversaries.errors import OptionError
from deepadversaries.models.equivariant import (
    INVERSE, ORDER, D4Features, aligned_orientations, invariant_pool, transform,
)

#: a certificate needs the upper bound of the success score below -CERTIFY_TOLERANCE (logit units)
CERTIFY_TOLERANCE = 1e-6
#: the padding value of a max-pool's input: below any activation, finite so that arithmetic stays defined
NEG_BIG = -1e30
DTYPE = torch.float64
#: log(0.95 / 0.05): the untargeted paper rule, p(true) < 0.05, as a logit gap
UNTARGETED_GAP = math.log((1 - 0.05) / 0.05)
#: float32's unit roundoff (round to nearest): one rounding is off by at most this, relatively
FLOAT32_UNIT = 2.0 ** -24


# --------------------------------------------------------------------------------------
# the network as a list of operations
# --------------------------------------------------------------------------------------
@dataclass
class Float32Weights:
    """A convolution's weights for bounding it in float32, with the factor that bounds the rounding.

    For one output ``y = sum_i w_i x_i`` (n = in * k * k terms, w and x the float64 values), the
    float32 result (w and x rounded to float32, products summed in any order, fused or not) is off
    by at most ``gamma_{n+2} * sum_i |w_i| |x_i|`` with ``gamma_m = m u / (1 - m u)``, u = 2^-24
    (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., eq. 3.5 and lemma 3.3).
    The sum ``sum_i |w_i| |x_i|`` is itself computed in float32, low by at most a factor
    (1 - gamma_{n+2}) >= 1/2, so ``error_factor = 2 gamma_{n+2}`` times the computed sum bounds
    the error; ``error_floor`` covers underflow (subnormals flushed to zero: n * 2^-126 at most).
    """

    weight: torch.Tensor  # (out, in, k, k) float32
    abs_weight: torch.Tensor  # |weight| float32
    error_factor: float
    error_floor: float

    @classmethod
    def of(cls, weight: torch.Tensor) -> Float32Weights:
        n = int(weight[0].numel())
        m = (n + 2) * FLOAT32_UNIT
        if m >= 0.25:  # pragma: no cover - a kernel of over 4 million weights per output
            raise OptionError(f"certify's float32 convolutions need fewer than 4 million weights per output, got {n}")
        w32 = weight.to(torch.float32)
        return cls(w32, w32.abs(), 2 * m / (1 - m), n * 2.0 ** -120)


@dataclass
class Conv:
    """A 2-D convolution (BatchNorm folded in), float64; ``float32``: bound it in float32 with the
    rounding margin of :class:`Float32Weights` (set by :func:`compile_network`)."""

    weight: torch.Tensor  # (out, in, k, k)
    bias: torch.Tensor  # (out,)
    stride: int
    padding: int
    float32: Float32Weights | None = None

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[-1])


@dataclass
class Affine:
    """A per-channel affine map (a BatchNorm not preceded by a convolution)."""

    scale: torch.Tensor  # (C,)
    shift: torch.Tensor  # (C,)


@dataclass
class Relu:
    """The ReLU."""


@dataclass
class MaxPool:
    """A k x k max-pool of stride s and padding p (floor mode)."""

    kernel: int
    stride: int
    padding: int


@dataclass
class Residual:
    """``main(x) + shortcut(x)`` (torchvision's BasicBlock before its last ReLU)."""

    main: list
    shortcut: list  # empty: the identity


@dataclass
class InvariantPool:
    """The d4-convnet's invariant pooling: D4 fields on ``channels * 8`` map channels (orientation
    fastest) to the invariant map of ``2 * channels``: the mean, then the max, over g of the aligned
    orientations ``u[g] = T_g^-1 f[g]`` (:func:`deepadversaries.models.equivariant.invariant_pool`)."""

    channels: int


@dataclass
class Network:
    """A model as operations on (C, H, W) maps and the linear head after them.

    Attributes:
        ops: the spatial operations in order.
        head_weight: (K, C, H', W') float64: the logits' weights on the last map (global
            average pooling, the bottleneck and the output layer composed).
        head_bias: (K,) float64.
        n_classes: K.
        bands: B, input channels.
        input_size: the square input side the operations were resolved for (the d4-convnet's
            pooling windows depend on the map's parity); None: any size.
    """

    ops: list
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    global_average: bool = False
    head_layers: list = field(default_factory=list)  # (weight, bias) of the Linear layers, in order
    n_classes: int = 0
    bands: int = 0
    input_size: int | None = None


def _pair(v, what: str, layer: nn.Module) -> int:
    t = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if t[0] != t[1]:
        raise OptionError(f"certify supports square {what}s only; {type(layer).__name__} has {what} {t}")
    return int(t[0])


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", DTYPE).clone()


def _conv(layer: nn.Conv2d) -> Conv:
    if layer.groups != 1 or _pair(layer.dilation, "dilation", layer) != 1 or layer.padding_mode != "zeros" \
            or isinstance(layer.padding, str):
        raise OptionError(f"certify does not support this Conv2d ({layer}): it needs one group, no dilation and "
                          "numeric zero padding")
    _pair(layer.kernel_size, "kernel", layer)
    w = _f64(layer.weight)
    b = _f64(layer.bias) if layer.bias is not None else torch.zeros(w.shape[0], dtype=DTYPE)
    return Conv(w, b, _pair(layer.stride, "stride", layer), _pair(layer.padding, "padding", layer))


def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    if not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        raise OptionError(f"certify needs BatchNorm2d with running statistics (eval mode); {bn} has none")
    scale = torch.ones(bn.num_features, dtype=DTYPE) if bn.weight is None else _f64(bn.weight)
    shift = torch.zeros(bn.num_features, dtype=DTYPE) if bn.bias is None else _f64(bn.bias)
    scale = scale / torch.sqrt(_f64(bn.running_var) + bn.eps)
    return scale, shift - _f64(bn.running_mean) * scale


def _fold(conv: Conv, bn: nn.BatchNorm2d) -> Conv:
    return _scaled(conv, *_bn_scale_shift(bn))


def _scaled(conv: Conv, scale: torch.Tensor, shift: torch.Tensor) -> Conv:
    """The convolution followed by a per-channel affine map (scale, shift) (C_out,), as one convolution."""
    return Conv(conv.weight * scale[:, None, None, None], conv.bias * scale + shift, conv.stride, conv.padding)


def _flatten_modules(module: nn.Module) -> list[nn.Module]:
    if isinstance(module, nn.Sequential):
        return [m for child in module for m in _flatten_modules(child)]
    return [module]


def _d4_ops(features: D4Features, size: int | None) -> list:
    """The d4-convnet's blocks as plain operations: each equivariant convolution is one ``conv2d``
    with its expanded (C_out * 8, C_in [* 8], k, k) filters and the group batch norm folded in (one
    scale and shift per field channel, repeated over its 8 orientations); the symmetric max-pool of
    a map of side n is a 2 x 2 pool (n even) or a 3 x 3 one (n odd), stride 2; then the invariant
    pooling. ``size``: the input's square side (the pools' windows depend on it)."""
    if size is None:
        raise OptionError("certify needs the d4-convnet's input size (its image_shape) to resolve its pooling windows")
    ops: list = []
    for block in features.blocks:
        conv = block.conv
        scale, shift = _bn_scale_shift(block.norm)
        scale, shift = scale.repeat_interleave(ORDER), shift.repeat_interleave(ORDER)
        weight = _f64(conv.expanded_weight())
        bias = _f64(conv.bias).repeat_interleave(ORDER)
        kernel = 2 if size % 2 == 0 else 3
        ops += [_scaled(Conv(weight, bias, 1, conv.kernel // 2), scale, shift), Relu(), MaxPool(kernel, 2, 0)]
        size = (size - kernel) // 2 + 1
    ops.append(InvariantPool(int(features.blocks[-1].conv.c_out)))
    return ops


def _ops(modules: Sequence[nn.Module], size: int | None = None) -> list:
    from torchvision.models.resnet import BasicBlock  # deferred: torchvision only for ResNet18's blocks

    ops: list = []
    for m in modules:
        if isinstance(m, D4Features):
            ops += _d4_ops(m, size)
        elif isinstance(m, nn.Conv2d):
            ops.append(_conv(m))
        elif isinstance(m, nn.BatchNorm2d):
            if ops and isinstance(ops[-1], Conv):
                ops[-1] = _fold(ops[-1], m)
            else:
                ops.append(Affine(*_bn_scale_shift(m)))
        elif isinstance(m, nn.ReLU):
            ops.append(Relu())
        elif isinstance(m, nn.MaxPool2d):
            if _pair(m.dilation, "dilation", m) != 1 or m.ceil_mode or m.return_indices:
                raise OptionError(f"certify does not support this MaxPool2d ({m}): it needs no dilation and floor mode")
            k = _pair(m.kernel_size, "kernel", m)
            s = _pair(m.stride if m.stride is not None else k, "stride", m)
            ops.append(MaxPool(k, s, _pair(m.padding, "padding", m)))
        elif isinstance(m, (nn.Dropout, nn.Identity)):
            continue  # the identity in eval mode
        elif isinstance(m, BasicBlock):
            main = _ops([m.conv1, m.bn1, nn.ReLU(), m.conv2, m.bn2])
            shortcut = _ops(_flatten_modules(m.downsample)) if m.downsample is not None else []
            ops += [Residual(main, shortcut), Relu()]
        else:
            raise OptionError(f"certify cannot bound the layer {type(m).__name__} ({_short(m)}); it supports Conv2d, "
                              "BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d, Dropout, Linear, Flatten, "
                              "ResNet BasicBlocks and the d4-convnet's equivariant blocks")
    return ops


def _short(m: nn.Module) -> str:
    """A layer's repr on one line: its first line, "…)" closing a container's."""
    text = repr(m).splitlines()[0]
    text = text + "…)" if text.endswith("(") else text
    return text if len(text) < 80 else text[:77] + "..."


def compile_network(model: nn.Module, *, float32_convolutions: bool = True) -> Network:
    """The model as :class:`Network` operations, float64, BatchNorm folded.

    Args:
        model: a :class:`~deepadversaries.models.networks.GalaxyClassifier` (``features`` then the
            ``bottleneck`` and ``output`` Linear layers), evaluated in eval mode.
        float32_convolutions: bound the convolutions of inexact windows (those after the first
            relaxation) in float32, their rounding error added to the radius (sound, see
            :class:`Float32Weights`; about 7x faster per convolution on a CPU than float64);
            False: every convolution in float64 [default: True].

    Returns:
        The network (its head is set by :func:`clean_pass`, once the map size is known).

    Raises:
        OptionError: a model of another kind, or a layer this module cannot bound (named).
    """
    for name in ("features", "bottleneck", "output"):
        if not isinstance(getattr(model, name, None), nn.Module):
            raise OptionError(f"certify needs a ConvNet, d4-convnet or ResNet18 classifier (features, bottleneck "
                              f"and output layers); {type(model).__name__} has no '{name}' layer")
    modules = _flatten_modules(model.features)
    global_average = False
    if modules and isinstance(modules[-1], nn.AdaptiveAvgPool2d):
        size = modules[-1].output_size
        pair = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        if pair != (1, 1):
            raise OptionError(f"certify supports AdaptiveAvgPool2d to 1 x 1 only, got output size {size}")
        global_average = True
        modules = modules[:-1]
    while modules and isinstance(modules[-1], (nn.Dropout, nn.Identity)):
        modules = modules[:-1]
    for m in modules:
        if isinstance(m, nn.AdaptiveAvgPool2d):
            raise OptionError("certify supports AdaptiveAvgPool2d only as the last spatial layer")
    shape = getattr(model, "image_shape", None)
    size = int(shape[-1]) if shape is not None and int(shape[-1]) == int(shape[-2]) else None
    ops = _ops(modules, size)
    resolved = any(isinstance(op, InvariantPool) for op in ops)
    head = []
    for layer in (model.bottleneck, model.output):
        if not isinstance(layer, nn.Linear):
            raise OptionError(f"certify cannot bound the layer {type(layer).__name__} ({_short(layer)})")
        head.append((_f64(layer.weight), _f64(layer.bias) if layer.bias is not None
                     else torch.zeros(layer.out_features, dtype=DTYPE)))
    convs = [op for op in _walk(ops) if isinstance(op, Conv)]
    if float32_convolutions:
        for op in convs:
            op.float32 = Float32Weights.of(op.weight)
    bands = int(convs[0].weight.shape[1]) if convs else 0
    return Network(ops, global_average=global_average, head_layers=head, n_classes=int(head[-1][0].shape[0]),
                   bands=bands, input_size=size if resolved else None)


def arithmetic(net: Network) -> str:
    """How the network's bounds are computed, in words (for a certification's ``summary.json``)."""
    if any(isinstance(op, Conv) and op.float32 is not None for op in _walk(net.ops)):
        return ("float64; the convolutions after the first relaxation in IEEE float32 with a proved bound of "
                "their rounding added outward (float64 where a TF32 or bfloat16 setting is in force)")
    return "float64"


def _walk(ops: list):
    for op in ops:
        yield op
        if isinstance(op, Residual):
            yield from _walk(op.main)
            yield from _walk(op.shortcut)


# --------------------------------------------------------------------------------------
# the clean image
# --------------------------------------------------------------------------------------
def _apply_exact(op, x: torch.Tensor, maps: dict) -> torch.Tensor:
    """One operation on (1, C, H, W) float64; stores the input map of every op in ``maps``."""
    maps[id(op)] = x[0]
    if isinstance(op, Conv):
        return F.conv2d(x, op.weight, op.bias, stride=op.stride, padding=op.padding)
    if isinstance(op, Affine):
        return x * op.scale[:, None, None] + op.shift[:, None, None]
    if isinstance(op, Relu):
        return torch.relu(x)
    if isinstance(op, MaxPool):
        return F.max_pool2d(x, op.kernel, op.stride, op.padding)
    if isinstance(op, InvariantPool):
        fields = x.reshape(1, op.channels, ORDER, *x.shape[-2:])
        aligned = aligned_orientations(fields)[0]  # (C, 8, H, W)
        for g in range(ORDER):
            maps[(id(op), g)] = aligned[:, g]
        return invariant_pool(fields)
    main = x
    for sub in op.main:
        main = _apply_exact(sub, main, maps)
    short = x
    for sub in op.shortcut:
        short = _apply_exact(sub, short, maps)
    maps[(id(op), "main")] = main[0]
    maps[(id(op), "shortcut")] = short[0]
    return main + short


@dataclass
class CleanImage:
    """The clean image's activations: every operation's input map, the last map and the logits."""

    maps: dict
    last: torch.Tensor  # (C, H', W')
    logits: torch.Tensor  # (K,)
    image: torch.Tensor  # (B, H, W)


def clean_pass(net: Network, image: np.ndarray | torch.Tensor) -> CleanImage:
    """Run the clean image (B, H, W) through ``net`` in float64; set the network's head for its map size."""
    x = torch.as_tensor(np.asarray(image), dtype=DTYPE)[None]
    if net.input_size is not None and tuple(x.shape[-2:]) != (net.input_size, net.input_size):
        raise OptionError(f"this network was resolved for {net.input_size}x{net.input_size} images, got "
                          f"{x.shape[-2]}x{x.shape[-1]}")
    maps: dict = {}
    for op in net.ops:
        x = _apply_exact(op, x, maps)
    last = x[0]
    c, h, w = last.shape
    (w1, b1), (w2, b2) = net.head_layers
    composed = w2 @ w1  # (K, n_features)
    bias = w2 @ b1 + b2
    if net.global_average:
        if composed.shape[1] != c:
            raise OptionError(f"the bottleneck takes {composed.shape[1]} features but the pooled map has {c}")
        weight = (composed / (h * w))[:, :, None, None].expand(-1, c, h, w).contiguous()
    else:
        if composed.shape[1] != c * h * w:
            raise OptionError(f"the bottleneck takes {composed.shape[1]} features but the last map has {c}x{h}x{w}")
        weight = composed.reshape(-1, c, h, w)
    net.head_weight, net.head_bias = weight, bias
    # the logits through the layers in order (not the composed map): the reference value
    feats = last.mean(dim=(1, 2)) if net.global_average else last.reshape(-1)
    logits = w2 @ (w1 @ feats + b1) + b2
    return CleanImage(maps, last, logits, x.new_tensor(np.asarray(image)))


# --------------------------------------------------------------------------------------
# windows of linear bounds
# --------------------------------------------------------------------------------------
@dataclass
class Window:
    """Linear bounds of a window of activations for P boxes.

    ``c`` and ``r`` are (P, E + 1, C, n, m): the centre and radius linear functions (constant
    first, then one coefficient per box coordinate), so that ``c - r <= a <= c + r``;
    ``top`` and ``left`` (P,) place the window in the layer's map.
    """

    c: torch.Tensor
    r: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor

    @property
    def size(self) -> tuple[int, int]:
        return int(self.c.shape[-2]), int(self.c.shape[-1])


def concretise(f: torch.Tensor, upper: bool) -> torch.Tensor:
    """The maximum (``upper``) or minimum of linear functions f (P, E + 1, ...) over e in [-1, 1]^E."""
    spread = f[:, 1:].abs().sum(dim=1)
    return f[:, 0] + spread if upper else f[:, 0] - spread


def _out_range(start: torch.Tensor, n: int, kernel: int, stride: int, padding: int,
               limit: int) -> tuple[torch.Tensor, int]:
    """First output row and row count (same for all boxes) covering every output a window of
    input rows start..start+n-1 changes, clamped inside the output map of ``limit`` rows."""
    first = torch.div(start + padding - kernel + 1 + stride - 1, stride, rounding_mode="floor")
    count = -(-(n + kernel - 1) // stride)
    count = min(count, limit)
    return first.clamp(min=0, max=limit - count), count


@dataclass
class _Gather:
    """How a patch (P, E + 1, C, ph, pw) was assembled from a window and the clean map: what the
    backward pass needs to send coefficients on the patch back to the window."""

    inside: torch.Tensor  # (P, 1, 1, ph*pw) float: 1 where the patch cell lies in the window, else 0
    src: torch.Tensor  # (P, ph*pw) long: its index in the window (n*m), clamped where not inside
    base: torch.Tensor  # (P, C, ph*pw): the clean value (``fill`` outside the map) where not inside, else 0
    window: tuple  # (C, n, m) of the source window


def _gather_patch(win: Window, clean: torch.Tensor, fill: float, top: torch.Tensor, left: torch.Tensor,
                  ph: int, pw: int, record: list | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The (P, E + 1, C, ph, pw) patch of a map from (top, left): the window where it lies, the
    clean map elsewhere, ``fill`` outside the map (its :class:`_Gather` appended to ``record``)."""
    ch, h, w = clean.shape
    p, e1 = win.c.shape[:2]
    margin = max(ph, pw) + 2
    padded = F.pad(clean, (margin, margin, margin, margin), value=fill)
    wp = w + 2 * margin
    kr = torch.arange(ph)
    kc = torch.arange(pw)
    rows = top[:, None] + kr  # (P, ph) map rows
    cols = left[:, None] + kc
    flat = ((rows + margin)[:, :, None] * wp + (cols + margin)[:, None, :]).reshape(p, -1)
    base = padded.reshape(ch, -1)[:, flat].permute(1, 0, 2)  # (P, C, ph*pw)
    n, m = win.size
    sr = rows - win.top[:, None]
    sc = cols - win.left[:, None]
    inside = ((sr >= 0) & (sr < n))[:, :, None] & ((sc >= 0) & (sc < m))[:, None, :]  # (P, ph, pw)
    src = (sr.clamp(0, n - 1)[:, :, None] * m + sc.clamp(0, m - 1)[:, None, :]).reshape(p, -1)
    src4 = src.reshape(p, 1, 1, -1).expand(p, e1, ch, -1)
    inside = inside.reshape(p, 1, 1, -1)
    outside_base = torch.where(inside[:, 0], 0.0, base)  # (P, C, ph*pw): the clean value where not inside
    c = win.c.reshape(p, e1, ch, -1).gather(3, src4).mul_(inside)
    c[:, 0] += outside_base
    r = win.r.reshape(p, e1, ch, -1).gather(3, src4).mul_(inside)
    if record is not None:
        record.append(_Gather(inside.to(DTYPE), src, outside_base, (ch, n, m)))
    return c.reshape(p, e1, ch, ph, pw), r.reshape(p, e1, ch, ph, pw)


def _gather_back(g: _Gather, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Coefficients (P, R, C, ph, pw) on a gathered patch as coefficients (P, R, C, n, m) on its
    window plus a constant (P, R) (the clean cells' contribution)."""
    p, r = lam.shape[:2]
    ch, n, m = g.window
    lam = lam.reshape(p, r, ch, -1)
    # cells outside the map (max-pool padding, NEG_BIG) always get a coefficient of exactly 0
    const = torch.einsum("prcq,pcq->pr", lam, g.base)
    inner = lam * g.inside
    out = torch.zeros((p, r, ch, n * m), dtype=lam.dtype)
    out.scatter_add_(3, g.src.reshape(p, 1, 1, -1).expand(p, r, ch, -1), inner)
    return out.reshape(p, r, ch, n, m), const


def _spatial_setup(win: Window, clean_in: torch.Tensor, kernel: int, stride: int, padding: int, fill: float,
                   record: list | None = None):
    ch, h, w = clean_in.shape
    ho = (h + 2 * padding - kernel) // stride + 1
    wo = (w + 2 * padding - kernel) // stride + 1
    n, m = win.size
    top, nh = _out_range(win.top, n, kernel, stride, padding, ho)
    left, nw = _out_range(win.left, m, kernel, stride, padding, wo)
    ph, pw = (nh - 1) * stride + kernel, (nw - 1) * stride + kernel
    c, r = _gather_patch(win, clean_in, fill, top * stride - padding, left * stride - padding, ph, pw, record)
    return c, r, top, left, nh, nw


def _float32_is_ieee() -> bool:
    """Whether PyTorch's CPU convolutions compute float32 as IEEE float32: no global setting lets them
    use TF32 or bfloat16 (the rounding bound of :class:`Float32Weights` assumes IEEE float32)."""
    mkldnn = torch.backends.mkldnn
    settings = (getattr(torch.backends, "fp32_precision", "none"), getattr(mkldnn, "fp32_precision", "none"),
                getattr(getattr(mkldnn, "conv", None), "fp32_precision", "none"),
                getattr(getattr(mkldnn, "matmul", None), "fp32_precision", "none"))  # im2col + matrix product
    return all(str(v) in ("none", "ieee") for v in settings) and torch.get_float32_matmul_precision() == "highest"


def _in_float32(op: Conv) -> bool:
    """Whether the convolution is bounded in float32 (set by :func:`compile_network`, and IEEE float32
    in force); exact windows are convolved in float64 regardless (:func:`_conv_window`)."""
    return op.float32 is not None and _float32_is_ieee()


def _conv_float32(op: Conv, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``weight * x`` (no bias; ``weight`` float32, default the op's) computed in float32, as float64."""
    w = op.float32.weight if weight is None else weight
    with torch.backends.nnpack.flags(enabled=False):  # NNPACK's Winograd/FFT algorithms: not a sum of products
        return F.conv2d(x.to(torch.float32), w, stride=op.stride).to(DTYPE)


def _conv_rounding(op: Conv, abs_sum: torch.Tensor) -> torch.Tensor:
    """(N, out, h, w) float64: a bound of the summed rounding errors of the float32 convolutions
    (:func:`_conv_float32`, by the op's weights or their positive or negative parts) of any inputs
    x_j with ``sum_j |x_j| <= abs_sum`` (N, in, ph, pw): ``|W| * abs_sum`` times the op's
    :attr:`Float32Weights.error_factor`, plus its underflow floor."""
    with torch.backends.nnpack.flags(enabled=False):
        bound = F.conv2d(abs_sum.to(torch.float32), op.float32.abs_weight, stride=op.stride).to(DTYPE)
    return bound * op.float32.error_factor + op.float32.error_floor


def _conv_window(op: Conv, win: Window, clean_in: torch.Tensor, trace: list | None = None) -> Window:
    """A convolution of a window's linear bounds: (c, r) -> (W c + b, |W| r). An exact window (zero
    radius: the input box, or every window of a zero-width box) is convolved in float64 and stays
    exact; otherwise, with ``op.float32``, in float32, the rounding of every coefficient (a bound from
    :func:`_conv_rounding`) added to the radius's constant."""
    record: list | None = [] if trace is not None else None
    c, r, top, left, nh, nw = _spatial_setup(win, clean_in, op.kernel, op.stride, op.padding, 0.0, record)
    p, e1, ch = c.shape[:3]
    shape = c.shape[-2:]
    if bool(r.any()) and _in_float32(op):
        cc = _conv_float32(op, c.reshape(p * e1, ch, *shape))
        rr = _conv_float32(op, r.reshape(p * e1, ch, *shape), op.float32.abs_weight).reshape(p, e1, -1, nh, nw)
        rr[:, 0] += _conv_rounding(op, c.abs().sum(1) + r.abs().sum(1))
    else:
        cc = F.conv2d(c.reshape(p * e1, ch, *shape), op.weight, stride=op.stride)
        rr = F.conv2d(r.reshape(p * e1, ch, *shape), op.weight.abs(), stride=op.stride).reshape(p, e1, -1, nh, nw)
    cc = cc.reshape(p, e1, -1, nh, nw)
    cc[:, 0] += op.bias[:, None, None]
    if trace is not None:
        trace.append(("conv", op, record[0]))
    return Window(cc, rr, top, left)


def _relu_bounds(lo_f: torch.Tensor, up_f: torch.Tensor, lo: torch.Tensor | None = None,
                 up: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear bounds of relu(a) from L <= a <= U (functions, (P, E + 1, ...)); ``lo`` and ``up``
    (P, 1, ...): concrete bounds of a [default: those of L and U]."""
    lo = concretise(lo_f, upper=False)[:, None] if lo is None else lo
    up = concretise(up_f, upper=True)[:, None] if up is None else up
    # per neuron (P, 1, ...): dead (up <= 0) both bounds 0; alive (lo >= 0) both unchanged; crossing:
    # the chord up (x - lo) / (up - lo) above, alpha x below (alpha = 1 if up > -lo else 0)
    alive = lo >= 0
    cross = (up > 0) & ~alive
    slope = torch.where(cross, up / torch.where(cross, up - lo, 1.0), alive.to(lo_f.dtype))
    alpha = torch.where(cross, (up > -lo).to(lo_f.dtype), slope)
    new_up = slope * up_f
    new_up[:, 0] -= (slope * lo * cross)[:, 0]
    return alpha * lo_f, new_up


def _relu_window(win: Window, trace: list | None = None) -> Window:
    lo_f, up_f = win.c - win.r, win.c + win.r
    lo = concretise(lo_f, upper=False)[:, None]
    up = concretise(up_f, upper=True)[:, None]
    if trace is not None:
        trace.append(("relu", lo, up))
    lo_f, up_f = _relu_bounds(lo_f, up_f, lo, up)
    return Window((lo_f + up_f) / 2, (up_f - lo_f) / 2, win.top, win.left)


def _max2(m_lo, m_up, x_lo, x_up, decisions: list | None = None, concrete: tuple | None = None):
    """Linear bounds of max(m, x) from the bounds of m and x (functions, (P, E + 1, ...)); the
    relaxation chosen is appended to ``decisions`` for the backward pass. ``concrete``: (m_min,
    m_max, x_min, x_max), (P, 1, ...) concrete bounds when already known. Returns the bounds of the
    max and their concrete bounds (lo_min, up_max)."""
    if concrete is None:
        concrete = (concretise(m_lo, upper=False)[:, None], concretise(m_up, upper=True)[:, None],
                    concretise(x_lo, upper=False)[:, None], concretise(x_up, upper=True)[:, None])
    m_min, m_max, x_min, x_max = concrete
    d_lo = concretise(x_lo - m_up, upper=False)[:, None]
    d_up = concretise(x_up - m_lo, upper=True)[:, None]
    take_m = d_up <= 0
    take_x = d_lo >= 0
    cross = ~(take_m | take_x)
    s = torch.where(cross, d_up / torch.where(cross, d_up - d_lo, 1.0), 0.0)
    # above: m_up + s (x_up - m_lo - d_lo) (s = 0: m_up where m always wins), x_up where x always wins,
    # or the constant max(m_max, x_max) where that is smaller at the box centre
    lin_up = torch.addcmul(m_up, s, x_up - m_lo)
    lin_up[:, 0] -= (s * d_lo)[:, 0]
    const = torch.maximum(m_max, x_max)  # (P, 1, ...)
    use_const = cross & (const[:, 0] < lin_up[:, 0])[:, None]
    up = torch.where(take_x, x_up, lin_up)
    if bool(use_const.any()):
        up.masked_fill_(use_const, 0.0)
        up[:, 0] = torch.where(use_const[:, 0], const[:, 0], up[:, 0])
    low_x = take_x | (cross & (x_min > m_min))
    lo = torch.where(low_x, x_lo, m_lo)
    # concrete bounds of the result, for the next fold
    lo_min = torch.where(low_x, x_min, m_min)
    up_max = concretise(up, upper=True)[:, None]
    if decisions is not None:
        # (P, 1, ...) each: the backward pass's relaxation of max(m, x), the same as this one:
        # above fx x + fm m + shift: m (take_m), x (take_x), (1 - s) m + s x - s d_lo (cross), or
        # the constant; below: x where low_x, else m
        take_m = take_m & ~take_x
        lin = cross & ~use_const
        one = torch.ones((), dtype=s.dtype)
        fx = torch.where(take_x, one, torch.where(lin, s, 0.0))  # x's share of the upper bound
        fm = torch.where(take_m, one, torch.where(lin, 1 - s, 0.0))  # m's share
        shift = torch.where(lin, -s * torch.where(cross, d_lo, 0.0), torch.where(use_const, const, 0.0))
        lx = low_x.to(s.dtype)
        decisions.append((fx, fm, shift, lx, 1 - lx))
    return lo, up, lo_min, up_max


def _pool_window(op: MaxPool, win: Window, clean_in: torch.Tensor, trace: list | None = None) -> Window:
    record: list | None = [] if trace is not None else None
    c, r, top, left, nh, nw = _spatial_setup(win, clean_in, op.kernel, op.stride, op.padding, NEG_BIG, record)
    lo_all, up_all = c - r, c + r
    min_all = concretise(lo_all, upper=False)[:, None]
    max_all = concretise(up_all, upper=True)[:, None]
    s, k = op.stride, op.kernel
    lo = up = lo_min = up_max = None
    decisions: list | None = [] if trace is not None else None
    for dy in range(k):
        for dx in range(k):
            sl = (Ellipsis, slice(dy, dy + (nh - 1) * s + 1, s), slice(dx, dx + (nw - 1) * s + 1, s))
            x_lo, x_up = lo_all[sl], up_all[sl]
            if lo is None:
                lo, up, lo_min, up_max = x_lo, x_up, min_all[sl], max_all[sl]
            else:
                lo, up, lo_min, up_max = _max2(lo, up, x_lo, x_up, decisions,
                                               (lo_min, up_max, min_all[sl], max_all[sl]))
    if trace is not None:
        trace.append(("pool", op, record[0], decisions, (nh, nw)))
    return Window((lo + up) / 2, (up - lo) / 2, top, left)


#: the fused ReLU + max-pool of exact inputs evaluates the 2^B corners of the box; above this many bands it is skipped
MAX_CORNER_BANDS = 6
#: also bound the convolution after the joint first block by its convex parts (:func:`_conv_convex_parts`);
#: the tighter bounds feed the next ReLU; the backward pass still substitutes through the convolution
JOINT_SECOND = True


def _corner_signs(e: int) -> torch.Tensor:
    """(2^E, E) float64: the corners of the box [-1, 1]^E, one per row."""
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=e)), dtype=DTYPE)


def _exact(win: Window) -> bool:
    """Whether the window's bounds are exact (zero radius: affine in the box coordinates)."""
    return not bool(win.r.any())


def _relu_pool_exact(op: MaxPool, win: Window, clean_pre: torch.Tensor) -> Window:
    """maxpool(relu(z)) = relu(max z) for a window z that is affine in the box coordinates e
    (the first convolution's output): a convex function of e on the box. Above: the least-squares
    plane through its values at the 2^E corners, raised by the largest residual (a convex function
    lies below any plane that lies above it at the corners). Below: its tangent at the box centre,
    the input that is largest there (or 0 where that is negative), the linear lower bound with the
    largest mean over the box. ``clean_pre``: the clean map before the ReLU."""
    c, _, top, left, nh, nw = _spatial_setup(win, clean_pre, op.kernel, op.stride, op.padding, NEG_BIG)
    p, e1, ch = c.shape[:3]
    e = e1 - 1
    s, k = op.stride, op.kernel
    signs = _corner_signs(e)  # (2^E, E)
    inputs = [c[..., dy: dy + (nh - 1) * s + 1: s, dx: dx + (nw - 1) * s + 1: s]
              for dy in range(k) for dx in range(k)]  # each (P, E + 1, C, nh, nw)
    stack = torch.stack(inputs, 2)  # (P, E + 1, k*k, C, nh, nw)
    at_corners = stack[:, :1] + torch.einsum("se,peqchw->psqchw", signs, stack[:, 1:])  # (P, 2^E, k*k, C, nh, nw)
    y = at_corners.max(dim=2).values.clamp(min=0)  # (P, 2^E, C, nh, nw)
    n_corners = signs.shape[0]
    plane = torch.empty((p, e1, ch, nh, nw), dtype=DTYPE)
    plane[:, 0] = y.mean(dim=1)
    plane[:, 1:] = torch.einsum("se,pschw->pechw", signs, y) / n_corners
    fitted = plane[:, :1] + torch.einsum("se,pechw->pschw", signs, plane[:, 1:])
    plane[:, 0] += (y - fitted).max(dim=1).values.clamp(min=0)
    centre = stack[:, 0]  # (P, k*k, C, nh, nw)
    best = centre.argmax(dim=1, keepdim=True)  # (P, 1, C, nh, nw)
    tangent = stack.gather(2, best[:, None].expand(p, e1, 1, ch, nh, nw))[:, :, 0]  # (P, E + 1, C, nh, nw)
    positive = (centre.gather(1, best)[:, 0] > 0)[:, None]
    lower = torch.where(positive, tangent, torch.zeros_like(tangent))
    win = Window((plane + lower) / 2, (plane - lower) / 2, top, left)
    win.corners = y  # (P, 2^E, C, nh, nw): the exact values at the corners, for _conv_convex_parts
    return win


def _corner_plane(values: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """(P, E + 1, ...) the least-squares plane through a convex function's values (P, 2^E, ...) at
    the corners ``signs`` (2^E, E) of the box, raised by its largest residual: an upper bound."""
    n_corners = signs.shape[0]
    plane = torch.empty((values.shape[0], signs.shape[1] + 1, *values.shape[2:]), dtype=values.dtype)
    plane[:, 0] = values.mean(dim=1)
    plane[:, 1:] = torch.einsum("se,ps...->pe...", signs, values) / n_corners
    fitted = plane[:, :1] + torch.einsum("se,pe...->ps...", signs, plane[:, 1:])
    plane[:, 0] += (values - fitted).max(dim=1).values.clamp(min=0)
    return plane


def _conv_convex_parts(op: Conv, win: Window, clean_in: torch.Tensor, trace: list | None = None) -> Window:
    """A convolution of the joint first block's output (every input convex in e, known exactly at
    the corners): z = G - H + b with G = W+ * y and H = |W-| * y both convex, so
    z <= plane(G) - tangent(H) + b and z >= tangent(G) - plane(H) + b (planes through the exact
    corner values of G and H, raised by their largest residual; tangents from the inputs' tangents).
    Per output, the forward bound is kept where its value at the box centre is tighter. The trace
    records the plain convolution, so the backward pass still substitutes through it; only the
    bounds that the next ReLU's relaxation uses are tightened."""
    y = win.corners  # (P, 2^E, C, n, m)
    p, n_corners = y.shape[:2]
    e = win.c.shape[1] - 1
    signs = _corner_signs(e)
    # corner 0 with the clean cells, the other corners as differences from it (zero outside the window)
    diff = torch.cat([y[:, :1], y[:, 1:] - y[:, :1]], 1)
    corner_win = Window(diff, torch.zeros_like(diff), win.top, win.left)
    cc, _, top, left, nh, nw = _spatial_setup(corner_win, clean_in, op.kernel, op.stride, op.padding, 0.0)
    tangent = Window(win.c - win.r, torch.zeros_like(win.c), win.top, win.left)
    tc, _, _, _, _, _ = _spatial_setup(tangent, clean_in, op.kernel, op.stride, op.padding, 0.0)
    w_pos, w_neg = op.weight.clamp(min=0), (-op.weight).clamp(min=0)
    float32 = _in_float32(op)
    if float32:
        w_pos, w_neg = w_pos.to(torch.float32), w_neg.to(torch.float32)
    shape = cc.shape[-2:]

    def conv(x, w, k):
        x = x.reshape(p * k, -1, *shape)
        y = _conv_float32(op, x, w) if float32 else F.conv2d(x, w, stride=op.stride)
        return y.reshape(p, k, -1, nh, nw)

    g, h = conv(cc, w_pos, n_corners), conv(cc, w_neg, n_corners)
    g = torch.cat([g[:, :1], g[:, 1:] + g[:, :1]], 1)
    h = torch.cat([h[:, :1], h[:, 1:] + h[:, :1]], 1)
    tg, th = conv(tc, w_pos, e + 1), conv(tc, w_neg, e + 1)
    upper = _corner_plane(g, signs) - th
    lower = tg - _corner_plane(h, signs)
    upper[:, 0] += op.bias[:, None, None]
    lower[:, 0] += op.bias[:, None, None]
    if float32:
        # each corner value of G or H is off by at most its two convolutions' rounding (corner 0 and
        # its difference), raising the plane by at most that; the tangents' coefficients by theirs
        slack = _conv_rounding(op, cc.abs().sum(1) + tc.abs().sum(1))
        upper[:, 0] += slack
        lower[:, 0] -= slack
    fwd = _conv_window(op, win, clean_in, trace)
    f_up, f_lo = fwd.c + fwd.r, fwd.c - fwd.r
    upper = torch.where((f_up[:, :1] < upper[:, :1]), f_up, upper)
    lower = torch.where((f_lo[:, :1] > lower[:, :1]), f_lo, lower)
    return Window((upper + lower) / 2, (upper - lower) / 2, top, left)


def _embed(win: Window, clean: torch.Tensor, top: torch.Tensor, left: torch.Tensor, n: int, m: int,
           record: list | None = None) -> Window:
    c, r = _gather_patch(win, clean, 0.0, top, left, n, m, record)
    return Window(c, r, top, left)


def _residual_window(op: Residual, win: Window, clean: CleanImage, trace: list | None = None) -> Window:
    main_trace: list | None = [] if trace is not None else None
    short_trace: list | None = [] if trace is not None else None
    main = _propagate(op.main, win, clean, main_trace)
    short = _propagate(op.shortcut, win, clean, short_trace)
    out_map = clean.maps[(id(op), "main")]
    _, h, w = out_map.shape
    (n1, m1), (n2, m2) = main.size, short.size
    top = torch.minimum(main.top, short.top)
    left = torch.minimum(main.left, short.left)
    n = min(int(torch.maximum(main.top + n1, short.top + n2).sub(top).max()), h)
    m = min(int(torch.maximum(main.left + m1, short.left + m2).sub(left).max()), w)
    top, left = top.clamp(max=h - n), left.clamp(max=w - m)
    record: list | None = [] if trace is not None else None
    a = _embed(main, out_map, top, left, n, m, record)
    b = _embed(short, clean.maps[(id(op), "shortcut")], top, left, n, m, record)
    if trace is not None:
        trace.append(("residual", op, main_trace, short_trace, record[0], record[1]))
    return Window(a.c + b.c, a.r + b.r, top, left)


def _transformed_box(top: torch.Tensor, left: torch.Tensor, n: int, m: int, side: int,
                     g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ``transform(., g)`` of a square map of ``side`` puts the rectangle of n rows and m columns
    at (top, left) (P,): its new top-left corner (it has m rows and n columns after an odd number of
    quarter turns). A column flip sends (r, c) to (r, side-1-c), a quarter turn to (side-1-c, r)."""
    corners = [(top, left), (top + n - 1, left + m - 1)]
    if g >= 4:
        corners = [(r, side - 1 - c) for r, c in corners]
    for _ in range(g % 4):
        corners = [(side - 1 - c, r) for r, c in corners]
    (r0, c0), (r1, c1) = corners
    return torch.minimum(r0, r1), torch.minimum(c0, c1)


def _invariant_window(op: InvariantPool, win: Window, clean: CleanImage, trace: list | None = None) -> Window:
    """The invariant pooling of a window of D4 fields: each orientation's window moved and turned
    by T_g^-1 onto the clean aligned map ``u[g]`` (the whole map: the eight images of a window lie
    apart), then the mean over g (exact: an affine map with positive weights) and the max over g
    (folded pairwise by :func:`_max2`); with ``trace``, the gathers and the max's relaxations are
    recorded for the backward pass (:func:`_invariant_back`)."""
    ch, side = op.channels, clean.maps[id(op)].shape[-1]
    p, e1 = win.c.shape[:2]
    n, m = win.size
    c6 = win.c.reshape(p, e1, ch, ORDER, n, m)
    r6 = win.r.reshape(p, e1, ch, ORDER, n, m)
    origin = torch.zeros(p, dtype=torch.long)
    mean_c = mean_r = lo = up = lo_min = up_max = None
    gathers: list | None = [] if trace is not None else None
    decisions: list | None = [] if trace is not None else None
    for g in range(ORDER):
        inv = INVERSE[g]
        top, left = _transformed_box(win.top, win.left, n, m, side, inv)
        moved = Window(transform(c6[:, :, :, g], inv), transform(r6[:, :, :, g], inv), top, left)
        pc, pr = _gather_patch(moved, clean.maps[(id(op), g)], 0.0, origin, origin, side, side, gathers)
        x_lo, x_up = pc - pr, pc + pr
        x_min, x_max = concretise(x_lo, upper=False)[:, None], concretise(x_up, upper=True)[:, None]
        if lo is None:
            mean_c, mean_r, lo, up, lo_min, up_max = pc, pr, x_lo, x_up, x_min, x_max
        else:
            mean_c, mean_r = mean_c + pc, mean_r + pr
            lo, up, lo_min, up_max = _max2(lo, up, x_lo, x_up, decisions, (lo_min, up_max, x_min, x_max))
    if trace is not None:
        trace.append(("invariant", op, gathers, decisions, (n, m)))
    c = torch.cat([mean_c / ORDER, (lo + up) / 2], 2)
    r = torch.cat([mean_r / ORDER, (up - lo) / 2], 2)
    return Window(c, r, origin, origin)


def _propagate(ops: list, win: Window, clean: CleanImage, trace: list | None = None, *,
               top_level: bool = False) -> Window:
    """The forward pass over ``ops``; with ``trace`` (a list) it records, per operation, what the
    backward pass needs (the gathers, the ReLUs' input bounds, the max-pools' relaxations). At the
    top level a ReLU followed by a max-pool on an exact window is relaxed jointly
    (:func:`_relu_pool_exact`); the trace then starts after it, with its window (``("start", win)``)."""
    skip = 0
    for i, op in enumerate(ops):
        if skip:
            skip -= 1
            continue
        if (top_level and isinstance(op, Relu) and i + 1 < len(ops) and isinstance(ops[i + 1], MaxPool)
                and win.c.shape[1] - 1 <= MAX_CORNER_BANDS and _exact(win)):
            win = _relu_pool_exact(ops[i + 1], win, clean.maps[id(op)])
            skip = 1
            if trace is not None:
                trace[:] = [("start", win)]
            if JOINT_SECOND and i + 2 < len(ops) and isinstance(ops[i + 2], Conv):
                win = _conv_convex_parts(ops[i + 2], win, clean.maps[id(ops[i + 2])], trace)
                skip = 2
        elif isinstance(op, Conv):
            win = _conv_window(op, win, clean.maps[id(op)], trace)
        elif isinstance(op, Relu):
            win = _relu_window(win, trace)
        elif isinstance(op, MaxPool):
            win = _pool_window(op, win, clean.maps[id(op)], trace)
        elif isinstance(op, Affine):
            c = win.c * op.scale[:, None, None]
            c[:, 0] += op.shift[:, None, None]
            win = Window(c, win.r * op.scale.abs()[:, None, None], win.top, win.left)
            if trace is not None:
                trace.append(("affine", op))
        elif isinstance(op, Residual):
            win = _residual_window(op, win, clean, trace)
        elif isinstance(op, InvariantPool):
            win = _invariant_window(op, win, clean, trace)
        else:  # pragma: no cover - compile_network admits nothing else
            raise OptionError(f"certify cannot bound {type(op).__name__}")
    return win


# --------------------------------------------------------------------------------------
# the backward pass (CROWN / DeepPoly back-substitution)
# --------------------------------------------------------------------------------------
def _relu_back(lam: torch.Tensor, lo: torch.Tensor, up: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An upper bound of lam . relu(x) (lam (P, R, C, n, m); input bounds lo, up (P, 1, C, n, m)) as
    lam' . x + const: the chord where lam > 0, alpha x where lam < 0 (unstable ReLUs only)."""
    dead = up <= 0
    alive = lo >= 0
    cross = ~(dead | alive)
    su = torch.where(cross, up / torch.where(cross, up - lo, 1.0), alive.to(lam.dtype))  # 1 alive, 0 dead
    alpha = torch.where(cross, (up > -lo).to(lam.dtype), alive.to(lam.dtype))
    shift = torch.where(cross, -su * lo, 0.0)  # the chord's constant
    pos, neg = lam.clamp(min=0), lam.clamp(max=0)
    return pos * su + neg * alpha, (pos * shift).flatten(2).sum(2)


def _max_chain_back(decisions: list, lam: torch.Tensor) -> tuple[list, torch.Tensor]:
    """An upper bound of lam . max(x_0, ..., x_n) through the pairwise relaxations the forward fold
    recorded (``decisions[j - 1]`` relaxes max(fold of x_0..x_{j-1}, x_j)): the upper chain where
    lam > 0, the lower one where lam < 0. Returns each input's coefficients (n + 1 tensors shaped
    like lam) and the constant (P, R)."""
    a_up = lam.clamp(min=0)
    a_lo = lam.clamp(max=0)
    const = torch.zeros(lam.shape[:2], dtype=lam.dtype)
    coef: list = [None] * (len(decisions) + 1)
    for j in range(len(decisions), 0, -1):
        fx, fm, shift, lx, lm = decisions[j - 1]
        coef[j] = a_up * fx + a_lo * lx
        const = const + (a_up * shift).flatten(2).sum(2)
        a_up, a_lo = a_up * fm, a_lo * lm
    coef[0] = a_up + a_lo
    return coef, const


def _invariant_back(op: InvariantPool, gathers: list, decisions: list, window: tuple,
                    lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An upper bound of lam . invariant_pool(f) (lam (P, R, 2C, H, W) on the whole last map) as
    coefficients on the fields' window (P, R, C * 8, n, m) plus a constant: the mean's share 1/8 and
    the max chain's share of each aligned orientation, sent back through its gather and turned back
    by T_g (the adjoint of the permutation T_g^-1)."""
    p, r = lam.shape[:2]
    ch = op.channels
    n, m = window
    coef, const = _max_chain_back(decisions, lam[:, :, ch:])
    out = torch.zeros((p, r, ch, ORDER, n, m), dtype=lam.dtype)
    for g in range(ORDER):
        back, c2 = _gather_back(gathers[g], lam[:, :, :ch] / ORDER + coef[g])
        out[:, :, :, g] = transform(back, g)
        const = const + c2
    return out.reshape(p, r, ch * ORDER, n, m), const


def _pool_back(op: MaxPool, g: _Gather, decisions: list, size: tuple, lam: torch.Tensor):
    """An upper bound of lam . maxpool(x) as coefficients on the pool's input patch (via the same
    pairwise relaxations as the forward pass, upper chain for lam > 0, lower one for lam < 0)."""
    p, r, ch = lam.shape[:3]
    nh, nw = size
    s, k = op.stride, op.kernel
    coef, const = _max_chain_back(decisions, lam)
    ph, pw = (nh - 1) * s + k, (nw - 1) * s + k
    patch = torch.zeros((p, r, ch, ph, pw), dtype=lam.dtype)
    for dy in range(k):
        for dx in range(k):
            patch[..., dy: dy + (nh - 1) * s + 1: s, dx: dx + (nw - 1) * s + 1: s] += coef[dy * k + dx]
    back, c2 = _gather_back(g, patch)
    return back, const + c2


def _backward(trace: list, lam: torch.Tensor, const: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Back-substitute ``lam . a + const`` (a: the window after the traced operations; lam
    (P, R, C, n, m), const (P, R)) to an upper bound ``lam' . a_in + const'`` on the window before them."""
    for step in reversed(trace):
        kind = step[0]
        if kind == "conv":
            _, op, g = step
            p, r, co, nh, nw = lam.shape
            const = const + torch.einsum("prchw,c->pr", lam, op.bias)
            patch = F.conv_transpose2d(lam.reshape(p * r, co, nh, nw), op.weight, stride=op.stride)
            lam, c2 = _gather_back(g, patch.reshape(p, r, *patch.shape[1:]))
            const = const + c2
        elif kind == "relu":
            lam, c2 = _relu_back(lam, step[1], step[2])
            const = const + c2
        elif kind == "pool":
            _, op, g, decisions, size = step
            lam, c2 = _pool_back(op, g, decisions, size, lam)
            const = const + c2
        elif kind == "invariant":
            _, op, gathers, decisions, window = step
            lam, c2 = _invariant_back(op, gathers, decisions, window, lam)
            const = const + c2
        elif kind == "affine":
            op = step[1]
            const = const + torch.einsum("prchw,c->pr", lam, op.shift)
            lam = lam * op.scale[:, None, None]
        else:  # residual
            _, op, main_trace, short_trace, g_main, g_short = step
            lam_a, ca = _gather_back(g_main, lam)
            lam_b, cb = _gather_back(g_short, lam)
            lam_a, ca2 = _backward(main_trace, lam_a, ca)
            lam_b, cb2 = _backward(short_trace, lam_b, cb)
            lam, const = lam_a + lam_b, const + ca2 + cb2
    return lam, const


def _bound_through(trace: list, lam: torch.Tensor, const: torch.Tensor, win_in: Window) -> torch.Tensor:
    """(P, R) upper bounds of ``lam . a + const`` (a: the window after the traced operations), back-
    substituted to the trace's start (the input box, or the window of a joint relaxation)."""
    start = win_in
    if trace and trace[0][0] == "start":
        start, trace = trace[0][1], trace[1:]
    back, c = _backward(trace, lam, const)
    return _concretise_upper(back, c, start)


def _concretise_upper(lam: torch.Tensor, const: torch.Tensor, win: Window) -> torch.Tensor:
    """The maximum over the box of lam . a + const (P, R), with a bounded by the window's linear
    functions (c - r <= a <= c + r; exact for the input window)."""
    p, r = lam.shape[:2]
    lam_f = lam.reshape(p, r, -1)
    f = torch.einsum("prq,peq->pre", lam_f, win.c.reshape(p, win.c.shape[1], -1)) \
        + torch.einsum("prq,peq->pre", lam_f.abs(), win.r.reshape(p, win.r.shape[1], -1))
    return const + f[..., 0] + f[..., 1:].abs().sum(-1)


def _refine_relus(trace: list, win_in: Window, max_neurons: int) -> None:
    """Tighten the stored input bounds of the traced top-level ReLUs (in order) by back-substituting
    each unstable pre-activation to the input box; the tighter of the two bounds is kept (sound:
    both hold). ReLUs with more than ``max_neurons`` unstable neurons over the batch are skipped."""
    for i, step in enumerate(trace):
        if step[0] != "relu":
            continue
        lo, up = step[1], step[2]  # (P, 1, C, n, m)
        p = lo.shape[0]
        shape = lo.shape[2:]
        unstable = ((lo < 0) & (up > 0)).reshape(p, -1)
        idx = torch.nonzero(unstable.any(0)).flatten()
        if not len(idx) or len(idx) > max_neurons:
            continue
        q = int(np.prod(shape))
        lam = torch.zeros((len(idx), q), dtype=DTYPE)
        lam[torch.arange(len(idx)), idx] = 1.0
        lam = torch.cat([lam, -lam]).reshape(1, 2 * len(idx), *shape).expand(p, -1, *shape)
        bound = _bound_through(trace[:i], lam, torch.zeros((p, 2 * len(idx)), dtype=DTYPE), win_in)
        new_up, new_lo = bound[:, : len(idx)], -bound[:, len(idx):]
        lo_f, up_f = lo.reshape(p, -1).clone(), up.reshape(p, -1).clone()
        lo_f[:, idx] = torch.maximum(lo_f[:, idx], new_lo)
        up_f[:, idx] = torch.minimum(up_f[:, idx], new_up)
        trace[i] = ("relu", lo_f.reshape(lo.shape), up_f.reshape(up.shape))


def input_window(rows: np.ndarray, cols: np.ndarray, low: np.ndarray, high: np.ndarray) -> Window:
    """The 1 x 1 window of P boxes: pixel (row, col) takes any value in [low, high] (P, B)."""
    low = torch.as_tensor(np.asarray(low), dtype=DTYPE)
    high = torch.as_tensor(np.asarray(high), dtype=DTYPE)
    p, b = low.shape
    c = torch.zeros((p, b + 1, b, 1, 1), dtype=DTYPE)
    c[:, 0, :, 0, 0] = (low + high) / 2
    idx = torch.arange(b)
    c[:, idx + 1, idx, 0, 0] = (high - low) / 2
    return Window(c, torch.zeros_like(c), torch.as_tensor(np.asarray(rows), dtype=torch.long),
                  torch.as_tensor(np.asarray(cols), dtype=torch.long))


def propagate(net: Network, clean: CleanImage, rows: np.ndarray, cols: np.ndarray, low: np.ndarray,
              high: np.ndarray) -> Window:
    """Linear bounds of the last map's window for P boxes (pixel (row, col), values in [low, high]).

    Args:
        net: the compiled network (its head set by :func:`clean_pass`).
        clean: the clean image's activations.
        rows, cols: (P,) the pixel of each box.
        low, high: (P, B) model-input values, low <= high (equal: a point, evaluated exactly).

    Returns:
        The window of the last spatial map.
    """
    return _propagate(net.ops, input_window(rows, cols, low, high), clean, top_level=True)


def _head_lambda(net: Network, clean: CleanImage, win: Window,
                 rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows @ logits`` as ``lam . a + const`` on the last window a: lam (P, R, C, n, m), const (P, R)
    (the head is linear; cells outside the window keep their clean values)."""
    weight = torch.einsum("rk,kchw->rchw", rows, net.head_weight)  # (R, C, H', W')
    ch, h, w = clean.last.shape
    p = win.c.shape[0]
    n, m = win.size
    r_idx = (win.top[:, None] + torch.arange(n))[:, :, None]
    c_idx = (win.left[:, None] + torch.arange(m))[:, None, :]
    flat = (r_idx * w + c_idx).reshape(p, -1)  # (P, n*m)
    wr = weight.reshape(rows.shape[0], ch, -1)[:, :, flat].permute(2, 0, 1, 3)  # (P, R, C, n*m)
    base = clean.last.reshape(ch, -1)[:, flat].permute(1, 0, 2)  # (P, C, n*m)
    const = (rows @ clean.logits)[None] - torch.einsum("prcq,pcq->pr", wr, base)
    return wr.reshape(p, rows.shape[0], ch, n, m), const


def row_bounds(net: Network, clean: CleanImage, win: Window, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds over each box of linear functions of the logits, from the forward
    linear bounds of the last window alone.

    Args:
        rows: (R, K) float64: each row a linear combination of the K logits.

    Returns:
        (P, R) minima and (P, R) maxima (sound bounds) of ``rows @ logits`` over each box.
    """
    lam, const = _head_lambda(net, clean, win, rows)
    upper = _concretise_upper(lam, const, win)
    lower = -_concretise_upper(-lam, -const, win)
    return lower, upper


def box_bounds(net: Network, clean: CleanImage, rows_idx: np.ndarray, cols_idx: np.ndarray, low: np.ndarray,
               high: np.ndarray, rows: torch.Tensor, *, backward: bool = True, lower: bool = True,
               refine: int = 0, keep_forward: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Bounds over P boxes of linear functions of the logits: forward, then (``backward``)
    back-substituted to the box; the tighter of the two (both sound) is returned.

    Args:
        rows_idx, cols_idx: (P,) the pixel of each box; low, high: (P, B) its value box.
        rows: (R, K) float64 linear functions of the logits.
        backward: back-substitute the objective through every layer to the box coordinates
            (CROWN / DeepPoly), using the forward pass's intermediate bounds [default: True].
        lower: also bound from below (the backward pass then bounds 2R functions) [default: True].
        refine: before that, tighten the input bounds of each top-level ReLU after the first by
            back-substituting its unstable pre-activations (at most ``refine`` per batch; 0:
            never) [default: 0].
        keep_forward: return the tighter of the forward and the backward bounds; False: the
            backward bounds alone (for tests) [default: True].

    Returns:
        (P, R) minima (None when not ``lower``) and (P, R) maxima of ``rows @ logits``.
    """
    win_in = input_window(rows_idx, cols_idx, low, high)
    trace: list | None = [] if backward else None
    win = _propagate(net.ops, win_in, clean, trace, top_level=True)
    lam, const = _head_lambda(net, clean, win, rows)
    up = _concretise_upper(lam, const, win)
    lo = -_concretise_upper(-lam, -const, win) if lower else None
    if not backward:
        return lo, up
    if refine:
        _refine_relus(trace, win_in, refine)
    n_rows = rows.shape[0]
    if lower:
        lam, const = torch.cat([lam, -lam], 1), torch.cat([const, -const], 1)
    bound = _bound_through(trace, lam, const, win_in)
    if not keep_forward:
        return (-bound[:, n_rows:] if lower else None), bound[:, :n_rows]
    up = torch.minimum(up, bound[:, :n_rows])
    if lower:
        lo = torch.maximum(lo, -bound[:, n_rows:])
    return lo, up


def point_logits(net: Network, clean: CleanImage, rows: np.ndarray, cols: np.ndarray,
                 values: np.ndarray) -> torch.Tensor:
    """(P, K) float64 logits with pixel (row, col) set to ``values`` (P, B): the same cone
    computation with boxes of zero width (exact up to float64 rounding)."""
    win = propagate(net, clean, rows, cols, values, values)
    eye = torch.eye(net.n_classes, dtype=DTYPE)
    lo, up = row_bounds(net, clean, win, eye)
    return (lo + up) / 2


# --------------------------------------------------------------------------------------
# success rules as bounds
# --------------------------------------------------------------------------------------
@dataclass
class TargetRule:
    """How one target's success score s (success iff s > 0) is bounded from a set of logit rows.

    ``kind``: ``"min"`` — s <= min_i (ub(row_i) + offset_i); ``"max"`` — s <= max_i ub(row_i);
    ``"lse"`` — s <= log sum_i exp(ub(row_i)) + offset_0.
    """

    target: int | None
    kind: str
    rows: np.ndarray  # (R, K)
    offsets: np.ndarray  # (R,)


def target_rules(label: int, targets: Sequence[int | None], rule: str, n_classes: int,
                 clean_logits: np.ndarray | None = None) -> list[TargetRule]:
    """The bound recipe of each target (class index, or None for the untargeted rule).

    Args:
        label: the true class.
        targets: classes (targeted) or None (untargeted).
        rule: ``"paper"`` or ``"top-class"`` (:func:`deepadversaries.attacks.rules.is_success`).
        n_classes: K.
        clean_logits: (K,) the clean image's logits, whose softmax gives one more weighting
            of the log-sum-exp bound [default: None].
    """
    if rule not in ("paper", "top-class"):
        raise OptionError(f"certify supports the success rules paper and top-class, not {rule!r}")
    out = []
    eye = np.eye(n_classes)
    for t in targets:
        if t is None:
            others = [j for j in range(n_classes) if j != label]
            rows = np.stack([eye[j] - eye[label] for j in others])
            if rule == "paper":
                out.append(TargetRule(None, "lse", rows, np.full(len(rows), -UNTARGETED_GAP)))
            else:
                out.append(TargetRule(None, "max", rows, np.zeros(len(rows))))
            continue
        others = [j for j in range(n_classes) if j != t]
        weights = [eye[j][others] for j in others] + [np.full(len(others), 1.0 / len(others))]
        if clean_logits is not None and rule == "paper":
            z = np.asarray(clean_logits, dtype=np.float64)[others]
            p = np.exp(z - z.max())
            weights.append(p / p.sum())
        rows, offsets = [], []
        for w in weights:
            row = eye[t].copy()
            row[others] -= w
            rows.append(row)
            ent = -float(np.sum(w[w > 0] * np.log(w[w > 0]))) if rule == "paper" else 0.0
            offsets.append(-ent)
        out.append(TargetRule(int(t), "min", np.stack(rows), np.asarray(offsets)))
    return out


def success_upper_bounds(upper: torch.Tensor, rules: Sequence[TargetRule]) -> np.ndarray:
    """(P, T) upper bounds of each target's success score from the row maxima ``upper`` (P, sum R)."""
    up = upper.numpy()
    out = np.empty((up.shape[0], len(rules)))
    a = 0
    for k, rule in enumerate(rules):
        u = up[:, a: a + len(rule.rows)]
        a += len(rule.rows)
        if rule.kind == "min":
            out[:, k] = np.min(u + rule.offsets, axis=1)
        elif rule.kind == "max":
            out[:, k] = np.max(u, axis=1)
        else:
            top = u.max(axis=1, keepdims=True)
            out[:, k] = top[:, 0] + np.log(np.exp(u - top).sum(axis=1)) + rule.offsets[0]
    return out


def success_scores(logits: np.ndarray, label: int, rules: Sequence[TargetRule], rule: str) -> np.ndarray:
    """(P, T) exact success scores s (success iff s > 0) from logits (P, K), float64."""
    z = np.asarray(logits, dtype=np.float64)
    out = np.empty((len(z), len(rules)))
    for k, tr in enumerate(rules):
        if tr.target is None:
            others = np.delete(z, label, axis=1) - z[:, label: label + 1]
            if rule == "paper":
                top = others.max(axis=1, keepdims=True)
                out[:, k] = top[:, 0] + np.log(np.exp(others - top).sum(axis=1)) - UNTARGETED_GAP
            else:
                out[:, k] = others.max(axis=1)
        else:
            others = np.delete(z, tr.target, axis=1)
            if rule == "paper":
                top = others.max(axis=1, keepdims=True)
                lse = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
            else:
                lse = others.max(axis=1)
            out[:, k] = z[:, tr.target] - lse
    return out


def stacked_rows(rules: Sequence[TargetRule]) -> torch.Tensor:
    """All rules' logit rows, stacked (sum R, K) float64."""
    return torch.as_tensor(np.concatenate([r.rows for r in rules]), dtype=DTYPE)
