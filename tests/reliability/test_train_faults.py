"""`deepadv train` killed with SIGKILL at several points, raced, then run again; bad training inputs.

The tiny preset (3 epochs of ConvNet on the tiny dataset) on the CPU, one torch thread.
An uninterrupted run in the same fork server is the reference: the same seed on the CPU
must give the same per-epoch metrics and the same kept weights after any interruption.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepadversaries.io import LOCK_NAME, TMP_MARK
from deepadversaries.models.networks import model_from_checkpoint

from .conftest import assert_clean_error, leftovers, read_or_none, snapshot, wait_for
from .test_checkpoints import Payload
from .test_cli_errors import WORD, one_line_error

#: training.json entries that describe the session (times, versions), not the training
VOLATILE_SUMMARY = ("finished", "last", "device", "torch", "lightning")


def volatile(key: str) -> bool:
    """Wall and CPU times of epochs and sessions."""
    return "seconds" in key or "time" in key


def argv(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--preset", "tiny", "--device", "cpu", "--seed", "0"]


def log_rows(run: Path) -> list[dict]:
    with open(run / "log.csv", newline="") as fh:
        return [{k: v for k, v in r.items() if not volatile(k)} for r in csv.DictReader(fh)]


def summary(run: Path) -> dict:
    s = json.loads((run / "training.json").read_text())
    return {k: v for k, v in s.items() if k not in VOLATILE_SUMMARY and not volatile(k)}


def assert_same_training(run: Path, reference: Path) -> None:
    assert log_rows(run) == log_rows(reference), "per-epoch metrics differ from the uninterrupted run"
    assert summary(run) == summary(reference)
    a = torch.load(run / "checkpoints/best.pt", weights_only=True)
    b = torch.load(reference / "checkpoints/best.pt", weights_only=True)
    assert a.keys() == b.keys() and a["epoch"] == b["epoch"] and a["model"] == b["model"]
    for name, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], tensor), f"weight {name} differs"
    model_from_checkpoint(run / "checkpoints/best.pt", expected_model="convnet")  # valid, finite


@pytest.fixture(scope="module")
def reference(warm_forkserver, tiny_dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train-ref") / "run"
    result = warm_forkserver.run(argv(tiny_dataset, run))
    assert result.rc == 0, result.err
    return run


@pytest.fixture(scope="module")
def chain(warm_forkserver, tiny_dataset, reference, tmp_path_factory) -> dict:
    server = warm_forkserver
    run = tmp_path_factory.mktemp("train-chain") / "run"
    seen: dict = {"run": run}
    cmd = argv(tiny_dataset, run)

    # 0. right after config.json, before any epoch
    seen["after_config"] = server.run(cmd, env={"DEEPADV_FAULT_AFTER": "config.json"})
    # 1. a second process while the first runs; then SIGKILL by time, as soon as an epoch's
    #    Lightning checkpoint (last.ckpt) is on disk
    first = server.start(cmd)
    seen["locked"] = wait_for(lambda: read_or_none(run / LOCK_NAME) == str(first.pid), first)
    seen["second"] = server.run(cmd)
    seen["first_pid"] = first.pid
    seen["one_epoch"] = wait_for(lambda: (run / "checkpoints/last.ckpt").exists(), first, poll=0.002)
    seen["time"] = server.kill(first)
    seen["time_done"] = (run / "training.json").exists()
    # 2. after the resumed run's first kept checkpoint (best.pt) is renamed into place
    seen["after_best"] = server.run(cmd, env={"DEEPADV_FAULT_AFTER": "best.pt"})
    # 3. while writing the per-epoch log, the second time in the resumed run
    seen["during_log"] = server.run(cmd, env={"DEEPADV_FAULT_DURING": "log.csv#2"})
    seen["during_log_temporaries"] = [p.name for p in run.iterdir() if TMP_MARK in p.name]
    # 4. after the finished marker
    seen["after_done"] = server.run(cmd, env={"DEEPADV_FAULT_AFTER": "training.json"})
    seen["after_done_marker"] = (run / "training.json").exists()
    before = snapshot(run)
    seen["final"] = server.run(cmd)
    seen["final_unchanged"] = {k: v for k, v in snapshot(run).items() if k != LOCK_NAME} == \
        {k: v for k, v in before.items() if k != LOCK_NAME}
    return seen


def test_second_process_on_the_same_run_folder_is_refused(chain):
    assert chain["locked"]
    assert_clean_error(chain["second"], str(chain["run"]), f"in use by another deepadv process (pid {chain['first_pid']})")


def test_killed_before_the_first_epoch(chain):
    assert chain["after_config"].rc == -9
    assert "starting the training again" in " ".join(chain["time"].err.split())


def test_a_run_resumed_without_a_checkpoint_does_not_claim_one(chain):
    assert "continuing the unfinished training" not in " ".join(chain["time"].err.split())


def test_killed_by_time_after_the_first_epoch(chain):
    assert chain["one_epoch"] and chain["time"].rc == -9 and not chain["time_done"]


def test_killed_after_a_checkpoint_then_continued(chain):
    run = chain["after_best"]
    assert run.rc == -9, run.err
    assert "continuing the unfinished training from last.ckpt" in " ".join(run.err.split())


def test_killed_while_writing_the_log(chain):
    run = chain["during_log"]
    assert run.rc == -9, run.err
    assert "continuing the unfinished training from last.ckpt" in " ".join(run.err.split())
    assert any(name.startswith(f".log.csv{TMP_MARK}") for name in chain["during_log_temporaries"])


def test_killed_after_the_marker_then_kept_as_finished(chain):
    assert chain["after_done"].rc == -9 and chain["after_done_marker"]
    assert_clean_error(chain["final"], str(chain["run"]), "holds a finished training")
    assert chain["final_unchanged"]
    assert leftovers(chain["run"]) == []


def test_resumed_training_equals_the_uninterrupted_one(chain, reference):
    assert_same_training(chain["run"], reference)




# -- bad training inputs ----------------------------------------------------------------------

NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-10**6, 10**6))
BAD_TRAIN_OPTION = st.one_of(
    st.tuples(st.just("--epochs"), st.integers(max_value=0).map(str), st.just("epochs must be")),
    st.tuples(st.just("--batch-size"), st.integers(max_value=1).map(str), st.just("batch size must be")),
    st.tuples(st.just("--patience"), st.integers(max_value=0).map(str), st.just("patience must be")),
    st.tuples(st.just("--lr"), st.one_of(st.floats(max_value=0), st.sampled_from([float("nan"), float("inf")]))
              .map(repr), st.just("lr must be")),
    st.tuples(st.just("--mmd-weight"), st.floats(max_value=-1e-9).map(repr), st.just("mmd weight must be")),
    st.tuples(st.just("--weight-decay"), st.one_of(st.floats(max_value=-1e-9), st.just(float("nan"))).map(repr),
              st.just("weight decay must be")),
    st.tuples(st.just("--model"), WORD.filter(lambda w: w not in ("convnet", "resnet18")), st.just("unknown model")),
    st.tuples(st.just("--method"), WORD.filter(lambda w: w not in ("regular", "mmd")), st.just("unknown method")),
    st.tuples(st.just("--preset"), WORD.filter(lambda w: w not in ("tiny", "quick", "paper")), st.just("unknown preset")),
    st.tuples(st.just("--seed"), st.integers(max_value=-1).map(str), st.just("--seed")),
)


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_TRAIN_OPTION)
def test_train_bad_option_values_exit_2_and_create_nothing(tiny_dataset, tmp_path, capsys, bad):
    option, value, fragment = bad
    out = tmp_path / "never"
    method = ["--method", "mmd"] if option == "--mmd-weight" else []  # the weight of the method that has one
    err = one_line_error(capsys, argv(tiny_dataset, out) + method + [option, value])
    assert fragment in err.replace("-", " ").replace("_", " ").replace("  ", " "), err
    assert not out.exists()


def test_train_refuses_bad_data_and_bad_output_folders(tiny_dataset, reference, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    a = np.load(data / "images_Y10_train.npy")
    a[5, 0, 10, 10] = np.nan
    np.save(data / "images_Y10_train.npy", a)
    err = one_line_error(capsys, argv(data, tmp_path / "a"))
    assert f"{data / 'images_Y10_train.npy'}: image 5 has NaN or infinite pixels" in err
    assert not (tmp_path / "a").exists()

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert "is not a run folder" in one_line_error(capsys, argv(tiny_dataset, foreign))
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]

    before = snapshot(reference)
    assert "holds a finished training" in one_line_error(capsys, argv(tiny_dataset, reference))
    err = one_line_error(capsys, argv(tiny_dataset, reference) + ["--lr", "0.5", "--resume"])
    assert "holds a run with other settings (lr 0.001 vs 0.5)" in err
    assert snapshot(reference) == before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_evaluate_refuses_crafted_pickles_foreign_checkpoints_and_unfinished_runs(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("tensorboard", "last.ckpt"))
    marker = tmp_path / "pwned"
    best = run / "checkpoints" / "best.pt"
    good = best.read_bytes()
    torch.save({"model": "convnet", "state_dict": {"w": Payload(marker)}}, best)
    err = one_line_error(capsys, ["evaluate", "--run", run, "--device", "cpu"])
    assert f"{best}: not a valid checkpoint (UnpicklingError" in err and not marker.exists()
    best.write_bytes(good[: len(good) // 2])
    assert f"{best}: not a valid checkpoint" in one_line_error(capsys, ["evaluate", "--run", run, "--device", "cpu"])
    best.write_bytes(good)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "model": "resnet18"}))
    assert "holds a convnet but the run is a resnet18" in one_line_error(capsys, ["evaluate", "--run", run])
    (run / "config.json").write_text(json.dumps(config))
    (run / "training.json").unlink()
    assert "training has not finished" in one_line_error(capsys, ["evaluate", "--run", run])
    assert not (run / "metrics.json").exists()
