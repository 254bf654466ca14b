"""Bring your own model: shapes, timm backbones, TorchScript files trained elsewhere.

References are independent of the code under test: a dummy forward pass through the
features (not the flatten formula), the same model loaded natively (not through TorchScript),
PyTorch forward hooks on the native model (not the graph surgery that replaces them).
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepadversaries.attacks.candidates import set_pixels
from deepadversaries.cli import main
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError, FileError, OptionError
from deepadversaries.evaluation.evaluate import evaluate_run
from deepadversaries.models.networks import (
    ConvNet,
    ResNet18,
    build_model,
    count_parameters,
    load_model,
)
from deepadversaries.models.scripted import ScriptedClassifier, load_torchscript


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.x
        torch.jit.script(model.eval()).save(str(path))
    return path


# ----------------------------------------------------------------------------------------------
# built-in and timm architectures adapt to the data
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape, k", [((3, 100, 100), 3), ((1, 64, 64), 4), ((4, 37, 51), 2), ((2, 8, 9), 5)])
def test_convnet_flatten_size_comes_from_a_dummy_forward(shape, k):
    model = ConvNet(shape, k).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(2, *shape))
    assert model.bottleneck.in_features == features[0].numel()  # the pooling arithmetic, as torch does it
    logits, z = model(torch.zeros(2, *shape))
    assert logits.shape == (2, k) and z.shape == (2, 256)
    assert model.features[0].in_channels == shape[0]


def test_paper_defaults_are_unchanged_and_tiny_images_are_refused():
    assert count_parameters(ConvNet()) == count_parameters(build_model("convnet", (3, 100, 100), 3)) == 1_187_203
    torch.manual_seed(0)
    a = build_model("convnet")
    torch.manual_seed(0)
    b = ConvNet((3, 100, 100), 3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(OptionError, match="too small for the ConvNet"):
        build_model("convnet", (3, 7, 64))


def test_resnet18_takes_any_band_count():
    model = ResNet18((1, 40, 40), 4).eval()
    assert model.features[0].in_channels == 1 and model.output.out_features == 4
    assert model(torch.zeros(2, 1, 40, 40))[0].shape == (2, 4)
    assert count_parameters(ResNet18()) == 11_308_611


def test_timm_backbone_with_the_package_bottleneck_and_head():
    import timm

    model = build_model("timm:test_resnet", (2, 32, 32), 4).eval()
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=2)
    assert model.bottleneck.in_features == reference.num_features and model.output.out_features == 4
    logits, z = model(torch.zeros(3, 2, 32, 32))
    assert logits.shape == (3, 4) and z.shape == (3, 256)
    with pytest.raises(OptionError, match=r"unknown timm model 'no_such_net'.*list_models"):
        build_model("timm:no_such_net", (2, 32, 32), 4)
    with pytest.raises(OptionError, match="unknown model"):
        build_model("vgg16")


# ----------------------------------------------------------------------------------------------
# TorchScript: the wrapper against the native model
# ----------------------------------------------------------------------------------------------
class PlainNet(nn.Module):
    """A classifier as people write them: no embed/head, nested submodules, a repeated activation."""

    def __init__(self, bands: int = 2, k: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(bands, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.out = nn.Linear(16, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.fc(self.features(x))))


class Indirect(nn.Module):
    """forward calls a method of its own (as torchvision's ResNet does), which calls the submodules."""

    def __init__(self) -> None:
        super().__init__()
        self.net = PlainNet()

    def _impl(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._impl(x)


@pytest.mark.parametrize("model_cls, name", [(PlainNet, "fc"), (PlainNet, "features"), (PlainNet, "features.4"),
                                             (PlainNet, "act"), (Indirect, "net.fc"), (Indirect, "net.features.6")])
def test_latent_layer_equals_a_forward_hook(tmp_path, model_cls, name):
    torch.manual_seed(0)
    native = model_cls().eval()
    x = torch.randn(5, 2, 20, 20)
    hooked = []
    handle = dict(native.named_modules())[name].register_forward_hook(lambda m, i, o: hooked.append(o))
    with torch.no_grad():
        reference = native(x)
    handle.remove()
    wrapped = ScriptedClassifier(load_torchscript(_script(native, tmp_path / "m.pt")), latent_layer=name,
                                 source="m.pt")
    with torch.inference_mode():
        logits, z = wrapped(x)
    assert torch.equal(logits, reference)
    assert torch.equal(z, torch.flatten(hooked[-1], 1))
    assert not wrapped.has_head
    with pytest.raises(DeepAdvError, match="no head"):
        wrapped.head(z)


def test_bad_torchscript_files_are_named_with_the_fix(tmp_path):
    torch.manual_seed(0)
    native = PlainNet().eval()
    torch.save(native.state_dict(), tmp_path / "state.pt")
    with open(tmp_path / "model.pkl", "wb") as fh:
        pickle.dump({"weights": [1, 2]}, fh)
    for name in ("state.pt", "model.pkl"):
        with pytest.raises(FileError, match=rf"{name}: not a TorchScript file.*torch.jit.script\(model\).save"):
            load_torchscript(tmp_path / name)
    module = load_torchscript(_script(native, tmp_path / "m.pt"))
    with pytest.raises(FileError, match=r"has no submodule 'head' for --latent-layer; its submodules: features, "):
        ScriptedClassifier(module, latent_layer="head", source="m.pt")
    with pytest.raises(FileError, match="has no embed\\(\\)/head\\(\\) methods; name the submodule"):
        ScriptedClassifier(module, source="m.pt")


# ----------------------------------------------------------------------------------------------
# TorchScript runs: adopted, evaluated and attacked like native ones
# ----------------------------------------------------------------------------------------------
def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_torchscript_convnet_evaluates_and_attacks_like_the_native_model(tiny_campaign, toy_dataset, tmp_path):
    native_run = tmp_path / "native"
    shutil.copytree(tiny_campaign["regular"], native_run, ignore=shutil.ignore_patterns("attack*", "robustness"))
    model_file = _script(load_model(native_run), tmp_path / "convnet.pt")
    adopted = tmp_path / "adopted"
    assert main(["train", "--model-file", str(model_file), "--data", str(toy_dataset), "--out", str(adopted),
                 "--device", "cpu"]) == 0
    record = json.loads((adopted / "training.json").read_text())
    assert record["adopted"] and record["has_head"] and record["latent_dim"] == 256
    # evaluation: the same numbers, file for file
    assert evaluate_run(adopted, device="cpu") == evaluate_run(native_run, device="cpu")
    with np.load(adopted / "predictions.npz") as a, np.load(native_run / "predictions.npz") as b:
        assert all(np.array_equal(a[k], b[k]) for k in b.files)
    # the attack: the native run's tiny campaign (its local ConvNet evaluator) against the TorchScript
    # model's (batched full forward passes)
    assert main(["attack", "--run", str(adopted), "--preset", "tiny", "--device", "cpu"]) == 0
    ref, got = _rows(tiny_campaign["regular"] / "attack" / "results.csv"), _rows(adopted / "attack" / "results.csv")
    assert len(ref) == len(got) > 0
    for r, g in zip(ref, got):
        for key in r:
            if key.startswith("p_"):
                assert float(g[key]) == pytest.approx(float(r[key]), abs=1e-6), key
            else:
                assert g[key] == r[key], key
    with np.load(adopted / "attack" / "latents.npz") as a, np.load(tiny_campaign["regular"] / "attack" /
                                                                  "latents.npz") as b:
        for k in b.files:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-5)


class Headless(nn.Module):
    """The trained ConvNet behind a plain forward: no embed/head methods (TorchScript scripts forward only)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.output(self.net.bottleneck(torch.flatten(self.net.features(x), 1)))


def test_headless_model_attacked_with_latent_layer_gives_the_hook_latents(tiny_campaign, toy_dataset, tmp_path,
                                                                          capsys):
    native = Headless(load_model(tiny_campaign["regular"])).eval()
    model_file = _script(native, tmp_path / "headless.pt")
    runs = {}
    for method in ("regular", "mmd"):  # --method records how each was trained elsewhere
        runs[method] = tmp_path / method
        assert main(["train", "--model-file", str(model_file), "--latent-layer", "net.bottleneck", "--method",
                     method, "--data", str(toy_dataset), "--out", str(runs[method]), "--device", "cpu"]) == 0
        assert main(["attack", "--run", str(runs[method]), "--preset", "tiny", "--device", "cpu"]) == 0
    results = _rows(runs["regular"] / "attack" / "results.csv")
    with np.load(runs["regular"] / "attack" / "latents.npz") as npz:
        latents = {k: npz[k] for k in npz.files}
    dataset = load_dataset(toy_dataset)
    index = latents["test_index"]
    clean = dataset.images("Y10", "test")[index]
    bands = dataset.bands
    perturbed = np.stack([set_pixels(img, [[int(r["x"]), int(r["y"])]], [[float(r[f"value_{b}"]) for b in bands]])
                          for img, r in zip(clean, results)])
    hooked: list[torch.Tensor] = []
    handle = native.net.bottleneck.register_forward_hook(lambda m, i, o: hooked.append(o))
    with torch.no_grad():
        for images in (clean, perturbed):
            native(torch.from_numpy(np.ascontiguousarray(images)))
    handle.remove()
    np.testing.assert_allclose(latents["z_y10"], hooked[0].numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(latents["z_1p"], hooked[1].numpy(), rtol=0, atol=1e-5)
    # the analysis runs, and says that the church windows need head(z)
    out = tmp_path / "analysis"
    assert main(["analyze", "--regular", str(runs["regular"]), "--adapted", str(runs["mmd"]), "--out", str(out),
                 "--preset", "tiny", "--n-isomap", "20", "--device", "cpu"]) == 0
    analysis = json.loads((out / "analysis.json").read_text())
    assert [s["part"] for s in analysis["skipped"]] == ["church windows (Figures 3 and 5) and the example panels"]
    assert "no head(z)" in analysis["skipped"][0]["why"] and analysis["examples"] == []
    assert not (out / "fig5_church_windows.png").exists() and (out / "fig3_church_isomap.png").is_file()
    capsys.readouterr()
    assert main(["plot", "church-window", "--run", str(runs["regular"]), "--index", str(index[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no head(z)" in err[0]


def test_bad_model_files_stop_with_one_line_and_write_nothing(toy_dataset, tmp_path, capsys):
    torch.manual_seed(0)
    plain = _script(PlainNet(bands=3, k=3), tmp_path / "plain.pt")
    four = _script(PlainNet(bands=3, k=4), tmp_path / "four.pt")
    two_band = _script(PlainNet(bands=2, k=3), tmp_path / "two_band.pt")
    with_head = _script(ConvNet(), tmp_path / "convnet.pt")
    torch.save(PlainNet().state_dict(), tmp_path / "state.pt")
    cases = [
        (["--model-file", str(tmp_path / "state.pt")], "state.pt: not a TorchScript file"),
        (["--model-file", str(four), "--latent-layer", "fc"], "four.pt: outputs 4 class scores but the dataset has 3"),
        (["--model-file", str(plain), "--latent-layer", "fc2"], "plain.pt: has no submodule 'fc2' for --latent-layer"),
        (["--model-file", str(plain)], "plain.pt: has no embed()/head() methods"),
        (["--model-file", str(with_head), "--latent-layer", "bottleneck"], "drop --latent-layer bottleneck"),
        (["--model-file", str(two_band), "--latent-layer", "fc"], "two_band.pt: fails on a batch of 3x100x100 images"),
        (["--model-file", str(plain), "--latent-layer", "fc", "--method", "adabn"], "--method adabn re-estimates"),
        (["--model-file", str(plain), "--latent-layer", "fc", "--epochs", "3"], "--epochs does not apply"),
        (["--latent-layer", "fc"], "--latent-layer goes with --model-file"),
        (["--model", "timm:no_such_net", "--preset", "tiny"], "unknown timm model 'no_such_net'"),
    ]
    for k, (args, message) in enumerate(cases):
        out = tmp_path / f"run{k}"
        capsys.readouterr()
        assert main(["train", "--data", str(toy_dataset), "--out", str(out), "--device", "cpu", *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and "\n" not in err and message in err, (args, err)
        assert not out.exists(), args


def test_attacks_take_any_band_count_and_class_count():
    from deepadversaries.attacks.de import OnePixelDE
    from deepadversaries.attacks.evaluators import LocalConvNetEvaluator
    from deepadversaries.attacks.exhaustive import ExhaustiveSearch
    from deepadversaries.attacks.sparse_rs import SparseRS

    torch.manual_seed(0)
    model = ConvNet((4, 16, 16), 5).eval()
    assert not LocalConvNetEvaluator.applies(model, (4, 16, 16), 1)
    assert LocalConvNetEvaluator.applies(ConvNet(), (3, 100, 100), 1)
    images = np.random.default_rng(0).random((2, 4, 16, 16)).astype(np.float32)
    with torch.no_grad():
        labels = model(torch.from_numpy(images))[0].argmax(1).numpy()
    de = OnePixelDE(model, pop_size=8, max_iter=1, device="cpu").results(images, labels)
    for r, label in zip(de, labels):
        assert r.values.shape == (1, 4) and r.probabilities.shape == (5,)
        assert r.success or r.targets_tried == tuple(c for c in range(5) if c != label)
        changed = r.image if r.image is not None else images[r.index]
        assert changed.shape == (4, 16, 16)
    exhaustive = ExhaustiveSearch(model, device="cpu", values=[[0.5, 0.5, 0.5, 0.5]])
    (first, *_) = exhaustive.results(images[:1], labels[:1])
    assert first.values_tried.shape == (2 ** 4 + 1, 4) and first.best_target_value.shape == (4, 16, 16, 4)
    assert first.evaluations == 16 * 16 * 17
    (srs, *_) = SparseRS(model, pixels=2, max_queries=20, device="cpu").results(images[:1], labels[:1])
    assert srs.values.shape == (2, 4) and set(np.unique(srs.values)) <= {0.0, 1.0}
