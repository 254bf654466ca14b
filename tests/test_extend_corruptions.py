"""Adding a corruption is one function and one registry entry: a toy corruption (a constant sky offset
times the severity) registered from this file alone runs through ``deepadv robustness --corruptions``,
appears in robustness.csv and summary.json, in the figures' labels and in the ``--corruptions`` help,
and is scored on the images this file computes by hand (an independent loop, not the benchmark's code)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_toy_dataset

from deepadversaries import BANDS
from deepadversaries.cli import main
from deepadversaries.corruptions.benchmark import parse_corruptions
from deepadversaries.corruptions.registry import (
    CORRUPTIONS, CorruptionSpec, corruptions_help, register_corruption, table_fingerprint, unregister_corruption,
)
from deepadversaries.corruptions.suite import DEFAULT_OPTIONS, CorruptionOptions, corrupt, level, parameter_label
from deepadversaries.data.dataset import apply_stretch, load_dataset
from deepadversaries.errors import OptionError
from deepadversaries.io import read_json, write_json
from deepadversaries.models.networks import build_model
from deepadversaries.models.runs import RUN_KIND
from deepadversaries.plots.robustness import corruption_grid_figure

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAME = "toy_offset"
#: electrons added per severity step, Rubin and stress tables (written out here, not read back from the code)
RUBIN = {1: 20.0, 2: 40.0, 3: 60.0, 4: 80.0, 5: 100.0}
STRESS = {1: 200.0, 2: 400.0, 3: 600.0, 4: 800.0, 5: 1000.0}


def toy_offset(electrons: np.ndarray, severity: int, rng: np.random.Generator, domain: str = "Y10",
               bands: Sequence[str] = BANDS, options: CorruptionOptions = DEFAULT_OPTIONS) -> np.ndarray:
    """A sky-subtraction offset of the table's electrons in every pixel (deterministic: ``rng`` unused)."""
    return np.asarray(electrons, dtype=np.float32) + np.float32(level(NAME, severity, options))


SPEC = CorruptionSpec(NAME, toy_offset, {"rubin": RUBIN, "stress": STRESS}, "constant sky offset", "e-",
                      label=lambda v: f"+{v:g} e-", help="a constant sky offset", sources="a test",
                      family="pipeline")


@pytest.fixture()
def toy() -> Iterator[CorruptionSpec]:
    """The toy corruption, registered for one test (the registry is left as it was)."""
    register_corruption(SPEC)
    try:
        yield SPEC
    finally:
        unregister_corruption(NAME)
    assert NAME not in CORRUPTIONS


def test_the_registered_corruption_is_applied_labelled_and_listed(toy):
    x = np.random.default_rng(0).normal(0.0, 30.0, (2, 3, 16, 16)).astype(np.float32)
    for severity in range(6):
        expected = x + (np.float32(RUBIN[severity]) if severity else np.float32(0.0))
        np.testing.assert_array_equal(corrupt(x, NAME, severity, 0), expected)
    np.testing.assert_array_equal(corrupt(x, NAME, 2, 0, options=CorruptionOptions("stress")), x + np.float32(400.0))
    assert parameter_label(NAME, 3) == "+60 e-" and parameter_label(NAME, 0) == "clean"
    assert parse_corruptions("all")[-1] == NAME and parse_corruptions(f"{NAME},seeing") == ("seeing", NAME)
    assert f"{NAME} (a constant sky offset)" in corruptions_help()
    fingerprint = table_fingerprint("rubin")
    unregister_corruption(NAME)
    assert table_fingerprint("rubin") != fingerprint  # the toy's table is part of the fingerprint
    register_corruption(SPEC)
    with pytest.raises(OptionError, match="registered already"):
        register_corruption(SPEC)


def test_a_spec_with_a_bad_table_or_a_built_in_removal_is_refused():
    with pytest.raises(OptionError, match="severity 1-5"):
        CorruptionSpec("toy_bad", toy_offset, {"rubin": {1: 1.0, 2: 2.0}}, "p", "u")
    with pytest.raises(OptionError, match="lower-case"):
        CorruptionSpec("Toy Bad", toy_offset, {"rubin": RUBIN}, "p", "u")
    with pytest.raises(OptionError, match="built-in"):
        unregister_corruption("seeing")


# --- a small finished run ------------------------------------------------------------------------------------------
def _probe_run(root: Path, data: Path) -> tuple[Path, torch.nn.Module]:
    """A finished ConvNet run whose output layer is a least-squares probe of its random latents (no training
    loop), as tests/test_robustness.py builds them."""
    torch.manual_seed(0)
    model = build_model("convnet")
    ds = load_dataset(data)
    x = torch.from_numpy(ds.images("Y10", "train"))
    with torch.no_grad():
        model.train()(x)
        z = model.eval().embed(x).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
        target = torch.nn.functional.one_hot(torch.from_numpy(ds.labels("train")), 3).double()
        coef = torch.linalg.lstsq(design, target).solution
        model.output.weight.copy_(coef[:-1].T)
        model.output.bias.copy_(coef[-1])
    run = root / "convnet_regular"
    (run / "checkpoints").mkdir(parents=True)
    write_json(run / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": "regular",
                                     "data": str(data.resolve()), "seed": 0})
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0},
               run / "checkpoints" / "best.pt")
    write_json(run / "training.json", {"epochs": 1})
    return run, model.eval()


def test_the_toy_corruption_runs_through_the_command_line(toy, tmp_path, capsys):
    data = make_toy_dataset(tmp_path / "data", n={"train": 24, "valid": 6, "test": 12}, with_y1=False)
    run, model = _probe_run(tmp_path / "runs", data)
    code = main(["robustness", "--run", str(run), "--corruptions", f"{NAME},sky_error", "--severities", "1,5",
                 "--noise-check", "off", "--device", "cpu", "--batch-size", "8"])
    assert code == 0, capsys.readouterr().err
    out = run / "robustness"
    with open(out / "robustness.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["corruption"], r["severity"]) for r in rows] == [
        ("none", "0"), ("sky_error", "1"), ("sky_error", "5"), (NAME, "1"), (NAME, "5")]  # registry order
    summary = read_json(out / "summary.json")
    assert summary["settings"]["corruptions"] == ["sky_error", NAME]
    assert NAME in summary["mean_errors"]
    # the toy's rows scored on images computed here: raw + the table's offset, the paper stretch, the model
    ds = load_dataset(data)
    raw = np.asarray(ds.images("Y10", "test", stretched=False), dtype=np.float32)
    labels = ds.labels("test")
    lo, hi = ds.stretch("Y10")
    with torch.no_grad():
        clean = model(torch.from_numpy(apply_stretch(raw, lo, hi)))
        clean = (clean[0] if isinstance(clean, tuple) else clean).argmax(1).numpy()
    for severity in (1, 5):
        shifted = apply_stretch(raw + np.float32(RUBIN[severity]), lo, hi)
        with torch.no_grad():
            logits = model(torch.from_numpy(shifted))
        pred = (logits[0] if isinstance(logits, tuple) else logits).argmax(1).numpy()
        row = next(r for r in rows if r["corruption"] == NAME and r["severity"] == str(severity))
        assert float(row["accuracy"]) == pytest.approx(np.mean(pred == labels))
        assert float(row["flip_rate"]) == pytest.approx(np.mean(pred != clean))
        assert float(row["frac_pixels_changed"]) == 1.0  # an offset changes every pixel
        result = next(r for r in summary["results"] if r["corruption"] == NAME and r["severity"] == severity)
        assert result["accuracy"] == pytest.approx(np.mean(pred == labels))
    # the figures label it from its spec
    fig = corruption_grid_figure(raw[0], lo, hi, corruptions=[NAME], severities=(0, 1, 5))
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["clean", "+20 e-", "+100 e-"]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["toy offset"]
