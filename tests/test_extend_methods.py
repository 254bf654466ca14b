"""Adding a training method is one spec plus its alignment term: a toy method registered from this file alone
trains through ``deepadv train``, its setting reaches the loss, its option and log columns appear; run
folders written before the registry (``mmd_weight`` in config.json) still load and resume.

The toy method penalises the squared distance between the two domains' mean latents,
``strength · ‖mean z_Y10 − mean z_Y1‖²``. Its term is checked in the epoch log against that
formula's linearity: train_loss − train_ce must equal strength × train_toy_gap, which holds only if
the setting given on the command line reached the loss.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_toy_dataset
from lightning.pytorch.callbacks import Callback
from torch import nn
from typer.testing import CliRunner

from deepadversaries import METHOD_LABELS, METHOD_SHORT
from deepadversaries.cli import app
from deepadversaries.config import TrainConfig
from deepadversaries.errors import FileError, OptionError
from deepadversaries.methods import (
    METHOD_SPECS, MethodSetting, MethodSpec, method_names, register_method, unregister_method,
)
from deepadversaries.models.runs import read_run_config
from deepadversaries.training import train as training
from deepadversaries.training.module import log_columns

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MeanGapAlignment(nn.Module):
    """strength · ‖mean(z_source) − mean(z_target)‖²; logs the unweighted gap and the strength it used."""

    def __init__(self, strength: float) -> None:
        super().__init__()
        self.strength = strength

    def set_progress(self, progress: float) -> None:
        pass

    def forward(self, z_source: torch.Tensor, z_target: torch.Tensor):
        gap = ((z_source.float().mean(0) - z_target.float().mean(0)) ** 2).sum()
        return self.strength * gap, {"toy_gap": gap.detach(), "toy_strength": gap.new_tensor(self.strength)}


def build_mean_gap(settings, *, latent_dim: int) -> MeanGapAlignment:
    return MeanGapAlignment(settings["strength"])


TOY = MethodSpec(
    name="toy", label="Toy alignment (mean gap)", short="Toy",
    summary="+ strength·‖mean z_Y10 − mean z_Y1‖²", adapts="training",
    settings=(MethodSetting("strength", 0.5, "Weight of the squared mean-latent gap.", minimum=0.0,
                            source="this test"),),
    logs=("toy_gap", "toy_strength"), builder=build_mean_gap, reference="tests/test_extend_methods.py")


@pytest.fixture()
def toy_method():
    register_method(TOY)
    try:
        yield TOY
    finally:
        unregister_method(TOY.name)
    assert "toy" not in METHOD_SPECS


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("extend") / "data", n={"train": 48, "valid": 12, "test": 12},
                            size=24)


def _rows(run) -> list[dict[str, float]]:
    with open(run / "log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def test_a_registered_method_trains_through_the_cli_and_its_setting_reaches_the_loss(toy_method, small_dataset,
                                                                                      tmp_path):
    out = tmp_path / "toy"
    result = CliRunner().invoke(app, ["train", "--data", str(small_dataset), "--out", str(out), "--method", "toy",
                                      "--toy-strength", "0.25", "--preset", "tiny", "--epochs", "2",
                                      "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    config = read_run_config(out)
    assert config.method == "toy" and dict(config.train.method_settings) == {"strength": 0.25}
    assert config.train.uses_target_domain and config.train.weight_decay == 1e-4  # adapts during training
    stored = json.loads((out / "config.json").read_text())
    assert stored["method_settings"] == {"strength": 0.25} and stored["overridden"] == ["epochs", "toy_strength"]
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert {"train_toy_gap", "train_toy_strength", "train_mmd2"} <= set(rows[0])
    for row in rows:
        assert row["train_toy_strength"] == 0.25  # the value the term was built with
        assert math.isfinite(row["train_toy_gap"]) and row["train_toy_gap"] > 0
        # loss = CE + strength · gap, batch by batch, so also for the epoch means; each float32 step loss is
        # rounded to half an ulp of the loss, which bounds the difference's error (the term is ~1e3 times larger)
        ulps = 4 * float(np.finfo(np.float32).eps) * row["train_loss"]
        assert row["train_loss"] - row["train_ce"] == pytest.approx(0.25 * row["train_toy_gap"], rel=0, abs=ulps)
        assert 0.25 * row["train_toy_gap"] > 100 * ulps  # the term is resolved: another strength would fail
        assert math.isnan(row["train_mmd2"])  # another method's column stays empty


def test_a_registered_method_is_listed_everywhere(toy_method):
    assert "toy" in method_names() and METHOD_LABELS["toy"] == "Toy alignment (mean gap)"
    assert METHOD_SHORT["toy"] == "Toy" and METHOD_SHORT["mmd"] == "DA (MMD)"
    assert log_columns()[-4:-2] == ("epoch_seconds", "epoch_cpu_seconds")
    assert {"train_toy_gap", "train_toy_strength"} <= set(log_columns())
    config = TrainConfig.from_preset("tiny", method="toy", toy_strength=2)
    assert config.method_settings == {"strength": 2.0} and isinstance(config.method_settings["strength"], float)
    with pytest.raises(OptionError, match="--toy-strength must be non-negative"):
        TrainConfig.from_preset("tiny", method="toy", toy_strength=-1)
    with pytest.raises(OptionError, match="--toy-strength belongs to another method"):
        TrainConfig.from_preset("tiny", method="mmd", toy_strength=1)


def test_every_method_option_appears_in_train_help(toy_method):
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    expected = {"--mmd-weight", "--mmd-estimator", "--coral-weight", "--dann-weight", "--dann-gamma",
                "--dann-hidden", "--toy-strength"}
    from_specs = {"--" + spec.key(s.name).replace("_", "-") for spec in METHOD_SPECS.values() for s in spec.settings
                  if s.kind is not tuple}
    assert from_specs == expected
    for flag in expected:
        assert flag in result.output, flag
    for method in METHOD_SPECS:
        assert f"{method}:" in result.output  # --method's help lists every method


def test_register_method_refuses_names_and_settings_that_are_taken():
    with pytest.raises(OptionError, match="already registered"):
        register_method(MethodSpec(name="mmd", label="x", short="x", summary="x"))
    clash = MethodSpec(name="batch", label="x", short="x", summary="x",
                       settings=(MethodSetting("size", 1.0, "x", source="x"),))
    with pytest.raises(OptionError, match="'batch_size' is taken"):  # a training setting's name
        register_method(clash)
    with pytest.raises(OptionError, match="needs a builder"):
        MethodSpec(name="nobuild", label="x", short="x", summary="x", adapts="training")
    with pytest.raises(OptionError, match="built in"):
        unregister_method("mmd")
    assert "batch" not in METHOD_SPECS


# ---------------------------------------------------------------------------------------------
# run folders written before the registry: one field per method weight in config.json
# ---------------------------------------------------------------------------------------------
def _as_before_the_registry(config_json: dict, weights: dict[str, float]) -> dict:
    """config.json as the package wrote it before the registry: every method's weight a key of its own."""
    old = {k: v for k, v in config_json.items() if k != "method_settings"}
    sigmas2 = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 100.0, 1e3, 1e4,
               1e5, 1e6]
    old.update({"mmd_weight": 0.0, "mmd_estimator": "unbiased", "mmd_sigmas2": sigmas2, "coral_weight": 0.0,
                "dann_weight": 0.0})
    old.update(weights)
    return old


class _Crash(Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated crash")


def test_an_old_config_json_with_mmd_weight_loads_and_resumes(small_dataset, tmp_path, monkeypatch):
    run = tmp_path / "old"
    config = TrainConfig.from_preset("tiny", method="mmd", mmd_weight=0.01)  # 3 epochs
    real = training.make_trainer
    monkeypatch.setattr(training, "make_trainer", lambda *a, **k: real(*a, **{**k, "extra_callbacks": [_Crash()]}))
    with pytest.raises(RuntimeError, match="simulated crash"):
        training.train_model(small_dataset, run, config, device="cpu", progress=False)
    monkeypatch.setattr(training, "make_trainer", real)
    new = json.loads((run / "config.json").read_text())
    old = _as_before_the_registry(new, {"mmd_weight": 0.01, "mmd_estimator": "biased", "overridden": []})
    (run / "config.json").write_text(json.dumps(old))

    loaded = read_run_config(run)
    assert loaded.method == "mmd"
    assert dict(loaded.train.method_settings) == {"weight": 0.01, "estimator": "biased",
                                                  "sigmas2": tuple(old["mmd_sigmas2"])}
    # another method's old weight is not one of its settings
    coral = TrainConfig.from_json({**old, "method": "coral", "coral_weight": 3.0})
    assert dict(coral.method_settings) == {"weight": 3.0}
    assert TrainConfig.from_json({**old, "method": "regular"}).method_settings == {}

    # resuming with other settings is refused (the old file says weight 0.01, biased) ...
    with pytest.raises(FileError, match="other settings"):
        training.train_model(small_dataset, run, config, device="cpu", progress=False, resume=True)
    # ... and with the same ones it continues the old run to the end
    same = TrainConfig.from_preset("tiny", method="mmd", mmd_weight=0.01, mmd_estimator="biased")
    training.train_model(small_dataset, run, same, device="cpu", progress=False, resume=True)
    assert (run / "training.json").is_file() and read_run_config(run).resumed_from_epoch == 2
    assert [r["epoch"] for r in _rows(run)] == [1, 2, 3]
    assert json.loads((run / "config.json").read_text())["method_settings"]["estimator"] == "biased"
