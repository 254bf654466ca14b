"""The two classifiers of the paper (SPEC 4): ConvNet and ResNet18.

Both map a stretched (B, 3, 100, 100) image to a 256-d latent ``z`` (the "bottleneck")
and then to 3 logits. ``embed(x)`` gives ``z``, ``head(z)`` the logits, ``forward(x)``
returns ``(logits, z)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from . import CLASSES, MODELS
from .errors import check_choice, file_error
from .runs import best_checkpoint_path, read_run_config, target_checkpoint_path

LATENT_DIM = 256
N_CLASSES = len(CLASSES)


class GalaxyClassifier(nn.Module):
    """A feature extractor followed by the bottleneck (latent) and output layers."""

    #: input size the architecture expects: (bands, height, width); None = any
    input_shape: tuple[int, int, int] | None = None

    def __init__(self, features: nn.Module, n_features: int) -> None:
        super().__init__()
        self.features = features
        self.bottleneck = nn.Linear(n_features, LATENT_DIM)
        self.output = nn.Linear(LATENT_DIM, N_CLASSES)
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


class ConvNet(GalaxyClassifier):
    """Three conv blocks (8, 16, 32 filters) and two dense layers; 1,187,203 parameters."""

    input_shape = (3, 100, 100)

    def __init__(self) -> None:
        features = nn.Sequential(*_conv_block(3, 8, 5), *_conv_block(8, 16, 3), *_conv_block(16, 32, 3))
        super().__init__(features, 32 * 12 * 12)


class ResNet18(GalaxyClassifier):
    """torchvision's ResNet18 trunk, dropout 0.5 before global pooling; 11,308,611 parameters."""

    def __init__(self) -> None:
        trunk = torchvision.models.resnet18(weights=None)
        features = nn.Sequential(
            trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool,
            trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4,
            nn.Dropout(0.5),
            nn.AdaptiveAvgPool2d(1),
        )
        super().__init__(features, 512)


def build_model(name: str) -> GalaxyClassifier:
    """A freshly initialised model by name: ``convnet`` or ``resnet18``."""
    builders = {"convnet": ConvNet, "resnet18": ResNet18}
    return builders[check_choice(name, MODELS, "model")]()


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_input_shape(model: GalaxyClassifier, shape: tuple[int, ...], source: str | Path) -> None:
    """Refuse images whose (bands, height, width) the architecture cannot take."""
    expected = model.input_shape
    if tuple(shape[:1]) != (3,) or (expected is not None and tuple(shape) != expected):
        want = expected or "(3, H, W)"
        raise file_error(source, f"images of shape {tuple(shape)} do not fit {type(model).__name__}, which takes {want}")


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


def model_from_checkpoint(path: str | Path, expected_model: str | None = None,
                          device: str | torch.device = "cpu") -> GalaxyClassifier:
    """Build the checkpoint's model, load its weights, move it to ``device``, eval mode."""
    ckpt = load_checkpoint(path)
    name = ckpt["model"]
    if name not in MODELS:
        raise file_error(path, f"unknown model {name!r} (expected one of {', '.join(MODELS)})")
    if expected_model is not None and name != expected_model:
        raise file_error(path, f"checkpoint holds a {name} but the run is a {expected_model}")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise file_error(path, "'state_dict' is not a mapping of names to tensors")
    if not all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()):
        raise file_error(path, "weights contain NaN or infinite values (did the training diverge?)")
    model = build_model(name)
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise file_error(path, f"weights do not fit a {name}: {(str(exc).splitlines() or [''])[0][:200]}") from exc
    return model.to(device).eval()


def load_model(run: str | Path, device: str | torch.device = "cpu", domain: str = "Y10") -> GalaxyClassifier:
    """The kept (best Y10 validation accuracy) model of a run folder, in eval mode, on ``device``.

    Args:
        run: a run folder.
        device: where to put the model [default: "cpu"].
        domain: the images it will see [default: "Y10"]. For ``Y1`` a run adapted before
            inference (``adabn``) gives its Y1 model (``checkpoints/best_y1.pt``); every other
            run gives the same model for both domains.
    """
    config = read_run_config(run)
    path = target_checkpoint_path(run) if domain == "Y1" and target_checkpoint_path(run).is_file() else \
        best_checkpoint_path(run)
    return model_from_checkpoint(path, expected_model=config.model, device=device)
