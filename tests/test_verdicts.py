"""The verdict rule of SPEC 10 on constructed evidence, (d)'s invariances and its seed minimum.

Expected words are written here from the SPEC's sentences, never taken from the code's rule:
*held* — the whole 95 % interval on the claimed side of no effect (for (c), a non-inferiority
claim: the whole interval of the Y10 cost below 3 points); *contradicted* — wholly on the other
side; *inconclusive* — otherwise. Magnitude — the paper's number (ConvNet: (a) −22 points,
(b) +9, (c) −1, (d) ×1.3) inside the interval: "consistent with the paper's"; further from no
effect than the whole interval: "smaller than the paper's"; nearer to no effect than the whole
interval: "larger than the paper's".
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from deepadversaries.analysis.latent import Triplets, boundary_distances, paired_distances
from deepadversaries.reporting.findings import (Evidence, finding_a, finding_b, finding_c, finding_d, finding_e)
from deepadversaries.analysis.stats import Interval, latent_spread, magnitude, verdict

N_TEST = 200


# --------------------------------------------------------------------------------------
# constructed evidence
# --------------------------------------------------------------------------------------
def _correct(n_right: int) -> np.ndarray:
    return np.arange(N_TEST) < n_right


def _accuracy_evidence(seed: int, reg_y10: int, reg_y1: int, ada_y10: int, ada_y1: int) -> Evidence:
    """A seed whose models classify exactly these many of the N_TEST images correctly."""
    ev = Evidence("convnet", "mmd", seed)
    for (m, d), k in {("regular", "Y10"): reg_y10, ("regular", "Y1"): reg_y1, ("mmd", "Y10"): ada_y10,
                      ("mmd", "Y1"): ada_y1}.items():
        ev.correct[(m, d)] = _correct(k)
        ev.accuracy[(m, d)] = k / N_TEST
    return ev


def _t_interval_by_hand(values: list[float]) -> tuple[float, float, float]:
    mean, sd, n = float(np.mean(values)), float(np.std(values, ddof=1)), len(values)
    half = sps.t.ppf(0.975, n - 1) * sd / np.sqrt(n)
    return mean, mean - half, mean + half


# the differences per seed (in images of 200) and what SPEC 10 says of them; the interval is written
# beside each case (t with 2 degrees of freedom, 4.303 · s/√3)
ACCURACY_CASES = [
    # (a) regular Y1 − Y10; claimed below 0; the paper's −22 points
    ("a", [-44, -40, -48], "held", "consistent with the paper's"),       # [−27.0, −17.0] points holds −22
    ("a", [-10, -12, -8], "held", "smaller than the paper's"),           # [−7.5, −2.5]: −22 lies further out
    ("a", [-80, -84, -76], "held", "larger than the paper's"),           # [−45.0, −35.0]: −22 lies nearer 0
    ("a", [10, 12, 8], "contradicted", "smaller than the paper's"),      # wholly above 0
    ("a", [-10, 10, 2], "inconclusive", "smaller than the paper's"),     # straddles 0; −22 beyond it
    # (b) adapted − regular Y1; claimed above 0; the paper's +9
    ("b", [18, 16, 20], "held", "consistent with the paper's"),
    ("b", [60, 62, 58], "held", "larger than the paper's"),
    ("b", [-18, -16, -20], "contradicted", "smaller than the paper's"),
    ("b", [-10, 10, 4], "inconclusive", "consistent with the paper's"),  # wide: [−12, +13] holds +9
    # (c) adapted − regular Y10; non-inferiority above −3 points (a margin that is ours); the paper's −1
    ("c", [2, 4, 0], "held", "consistent with the paper's"),             # [−1.5, +3.5] points
    ("c", [-2, 0, -4], "inconclusive", "consistent with the paper's"),   # [−3.5, +1.5]: touches below −3
    ("c", [-20, -24, -22], "contradicted", "larger than the paper's"),   # [−13.5, −8.5]: cost beyond −1
    ("c", [10, 12, 8], "held", "smaller than the paper's"),              # a gain: −1 lies beyond it
]


@pytest.mark.parametrize("fid, changes, word, size", ACCURACY_CASES)
def test_accuracy_findings_follow_the_rule(fid, changes, word, size):
    evidence = []
    for seed, k in enumerate(changes):
        if fid == "a":  # regular Y10 = 150 right, Y1 = 150 + k
            evidence.append(_accuracy_evidence(seed, 150, 150 + k, 150, 150))
        elif fid == "b":  # regular Y1 = 100, adapted Y1 = 100 + k
            evidence.append(_accuracy_evidence(seed, 150, 100, 150, 100 + k))
        else:  # regular Y10 = 150, adapted Y10 = 150 + k
            evidence.append(_accuracy_evidence(seed, 150, 100, 150 + k, 100))
    finding = {"a": finding_a, "b": finding_b, "c": finding_c}[fid](evidence)
    mean, low, high = _t_interval_by_hand([k / N_TEST for k in changes])
    assert (finding["effect"], finding["ci_low"], finding["ci_high"]) == pytest.approx((mean, low, high))
    assert finding["verdict"] == word
    assert finding["magnitude"] == size
    assert size in finding["statement"] and word in finding["statement"]
    assert not finding["one_model"] and "one trained model" not in finding["statement"]


def _distance_evidence(seed: int, ratio: float, n: int = 12, n_attacked: int = 60, d: int = 6,
                       method: str = "mmd") -> Evidence:
    """A seed whose adapted distances are ``ratio`` × the regular ones, image by image, on every
    scale (raw, logits); both models' Y10 latents have the same spread."""
    rng = np.random.default_rng(100 + seed)
    ev = Evidence("convnet", method, seed)
    regular = rng.gamma(4.0, 1.0, n)
    ev.attacked_index = np.arange(n_attacked)
    flipped = np.zeros(n_attacked, bool)
    flipped[:n] = True
    ev.flipped = {"regular": flipped, method: flipped.copy()}
    ev.flipped_index = np.arange(n)
    ev.queries = {"regular": np.full(n_attacked, 400.0), method: np.full(n_attacked, 800.0)}
    ev.budget = 1600.0
    ev.distances = {scale: {p: {"regular": regular * f, method: regular * f * ratio} for p in ("Y10-Y1", "Y10-1P")}
                    for scale, f in (("latent", 1.0), ("logit", 0.5))}
    z = rng.normal(size=(n_attacked, d))
    ev.z_y10 = {"regular": z, method: z + 3.0}  # a shift: the same spread
    ev.boundary = {"regular": np.full(n_attacked, 2.0), method: np.full(n_attacked, 2.0 * ratio)}
    return ev


D_CASES = [
    ([1.4, 1.5, 1.3], "held", "consistent with the paper's"),       # exp of [0.157, 0.512]: [1.17, 1.67] holds 1.3
    ([3.0, 3.2, 2.9], "held", "larger than the paper's"),           # [2.7, 3.4]: ×1.3 nearer to 1
    ([1.05, 1.08, 1.06], "held", "smaller than the paper's"),       # [1.02, 1.10]: ×1.3 further out
    ([0.6, 0.65, 0.7], "contradicted", "smaller than the paper's"),  # wholly below 1
    ([0.7, 1.4, 1.0], "inconclusive", "consistent with the paper's"),
]


@pytest.mark.parametrize("ratios, word, size", D_CASES)
def test_finding_d_pools_log_ratios_and_follows_the_rule(ratios, word, size):
    finding = finding_d([_distance_evidence(s, r) for s, r in enumerate(ratios)])
    mean, low, high = _t_interval_by_hand(list(np.log(ratios)))
    assert (finding["effect"], finding["ci_low"], finding["ci_high"]) == pytest.approx(
        (np.exp(mean), np.exp(low), np.exp(high)))
    assert finding["verdict"] == word and finding["magnitude"] == size
    # the sensitivity versions see the same ratios here: the same word, no warning
    for version in ("logit", "spread"):
        s = finding["sensitivity"][version]
        assert s["estimate"] == pytest.approx(np.exp(mean)) and s["verdict"] == word, version
    assert not finding["scale_dependent"] and "depends on the latent scale" not in finding["statement"]
    boundary = finding["numbers"]["boundary_ratio"]
    assert boundary["estimate"] == pytest.approx(np.exp(mean))


def test_finding_d_says_when_a_sensitivity_version_gives_another_word():
    evidence = [_distance_evidence(s, r) for s, r in enumerate([1.4, 1.5, 1.3])]
    for ev in evidence:  # the adapted model's logits move half as far as the regular one's: logit ratio ≈ 0.7
        ev.distances["logit"]["Y10-1P"]["mmd"] = ev.distances["logit"]["Y10-1P"]["regular"] * 0.5 * \
            (1.0 + 0.01 * ev.seed)
    finding = finding_d(evidence)
    assert finding["verdict"] == "held" and finding["sensitivity"]["logit"]["verdict"] == "contradicted"
    assert finding["scale_dependent"] and "direction depends on the latent scale" in finding["statement"]
    assert "direction depends on the latent scale" in finding["label"]


E_CASES = [  # per seed: (flipped under regular only, under adapted only) of 100 attacked images
    ([(12, 2), (10, 3), (11, 1)], "held"),          # every seed −8 to −10 points
    ([(2, 12), (3, 10), (1, 11)], "contradicted"),
    ([(12, 2), (2, 12), (6, 6)], "inconclusive"),
]


@pytest.mark.parametrize("discordant, word", E_CASES)
def test_finding_e_pools_one_paired_difference_per_seed(discordant, word):
    evidence = []
    differences = []
    for seed, (b, c) in enumerate(discordant):
        ev = _distance_evidence(seed, 1.0, n_attacked=100)
        flips_r = np.zeros(100, bool)
        flips_a = np.zeros(100, bool)
        flips_r[:20] = flips_a[:20] = True  # 20 flipped under both
        flips_r[20:20 + b] = True
        flips_a[20 + b:20 + b + c] = True
        ev.flipped = {"regular": flips_r, "mmd": flips_a}
        evidence.append(ev)
        differences.append((c - b) / 100)
    finding = finding_e(evidence)
    mean, low, high = _t_interval_by_hand(differences)
    assert (finding["effect"], finding["ci_low"], finding["ci_high"]) == pytest.approx((mean, low, high))
    assert finding["verdict"] == word
    assert finding["magnitude"] is None and "the paper gives no number" in finding["statement"]
    # the pooled McNemar is only a check, labelled so; the cluster bootstrap a sensitivity
    assert finding["numbers"]["mcnemar_check"]["label"] == "conditional on these trained models"
    assert finding["numbers"]["cluster_bootstrap"]["estimate"] == pytest.approx(mean)
    # rates share one denominator: the images attacked under both
    rates = finding["numbers"]["flip_rates"]
    assert rates["n_images"] == 300
    assert rates["regular"] == pytest.approx(sum(20 + b for b, _ in discordant) / 300)


def test_one_seed_verdicts_say_one_trained_model():
    ev = _accuracy_evidence(0, 150, 100, 150, 120)
    finding = finding_b([ev])
    assert finding["one_model"] and finding["label"].endswith("one trained model; see `deepadv study`")
    assert "one trained model; see `deepadv study`" in finding["statement"]
    assert "paired percentile bootstrap over 200 images" in finding["how"]


# --------------------------------------------------------------------------------------
# the rule on bare intervals, from the SPEC's sentences
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fid, low, high, word", [
    ("a", -0.30, -0.01, "held"), ("a", -0.10, 0.0, "inconclusive"), ("a", 0.01, 0.2, "contradicted"),
    ("b", 0.001, 0.3, "held"), ("b", 0.0, 0.3, "inconclusive"), ("b", -0.3, -0.01, "contradicted"),
    ("c", -0.029, 0.05, "held"), ("c", -0.03, 0.05, "inconclusive"), ("c", -0.2, -0.031, "contradicted"),
    ("d", 1.01, 2.0, "held"), ("d", 0.5, 1.0, "inconclusive"), ("d", 0.3, 0.99, "contradicted"),
    ("e", -0.05, -0.001, "held"), ("e", -0.05, 0.01, "inconclusive"), ("e", 0.01, 0.05, "contradicted"),
])
def test_verdict_words(fid, low, high, word):
    assert verdict(Interval((low + high) / 2, low, high), fid) == word


def test_an_undefined_interval_is_inconclusive_and_has_no_magnitude():
    iv = Interval(0.1, float("nan"), float("nan"))
    assert verdict(iv, "b") == "inconclusive" and magnitude(iv, 0.09, "b") is None


# --------------------------------------------------------------------------------------
# (d): invariance and the seed minimum
# --------------------------------------------------------------------------------------
def _linear_model_latents(seed: int, n: int = 80, d: int = 5) -> dict:
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(3, d))
    b = rng.normal(size=3)
    z10 = rng.normal(size=(n, d))
    true = np.argmax(z10 @ w.T + b, axis=1)  # attacked images are classified correctly
    return {"w": w, "b": b, "z10": z10, "z1": z10 + rng.normal(scale=0.5, size=(n, d)),
            "z1p": z10 + rng.normal(scale=0.3 + 0.1 * seed, size=(n, d)), "true": true,
            "success": rng.random(n) < 0.4}


def _evidence_from_latents(regular: dict, adapted: dict, seed: int) -> Evidence:
    """Evidence built with the analysis's own functions from two models' latents and linear heads."""
    runs = {m: Triplets(np.arange(len(x["z10"])), x["z10"], x["z1"], x["z1p"], x["success"])
            for m, x in (("regular", regular), ("mmd", adapted))}
    heads = {m: (lambda z, x=x: z @ x["w"].T + x["b"]) for m, x in (("regular", regular), ("mmd", adapted))}
    paired = paired_distances(runs, heads)
    ev = Evidence("convnet", "mmd", seed)
    ev.attacked_index = np.arange(len(regular["z10"]))
    ev.flipped = {"regular": regular["success"], "mmd": adapted["success"]}
    ev.flipped_index = paired.test_index
    ev.queries = {m: np.full(len(ev.attacked_index), 100.0) for m in ("regular", "mmd")}
    ev.budget = 800.0
    ev.distances = {"latent": {p: {m: paired.distances[m][p] for m in ("regular", "mmd")} for p in ("Y10-Y1", "Y10-1P")},
                    "logit": {p: {m: paired.logit[m][p] for m in ("regular", "mmd")} for p in ("Y10-Y1", "Y10-1P")}}
    ev.z_y10 = {"regular": regular["z10"], "mmd": adapted["z10"]}
    ev.boundary = {m: boundary_distances(x["z10"], x["true"], x["w"], x["b"])
                   for m, x in (("regular", regular), ("mmd", adapted))}
    return ev


def _reparametrised(x: dict, shift: np.ndarray | float = 0.0, scale: float = 1.0) -> dict:
    """The same model with latents z → scale · z + shift and the head compensating: W → W / scale,
    b → b − W shift / scale, so every logit is unchanged."""
    w = x["w"] / scale
    return {**x, "w": w, "b": x["b"] - w @ np.broadcast_to(shift, x["z10"].shape[1]),
            **{k: scale * x[k] + shift for k in ("z10", "z1", "z1p")}}


def _d_numbers(finding: dict, versions: tuple[str, ...] = ("raw", "logit", "spread")) -> tuple[list, list]:
    """(the words, the numbers) of (d)'s primary interval and its sensitivity versions."""
    words, numbers = [], []
    for v in versions:
        s = finding["sensitivity"][v] if v != "raw" else {"estimate": finding["effect"], "low": finding["ci_low"],
                                                          "high": finding["ci_high"], "verdict": finding["verdict"]}
        words.append(s["verdict"])
        numbers += [s["estimate"], s["low"], s["high"]]
    return words, numbers


def test_d_is_unchanged_by_a_latent_shift_and_its_sensitivity_versions_by_a_scale():
    pairs = [(_linear_model_latents(10 + s), _linear_model_latents(20 + s)) for s in range(3)]
    for reg, ada in pairs:  # the same attacked images flip under both (the shift keeps them)
        ada["success"] = reg["success"] | (np.arange(len(reg["success"])) % 7 == 0)
    base = finding_d([_evidence_from_latents(r, a, s) for s, (r, a) in enumerate(pairs)])
    # the logits are unchanged by the reparametrisation: check it once
    r, a = pairs[0]
    shifted = _reparametrised(a, shift=np.linspace(-4, 9, a["z10"].shape[1]))
    np.testing.assert_allclose(shifted["z10"] @ shifted["w"].T + shifted["b"], a["z10"] @ a["w"].T + a["b"], atol=1e-9)
    moved = finding_d([_evidence_from_latents(r, _reparametrised(a, shift=np.linspace(-4, 9, a["z10"].shape[1])), s)
                       for s, (r, a) in enumerate(pairs)])
    assert _d_numbers(moved)[0] == _d_numbers(base)[0]
    np.testing.assert_allclose(_d_numbers(moved)[1], _d_numbers(base)[1], rtol=1e-9)
    assert moved["numbers"]["boundary_ratio"]["estimate"] == pytest.approx(base["numbers"]["boundary_ratio"]["estimate"])
    scaled = finding_d([_evidence_from_latents(r, _reparametrised(a, scale=7.0), s) for s, (r, a) in enumerate(pairs)])
    assert scaled["effect"] == pytest.approx(7.0 * base["effect"])  # raw d_E is not scale-free ...
    versions = ("logit", "spread")  # ... its sensitivity versions are
    assert _d_numbers(scaled, versions)[0] == _d_numbers(base, versions)[0]
    np.testing.assert_allclose(_d_numbers(scaled, versions)[1], _d_numbers(base, versions)[1], rtol=1e-9)


def test_the_spread_is_median_distance_to_the_mean_and_ignores_a_shift():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(41, 4))
    by_hand = np.median([np.sqrt(np.sum((row - z.mean(axis=0)) ** 2)) for row in z])
    assert latent_spread(z) == pytest.approx(by_hand)
    assert latent_spread(z + 100.0) == pytest.approx(by_hand) and latent_spread(3 * z) == pytest.approx(3 * by_hand)


def test_boundary_distance_is_the_distance_to_the_nearest_pairwise_hyperplane():
    w = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]])
    b = np.zeros(3)
    z = np.array([[3.0, 0.5]])  # class 0; its boundary with class 1 is x = 0 (3 away), with class 2 the line
    # x − 2y = 0, at distance |3 − 1| / √5
    assert boundary_distances(z, [0], w, b)[0] == pytest.approx(min(3.0, 2.0 / np.sqrt(5.0)))


def test_a_seed_below_the_minimum_is_listed_and_left_out():
    evidence = [_distance_evidence(0, 1.4), _distance_evidence(1, 1.5), _distance_evidence(2, 0.2, n=3)]
    finding = finding_d(evidence)
    assert finding["excluded_seeds"] == [{"seed": 2, "n_images": 3}]
    mean, low, high = _t_interval_by_hand(list(np.log([1.4, 1.5])))
    assert (finding["effect"], finding["ci_low"], finding["ci_high"]) == pytest.approx(
        (np.exp(mean), np.exp(low), np.exp(high)))
    assert "seed 2 (n = 3)" in finding["statement"] and finding["n_images"] == 24
    assert [s["excluded"] for s in finding["per_seed"]] == [False, False, True]


# --------------------------------------------------------------------------------------
# README's verdict tables are the script's output for the committed results
# --------------------------------------------------------------------------------------
def _verdict_table_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "verdict_table.py"
    spec = importlib.util.spec_from_file_location("verdict_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_verdict_tables_equal_the_scripts_output():
    script = _verdict_table_script()
    readme = (script.ROOT / "README.md").read_text(encoding="utf-8")
    found = script.readme_tables(readme)
    made = script.tables()
    assert set(found) == {"one-seed", "study"}
    for name in made:
        assert found[name] == made[name], name


def test_the_tables_print_the_committed_numbers():
    """The script's rows carry the committed findings' numbers and words (not a copy of the README)."""
    import json

    script = _verdict_table_script()
    record = json.loads(script.STUDY_JSON.read_text(encoding="utf-8"))
    table = script.study_table(record)
    for f in record["findings"]:
        row = next(line for line in table.splitlines() if line.startswith(f"| ({f['id']}) ") and "primary" not in line
                   and "sensitivity" not in line and "reported" not in line and "secondary" not in line)
        assert f"**{f['verdict']}**" in row, row
        if f["effect"] is not None and f["id"] != "d":
            assert f"{100 * f['effect']:.1f}".replace("-", "−").lstrip("−") in row, row
        if f.get("magnitude"):
            assert f["magnitude"] in row
