"""Evaluating candidates: class probabilities of many perturbed images in batched passes.

:class:`CandidateEvaluator` holds the images under attack in numbered slots and evaluates
chunks of candidates (slot, pixels, values) in one forward pass of an
inference-optimised copy of the model (:func:`optimized_for_inference`: BatchNorm folded
into the convolutions, plain 2x2 max-pools as strided maxima, optionally NHWC). For the
paper's ConvNet at 3 x 100 x 100 and one pixel, :class:`LocalConvNetEvaluator` recomputes
only the cone of activations the pixel changes — the same probabilities as the full pass
to float rounding; :class:`LocalD4ConvNetEvaluator` does the same for the d4-convnet (its
group convolutions as expanded ``conv2d`` filters, the invariant pooling on the whole last
map). :func:`make_evaluator` picks one; the ``default_*`` functions give the chunk sizes
and images at once per device.

Contract: a model here returns ``(logits, latent)`` (:func:`deepadversaries.attacks.classifier.as_classifier`
wraps one that returns logits only); ``evaluate`` returns float64 probabilities (n, K).
"""

from __future__ import annotations

import contextlib
import copy
import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from deepadversaries.errors import OptionError
from deepadversaries.models.equivariant import INVERSE, ORDER, aligned_orientations, symmetric_max_pool, transform
from deepadversaries.models.networks import ConvNet, D4ConvNet


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
        self.convs, self.posts, self.pools = self._blocks(model, device, dtype, channels_last)
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

    @staticmethod
    def _blocks(model: nn.Module, device: torch.device, dtype: torch.dtype,
                channels_last: bool) -> tuple[tuple[nn.Conv2d, ...], tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        """The three blocks' convolutions, what follows each (batch norm, ReLU) and their poolings."""
        f = model.features
        return (f[0], f[4], f[8]), (f[1:3], f[5:7], f[9:11]), (f[3], f[7], f[11])

    def _clean_latent(self, features: torch.Tensor) -> torch.Tensor:
        """The latent (1, 256) of the last block's pooled map (1, C, h, w)."""
        return self.model.bottleneck(torch.flatten(features, 1))

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
        self.clean_latent[slot] = self._clean_latent(p3.to(self.dtype))[0]

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
        # block 3: convolution on rows b-2..b+4 -> b-1..b+3
        x3 = self._patch(self.p2, s, br - 2, bc - 2, 7)
        x3[:, 2:5, 2:5] = p2
        a3 = self._block(2, x3)
        logits = self._last_pool_and_head(s, br, bc, a3)
        return torch.softmax(logits.to(self.dtype), dim=1).double().cpu().numpy()

    #: the last pooling on channels-last patches; g = floor((b - lead) / 2) is the first pooled row
    #: block 3's changed rows b-1..b+3 reach; the pooled rows they reach; the activation rows those need
    LAST_POOL: tuple[Callable[[torch.Tensor], torch.Tensor], int, int, int] = (_max_pool_2x2_hwc, 1, 3, 6)

    def _last_pool_change(self, s: torch.Tensor, br: torch.Tensor, bc: torch.Tensor,
                          a3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Where block 3's pooled map changes and by how much: first rows and columns (B,) and the
        change (B, rows, rows, C3), zero outside the map."""
        pool, lead, rows, span = self.LAST_POOL
        gr = torch.div(br - lead, 2, rounding_mode="floor")
        gc = torch.div(bc - lead, 2, rounding_mode="floor")
        y3 = self._patch(self.a3, s, 2 * gr, 2 * gc, span)
        self._put(y3, a3, br - 1 - 2 * gr, bc - 1 - 2 * gc)
        diff = (pool(y3) - self._patch(self.p3, s, gr, gc, rows)) * self._grid(gr, gc, rows, self.sizes[3])
        return gr, gc, diff

    def _last_pool_and_head(self, s: torch.Tensor, br: torch.Tensor, bc: torch.Tensor,
                            a3: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) from block 3's changed activations ``a3`` (B, 5, 5, C3), rows b-1..b+3.

        The 2x2 pooling changes rows g..g+2 of the feature map; the latent is the clean one plus
        the bottleneck weights of the changed features times their change.
        """
        dev, n3 = self.device, self.sizes[3]
        gr, gc, diff = self._last_pool_change(s, br, bc, a3)
        # the latent: clean plus the bottleneck weights of the changed features times their change
        k3 = torch.arange(3, device=dev)
        fr = (gr[:, None] + k3).clamp(0, n3 - 1)[:, :, None, None]
        fc = (gc[:, None] + k3).clamp(0, n3 - 1)[:, None, :, None]
        ch = torch.arange(diff.shape[-1], device=dev)[None, None, None, :]
        flat = (ch * n3 + fr) * n3 + fc  # (B, 3, 3, c3) indices into the flattened (C, 12, 12) features
        z = self.clean_latent[s] + torch.nn.functional.embedding_bag(
            flat.reshape(len(s), -1), self.bottleneck_rows, per_sample_weights=diff.reshape(len(s), -1), mode="sum")
        return self.model.head(z)


def _max_pool_3x3_stride2_hwc(x: torch.Tensor) -> torch.Tensor:
    """3x3 max pooling, stride 2, of odd-sized (B, 2h + 1, 2w + 1, C) patches to (B, h, w, C)."""
    n = (x.shape[1] - 1) // 2
    rows = torch.maximum(torch.maximum(x[:, 0:2 * n:2], x[:, 1:2 * n:2]), x[:, 2:2 * n + 1:2])
    return torch.maximum(torch.maximum(rows[:, :, 0:2 * n:2], rows[:, :, 1:2 * n:2]), rows[:, :, 2:2 * n + 1:2])


class _SymmetricPool(nn.Module):
    """:func:`~deepadversaries.models.equivariant.symmetric_max_pool` as a module (NCHW maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return symmetric_max_pool(x)


def _fused_d4_conv(block: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool) -> nn.Conv2d:
    """One ``nn.Conv2d`` computing a D4 block's convolution and (eval-mode) group batch norm.

    The group convolution is already one ``conv2d`` with expanded filters (channel ``o·8 + g``);
    the batch norm's per-field scale and shift are repeated over the eight orientations and
    folded in, as :func:`~torch.nn.utils.fusion.fuse_conv_bn_eval` folds the ConvNet's.
    """
    conv, bn = block.conv, block.norm
    with torch.no_grad():
        weight, bias = conv.expanded_weight(), conv.bias.repeat_interleave(ORDER)
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        scale, shift = scale.repeat_interleave(ORDER), shift.repeat_interleave(ORDER)
        fused = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[-1], padding=weight.shape[-1] // 2,
                          dtype=weight.dtype, device=weight.device)
        fused.weight.copy_(weight * scale[:, None, None, None])
        fused.bias.copy_(bias * scale + shift)
    fused = fused.to(device, dtype).eval()
    return fused.to(memory_format=torch.channels_last) if channels_last else fused


class LocalD4ConvNetEvaluator(LocalConvNetEvaluator):
    """Exact one-pixel evaluation of the d4-convnet, recomputing only the cone a pixel changes.

    The d4-convnet (:class:`~deepadversaries.models.networks.D4ConvNet`) is the ConvNet's
    geometry with more channels: its lifting and group convolutions are each one ``conv2d``
    with expanded filters (16, 32 and 128 channels: 2, 4 and 16 fields × 8 orientations), its
    group batch norm folds into them, and its first two poolings are the ConvNet's 2x2 ones.
    So blocks 1 and 2 are :class:`LocalConvNetEvaluator`'s. Two things differ after block 3:

    - the last pooling is a 3x3 window with stride 2 on the 25-row map (symmetric under the
      group): block 3's changed rows b-1..b+3 reach pooled rows g..g+3, g = floor((b - 2) / 2)
      (four rows where the 2x2 pooling reaches three), computed from rows 2g..2g+8;
    - the invariant pooling aligns each orientation by its inverse rotation, which moves the
      changed rows to up to eight places of the 12x12 map, so the changed feature patch is added
      to the stored clean map and the invariant pooling, bottleneck and output layer are run on
      the whole 12x12 map (4 % of the model's multiply-adds).

    Rows outside a map are zero padding or masked, as in :class:`LocalConvNetEvaluator`: the
    same probabilities as the full forward pass to float rounding (BatchNorm folded).
    """

    LAST_POOL = (_max_pool_3x3_stride2_hwc, 2, 4, 9)

    @staticmethod
    def applies(model: nn.Module, image_shape: tuple[int, ...], pixels: int) -> bool:
        """Whether this evaluator serves ``model``: a d4-convnet at 3 x 100 x 100 whose batch norms
        use running statistics, one pixel per candidate."""
        return (isinstance(model, D4ConvNet) and tuple(image_shape) == (3, 100, 100) and pixels == 1
                and all(block.norm.track_running_stats for block in model.features.blocks))

    @staticmethod
    def _blocks(model: nn.Module, device: torch.device, dtype: torch.dtype,
                channels_last: bool) -> tuple[tuple[nn.Conv2d, ...], tuple[nn.Module, ...], tuple[nn.Module, ...]]:
        convs = tuple(_fused_d4_conv(block, device, dtype, channels_last) for block in model.features.blocks)
        return convs, (nn.ReLU(),) * 3, (MaxPool2x2(), MaxPool2x2(), _SymmetricPool())

    def __init__(self, model: nn.Module, n_slots: int, image_shape: tuple[int, int, int],
                 device: torch.device, dtype: torch.dtype, channels_last: bool = False,
                 bf16: bool = False) -> None:
        super().__init__(model, n_slots, image_shape, device, dtype, channels_last, bf16)
        n3, c3 = self.sizes[3], self.convs[2].out_channels
        # the clean pooled fields, aligned: (slots, fields, n3², 8), orientation g at position q
        # holding T_g⁻¹ f[g] (the layout invariant_pool's mean and max reduce over)
        self.clean_aligned = torch.zeros((n_slots, c3 * n3 * n3), device=device, dtype=dtype)
        # where a feature-map entry (position p, channel o·8 + g) lands in that layout
        grid = torch.arange(n3 * n3).reshape(n3, n3)
        sources = torch.stack([transform(grid, INVERSE[g]).reshape(-1) for g in range(ORDER)])  # (8, q) -> p
        target = torch.empty_like(sources)
        target.scatter_(1, sources, torch.arange(n3 * n3).expand(ORDER, -1))  # (8, p) -> q
        o = torch.arange(c3 // ORDER)[:, None, None]
        g = torch.arange(ORDER)[None, :, None]
        index = (o * n3 * n3 + target[None]) * ORDER + g  # (fields, 8, p)
        self.aligned_index = index.reshape(c3, n3 * n3).t().contiguous().to(device)  # (p, channel)

    def _clean_latent(self, features: torch.Tensor) -> torch.Tensor:
        return self._latent(self._aligned(features))

    @staticmethod
    def _aligned(features: torch.Tensor) -> torch.Tensor:
        """Pooled fields (B, C3·8, h, w) in the aligned layout, flattened to (B, C3·8·h·w)."""
        b, ch, h, w = features.shape
        fields = features.reshape(b, ch // ORDER, ORDER, h, w)
        return aligned_orientations(fields).permute(0, 1, 3, 4, 2).reshape(b, -1)

    def _latent(self, aligned: torch.Tensor) -> torch.Tensor:
        """The latent (B, 256) from aligned fields (B, C3·8·h·w): invariant pooling (mean and max
        over the orientations, mean channels first), bottleneck."""
        n3 = self.sizes[3]
        u = aligned.view(len(aligned), -1, n3 * n3, ORDER)
        return self.model.bottleneck(torch.cat([u.mean(dim=-1), u.amax(dim=-1)], dim=1).flatten(1))

    @torch.inference_mode()
    def load(self, slot: int, image: torch.Tensor) -> None:
        super().load(slot, image)
        clean = self.p3[slot, self.PAD:-self.PAD, self.PAD:-self.PAD].permute(2, 0, 1)[None]
        self.clean_aligned[slot] = self._aligned(clean)[0]

    def _last_pool_and_head(self, s: torch.Tensor, br: torch.Tensor, bc: torch.Tensor,
                            a3: torch.Tensor) -> torch.Tensor:
        dev, n3 = self.device, self.sizes[3]
        gr, gc, diff = self._last_pool_change(s, br, bc, a3)
        # the clean aligned fields plus the change, each entry added where the alignment moves it
        # (rows outside the map add a masked zero at a clamped position)
        k4 = torch.arange(4, device=dev)
        fr = (gr[:, None] + k4).clamp(0, n3 - 1)
        fc = (gc[:, None] + k4).clamp(0, n3 - 1)
        position = (fr[:, :, None] * n3 + fc[:, None, :]).reshape(len(s), -1)  # (B, 16)
        aligned = self.clean_aligned[s]
        idx = self.aligned_index[position] + (torch.arange(len(s), device=dev) * aligned.shape[1])[:, None, None]
        aligned.view(-1).index_add_(0, idx.reshape(-1), diff.reshape(-1))
        return self.model.head(self._latent(aligned))

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
    """The evaluator for ``model``: a local one (:class:`LocalConvNetEvaluator`,
    :class:`LocalD4ConvNetEvaluator`) where it applies, else batched full passes.

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
    local_cls = next((cls for cls in (LocalConvNetEvaluator, LocalD4ConvNetEvaluator)
                      if cls.applies(model, image_shape, pixels)), None)
    if local is None:
        local = local_cls is not None
    elif local and local_cls is None:
        raise OptionError("the local evaluator only serves one-pixel attacks on the ConvNet and the d4-convnet "
                          "at 100x100")
    cls = local_cls if local else CandidateEvaluator
    return cls(model, n_slots, tuple(image_shape), device, dtype, channels_last, bf16)
