"""The attack campaign (SPEC 7 protocol), its files, resumption and `deepadv attack`."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from attack_support import LEVEL, bright_pixel_convnet_for, make_run
from tolerances import linear_error

from deepadversaries import CLASSES
from deepadversaries.attacks.campaign import attack_run, result_columns
from deepadversaries.cli import main as cli_main
from deepadversaries.config import AttackConfig
from deepadversaries.data.dataset import apply_stretch, load_dataset
from deepadversaries.errors import DeepAdvError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def float32_bounds(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """This model's latents of ``images`` and bounds on how far two float32 evaluations of them (the
    campaign's batches, one image here) and of the probabilities may differ (tests/tolerances.py).

    The hand-set convolutions have one nonzero tap each (exact in any order), so the features h
    are the same in both; the bottleneck's and the output's sums are not: twice each's bound, the
    latents' own difference carried through the output's |W|, and softmax moves each probability
    by at most half the largest logit change.
    """
    seen = []
    hook = model.bottleneck.register_forward_hook(lambda m, i, o: seen.append(i[0].double().numpy()))
    with torch.no_grad():
        z = model.embed(torch.from_numpy(images))
    hook.remove()
    weights = {name: (layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy())
               for name, layer in (("bottleneck", model.bottleneck), ("output", model.output))}
    z_error = 2 * linear_error(*weights["bottleneck"], seen[0])
    w_out = weights["output"][0]
    logit_error = np.abs(z_error) @ np.abs(w_out).T + 2 * linear_error(*weights["output"], z.double().numpy())
    p_error = 0.5 * logit_error.max(axis=1, keepdims=True) * np.ones_like(logit_error)
    return z.numpy(), z_error, p_error


@pytest.fixture(scope="module")
def model_and_data(toy_dataset):
    """The hand-built model, its brightness split set at the median over the test set."""
    ds = load_dataset(toy_dataset)
    return bright_pixel_convnet_for(ds.images("Y10", "test")), toy_dataset


@pytest.fixture
def run_dir(tmp_path, model_and_data):
    model, data = model_and_data
    return make_run(tmp_path / "run", data, model)


SMALL = AttackConfig.from_preset("tiny", n_images=24, pop_size=30, max_iter=3)


def read_results(run: Path) -> list[dict[str, str]]:
    with open(run / "attack" / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_campaign_files_are_complete_consistent_and_true(run_dir, model_and_data):
    model, data = model_and_data
    summary = attack_run(run_dir, SMALL, device="cpu")
    out = run_dir / "attack"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "latents.npz", "results.csv", "summary.json"]
    rows = read_results(run_dir)
    with open(out / "results.csv") as fh:
        assert fh.readline().strip().split(",") == result_columns(1)
    ds = load_dataset(data)
    labels = ds.labels("test")
    # the protocol: seeded subsample, correctly classified only
    sub = np.sort(np.random.default_rng(0).choice(len(labels), 24, replace=False))
    assert summary["subsample_test_index"] == sub.tolist()
    x = apply_stretch(ds.images("Y10", "test", stretched=False)[sub], *ds.stretch("Y10"))
    with torch.no_grad():
        pred = model(torch.from_numpy(x))[0].argmax(1).numpy()
    correct = sub[pred == labels[sub]]
    assert [int(r["test_index"]) for r in rows] == correct.tolist()
    assert summary["images_drawn"] == 24 and summary["correctly_classified"] == len(correct) == summary["attacked"]
    assert 0 < summary["flipped"] < summary["attacked"]  # both outcomes occur with this model
    assert summary["flipped"] == sum(r["success"] == "True" for r in rows)
    assert summary["success_rate"] == pytest.approx(summary["flipped"] / summary["attacked"])
    iters = [int(r["iterations"]) for r in rows]
    assert summary["mean_iterations"] == pytest.approx(np.mean(iters))
    assert summary["median_iterations"] == pytest.approx(np.median(iters))
    assert summary["settings"]["pop_size"] == 30 and summary["settings"]["max_iter"] == 3
    assert any("population size 30 (paper: 400)" in d for d in summary["departures_from_paper"])
    lat = np.load(out / "latents.npz")
    assert lat["test_index"].tolist() == correct.tolist()
    assert lat["z_y10"].shape == lat["z_y1"].shape == lat["z_1p"].shape == (len(correct), 256)
    assert lat["success"].tolist() == [r["success"] == "True" for r in rows]
    y1 = apply_stretch(ds.images("Y1", "test", stretched=False)[correct], *ds.stretch("Y1"))
    with torch.no_grad():
        for key, images in (("z_y10", x[pred == labels[sub]]), ("z_y1", y1)):
            z, z_error, _ = float32_bounds(model, images)
            assert np.all(np.abs(lat[key] - z) <= z_error), key
    # every row, checked independently: rebuild the perturbed image from the CSV
    for k, r in enumerate(rows):
        t = int(r["test_index"])
        img = x[list(sub).index(t)].copy()
        px, py = int(r["x"]), int(r["y"])
        img[:, py, px] = [float(r["value_g"]), float(r["value_r"]), float(r["value_i"])]
        assert np.count_nonzero(np.any(img != x[list(sub).index(t)], axis=0)) <= 1
        assert 0.0 <= img.min() and img.max() <= 1.0
        with torch.no_grad():
            logits, z = model(torch.from_numpy(img[None]))
        p = torch.softmax(logits, 1)[0].numpy()
        _, z_error, p_error = float32_bounds(model, img[None])
        assert np.all(np.abs(p - [float(r[f"p_{c}"]) for c in CLASSES]) <= p_error[0])
        assert np.all(np.abs(lat["z_1p"][k] - z[0].numpy()) <= z_error[0])
        assert r["true"] == CLASSES[labels[t]] and r["predicted"] == r["true"]
        assert r["target"] in CLASSES and r["target"] != r["true"]
        if r["success"] == "True":
            assert p[CLASSES.index(r["target"])] > 0.5
            # known behaviour: only a bright pixel in the detector's region flips to elliptical
            if r["target"] == "elliptical":
                assert 16 <= px < 32 and 16 <= py < 32 and float(r["value_g"]) > LEVEL
        else:
            assert int(r["iterations"]) == 3 and r["targets_tried"] == " ".join(
                c for c in CLASSES if c != r["true"])


def test_interrupted_campaign_resumes_to_identical_files(tmp_path, model_and_data, monkeypatch):
    model, data = model_and_data
    whole = make_run(tmp_path / "whole", data, model)
    attack_run(whole, SMALL, device="cpu")
    broken = make_run(tmp_path / "broken", data, model)
    import deepadversaries.attacks.campaign as campaign

    real_append = campaign.append_json_line
    calls = {"n": 0}

    def dying_append(path, record):  # die after three finished images, leaving a torn line
        calls["n"] += 1  # (the log's header is written by io.read_progress_log, not through here)
        if calls["n"] == 4:
            with open(path, "ab") as fh:
                fh.write(b'{"test_index": 9')
            raise KeyboardInterrupt
        real_append(path, record)

    monkeypatch.setattr(campaign, "append_json_line", dying_append)
    with pytest.raises(KeyboardInterrupt):  # first session on one fixed thread, the second on two, adaptive
        attack_run(broken, SMALL, device="cpu", batch_images=3, threads=1, adaptive_threads=False)
    monkeypatch.setattr(campaign, "append_json_line", real_append)
    assert not (broken / "attack" / "summary.json").exists()
    assert (broken / "attack" / "progress.jsonl").exists()
    with pytest.raises(DeepAdvError, match="other settings"):
        attack_run(broken, dataclasses.replace(SMALL, max_iter=4), device="cpu")
    summary = attack_run(broken, SMALL, device="cpu", batch_images=1, threads=2)
    assert summary["timing"]["images_resumed"] == 3
    assert summary["timing"]["cpu_threads"]["ceiling"] == 2 and summary["timing"]["cpu_threads"]["adaptive"]
    a, b = whole / "attack", broken / "attack"
    assert (a / "results.csv").read_bytes() == (b / "results.csv").read_bytes()
    la, lb = np.load(a / "latents.npz"), np.load(b / "latents.npz")
    for key in ("test_index", "z_y10", "z_y1", "z_1p", "success"):
        np.testing.assert_array_equal(la[key], lb[key])
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    for s in (sa, sb):
        s.pop("timing")
        s.pop("run")
    assert sa == sb
    assert not (b / "progress.jsonl").exists()


def test_finished_campaign_is_kept_unless_overwrite(run_dir):
    first = attack_run(run_dir, SMALL, device="cpu")
    with pytest.raises(DeepAdvError, match="--overwrite"):
        attack_run(run_dir, SMALL, device="cpu")
    again = attack_run(run_dir, dataclasses.replace(SMALL, seed=1), device="cpu", overwrite=True)
    assert again["subsample_test_index"] != first["subsample_test_index"]


def test_untargeted_two_pixel_campaign(run_dir):
    config = AttackConfig.from_preset("tiny", n_images=10, pop_size=20, max_iter=2, pixels=2, mode="untargeted")
    summary = attack_run(run_dir, config, device="cpu")
    rows = read_results(run_dir)
    cols = list(rows[0].keys())
    assert cols == result_columns(2) and "x_2" in cols and "value_i_1" in cols and "x" not in cols
    assert all(r["target"] == "" for r in rows)
    for r in rows:
        if r["success"] == "True":
            assert float(r[f"p_{r['true']}"]) < 0.05
    assert summary["settings"]["mode"] == "untargeted"
    assert "2-pixel attack (paper: one pixel)" in summary["departures_from_paper"]


def test_cli_attack_and_bad_inputs_exit_2(run_dir, tmp_path, capsys):
    base = ["attack", "--run", str(run_dir), "--preset", "tiny", "--device", "cpu"]
    for extra, words in ((["--pop-size", "3"], "pop-size"), (["--pixels", "0"], "pixels"),
                         (["--n-images", "100000"], "larger than the test set"), (["--mode", "sideways"], "mode"),
                         (["--success", "often"], "success"), (["--threads", "0"], "threads")):
        assert cli_main(base + extra) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((run_dir / "config.json").read_text())
    assert cli_main(["attack", "--run", str(empty), "--device", "cpu"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert cli_main(["attack", "--run", str(tmp_path / "nowhere")]) == 2
    assert cli_main(base + ["--n-images", "6", "--max-iter", "1", "--pop-size", "10"]) == 0
    assert (run_dir / "attack" / "summary.json").is_file()


# SIGKILL at any point, then a resume to identical files: tests/reliability/test_attack_faults.py
