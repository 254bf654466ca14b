"""The dihedral group D4 on square images: its eight transforms, D4-equivariant convolutions
(plain PyTorch) and the test-time average over the group.

D4 is the symmetry group of the square: four rotations by multiples of 90° and four
reflections. Element ``i`` (0 … 7) acts on the last two axes of a tensor as
``T_i(x) = rot90(flip(x) if i >= 4 else x, k=i % 4)`` (the flip reverses the columns, the
rotation is ``torch.rot90`` over (H, W)). The group's multiplication and inverses are read
off these actions (:data:`COMPOSE`, :data:`INVERSE`: ``T_a(T_b(x)) == T_{COMPOSE[a][b]}(x)``),
never typed in.

The layers (Cohen & Welling 2016, "Group equivariant convolutional networks"):

- :class:`LiftingConv2d`: ordinary images (B, C, H, W) to feature fields (B, C', 8, H, W),
  ``out[g] = conv(x, T_g W)`` with one shared filter bank ``W``: for an input transformed by
  ``a``, ``out[g]`` becomes ``T_a out[a⁻¹g]`` (the regular representation).
- :class:`GroupConv2d`: fields to fields, ``out[g] = Σ_h conv(f[h], T_g Ψ[g⁻¹h])``, with the
  same law; built as one ``conv2d`` whose (C'·8, C·8, k, k) weight is assembled from the shared
  filters ``Ψ`` at every call (so gradients reach ``Ψ``).
- :class:`GroupBatchNorm`: batch normalisation with one mean, variance and affine pair per
  field channel, shared by its eight orientations.
- :func:`symmetric_max_pool`: 2×2 max-pooling of an even size, a 3×3 window with stride 2 for
  an odd one, so that the pooling windows are symmetric under reversal of rows and columns
  and the pooling commutes with the group (a 2×2 pool drops the last row of an odd map,
  which a rotation moves to the first). Both halve the size the way the ConvNet's 2×2 pool
  does (``n // 2``).
- :func:`invariant_pool`: aligns each orientation ``u[g] = T_g⁻¹ f[g]`` (so an input
  transformed by ``a`` permutes the ``u[g]``) and pools over ``g`` (mean and max): a map
  of shape (B, 2C, H, W) that does not change when the input is rotated or flipped.

:class:`D4Average` is the test-time average over the group (``--tta d4``): any model
returning ``(logits, z)``, including a TorchScript one, evaluated on the eight transforms of
each image; its probabilities are the mean of the eight softmaxes (returned as logits
``log mean softmax``, so ``softmax(logits)`` is that mean) and its latent is the mean of the
eight latents. Both are exactly invariant for square images (up to float rounding).

Contract: everything is deterministic; equivariance holds exactly in real arithmetic for
square inputs and odd filter sizes with "same" zero padding (the tests check it to a bound
derived from float32 rounding).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deepadversaries.errors import OptionError, check_choice

#: the group's order
ORDER = 8
#: how each element is written: k quarter turns after an optional flip of the columns
ELEMENT_NAMES: tuple[str, ...] = ("identity", "rot90", "rot180", "rot270",
                                  "flip", "flip+rot90", "flip+rot180", "flip+rot270")
#: the test-time augmentations ``--tta`` offers
TTA_CHOICES: tuple[str, ...] = ("none", "d4")


def transform(x: torch.Tensor, g: int) -> torch.Tensor:
    """``T_g(x)``: element ``g`` (0 … 7) of D4 acting on the last two axes of ``x``.

    Args:
        x: (..., H, W); a non-square tensor only for ``g`` in {0, 2, 4, 6} keeps its shape.
        g: the element: quarter turns ``g % 4`` after a column flip when ``g >= 4``.

    Returns:
        The transformed tensor (a new tensor, never a view that aliases ``x`` in place).
    """
    g = int(g)
    if not 0 <= g < ORDER:
        raise ValueError(f"a D4 element is 0 … 7, got {g}")
    if g >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k=g % 4, dims=(-2, -1))


def _group_tables() -> tuple[tuple[tuple[int, ...], ...], tuple[int, ...]]:
    """The Cayley table and the inverses, read off the actions on a 3×3 array of distinct values."""
    probe = torch.arange(9.0).reshape(3, 3)
    images = [transform(probe, g) for g in range(ORDER)]

    def which(t: torch.Tensor) -> int:
        return next(g for g, img in enumerate(images) if torch.equal(img, t))

    compose = tuple(tuple(which(transform(transform(probe, b), a)) for b in range(ORDER)) for a in range(ORDER))
    inverse = tuple(next(b for b in range(ORDER) if compose[a][b] == 0) for a in range(ORDER))
    return compose, inverse


#: ``COMPOSE[a][b]``: the element ``ab`` with ``T_a(T_b(x)) == T_ab(x)``
COMPOSE, INVERSE = _group_tables()


def transform_all(x: torch.Tensor) -> list[torch.Tensor]:
    """The eight transforms ``[T_0(x), …, T_7(x)]`` of a tensor (..., H, W)."""
    return [transform(x, g) for g in range(ORDER)]


# ----------------------------------------------------------------------------------------------
# equivariant layers
# ----------------------------------------------------------------------------------------------
def _init_like_conv(weight: torch.Tensor, fan_in: int) -> None:
    # nn.Conv2d's default (kaiming_uniform with a = sqrt(5)): bound 1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in)
    nn.init.uniform_(weight, -bound, bound)


class LiftingConv2d(nn.Module):
    """Images (B, C_in, H, W) to D4 feature fields (B, C_out, 8, H, W): ``out[g] = conv(x, T_g W)``.

    Args:
        c_in: input channels (bands).
        c_out: field channels (each has 8 orientations).
        kernel: odd filter size; "same" zero padding ``kernel // 2``.

    Parameters: ``C_out·C_in·k² + C_out`` (one filter bank, one bias per field channel).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"equivariant convolutions need an odd kernel, got {kernel}")
        self.c_in, self.c_out, self.kernel = int(c_in), int(c_out), int(kernel)
        self.weight = nn.Parameter(torch.empty(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(c_out))
        fan_in = c_in * kernel * kernel
        _init_like_conv(self.weight, fan_in)
        _init_like_conv(self.bias, fan_in)

    def expanded_weight(self) -> torch.Tensor:
        """The (C_out·8, C_in, k, k) filters of one ``conv2d``: channel ``o·8 + g`` holds ``T_g W[o]``."""
        w = torch.stack(transform_all(self.weight), dim=1)  # (C_out, 8, C_in, k, k)
        return w.reshape(self.c_out * ORDER, self.c_in, self.kernel, self.kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.conv2d(x, self.expanded_weight(), self.bias.repeat_interleave(ORDER), padding=self.kernel // 2)
        return out.reshape(x.shape[0], self.c_out, ORDER, *out.shape[-2:])


class GroupConv2d(nn.Module):
    """D4 fields (B, C_in, 8, H, W) to fields (B, C_out, 8, H, W):
    ``out[g] = Σ_h conv(f[h], T_g Ψ[g⁻¹h])``.

    Args:
        c_in, c_out: field channels in and out.
        kernel: odd filter size; "same" zero padding.

    Parameters: ``C_out·C_in·8·k² + C_out``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int) -> None:
        super().__init__()
        if kernel % 2 != 1:
            raise ValueError(f"equivariant convolutions need an odd kernel, got {kernel}")
        self.c_in, self.c_out, self.kernel = int(c_in), int(c_out), int(kernel)
        # stored (C_out, C_in·8, k, k), the 4-d shape every conv weight has, so that
        # ``.to(memory_format=torch.channels_last)`` treats it like any other
        self.weight = nn.Parameter(torch.empty(c_out, c_in * ORDER, kernel, kernel))
        self.bias = nn.Parameter(torch.empty(c_out))
        fan_in = c_in * ORDER * kernel * kernel
        _init_like_conv(self.weight, fan_in)
        _init_like_conv(self.bias, fan_in)
        # perms[g][h] = g⁻¹h: which shared filter meets input orientation h for output orientation g
        self.register_buffer("perms", torch.tensor(
            [[COMPOSE[INVERSE[g]][h] for h in range(ORDER)] for g in range(ORDER)], dtype=torch.long),
            persistent=False)

    def expanded_weight(self) -> torch.Tensor:
        """The (C_out·8, C_in·8, k, k) filters of one ``conv2d`` (output ``o·8 + g``, input ``i·8 + h``)."""
        psi = self.weight.reshape(self.c_out, self.c_in, ORDER, self.kernel, self.kernel)
        per_g = [transform(psi[:, :, self.perms[g]], g) for g in range(ORDER)]
        w = torch.stack(per_g, dim=1)  # (C_out, 8, C_in, 8, k, k)
        return w.reshape(self.c_out * ORDER, self.c_in * ORDER, self.kernel, self.kernel)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        b, _, _, h, w = f.shape
        out = F.conv2d(f.reshape(b, self.c_in * ORDER, h, w), self.expanded_weight(),
                       self.bias.repeat_interleave(ORDER), padding=self.kernel // 2)
        return out.reshape(b, self.c_out, ORDER, *out.shape[-2:])


class GroupBatchNorm(nn.BatchNorm3d):
    """Batch norm of fields (B, C, 8, H, W): one mean, variance and affine pair per field
    channel, shared by its eight orientations (``BatchNorm3d`` over (8, H, W))."""


def symmetric_max_pool(x: torch.Tensor) -> torch.Tensor:
    """Max-pool (..., H, W) to (..., H // 2, W // 2) with windows symmetric under the group.

    Each axis must have the same parity (square maps do): an even size uses 2×2 windows with
    stride 2, an odd size 3×3 windows with stride 2 (no padding), whose windows ``[2i, 2i + 2]``
    cover the map and are mirrored onto each other by reversing the axis.
    """
    if x.shape[-1] % 2 != x.shape[-2] % 2:
        raise ValueError(f"symmetric pooling needs sides of one parity, got {tuple(x.shape[-2:])}")
    kernel = 2 if x.shape[-1] % 2 == 0 else 3
    lead = x.shape[:-2]
    out = F.max_pool2d(x.reshape(-1, 1, *x.shape[-2:]) if x.ndim != 4 else x, kernel, stride=2)
    return out.reshape(*lead, *out.shape[-2:])


def aligned_orientations(f: torch.Tensor) -> torch.Tensor:
    """Fields (B, C, 8, H, W) with each orientation aligned, ``u[g] = T_g⁻¹ f[g]``: an input
    transformed by ``a`` permutes the ``u[g]``."""
    return torch.stack([transform(f[:, :, g], INVERSE[g]) for g in range(ORDER)], dim=2)


def invariant_pool(f: torch.Tensor) -> torch.Tensor:
    """Fields (B, C, 8, H, W) to an invariant map (B, 2C, H, W): the mean and the max over ``g``
    of the aligned orientations ``u[g] = T_g⁻¹ f[g]`` (mean channels first)."""
    aligned = aligned_orientations(f)
    return torch.cat([aligned.mean(dim=2), aligned.amax(dim=2)], dim=1)


class D4Block(nn.Module):
    """One equivariant conv block in the ConvNet's order: conv → batch norm → ReLU → pool."""

    def __init__(self, conv: nn.Module, c_out: int) -> None:
        super().__init__()
        self.conv = conv
        self.norm = GroupBatchNorm(c_out)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.act(self.norm(self.conv(x)))
        b, c, g, h, w = f.shape
        pooled = symmetric_max_pool(f.reshape(b, c * g, h, w))
        return pooled.reshape(b, c, g, *pooled.shape[-2:])


class D4Features(nn.Module):
    """The ConvNet's three conv blocks made D4-equivariant, then invariant pooling.

    Lifting conv (5×5) → two group convs (3×3), each followed by the group's batch norm, ReLU
    and :func:`symmetric_max_pool`; then :func:`invariant_pool` (mean and max over the aligned
    orientations). Output: (B, 2·channels[-1], H // 8, W // 8) (three halvings, as the
    ConvNet), the same for every rotation and flip of a square input.

    Args:
        bands: input channels.
        channels: field channels of the three blocks [default: (2, 4, 16), the d4-convnet's:
            32 invariant channels, the ConvNet's last-block width].
    """

    def __init__(self, bands: int, channels: tuple[int, int, int] = (2, 4, 16)) -> None:
        super().__init__()
        c1, c2, c3 = channels
        self.blocks = nn.ModuleList([D4Block(LiftingConv2d(bands, c1, 5), c1), D4Block(GroupConv2d(c1, c2, 3), c2),
                                     D4Block(GroupConv2d(c2, c3, 3), c3)])
        self.out_channels = 2 * c3

    def fields(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The field of each block, (B, C_k, 8, H_k, W_k), after its pooling."""
        out = []
        for block in self.blocks:
            x = block(x)
            out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return invariant_pool(x)


# ----------------------------------------------------------------------------------------------
# test-time augmentation
# ----------------------------------------------------------------------------------------------
class D4Average(nn.Module):
    """Any classifier returning ``(logits, z)`` averaged over the eight D4 transforms of its input.

    ``forward(x)`` evaluates the wrapped model once on the (8·B) transformed images and
    returns ``(log mean_g softmax(logits_g), mean_g z_g)``: ``softmax`` of the returned logits
    is the mean of the eight probability vectors (the prediction), and the latent is the mean
    of the eight latents (the same linear average the bottleneck would see). ``head(z)`` is
    the wrapped model's head: the class it gives a latent point is that of the un-averaged
    model (for the package's models, whose head is linear, ``head(mean z)`` is the mean of the
    eight logit vectors, which can rank classes differently from the mean of the softmaxes in
    rare near-ties).

    Args:
        model: a classifier (a :class:`~deepadversaries.models.networks.GalaxyClassifier`, a
            :class:`~deepadversaries.models.scripted.ScriptedClassifier`, …) on square images.

    The wrapper forwards ``n_classes``, ``input_shape``, ``image_shape`` and ``has_head``
    from the wrapped model.
    """

    __jit_ignored_attributes__ = ["input_shape", "image_shape", "n_classes", "has_head"]

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_classes = getattr(model, "n_classes", None)
        self.input_shape = getattr(model, "input_shape", None)
        self.image_shape = getattr(model, "image_shape", None)
        self.has_head = bool(getattr(model, "has_head", hasattr(model, "head")))
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] != x.shape[-2]:
            raise OptionError(f"--tta d4 rotates the images by 90 degrees, which needs square images; got "
                              f"{x.shape[-2]}x{x.shape[-1]} pixels")
        b = x.shape[0]
        logits, z = self.model(torch.cat(transform_all(x), dim=0))
        logp = torch.log_softmax(logits.float(), dim=1).reshape(ORDER, b, -1)
        mean_logp = torch.logsumexp(logp, dim=0) - math.log(ORDER)
        return mean_logp, z.reshape(ORDER, b, *z.shape[1:]).mean(dim=0)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The mean latent over the eight transforms, (B, D)."""
        return self(x)[1]

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """The wrapped model's logits of latent points (see the class docstring)."""
        return self.model.head(z)


def with_tta(model: nn.Module, tta: str = "none") -> nn.Module:
    """``model`` itself (``tta="none"``) or wrapped in :class:`D4Average` (``"d4"``).

    Raises:
        OptionError: another name.
    """
    if check_choice(tta, TTA_CHOICES, "test-time augmentation") == "none":
        return model
    return D4Average(model)


__all__ = ["COMPOSE", "D4Average", "D4Block", "D4Features", "ELEMENT_NAMES", "GroupBatchNorm", "GroupConv2d",
           "INVERSE", "LiftingConv2d", "ORDER", "TTA_CHOICES", "invariant_pool", "symmetric_max_pool", "transform",
           "transform_all", "with_tta"]
