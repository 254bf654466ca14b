"""Typed configs (config.py): presets as numbers written here, validation, JSON round trips."""

from __future__ import annotations

import json

import pytest

from deepadversaries.config import AttackConfig, SimulateConfig, TrainConfig
from deepadversaries.errors import DeepAdvError, OptionError


# ---------------------------------------------------------------------------------------------
# simulate
# ---------------------------------------------------------------------------------------------
def test_simulate_presets_and_overrides():
    assert [SimulateConfig.from_preset(p).n_galaxies for p in ("tiny", "quick", "paper")] == [60, 2500, 25005]
    c = SimulateConfig.from_preset("tiny", n_galaxies=None, seed=7, brightness=2)
    assert (c.preset, c.n_galaxies, c.seed, c.split_mode, c.brightness) == ("tiny", 60, 7, "galaxy", 2.0)
    assert isinstance(c.brightness, float)
    assert SimulateConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


@pytest.mark.parametrize("kwargs, words", [
    ({"n_galaxies": 0}, "--n-galaxies must be at least 1"),
    ({"n_galaxies": 2.5}, "--n-galaxies must be an integer"),
    ({"seed": -1}, "--seed must be at least 0"),
    ({"split_mode": "random"}, "unknown split mode 'random'"),
    ({"brightness": 0.0}, "--brightness must be positive"),
    ({"brightness": float("nan")}, "--brightness must be a finite number"),
    ({"colour": 1}, "unknown SimulateConfig setting 'colour'"),
])
def test_simulate_config_refuses_bad_values(kwargs, words):
    with pytest.raises(OptionError, match=words):
        SimulateConfig.from_preset("tiny", **kwargs)
    assert issubclass(OptionError, ValueError) and issubclass(OptionError, DeepAdvError)


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------
def test_train_presets_are_the_documented_numbers():
    paper = TrainConfig.from_preset("paper", model="resnet18")
    assert (paper.lr, paper.betas, paper.eps, paper.epochs, paper.batch_size, paper.eval_batch_size,
            paper.patience, paper.schedule) == (1e-5, (0.7, 0.8), 1e-8, 100, 128, 64, 10, "constant")  # SPEC 5
    quick = TrainConfig.from_preset("quick")
    assert (quick.lr, quick.betas, quick.epochs, quick.batch_size, quick.schedule) == (1e-3, (0.9, 0.999), 10, 128,
                                                                                      "cosine")
    assert TrainConfig.from_preset("quick", model="resnet18").batch_size == 64
    tiny = TrainConfig.from_preset("tiny")
    assert (tiny.lr, tiny.epochs, tiny.batch_size, tiny.patience, tiny.schedule) == (1e-3, 3, 32, 3, "constant")
    # the paper's weight decay and λ by method
    assert TrainConfig.from_preset("tiny").weight_decay == 1e-3
    mmd = TrainConfig.from_preset("tiny", method="mmd")
    assert (mmd.weight_decay, mmd.method_settings["weight"], mmd.method_settings["estimator"]) == (1e-4, 0.05,
                                                                                                    "unbiased")
    assert TrainConfig.from_preset("tiny").method_settings == {}
    # channels_last: on for the ConvNet, and for every model on a GPU
    assert TrainConfig.from_preset("tiny").channels_last
    assert not TrainConfig.from_preset("tiny", model="resnet18").channels_last
    assert TrainConfig.from_preset("tiny", model="resnet18", device_type="cuda").channels_last


def test_train_overrides_are_typed_and_recorded():
    c = TrainConfig.from_preset("tiny", method="mmd", epochs=5, lr=2e-3, mmd_weight=1, batch_size=None)
    assert (c.epochs, c.lr, c.method_settings["weight"], c.batch_size) == (5, 2e-3, 1.0, 32)
    assert isinstance(c.method_settings["weight"], float) and c.overridden == ("epochs", "lr", "mmd_weight")
    assert TrainConfig.from_preset("tiny").overridden == ()
    round_trip = TrainConfig.from_json(json.loads(json.dumps(c.to_json())))
    assert round_trip == c and c.to_json()["preset_note"] == c.note


@pytest.mark.parametrize("kwargs, words", [
    ({"epochs": 0}, "--epochs must be at least 1"),
    ({"epochs": 2.5}, "--epochs must be an integer"),
    ({"batch_size": 1}, "--batch-size must be at least 2"),
    ({"lr": 0}, "--lr must be positive"),
    ({"lr": "fast"}, "--lr must be a number"),
    ({"weight_decay": -1e-3}, "--weight-decay must be non-negative"),
    ({"schedule": "step"}, "unknown schedule 'step'"),
    ({"precision": "8-bit"}, "unknown precision '8-bit'"),
    ({"compile": "yes"}, "setting compile must be true or false"),
    ({"momentum": 0.9}, "unknown TrainConfig setting 'momentum'"),
])
def test_train_config_refuses_bad_values(kwargs, words):
    with pytest.raises(OptionError, match=words):
        TrainConfig.from_preset("tiny", **kwargs)


def test_train_config_refuses_unknown_names_and_foreign_weights():
    for kwargs, words in (({"model": "vgg16"}, "unknown model 'vgg16'"), ({"method": "magic"}, "unknown method"),
                          ({"preset": "huge"}, "unknown preset 'huge'")):
        with pytest.raises(OptionError, match=words):
            TrainConfig.from_preset(**kwargs)
    with pytest.raises(OptionError, match="--mmd-weight"):
        TrainConfig.from_preset("tiny", method="regular", mmd_weight=0.5)
    with pytest.raises(OptionError, match="--mmd-weight must be non-negative"):
        TrainConfig.from_preset("tiny", method="mmd", mmd_weight=-0.5)
    with pytest.raises(OptionError, match="betas"):
        TrainConfig(betas=(0.9, 1.0))


# ---------------------------------------------------------------------------------------------
# attack
# ---------------------------------------------------------------------------------------------
def test_attack_presets_and_the_papers_campaign():
    sizes = {p: (c.n_images, c.pop_size, c.max_iter) for p in ("tiny", "quick", "paper")
             for c in [AttackConfig.from_preset(p)]}
    assert sizes == {"tiny": (6, 40, 4), "quick": (150, 400, 10), "paper": (150, 400, 80)}
    paper = AttackConfig.from_preset("paper")
    assert (paper.pixels, paper.mode, paper.success, paper.keep, paper.precision, paper.F) == \
        (1, "targeted", "paper", "fittest", "fp32", 0.5)
    assert (paper.split, paper.domain) == ("test", "Y10")
    assert paper.departures_from_paper() == []


def test_attack_departures_name_every_difference_from_the_paper():
    c = AttackConfig.from_preset("tiny", pixels=2, mode="untargeted", success="top-class", keep="first",
                                 precision="bf16")
    assert c.departures_from_paper() == [
        "images in the subsample 6 (paper: 150)", "population size 40 (paper: 400)", "iteration cap 4 (paper: 80)",
        "2-pixel attack (paper: one pixel)",
        "untargeted attack, success at p(true) < 0.05 (paper: targeted, p(target) > 0.5)",
        "success when the target becomes the top class (paper: p(target) > 0.5)",
        "the first successful candidate kept (the authors' code keeps the fittest member of the successful "
        "generation)",
        "search in bfloat16 mixed precision, successes verified in float32 (paper: float32)",
    ]
    assert AttackConfig.from_json(json.loads(json.dumps(c.to_json()))) == c


@pytest.mark.parametrize("kwargs, words", [
    ({"pop_size": 3}, "--pop-size must be at least 4"),
    ({"n_images": 0}, "--n-images must be at least 1"),
    ({"max_iter": -1}, "--max-iter must be at least 0"),
    ({"pixels": 0}, "--pixels must be at least 1"),
    ({"mode": "sideways"}, "unknown --mode 'sideways'"),
    ({"success": "often"}, "unknown --success 'often'"),
    ({"keep": "last"}, "unknown --keep 'last'"),
    ({"precision": "fp16"}, "unknown --precision 'fp16'"),
    ({"n_images": "ten"}, "--n-images must be a number"),
    ({"F": 0.5}, "unknown AttackConfig setting 'F'"),
])
def test_attack_config_refuses_bad_values(kwargs, words):
    with pytest.raises(OptionError, match=words):
        AttackConfig.from_preset("tiny", **kwargs)


def test_configs_are_frozen():
    import dataclasses

    for config in (SimulateConfig(), TrainConfig(), AttackConfig()):
        with pytest.raises(dataclasses.FrozenInstanceError):
            config.seed = 3  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# the package's vocabulary and its error helpers
# ---------------------------------------------------------------------------------------------
def test_vocabulary_is_the_specs():
    import deepadversaries as pkg

    assert pkg.CLASSES == ("spiral", "elliptical", "merger")  # label order of the one-hot files (SPEC 3.6)
    assert pkg.DOMAINS == ("Y10", "Y1") and pkg.SPLITS == ("train", "valid", "test")
    assert pkg.PRESETS == ("tiny", "quick", "paper") and pkg.MODELS == ("convnet", "resnet18", "d4-convnet")
    assert pkg.REFERENCE_METHOD == "regular" and pkg.METHODS[0] == "regular" and "mmd" in pkg.METHODS
    assert pkg.METHOD_SHORT["regular"] == "Reg" and pkg.METHOD_SHORT["mmd"] == "DA (MMD)"
    assert pkg.MODEL_LABELS == {"convnet": "ConvNet", "resnet18": "ResNet18", "d4-convnet": "D4 ConvNet"}
    assert set(pkg.METHOD_LABELS) == set(pkg.METHOD_SHORT) == set(pkg.METHODS)


def test_error_helpers():
    from pathlib import Path

    from deepadversaries.errors import FileError, StageFailed, check_choice, check_preset, file_error

    assert check_choice("b", ("a", "b"), "letter") == "b"
    with pytest.raises(OptionError) as info:
        check_choice("z", ("a", "b"), "letter")
    assert str(info.value) == "unknown letter 'z'; choose one of a, b"
    assert check_preset("tiny", {"tiny": 1, "quick": 2}) == 1
    with pytest.raises(OptionError, match="unknown preset 'huge'; choose one of tiny, quick"):
        check_preset("huge", {"tiny": 1, "quick": 2})
    err = file_error(Path("/data/x.npy"), "not one-hot")
    assert isinstance(err, FileError) and str(err) == "/data/x.npy: not one-hot" and err.path == Path("/data/x.npy")
    assert err.exit_code == 2 and StageFailed("s", 1).exit_code == 1 and StageFailed("s").exit_code == 2
