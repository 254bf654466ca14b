"""Training recipes in a grid (``regular+survey-mix``), the card's held-out mCE and leaderboard
numbers, and pooling them over seeds.

A recipe is a method joined to a training augmentation; a study cell of one trains with that
augmentation, is named without the ``+`` and is compared with the regular cell of its seed.
The held-out mCE and the pooled board numbers are worked out here from their definitions
(ImageNet-C's CE: Σ_s E_run / Σ_s E_baseline; Student's t over seeds from scipy), not read
back from the code's own tables.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from deepadversaries.card.build import _corruption_errors, board, rate_number, validate_card
from deepadversaries.card.leaderboard import leaderboard, pool_cards, pooled_leaderboard
from deepadversaries.config import split_recipe
from deepadversaries.corruptions import registry
from deepadversaries.errors import OptionError
from deepadversaries.methods import METHOD_LABELS, METHOD_SHORT
from deepadversaries.training.survey_mix import HELD_OUT_FAMILIES, TRAINING_FAMILIES
from deepadversaries.workflow.grid import Grid, build_stages, parse_methods
from deepadversaries.workflow.layout import Layout
from test_leaderboard import make_card, num, write_card


# ----------------------------------------------------------------------------------------------
# recipes
# ----------------------------------------------------------------------------------------------
def test_split_recipe_reads_method_and_augmentation_and_refuses_the_rest():
    assert split_recipe("mmd") == ("mmd", "none")
    assert split_recipe(" Regular+Survey-Mix ") == ("regular", "survey-mix")
    with pytest.raises(OptionError, match="augmentation in a recipe"):
        split_recipe("regular+blur")
    with pytest.raises(OptionError):
        split_recipe("nope+survey-mix")
    with pytest.raises(OptionError, match="more than one augmentation"):
        split_recipe("regular+survey-mix+survey-mix")
    assert METHOD_SHORT["regular+survey-mix"] == f"{METHOD_SHORT['regular']} + survey-mix"
    assert METHOD_LABELS["mmd"] == METHOD_LABELS.get("mmd")  # plain methods unchanged


def test_a_study_cell_of_a_recipe_trains_with_its_augmentation_against_the_regular_cell(tmp_path):
    methods = parse_methods("regular,regular+survey-mix,adv-1p")
    assert methods == ("regular", "regular+survey-mix", "adv-1p")
    with pytest.raises(OptionError):
        parse_methods("regular,regular+nothing")
    layout = Layout(tmp_path / "study", kind="study")
    grid = Grid(preset="tiny", methods=methods, seeds=(0, 1), device="cpu")
    stages = {s.name: s for s in build_stages(layout, grid)}
    train = stages["train:convnet_regular-survey-mix_s1"]
    config = train.action.keywords["config"]
    assert (config.method, config.augment, config.seed) == ("regular", "survey-mix", 1)
    assert train.action.keywords["run_dir"].name == "convnet_regular-survey-mix_s1"
    assert stages["train:convnet_adv-1p_s0"].action.keywords["config"].augment == "none"
    # its corruption errors are relative to the regular cell of its seed; its analysis pairs with that cell
    robust = stages["robustness:convnet_regular-survey-mix_s1"]
    assert robust.action.keywords["baseline"].name == "convnet_regular_s1"
    assert "robustness:convnet_regular_s1" in robust.depends
    analyze = stages["analyze:convnet_regular-survey-mix_s1"]
    assert analyze.action.keywords["regular"].name == "convnet_regular_s1"
    assert analyze.action.keywords["adapted"].name == "convnet_regular-survey-mix_s1"
    # a copied-in run folder of the same name but trained without the augmentation is refused
    check = train.adopt_check.keywords["expected"]
    assert check["augment"] == "survey-mix" and check["method"] == "regular"
    assert "augment" not in stages["train:convnet_regular_s0"].adopt_check.keywords["expected"]


def test_analysis_accepts_the_same_method_with_another_augmentation(tmp_path):
    from deepadversaries.analysis.analyze import check_comparable
    from deepadversaries.config import TrainConfig
    from deepadversaries.models.runs import RunConfig

    def run(augment: str) -> RunConfig:
        train = TrainConfig.from_preset("tiny", method="regular", augment=augment)
        return RunConfig(train=train, data=str(tmp_path))

    check_comparable(run("none"), run("survey-mix"), tmp_path / "a", tmp_path / "b")
    assert run("survey-mix").recipe == "regular+survey-mix" and run("none").recipe == "regular"
    with pytest.raises(OptionError, match="both runs were trained with method 'regular' and augmentation 'none'"):
        check_comparable(run("none"), run("none"), tmp_path / "a", tmp_path / "b")


# ----------------------------------------------------------------------------------------------
# the held-out mCE
# ----------------------------------------------------------------------------------------------
def _names(families: tuple[str, ...]) -> list[str]:
    return [name for name, spec in registry.CORRUPTIONS.items() if spec.family in families]


def test_held_out_mce_is_the_mean_ce_of_the_corruptions_survey_mix_never_trains_on():
    held, trained = _names(HELD_OUT_FAMILIES)[:2], _names(TRAINING_FAMILIES)[:1]
    assert len(held) == 2 and len(trained) == 1
    n = 400
    # (corruption, severity) -> (images right under the run, the baseline's error rate)
    cells = {(held[0], 1): (360, 0.05), (held[0], 3): (300, 0.20),
             (held[1], 1): (380, 0.10), (held[1], 3): (340, 0.10),
             (trained[0], 1): (100, 0.05), (trained[0], 3): (40, 0.05)}  # a trained-on corruption, far worse
    rows = [{"corruption": c, "severity": s, "accuracy": rate_number(k, n)} for (c, s), (k, _) in cells.items()]
    summary = {"baseline": {"run": "/runs/regular", "errors": [
        {"corruption": c, "severity": s, "error": e} for (c, s), (_, e) in cells.items()]}}
    absent: dict[str, str] = {}
    out = _corruption_errors(rows, summary, n, absent)

    def ce(name: str) -> float:  # ImageNet-C: sum over severities of the run's errors / the baseline's
        keys = [k for k in cells if k[0] == name]
        return sum(1 - cells[k][0] / n for k in keys) / sum(cells[k][1] for k in keys)

    assert out["held_out"] == held
    assert out["held_out_mce"]["value"] == pytest.approx((ce(held[0]) + ce(held[1])) / 2, rel=1e-12)
    assert out["mce"]["value"] == pytest.approx((ce(held[0]) + ce(held[1]) + ce(trained[0])) / 3, rel=1e-12)
    assert out["mce"]["value"] > 2 * out["held_out_mce"]["value"]  # the trained-on corruption is left out
    low, high = out["held_out_mce"]["ci_low"], out["held_out_mce"]["ci_high"]
    assert low < out["held_out_mce"]["value"] < high and out["held_out_mce"]["n"] == n
    assert not absent


def test_board_lists_the_numbers_a_leaderboard_shows_beside_the_headline():
    res = {"clean": {"Y10": {"name": "Y10", "accuracy": num(0.9, 0.88, 0.92)},
                     "Y1": {"name": "Y1", "accuracy": num(0.6, 0.55, 0.65), "ece": num(0.2, 0.15, 0.25)}},
           "corruptions": {"mce": num(1.1, 1.0, 1.2), "held_out_mce": num(0.9, 0.8, 1.0)},
           "one_pixel": {"de_rate": num(0.1, 0.05, 0.15), "corner_search_rate": num(0.2, 0.1, 0.3),
                         "certified": {"rate_lower": num(0.2, 0.1, 0.3), "rate_upper": num(0.7, 0.5, 0.8)}}}
    got = {b["key"]: b for b in board(res, unlabelled=False)}
    assert list(got) == ["clean_accuracy_y1", "ece_y1", "mce", "held_out_mce", "de_flip_rate", "corner_flip_rate",
                         "certified_flippable_rate", "certified_upper_rate"]
    assert got["held_out_mce"]["number"] is res["corruptions"]["held_out_mce"]
    assert got["certified_upper_rate"]["number"]["value"] == 0.7
    assert all(got[k]["better"] == "lower" for k in got if k != "clean_accuracy_y1")
    # label-free: no accuracy or CE; a card without the corner search has no such column
    del res["one_pixel"]["corner_search_rate"]
    assert [b["key"] for b in board(res, unlabelled=True)] == ["de_flip_rate", "certified_flippable_rate",
                                                                "certified_upper_rate"]


# ----------------------------------------------------------------------------------------------
# the board numbers on leaderboards
# ----------------------------------------------------------------------------------------------
def _with_board(name: str, y1: float, held: float, seed: int = 0) -> dict:
    card = make_card(name, 0.9, 0.7, 0.1)
    card["model"]["training_seed"] = seed
    card["board"] = [{"key": "clean_accuracy_y1", "label": "clean accuracy (Y1)", "better": "higher",
                      "number": num(y1, y1 - 0.05, y1 + 0.05)},
                     {"key": "held_out_mce", "label": "mCE on held-out corruptions", "better": "lower",
                      "number": num(held, held - 0.1, held + 0.1)}]
    return validate_card(card)


def test_leaderboard_shows_and_sorts_by_the_board_numbers(tmp_path):
    folders = [write_card(tmp_path / "cards", _with_board("a", 0.6, 1.0)),
               write_card(tmp_path / "cards", _with_board("b", 0.8, 0.7))]
    result = leaderboard(folders, tmp_path / "board", sort="held_out_mce")
    assert [r["name"] for r in result["groups"][0]["rows"]] == ["b", "a"]  # lower mCE first
    with open(tmp_path / "board" / "leaderboard.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert float(rows["a"]["clean_accuracy_y1"]) == 0.6 and float(rows["b"]["held_out_mce_ci_high"]) == pytest.approx(0.8)
    assert "mCE on held-out corruptions" in (tmp_path / "board" / "leaderboard.md").read_text()


def test_pooled_board_numbers_are_means_with_a_t_interval_over_seeds(tmp_path):
    values = [0.9, 0.7, 0.8]
    cards = [write_card(tmp_path / "cards", _with_board(f"c_s{s}", 0.6, v, seed=s)) for s, v in enumerate(values)]
    pooled = pool_cards([json.loads((c / "card.json").read_text()) for c in cards], "convnet_regular")
    number = next(b for b in pooled["board"] if b["key"] == "held_out_mce")["number"]
    mean, sem = np.mean(values), scipy_stats.sem(values)
    half = scipy_stats.t.ppf(0.975, len(values) - 1) * sem
    assert number["value"] == pytest.approx(mean, rel=1e-12) and number["n"] == 3
    assert (number["ci_low"], number["ci_high"]) == pytest.approx((mean - half, mean + half), rel=1e-9)
    assert number["per_seed"] == pytest.approx(values)
    assert "held_out_mce" not in [h["key"] for h in pooled["headline"]]  # kept apart from the headline
    result = pooled_leaderboard({"convnet_regular": cards}, tmp_path / "pooled", sort="held_out_mce")
    assert result["groups"][0]["rows"][0]["name"] == "convnet_regular"


def test_pooled_rates_are_cut_to_zero_one_and_a_board_number_repeating_the_headline_is_left_out(tmp_path):
    """Accuracies near 1 over three seeds: the t-interval's upper end passes 1 and is cut to 1 (the
    lower end is the t-interval's, checked against scipy); mCE is not cut. DE's board rate that is the
    headline's one-pixel rate on every card is one board column, not two."""
    y1 = [0.99, 0.90, 0.999]
    cards = []
    for s, v in enumerate(y1):
        card = _with_board(f"c_s{s}", v, 0.5 + s, seed=s)
        rate = num(0.1 + s / 100, 0.05, 0.2)
        card["headline"] = [h for h in card["headline"] if h["key"] != "one_pixel_flip_rate"]
        card["headline"].append({"key": "one_pixel_flip_rate", "label": "one-pixel flip rate (differential evolution)",
                                 "better": "lower", "number": rate})
        card["board"].append({"key": "de_flip_rate", "label": "one-pixel flip rate, differential evolution",
                              "better": "lower", "number": dict(rate)})
        cards.append(write_card(tmp_path / "cards", validate_card(card)))
    pooled = pool_cards([json.loads((c / "card.json").read_text()) for c in cards], "convnet_regular")
    accuracy = next(b for b in pooled["board"] if b["key"] == "clean_accuracy_y1")["number"]
    mean, half = np.mean(y1), scipy_stats.t.ppf(0.975, 2) * scipy_stats.sem(y1)
    assert mean + half > 1  # the uncut interval passes 1
    assert accuracy["ci_high"] == 1.0 and accuracy["ci_low"] == pytest.approx(mean - half, rel=1e-9)
    assert "cut to [0, 1]" in accuracy["method"]
    mce = next(b for b in pooled["board"] if b["key"] == "held_out_mce")["number"]
    assert mce["ci_low"] == pytest.approx(1.5 - scipy_stats.t.ppf(0.975, 2) * scipy_stats.sem([0.5, 1.5, 2.5]))
    assert mce["ci_low"] < 0.5 and "cut" not in mce["method"]
    # the pooled card keeps every number (a board across recipes measured differently needs DE's own
    # column); the board below leaves out the column that repeats its headline on every card
    assert [b["key"] for b in pooled["board"]] == ["clean_accuracy_y1", "held_out_mce", "de_flip_rate"]
    result = leaderboard(cards, tmp_path / "board")
    header = (tmp_path / "board" / "leaderboard.csv").read_text().splitlines()[0].split(",")
    assert "one_pixel_flip_rate" in header and "de_flip_rate" not in header and result["groups"]
    # where the board's DE rate differs from the headline's (another search heads it), both stay
    other = json.loads((cards[0] / "card.json").read_text())
    other["headline"][-1]["number"] = num(0.3, 0.2, 0.4)
    other["model"]["method"] = "mmd"
    leaderboard([cards[1], write_card(tmp_path / "cards2", validate_card(other))], tmp_path / "board2")
    assert "de_flip_rate" in (tmp_path / "board2" / "leaderboard.csv").read_text().splitlines()[0].split(",")


def test_leaderboard_pools_the_cards_of_several_studies_over_seeds(tmp_path, capsys):
    from deepadversaries.cli import main

    root = tmp_path / "cards"
    regular = [write_card(root, _with_board(f"reg_s{s}", 0.6, v, seed=s)) for s, v in enumerate([1.0, 1.0, 1.0])]
    mixed = []
    for s, v in enumerate([0.7, 0.9, 0.8]):
        card = _with_board(f"mix_s{s}", 0.6, v, seed=s)
        card["model"]["method"] = "regular+survey-mix"
        mixed.append(write_card(root, card))
    result = leaderboard([*regular, *mixed], tmp_path / "board", sort="held_out_mce", pool_seeds=True)
    (group,) = result["groups"]
    assert [r["name"] for r in group["rows"]] == ["convnet_regular-survey-mix", "convnet_regular"]
    with open(tmp_path / "board" / "leaderboard.csv", newline="") as fh:
        rows = {r["name"]: r for r in csv.DictReader(fh)}
    assert float(rows["convnet_regular-survey-mix"]["held_out_mce"]) == pytest.approx(0.8)
    assert rows["convnet_regular-survey-mix"]["held_out_mce_n"] == "3"
    # two cards of one row and one seed are refused with one line, exit status 2
    twin = _with_board("reg_twin", 0.6, 1.0, seed=1)
    assert main(["leaderboard", *map(str, regular), str(write_card(root, twin)), "--pool-seeds",
                 "--out", str(tmp_path / "b2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "training seed 1" in err[0]


def test_the_card_pages_list_the_held_out_mce_beside_the_mce():
    from deepadversaries.card.render import fmt_number, tables

    corr = {"domain": "Y10", "rows": [{"corruption": "seeing", "severity": 1, "accuracy": num(0.8, 0.7, 0.9)}],
            "worst_cell": {"corruption": "seeing", "severity": 1}, "baseline": "/runs/convnet_regular_s0",
            "ce": {"seeing": num(1.2, 1.0, 1.4)}, "mce": num(1.2, 1.0, 1.4),
            "held_out_mce": num(0.9, 0.8, 1.0), "held_out": ["seeing"]}
    card = {"results": {"clean": {}, "corruptions": corr, "one_pixel": {}}}
    (ce_table,) = [t for t in tables(card) if t[0] == "table_ce"]
    assert ce_table[3][-1] == ["mCE, held out of survey-mix (seeing)", fmt_number(corr["held_out_mce"])]
    del corr["held_out_mce"]
    (ce_table,) = [t for t in tables(card) if t[0] == "table_ce"]
    assert ce_table[3][-1][0] == "mCE"
