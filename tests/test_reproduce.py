"""`deepadv reproduce` and its report.

Two kinds of tests:
- the stage bookkeeping (skip, dependencies, failures, folder checks) and the report's
  faithfulness to the stage files, on fake stage functions (fast, exact control);
- the real ``tiny`` preset end to end, run once per session (shared with the browser test).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from deepadversaries.errors import DeepAdvError
from deepadversaries.io import read_json
from deepadversaries.report import PAPER_DISTANCES, PAPER_METRICS, THRESHOLDS
from deepadversaries.reproduce import Layout, StageFailed, read_timings, reproduce
from reproduce_support import (FakePipeline, close_to_display, markdown_tables, parse_html,
                               tiny_reproduction)

ALL_STAGES = ["simulate", "train:convnet_regular", "train:convnet_mmd", "evaluate:convnet_regular",
              "evaluate:convnet_mmd", "attack:convnet_regular", "attack:convnet_mmd", "analyze:convnet", "report"]


def _ran(out: Path) -> list[str]:
    return read_timings(out)["invocations"][-1]["ran"]


def _markers(out: Path) -> dict[str, int]:
    lay = Layout(out)
    paths = [lay.data / "dataset.json", lay.analysis("convnet") / "analysis.json", lay.report_html]
    for m in ("regular", "mmd"):
        r = lay.run("convnet", m)
        paths += [r / "training.json", r / "metrics.json", r / "attack" / "summary.json"]
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
    ("runs/convnet_regular/attack", ["attack:convnet_regular", "analyze:convnet", "report"]),
    ("runs/convnet_mmd/training.json", ["train:convnet_mmd", "evaluate:convnet_mmd", "attack:convnet_mmd",
                                        "analyze:convnet", "report"]),
    ("data", ALL_STAGES),
    ("analysis", ["analyze:convnet", "report"]),
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
    untouched = {"simulate": "data/dataset.json", "analyze:convnet": "analysis/convnet/analysis.json",
                 "report": "report.html"}
    for m in ("regular", "mmd"):
        untouched.update({f"train:convnet_{m}": f"runs/convnet_{m}/training.json",
                          f"evaluate:convnet_{m}": f"runs/convnet_{m}/metrics.json",
                          f"attack:convnet_{m}": f"runs/convnet_{m}/attack/summary.json"})
    for stage, marker in untouched.items():
        if stage not in expected:
            assert after[marker] == before[marker], stage


def test_a_stage_rewritten_outside_reproduce_reruns_its_dependents(tmp_path, fake):
    out = tmp_path / "out"
    reproduce(out, preset="tiny", device="cpu")
    metrics = out / "runs/convnet_regular/metrics.json"
    time.sleep(0.01)
    metrics.write_text(metrics.read_text())  # e.g. a manual 'deepadv evaluate'
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
    assert fake.calls == ["attack:convnet_mmd", "analyze:convnet", "report"]


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
    assert not (out / "data").exists()
    check = read_json(out / "data_check.json")
    assert check["counts"] == {"train": 9, "valid": 3, "test": 6} and check["has_catalog"] is False
    assert f"`{data}`" in (out / "report.md").read_text()
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu", data=data)
    assert fake.calls == []
    # a changed dataset file re-runs everything trained on it
    time.sleep(0.01)
    (data / "labels_train.npy").write_bytes((data / "labels_train.npy").read_bytes())
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
    fake.simulate_dataset(out / "data", preset="tiny", seed=0)
    fake.train_model(out / "data", out / "runs" / "convnet_regular", preset="tiny", seed=0)
    fake.calls.clear()
    reproduce(out, preset="tiny", device="cpu")
    assert fake.calls == [s for s in ALL_STAGES if s not in ("simulate", "train:convnet_regular")]
    # a run made with other settings is refused, naming its config
    other = tmp_path / "other"
    fake.simulate_dataset(other / "data", preset="tiny", seed=0)
    fake.train_model(other / "data", other / "runs" / "convnet_mmd", method="mmd", preset="tiny", seed=5)
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
def same(a, b) -> bool:
    """Equal numbers; an undefined one (NaN in a stage file) is null in findings.json."""
    if a is None or a != a:
        return b is None or b != b
    return a == b


def check_report_numbers(out: Path) -> None:
    """Every number of Tables 4/5, the attack table and findings.json equals its stage file."""
    lay = Layout(out)
    md = (out / "report.md").read_text()
    page = parse_html((out / "report.html").read_text())
    findings = read_json(out / "findings.json")["findings"]
    md_tables = markdown_tables(md)
    metrics = {m: read_json(lay.run("convnet", m) / "metrics.json") for m in ("regular", "mmd")}
    summary = {m: read_json(lay.run("convnet", m) / "attack" / "summary.json") for m in ("regular", "mmd")}
    analysis = read_json(lay.analysis("convnet") / "analysis.json")

    # Table 4 (ConvNet metrics) in both renderings: ours beside the paper's
    for rows in (md_tables["Table 4"], page.tables["table4"]):
        assert len(rows) == 8
        for i, row in enumerate(rows):
            method = "regular" if i < 4 else "mmd"
            metric = ("accuracy", "precision", "recall", "f1")[i % 4]
            for dom, col in (("Y10", 2), ("Y1", 4)):
                assert close_to_display(row[col], metrics[method][dom][metric]), (row, dom)
                assert float(row[col + 1]) == PAPER_METRICS["convnet"][method][dom][metric]
    # Table 5 (ConvNet distances)
    for rows in (md_tables["Table 5"], page.tables["table5"]):
        assert len(rows) == 4
        for i, row in enumerate(rows):
            pert = ("Y10-Y1", "Y10-1P")[i // 2]
            tr = ("regular", "da")[i % 2]
            s = analysis["distances"]["latent"][pert][tr]
            assert close_to_display(row[2], s["median"]) and close_to_display(row[4], s["mean"])
            assert close_to_display(row[6], s["stderr"]) and int(row[8]) == s["n"]
            p = PAPER_DISTANCES["convnet"][pert][tr]
            assert (float(row[3]), float(row[5]), float(row[7].lstrip("±"))) == p
            if i % 2 == 0:
                assert close_to_display(row[9], analysis["distances"]["latent"][pert]["js_distance"])
    # attack table
    rows = page.tables["table_attack"]
    for row, m in zip(rows, ("regular", "mmd")):
        assert int(row[2]) == summary[m]["images_drawn"] and int(row[3]) == summary[m]["correctly_classified"]
        assert int(row[4]) == summary[m]["attacked"] and int(row[5]) == summary[m]["flipped"]
        assert close_to_display(row[6], summary[m]["success_rate"])
        if summary[m]["mean_iterations_flipped"] is not None:
            assert close_to_display(row[7], summary[m]["mean_iterations_flipped"])
        assert close_to_display(row[9], summary[m]["mean_iterations"])
    # findings.json: the very numbers of the stage files, and flags that follow the thresholds
    by_id = {f["id"]: f for f in findings if f["model"] == "convnet"}
    a, b, c, d, e = (by_id[k] for k in "abcde")
    r10, r1 = metrics["regular"]["Y10"]["accuracy"], metrics["regular"]["Y1"]["accuracy"]
    m10, m1 = metrics["mmd"]["Y10"]["accuracy"], metrics["mmd"]["Y1"]["accuracy"]
    assert a["numbers"]["regular_Y10_accuracy"] == r10 and a["numbers"]["regular_Y1_accuracy"] == r1
    assert a["held"] == (r10 - r1 >= THRESHOLDS["a_min_drop"] - 1e-9)
    assert b["numbers"]["mmd_Y1_accuracy"] == m1 and b["held"] == (m1 - r1 >= THRESHOLDS["b_min_gain"] - 1e-9)
    assert c["numbers"]["mmd_Y10_accuracy"] == m10 and c["held"] == (r10 - m10 <= THRESHOLDS["c_max_cost"] + 1e-9)
    n_conf = sum(map(sum, metrics["regular"]["Y1"]["confusion"]))
    assert a["n_images"]["Y1"] == n_conf and a["seeds"]["training"] == [0]
    med = analysis["distances"]["latent"]["Y10-1P"]
    assert same(d["numbers"]["regular_median_dE_Y10_1P"], med["regular"]["median"])
    assert same(d["numbers"]["mmd_median_dE_Y10_1P"], med["da"]["median"])
    assert d["n_images"]["flipped_under_both"] == analysis["n_flipped_both"]
    if analysis["n_flipped_both"]:
        assert d["held"] == (med["da"]["median"] > med["regular"]["median"])
    else:
        assert d["held"] is None
    assert e["numbers"]["regular_success_rate"] == summary["regular"]["success_rate"]
    assert same(e["numbers"]["mmd_mean_iterations_flipped"], summary["mmd"]["mean_iterations_flipped"])
    assert same(e["numbers"]["regular_mean_iterations"], summary["regular"]["mean_iterations"])
    assert e["n_images"]["flipped_mmd"] == summary["mmd"]["flipped"]
    rr, rm = summary["regular"]["success_rate"], summary["mmd"]["success_rate"]
    ir, im = summary["regular"]["mean_iterations_flipped"], summary["mmd"]["mean_iterations_flipped"]
    if summary["regular"]["flipped"] or summary["mmd"]["flipped"]:
        assert e["held"] == (rm < rr or (ir is not None and im is not None and im > ir))
        # the statement says which half of (e) carried the verdict
        assert e["numbers"]["mmd_flip_rate_lower"] == (rm < rr)
        if rm < rr and not (ir is not None and im is not None and im > ir):
            assert "Held on the flip rate only" in e["statement"]
        if rm >= rr and ir is not None and im is not None and im > ir:
            assert "Held on the iterations only" in e["statement"]
    else:
        assert e["held"] is None
    # the findings table shows the same verdicts in both renderings
    verdicts = [f["held"] for f in findings]
    words = ["not testable" if h is None else ("held" if h else "not held") for h in verdicts]
    assert [r[-1] for r in page.tables["table_findings"]] == words
    md_find = [line for line in md.splitlines() if line.startswith("| (")]
    assert [line.rstrip(" |").rsplit("| ", 1)[-1] for line in md_find] == words
    for f in findings[:3]:  # the accuracies also appear in the statements of (a)-(c)
        for v in (x for k, x in f["numbers"].items() if k.endswith("accuracy")):
            assert f"{v:.3f}" in f["statement"]


# --------------------------------------------------------------------------------------
# the real tiny preset, end to end
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_reproduction(tmp_path_factory)


def test_tiny_end_to_end_writes_every_file(tiny):
    out: Path = tiny["out"]
    lay = Layout(out)
    expected = [lay.data / "dataset.json", lay.manifest, lay.report_md, lay.report_html, lay.findings, lay.timings,
                lay.figures / "fig1_gini_m20.png", lay.figures / "fig2_examples.png"]
    for m in ("regular", "mmd"):
        r = lay.run("convnet", m)
        expected += [r / "config.json", r / "training.json", r / "metrics.json", r / "checkpoints" / "best.pt",
                     r / "attack" / "summary.json", r / "attack" / "results.csv", r / "attack" / "latents.npz"]
    a = lay.analysis("convnet")
    expected += [a / n for n in ("analysis.json", "distances.csv", "distances.md", "fig3_church_isomap.png",
                                 "fig4_isomap3d.png", "fig5_church_windows.png", "fig6_distances.png",
                                 "isomap3d_regular.gif", "isomap3d_da.gif")]
    expected += [lay.logs / (s.replace(":", "_") + ".log") for s in ALL_STAGES]
    missing = [str(p.relative_to(out)) for p in expected if not p.is_file() or p.stat().st_size == 0]
    assert not missing
    assert _ran(out) == ALL_STAGES
    print(f"tiny end to end: {tiny['seconds']:.1f} s")
    assert tiny["seconds"] < 150  # budget 90 s on 2 idle cores; slack for a loaded machine


def test_tiny_report_numbers_equal_stage_files(tiny):
    check_report_numbers(tiny["out"])
    timings = read_timings(tiny["out"])
    html = (tiny["out"] / "report.html").read_text()
    for name, rec in timings["stages"].items():
        if name != "report":
            assert name in html


def test_tiny_rerun_skips_every_stage(tiny):
    out = tiny["out"]
    before = _markers(out)
    t0 = time.perf_counter()
    reproduce(out, preset="tiny", seed=0, device="cpu")
    assert time.perf_counter() - t0 < 10
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


@pytest.mark.parametrize("rates, iters, expected", [
    ((0.2, 0.1), (1.0, 1.0), "Held on the flip rate only"),
    ((0.1, 0.2), (0.0, 1.0), "Held on the iterations only"),
    ((0.2, 0.1), (0.0, 1.0), "Both halves agree"),
    ((0.1, 0.2), (1.0, 0.0), "Neither half held"),
])
def test_finding_e_says_which_half_held(rates, iters, expected):
    from deepadversaries.report import _attack_basis
    lower, more = rates[1] < rates[0], iters[1] > iters[0]
    text = _attack_basis(lower, more, {"flipped": 10}, {"flipped": 11})
    assert expected in text and "rest on 10 and 11 flips" in text
    assert "rest on" not in _attack_basis(lower, more, {"flipped": 40}, {"flipped": 30})


def test_finding_d_flags_a_scale_free_reversal():
    from deepadversaries.report import _scale_caveat
    assert "other way" in _scale_caveat(6.2, 6.5, 0.22, 0.13)  # the quick run's numbers
    assert _scale_caveat(6.2, 6.5, 0.13, 0.22) == ""
    assert _scale_caveat(6.2, float("nan"), 0.13, 0.22) == ""
