"""`deepadv reproduce` and its report.

Two kinds of tests:
- the stage bookkeeping (skip, dependencies, failures, folder checks) and the report's
  faithfulness to the stage files, on fake stage functions (fast, exact control);
- the real ``tiny`` preset end to end, run once per session (shared with the browser test).

The report's numbers are checked against the stage files, the findings' effects against the
per-image files, their verdicts against SPEC 10's rules, and the paper's columns against its
Tables 2-5 as transcribed below (never against deepadversaries.paper, which is itself checked).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from reproduce_support import (
    FakePipeline,
    close_to_display,
    markdown_tables,
    parse_html,
    tiny_reproduction,
)

from deepadversaries.config import SimulateConfig, TrainConfig
from deepadversaries.errors import DeepAdvError, StageFailed
from deepadversaries.io import read_json
from deepadversaries.workflow.layout import Layout, read_timings
from deepadversaries.paper import PAPER_DISTANCES, PAPER_METRICS
from deepadversaries.workflow.reproduce import reproduce

ALL_STAGES = ["simulate", "train:convnet_regular", "train:convnet_mmd", "evaluate:convnet_regular",
              "evaluate:convnet_mmd", "attack:convnet_regular", "attack:convnet_mmd", "robustness:convnet_regular",
              "robustness:convnet_mmd", "analyze:convnet_mmd", "report"]

#: the paper's Tables 2-5, transcribed here (Ćiprijanović et al. 2022): metric -> (regular Y10, Y1, DA Y10, Y1)
PAPER_TABLE_2 = {"accuracy": (0.72, 0.43, 0.82, 0.66), "precision": (0.76, 0.61, 0.82, 0.67),
                 "recall": (0.72, 0.43, 0.82, 0.66), "f1": (0.72, 0.36, 0.82, 0.67)}
PAPER_TABLE_4 = {"accuracy": (0.70, 0.48, 0.69, 0.57), "precision": (0.72, 0.67, 0.70, 0.62),
                 "recall": (0.70, 0.48, 0.69, 0.57), "f1": (0.70, 0.42, 0.69, 0.58)}
#: perturbation -> training -> (median, mean, standard error); n images flipped under both
PAPER_TABLE_3 = {"Y10-Y1": {"regular": (18.1, 20.2, 1.0), "mmd": (26.4, 29.7, 1.5)},
                 "Y10-1P": {"regular": (16.0, 16.8, 0.4), "mmd": (35.8, 38.1, 1.3)}, "n": 136}
PAPER_TABLE_5 = {"Y10-Y1": {"regular": (6.3, 6.7, 0.2), "mmd": (6.9, 8.3, 0.3)},
                 "Y10-1P": {"regular": (2.8, 3.1, 0.1), "mmd": (3.6, 4.1, 0.2)}, "n": 134}
#: the findings' rules (SPEC 10): the claimed direction and the bound it is judged against — no effect,
#: or for (c) the 3-point non-inferiority margin (the effect there is adapted − regular Y10 accuracy)
RULES = {"a": ("less", 0.0), "b": ("greater", 0.0), "c": ("greater", -0.03), "d": ("greater", 1.0),
         "e": ("less", 0.0)}


def _ran(out: Path) -> list[str]:
    return read_timings(out)["invocations"][-1]["ran"]


def _markers(out: Path) -> dict[str, int]:
    lay = Layout(out)
    paths = [lay.data() / "dataset.json", lay.analysis("convnet", "mmd") / "analysis.json", lay.report_html]
    for m in ("regular", "mmd"):
        r = lay.run("convnet", m)
        paths += [r / "training.json", r / "metrics.json", r / "attack" / "summary.json",
                  r / "robustness" / "summary.json"]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in paths}


# --------------------------------------------------------------------------------------
# bookkeeping on fake stages
# --------------------------------------------------------------------------------------
@pytest.fixture()
def fake(monkeypatch) -> FakePipeline:
    return FakePipeline().install(monkeypatch)


def test_fresh_run_runs_every_stage_in_order(tmp_path, fake):
    out = tmp_path / "out"
    html_path = reproduce(out, preset="tiny", device="cpu")
    assert html_path == out / "report.html"
    assert fake.calls == ALL_STAGES
    assert _ran(out) == ALL_STAGES
    for name in ("report.md", "report.html", "findings.json", "timings.json", "reproduce.json"):
        assert (out / name).is_file(), name
    for stage in ALL_STAGES:
        assert (out / "logs" / (stage.replace(":", "_") + ".log")).is_file(), stage
    timings = read_timings(out)
    assert set(timings["stages"]) == set(ALL_STAGES)
    assert all(r["status"] == "ran" and r["wall_s"] >= 0 for r in timings["stages"].values())
    assert timings["environment"]["versions"]["torch"]


def test_rerun_skips_everything_and_touches_nothing(tmp_path, fake):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    before = _markers(out)
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == []
    assert _ran(out) == []
    assert read_timings(out)["invocations"][-1]["skipped"] == ALL_STAGES
    assert _markers(out) == before


@pytest.mark.parametrize("delete, expected", [
    ("runs/convnet_mmd/metrics.json", ["evaluate:convnet_mmd", "report"]),
    ("runs/convnet_regular/attack", ["attack:convnet_regular", "analyze:convnet_mmd", "report"]),
    ("runs/convnet_mmd/training.json", ["train:convnet_mmd", "evaluate:convnet_mmd", "attack:convnet_mmd",
                                        "robustness:convnet_mmd", "analyze:convnet_mmd", "report"]),
    ("runs/convnet_regular/robustness", ["robustness:convnet_regular", "robustness:convnet_mmd", "report"]),
    ("data", ALL_STAGES),
    ("analysis", ["analyze:convnet_mmd", "report"]),
    ("report.html", ["report"]),
])
def test_deleting_a_stage_reruns_it_and_what_follows(tmp_path, fake, delete, expected):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    before = _markers(out)
    target = out / delete
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == expected
    assert _ran(out) == expected
    after = _markers(out)
    # markers of the stages that did not run are untouched
    untouched = {"simulate": "data/dataset.json", "analyze:convnet_mmd": "analysis/convnet_mmd/analysis.json",
                 "report": "report.html"}
    for m in ("regular", "mmd"):
        untouched.update({f"train:convnet_{m}": f"runs/convnet_{m}/training.json",
                          f"evaluate:convnet_{m}": f"runs/convnet_{m}/metrics.json",
                          f"attack:convnet_{m}": f"runs/convnet_{m}/attack/summary.json",
                          f"robustness:convnet_{m}": f"runs/convnet_{m}/robustness/summary.json"})
    for stage, marker in untouched.items():
        if stage not in expected:
            assert after[marker] == before[marker], stage


def rewrite_later(path: Path, content: bytes) -> None:
    """Rewrite ``path`` with the same bytes and set its mtime 1 s past the old one: the fingerprint
    (mtime, size) changes whatever the filesystem's timestamp granularity."""
    before = path.stat().st_mtime_ns
    path.write_bytes(content)
    os.utime(path, ns=(before + 10**9, before + 10**9))


def test_a_stage_rewritten_outside_reproduce_reruns_its_dependents(tmp_path, fake):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    metrics = out / "runs/convnet_regular/metrics.json"
    rewrite_later(metrics, metrics.read_bytes())  # e.g. a manual 'deepadv evaluate'
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == ["report"]


def test_failing_stage_names_itself_and_its_log(tmp_path, fake):
    out = tmp_path / "out"
    fake.fail["attack:convnet_mmd"] = RuntimeError("boom in the attack\nsecond line")
    with pytest.raises(StageFailed) as info:
        reproduce(out, preset="tiny", device="cpu")
    msg = str(info.value)
    log = out / "logs" / "attack_convnet_mmd.log"
    assert "attack:convnet_mmd" in msg and str(log) in msg and "boom in the attack" in msg
    assert "\n" not in msg
    assert info.value.exit_code == 1
    text = log.read_text()
    assert "Traceback" in text and "RuntimeError: boom in the attack" in text
    assert read_timings(out)["stages"]["attack:convnet_mmd"]["status"] == "failed"
    assert not (out / ".deepadv.lock").exists()
    # a user error inside a stage keeps exit status 2; the run resumes after the fix
    fake.fail["attack:convnet_mmd"] = DeepAdvError("x.npy: not one-hot")
    with pytest.raises(StageFailed) as info:
        reproduce(out, preset="tiny", device="cpu")
    assert info.value.exit_code == 2
    fake.fail.clear()
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == ["attack:convnet_mmd", "robustness:convnet_regular", "robustness:convnet_mmd",
                          "analyze:convnet_mmd", "report"]


def test_folder_checks(tmp_path, fake):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu", seed=0)
    with pytest.raises(DeepAdvError, match="seed 0"):
        reproduce(out, preset="tiny", device="cpu", seed=1)
    with pytest.raises(DeepAdvError, match="preset 'tiny'"):
        reproduce(out, preset="quick", device="cpu")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(DeepAdvError, match="not empty"):
        reproduce(other, preset="tiny", device="cpu")
    with pytest.raises(DeepAdvError, match="unknown preset"):
        reproduce(tmp_path / "x", preset="huge")
    with pytest.raises(DeepAdvError, match="unknown model"):
        reproduce(tmp_path / "y", preset="tiny", models=["vgg"])


def test_existing_dataset_folder_instead_of_simulating(tmp_path, fake):
    from conftest import make_toy_dataset

    data = make_toy_dataset(tmp_path / "published", n={"train": 9, "valid": 3, "test": 6}, size=20)
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu", data=data)
    assert "simulate" not in fake.calls and fake.calls == ALL_STAGES[1:]
    assert _ran(out) == ["data"] + ALL_STAGES[1:]  # the dataset is checked, not simulated
    assert not (out / "data").exists()
    check = read_json(out / "data_check.json")
    assert check["counts"] == {"train": 9, "valid": 3, "test": 6} and check["has_catalog"] is False
    assert f"`{data}`" in (out / "report.md").read_text()
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu", data=data)
    assert fake.calls == []
    # a changed dataset file re-runs everything trained on it
    rewrite_later(data / "labels_train.npy", (data / "labels_train.npy").read_bytes())
    reproduce(out, preset="tiny", device="cpu", data=data)
    assert fake.calls == ALL_STAGES[1:]
    # the folder remembers its dataset; a broken dataset is refused naming the file
    with pytest.raises(DeepAdvError, match="simulated data|data "):
        reproduce(out, preset="tiny", device="cpu")
    bad = make_toy_dataset(tmp_path / "bad", n={"train": 9, "valid": 3, "test": 6}, size=20, with_y1=False)
    with pytest.raises(StageFailed, match="no Y1 images"):
        reproduce(tmp_path / "out2", preset="tiny", device="cpu", data=bad)


def test_stages_finished_beforehand_are_adopted_when_they_fit(tmp_path, fake):
    # e.g. runs trained with 'deepadv train --devices 8' into the folder before 'deepadv reproduce'
    out = tmp_path / "out"
    fake.simulate_dataset(out / "data", SimulateConfig.from_preset("tiny", seed=0))
    fake.train_model(out / "data", out / "runs" / "convnet_regular", TrainConfig.from_preset("tiny", seed=0))
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == [s for s in ALL_STAGES if s not in ("simulate", "train:convnet_regular")]
    # a run made with other settings is refused, naming its config
    other = tmp_path / "other"
    fake.simulate_dataset(other / "data", SimulateConfig.from_preset("tiny", seed=0))
    fake.train_model(other / "data", other / "runs" / "convnet_mmd", TrainConfig.from_preset("tiny", method="mmd",
                                                                                             seed=5))
    with pytest.raises(DeepAdvError, match=r"convnet_mmd/config.json: seed is 5"):
        reproduce(other, preset="tiny", device="cpu")


def test_report_numbers_equal_the_fake_stage_files(tmp_path, fake):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    check_report_numbers(out)


def test_report_cli_rerenders(tmp_path, fake):
    from deepadversaries.cli import main

    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    (out / "report.md").unlink()
    assert main(["report", "--out", str(out)]) == 0
    assert (out / "report.md").is_file()
    assert main(["report", "--out", str(tmp_path / "nothing")]) == 2


# --------------------------------------------------------------------------------------
# the numbers of the report are those of the stage files
# --------------------------------------------------------------------------------------
def verdict_by_hand(low, high, rule: str) -> str:
    """SPEC 10's verdict of an interval, written out."""
    direction, bound = RULES[rule]
    if low is None or high is None:
        return "inconclusive"
    wholly_above, wholly_below = low > bound + 1e-9, high < bound - 1e-9
    held, contradicted = (wholly_above, wholly_below) if direction == "greater" else (wholly_below, wholly_above)
    return "held" if held else "contradicted" if contradicted else "inconclusive"


def _correct(run: Path, domain: str) -> np.ndarray:
    with np.load(run / "predictions.npz") as npz:
        return npz[f"probabilities_{domain}"].argmax(axis=1) == npz["labels"]


def _attack_rows(run: Path) -> dict[int, dict[str, str]]:
    with open(run / "attack" / "results.csv", newline="") as fh:
        return {int(r["test_index"]): r for r in csv.DictReader(fh)}


def _per_image(analysis: Path) -> list[dict[str, str]]:
    with open(analysis / "distances_per_image.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def check_report_numbers(out: Path) -> None:
    """Every number of Tables 4/5, the attack table and findings.json against the stage files and the paper."""
    lay = Layout(out)
    md = (out / "report.md").read_text()
    page = parse_html((out / "report.html").read_text())
    findings = read_json(out / "findings.json")
    md_tables = markdown_tables(md)
    runs = {m: lay.run("convnet", m) for m in ("regular", "mmd")}
    metrics = {m: read_json(runs[m] / "metrics.json") for m in runs}
    summary = {m: read_json(runs[m] / "attack" / "summary.json") for m in runs}
    analysis = read_json(lay.analysis("convnet", "mmd") / "analysis.json")

    # Table 4 (ConvNet metrics) in both renderings: ours beside the paper's, as transcribed here
    for rows in (md_tables["Table 4"], page.tables["table4"]):
        assert len(rows) == 8
        for i, row in enumerate(rows):
            method = "regular" if i < 4 else "mmd"
            metric = ("accuracy", "precision", "recall", "f1")[i % 4]
            paper = PAPER_TABLE_4[metric][0:2] if method == "regular" else PAPER_TABLE_4[metric][2:4]
            for k, (dom, col) in enumerate((("Y10", 2), ("Y1", 4))):
                assert close_to_display(row[col], metrics[method][dom][metric]), (row, dom)
                assert float(row[col + 1]) == paper[k]
    # Table 2: this grid has no ResNet18; the paper's numbers alone
    for i, row in enumerate(page.tables["table2"]):
        metric = ("accuracy", "precision", "recall", "f1")[i % 4]
        paper = PAPER_TABLE_2[metric][0:2] if i < 4 else PAPER_TABLE_2[metric][2:4]
        assert (row[2], float(row[3]), row[4], float(row[5])) == ("—", paper[0], "—", paper[1])
    # Table 5 (ConvNet distances) and Table 3's paper columns
    for rows in (md_tables["Table 5"], page.tables["table5"]):
        assert len(rows) == 4
        for i, row in enumerate(rows):
            pert = ("Y10-Y1", "Y10-1P")[i // 2]
            tr = ("regular", "mmd")[i % 2]
            s = analysis["distances"]["latent"][pert][tr]
            assert close_to_display(row[2], s["median"]) and close_to_display(row[4], s["mean"])
            assert close_to_display(row[6], s["stderr"]) and int(row[8]) == s["n"]
            assert (float(row[3]), float(row[5]), float(row[7].lstrip("±"))) == PAPER_TABLE_5[pert][tr]
            if i % 2 == 0:
                assert close_to_display(row[9], analysis["distances"]["latent"][pert]["js_distance"])
    for i, row in enumerate(page.tables["table3"]):
        pert, tr = ("Y10-Y1", "Y10-1P")[i // 2], ("regular", "mmd")[i % 2]
        assert (float(row[3]), float(row[5]), float(row[7].lstrip("±"))) == PAPER_TABLE_3[pert][tr]
    assert page.tables["table3"][2][10] == "0.64"  # the paper's JS distance of ResNet18, Y10-1P
    # attack table
    rows = page.tables["table_attack"]
    for row, m in zip(rows, ("regular", "mmd")):
        assert int(row[2]) == summary[m]["images_drawn"] and int(row[3]) == summary[m]["correctly_classified"]
        assert int(row[4]) == summary[m]["attacked"] and int(row[5]) == summary[m]["flipped"]
        assert close_to_display(row[6], summary[m]["success_rate"])
        if summary[m].get("median_p_target_flipped") is not None:
            assert close_to_display(row[7], summary[m]["median_p_target_flipped"])
        if summary[m]["mean_iterations_flipped"] is not None:
            assert close_to_display(row[8], summary[m]["mean_iterations_flipped"])
        assert close_to_display(row[10], summary[m]["mean_iterations"])

    # findings.json: the effects computed here from the per-image files, the verdicts from the rules
    by_id = {f["id"]: f for f in findings["findings"] if f["model"] == "convnet"}
    assert [f["id"] for f in findings["findings"]] == ["a", "b", "c", "d", "e"]
    correct = {(m, d): _correct(runs[m], d) for m in runs for d in ("Y10", "Y1")}
    effects = {"a": correct["regular", "Y1"].mean() - correct["regular", "Y10"].mean(),
               "b": correct["mmd", "Y1"].mean() - correct["regular", "Y1"].mean(),
               "c": correct["mmd", "Y10"].mean() - correct["regular", "Y10"].mean()}
    per_image = _per_image(lay.analysis("convnet", "mmd"))
    if len(per_image) >= 5:  # (d) leaves out a seed with fewer than 5 images flipped under both
        effects["d"] = (np.median([float(r["d_y10_1p_mmd"]) for r in per_image])
                        / np.median([float(r["d_y10_1p_regular"]) for r in per_image]))
    attack = {m: _attack_rows(runs[m]) for m in runs}
    both = sorted(set(attack["regular"]) & set(attack["mmd"]))
    flips = {m: np.array([attack[m][t]["success"] == "True" for t in both]) for m in runs}
    effects["e"] = flips["mmd"].mean() - flips["regular"].mean()
    assert by_id["d"]["numbers"]["n_flipped_both"] == [len(per_image)] == [analysis["n_flipped_both"]]
    assert by_id["d"]["n_images"] == (len(per_image) if len(per_image) >= 5 else 0)  # the images the verdict uses
    assert by_id["e"]["n_images"] == len(both) == analysis["n_attacked_both"]
    for fid, f in by_id.items():
        if fid in effects:
            assert f["effect"] == pytest.approx(effects[fid], abs=1e-12), fid
        if f["ci_low"] is not None and f["ci_high"] is not None:
            assert f["ci_low"] - 1e-12 <= f["effect"] <= f["ci_high"] + 1e-12, fid
        assert f["verdict"] == verdict_by_hand(f["ci_low"], f["ci_high"], fid), fid
        # one run: every verdict is said to rest on one trained model
        assert f["one_model"] and "one trained model; see `deepadv study`" in f["label"], fid
        assert "one trained model; see `deepadv study`" in f["statement"], fid
    if len(per_image) < 5:
        assert by_id["d"]["excluded_seeds"] == [{"seed": 0, "n_images": len(per_image)}]
        assert by_id["d"]["verdict"] == "inconclusive"
    # the statements print the accuracies of metrics.json; the paper's numbers beside them
    a = by_id["a"]
    assert a["numbers"] == {"regular_Y10_accuracy": metrics["regular"]["Y10"]["accuracy"],
                            "regular_Y1_accuracy": metrics["regular"]["Y1"]["accuracy"]}
    assert a["paper"] == {"regular_Y10_accuracy": 0.70, "regular_Y1_accuracy": 0.48}
    assert by_id["d"]["paper"] == {"regular_median_dE_Y10_1P": 2.8, "mmd_median_dE_Y10_1P": 3.6, "n": 134}
    assert "Paper (regular, Y10 → Y1): 0.70 → 0.48." in a["statement"]
    assert a["paper_effect"] == -0.22 and by_id["b"]["paper_effect"] == 0.09 and by_id["c"]["paper_effect"] == -0.01
    assert by_id["d"]["paper_effect"] == 1.3 and by_id["e"]["paper_effect"] is None
    # the findings table shows the same verdicts in both renderings
    words = [f["label"] for f in findings["findings"]]
    assert [r[5] for r in page.tables["table_findings"]] == [w.replace("`", "") for w in words]  # code in HTML
    md_find = [line for line in md.splitlines() if line.startswith("| (")]
    assert [line.split(" | ")[5].replace("\\|", "|") for line in md_find] == words


def test_paper_numbers_are_the_papers_tables():
    """paper.py against Tables 2-5 transcribed here."""
    for model, table in (("resnet18", PAPER_TABLE_2), ("convnet", PAPER_TABLE_4)):
        for metric, (r10, r1, d10, d1) in table.items():
            assert PAPER_METRICS[model]["regular"]["Y10"][metric] == r10
            assert PAPER_METRICS[model]["regular"]["Y1"][metric] == r1
            assert PAPER_METRICS[model]["mmd"]["Y10"][metric] == d10
            assert PAPER_METRICS[model]["mmd"]["Y1"][metric] == d1
    for model, table in (("resnet18", PAPER_TABLE_3), ("convnet", PAPER_TABLE_5)):
        assert PAPER_DISTANCES[model]["n"] == table["n"]
        for pert in ("Y10-Y1", "Y10-1P"):
            for tr in ("regular", "mmd"):
                assert tuple(PAPER_DISTANCES[model][pert][tr]) == table[pert][tr]
    assert PAPER_DISTANCES["resnet18"]["Y10-1P"]["js"] == 0.64


# --------------------------------------------------------------------------------------
# the real tiny preset, end to end
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_reproduction(tmp_path_factory)


def test_tiny_end_to_end_writes_every_file(tiny):
    out: Path = tiny["out"]
    lay = Layout(out)
    expected = [lay.data() / "dataset.json", lay.manifest, lay.report_md, lay.report_html, lay.findings,
                lay.timings, lay.figures / "fig1_gini_m20.png", lay.figures / "fig2_examples.png"]
    for m in ("regular", "mmd"):
        r = lay.run("convnet", m)
        expected += [r / "config.json", r / "training.json", r / "metrics.json", r / "predictions.npz",
                     r / "checkpoints" / "best.pt", r / "attack" / "summary.json", r / "attack" / "results.csv",
                     r / "attack" / "latents.npz"]
    a = lay.analysis("convnet", "mmd")
    expected += [a / n for n in ("analysis.json", "distances.csv", "distances.md", "distances_per_image.csv",
                                 "fig3_church_isomap.png", "fig4_isomap3d.png", "fig5_church_windows.png",
                                 "fig6_distances.png", "isomap3d_regular.gif", "isomap3d_mmd.gif")]
    expected += [lay.logs / (s.replace(":", "_") + ".log") for s in ALL_STAGES]
    missing = [str(p.relative_to(out)) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not missing
    assert _ran(out) == ALL_STAGES
    # (its wall time is benchmarks/reproduce.py's to measure)


def test_tiny_report_numbers_equal_stage_files(tiny):
    check_report_numbers(tiny["out"])
    timings = read_timings(tiny["out"])
    html = (tiny["out"] / "report.html").read_text()
    for name, rec in timings["stages"].items():
        if name != "report":
            assert name in html


def test_tiny_runs_use_the_tiny_presets(tiny):
    """The grid's settings, as numbers: the tiny training and campaign, seed 0 everywhere."""
    lay = Layout(tiny["out"])
    dataset = read_json(lay.data() / "dataset.json")
    assert (dataset["config"]["preset"], dataset["config"]["n_galaxies"], dataset["seed"]) == ("tiny", 60, 0)
    for method, (decay, lam) in (("regular", (1e-3, None)), ("mmd", (1e-4, 0.05))):
        config = read_json(lay.run("convnet", method) / "config.json")
        assert (config["preset"], config["method"], config["seed"], config["epochs"], config["lr"]) == \
            ("tiny", method, 0, 3, 1e-3)
        assert (config["weight_decay"], config["method_settings"].get("weight")) == (decay, lam)
        settings = read_json(lay.run("convnet", method) / "attack" / "summary.json")["settings"]
        assert {k: settings[k] for k in ("preset", "n_images", "pop_size", "max_iter", "seed")} == \
            {"preset": "tiny", "n_images": 6, "pop_size": 40, "max_iter": 4, "seed": 0}


def test_tiny_rerun_skips_every_stage(tiny):
    out = tiny["out"]
    before = _markers(out)
    reproduce(out, preset="tiny", seed=0, device="cpu")
    assert _ran(out) == []
    assert _markers(out) == before


def test_tiny_deleting_evaluation_reruns_only_it_and_the_report(tiny, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny["out"], copy)  # keeps modification times: nothing is stale
    before = _markers(copy)
    (copy / "runs/convnet_mmd/metrics.json").unlink()
    reproduce(copy, preset="tiny", seed=0, device="cpu")
    assert _ran(copy) == ["evaluate:convnet_mmd", "report"]
    after = _markers(copy)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"runs/convnet_mmd/metrics.json", "report.html"}
    assert json.loads((copy / "runs/convnet_mmd/metrics.json").read_text())["Y10"]["accuracy"] == \
        read_json(tiny["out"] / "runs/convnet_mmd/metrics.json")["Y10"]["accuracy"]
