"""The two classifiers (SPEC 4): sizes, the embed/head split, safe checkpoint loading."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepadversaries.errors import DeepAdvError
from deepadversaries.io import write_json
from deepadversaries.models.networks import (
    LATENT_DIM,
    build_model,
    check_input_shape,
    count_parameters,
    load_model,
)
from deepadversaries.models.runs import RUN_KIND, best_checkpoint_path


def test_parameter_counts_match_the_paper():
    assert count_parameters(build_model("convnet")) == 1_187_203
    assert count_parameters(build_model("resnet18")) == 11_308_611


def test_convnet_layers_follow_table_1():
    model = build_model("convnet")
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 8, (5, 5)), (8, 16, (3, 3)), (16, 32, (3, 3))]
    assert model.bottleneck.in_features == 4608 and model.bottleneck.out_features == LATENT_DIM
    # the authors' code order conv -> BN -> ReLU -> pool
    kinds = [type(m).__name__ for m in model.features][:4]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]


def _trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Random, non-trivial BatchNorm statistics and biases, so that eval mode is really tested."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            if isinstance(m, torch.nn.Linear):
                m.bias.copy_(torch.randn(m.out_features, generator=g) * 0.1)
    return model.eval()


def test_convnet_forward_equals_table_1_written_with_functional_ops():
    """conv5x5(8) -> BN -> ReLU -> pool, conv3x3(16) ..., conv3x3(32) ..., flatten 4608, dense 256, dense 3:
    computed here from the state dict with torch.nn.functional, in float64."""
    torch.manual_seed(0)
    model = _trained_like(build_model("convnet"))
    sd = {k: v.double() for k, v in model.state_dict().items()}
    x = torch.rand(3, 3, 100, 100)
    h = x.double()
    for layer, pad in ((0, 2), (4, 1), (8, 1)):
        h = F.conv2d(h, sd[f"features.{layer}.weight"], sd[f"features.{layer}.bias"], padding=pad)
        bn = f"features.{layer + 1}"
        h = (h - sd[f"{bn}.running_mean"][:, None, None]) / torch.sqrt(sd[f"{bn}.running_var"][:, None, None] + 1e-5)
        h = h * sd[f"{bn}.weight"][:, None, None] + sd[f"{bn}.bias"][:, None, None]
        h = F.max_pool2d(F.relu(h), 2)
    assert h.shape == (3, 32, 12, 12)
    z_ref = h.flatten(1) @ sd["bottleneck.weight"].T + sd["bottleneck.bias"]
    logits_ref = z_ref @ sd["output.weight"].T + sd["output.bias"]
    with torch.no_grad():
        logits, z = model(x)
    assert z.shape == (3, LATENT_DIM) and logits.shape == (3, 3)
    torch.testing.assert_close(z.double(), z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits.double(), logits_ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x).double(), z_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.head(z_ref.float()).double(), logits_ref, rtol=1e-4, atol=1e-5)


def test_resnet18_forward_equals_torchvisions_trunk_with_the_papers_head():
    """torchvision's ResNet18 (same weights) up to global pooling, then dense 512 -> 256 -> 3."""
    import torchvision

    torch.manual_seed(0)
    model = _trained_like(build_model("resnet18"))
    trunk = torchvision.models.resnet18(weights=None)
    trunk.fc = torch.nn.Identity()
    sd = model.state_dict()
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    index = {n: i for i, n in enumerate(names)}
    mapped = {}
    for key, value in sd.items():
        if key.startswith("features."):
            _, i, rest = key.split(".", 2)
            mapped[f"{names[int(i)]}.{rest}"] = value
    trunk.load_state_dict(mapped)
    assert index["layer4"] == 7
    trunk.eval()
    x = torch.rand(2, 3, 64, 64)  # any size: global average pooling
    with torch.no_grad():
        pooled = trunk(x)  # (2, 512): conv1 ... layer4, adaptive average pool, flatten
        z_ref = F.linear(pooled, sd["bottleneck.weight"], sd["bottleneck.bias"])
        logits_ref = F.linear(z_ref, sd["output.weight"], sd["output.bias"])
        logits, z = model(x)
    torch.testing.assert_close(z, z_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), z_ref, rtol=1e-4, atol=1e-5)  # the embed / head split
        torch.testing.assert_close(model.head(z_ref), logits_ref, rtol=1e-4, atol=1e-5)
    # dropout 0.5 before pooling: active in training mode only (BatchNorm kept in eval mode here)
    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x)[1], z)


def test_head_initialisation_as_the_authors():
    torch.manual_seed(0)
    model = build_model("convnet")
    assert abs(model.bottleneck.weight.std().item() - 0.005) < 0.0005
    assert abs(model.output.weight.std().item() - 0.01) < 0.003
    assert model.bottleneck.bias.abs().max() == 0 and model.output.bias.abs().max() == 0


def test_input_shape_check():
    check_input_shape(build_model("convnet"), (3, 100, 100), "x.npy")
    check_input_shape(build_model("resnet18"), (3, 64, 64), "x.npy")
    with pytest.raises(DeepAdvError, match="x.npy.*do not fit ConvNet"):
        check_input_shape(build_model("convnet"), (3, 64, 64), "x.npy")
    with pytest.raises(DeepAdvError):
        check_input_shape(build_model("resnet18"), (1, 64, 64), "x.npy")
    with pytest.raises(DeepAdvError, match="unknown model"):
        build_model("vgg16")


def _fake_run(path, model, payload=None):
    path.mkdir(parents=True)
    write_json(path / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": "regular",
                                      "data": str(path), "seed": 0})
    best = best_checkpoint_path(path)
    best.parent.mkdir()
    torch.save(payload if payload is not None else
               {"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.5}, best)
    return path


class _Evil:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_load_model_round_trip_and_weights_only(tmp_path):
    torch.manual_seed(1)
    model = build_model("convnet").eval()
    run = _fake_run(tmp_path / "run", model)
    loaded = load_model(run)
    assert not loaded.training
    x = torch.rand(2, 3, 100, 100)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], model(x)[0])
    # a checkpoint holding arbitrary pickled objects is refused (weights_only=True)
    evil = _fake_run(tmp_path / "evil", model, payload={"model": "convnet", "state_dict": {}, "x": _Evil()})
    with pytest.raises(DeepAdvError, match="not a valid checkpoint"):
        load_model(evil)
    # a truncated file is a clear error too
    best = best_checkpoint_path(run)
    best.write_bytes(best.read_bytes()[:1000])
    with pytest.raises(DeepAdvError, match="best.pt"):
        load_model(run)
