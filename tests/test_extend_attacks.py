"""Extending and reusing the attacks: any classifier (logits only), a search added from this file
alone (one module's worth of code plus one registry entry), and the lists derived from the registry."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import typer
import torchvision
from attack_support import bright_pixel_convnet_for, make_run
from torch import nn

from deepadversaries.attacks.base import Attack, SearchState
from deepadversaries.attacks.candidates import pixel_candidates
from deepadversaries.attacks.classifier import LogitsOnly, as_classifier
from deepadversaries.attacks.de import OnePixelDE
from deepadversaries.attacks.searches import (
    SearchSpec, register_search, search_help, search_names, search_spec, search_specs, unregister_search,
)
from deepadversaries.cli import app
from deepadversaries.cli import main as cli_main
from deepadversaries.config import AttackConfig
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import OptionError
from deepadversaries.models.runs import attack_dir, attack_folders, run_outputs
from deepadversaries.plots.attacks import search_label, search_style

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------
# any classifier: a plain torchvision model that returns logits only
# --------------------------------------------------------------------------------------
def boundary_image(model: nn.Module, seed: int) -> tuple[np.ndarray, int, int]:
    """A 3 x 32 x 32 image in [0, 1] on the model's side of class c0, within float rounding of the
    boundary with class c1 (bisection between two random images the model puts in different classes)."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        def top(x: np.ndarray) -> int:
            return int(model(torch.from_numpy(x[None]).float()).argmax(1)[0])

        while True:
            a, b = rng.random((2, 3, 32, 32)).astype(np.float32)
            if top(a) != top(b):
                break
        lo, hi = 0.0, 1.0
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            x = ((1 - mid) * a + mid * b).astype(np.float32)
            lo, hi = (mid, hi) if top(x) == top(a) else (lo, mid)
        x = ((1 - lo) * a + lo * b).astype(np.float32)
        return x, top(x), top(((1 - hi) * a + hi * b).astype(np.float32))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=3).eval()


def test_onepixel_de_attacks_a_plain_torchvision_classifier(resnet):
    images, labels, targets = zip(*(boundary_image(resnet, s) for s in (1, 2)))
    x = torch.from_numpy(np.stack(images))
    y = torch.tensor(labels)
    atk = OnePixelDE(resnet, pop_size=20, max_iter=5, success="top-class", device="cpu", seed=3)
    adversarial = atk(x, y, targets=list(targets))  # torchattacks' call: the adversarial images
    assert isinstance(adversarial, torch.Tensor) and adversarial.shape == x.shape and adversarial.dtype == x.dtype
    assert isinstance(atk.reference_model, LogitsOnly) and atk.n_classes == 3
    results = atk.last_results
    assert [r.index for r in results] == [0, 1] and any(r.success for r in results)
    for i, r in enumerate(results):  # a loop written here: the returned image, pixel by pixel, and a plain pass
        changed = np.argwhere((adversarial[i] != x[i]).any(0).numpy())
        if not r.success:
            assert len(changed) == 0
            continue
        (col, row), = r.pixels.tolist()
        assert changed.tolist() in ([[row, col]], [])  # [] only if the new value equals the old one
        expected = x[i].clone()
        for b in range(3):
            expected[b, row, col] = float(np.float32(r.values[0, b]))
        assert torch.equal(adversarial[i], expected)
        with torch.no_grad():
            probs = torch.softmax(resnet(expected[None]), dim=1)[0].double().numpy()
        assert int(np.argmax(probs)) == targets[i] == r.target
        np.testing.assert_allclose(r.probabilities, probs, rtol=0, atol=1e-6)
    # the same search on the model returning (logits, latent) as the package's models do: the same decisions
    class WithLatent(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, inputs):
            return self.net(inputs), torch.zeros(len(inputs), 4)

    again = OnePixelDE(WithLatent(resnet), pop_size=20, max_iter=5, success="top-class", device="cpu", seed=3)
    twin = again.results(x.numpy(), labels, targets=list(targets))
    assert [(r.success, r.target, r.pixels.tolist(), r.evaluations) for r in twin] == \
           [(r.success, r.target, r.pixels.tolist(), r.evaluations) for r in results]


def test_any_classifier_wrapping():
    net = torchvision.models.resnet18(num_classes=5)
    wrapped = as_classifier(net)
    assert isinstance(wrapped, LogitsOnly) and wrapped.n_classes == 5 and as_classifier(wrapped) is wrapped
    logits, latent = wrapped.eval()(torch.zeros(2, 3, 32, 32))
    assert logits.shape == (2, 5) and latent is None
    with pytest.raises(OptionError):
        as_classifier(lambda x: x)

    class Words(nn.Module):
        def forward(self, x):
            return "spiral"

    with pytest.raises(OptionError, match="returned str"):
        OnePixelDE(Words(), device="cpu").results(np.zeros((1, 3, 4, 4), np.float32), [0])


def test_attacks_package_exports_lazily():
    code = ("import sys, deepadversaries.attacks as a; assert 'deepadversaries.attacks.de' not in sys.modules; "
            "assert 'torch' not in sys.modules; cls = a.OnePixelDE; "
            "assert cls.__module__ == 'deepadversaries.attacks.de' and 'OnePixelDE' in dir(a); "
            "import deepadversaries.attacks.de as d; assert cls is d.OnePixelDE")
    subprocess.run([sys.executable, "-c", code], check=True)
    import deepadversaries.attacks as attacks

    with pytest.raises(AttributeError):
        attacks.NoSuchAttack  # noqa: B018


# --------------------------------------------------------------------------------------
# a search added from this file alone: try a fixed list of pixels at the top of the range
# --------------------------------------------------------------------------------------
#: (row, col) tried in this order: every 10th pixel
POSITIONS = [(r, c) for r in range(5, 100, 10) for c in range(5, 100, 10)]


class _FixedPixels(SearchState):
    """All positions at once; the first confirmed success in list order, else the fittest."""

    def start_target(self) -> None:
        pos = np.array(self.attack.positions)
        unit = np.ones((len(pos), 1, self.attack.bands))
        self.set_pending(pixel_candidates(pos[:, :1], pos[:, 1:], unit, self.height, self.width))
        self.got = np.zeros((len(pos), self.attack.n_classes))

    def receive(self, start: int, probs: np.ndarray) -> None:
        stop = start + len(probs)
        self.got[start:stop] = probs
        self.evaluations += stop - self.n_evaluated
        self.n_evaluated = stop
        if self.n_pending:
            return
        atk = self.attack
        claims = np.flatnonzero(atk.is_success(self.got, self.label, self.target))
        if len(claims):
            k, checked, fits = self.confirm(self.pending[claims],
                                            lambda i, p, f: bool(atk.is_success(p, self.label, self.target)))
            self.reject(len(checked) if k is None else k)
            if k is not None:
                self.finish_target(True, self.pending[claims[k]], checked[k], float(fits[k]), 0)
                return
        fit = atk.fitness(self.got, self.label, self.target)
        best = int(np.argmax(fit))
        self.finish_target(False, self.pending[best], self.got[best], float(fit[best]), 0)


class FixedPixels(Attack):
    search_class = _FixedPixels

    def __init__(self, model: nn.Module, *, positions=POSITIONS, **kwargs) -> None:
        super().__init__(model, max_iter=0, pixels=1, **kwargs)
        self.positions = list(positions)


def build_fixed_pixels(model, config, *, batch_images=None, **common):
    return FixedPixels(model, batch_images=batch_images, **common)


TOY = SearchSpec(name="toy", folder="attack_toy", label="fixed pixels", style=(":", "0.5"),
                 builder=build_fixed_pixels, help="every 10th pixel set to the top of the range.",
                 departure="a fixed list of pixels (paper: differential evolution)", one_pixel=True)


@pytest.fixture
def toy_search():
    register_search(TOY)
    yield TOY
    unregister_search(TOY.name)


def test_a_registered_search_runs_through_deepadv_attack(toy_search, toy_dataset, tmp_path):
    ds = load_dataset(toy_dataset)
    model = bright_pixel_convnet_for(ds.images("Y10", "test"))
    run = make_run(tmp_path / "run", toy_dataset, model)
    assert cli_main(["attack", "--run", str(run), "--preset", "tiny", "--device", "cpu", "--search", "toy"]) == 0
    out = run / "attack_toy"
    assert attack_dir(run, "toy") == out and out in run_outputs(run)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["search"] == "toy" and summary["departures_from_paper"][1:] == [
        "a fixed list of pixels (paper: differential evolution)"]
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == summary["attacked"] > 0
    with np.load(out / "latents.npz") as npz:
        assert npz["z_1p"].shape[0] == len(rows)
    # a loop written here: every position of the list, every other class in ascending order, the plain model
    classes = list(ds.classes)
    index = [int(r["test_index"]) for r in rows]
    images = ds.model_input(np.asarray(ds.images("Y10", "test", stretched=False)[index]), "Y10")
    checked = 0
    for row, image in zip(rows, images):
        true = classes.index(row["true"])
        batch = np.repeat(image[None], len(POSITIONS), axis=0)
        for k, (r, c) in enumerate(POSITIONS):
            batch[k, :, r, c] = 1.0
        with torch.no_grad():
            probs = torch.softmax(model(torch.from_numpy(batch))[0], dim=1).double().numpy()
        if np.any(np.abs(probs - 0.5) < 1e-5):
            continue  # too close to the threshold for the fast evaluator and the plain pass to agree
        expected = None
        for target in (t for t in range(len(classes)) if t != true):
            wins = np.flatnonzero(probs[:, target] > 0.5)
            if len(wins):
                expected = (target, POSITIONS[int(wins[0])])
                break
        assert (row["success"] == "True") == (expected is not None)
        if expected is not None:
            assert row["target"] == classes[expected[0]]
            assert (int(row["y"]), int(row["x"])) == expected[1]
            assert float(row["value_g"]) == 1.0
        assert int(row["evaluations"]) % len(POSITIONS) == 0
        checked += 1
    assert checked == len(rows)


def test_registry_lists_are_the_cli_and_config_lists(toy_search):
    names = search_names()
    assert names[:3] == ("de", "exhaustive", "sparse-rs") and names[-1] == "toy"
    assert attack_folders() == {s.name: s.folder for s in search_specs()}
    assert attack_folders()["toy"] == "attack_toy" and attack_folders()["de"] == "attack"
    assert search_label("toy") == "fixed pixels" and search_style("toy") == (":", "0.5")
    assert search_label("unknown") == "unknown"
    assert AttackConfig(search="toy").search == "toy"
    with pytest.raises(OptionError, match="changes one pixel"):
        AttackConfig(search="toy", pixels=2)
    with pytest.raises(OptionError, match="--values"):
        AttackConfig(search="toy", values=((0.5, 0.5, 0.5),))
    with pytest.raises(OptionError, match="already registered"):
        register_search(TOY)
    with pytest.raises(OptionError, match="folder"):
        register_search(SearchSpec(name="other", folder="attack", label="x", style=("-", "k"),
                                   builder=build_fixed_pixels, help="x"))
    with pytest.raises(OptionError):
        SearchSpec(name="Bad Name", folder="f", label="x", style=("-", "k"), builder=build_fixed_pixels, help="x")
    with pytest.raises(OptionError, match="built-in"):
        unregister_search("de")


#: the --search help as it was spelled out in cli/attack.py before the registry
HELP_BEFORE = ("de: differential evolution (the paper's; RUN/attack/); exhaustive: the corner search, every pixel "
               "position x the value set (the 8 corners of the range and --values), exhaustive over that set only, "
               "so a lower bound of one-pixel vulnerability; 'deepadv certify' gives the exact answer "
               "(RUN/attack_exhaustive/, with flipmap.npz); sparse-rs: Sparse-RS random search, Croce et al. 2022 "
               "(RUN/attack_sparse_rs/).")


def test_cli_search_help_is_the_registry(capsys):
    # the app is built when deepadversaries.cli is imported: its --search help names the searches registered
    # then (the built-in ones here)
    command = typer.main.get_command(app).commands["attack"]
    (option,) = [p for p in command.params if "--search" in p.opts]
    assert option.help == search_help() == HELP_BEFORE
    starts = [option.help.index(f"{spec.name}: {spec.help.rstrip('.')}") for spec in search_specs()]
    assert starts == sorted(starts) and len(starts) == len(search_names()) == 3
    assert all(search_spec(name).name == name for name in search_names())
    assert cli_main(["attack", "--run", "x", "--search", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and all(n in err for n in search_names()) and len(err.strip().splitlines()) == 1
