"""`deepadv card`: the card of hand-built models whose answers are worked out here.

Two TorchScript models adopted on small generated data (32 x 32 Gaussian blobs over the survey's sky noise, never a
download): a *constant* model (the same logits for every image) and a *one-pixel* model (its
logits depend on one pixel of the model input only). Their accuracy, calibration, depth-shift
drop, corruption stability and one-pixel rates are computed in the tests from the data and
the model's definition — numpy and scipy's beta quantiles (Clopper–Pearson) — not from the
card's code. The card must validate against the shipped JSON Schema, and every number under
``headline`` and ``results`` must carry ci_low, ci_high and n.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats
from torch import nn

from deepadversaries import SPLITS
from deepadversaries.models.adopt import adopt_model
from deepadversaries.card.build import (
    MAX_WIDTH,
    MIN_N,
    card_run,
    card_schema,
    iter_numbers,
    rate_number,
    read_card,
    unreliable_numbers,
    validate_card,
)
from deepadversaries.card.render import render_card
from deepadversaries.cli import main
from deepadversaries.corruptions.suite import band_sky
from deepadversaries.data.dataset import image_file, label_file, load_dataset
from deepadversaries.errors import FileError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
ROW, COL, BAND = 16, 16, 1  # the one pixel the one-pixel model reads (r band, stamp centre)
GAIN = 40.0
CONSTANT_LOGITS = (0.2, 1.0, -0.5)


class ConstantModel(nn.Module):
    """The same logits for every image; z is a constant too."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor(CONSTANT_LOGITS))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 2, dtype=x.dtype, device=x.device)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :1] * 0.0 + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class OnePixelModel(nn.Module):
    """logits (g(v - t), 0, g(t - v)) of the input value v at (BAND, ROW, COL): class 0 above t,
    class 2 below, class 1 never; any image it classifies correctly flips when that pixel is set
    to 0 (class 0 -> 2) or 1 (class 2 -> 0), so the corner search flips every attacked image."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 1, 16, 16]  # BAND, ROW, COL
        return torch.stack([v, v * 0.0], dim=1)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        d = 40.0 * (z[:, 0] - self.threshold)  # GAIN
        return torch.stack([d, z[:, 1], -d], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def _script(model: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated in torch 2.x
        torch.jit.script(model.eval()).save(str(path))
    return path


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    """The exact binomial 95 % interval from beta quantiles (the textbook formula)."""
    low = 0.0 if k == 0 else scipy_stats.beta.ppf(0.025, k, n - k + 1)
    high = 1.0 if k == n else scipy_stats.beta.ppf(0.975, k + 1, n - k)
    return float(low), float(high)


def assert_rate(num: dict, k: int, n: int) -> None:
    low, high = clopper_pearson(k, n)
    assert num["n"] == n
    assert num["value"] == pytest.approx(k / n, abs=1e-12)
    assert num["ci_low"] == pytest.approx(low, abs=1e-9) and num["ci_high"] == pytest.approx(high, abs=1e-9)


def make_survey_dataset(path: Path, n: dict[str, int], seed: int = 3) -> Path:
    """32 x 32 g, r, i stamps in electrons: compact blobs (class 0 bright, 1 faint, 2 a pair) over
    the LSST survey model's sky noise sqrt(B) of each depth (Y10: 10x the Y1 galaxy flux), so that
    the corruption benchmark's border-noise check accepts them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] - (SIZE - 1) / 2
    path.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        labels = np.arange(n[split]) % 3
        rng.shuffle(labels)
        scenes = np.zeros((len(labels), 3, SIZE, SIZE))
        for i, c in enumerate(labels):
            dx, dy = rng.normal(0, 0.7, 2)
            def blob(x0, y0, s):
                return np.exp(-((xx - dx - x0) ** 2 + (yy - dy - y0) ** 2) / (2 * s ** 2))
            shape = {0: 3000 * blob(0, 0, 1.0), 1: 800 * blob(0, 0, 1.6), 2: 1500 * (blob(-2, 0, 0.9) + blob(2, 0, 0.9))}[c]
            scenes[i] = shape[None] * np.array([0.6, 1.0, 1.2])[:, None, None]
        for domain, gain in (("Y10", 10.0), ("Y1", 1.0)):
            sigma = np.sqrt(band_sky(domain))[None, :, None, None]
            images = gain * scenes + rng.normal(0, 1, scenes.shape) * sigma
            np.save(path / image_file(domain, split), images.astype(np.float32))
        np.save(path / label_file(split), np.eye(3, dtype=np.float32)[labels])
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("card")
    data = make_survey_dataset(root / "data", n={"train": 30, "valid": 9, "test": 60})
    dataset = load_dataset(data)
    v10 = np.asarray(dataset.images("Y10", "test"))[:, BAND, ROW, COL]
    v1 = np.asarray(dataset.images("Y1", "test"))[:, BAND, ROW, COL]
    threshold = float(np.median(v10))
    runs = {"constant": adopt_model(_script(ConstantModel(), root / "constant.pt"), data, root / "runs" / "constant"),
            "one_pixel": adopt_model(_script(OnePixelModel(threshold), root / "one_pixel.pt"), data,
                                     root / "runs" / "one_pixel")}
    return {"root": root, "data": data, "labels": dataset.labels("test"), "v10": v10, "v1": v1,
            "threshold": threshold, "runs": runs}


@pytest.fixture(scope="module")
def constant_card(toy) -> dict:
    out = toy["root"] / "cards" / "constant"
    card = card_run(toy["runs"]["constant"], out, device="cpu")
    render_card(card, out)
    return {"card": card, "out": out}


@pytest.fixture(scope="module")
def one_pixel_card(toy) -> dict:
    out = toy["root"] / "cards" / "one_pixel"
    card = card_run(toy["runs"]["one_pixel"], out, device="cpu")
    render_card(card, out)
    return {"card": card, "out": out}


# ----------------------------------------------------------------------------------------------
# numbers and schema
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, n", [(0, 12), (12, 12), (7, 48), (1, 1)])
def test_rates_carry_the_clopper_pearson_interval(k, n):
    assert_rate(rate_number(k, n), k, n)
    assert rate_number(0, 0)["value"] is None and rate_number(0, 0)["n"] == 0


def test_unreliable_lists_small_n_wide_and_undefined_numbers():
    results = {"a": rate_number(3, 10), "b": rate_number(40, 80), "c": rate_number(990, 1000),
               "d": rate_number(0, 0)}
    listed = {u["path"]: u["why"] for u in unreliable_numbers(results, "r")}
    assert f"n = 10 < {MIN_N}" == listed["r.a"]
    assert "r.b" in listed and "wide" in listed["r.b"]  # 80 images: the interval spans > MAX_WIDTH
    assert clopper_pearson(40, 80)[1] - clopper_pearson(40, 80)[0] > MAX_WIDTH
    assert "r.c" not in listed and "r.d" in listed


@pytest.mark.parametrize("which", ["constant_card", "one_pixel_card"])
def test_card_json_validates_and_every_number_has_an_interval(which, request):
    made = request.getfixturevalue(which)
    on_disk = json.loads((made["out"] / "card.json").read_text())
    jsonschema.Draft202012Validator.check_schema(card_schema())
    jsonschema.validate(on_disk, card_schema(), cls=jsonschema.Draft202012Validator)
    assert read_card(made["out"])["model"] == on_disk["model"]
    # every numeric leaf of headline and results sits in a {value, ci_low, ci_high, n} number; the
    # only bare numbers are coordinates (severity, queries) and the stamp's area share
    bare_allowed = {"severity", "queries", "area_share"}

    def walk(obj, key=""):
        if isinstance(obj, dict):
            if "value" in obj:
                assert {"value", "ci_low", "ci_high", "n"} <= set(obj), key
                return
            for k, v in obj.items():
                walk(v, k)
        elif isinstance(obj, list):
            for v in obj:
                walk(v, key)
        elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
            assert key in bare_allowed, f"bare number under {key!r}"

    walk(on_disk["results"])
    walk(on_disk["headline"])
    numbers = list(iter_numbers(on_disk["results"]))
    assert len(numbers) > 40
    for path, num in numbers:
        if num["value"] is not None and num["ci_low"] is not None:
            assert num["ci_low"] <= num["value"] + 1e-9 <= num["ci_high"] + 2e-9, path
    # a number without its interval breaks the schema
    broken = json.loads(json.dumps(on_disk))
    del broken["results"]["one_pixel"]["de_rate"]["ci_low"]
    with pytest.raises(FileError, match="does not follow the card schema"):
        validate_card(broken)


def test_unknown_schema_version_is_one_line_exit_2(constant_card, tmp_path, capsys):
    card = json.loads((constant_card["out"] / "card.json").read_text())
    card["schema_version"] = "9.0"
    path = tmp_path / "future" / "card.json"
    path.parent.mkdir()
    path.write_text(json.dumps(card))
    with pytest.raises(FileError, match="unknown card schema version '9.0'"):
        read_card(path)
    assert main(["leaderboard", str(path), "--out", str(tmp_path / "board")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown card schema version" in err[0]


# ----------------------------------------------------------------------------------------------
# known answers: the constant model
# ----------------------------------------------------------------------------------------------
def test_constant_model_card_has_the_worked_out_numbers(constant_card, toy):
    card, labels = constant_card["card"], toy["labels"]
    n = len(labels)
    logits = np.array(CONSTANT_LOGITS)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    c = int(np.argmax(p))
    k = int((labels == c).sum())
    res = card["results"]
    for domain in ("Y10", "Y1"):
        assert_rate(res["clean"][domain]["accuracy"], k, n)
        # one confidence bin: ECE = |accuracy - p_max|; Brier and NLL by their definitions
        assert res["clean"][domain]["ece"]["value"] == pytest.approx(abs(k / n - p.max()), abs=1e-6)
        brier = np.mean([np.sum((p - np.eye(3)[y]) ** 2) for y in labels])
        assert res["clean"][domain]["brier"]["value"] == pytest.approx(brier, abs=1e-6)  # float32 logits
        assert res["clean"][domain]["nll"]["value"] == pytest.approx(np.mean(-np.log(p[labels])), abs=1e-6)
    drop = res["depth_shift_drop"]
    assert (drop["value"], drop["ci_low"], drop["ci_high"], drop["n"]) == (0.0, 0.0, 0.0, n)
    # corruptions change nothing: every row keeps every prediction and the clean accuracy
    rows = res["corruptions"]["rows"]
    assert len(rows) == 3 * len({r["corruption"] for r in rows})
    for row in rows:
        assert_rate(row["stability"], n, n)
        assert_rate(row["accuracy"], k, n)
    # one pixel never flips it: 0 of the attacked images (those of class c), upper bound 1 - 0.025^(1/m)
    attacked = int((labels == c).sum())
    for key in ("de_rate", "corner_search_rate"):
        num = res["one_pixel"][key]
        assert num["value"] == 0.0 and num["n"] == attacked
        assert num["ci_high"] == pytest.approx(1 - 0.025 ** (1 / attacked), rel=1e-9)
    # headline: clean accuracy, drop, corruption accuracy, ECE, one-pixel rate
    assert [h["key"] for h in card["headline"]] == ["clean_accuracy", "depth_shift_drop", "corruption_accuracy",
                                                    "ece", "one_pixel_flip_rate"]
    assert card["model"]["parameters"] == 3 and card["model"]["adopted"]
    assert "dangerous_pixels" in card["absent"] and "corruption_error" in card["absent"]


# ----------------------------------------------------------------------------------------------
# known answers: the model that reads one pixel
# ----------------------------------------------------------------------------------------------
def test_one_pixel_model_card_has_the_worked_out_numbers(one_pixel_card, toy):
    card, labels = one_pixel_card["card"], toy["labels"]
    n = len(labels)
    predicted = {d: np.where(v > toy["threshold"], 0, 2) for d, v in (("Y10", toy["v10"]), ("Y1", toy["v1"]))}
    correct = {d: predicted[d] == labels for d in predicted}
    res = card["results"]
    assert_rate(res["clean"]["Y10"]["accuracy"], int(correct["Y10"].sum()), n)
    assert_rate(res["clean"]["Y1"]["accuracy"], int(correct["Y1"].sum()), n)
    assert res["depth_shift_drop"]["value"] == pytest.approx(correct["Y10"].mean() - correct["Y1"].mean(), abs=1e-12)
    # every correctly classified image is attacked (the subsample is the whole 60-image test set)
    # and the corner search flips every one of them at (ROW, COL)
    m = int(correct["Y10"].sum())
    assert_rate(res["one_pixel"]["corner_search_rate"], m, m)
    full_budget = [r for r in res["one_pixel"]["success_against_queries"] if r["search"] == "exhaustive"][-1]
    assert_rate(full_budget["rate"], m, m)
    flipmap = np.load(Path(card["protocol"]["stages_run_in"]) / "attack_exhaustive" / "flipmap.npz")
    flips = np.asarray(flipmap["flips"]).any(axis=1)
    assert flips[:, ROW, COL].all() and flips.sum() == len(flips)  # that pixel and no other
    assert card["headline"][-1]["label"].startswith("one-pixel flip rate (corner search")


def test_label_free_card_measures_stability(toy, tmp_path):
    card = card_run(toy["runs"]["one_pixel"], tmp_path / "free", device="cpu", unlabelled=True)
    n = len(toy["labels"])
    predicted = {d: np.where(v > toy["threshold"], 0, 2) for d, v in (("Y10", toy["v10"]), ("Y1", toy["v1"]))}
    res = card["results"]
    assert card["protocol"]["mode"] == "unlabelled" and not card["data"]["labelled"]
    assert "accuracy" not in res["clean"]["Y10"]
    assert_rate(res["clean"]["Y10"]["agreement"], n, n)
    assert_rate(res["clean"]["Y1"]["agreement"], int((predicted["Y1"] == predicted["Y10"]).sum()), n)
    # every galaxy is attacked against its own predicted class, and every one flips
    assert_rate(res["one_pixel"]["corner_search_rate"], n, n)
    assert all("accuracy" not in r for r in res["corruptions"]["rows"])
    assert [h["key"] for h in card["headline"]][:2] == ["depth_agreement", "corruption_stability"]
    assert "calibration" in card["absent"]
    # the run folder itself is untouched: the stages ran on a copy
    assert Path(card["protocol"]["stages_run_in"]).is_relative_to(tmp_path / "free")


# ----------------------------------------------------------------------------------------------
# documents and bad input
# ----------------------------------------------------------------------------------------------
def test_card_html_is_self_contained_with_five_headline_numbers(one_pixel_card):
    text = (one_pixel_card["out"] / "card.html").read_text()
    assert len(re.findall(r"<div class='tile'", text)) == 5
    images = re.findall(r"<img src='([^']*)'", text)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"<(script|link|iframe)[^>]+(src|href)=", text) and "url(" not in text
    md = (one_pixel_card["out"] / "card.md").read_text()
    block = (one_pixel_card["out"] / "model_index.yaml").read_text()
    assert block.startswith("model-index:") and block in md
    # the model-index values keep the interval and n
    values = re.findall(r'value: "([^"]*)"', block)
    assert len(values) == 5 and all(re.search(r"\[.*, .*\] \(n = \d+\)", v) for v in values)


def test_cli_card_refuses_a_run_missing_its_data(toy, tmp_path, capsys):
    run = tmp_path / "moved"
    shutil.copytree(toy["runs"]["constant"], run)
    config = json.loads((run / "config.json").read_text())
    config["data"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(config))
    assert main(["card", "--run", str(run), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gone" in err[0] and "missing" in err[0]
    assert main(["card", "--run", str(run), "--level", "huge", "--out", str(tmp_path / "c")]) == 2
    assert "unknown --level 'huge'" in capsys.readouterr().err


def test_cli_card_reuses_finished_stages_and_refuses_to_overwrite(toy, constant_card, tmp_path, capsys):
    out = constant_card["out"]
    assert main(["card", "--run", str(toy["runs"]["constant"]), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["card", "--run", str(toy["runs"]["constant"]), "--out", str(out), "--overwrite",
                 "--no-run"]) == 0
    again = read_card(out)
    # nothing was re-run: the same numbers from the same files
    assert again["results"] == constant_card["card"]["results"]
    assert again["protocol"]["timing"].keys() == {"card_s"}


def test_cli_card_seeds_cards_each_seeds_run_and_pools_them(toy, constant_card, tmp_path, capsys):
    for s in (0, 1):  # two "seeds" of one run: copies holding its finished stages
        shutil.copytree(toy["runs"]["constant"], tmp_path / "runs" / f"const_s{s}")
    out = tmp_path / "cards" / "const"
    assert main(["card", "--run", str(tmp_path / "runs" / "const_s{seed}"), "--seeds", "0-1", "--no-run",
                 "--out", str(out)]) == 0
    cards = [read_card(out / f"s{s}") for s in (0, 1)]
    assert [c["protocol"]["seed"] for c in cards] == [0, 1]
    assert [c["model"]["name"] for c in cards] == ["const_s0", "const_s1"]
    with open(out / "pooled" / "leaderboard.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    clean = constant_card["card"]["headline"][0]["number"]["value"]
    assert row["name"] == "const" and row["clean_accuracy_n"] == "2"
    assert float(row["clean_accuracy"]) == pytest.approx(clean, abs=1e-12)
    capsys.readouterr()
    assert main(["card", "--run", str(toy["runs"]["constant"]), "--seeds", "0-1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "{seed}" in err[0]


@pytest.mark.browser
def test_card_html_renders_in_chromium(one_pixel_card, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if chromium is None:
        if os.environ.get("CI", "").strip().lower() in ("true", "1", "yes"):
            pytest.fail("CI=true but headless Chromium is not installed: the browser tests must run in CI")
        pytest.skip("headless Chromium is not installed (apt-get install chromium); CI=true makes this a failure")
    page = one_pixel_card["out"] / "card.html"
    base = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
            "--v=0", "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([*base, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True,
                         text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not re.search(r"CONSOLE.*(Error|Uncaught)", dom.stderr), dom.stderr[-2000:]
    assert dom.stdout.count("class=\"tile\"") == 5 and "id=\"table_one_pixel\"" in dom.stdout
    shot = tmp_path / "card.png"
    run = subprocess.run([*base, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from PIL import Image, ImageStat

    with Image.open(shot) as im:
        gray = im.convert("L")
        assert ImageStat.Stat(gray).stddev[0] > 10
        assert min(gray.crop((0, 0, 1200, 120)).getdata()) < 80  # the title


# ----------------------------------------------------------------------------------------------
# the label-free example: real galaxies from the Hubble Deep Field
# ----------------------------------------------------------------------------------------------
def _hubble_module():
    path = Path(__file__).resolve().parents[1] / "scripts" / "hubble_cutouts.py"
    spec = importlib.util.spec_from_file_location("hubble_cutouts", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hubble(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hubble")
    data = _hubble_module().build_hubble_dataset(root, region=(0, 0, 500, 450), max_sources=30)
    return {"root": root, "data": data}


def test_hubble_example_label_free_card_end_to_end(hubble, regular_run, tmp_path, monkeypatch):
    import dataclasses

    from deepadversaries.card import build

    # 6 attacked galaxies instead of the tiny level's 12 (the corner search is most of the cost); the
    # first 2 of them certified, 3 s each (the tiny level certifies none)
    monkeypatch.setitem(build.PROTOCOLS, "tiny", dataclasses.replace(build.PROTOCOLS["tiny"], attack_images=6,
                                                                      certify_images=2, certify_budget_s=3.0))
    data = hubble["data"]
    dataset = load_dataset(data)
    assert dataset.bands == ("F450W", "F606W", "F814W") and dataset.domain_names == {"Y10": "hdf", "Y1": "hdf_shallow"}
    card = card_run(regular_run, tmp_path / "card", data=data, unlabelled=True, level="tiny", device="cpu")
    render_card(card, tmp_path / "card")
    n = len(dataset.labels("test"))
    assert card["data"]["n_test"] == n >= 15 and not card["data"]["labelled"]
    # agreement of the shallow image's prediction with the deep one's, recomputed with the model
    from deepadversaries.models.networks import load_model

    model = load_model(regular_run)
    with torch.no_grad():
        pred = {d: model(torch.from_numpy(np.asarray(dataset.images(d, "test"))))[0].argmax(1).numpy()
                for d in ("Y10", "Y1")}
    assert_rate(card["results"]["clean"]["Y1"]["agreement"], int((pred["Y1"] == pred["Y10"]).sum()), n)
    # every galaxy of the drawn subsample is attacked (6 here)
    assert card["results"]["one_pixel"]["corner_search_rate"]["n"] == 6 == card["protocol"]["images"]["de"]
    assert "corruptions" in card["absent"]  # display counts in HST bands: not LSST electrons
    # the certification's three counts are those of its results.csv, with their intervals
    with open(Path(card["protocol"]["stages_run_in"]) / "certify" / "results.csv", newline="") as f:
        statuses = [row["status"] for row in csv.DictReader(f)]
    assert len(statuses) == 2 and "certified" not in card["absent"]
    for status in ("flippable", "certified", "undecided"):
        assert_rate(card["results"]["one_pixel"]["certified"][status], statuses.count(status), 2)
    # each one-pixel rate names the pixel values its search allowed, as its own summary records them
    stages = Path(card["protocol"]["stages_run_in"])
    recorded = {name: json.loads((stages / folder / "summary.json").read_text())["value_range"]["kind"]
                for name, folder in (("de", "attack"), ("corner_search", "attack_exhaustive"), ("certified", "certify"))}
    assert card["results"]["one_pixel"]["value_ranges"] == recorded
    labels = {b["key"]: b["label"] for b in card["board"]}
    for key, search in (("de_flip_rate", "de"), ("corner_flip_rate", "corner_search"),
                        ("certified_flippable_rate", "certified"), ("certified_upper_rate", "certified")):
        assert labels[key].endswith(f", {build.VALUE_RANGE_WORDS[recorded[search]]}")
    page = (tmp_path / "card" / "card.html").read_text()
    assert f"certification: rate lower, {build.VALUE_RANGE_WORDS[recorded['certified']]}" in page


def test_one_pixel_labels_tell_apart_rates_over_different_pixel_values():
    from deepadversaries.card import build

    rate = {"value": 0.2, "ci_low": 0.1, "ci_high": 0.3, "n": 10, "method": "test"}
    one = {"corner_search_rate": rate, "certified": {"rate_lower": rate, "rate_upper": rate},
           "value_ranges": {"corner_search": "input", "certified": "physical"}}
    labels = {b["key"]: b["label"] for b in build.board({"one_pixel": one}, unlabelled=False)}
    assert "0-1 of the model input" in labels["corner_flip_rate"] and "e- to" not in labels["corner_flip_rate"]
    assert "0 e- to the full well" in labels["certified_flippable_rate"]
    headline = {h["key"]: h["label"] for h in build.headline({"one_pixel": one}, unlabelled=False)}
    assert headline["one_pixel_flip_rate"].startswith("one-pixel flip rate (certified lower bound)")
    assert headline["one_pixel_flip_rate"].endswith(", pixel values 0 e- to the full well")
    # a card that records no range (made before ranges were recorded) keeps the plain label
    del one["value_ranges"]
    labels = {b["key"]: b["label"] for b in build.board({"one_pixel": one}, unlabelled=False)}
    assert labels["corner_flip_rate"] == "one-pixel flip rate, corner search (lower bound)"


def test_card_says_why_a_model_the_certification_refuses_has_no_certified_rate(constant_card):
    # the constant model is TorchScript: the bounds cover only the package's own layer types
    why = constant_card["card"]["absent"]["certified"]
    assert why.startswith("the certification refused this model: certify needs a ConvNet, d4-convnet or ResNet18") and "features" in why


@pytest.mark.slow
def test_label_free_card_never_reads_the_labels(hubble, regular_run, tmp_path, monkeypatch):
    import dataclasses

    from deepadversaries.card import build

    # 4 attacked images instead of the tiny level's 12: the corner search dominates the two cards' cost
    monkeypatch.setitem(build.PROTOCOLS, "tiny", dataclasses.replace(build.PROTOCOLS["tiny"], attack_images=4))
    permuted = tmp_path / "permuted"
    shutil.copytree(hubble["data"], permuted)
    labels = np.load(permuted / label_file("test"))
    np.save(permuted / label_file("test"), np.roll(labels, 1, axis=1))  # every class changed
    cards = [card_run(regular_run, tmp_path / name, data=d, unlabelled=True, level="tiny", device="cpu")
             for name, d in (("a", hubble["data"]), ("b", permuted))]
    assert cards[0]["results"] == cards[1]["results"]
    assert cards[0]["data"]["sha256"] == cards[1]["data"]["sha256"]  # the labels are not hashed either
