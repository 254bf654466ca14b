"""``deepadv study``: seeds and methods parsing, bad input, and a tiny study on a real Dask
LocalCluster — uninterrupted, then with a worker killed mid-task and the driver killed
mid-way and run again: the same ``study.json`` (timings aside)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepadversaries.cli import main
from deepadversaries.errors import OptionError
from deepadversaries.analysis.stats import VERDICTS
from deepadversaries.workflow.study import parse_methods, parse_seeds, study

SEEDS = "0-1"
FINDING_KEYS = {"id", "model", "method", "primary", "effect", "ci_low", "ci_high", "ci_level", "verdict", "label",
                "magnitude", "paper_effect", "bound", "per_seed", "n_seeds", "how"}


# --------------------------------------------------------------------------------------
# parsing and bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, seeds", [("0-4", (0, 1, 2, 3, 4)), ("0,2,5", (0, 2, 5)), ("0-2,7", (0, 1, 2, 7)),
                                         ("3", (3,)), ("2,1,2", (1, 2)), (" 0 - 1 ", (0, 1))])
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "1-", "3-1", "1,,2", "-1", "0.5"])
def test_parse_seeds_refuses_malformed_ranges(text):
    with pytest.raises(OptionError):
        parse_seeds(text)


def test_parse_methods_puts_the_reference_first_and_checks_names():
    assert parse_methods("mmd,regular") == ("regular", "mmd")
    for bad in ("", "mmd", "regular,magic"):
        with pytest.raises(OptionError):
            parse_methods(bad)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("args, words", [
    (["--models", "vgg"], "unknown model"),
    (["--methods", "regular,magic"], "unknown method"),
    (["--seeds", ""], "--seeds"),
    (["--seeds", "4-1"], "empty"),
    (["--workers", "0"], "--workers"),
    (["--attack-images", "0"], "--attack-images must be at least 1"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path, capsys, args, words):
    out = tmp_path / "study"
    code = main(["study", "--preset", "tiny", "--out", str(out), "--device", "cpu", *args])
    assert code == 2
    assert words in _one_error_line(capsys)
    assert not out.exists()


def test_unreachable_scheduler_is_one_line_and_exit_2(tmp_path, capsys, tiny_dataset):
    out = tmp_path / "study"
    code = main(["study", "--preset", "tiny", "--seeds", "0", "--out", str(out), "--data", str(tiny_dataset),
                 "--device", "cpu", "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2
    assert "cannot reach the Dask scheduler" in _one_error_line(capsys)


def test_a_folder_holding_another_grid_is_refused_untouched(tmp_path, capsys):
    out = tmp_path / "study"
    out.mkdir()
    manifest = {"kind": "deepadv-study-manifest", "preset": "tiny", "seed": 0, "seeds": [0, 1, 2],
                "models": ["convnet"], "methods": ["regular", "mmd"], "data": None, "vary_data": False, "attack": {}}
    (out / "study-manifest.json").write_text(json.dumps(manifest))
    before = sorted(p.name for p in out.iterdir())
    code = main(["study", "--preset", "tiny", "--seeds", "0-1", "--out", str(out), "--device", "cpu"])
    assert code == 2
    assert "another grid" in _one_error_line(capsys)
    assert sorted(p.name for p in out.iterdir() if p.name != ".deepadv.lock") == before
    assert json.loads((out / "study-manifest.json").read_text()) == manifest


def test_attack_images_is_part_of_the_grid(tmp_path, capsys):
    """--attack-images changes every cell's attack: a folder studied with the preset's size is refused."""
    out = tmp_path / "study"
    out.mkdir()
    manifest = {"kind": "deepadv-study-manifest", "preset": "tiny", "seed": 0, "seeds": [0, 1], "models": ["convnet"],
                "methods": ["regular", "mmd"], "data": None, "vary_data": False, "attack": {}, "attacks": ["de"]}
    (out / "study-manifest.json").write_text(json.dumps(manifest))
    code = main(["study", "--preset", "tiny", "--seeds", "0-1", "--out", str(out), "--device", "cpu",
                 "--attack-images", "3"])
    assert code == 2
    line = _one_error_line(capsys)
    assert "another grid" in line and "attack {}" in line
    assert json.loads((out / "study-manifest.json").read_text()) == manifest


# --------------------------------------------------------------------------------------
# a real LocalCluster
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fault_marker(tmp_path_factory) -> Path:
    """The once-only fault's marker: present = disarmed; delete it to arm a worker's death."""
    marker = tmp_path_factory.mktemp("fault") / "fired"
    marker.touch()
    return marker


@pytest.fixture(scope="module")
def cluster(fault_marker):
    """A LocalCluster of two one-thread workers whose processes carry the fault hooks."""
    import dask
    from distributed import Client, LocalCluster

    env = {"DEEPADV_FAULT_DURING": "training.json", "DEEPADV_FAULT_ONCE": str(fault_marker),
           "OMP_NUM_THREADS": "1"}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": env, "distributed.worker.daemon": False}):
        local = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                             silence_logs=50)
    client = Client(local)
    yield local.scheduler_address, client
    client.close()
    local.close()


@pytest.fixture(scope="module")
def baseline(cluster, tmp_path_factory) -> Path:
    """An uninterrupted tiny study (seeds 0-1) on the cluster."""
    out = tmp_path_factory.mktemp("study") / "baseline"
    study(out, "tiny", seeds=SEEDS, device="cpu", scheduler=cluster[0])
    return out


def _comparable(path: Path) -> dict:
    record = json.loads((path / "study.json").read_text())
    record.pop("written")
    for cell in record["cells"]:
        cell.pop("seconds")
    return record


@pytest.mark.slow
def test_tiny_study_writes_findings_with_intervals_and_cells(baseline):
    record = json.loads((baseline / "study.json").read_text())
    assert record["kind"] == "deepadv-study" and record["seeds"] == [0, 1]
    ids = [f["id"] for f in record["findings"]]
    assert ids == ["a", "b", "c", "d", "e"]
    for f in record["findings"]:
        assert FINDING_KEYS <= set(f), f.keys()
        assert f["verdict"] in VERDICTS and f["n_seeds"] == 2 and f["ci_level"] == 0.95
        assert [s["seed"] for s in f["per_seed"]] == [0, 1]
    assert {c["cell"] for c in record["cells"]} == {f"convnet_{m}_s{s}" for m in ("regular", "mmd") for s in (0, 1)}
    for cell in record["cells"]:
        assert (baseline / "cells" / cell["cell"] / "training.json").is_file()
    html = (baseline / "report.html").read_text()
    assert "DeepAdversaries study report" in html and "table_findings" in html
    assert len(list((baseline / "figures").glob("forest_*.png"))) == 5
    # study.json is the last file written
    newest = max((p for p in baseline.rglob("*") if p.is_file() and ".deepadv.lock" not in p.name
                  and "logs" not in p.parts and p.name != "timings.json"), key=lambda p: p.stat().st_mtime_ns)
    assert newest.name == "study.json"


def _correct(cell: Path, domain: str):
    import numpy as np

    with np.load(cell / "predictions.npz") as npz:
        return npz[f"probabilities_{domain}"].argmax(axis=1) == npz["labels"]


def _flips(cell: Path) -> dict[int, bool]:
    import csv

    with open(cell / "attack" / "results.csv", newline="") as fh:
        return {int(r["test_index"]): r["success"] == "True" for r in csv.DictReader(fh)}


def _hand_verdict(low: float, high: float, direction: str, bound: float) -> str:
    """SPEC 10 in words: held when the whole interval lies on the claimed side of the bound (no effect,
    or for (c) the −3-point margin), contradicted when wholly on the other side, else inconclusive."""
    above, below = low > bound, high < bound
    held, contradicted = (above, below) if direction == "greater" else (below, above)
    return "held" if held else "contradicted" if contradicted else "inconclusive"


def _edit_seed(cells: Path, seed: int) -> None:
    """Make one seed's cells differ from the others (the tiny models agree on every image): some Y1
    (regular) and Y10 (MMD) predictions turned right or wrong, and two images flipped under regular."""
    import csv

    import numpy as np

    for cell, domain, k in ((f"convnet_regular_s{seed}", "Y1", 9), (f"convnet_mmd_s{seed}", "Y10", 5)):
        path = cells / cell / "predictions.npz"
        with np.load(path) as npz:
            arrays = {name: np.array(npz[name]) for name in npz.files}
        p = arrays[f"probabilities_{domain}"]
        labels = arrays["labels"]
        wrong = np.flatnonzero(p.argmax(axis=1) != labels)[:k]  # made right
        right = np.flatnonzero(p.argmax(axis=1) == labels)[: k // 2]  # made wrong
        p[wrong] = np.eye(p.shape[1])[labels[wrong]]
        p[right] = np.eye(p.shape[1])[(labels[right] + 1) % p.shape[1]]
        np.savez(path, **arrays)
    path = cells / f"convnet_regular_s{seed}" / "attack" / "results.csv"
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        fields, rows = reader.fieldnames, list(reader)
    for row in rows[:2]:
        row["success"] = "True"  # flipped under regular only: the images flipped under both are unchanged
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.slow
def test_study_verdicts_recomputed_from_the_cells_files(baseline, tmp_path):
    """(a)-(c) from each seed's predictions.npz and (e) from each seed's attack/results.csv: the pooled
    effect is the mean of the per-seed effects, the interval mean ± t·s/√n, the verdict SPEC 10's.
    Seed 1's cells are edited first so that the seeds differ: a study that read one seed's cell for
    every seed gives other numbers."""
    import shutil

    import numpy as np
    from scipy import stats

    from deepadversaries.reporting.study_report import write_study

    root = Path(shutil.copytree(baseline, tmp_path / "study"))
    cells = root / "cells"
    _edit_seed(cells, 1)
    record = json.loads(write_study(root).read_text())
    seeds = record["seeds"]
    per_seed: dict[str, list[float]] = {k: [] for k in "abce"}
    for seed in seeds:
        reg, mmd = cells / f"convnet_regular_s{seed}", cells / f"convnet_mmd_s{seed}"
        per_seed["a"].append(_correct(reg, "Y1").mean() - _correct(reg, "Y10").mean())
        per_seed["b"].append(_correct(mmd, "Y1").mean() - _correct(reg, "Y1").mean())
        per_seed["c"].append(_correct(mmd, "Y10").mean() - _correct(reg, "Y10").mean())
        flips_r, flips_m = _flips(reg), _flips(mmd)
        both = sorted(set(flips_r) & set(flips_m))
        per_seed["e"].append(np.mean([flips_m[t] - flips_r[t] for t in both]))
    for fid, values in per_seed.items():  # the seeds differ
        assert len(set(np.round(values, 12))) == len(seeds), (fid, values)
    rules = {"a": ("less", 0.0), "b": ("greater", 0.0), "c": ("greater", -0.03), "e": ("less", 0.0)}
    by_id = {f["id"]: f for f in record["findings"]}
    for fid, values in per_seed.items():
        f = by_id[fid]
        assert [s["effect"] for s in f["per_seed"]] == pytest.approx(values, abs=1e-12), fid
        mean, sd, n = float(np.mean(values)), float(np.std(values, ddof=1)), len(values)
        half = stats.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
        assert f["effect"] == pytest.approx(mean, abs=1e-12), fid
        assert (f["ci_low"], f["ci_high"]) == pytest.approx((mean - half, mean + half), abs=1e-12), fid
        assert f["verdict"] == _hand_verdict(mean - half, mean + half, *rules[fid]), fid


def _ran(path: Path) -> int:
    try:
        stages = json.loads((path / "timings.json").read_text())["stages"]
    except (OSError, ValueError, KeyError):
        return 0
    return sum(1 for r in stages.values() if r.get("status") == "ran")


def _wait_idle(client, timeout: float = 120.0) -> None:
    """Until the scheduler holds no task of the killed driver (running or waiting)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)) == 0:
            return
        time.sleep(0.5)
    raise AssertionError("the cluster did not go idle")


@pytest.mark.slow
def test_worker_and_driver_killed_then_rerun_give_the_same_study_json(cluster, baseline, fault_marker, tmp_path):
    address, client = cluster
    out = tmp_path / "study"
    fault_marker.unlink()  # arm: the first worker to write a training.json dies right before renaming it
    code = ("from deepadversaries.workflow.study import study; "
            f"study({str(out)!r}, 'tiny', seeds={SEEDS!r}, device='cpu', scheduler={address!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while _ran(out) < 5 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert proc.poll() is None, "the study finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-way
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert fault_marker.exists(), "no worker was killed"
    assert not (out / "study.json").exists()
    _wait_idle(client)  # tasks already running on the workers finish before the rerun
    study(out, "tiny", seeds=SEEDS, device="cpu", scheduler=address)
    assert _comparable(out) == _comparable(baseline)


@pytest.mark.slow
@pytest.mark.browser
def test_study_report_renders_in_chromium(baseline, tmp_path):
    """The study's report.html opens in headless Chromium: every forest plot decodes, the tables are there."""
    from reproduce_support import parse_html
    from test_report_browser import chromium, require_chromium

    require_chromium()  # a failure under CI (as in_ci() reads it: true, 1 or yes), a skip elsewhere
    report = baseline / "report.html"
    n_images = len(parse_html(report.read_text()).images)
    assert n_images == 5 + 1  # one forest plot per finding, and the corruption benchmark's curves
    result = chromium(["--virtual-time-budget=10000", "--run-all-compositor-stages-before-draw", "--dump-dom",
                       report.as_uri()], tmp_path / "profile")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = parse_html(result.stdout)
    assert dom.body_attrs.get("data-images-rendered") == f"{n_images}/{n_images}", dom.body_attrs
    for table in ("table_findings", "table_accuracy_per_seed", "table_cells", "table_methods_convnet",
                  "table_distances_convnet_mmd"):
        assert dom.tables.get(table), table
    verdicts = [row[5].split()[0] for row in dom.tables["table_findings"]]  # header rows are dropped
    assert len(verdicts) == 5 and set(verdicts) <= set(VERDICTS)
    assert len(dom.tables["table_accuracy_per_seed"]) == 4


def test_method_table_intervals_stay_inside_the_range_of_a_share():
    """A t-interval over three seeds of a share near 1 (or 0) overshoots; the table cuts it to [0, 1]."""
    import numpy as np
    from scipy import stats

    from deepadversaries.reporting.report import method_table

    y10 = [0.99, 0.60, 0.98]
    ece = [0.01, 0.40, 0.02]
    per_seed = [{"Y10 accuracy": a, "Y1 accuracy": 0.5, "Y1 ECE": e, "flip rate": 0.1} for a, e in zip(y10, ece)]
    table = method_table("convnet", {"regular": per_seed}, [], "t")
    half = stats.t.ppf(0.975, 2) * np.std(y10, ddof=1) / np.sqrt(3)
    assert np.mean(y10) + half > 1 and np.mean(ece) - half < 0  # the raw interval overshoots both ends
    row = table.rows[0]
    assert row[1] == f"{np.mean(y10):.3f} [{np.mean(y10) - half:.3f}, 1.000]"
    assert row[3] == f"{np.mean(ece):.3f} [0.000, {np.mean(ece) + half:.3f}]"
    assert "cut to the range 0–1" in table.caption


@pytest.mark.slow
def test_study_cards_every_cell_and_pools_the_leaderboard_over_seeds(baseline):
    import csv

    from scipy import stats as scipy_stats

    from deepadversaries.card.build import read_card

    cards = {}
    for method in ("regular", "mmd"):
        for seed in (0, 1):
            folder = baseline / "cards" / f"convnet_{method}_s{seed}"
            cards[method, seed] = read_card(folder)  # validates against the shipped schema
            assert (folder / "card.html").is_file() and (folder / "card.md").is_file()
    rows = list(csv.DictReader((baseline / "leaderboard" / "leaderboard.csv").open()))
    assert sorted(r["name"] for r in rows) == ["convnet_mmd", "convnet_regular"]
    for row in rows:
        method = row["name"].removeprefix("convnet_")
        per_seed = [next(h["number"]["value"] for h in cards[method, s]["headline"] if h["key"] == "clean_accuracy")
                    for s in (0, 1)]
        mean = sum(per_seed) / 2
        assert float(row["clean_accuracy"]) == pytest.approx(mean, abs=1e-12)
        assert int(row["clean_accuracy_n"]) == 2  # seeds, not images
        if per_seed[0] == per_seed[1]:
            assert float(row["clean_accuracy_ci_low"]) == pytest.approx(mean)
        else:  # the t-interval over two seeds, computed here from its definition, cut to [0, 1]
            half = scipy_stats.t.ppf(0.975, 1) * abs(per_seed[0] - per_seed[1]) / 2 ** 0.5 / 2 ** 0.5
            assert float(row["clean_accuracy_ci_low"]) == pytest.approx(max(mean - half, 0.0), rel=1e-9)
            assert float(row["clean_accuracy_ci_high"]) == pytest.approx(min(mean + half, 1.0), rel=1e-9)
    html = (baseline / "leaderboard" / "leaderboard.html").read_text()
    assert "pooled over seeds" in html


def test_pooling_refuses_cards_of_different_methods():
    from deepadversaries.card.leaderboard import pool_cards
    from deepadversaries.errors import OptionError

    card = {"model": {"architecture": "convnet", "method": "regular", "parameters": 1},
            "data": {"sha256": "a" * 64, "path": "/d"}, "protocol": {"id": "v1 quick labelled"},
            "headline": [{"key": "clean_accuracy", "label": "Clean accuracy", "better": "higher",
                          "number": {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 100, "method": "cp"}}]}
    other = {**card, "model": {**card["model"], "method": "mmd"}}
    with pytest.raises(OptionError, match="different methods"):
        pool_cards([card, other], "x")
    pooled = pool_cards([card, {**card, "headline": [{**card["headline"][0], "number": {
        **card["headline"][0]["number"], "value": 0.7}}]}], "convnet_regular")
    number = pooled["headline"][0]["number"]
    assert number["value"] == pytest.approx(0.6) and number["n"] == 2 and number["images"] == [100, 100]
    single = pool_cards([card], "one")["headline"][0]["number"]
    assert single["value"] == 0.5 and single["ci_low"] is None and single["ci_high"] is None  # one seed: undefined
