"""robustness: mCE against a hand computation; the stage's table, summary, pairing, baseline and
refusals; the CLI; the figures' content."""

from __future__ import annotations

import csv
import math
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

import functools

import scipy.stats

from deepadversaries.corruptions.error import corruption_errors, pool_corruptions_over_seeds
from deepadversaries.corruptions.registry import CORRUPTIONS
from deepadversaries.corruptions.suite import CorruptionOptions, corrupt
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError, FileError, OptionError
from deepadversaries.evaluation.inference import forward_batches
from deepadversaries.io import read_json, write_json
from deepadversaries.models.networks import build_model
from deepadversaries.plots.robustness import (
    accuracy_curves_figure,
    corruption_grid_figure,
)
from deepadversaries.corruptions.benchmark import (
    CHUNK,
    FIELDS,
    check_survey_noise,
    corrupted_chunk,
    parse_corruptions,
    parse_severities,
    robustness_dir,
)
from deepadversaries.corruptions.benchmark import robustness_run as _robustness_run

#: the toy dataset's noise is not the LSST survey model's: the border-noise check is off in these tests
robustness_run = functools.partial(_robustness_run, noise_check="off")
from deepadversaries.models.runs import RUN_KIND


# --- corruption error ---------------------------------------------------------------------------------------
def test_corruption_error_against_a_hand_computation():
    """A baseline with negative, zero and significant degradation: ΔE everywhere, CE only where degraded."""
    n = 40
    clean = np.zeros(n, bool)
    clean[:4] = True  # both models: 4 clean errors (10 %)
    base = {("none", 0): clean.copy()}
    run = {("none", 0): clean.copy()}
    # "better": the baseline makes 2 fewer errors than clean at both severities (negative degradation)
    b = clean.copy(); b[:2] = False
    base[("better", 1)] = base[("better", 2)] = b
    r = clean.copy(); r[10:13] = True
    run[("better", 1)] = run[("better", 2)] = r
    # "same": the baseline's errors do not change (zero degradation)
    base[("same", 1)] = base[("same", 2)] = clean.copy()
    r = clean.copy(); r[10] = True
    run[("same", 1)], run[("same", 2)] = r, clean.copy()
    # "worse": 12 more baseline errors at severity 1, 16 at severity 2 (significant); the run: 6 and 8
    b1, b2 = clean.copy(), clean.copy(); b1[4:16] = True; b2[4:20] = True
    base[("worse", 1)], base[("worse", 2)] = b1, b2
    r1, r2 = clean.copy(), clean.copy(); r1[4:10] = True; r2[4:12] = True
    run[("worse", 1)], run[("worse", 2)] = r1, r2
    out = corruption_errors(run, base, n_boot=500, seed=1)
    c = out["corruptions"]
    # ΔE = Σ_s (E_run − E_base) × 100, by hand
    assert c["better"]["delta_points"]["value"] == pytest.approx(100 * ((7 - 2) / n + (7 - 2) / n))
    assert c["same"]["delta_points"]["value"] == pytest.approx(100 * (1 / n + 0))
    assert c["worse"]["delta_points"]["value"] == pytest.approx(100 * ((10 - 16) / n + (12 - 20) / n))
    for name in c:
        d = c[name]["delta_points"]
        assert d["ci_low"] <= d["value"] <= d["ci_high"] and d["n"] == n
    # the sign test: "worse" has 16 images worse, none better: p = 0.5^16; the others are not degraded
    assert c["worse"]["baseline_degradation"]["p_value"] == pytest.approx(0.5 ** 16)
    assert c["worse"]["baseline_degradation"]["p_value"] == pytest.approx(
        scipy.stats.binomtest(16, 16, 0.5, alternative="greater").pvalue)
    assert c["better"]["baseline_degradation"]["p_value"] == pytest.approx(1.0)
    assert c["same"]["baseline_degradation"]["p_value"] == 1.0  # no image changes
    assert out["degraded"] == ["worse"] and out["not_degraded"] == ["better", "same"]
    assert c["better"]["ce"] is None and c["same"]["relative_ce"] is None
    # CE and relative CE of "worse", by hand
    ce = (10 / n + 12 / n) / (16 / n + 20 / n)
    rce = ((10 - 4) / n + (12 - 4) / n) / ((16 - 4) / n + (20 - 4) / n)
    assert c["worse"]["ce"]["value"] == pytest.approx(ce)
    assert c["worse"]["relative_ce"]["value"] == pytest.approx(rce)
    assert out["mce"]["value"] == pytest.approx(ce) and out["relative_mce"]["value"] == pytest.approx(rce)
    assert out["mce"]["ci_low"] <= ce <= out["mce"]["ci_high"]
    with pytest.raises(OptionError, match="no result for worse at severity 3"):
        corruption_errors({**run, ("worse", 3): r1}, base)


def test_pooling_over_seeds_gives_a_t_interval():
    def summary(delta: float, ce: float | None) -> dict:
        entry = {"delta_points": {"value": delta, "ci_low": delta - 1, "ci_high": delta + 1, "n": 10},
                 "status": "degraded" if ce is not None else "not degraded",
                 "ce": None if ce is None else {"value": ce, "ci_low": ce - 0.1, "ci_high": ce + 0.1, "n": 10}}
        return {"clean": {"accuracy": 0.9}, "results": [{"corruption": "a", "severity": 1, "accuracy": 0.8}],
                "corruption_errors": {"corruptions": {"a": entry}, "degraded": ["a"] if ce is not None else [],
                                      "mce": None}}
    pooled = pool_corruptions_over_seeds([summary(-2.0, 0.8), summary(-4.0, 0.9), summary(-3.0, 0.7)])
    d = pooled["corruptions"]["a"]["delta_points"]
    half = scipy.stats.t.ppf(0.975, 2) * np.std([-2.0, -4.0, -3.0], ddof=1) / math.sqrt(3)
    assert d["value"] == pytest.approx(-3.0) and d["ci_high"] == pytest.approx(-3.0 + half) and d["n"] == 3
    assert pooled["mce"]["value"] == pytest.approx(0.8) and pooled["mce_corruptions"] == ["a"]
    assert pooled["corruptions"]["a"]["seeds_degraded"] == 3
    # a corruption not degraded in one seed leaves the pooled mCE
    assert pool_corruptions_over_seeds([summary(-2.0, 0.8), summary(-4.0, None)])["mce"] is None


def test_option_parsing():
    assert parse_severities("1-5") == (1, 2, 3, 4, 5)
    assert parse_severities("5,1,3,1") == (1, 3, 5)
    assert parse_severities("0,2") == (0, 2)
    assert parse_severities([3, 1]) == (1, 3)
    for bad in ("0-7", "6", "-1", "a", "3-1", "", [1, 9]):
        with pytest.raises(OptionError) as err:
            parse_severities(bad)
        assert "\n" not in str(err.value)
    assert parse_corruptions("all") == tuple(CORRUPTIONS)
    assert parse_corruptions("depth, seeing") == ("seeing", "depth")  # table order
    with pytest.raises(OptionError, match="unknown corruption 'blur'"):
        parse_corruptions("seeing,blur")


# --- fixtures: finished run folders ----------------------------------------------------------------------------
def _probe_model(dataset_path: Path, seed: int) -> torch.nn.Module:
    """A ConvNet whose output layer is a least-squares probe of its random latents: varied,
    better-than-chance predictions without a training loop."""
    torch.manual_seed(seed)
    model = build_model("convnet")
    ds = load_dataset(dataset_path)
    x = torch.from_numpy(ds.images("Y10", "train"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None
        model.train()(x)
        z = model.eval().embed(x).double()
        design = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
        target = torch.nn.functional.one_hot(torch.from_numpy(ds.labels("train")), 3).double()
        coef = torch.linalg.lstsq(design, target).solution
        model.output.weight.copy_(coef[:-1].T)
        model.output.bias.copy_(coef[-1])
    return model.eval()


def _write_run(folder: Path, model: torch.nn.Module, method: str, data: Path, finished: bool = True) -> Path:
    (folder / "checkpoints").mkdir(parents=True)
    write_json(folder / "config.json", {"kind": RUN_KIND, "model": "convnet", "method": method,
                                        "data": str(data.resolve()), "seed": 0})
    torch.save({"model": "convnet", "state_dict": model.state_dict(), "epoch": 1, "val_acc": 0.0},
               folder / "checkpoints" / "best.pt")
    if finished:
        write_json(folder / "training.json", {"epochs": 1})
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, toy_dataset):
    """runs/convnet_regular and runs/convnet_mmd with identical weights, runs/other with other weights."""
    root = tmp_path_factory.mktemp("robustness") / "runs"
    model = _probe_model(toy_dataset, 0)
    regular = _write_run(root / "convnet_regular", model, "regular", toy_dataset)
    mmd = _write_run(root / "convnet_mmd", model, "mmd", toy_dataset)
    other = _write_run(root.parent / "other" / "convnet_regular", _probe_model(toy_dataset, 1), "regular", toy_dataset)
    return {"regular": regular, "mmd": mmd, "other": other, "model": model}


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


SEVERITIES = "1,3,5"


# --- the stage --------------------------------------------------------------------------------------------------
def test_stage_writes_the_table_and_the_summary_last(runs, toy_dataset):
    summary = robustness_run(runs["regular"], severities=SEVERITIES, device="cpu", batch_size=16)
    out = runs["regular"] / "robustness"
    rows = _read_csv(out / "robustness.csv")
    assert tuple(rows[0].keys()) == FIELDS
    assert (rows[0]["corruption"], rows[0]["severity"]) == ("none", "0")
    assert [(r["corruption"], int(r["severity"])) for r in rows[1:]] == [(c, s) for c in CORRUPTIONS for s in (1, 3, 5)]
    # the clean accuracy equals the plain model's on the stretched Y10 test set
    ds = load_dataset(toy_dataset)
    labels = ds.labels("test")
    clean = forward_batches(runs["model"], ds.images("Y10", "test"), batch_size=16)
    assert float(rows[0]["accuracy"]) == pytest.approx(np.mean(clean.predicted == labels))
    assert float(rows[0]["flip_rate"]) == 0.0
    assert float(rows[0]["mean_p_true"]) == pytest.approx(np.mean(clean.probabilities[np.arange(len(labels)), labels]),
                                                          abs=1e-6)
    for r in rows:
        assert 0 <= float(r["accuracy"]) <= 1 and 0 <= float(r["flip_rate"]) <= 1 and int(r["n"]) == len(labels)
    # a corrupted row recomputed here from the documented seed derivation
    raw = ds.images("Y10", "test", stretched=False)
    rng = np.random.default_rng([0, zlib.crc32(b"sky_error"), 0])  # the same stream for every severity
    images = corrupt(np.asarray(raw[:CHUNK]), "sky_error", 5, rng)
    from deepadversaries.data.dataset import apply_stretch
    pred = forward_batches(runs["model"], apply_stretch(images, *ds.stretch("Y10")), batch_size=16).predicted
    row = next(r for r in rows if r["corruption"] == "sky_error" and r["severity"] == "5")
    assert float(row["accuracy"]) == pytest.approx(np.mean(pred == labels))
    assert float(row["flip_rate"]) == pytest.approx(np.mean(pred != clean.predicted))
    # summary: written last, no baseline for a regular run, unnormalised mean errors
    assert summary == read_json(out / "summary.json")
    assert summary["kind"] == "deepadv-robustness" and summary["n"] == len(labels)
    assert summary["mce"] is None and summary["corruption_errors"] is None and summary["baseline"]["run"] is None
    assert "regular run" in summary["baseline"]["chosen_by"]
    errors = [1 - float(r["accuracy"]) for r in rows[1:]]
    assert summary["mean_error"] == pytest.approx(np.mean(errors))
    # what the model's input saw: a sky error changes every pixel; the clean row's clip fraction by hand
    assert float(row["frac_pixels_changed"]) == 1.0 and float(row["mean_abs_delta_input"]) > 0
    lo, hi = ds.stretch("Y10")
    raw_all = np.asarray(raw)
    assert float(rows[0]["frac_clipped"]) == pytest.approx(np.mean((raw_all < lo) | (raw_all > hi)))
    delta = np.abs(apply_stretch(images, lo, hi).astype(np.float64) - apply_stretch(np.asarray(raw[:CHUNK]), lo, hi))
    assert float(row["mean_abs_delta_input"]) == pytest.approx(delta.mean(), rel=1e-5)
    last = (out / "summary.json").stat().st_mtime_ns
    for name in ("robustness.csv", "outcomes.npz", "accuracy.png", "corruption_grid.png"):
        assert (out / name).stat().st_mtime_ns <= last


def test_paired_images_and_the_default_baseline(runs):
    if not (runs["regular"] / "robustness" / "summary.json").is_file():
        robustness_run(runs["regular"], severities=SEVERITIES, device="cpu", batch_size=16, figures=False)
    # the DA run (same weights here) finds the regular run beside it and reuses its benchmark
    summary = robustness_run(runs["mmd"], severities="5", device="cpu", batch_size=16, figures=False)
    assert Path(summary["baseline"]["run"]).name == "convnet_regular"
    assert "its own benchmark" in summary["baseline"]["errors_from"]
    regular_rows = _read_csv(runs["regular"] / "robustness" / "robustness.csv")
    mmd_rows = _read_csv(runs["mmd"] / "robustness" / "robustness.csv")
    # same model, same corrupted images (for every corruption): the same table
    assert mmd_rows == [r for r in regular_rows if r["severity"] in ("0", "5")]
    block = summary["corruption_errors"]["corruptions"]
    assert all(b["delta_points"]["value"] == 0.0 for b in block.values())
    assert all(b["ce"]["value"] == pytest.approx(1.0) for b in block.values() if b["status"] == "degraded")
    # without the baseline's own result, the baseline is evaluated on the same images: same answer
    again = robustness_run(runs["mmd"], severities="5", device="cpu", batch_size=16, overwrite=True,
                           baseline=runs["regular"], figures=False)
    assert again["corruption_errors"]["corruptions"] == summary["corruption_errors"]["corruptions"]
    (runs["regular"] / "robustness" / "summary.json").rename(runs["regular"] / "robustness" / "hidden.json")
    try:
        fresh = robustness_run(runs["mmd"], severities="5", device="cpu", batch_size=16, overwrite=True,
                               figures=False)
    finally:
        (runs["regular"] / "robustness" / "hidden.json").rename(runs["regular"] / "robustness" / "summary.json")
    assert fresh["baseline"]["errors_from"].startswith("evaluated here")
    assert fresh["corruption_errors"]["corruptions"] == summary["corruption_errors"]["corruptions"]


def test_corruption_errors_against_the_baseline_recomputed_here(runs, toy_dataset):
    """ΔE and the baseline's errors against the baseline model's own predictions, recomputed here on the
    documented corrupted images (a benchmark that scored the baseline with the run's model fails this)."""
    summary = robustness_run(runs["mmd"], corruptions="seeing,depth,satellite", severities="2,4", device="cpu",
                             batch_size=16, overwrite=True, baseline=runs["other"], figures=False)
    assert summary["baseline"]["errors_from"].startswith("evaluated here")
    ds = load_dataset(toy_dataset)
    labels = ds.labels("test")
    raw = ds.images("Y10", "test", stretched=False)
    other = _probe_model(toy_dataset, 1)
    ours = {(r["corruption"], int(r["severity"])): 1 - float(r["accuracy"])
            for r in _read_csv(runs["mmd"] / "robustness" / "robustness.csv")[1:]}
    recorded = {(r["corruption"], r["severity"]): r["error"] for r in summary["baseline"]["errors"]}
    for c in ("seeing", "depth", "satellite"):
        theirs = {}
        for s in (2, 4):
            images = ds.model_input(corrupted_chunk(raw, c, s, 0), "Y10")
            pred = forward_batches(other, images, batch_size=16).predicted
            theirs[s] = float(np.mean(pred != labels))
            assert recorded[(c, s)] == pytest.approx(theirs[s])
        expected = 100 * (ours[(c, 2)] + ours[(c, 4)] - theirs[2] - theirs[4])
        assert summary["corruption_errors"]["corruptions"][c]["delta_points"]["value"] == pytest.approx(expected)


def test_blend_keeps_the_primary_label(runs, toy_dataset):
    summary = robustness_run(runs["regular"], corruptions="blend", severities="5", device="cpu", batch_size=16,
                             overwrite=True, figures=False)
    ds = load_dataset(toy_dataset)
    images = ds.model_input(corrupted_chunk(ds.images("Y10", "test", stretched=False), "blend", 5, 0), "Y10")
    pred = forward_batches(runs["model"], images, batch_size=16).predicted
    # scored against the dataset's labels: the primary's
    assert summary["results"][0]["accuracy"] == pytest.approx(np.mean(pred == ds.labels("test")))


def test_y1_domain_and_variants_write_their_own_folders(runs, toy_dataset):
    summary = robustness_run(runs["regular"], corruptions="hot_pixels", severities="1", domain="Y1",
                             defects="masked", stress=True, device="cpu", batch_size=16, overwrite=True, figures=False)
    folder = robustness_dir(runs["regular"], "Y1", CorruptionOptions("stress", "masked"))
    assert folder.name == "robustness_Y1_stress_masked" and (folder / "summary.json").is_file()
    assert summary["domain"] == "Y1" and summary["settings"]["defects"] == "masked"
    ds = load_dataset(toy_dataset)
    raw = ds.images("Y1", "test", stretched=False)
    images = ds.model_input(corrupted_chunk(raw, "hot_pixels", 1, 0, domain="Y1",
                                            options=CorruptionOptions("stress", "masked")), "Y1")
    pred = forward_batches(runs["model"], images, batch_size=16).predicted
    assert summary["results"][0]["accuracy"] == pytest.approx(np.mean(pred == ds.labels("test")))


def test_noise_unlike_the_survey_is_refused_or_warned(runs, toy_dataset):
    ds = load_dataset(toy_dataset)
    with pytest.raises(FileError, match="--noise-check warn") as err:
        check_survey_noise(ds, "Y10", ds.bands, "refuse")
    assert "\n" not in str(err.value) and err.value.exit_code == 2
    report = check_survey_noise(ds, "Y10", ds.bands, "warn")
    assert report["ok"] is False and report["ratios"]["r"] < 0.2  # toy sky sigma 22 e- against sqrt(B) = 357 e-
    with pytest.raises(FileError, match="border-pixel noise"):
        _robustness_run(runs["regular"], corruptions="depth", severities="1", device="cpu", overwrite=True)


def test_corrupted_images_depend_only_on_seed_and_chunk(toy_dataset):
    raw = load_dataset(toy_dataset).images("Y10", "test", stretched=False)
    a = corrupted_chunk(raw, "cosmic_rays", 5, 0, seed=3)
    b = corrupted_chunk(raw, "cosmic_rays", 5, 0, seed=3)
    assert np.array_equal(a, b)
    expected = corrupt(np.asarray(raw[:CHUNK]), "cosmic_rays", 5,
                       np.random.default_rng([3, zlib.crc32(b"cosmic_rays"), 0]))
    assert np.array_equal(a, expected)
    assert not np.array_equal(corrupted_chunk(raw, "depth", 5, 0, seed=3), corrupted_chunk(raw, "depth", 5, 0, seed=4))


def test_corrupting_ahead_in_a_thread_gives_the_serial_numbers(toy_dataset, monkeypatch):
    """The stage corrupts the next chunks in a background thread while it evaluates: every row, every
    per-image outcome and every grid panel equal one-thread serial evaluation (chunks of 5 images,
    so that several chunks are ahead), the corrupting ran off the main thread, and torch's thread
    count is restored."""
    import threading

    from deepadversaries.corruptions import benchmark as stage

    monkeypatch.setattr(stage, "CHUNK", 5)
    dataset = load_dataset(toy_dataset)
    model = stage.optimized_for_inference(_probe_model(toy_dataset, 0), channels_last=True)
    needed = [("cosmic_rays", 3), ("blend", 1), ("seeing", 5), ("hot_pixels", 2)]

    def bench() -> stage._Benchmark:
        return stage._Benchmark(dataset, {"run": model}, seed=0, batch_size=4, device=torch.device("cpu"))

    threads_before = torch.get_num_threads()
    ahead = bench()
    where: set[str] = set()
    prepare = ahead._prepare
    monkeypatch.setattr(ahead, "_prepare", lambda *a: where.add(threading.current_thread().name) or prepare(*a))
    rows, wrong = ahead.table(needed)
    assert torch.get_num_threads() == threads_before and ahead.n_chunks > 2
    assert where and threading.main_thread().name not in where
    serial = bench()
    clean_logits, _ = serial.logits(stage.CLEAN, 0)
    for row, key in zip(rows, [(stage.CLEAN, 0), *needed]):
        logits, stats = serial.logits(*key)
        expected = serial._row(*key, logits["run"], clean_logits["run"].argmax(axis=1), stats)
        assert row == expected, key
        np.testing.assert_array_equal(wrong["run"][key], logits["run"].argmax(axis=1) != dataset.labels("test"))
        np.testing.assert_array_equal(ahead.panels[key], serial.panels[key])


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_results_ahead_come_in_order_at_most_depth_ahead_and_carry_errors(workers):
    import threading
    import time

    from deepadversaries.corruptions.benchmark import _Ahead

    started: list[int] = []

    lock = threading.Lock()
    threads: set[str] = set()

    def square(i: int) -> int:
        with lock:
            started.append(i)
            threads.add(threading.current_thread().name)
        time.sleep(0.02 * (i % 3 == 0))  # some finish out of order when several threads run
        if i == 6:
            raise ValueError("item 6")
        return i * i

    got = []
    with pytest.raises(ValueError, match="item 6"):
        with _Ahead(square, range(10), depth=2, workers=workers) as results:
            for i, value in enumerate(results):
                assert len(started) <= i + 1 + 2  # never more than two beyond the one taken
                got.append(value)
    assert got == [0, 1, 4, 9, 16, 25] and max(started) <= 8
    assert 1 <= len(threads) <= workers


def test_corrupting_threads_a_quarter_of_the_cores_up_to_eight_at_least_two_for_one_model():
    from deepadversaries.corruptions.benchmark import corrupting_threads

    assert [corrupting_threads(c) for c in (1, 2, 8, 12, 16, 40, 128)] == [2, 2, 2, 3, 4, 8, 8]
    assert [corrupting_threads(c, models=2) for c in (1, 2, 8, 12, 16, 40)] == [1, 1, 2, 3, 4, 8]


def test_bad_input_is_refused_with_one_line(runs, toy_dataset, tmp_path):
    cases = [
        ({"run": runs["regular"], "corruptions": "blur"}, OptionError, "unknown corruption 'blur'"),
        ({"run": runs["regular"], "severities": "1-7"}, OptionError, "outside 0-5"),
        ({"run": _write_run(tmp_path / "unfinished", runs["model"], "mmd", toy_dataset, finished=False)},
         FileError, "training has not finished"),
    ]
    no_ckpt = _write_run(tmp_path / "nockpt", runs["model"], "mmd", toy_dataset)
    (no_ckpt / "checkpoints" / "best.pt").unlink()
    cases.append(({"run": no_ckpt}, FileError, "checkpoint not found"))
    cases.append(({"run": runs["mmd"], "baseline": no_ckpt}, FileError, "checkpoint"))
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message) as err:
            robustness_run(device="cpu", **kwargs)
        assert "\n" not in str(err.value) and err.value.exit_code == 2
    if not (runs["regular"] / "robustness" / "summary.json").is_file():
        robustness_run(runs["regular"], severities=SEVERITIES, device="cpu", batch_size=16, figures=False)
    with pytest.raises(FileError, match="--overwrite"):
        robustness_run(runs["regular"], device="cpu")


# --- command line ---------------------------------------------------------------------------------------------------
@pytest.fixture()
def cli():
    from deepadversaries.cli.robustness import register

    app = typer.Typer()
    plot_app = typer.Typer()
    app.add_typer(plot_app, name="plot")
    register(app, plot_app)
    return app


def test_cli_help_and_errors(cli, runs):
    runner = CliRunner()
    result = runner.invoke(cli, ["robustness", "--help"])
    assert result.exit_code == 0
    for option in ("--run", "--corruptions", "--severities", "--seed", "--baseline", "--overwrite"):
        assert option in result.output
    result = runner.invoke(cli, ["robustness", "--run", str(runs["regular"]), "--severities", "0-9"])
    assert isinstance(result.exception, DeepAdvError) and result.exception.exit_code == 2
    assert "\n" not in str(result.exception)


def test_cli_figures(cli, runs, toy_dataset, tmp_path):
    runner = CliRunner()
    if not (runs["regular"] / "robustness" / "summary.json").is_file():
        robustness_run(runs["regular"], severities=SEVERITIES, device="cpu", batch_size=16, figures=False)
    out = tmp_path / "curves.png"
    result = runner.invoke(cli, ["plot", "robustness-curves", "--run", str(runs["regular"]), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    grid = tmp_path / "grid.png"
    result = runner.invoke(cli, ["plot", "robustness-grid", "--data", str(toy_dataset), "--index", "2",
                                 "--corruptions", "seeing,satellite", "--out", str(grid)])
    assert result.exit_code == 0, result.output
    assert grid.stat().st_size > 0
    result = runner.invoke(cli, ["plot", "robustness-grid", "--data", str(toy_dataset), "--index", "999"])
    assert isinstance(result.exception, OptionError)


# --- figures ----------------------------------------------------------------------------------------------------------
def _summary(clean: float, accuracies: dict[tuple[str, int], float]) -> dict:
    return {"clean": {"accuracy": clean},
            "results": [{"corruption": c, "severity": s, "accuracy": a} for (c, s), a in accuracies.items()]}


def test_accuracy_curves_plot_the_accuracies():
    a = _summary(0.9, {("seeing", 1): 0.8, ("seeing", 3): 0.6, ("depth", 1): 0.7, ("depth", 3): 0.5})
    b = _summary(0.85, {("seeing", 1): 0.84, ("seeing", 3): 0.8, ("depth", 1): 0.8, ("depth", 3): 0.75})
    fig = accuracy_curves_figure({"regular": a, "mmd": b})
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["seeing", "depth", "mean over corruptions"]
    for ax in axes:
        assert ax.get_xlabel() == "severity" and ax.get_ylabel() == "accuracy"
        assert [line.get_label() for line in ax.lines] == ["regular", "mmd"]
    seeing_regular = axes[0].lines[0]
    assert list(seeing_regular.get_xdata()) == [0, 1, 3]
    assert list(seeing_regular.get_ydata()) == pytest.approx([0.9, 0.8, 0.6])
    assert list(axes[1].lines[1].get_ydata()) == pytest.approx([0.85, 0.8, 0.75])
    assert list(axes[2].lines[0].get_ydata()) == pytest.approx([0.9, 0.75, 0.55])  # mean over corruptions


def test_corruption_grid_shows_every_corruption_and_severity(toy_dataset):
    from deepadversaries.data.dataset import apply_stretch
    from deepadversaries.plots.robustness import GRID_GAP

    ds = load_dataset(toy_dataset)
    image = np.asarray(ds.images("Y10", "test", stretched=False)[0])
    lo, hi = ds.stretch("Y10")
    fig = corruption_grid_figure(image, lo, hi, corruptions=["seeing", "dead_pixels"], seed=0,
                                 options=CorruptionOptions("stress", "no-dither"))
    (ax,) = fig.get_axes()
    assert [t.get_text() for t in ax.get_yticklabels()] == ["seeing", "dead pixels"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"severity {s}" for s in range(6)]
    labels = [t.get_text() for t in ax.texts]
    assert len(labels) == 12 and labels[0] == "clean" and labels[5] == '1.4"' and labels[11] == "1 %"
    mosaic = np.asarray(ax.get_images()[0].get_array())
    step = 100 + GRID_GAP
    assert mosaic.shape == (2 * step - GRID_GAP, 6 * step - GRID_GAP, 3)
    # panel (0, 0) is the clean image stretched as the model sees it (i, r, g as RGB), y axis up
    s = apply_stretch(image, lo, hi)
    vmin = apply_stretch(np.array([lo], np.float32), lo, hi)[0]
    vmax = apply_stretch(np.array([hi], np.float32), lo, hi)[0]
    assert np.allclose(mosaic[:100, :100, 0], np.clip((s[2] - vmin) / (vmax - vmin), 0, 1)[::-1])
    assert np.allclose(mosaic[:100, :100, 2], np.clip((s[0] - vmin) / (vmax - vmin), 0, 1)[::-1])
    # dead pixels at severity 5 (1 % of the pixels) show as black: the stretch's floor in every band
    dead_panel = mosaic[step:step + 100, 5 * step:5 * step + 100]
    assert 30 < (dead_panel.max(axis=-1) == 0).sum() < 200
    assert (mosaic[100:step] == 1).all()  # a white gap between the rows


def test_the_grid_shows_the_images_the_model_was_scored_on(runs, toy_dataset, monkeypatch):
    import deepadversaries.corruptions.benchmark as robustness

    captured = {}

    def capture(image, lo, hi, out, **kwargs):
        captured.update(kwargs, image=image)
        return out

    monkeypatch.setattr(robustness, "plot_corruption_grid", capture)
    robustness_run(runs["regular"], corruptions="satellite,hot_pixels", severities="1,5", device="cpu",
                   batch_size=16, overwrite=True)
    raw = load_dataset(toy_dataset).images("Y10", "test", stretched=False)
    panels = captured["panels"]
    for name in ("satellite", "hot_pixels"):
        for severity in (1, 5):
            assert np.array_equal(panels[(name, severity)], corrupted_chunk(raw, name, severity, 0)[0])
        assert np.array_equal(panels[(name, 0)], np.asarray(raw[0]))
    # nested draws: the severity-5 hot pixels include the severity-1 ones
    low = panels[("hot_pixels", 1)] != np.asarray(raw[0])
    high = panels[("hot_pixels", 5)] != np.asarray(raw[0])
    assert (low <= high).all() and high.sum() > low.sum()
