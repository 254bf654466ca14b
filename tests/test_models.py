"""The two classifiers (SPEC 4): sizes, the embed/head split, safe checkpoint loading."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from deepadversaries.errors import DeepAdvError
from deepadversaries.io import write_json
from deepadversaries.models import (LATENT_DIM, build_model, check_input_shape, count_parameters, load_model)
from deepadversaries.runs import RUN_KIND, best_checkpoint_path


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


@pytest.mark.parametrize("name", ["convnet", "resnet18"])
def test_head_of_embed_equals_forward_logits(name):
    torch.manual_seed(0)
    model = build_model(name).eval()
    size = 100 if name == "convnet" else 64  # ResNet18 takes any size; keep the test fast
    x = torch.rand(3, 3, size, size)
    with torch.no_grad():
        logits, z = model(x)
        z2 = model.embed(x)
        logits2 = model.head(z2)
    assert z.shape == (3, LATENT_DIM) and logits.shape == (3, 3)
    torch.testing.assert_close(z2, z, rtol=0, atol=0)
    torch.testing.assert_close(logits2, logits, rtol=0, atol=0)


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
