"""The classifiers (SPEC 4): ConvNet and ResNet18, any timm backbone, and adopted TorchScript models.

Every model maps a model-input (B, bands, H, W) image to a 256-d latent ``z`` (the
"bottleneck") and then to K logits. ``embed(x)`` gives ``z``, ``head(z)`` the logits,
``forward(x)`` returns ``(logits, z)``.

Model names (``--model``):

- ``convnet``: the paper's ConvNet (Table 1). Three conv blocks (each with a 2x2 max-pool)
  and two dense layers; the flatten size follows the image: 32 x (H // 8) x (W // 8) for
  (B, H, W) images (three floor-halvings; at least 8 x 8 pixels). At the paper's
  (3, 100, 100) and 3 classes it has 1,187,203 parameters.
- ``d4-convnet``: the ConvNet made equivariant to the eight rotations and flips of the square
  (D4; :mod:`deepadversaries.models.equivariant`): a lifting convolution and two group convolutions
  with shared, rotated and flipped filters (2, 4 and 16 field channels of 8 orientations),
  the group's batch norm, ReLU and group-symmetric max-pools, then invariant pooling (mean and
  max over the aligned orientations, 32 channels) before the ConvNet's flatten and 256-d
  bottleneck, so its latent and logits do not change when a square image is rotated by 90°
  or flipped. 1,186,075 parameters at (3, 100, 100) and 3 classes (ConvNet: 1,187,203).
  Square images only.
- ``resnet18``: torchvision's ResNet18 trunk; a first convolution for the band count when
  it is not 3; any image size.
- ``timm:NAME``: ``timm.create_model(NAME, pretrained=False, num_classes=0, in_chans=bands)``
  as the feature extractor, its ``num_features`` feeding the package's 256-d bottleneck and
  head (random initialisation: nothing is downloaded). Find names with
  ``python -c "import timm; print(timm.list_models('*resnet*'))"``.
- ``file:NAME``: a TorchScript model trained elsewhere and adopted into a run folder
  (``deepadv train --model-file``; :mod:`deepadversaries.models.scripted`); never trained here.

A run's ``checkpoints/best.pt`` records the model name, the image shape, the classes and
the weights, so :func:`model_from_checkpoint` rebuilds the right architecture.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

from deepadversaries import CLASSES, MODEL_LABELS, MODELS, TIMM_PREFIX
from deepadversaries.config import check_model_name, is_adopted, is_timm
from deepadversaries.models.equivariant import D4Features
from deepadversaries.errors import OptionError, check_choice, file_error
from deepadversaries.io import sha256_of
from deepadversaries.models.runs import (
    best_checkpoint_path, read_run_config, scripted_model_path, target_checkpoint_path,
)
from deepadversaries.models.scripted import ScriptedClassifier, load_torchscript

LATENT_DIM = 256
#: the paper's number of classes and image shape: the defaults of :func:`build_model`
N_CLASSES = len(CLASSES)
PAPER_SHAPE: tuple[int, int, int] = (3, 100, 100)
#: max-pool halvings of the ConvNet (one per conv block)
CONVNET_POOLS = 3


class GalaxyClassifier(nn.Module):
    """A feature extractor followed by the bottleneck (latent) and output layers.

    Args:
        features: maps (B, bands, H, W) to features flattened to (B, n_features).
        n_features: the feature count.
        n_classes: K, the number of outputs [default: 3].

    Attributes:
        input_shape: the (bands, height, width) the model takes; ``None`` in a place means
            any size there.
        n_classes: K.
        has_head: True: ``head(z)`` gives the logits of any latent (church windows need it).
    """

    #: plain Python facts about the model, kept out of TorchScript (``torch.jit.script`` of a model works)
    __jit_ignored_attributes__ = ["input_shape", "image_shape", "n_classes", "has_head", "timm_name"]
    input_shape = None
    has_head = True

    def __init__(self, features: nn.Module, n_features: int, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.features = features
        self.n_classes = int(n_classes)
        self.bottleneck = nn.Linear(n_features, LATENT_DIM)
        self.output = nn.Linear(LATENT_DIM, self.n_classes)
        # as the authors: bottleneck N(0, 0.005), output N(0, 0.01), biases 0
        nn.init.normal_(self.bottleneck.weight, 0.0, 0.005)
        nn.init.zeros_(self.bottleneck.bias)
        nn.init.normal_(self.output.weight, 0.0, 0.01)
        nn.init.zeros_(self.output.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The 256-d latent vector of each image."""
        return self.bottleneck(torch.flatten(self.features(x), 1))

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """Class logits from latent vectors."""
        return self.output(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.embed(x)
        return self.head(z), z


def _conv_block(c_in: int, c_out: int, kernel: int) -> list[nn.Module]:
    # the authors' code order: conv -> BN -> ReLU -> pool
    return [
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    ]


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in image_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise OptionError(f"an image shape is (bands, height, width) of positive integers, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


def _check_classes(n_classes: int) -> int:
    if int(n_classes) < 2:
        raise OptionError(f"a classifier needs at least 2 classes, got {n_classes}")
    return int(n_classes)


def convnet_feature_size(height: int, width: int) -> tuple[int, int]:
    """The ConvNet's feature-map size after its three 2x2 max-pools (each floors an odd size)."""
    for _ in range(CONVNET_POOLS):
        height, width = height // 2, width // 2
    return height, width


class ConvNet(GalaxyClassifier):
    """Three conv blocks (8, 16, 32 filters) and two dense layers; 1,187,203 parameters at the
    paper's (3, 100, 100) with 3 classes.

    Args:
        image_shape: (bands, height, width) of the input [default: (3, 100, 100)].
        n_classes: K [default: 3].

    Raises:
        OptionError: images smaller than 8 x 8 (three halvings leave nothing), fewer than 2 classes.
    """

    def __init__(self, image_shape: Sequence[int] = PAPER_SHAPE, n_classes: int = N_CLASSES) -> None:
        bands, height, width = _check_shape(image_shape)
        fh, fw = convnet_feature_size(height, width)
        if fh < 1 or fw < 1:
            raise OptionError(f"images of {height}x{width} pixels are too small for the ConvNet: its three 2x2 "
                              "max-pools need at least 8x8; use resnet18 or a timm model")
        features = nn.Sequential(*_conv_block(bands, 8, 5), *_conv_block(8, 16, 3), *_conv_block(16, 32, 3))
        super().__init__(features, 32 * fh * fw, _check_classes(n_classes))
        self.image_shape = (bands, height, width)
        self.input_shape = self.image_shape


#: field channels of the d4-convnet's three blocks: the fewest that keep a training step within 4x
#: the ConvNet's on a CPU (benchmarks/train.py) while the invariant pooling's mean and max give
#: 2 x 16 = 32 channels, the ConvNet's last-block width, so the bottleneck has the ConvNet's size
D4_CHANNELS: tuple[int, int, int] = (2, 4, 16)


class D4ConvNet(GalaxyClassifier):
    """The ConvNet with D4-equivariant convolutions and invariant pooling before the bottleneck;
    1,186,075 parameters at the paper's (3, 100, 100) with 3 classes (the ConvNet's: 1,187,203).

    Its logits and latent are invariant under the eight rotations and flips of a square image
    (exactly in real arithmetic; to float rounding in practice): ``features`` is a
    :class:`~deepadversaries.models.equivariant.D4Features`, whose output (B, 32, H // 8, W // 8)
    feeds the bottleneck as the ConvNet's does.

    Args:
        image_shape: (bands, height, width), height = width [default: (3, 100, 100)].
        n_classes: K [default: 3].

    Raises:
        OptionError: non-square images, images smaller than 8 x 8, fewer than 2 classes.
    """

    def __init__(self, image_shape: Sequence[int] = PAPER_SHAPE, n_classes: int = N_CLASSES) -> None:
        bands, height, width = _check_shape(image_shape)
        if height != width:
            raise OptionError(f"the d4-convnet's rotations need square images, got {height}x{width}; crop them "
                              "square or use convnet")
        fh, fw = convnet_feature_size(height, width)
        if fh < 1:
            raise OptionError(f"images of {height}x{width} pixels are too small for the d4-convnet: its three "
                              "max-pools need at least 8x8")
        features = D4Features(bands, D4_CHANNELS)
        super().__init__(features, features.out_channels * fh * fw, _check_classes(n_classes))
        self.image_shape = (bands, height, width)
        self.input_shape = self.image_shape


class ResNet18(GalaxyClassifier):
    """torchvision's ResNet18 trunk, dropout 0.5 before global pooling; 11,308,611 parameters
    with 3 bands and 3 classes. Another band count gets its own first convolution (same
    geometry, 7x7 stride 2, torchvision's initialisation); any image size.

    Args:
        image_shape: (bands, height, width) of the input [default: (3, 100, 100)].
        n_classes: K [default: 3].
    """

    def __init__(self, image_shape: Sequence[int] = PAPER_SHAPE, n_classes: int = N_CLASSES) -> None:
        bands, height, width = _check_shape(image_shape)
        trunk = torchvision.models.resnet18(weights=None)
        if bands != 3:
            trunk.conv1 = nn.Conv2d(bands, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(trunk.conv1.weight, mode="fan_out", nonlinearity="relu")
        features = nn.Sequential(
            trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool,
            trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4,
            nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d(1),
        )
        super().__init__(features, 512, _check_classes(n_classes))
        self.image_shape = (bands, height, width)
        self.input_shape = (bands, None, None)


class TimmClassifier(GalaxyClassifier):
    """Any timm backbone (random initialisation) with the package's 256-d bottleneck and head.

    Args:
        name: a timm model name, e.g. ``resnet10t`` or ``efficientnet_b0``.
        image_shape: (bands, height, width) of the input [default: (3, 100, 100)].
        n_classes: K [default: 3].

    Raises:
        OptionError: an unknown name, or a backbone that cannot take such images.
    """

    def __init__(self, name: str, image_shape: Sequence[int] = PAPER_SHAPE, n_classes: int = N_CLASSES) -> None:
        import timm  # an optional heavy import: only timm models pay for it

        bands, height, width = _check_shape(image_shape)
        check_model_available(TIMM_PREFIX + name)
        backbone, fixed = _timm_backbone(timm, name, (bands, height, width))
        super().__init__(backbone, int(backbone.num_features), _check_classes(n_classes))
        self.timm_name = name
        self.image_shape = (bands, height, width)
        self.input_shape = self.image_shape if fixed else (bands, None, None)


def _timm_backbone(timm, name: str, shape: tuple[int, int, int]) -> tuple[nn.Module, bool]:
    """``timm.create_model`` without its classifier, checked on a dummy batch; models with a
    fixed input size (vision transformers) are built for ``shape``. Returns (backbone, fixed)."""
    bands, height, width = shape
    errors = []
    for kwargs in ({}, {"img_size": (height, width)}):
        try:
            backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=bands, **kwargs)
            backbone.eval()
            with torch.no_grad():
                out = backbone(torch.zeros(2, bands, height, width))
            backbone.train()
        except Exception as exc:  # timm raises many kinds for a size or argument it cannot take
            errors.append(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}")
            continue
        if out.ndim != 2 or out.shape[1] != backbone.num_features:
            errors.append(f"its features have shape {tuple(out.shape)}, not (B, {backbone.num_features})")
            continue
        return backbone, bool(kwargs)
    raise OptionError(f"timm model {name!r} cannot take {bands}x{height}x{width} images ({errors[-1]}); "
                      "choose another --model")


def check_model_available(name: str) -> str:
    """Return ``name`` if :func:`build_model` can build it: a built-in, or a timm name that timm
    knows; else an :class:`OptionError` saying how to list timm's names."""
    name = check_model_name(name, trainable=True)
    if is_timm(name):
        import timm

        if not timm.is_model(name[len(TIMM_PREFIX):]):
            raise OptionError(f"unknown timm model {name[len(TIMM_PREFIX):]!r}; list the names with "
                              f"python -c \"import timm; print(timm.list_models('*resnet*'))\"")
    return name


def build_model(name: str, image_shape: Sequence[int] = PAPER_SHAPE, n_classes: int = N_CLASSES) -> GalaxyClassifier:
    """A freshly initialised model.

    Args:
        name: ``convnet``, ``d4-convnet``, ``resnet18`` or ``timm:NAME``.
        image_shape: (bands, height, width) of its input [default: (3, 100, 100), the paper's].
        n_classes: K, outputs of its head [default: 3].

    Returns:
        The model in training mode; the default arguments give the paper's models exactly
        (same parameters, same initialisation under one seed).

    Raises:
        OptionError: an unknown name, images the architecture cannot take, fewer than 2 classes.
    """
    name = check_model_name(name, trainable=True)
    if is_timm(name):
        return TimmClassifier(name[len(TIMM_PREFIX):], image_shape, n_classes)
    builders = {"convnet": ConvNet, "d4-convnet": D4ConvNet, "resnet18": ResNet18}
    return builders[check_choice(name, MODELS, "model")](image_shape, n_classes)


def model_label(name: str) -> str:
    """How figures and reports name a model (``ConvNet``, ``timm resnet10t``, ``TorchScript m.pt``)."""
    return MODEL_LABELS[name]


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def model_classes(model: nn.Module) -> int | None:
    """K, the number of classes the model outputs (``None`` when the model does not say)."""
    n = getattr(model, "n_classes", None)
    return int(n) if n is not None else None


def check_input_shape(model: nn.Module, shape: tuple[int, ...], source: str | Path) -> None:
    """Refuse images whose (bands, height, width) the model cannot take."""
    expected = getattr(model, "input_shape", None)
    if expected is None:
        return
    shape = tuple(int(v) for v in shape)
    if len(shape) != len(expected) or any(e is not None and e != s for e, s in zip(expected, shape)):
        want = "(" + ", ".join("any" if e is None else str(e) for e in expected) + ")"
        raise file_error(source, f"images of shape {shape} do not fit {type(model).__name__}, which takes "
                                 f"{want}; train (or adopt) a model on this dataset")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a ``best.pt`` checkpoint safely (``weights_only=True``), with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise file_error(path, "checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, crafted pickle, wrong format
        raise file_error(path, f"not a valid checkpoint ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "model" not in ckpt:
        raise file_error(path, "not a deepadv checkpoint (no 'model'/'state_dict' entries)")
    return ckpt


def checkpoint_architecture(ckpt: dict, path: str | Path) -> tuple[str, tuple[int, int, int], int]:
    """(model name, image shape, number of classes) recorded in a checkpoint (the paper's shape
    and 3 classes for one written before they were recorded)."""
    name = ckpt["model"]
    try:
        name = check_model_name(name, trainable=True)
    except OptionError:
        raise file_error(path, f"unknown model {name!r} (expected one of {', '.join(MODELS)} or timm:NAME)") from None
    shape, n_classes = ckpt.get("image_shape", PAPER_SHAPE), ckpt.get("n_classes", N_CLASSES)
    try:
        return name, _check_shape(shape), _check_classes(n_classes)
    except (OptionError, TypeError, ValueError) as exc:
        raise file_error(path, f"bad image_shape {shape!r} or n_classes {n_classes!r} ({exc})") from None


def model_from_checkpoint(path: str | Path, expected_model: str | None = None,
                          device: str | torch.device = "cpu") -> GalaxyClassifier:
    """Build the checkpoint's model (its name, image shape and classes), load its weights,
    move it to ``device``, eval mode."""
    ckpt = load_checkpoint(path)
    name, shape, n_classes = checkpoint_architecture(ckpt, path)
    if expected_model is not None and name != expected_model:
        raise file_error(path, f"checkpoint holds a {name} but the run is a {expected_model}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise file_error(path, "'state_dict' is not a mapping of names to tensors")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise file_error(path, "weights contain NaN or infinite values (did the training diverge?)")
    try:
        model = build_model(name, shape, n_classes)
    except OptionError as exc:
        raise file_error(path, f"cannot rebuild its {name}: {exc}") from None
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise file_error(path, f"weights do not fit a {name}: {(str(exc).splitlines() or [''])[0][:200]}") from exc
    return model.to(device).eval()


def load_adopted(run: str | Path, device: str | torch.device = "cpu") -> ScriptedClassifier:
    """The TorchScript model of an adopted run (``RUN/checkpoints/model.ts``), checked against
    the SHA-256 recorded at adoption, wrapped, in eval mode on ``device``."""
    config = read_run_config(run)
    path = scripted_model_path(run)
    if not path.is_file():
        raise file_error(path, "the adopted TorchScript model is missing; adopt it again with "
                               "'deepadv train --model-file FILE --overwrite'")
    recorded = (config.model_file or {}).get("sha256")
    if recorded and sha256_of(path) != recorded:
        raise file_error(path, "differs from the model adopted into this run (SHA-256 mismatch); adopt it again "
                               "with 'deepadv train --model-file FILE --overwrite'")
    model = ScriptedClassifier(load_torchscript(path), latent_layer=config.latent_layer, source=path)
    model.n_classes = len(config.classes)
    model.input_shape = tuple(config.image_shape) or None
    return model.to(device).eval()


def load_model(run: str | Path, device: str | torch.device = "cpu", domain: str = "Y10") -> nn.Module:
    """The kept model of a run folder, in eval mode, on ``device``: the best Y10 validation
    accuracy checkpoint of a trained run, or the adopted TorchScript model.

    Args:
        run: a run folder.
        device: where to put the model [default: "cpu"].
        domain: the images it will see [default: "Y10"]. For ``Y1`` a run adapted before
            inference (``adabn``) gives its Y1 model (``checkpoints/best_y1.pt``); every other
            run gives the same model for both domains.

    Returns:
        A :class:`GalaxyClassifier`, or a :class:`~deepadversaries.models.scripted.ScriptedClassifier`
        for an adopted model; either returns ``(logits, z)``.
    """
    config = read_run_config(run)
    if is_adopted(config.model):
        return load_adopted(run, device)
    path = target_checkpoint_path(run) if domain == "Y1" and target_checkpoint_path(run).is_file() else \
        best_checkpoint_path(run)
    return model_from_checkpoint(path, expected_model=config.model, device=device)

