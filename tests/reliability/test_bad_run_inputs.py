"""Bad run folders, checkpoints, attack results and output folders for attack, analyze and reproduce.

Every refusal is exit status 2 with one line naming the file and the problem, no traceback,
and no file of the input folders changed. (Bad datasets: test_bad_dataset_inputs.py; bad
checkpoints at the API level: test_checkpoints.py.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepadversaries.analysis.analyze import load_attack
from deepadversaries.cli import main
from deepadversaries.errors import DeepAdvError
from deepadversaries.io import LOCK_NAME
from deepadversaries.models.runs import REQUIRED_KEYS

from .conftest import CAMPAIGN, copy_run, snapshot
from .test_checkpoints import Payload

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def refused(capsys, argv: list, *fragments: str) -> str:
    """In this process: exit 2, the last stderr line is the one ``error:`` line, no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("error: ") and sum(line.startswith("error") for line in err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in last, f"{fragment!r} not in {last!r}"
    return last


@pytest.fixture
def run(attack_template, tmp_path) -> Path:
    return copy_run(attack_template, tmp_path / "run")


def attack(run: Path) -> list:
    return ["attack", "--run", run, *CAMPAIGN]


# -- attack: the run's config.json -------------------------------------------------------

WRONG_TYPE = {str: st.one_of(st.integers(), st.booleans(), st.none(), st.lists(st.text(max_size=3), max_size=2)),
              int: st.one_of(st.text(max_size=4), st.floats(allow_nan=False), st.booleans(), st.none())}


@SETTINGS
@given(key=st.sampled_from(sorted(REQUIRED_KEYS)), data=st.data())
def test_attack_refuses_a_config_with_a_wrong_type_or_missing_key(attack_template, capsys, key, data):
    with tempfile.TemporaryDirectory() as tmp:
        run = copy_run(attack_template, Path(tmp) / "run")
        config = json.loads((run / "config.json").read_text())
        missing = data.draw(st.booleans())
        if missing:
            config.pop(key)
        else:
            config[key] = data.draw(WRONG_TYPE[REQUIRED_KEYS[key]])
        (run / "config.json").write_text(json.dumps(config))
        before = snapshot(run)
        expected = "not a deepadv run config" if key == "kind" else ("missing key" if missing else "wrong type")
        refused(capsys, attack(run), str(run / "config.json"), expected)
        assert snapshot(run) == before


@pytest.mark.parametrize("text, fragment", [("{\"kind\": \"deepadv-run\", ", "not valid JSON"),
                                            ("[1, 2]", "not a deepadv run config"),
                                            ("\udcff", "not valid JSON")])
def test_attack_refuses_an_unreadable_config(run, capsys, text, fragment):
    (run / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    refused(capsys, attack(run), str(run / "config.json"), fragment)


def test_unknown_config_keys_are_tolerated(run):
    """Deliberate: a run folder of a later version may record more settings; the keys used are checked."""
    from deepadversaries.models.networks import load_model
    from deepadversaries.models.runs import read_run_config

    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "a_future_setting": [1, 2]}))
    assert read_run_config(run).model == "convnet"  # read without complaint; the extra key is not used
    assert load_model(run).embed(torch.rand(1, 3, 100, 100)).shape == (1, 256)


def test_attack_refuses_a_run_that_does_not_exist(tmp_path, capsys):
    refused(capsys, attack(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "run folder not found")
    (tmp_path / "empty").mkdir()
    refused(capsys, attack(tmp_path / "empty"), str(tmp_path / "empty"), "not a run folder")


# -- attack: the checkpoint ---------------------------------------------------------------


def _truncate(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:2000])
    return "not a valid checkpoint"


def _other_model(path: Path) -> str:
    config = path.parent.parent / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "model": "resnet18"}))
    return "checkpoint holds a convnet but the run is a resnet18"


def _nan_weights(path: Path) -> str:
    ckpt = torch.load(path, weights_only=True)
    first = next(iter(ckpt["state_dict"]))
    ckpt["state_dict"][first] = torch.full_like(ckpt["state_dict"][first], float("nan"))
    torch.save(ckpt, path)
    return "NaN or infinite"


def _missing(path: Path) -> str:
    path.unlink()
    return "checkpoint not found"


@pytest.mark.parametrize("damage", [_truncate, _other_model, _nan_weights, _missing])
def test_attack_refuses_a_bad_checkpoint(run, capsys, damage):
    ckpt = run / "checkpoints" / "best.pt"
    fragment = damage(ckpt)
    before = snapshot(run)
    refused(capsys, attack(run), str(ckpt), fragment)
    assert snapshot(run) == before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_attack_refuses_a_crafted_pickle_without_running_it(run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    ckpt = run / "checkpoints" / "best.pt"
    torch.save({"model": "convnet", "state_dict": {"w": Payload(marker)}}, ckpt)
    refused(capsys, attack(run), str(ckpt), "not a valid checkpoint", "UnpicklingError")
    assert not marker.exists()


def test_attack_refuses_a_damaged_or_misfit_dataset(run, tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    a = np.load(data / "images_Y10_test.npy")
    a[2, 1, 50, 50] = np.inf
    np.save(data / "images_Y10_test.npy", a)
    refused(capsys, attack(run) + ["--data", data], str(data / "images_Y10_test.npy"), "NaN or infinite")
    small = tmp_path / "small"
    small.mkdir()
    for f in tiny_dataset.glob("*.npy"):
        x = np.load(f)
        np.save(small / f.name, x[..., :64, :64] if x.ndim == 4 else x)
    refused(capsys, attack(run) + ["--data", small], "images_Y10_test.npy", "do not fit ConvNet")
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data": str(tmp_path / "gone")}))
    refused(capsys, attack(run), str(tmp_path / "gone"), "dataset folder not found")


# -- analyze: the attack results ------------------------------------------------------------

ATTACK_FILES = ["latents.npz", "results.csv", "summary.json"]


def check_load_attack(run: Path) -> str:
    try:
        data = load_attack(run)
    except DeepAdvError as exc:
        assert str(exc).startswith(str(run)) and "\n" not in str(exc), str(exc)
        return "refused"
    n = len(data.test_index)
    assert data.z_y10.shape == data.z_y1.shape == data.z_1p.shape and len(data.z_y10) == n == len(data.true)
    assert all(np.isfinite(z).all() for z in (data.z_y10, data.z_y1, data.z_1p))
    return "accepted"


@SETTINGS
@given(name=st.sampled_from(ATTACK_FILES), fraction=st.floats(0, 1, exclude_max=True), data=st.data())
def test_analyze_loader_on_truncated_or_flipped_attack_files(attacked_run, name, fraction, data):
    with tempfile.TemporaryDirectory() as tmp:
        run = copy_run(attacked_run, Path(tmp) / "run")
        shutil.copytree(attacked_run / "attack", run / "attack")
        path = run / "attack" / name
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[: int(fraction * len(raw))]
        else:
            for _ in range(data.draw(st.integers(1, 6), label="flips")):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        path.write_bytes(bytes(raw))
        check_load_attack(run)


@pytest.fixture
def two_runs(attacked_run, tmp_path) -> tuple[Path, Path]:
    runs = []
    for method in ("regular", "mmd"):
        run = copy_run(attacked_run, tmp_path / method)
        shutil.copytree(attacked_run / "attack", run / "attack")
        config = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps({**config, "method": method}))
        runs.append(run)
    return runs[0], runs[1]


@pytest.mark.parametrize("name, damage, fragment", [
    ("latents.npz", lambda p: p.write_bytes(p.read_bytes()[:300]), "not a readable .npz file"),
    ("latents.npz", lambda p: np.savez(p, **{**dict(np.load(p)), "z_1p": np.full((4, 256), np.nan, np.float32)}),
     "z_1p has"),
    ("results.csv", lambda p: p.write_bytes(b"\xff\xfe\x00" + p.read_bytes()), "not a readable results table"),
    ("results.csv", lambda p: p.write_text("\n".join(p.read_text().splitlines()[:-1]) + "\n"), "rows but latents.npz"),
    ("summary.json", lambda p: p.write_text("{\"kind\": "), "not valid JSON"),
    ("summary.json", lambda p: p.unlink(), "no finished attack"),
])
def test_analyze_refuses_damaged_attack_results(two_runs, tmp_path, capsys, name, damage, fragment):
    regular, adapted = two_runs
    damage(adapted / "attack" / name)
    out = tmp_path / "analysis"
    before = snapshot(adapted)
    refused(capsys, ["analyze", "--regular", regular, "--adapted", adapted, "--out", out],
            str(adapted / "attack" / name), fragment)
    assert snapshot(adapted) == before and not (out / "analysis.json").exists()


# -- reproduce ---------------------------------------------------------------------------------


def test_reproduce_refuses_a_damaged_dataset_naming_the_file(tiny_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    labels = np.load(data / "labels_valid.npy")
    labels[0] = [1, 1, 0]
    np.save(data / "labels_valid.npy", labels)
    before = snapshot(data)
    out = tmp_path / "out"
    last = refused(capsys, ["reproduce", "--preset", "tiny", "--device", "cpu", "--data", data, "--out", out],
                   str(data / "labels_valid.npy"), "label 0 is not one-hot")
    assert "stage data failed" in last and snapshot(data) == before


def test_reproduce_refuses_another_studys_folder_and_broken_manifests(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    manifest = {"kind": "deepadv-reproduce", "version": "0.1.0", "preset": "tiny", "seed": 0, "models": ["convnet"],
                "methods": ["regular", "mmd"], "data": str(tiny_dataset), "created": "2026-01-01T00:00:00+00:00"}
    argv = ["reproduce", "--preset", "tiny", "--device", "cpu", "--data", tiny_dataset, "--out", out]
    (out / "reproduce.json").write_text(json.dumps(manifest))
    refused(capsys, argv[:-2] + ["--seed", "1", "--out", out], "reproduce.json", "holds a reproduction with")
    (out / "reproduce.json").write_text(json.dumps({**manifest, "seed": "zero"}))
    refused(capsys, argv, "reproduce.json", "malformed key 'seed'")
    (out / "reproduce.json").write_text("{\"kind\"")
    refused(capsys, argv, "reproduce.json", "not valid JSON")
    (tmp_path / "file").write_text("x")
    refused(capsys, argv[:-1] + [tmp_path / "file"], str(tmp_path / "file"), "cannot create output folder")


# -- every verb respects a live lock on its output folder ------------------------------------


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield child.pid
    child.kill()
    child.wait()


def test_every_verb_refuses_a_folder_locked_by_a_live_process(live_pid, two_runs, tiny_dataset, tmp_path, capsys):
    regular, adapted = two_runs
    shutil.rmtree(regular / "attack")
    folders = {"simulate": tmp_path / "sim", "attack": regular / "attack", "analyze": tmp_path / "an",
               "reproduce": tmp_path / "rep", "report": tmp_path / "rep"}
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
        (folder / LOCK_NAME).write_text(str(live_pid))
    (tmp_path / "rep" / "reproduce.json").write_text("{}")  # 'report' checks the manifest first
    commands = {
        "simulate": ["simulate", "--preset", "tiny", "--out", folders["simulate"]],
        "attack": attack(regular),
        "analyze": ["analyze", "--regular", regular, "--adapted", adapted, "--out", folders["analyze"]],
        "reproduce": ["reproduce", "--preset", "tiny", "--device", "cpu", "--data", tiny_dataset,
                      "--out", folders["reproduce"]],
    }
    for verb, argv in commands.items():
        if verb == "analyze":
            shutil.copytree(adapted / "attack", regular / "attack", dirs_exist_ok=True)  # both attacks finished
        refused(capsys, argv, str(folders[verb]), f"in use by another deepadv process (pid {live_pid})")
