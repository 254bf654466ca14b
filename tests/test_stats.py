"""Tests of deepadversaries.analysis.stats against independent references.

References: hand formulas written here (t-interval, t-interval of log ratios, Clopper–Pearson via
beta quantiles, McNemar as a binomial tail sum), seeded resampling loops written here
(bootstrap), and scipy functions the module does not call for that number
(``scipy.stats.ecdf`` on ``CensoredData`` for Kaplan–Meier).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats as sps

from deepadversaries.analysis import stats
from deepadversaries.errors import OptionError
from deepadversaries.analysis.stats import Interval


def _iv(low: float, high: float, estimate: float | None = None) -> Interval:
    return Interval(estimate if estimate is not None else (low + high) / 2, low, high)


# --------------------------------------------------------------------------------------
# t-interval
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [0.95, 0.8])
def test_t_interval_matches_hand_formula(level: float) -> None:
    values = [0.12, 0.18, 0.09, 0.15, 0.21]
    n = len(values)
    mean = sum(values) / n
    s = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = sps.t.ppf((1 + level) / 2, n - 1) * s / math.sqrt(n)
    iv = stats.t_interval(values, level)
    assert iv.estimate == pytest.approx(mean, abs=1e-15)
    assert iv.low == pytest.approx(mean - half, rel=1e-12)
    assert iv.high == pytest.approx(mean + half, rel=1e-12)
    assert (iv.n, iv.level) == (5, level)
    assert "5 seeds" in iv.method


def test_t_interval_is_cut_to_the_quantitys_range_only_where_it_leaves_it() -> None:
    values = [0.97, 0.999, 0.90]
    mean, half = sum(values) / 3, sps.t.ppf(0.975, 2) * sps.sem(values)
    cut = stats.t_interval(values, bounds=(0.0, 1.0))
    assert mean + half > 1.0 and cut.high == 1.0  # the uncut interval passes 1
    assert cut.low == pytest.approx(mean - half, rel=1e-12)
    assert cut.estimate == pytest.approx(mean) and cut.method.endswith("cut to [0, 1]")
    inside = stats.t_interval([0.4, 0.5, 0.6], bounds=(0.0, 1.0))
    assert inside == stats.t_interval([0.4, 0.5, 0.6])  # nothing to cut: the same interval, same words
    assert math.isnan(stats.t_interval([0.99], bounds=(0.0, 1.0)).high)  # one seed stays undefined


def test_t_interval_degenerate_cases() -> None:
    one = stats.t_interval([0.3])
    assert one.estimate == 0.3 and math.isnan(one.low) and math.isnan(one.high) and not one.defined
    empty = stats.t_interval([])
    assert math.isnan(empty.estimate) and empty.n == 0
    same = stats.t_interval([0.2, 0.2, 0.2])
    assert same.low == same.high == same.estimate == pytest.approx(0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        nearly_same = stats.t_interval([0.3, 0.1 + 0.2, 0.3])  # float noise, s ≈ 3e-17
    assert nearly_same.high - nearly_same.low < 1e-14
    dropped = stats.t_interval([0.1, float("nan"), 0.3])
    assert dropped.n == 2 and dropped.estimate == pytest.approx(0.2)


def test_pool_differences_one_seed_keeps_its_own_interval() -> None:
    own = Interval(0.15, 0.11, 0.19, 0.95, "paired percentile bootstrap over 150 images", 150)
    assert stats.pool_differences([own]) is own
    three = [_iv(0, 1, 0.1), _iv(0, 1, 0.2), _iv(0, 1, 0.6)]
    pooled = stats.pool_differences(three)
    mean, s = 0.3, math.sqrt(((0.1 - 0.3) ** 2 + (0.2 - 0.3) ** 2 + 0.3**2) / 2)
    assert pooled.low == pytest.approx(mean - sps.t.ppf(0.975, 2) * s / math.sqrt(3))
    assert pooled.n == 3


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------
def _loop_percentile_ci(samples: list[np.ndarray], statistic, n_resamples: int, seed: int,
                        level: float = 0.95) -> tuple[float, float, float]:
    """Paired percentile bootstrap by a plain loop: (low, high, bootstrap standard deviation)."""
    rng = np.random.default_rng(seed)
    n = len(samples[0])
    values = []
    for _ in range(n_resamples):
        rows = rng.integers(0, n, n)
        values.append(statistic(*[s[rows] for s in samples]))
    alpha = (1 - level) / 2
    low, high = np.percentile(values, [100 * alpha, 100 * (1 - alpha)])
    return float(low), float(high), float(np.std(values))


def test_bootstrap_percentile_matches_seeded_loop() -> None:
    # independent draws (another seed): the two intervals agree within Monte-Carlo error,
    # about 0.03 bootstrap standard deviations with 20,000 resamples each; allow 0.12.
    x = np.random.default_rng(7).exponential(size=40)
    low, high, sd = _loop_percentile_ci([x], np.mean, 20000, seed=123)
    iv = stats.bootstrap_interval([x], np.mean, n_resamples=20000, seed=5)
    assert iv.estimate == pytest.approx(np.mean(x))
    assert abs(iv.low - low) < 0.12 * sd
    assert abs(iv.high - high) < 0.12 * sd
    assert iv.method.startswith("percentile bootstrap over 40 observations")


def test_median_ratio_matches_paired_seeded_loop() -> None:
    rng = np.random.default_rng(11)
    reference = rng.gamma(3.0, 1.0, size=41)
    other = 1.6 * reference * rng.lognormal(0.0, 0.3, size=41)
    low, high, sd = _loop_percentile_ci([reference, other],
                                        lambda r, o: np.median(o) / np.median(r), 10000, seed=99)
    iv = stats.median_ratio(reference, other, n_resamples=10000, seed=3)
    assert iv.estimate == pytest.approx(np.median(other) / np.median(reference))
    # a median's bootstrap distribution is lumpy: the Monte-Carlo spread of a quantile is
    # about 0.04 bootstrap standard deviations here; allow 0.25 (resampling the two
    # samples independently would widen the interval far more)
    assert abs(iv.low - low) < 0.25 * sd
    assert abs(iv.high - high) < 0.25 * sd


def test_paired_bootstrap_really_pairs() -> None:
    rng = np.random.default_rng(2)
    x = 5.0 * rng.normal(size=200)
    y = x + 0.1 + 0.1 * rng.normal(size=200)

    def diff(a, b, axis=-1):
        return np.mean(b, axis=axis) - np.mean(a, axis=axis)

    paired = stats.bootstrap_interval([x, y], diff, paired=True, n_resamples=2000)
    unpaired = stats.bootstrap_interval([x, y], diff, paired=False, n_resamples=2000)
    assert paired.high - paired.low < 0.05 * (unpaired.high - unpaired.low)
    assert paired.low > 0.0 > unpaired.low


def test_accuracy_difference_pairs_images() -> None:
    rng = np.random.default_rng(4)
    correct = rng.random(300) < 0.7
    same = stats.accuracy_difference(correct, correct, n_resamples=500)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)  # only pairing gives width 0
    better = correct.copy()
    better[np.flatnonzero(~correct)[:30]] = True  # B right on 30 more images, wrong on none
    iv = stats.accuracy_difference(correct, better, n_resamples=2000)
    assert iv.estimate == pytest.approx(30 / 300)
    assert 0.0 < iv.low < 0.1 < iv.high
    assert iv.n == 300 and "images" in iv.method


def test_median_ratio_constructed_data() -> None:
    reference = np.array([1.0, 2.0, 4.0, 8.0, 3.0, 5.0, 7.0])
    iv = stats.median_ratio(reference, 2.5 * reference, n_resamples=500)
    # paired resamples keep other = 2.5 reference on every image: every ratio is 2.5
    assert (iv.estimate, iv.low, iv.high) == pytest.approx((2.5, 2.5, 2.5))


def test_undefined_statistics_and_degenerate_data_do_not_warn_or_raise() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zero = stats.median_ratio([0, 0, 0, 1, 2], [1, 1, 1, 1, 1], n_resamples=200)
        assert zero.estimate == math.inf
        undefined = stats.median_ratio([0, 0, 0, 0], [0, 0, 0, 1], n_resamples=200)
        assert not undefined.defined and "undefined" in undefined.method
        one = stats.median_ratio([2.0], [3.0])
        assert one.estimate == 1.5 and not one.defined
        none = stats.median_ratio([], [])
        assert math.isnan(none.estimate) and none.n == 0
        for method in stats.BOOTSTRAP_METHODS:
            flat = stats.bootstrap_interval([np.full(10, 0.4)], np.mean, method=method, n_resamples=200)
            assert (flat.low, flat.high) == pytest.approx((0.4, 0.4))


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    x = np.random.default_rng(0).normal(size=30)
    first = stats.bootstrap_interval([x], np.mean, n_resamples=500, seed=8)
    assert stats.bootstrap_interval([x], np.mean, n_resamples=500, seed=8) == first
    assert stats.bootstrap_interval([x], np.mean, n_resamples=500, seed=9) != first


def test_unvectorised_statistic_is_accepted() -> None:
    x = np.random.default_rng(1).normal(size=20)
    iv = stats.bootstrap_interval([x], lambda v: float(np.mean(v)), n_resamples=300)
    assert iv.low < iv.estimate < iv.high


# --------------------------------------------------------------------------------------
# pooled log ratios
# --------------------------------------------------------------------------------------
def test_log_ratio_t_interval_is_the_t_interval_of_the_logs() -> None:
    ratios = [0.62, 1.31, 0.48, 0.9, 0.77]
    y = [math.log(r) for r in ratios]
    mean = sum(y) / len(y)
    sd = math.sqrt(sum((v - mean) ** 2 for v in y) / (len(y) - 1))
    half = sps.t.ppf(0.975, len(y) - 1) * sd / math.sqrt(len(y))
    pooled = stats.log_ratio_t_interval(ratios)
    assert (pooled.estimate, pooled.low, pooled.high) == pytest.approx(
        (math.exp(mean), math.exp(mean - half), math.exp(mean + half)), rel=1e-12)
    assert pooled.n == 5 and "5 seeds" in pooled.method
    # each seed one number: a seed's own interval width plays no part
    assert stats.log_ratio_t_interval([0.5, float("nan"), 2.0]).n == 2
    assert not stats.log_ratio_t_interval([1.2]).defined


def test_resampled_spreads_equal_a_loop() -> None:
    rng = np.random.default_rng(5)
    z = rng.normal(size=(30, 4)) * [1, 2, 3, 4] + 7
    index = rng.integers(0, 30, size=(6, 30))
    loop = [np.median(np.linalg.norm(z[i] - z[i].mean(axis=0), axis=1)) for i in index]
    np.testing.assert_allclose(stats._resampled_spreads(z, index), loop, rtol=1e-10)


def test_spread_normalised_ratio_estimate_and_invariance() -> None:
    rng = np.random.default_rng(6)
    z_a, z_b = rng.normal(size=(80, 5)), 3 * rng.normal(size=(80, 5))
    flipped = np.zeros(80, bool)
    flipped[rng.choice(80, 12, replace=False)] = True
    d_a, d_b = rng.gamma(3, 1, 12), rng.gamma(3, 2, 12)
    spread = {k: np.median(np.linalg.norm(z - z.mean(axis=0), axis=1)) for k, z in (("a", z_a), ("b", z_b))}
    iv = stats.spread_normalised_ratio(d_a, d_b, z_a, z_b, flipped, n_resamples=999)
    assert iv.estimate == pytest.approx((np.median(d_b) / spread["b"]) / (np.median(d_a) / spread["a"]))
    assert iv.low < iv.estimate < iv.high and iv.n == 12
    # a shift of B's latents changes nothing; a scale of B's latents and distances changes nothing
    same = stats.spread_normalised_ratio(d_a, 5 * d_b, z_a, 5 * z_b - 11, flipped, n_resamples=999)
    assert (same.estimate, same.low, same.high) == pytest.approx((iv.estimate, iv.low, iv.high), rel=1e-9)
    one = stats.spread_normalised_ratio(d_a[:1], d_b[:1], z_a, z_b, np.arange(80) == 0, n_resamples=99)
    assert math.isfinite(one.estimate) and not one.defined


def test_cluster_bootstrap_estimate_is_the_mean_of_the_seed_means() -> None:
    rng = np.random.default_rng(7)
    galaxies = [rng.choice(50, 30, replace=False) for _ in range(4)]
    differences = [rng.choice([-1.0, 0.0, 0.0, 1.0], 30) for _ in range(4)]
    iv = stats.cluster_bootstrap_difference(galaxies, differences, n_resamples=2000, seed=3)
    assert iv.estimate == pytest.approx(np.mean([d.mean() for d in differences]))
    assert iv.low <= iv.estimate <= iv.high and iv.n == 4
    again = stats.cluster_bootstrap_difference(galaxies, differences, n_resamples=2000, seed=3)
    assert (again.low, again.high) == (iv.low, iv.high)
    # seeds that all agree on every galaxy leave only the galaxies' variation: the same interval as a
    # galaxy bootstrap of one seed's mean, which a loop written here reproduces in distribution
    one = stats.cluster_bootstrap_difference([galaxies[0]] * 3, [differences[0]] * 3, n_resamples=4000, seed=1)
    loop_rng = np.random.default_rng(11)
    loop = [differences[0][loop_rng.integers(0, 30, 30)].mean() for _ in range(4000)]
    assert one.estimate == pytest.approx(differences[0].mean())
    assert (one.low, one.high) == pytest.approx(tuple(np.quantile(loop, [0.025, 0.975])), abs=0.05)


# --------------------------------------------------------------------------------------
# McNemar and the flip-rate difference
# --------------------------------------------------------------------------------------
def _hand_mcnemar(b: int, c: int) -> float:
    m = b + c
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(b, c) + 1)) / 2**m
    return min(1.0, 2 * tail)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (5, 0), (9, 3), (3, 9), (7, 7), (20, 6), (1, 12)])
def test_mcnemar_matches_binomial_on_discordant_pairs(b: int, c: int) -> None:
    p = stats.mcnemar_exact(b, c)
    assert p == pytest.approx(_hand_mcnemar(b, c), rel=1e-9)
    if b + c:
        assert p == pytest.approx(sps.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)  # b, not c
    else:
        assert p == 1.0


def _flips(both: int, a_only: int, b_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * both + [True] * a_only + [False] * b_only + [False] * neither)
    b = np.array([True] * both + [False] * a_only + [True] * b_only + [False] * neither)
    return a, b


def test_paired_rate_difference_counts_and_hand_interval() -> None:
    a, b = _flips(both=40, a_only=12, b_only=3, neither=45)
    result = stats.paired_rate_difference(a, b)
    assert dict(result.counts) == {"n": 100, "b": 12, "c": 3}
    assert result.interval.estimate == pytest.approx(np.mean(b) - np.mean(a))
    assert result.p_value == pytest.approx(_hand_mcnemar(12, 3))
    # Clopper-Pearson from beta quantiles, mapped by (m/n)(2p - 1)
    m, c, n = 15, 3, 100
    p_low, p_high = sps.beta.ppf(0.025, c, m - c + 1), sps.beta.ppf(0.975, c + 1, m - c)
    assert result.interval.low == pytest.approx(m / n * (2 * p_low - 1), rel=1e-9)
    assert result.interval.high == pytest.approx(m / n * (2 * p_high - 1), rel=1e-9)
    assert result.to_json()["counts"] == {"n": 100, "b": 12, "c": 3}


def test_exact_interval_excludes_zero_exactly_when_mcnemar_rejects() -> None:
    checked = 0
    for b in range(22):
        for c in range(22):
            if b + c == 0:
                continue
            a_flips, b_flips = _flips(both=10, a_only=b, b_only=c, neither=20)
            result = stats.paired_rate_difference(a_flips, b_flips)
            excludes_zero = result.interval.low > 0 or result.interval.high < 0
            assert excludes_zero == (_hand_mcnemar(b, c) < 0.05), (b, c)
            checked += excludes_zero
    assert checked > 100  # both outcomes were exercised


def test_no_discordant_pairs_is_undefined_not_certain() -> None:
    a, b = _flips(both=30, a_only=0, b_only=0, neither=20)
    result = stats.paired_rate_difference(a, b)
    assert result.interval.estimate == 0.0 and not result.interval.defined
    assert result.p_value == 1.0
    assert stats.verdict(result.interval, "e") == "inconclusive"


def test_pooled_rate_difference_is_mcnemar_on_summed_pairs() -> None:
    tables = [(30, 9, 2, 59), (25, 6, 4, 65), (35, 11, 1, 53)]
    per_seed = [stats.paired_flips(*_flips(*t)) for t in tables]
    pooled = stats.pooled_rate_difference(per_seed)
    concatenated = [np.concatenate(parts) for parts in zip(*[_flips(*t) for t in tables], strict=True)]
    direct = stats.paired_rate_difference(*concatenated)
    assert pooled.interval.estimate == pytest.approx((2 + 4 + 1 - 9 - 6 - 11) / 300)
    assert (pooled.interval.low, pooled.interval.high) == pytest.approx((direct.interval.low, direct.interval.high))
    assert pooled.p_value == pytest.approx(_hand_mcnemar(26, 7))
    assert pooled.counts["seeds"] == 3 and "3 seeds" in pooled.test


# --------------------------------------------------------------------------------------
# censored time to flip
# --------------------------------------------------------------------------------------
# integer query counts with ties between flips, and censoring both at the budget (80)
# and earlier (an attack stopped early), including a censoring tied with a flip (time 12)
TIMES = np.array([3, 3, 5, 7, 7, 7, 12, 12, 20, 20, 31, 44, 44, 50, 80, 80, 80, 63, 25, 12], float)
FLIPPED = np.array([1, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 1, 0, 1, 0, 0, 0, 0, 1, 1], bool)


def test_success_curve_matches_scipy_ecdf() -> None:
    t, fraction = stats.success_curve(TIMES, FLIPPED)
    sf = sps.ecdf(sps.CensoredData.right_censored(TIMES, ~FLIPPED)).sf
    assert np.array_equal(t, np.unique(TIMES[FLIPPED]))
    np.testing.assert_allclose(1 - fraction, sf.evaluate(t), rtol=1e-12)
    assert np.all(np.diff(fraction) > 0)


def test_success_curve_without_flips_is_empty() -> None:
    t, fraction = stats.success_curve([80, 80, 80], [False, False, False])
    assert t.size == 0 and fraction.size == 0


def test_restricted_mean_equals_mean_of_clipped_times_when_censored_at_budget() -> None:
    rng = np.random.default_rng(3)
    times = rng.integers(1, 120, size=60).astype(float)
    flipped = times < 80
    times[~flipped] = 80  # never flipped: censored at the budget
    expected = sum(min(t, 80.0) for t in times) / len(times)
    assert stats.restricted_mean(times, flipped, 80) == pytest.approx(expected, rel=1e-12)
    assert stats.restricted_mean(times, flipped, 40) == pytest.approx(np.mean(np.minimum(times, 40)), rel=1e-12)


@pytest.mark.parametrize("horizon", [80, 30, 100])
def test_restricted_mean_integrates_scipy_survival(horizon: int) -> None:
    sf = sps.ecdf(sps.CensoredData.right_censored(TIMES, ~FLIPPED)).sf
    # all jumps are at integers: the midpoint rule on unit steps is exact
    expected = float(np.sum(sf.evaluate(np.arange(horizon) + 0.5)))
    assert stats.restricted_mean(TIMES, FLIPPED, horizon) == pytest.approx(expected, rel=1e-12)


def test_censored_difference_estimate_interval_and_logrank() -> None:
    rng = np.random.default_rng(5)
    t_a = rng.integers(1, 60, size=80).astype(float)
    t_b = t_a + rng.integers(5, 30, size=80)
    e_a, e_b = t_a < 80, t_b < 80
    t_a[~e_a], t_b[~e_b] = 80, 80
    result = stats.censored_difference(t_a, e_a, t_b, e_b, 80, n_resamples=1000)
    expected = np.mean(np.minimum(t_b, 80)) - np.mean(np.minimum(t_a, 80))
    assert result.interval.estimate == pytest.approx(expected, rel=1e-12)
    assert 0 < result.interval.low < expected < result.interval.high
    assert 0.0 <= result.p_value < 0.05 and "log-rank" in result.test
    assert result.counts == {"n_a": 80, "flipped_a": int(e_a.sum()), "n_b": 80, "flipped_b": int(e_b.sum())}
    same = stats.censored_difference(t_a, e_a, t_a, e_a, 80, n_resamples=300)
    assert (same.interval.low, same.interval.high) == (0.0, 0.0)  # paired: every resample ties
    assert same.p_value == pytest.approx(1.0)


def test_censored_difference_unpaired_resamples_each_model() -> None:
    t_b = np.array([30, 40, 80, 80, 55, 60, 80], float)
    result = stats.censored_difference(TIMES, FLIPPED, t_b, t_b < 80, 80, paired=False, n_resamples=500)
    expected = stats.restricted_mean(t_b, t_b < 80, 80) - stats.restricted_mean(TIMES, FLIPPED, 80)
    assert result.interval.estimate == pytest.approx(expected)
    assert result.interval.low < expected < result.interval.high
    assert result.interval.n == len(TIMES) + len(t_b)


def test_censored_difference_without_flips_has_undefined_logrank() -> None:
    budget = np.full(10, 80.0)
    result = stats.censored_difference(budget, np.zeros(10, bool), budget, np.zeros(10, bool), 80,
                                       n_resamples=100)
    assert math.isnan(result.p_value) and result.to_json()["p_value"] is None
    assert result.interval.estimate == 0.0


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("finding,low,high,word", [
    # SPEC 10: held when the whole interval lies on the claimed side of no effect, contradicted when
    # it lies wholly on the other side; for (c) the bound is the 3-point non-inferiority margin
    ("a", -0.25, -0.12, "held"),             # a loss on Y1 (Y1 − Y10 below 0)
    ("a", -0.2, 0.0, "inconclusive"),         # touching no effect
    ("a", 0.01, 0.2, "contradicted"),
    ("b", 0.001, 0.09, "held"),               # any gain: the old 5-point threshold is gone
    ("b", -0.01, 0.09, "inconclusive"),
    ("b", -0.08, -0.02, "contradicted"),
    ("c", -0.02, 0.03, "held"),               # adapted − regular Y10 above −3 points
    ("c", -0.05, 0.0, "inconclusive"),
    ("c", -0.08, -0.031, "contradicted"),
    ("d", 1.01, 1.6, "held"),
    ("d", 1.0, 1.6, "inconclusive"),
    ("d", 0.6, 0.95, "contradicted"),
    ("e", -0.2, -0.01, "held"),
    ("e", -0.1, 0.0, "inconclusive"),
    ("e", 0.02, 0.1, "contradicted"),
])
def test_verdict_rule_on_constructed_intervals(finding: str, low: float, high: float, word: str) -> None:
    assert stats.verdict(_iv(low, high), finding) == word


def test_verdict_with_undefined_or_infinite_bounds() -> None:
    assert stats.verdict(Interval(0.2, float("nan"), float("nan")), "a") == "inconclusive"
    assert stats.verdict(Interval(float("inf"), 1.3, float("inf")), "d") == "held"


def test_verdict_accepts_a_rule() -> None:
    rule = stats.Rule("less", -0.5)
    assert stats.verdict(_iv(-0.9, -0.6), rule) == "held"
    assert stats.verdict(_iv(-0.4, 0.6), rule) == "contradicted"
    assert stats.verdict(_iv(-0.9, -0.5), rule) == "inconclusive"


@pytest.mark.parametrize("finding,low,high,paper,words", [
    # the paper's number inside the interval / further from no effect than it / nearer to no effect
    ("b", 0.05, 0.2, 0.09, "consistent with the paper's"),
    ("b", 0.01, 0.05, 0.09, "smaller than the paper's"),
    ("b", 0.12, 0.3, 0.09, "larger than the paper's"),
    ("b", -0.2, -0.1, 0.09, "smaller than the paper's"),     # the other direction altogether
    ("a", -0.4, -0.3, -0.22, "larger than the paper's"),      # a larger loss than the paper's
    ("a", -0.1, -0.05, -0.22, "smaller than the paper's"),
    ("d", 0.8, 1.5, 1.3, "consistent with the paper's"),
    ("d", 1.5, 2.0, 1.3, "larger than the paper's"),
    ("d", 0.5, 1.2, 1.3, "smaller than the paper's"),
    ("d", 1.5, 2.5, 2.2, "consistent with the paper's"),
])
def test_magnitude_words(finding: str, low: float, high: float, paper: float, words: str) -> None:
    assert stats.magnitude(_iv(low, high), paper, finding) == words


def test_magnitude_without_a_paper_number_is_none() -> None:
    assert stats.magnitude(_iv(-0.1, -0.02), None, "e") is None


# --------------------------------------------------------------------------------------
# results as JSON, bad arguments
# --------------------------------------------------------------------------------------
def test_interval_to_json_is_plain() -> None:
    data = Interval(0.5, float("nan"), 0.7, 0.95, "t-interval over 1 seed", 1).to_json()
    assert data == {"estimate": 0.5, "low": None, "high": 0.7, "level": 0.95,
                    "method": "t-interval over 1 seed", "n": 1}
    assert all(type(v) in (float, int, str, type(None)) for v in data.values())


@pytest.mark.parametrize("call", [
    lambda: stats.accuracy_difference([True, False], [True]),
    lambda: stats.median_ratio([1.0, 2.0], [1.0]),
    lambda: stats.paired_rate_difference([True], [True, False]),
    lambda: stats.censored_difference([1, 2], [True, True], [1], [True], 5),
    lambda: stats.success_curve([1, 2, 3], [True, False]),
    lambda: stats.bootstrap_interval([[1.0, 2.0], [1.0]], np.mean),
    lambda: stats.t_interval([0.1, 0.2], level=0.0),
    lambda: stats.t_interval([0.1, 0.2], level=1.0),
    lambda: stats.accuracy_difference([True, False], [True, True], level=1.5),
    lambda: stats.log_ratio_t_interval([], level=-0.1),
    lambda: stats.spread_normalised_ratio([1.0], [1.0], np.zeros((3, 2)), np.zeros((3, 2)), [True, True, False]),
    lambda: stats.cluster_bootstrap_difference([[1, 2]], [[0.0]]),
    lambda: stats.latent_spread(np.zeros(3)),
    lambda: stats.paired_rate_difference([True], [False], level=95),
    lambda: stats.bootstrap_interval([[1.0, 2.0]], np.mean, method="studentized"),
    lambda: stats.bootstrap_interval([[1.0, 2.0]], np.mean, n_resamples=0),
    lambda: stats.accuracy_difference([0.5, 1.0], [1.0, 1.0]),
    lambda: stats.median_ratio([[1.0, 2.0]], [[1.0, 2.0]]),
    lambda: stats.restricted_mean([1.0, -2.0], [True, True], 5),
    lambda: stats.restricted_mean([1.0, 2.0], [True, True], 0),
    lambda: stats.mcnemar_exact(-1, 3),
    lambda: stats.PairedFlips(n=3, b=2, c=2),
    lambda: stats.verdict(_iv(0, 1), "f"),
    lambda: stats.Rule("sideways", 0.1, 0.0),
])
def test_bad_arguments_raise_option_error(call) -> None:
    with pytest.raises(OptionError):
        call()
