"""Statistics of the findings: confidence intervals, paired tests and the verdict rule.

Every finding of the paper (SPEC 10) is reported as an effect with a 95 % confidence
interval, the numbers of seeds and images behind it, and one word: *held*, *contradicted*
or *inconclusive* (:func:`verdict`). This module computes those numbers from arrays; it
reads no files and knows nothing about models. Every comparison is **B relative to A**:
a difference is ``B − A`` and a ratio ``B / A``.

Which interval each finding uses, and why
-----------------------------------------
(a) accuracy drop Y10 → Y1 of the regular model (A = regular on Y1, B = regular on Y10),
(b) Y1 gain of MMD (A = regular on Y1, B = MMD on Y1),
(c) Y10 cost of MMD (A = MMD on Y10, B = regular on Y10):
    per seed, :func:`accuracy_difference` — a *paired* percentile bootstrap over the test
    images, because the two accuracies are measured on the same galaxies (Y10 and Y1 test
    sets hold the same galaxies in the same order; both models see the same images), so
    resampling image indices jointly keeps the correlation that makes the difference
    precise. Across seeds, :func:`pool_differences` — a t-interval of the per-seed
    differences (the seed-to-seed spread is what a new training run would meet; the
    per-seed bootstrap intervals are shown beside it). One seed: its own bootstrap interval.
(d) ratio DA / regular of the median d_E(Y10–1P) on the images flipped under both models
    (A = regular, B = DA), raw and on the common scale (distances divided by each model's
    median ‖z(Y10)‖; the verdict uses the common scale): per seed, :func:`median_ratio` —
    a paired percentile bootstrap over images (a median has no simple standard error, and
    the same images enter both medians). Across seeds, :func:`pool_log_ratios` — a
    random-effects meta-analysis of the log ratios with a Hartung–Knapp t-interval, which
    keeps its coverage with the 3–5 seeds a study affords.
(e) attack success (A = regular, B = MMD), on the images attacked under both models:
    the flip-rate difference with the exact McNemar test and its exact conditional interval
    (:func:`paired_rate_difference`; across seeds :func:`pooled_rate_difference` sums the
    discordant pairs, the stratified McNemar test), and the time to flip (queries or
    generations), right-censored at the attack budget for images never flipped:
    Kaplan–Meier (:func:`success_curve`), the restricted mean time to flip
    (:func:`restricted_mean`) and its paired bootstrap difference with a log-rank p-value
    (:func:`censored_difference`). Across seeds, per-seed RMST differences pool with
    :func:`pool_differences`. The two parts combine with :func:`combine_verdicts`.

Contracts
---------
- Deterministic: every resampling draws from ``numpy.random.default_rng(seed)`` handed to
  ``scipy.stats.bootstrap``; the same arguments give the same interval, bit for bit.
- Undefined is NaN, never an exception: an interval of one observation, of no images, or
  of a statistic undefined on some resamples has NaN bounds (its verdict is
  *inconclusive*); scipy's warnings about such cases never reach the user.
- Bad arguments (arrays of different lengths, a level outside (0, 1), an unknown method)
  raise :class:`~deepadversaries.errors.OptionError`.
- Pure maths: numpy and scipy only.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy import stats

from .errors import OptionError, check_choice

DEFAULT_LEVEL = 0.95
DEFAULT_RESAMPLES = 9999
BOOTSTRAP_METHODS = ("percentile", "basic", "bca")
VERDICTS = ("held", "contradicted", "inconclusive")
DIRECTIONS = ("greater", "less")
#: accuracies are fractions of n: compare bounds with thresholds without float noise
TOLERANCE = 1e-9
#: the most resampled values one vectorised bootstrap call holds (memory bound)
_BATCH_ELEMENTS = 1_000_000

NAN = float("nan")


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def _json_float(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


@dataclass(frozen=True)
class Interval:
    """An effect with its confidence interval.

    Attributes:
        estimate: the effect measured on the data (a difference, a ratio, ...).
        low: lower bound of the interval (NaN: undefined).
        high: upper bound of the interval (NaN: undefined).
        level: confidence level [default: 0.95].
        method: how the interval was made, in a few words
            (e.g. ``"t-interval over 5 seeds"``).
        n: what the interval rests on: images for a per-image interval, seeds for one
            pooled across seeds.
    """

    estimate: float
    low: float
    high: float
    level: float = DEFAULT_LEVEL
    method: str = ""
    n: int = 0

    @property
    def defined(self) -> bool:
        """True when both bounds are numbers (not NaN)."""
        return not (math.isnan(self.low) or math.isnan(self.high))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON values: floats (NaN → ``None``), the method string and ``n``."""
        return {"estimate": _json_float(self.estimate), "low": _json_float(self.low),
                "high": _json_float(self.high), "level": float(self.level),
                "method": self.method, "n": int(self.n)}


@dataclass(frozen=True)
class Comparison:
    """An interval with a test's p-value beside it.

    Attributes:
        interval: the effect and its confidence interval.
        p_value: the test's two-sided p-value (NaN: undefined).
        test: the test, in a few words (e.g. ``"exact McNemar on 12 discordant pairs"``).
        counts: the counts behind it (e.g. ``{"n": 150, "b": 9, "c": 3}``).
    """

    interval: Interval
    p_value: float
    test: str
    counts: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The interval's JSON with ``p_value``, ``test`` and ``counts`` added."""
        return {**self.interval.to_json(), "p_value": _json_float(self.p_value),
                "test": self.test, "counts": {k: int(v) for k, v in self.counts.items()}}


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------
def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise OptionError(f"confidence level must lie strictly between 0 and 1, got {level}")
    return level


def _as_vector(values: Any, what: str, dtype: Any = np.float64) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise OptionError(f"{what} must be a 1-D array, got shape {array.shape}")
    if dtype is bool:
        if array.dtype != bool and array.size and not np.isin(array, (0, 1)).all():
            raise OptionError(f"{what} must hold booleans (or 0/1)")
        return array.astype(bool)
    try:
        return array.astype(dtype)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{what} must hold numbers: {exc}") from None


def _as_sample(values: Any, what: str) -> np.ndarray:
    """A 1-D array of numbers or booleans, its dtype kept (index arrays stay integers)."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise OptionError(f"{what} must be a 1-D array, got shape {array.shape}")
    if array.dtype.kind not in "biuf":
        raise OptionError(f"{what} must hold numbers or booleans, got dtype {array.dtype}")
    return array


def _check_same_length(arrays: Sequence[np.ndarray], what: str) -> int:
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise OptionError(f"{what} must have the same length, got {[len(a) for a in arrays]}")
    return lengths.pop() if lengths else 0


def _check_count(value: Any, what: str) -> int:
    whole = isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or value < 0:
        raise OptionError(f"{what} must be a non-negative whole number, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------------------
# across seeds: t-interval
# --------------------------------------------------------------------------------------
def t_interval(values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Student-t interval of a mean: mean ± t_{n−1} · s / √n (``scipy.stats.t.interval``).

    Args:
        values: the per-seed effects, shape (n,). NaN values (a seed whose effect is
            undefined) are left out and ``n`` counts the others.
        level: confidence level, in (0, 1) [default: 0.95].

    Returns:
        The mean with its interval (s with ddof = 1); NaN bounds for fewer than two
        values, and a zero-width interval when all values are equal (s = 0).
    """
    level = _check_level(level)
    v = _as_vector(values, "values")
    v = v[~np.isnan(v)]
    n = len(v)
    method = f"t-interval over {_count(n, 'seed')}"
    if n == 0:
        return Interval(NAN, NAN, NAN, level, method, 0)
    mean = float(np.mean(v))
    if n == 1:
        return Interval(mean, NAN, NAN, level, method, 1)
    if np.all(v == v[0]):
        return Interval(mean, mean, mean, level, method, n)
    standard_error = float(np.std(v, ddof=1)) / math.sqrt(n)
    low, high = stats.t.interval(level, n - 1, loc=mean, scale=standard_error)
    return Interval(mean, float(low), float(high), level, method, n)


def pool_differences(per_seed: Sequence[Interval], level: float = DEFAULT_LEVEL) -> Interval:
    """Pool per-seed differences (accuracy or RMST differences) across seeds by a t-interval.

    Args:
        per_seed: one interval per seed; only their estimates enter.
        level: confidence level, in (0, 1) [default: 0.95].

    Returns:
        :func:`t_interval` of the per-seed estimates; with one seed, that seed's own
        (per-image) interval, so one run never claims more than it shows.
    """
    level = _check_level(level)
    if len(per_seed) == 1:
        return per_seed[0]
    return t_interval([iv.estimate for iv in per_seed], level)


# --------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------
def _takes_axis(statistic: Callable[..., Any]) -> bool:
    try:
        return "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):
        return False


def bootstrap_interval(samples: Sequence[Any], statistic: Callable[..., Any], *, paired: bool = True,
                       level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                       seed: int = 0, method: str = "percentile",
                       unit: str = "observations") -> Interval:
    """Bootstrap confidence interval of ``statistic(*samples)`` (``scipy.stats.bootstrap``).

    Resampling: with ``paired=True`` one set of indices, drawn with replacement from
    0..n−1, picks the same observations from every sample (the samples are columns of one
    table of n rows, e.g. per-image results of two models); with ``paired=False`` each
    sample is resampled on its own. The interval is the ``method`` interval of the
    ``n_resamples`` values of the statistic.

    Args:
        samples: the 1-D samples, each shape (n,) (all the same n when paired).
        statistic: ``statistic(*samples)`` → a number. If it takes an ``axis`` keyword it
            must be vectorised (``statistic(*samples, axis=-1)`` on arrays of shape
            (..., n)); it may return NaN or ±inf where it is undefined (warnings are
            silenced).
        paired: resample the samples' rows jointly [default: True].
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples, ≥ 1 [default: 9999].
        seed: seed of ``numpy.random.default_rng`` [default: 0].
        method: ``"percentile"``, ``"basic"`` or ``"bca"`` [default: "percentile"].
        unit: what the observations are, for the method string [default: "observations"].

    Returns:
        The statistic on the data with its interval; ``n`` is the number of rows (paired)
        or of all observations (unpaired). With no observations everything is NaN; with a
        sample of one observation the bounds are NaN; when every resample gives the same
        value the interval has zero width; when the statistic is undefined (NaN) on some
        resamples the bounds are NaN and the method string says on how many.
    """
    level = _check_level(level)
    method = check_choice(method, BOOTSTRAP_METHODS, "bootstrap method")
    n_resamples = _check_resamples(n_resamples)
    if len(samples) == 0:
        raise OptionError("bootstrap_interval needs at least one sample")
    data = [_as_sample(s, f"sample {i}") for i, s in enumerate(samples)]
    sizes = [len(s) for s in data]
    n, how = _bootstrap_description(data, paired, method, n_resamples, unit)
    evaluate = _QuietStatistic(statistic)
    if min(sizes) == 0:
        return Interval(NAN, NAN, NAN, level, how, n)
    estimate = float(evaluate(*data))
    if min(sizes) < 2:
        return Interval(estimate, NAN, NAN, level, how, n)
    distribution, low, high = _resample(data, evaluate, paired=paired, level=level, n_resamples=n_resamples,
                                        seed=seed, method=method)
    return _bootstrap_result(estimate, distribution, low, high, level, how, n)


def _check_resamples(n_resamples: Any) -> int:
    """The number of bootstrap resamples as an int, or :class:`OptionError` unless a whole number ≥ 1."""
    n_resamples = _check_count(n_resamples, "n_resamples")
    if n_resamples < 1:
        raise OptionError("n_resamples must be at least 1")
    return n_resamples


def _bootstrap_description(data: list[np.ndarray], paired: bool, method: str, n_resamples: int,
                           unit: str) -> tuple[int, str]:
    """(n, the method string): rows when paired (same lengths checked), all observations when not."""
    sizes = [len(s) for s in data]
    if paired:
        n = _check_same_length(data, "paired samples")
        how = f"{'paired ' if len(data) > 1 else ''}{method} bootstrap over {n} {unit}"
    else:
        n = sum(sizes)
        how = f"{method} bootstrap of independent samples ({' and '.join(map(str, sizes))} {unit})"
    return n, how + f", {n_resamples} resamples"


class _QuietStatistic:
    """A statistic evaluated with numpy's floating-point warnings off, vectorised when it takes ``axis``."""

    def __init__(self, statistic: Callable[..., Any]) -> None:
        self.statistic = statistic
        self.vectorised = _takes_axis(statistic)

    def __call__(self, *arrays: np.ndarray, axis: int = -1) -> Any:
        """``statistic(*arrays, axis=axis)`` when vectorised, else ``statistic(*arrays)``."""
        with np.errstate(all="ignore"):
            return self.statistic(*arrays, axis=axis) if self.vectorised else self.statistic(*arrays)


def _resample(data: list[np.ndarray], evaluate: _QuietStatistic, *, paired: bool, level: float, n_resamples: int,
              seed: int, method: str) -> tuple[np.ndarray, float, float]:
    """``scipy.stats.bootstrap`` with its warnings silenced: (the resampled statistics, low, high)."""
    batch = max(1, _BATCH_ELEMENTS // max(len(s) for s in data))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(tuple(data), evaluate, n_resamples=n_resamples, batch=batch,
                                 vectorized=evaluate.vectorised, paired=paired, confidence_level=level,
                                 method=method, rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return np.asarray(result.bootstrap_distribution, dtype=np.float64), low, high


def _bootstrap_result(estimate: float, distribution: np.ndarray, low: float, high: float, level: float, how: str,
                      n: int) -> Interval:
    """The interval: NaN bounds when some resample is undefined, zero width when every resample agrees."""
    undefined = int(np.isnan(distribution).sum())
    if undefined:
        return Interval(estimate, NAN, NAN, level, f"{how}; undefined on {undefined} of them", n)
    if (math.isnan(low) or math.isnan(high)) and np.all(distribution == distribution[0]):
        low = high = float(distribution[0])  # degenerate: every resample agrees (BCa gives NaN)
    return Interval(estimate, low, high, level, how, n)


# --------------------------------------------------------------------------------------
# (a)-(c): accuracy differences
# --------------------------------------------------------------------------------------
def _accuracy_difference(correct_a: np.ndarray, correct_b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(correct_b, axis=axis) - np.mean(correct_a, axis=axis)


def accuracy_difference(correct_a: Sequence[bool] | np.ndarray, correct_b: Sequence[bool] | np.ndarray, *,
                        level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                        seed: int = 0) -> Interval:
    """accuracy(B) − accuracy(A) on the same images, with a paired percentile bootstrap.

    Args:
        correct_a: per image, whether A classified it correctly, bool shape (n,).
        correct_b: the same for B, on the same images in the same order, bool shape (n,).
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples [default: 9999].
        seed: seed of the resampling [default: 0].

    Returns:
        mean(correct_b) − mean(correct_a) (a fraction, not points) with its interval;
        image indices are resampled jointly for A and B.
    """
    a = _as_vector(correct_a, "correct_a", bool).astype(np.float64)
    b = _as_vector(correct_b, "correct_b", bool).astype(np.float64)
    _check_same_length([a, b], "correct_a and correct_b")
    return bootstrap_interval((a, b), _accuracy_difference, paired=True, level=level,
                              n_resamples=n_resamples, seed=seed, unit="images")


# --------------------------------------------------------------------------------------
# (d): ratio of medians, pooled on the log scale
# --------------------------------------------------------------------------------------
def _median_ratio(reference: np.ndarray, other: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.median(other, axis=axis) / np.median(reference, axis=axis)


def median_ratio(reference: Sequence[float] | np.ndarray, other: Sequence[float] | np.ndarray, *,
                 level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> Interval:
    """median(other) / median(reference) on paired values, with a paired percentile bootstrap.

    Args:
        reference: per image, A's value (e.g. d_E(Y10–1P) of the regular model), shape (n,).
        other: per image, B's value on the same images in the same order, shape (n,).
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples [default: 9999].
        seed: seed of the resampling [default: 0].

    Returns:
        The ratio with its interval; the same image indices are resampled for both. A
        resample whose reference median is 0 gives an infinite ratio (or an undefined one,
        0/0, which makes the bounds NaN); it never raises.
    """
    ref = _as_vector(reference, "reference")
    oth = _as_vector(other, "other")
    _check_same_length([ref, oth], "reference and other")
    return bootstrap_interval((ref, oth), _median_ratio, paired=True, level=level,
                              n_resamples=n_resamples, seed=seed, unit="images")


def pool_log_ratios(per_seed: Sequence[Interval], level: float = DEFAULT_LEVEL) -> Interval:
    """Pool per-seed ratios on the log scale: random-effects meta-analysis, Hartung–Knapp CI.

    For seed i: y_i = log(estimate_i) and, from its own interval at level ℓ_i,
    SE_i = (log high_i − log low_i) / (2 z_{(1+ℓ_i)/2}). With w_i = 1/SE_i², the
    DerSimonian–Laird between-seed variance is τ² = max(0, (Q − (k−1)) / (Σw − Σw²/Σw)),
    Q = Σ w_i (y_i − ȳ_w)². The pooled log ratio is μ = Σ w*_i y_i / Σ w*_i with
    w*_i = 1/(SE_i² + τ²), and its interval μ ± t_{k−1,(1+level)/2} √(q* / Σ w*_i) with
    q* = max(1, Σ w*_i (y_i − μ)² / (k−1)). The t quantile with k − 1 degrees of freedom
    (Hartung & Knapp 2001, Stat. Med. 20, 3875; Sidik & Jonkman 2002, Stat. Med. 21,
    3153) keeps the coverage with few seeds, and the floor q* ≥ 1 (Knapp & Hartung 2003,
    Stat. Med. 22, 2693; Röver, Knapp & Friede 2015, BMC Med. Res. Methodol. 15, 99)
    stops very similar seeds from giving an interval narrower than their own ones.
    DerSimonian & Laird 1986, Control. Clin. Trials 7, 177.

    Args:
        per_seed: the per-seed ratio intervals (e.g. from :func:`median_ratio`). Seeds
            whose estimate or bounds are not positive finite numbers, or whose interval
            has zero width, carry no usable weight and are left out.
        level: confidence level of the pooled interval, in (0, 1) [default: 0.95].

    Returns:
        The pooled ratio exp(μ) with its interval; ``n`` is the number of seeds pooled.
        One usable seed: that seed's own interval. None: NaN.
    """
    level = _check_level(level)
    usable = [iv for iv in per_seed
              if all(math.isfinite(x) and x > 0 for x in (iv.estimate, iv.low, iv.high)) and iv.high > iv.low]
    k = len(usable)
    if k == 1:
        return usable[0]
    method = f"random-effects log-ratio pool (DerSimonian–Laird, Hartung–Knapp t) over {_count(k, 'seed')}"
    if k < len(per_seed):
        method += f" ({len(per_seed) - k} of {len(per_seed)} left out: no usable interval)"
    if k == 0:
        return Interval(NAN, NAN, NAN, level, method, 0)
    y = np.log([iv.estimate for iv in usable])
    z = stats.norm.ppf([(1 + iv.level) / 2 for iv in usable])
    se = (np.log([iv.high for iv in usable]) - np.log([iv.low for iv in usable])) / (2 * z)
    w = 1 / se**2
    y_fixed = np.sum(w * y) / np.sum(w)
    q_stat = np.sum(w * (y - y_fixed) ** 2)
    tau2 = max(0.0, (q_stat - (k - 1)) / (np.sum(w) - np.sum(w**2) / np.sum(w)))
    w_random = 1 / (se**2 + tau2)
    mu = np.sum(w_random * y) / np.sum(w_random)
    q_hk = max(1.0, np.sum(w_random * (y - mu) ** 2) / (k - 1))
    half = stats.t.ppf((1 + level) / 2, k - 1) * math.sqrt(q_hk / np.sum(w_random))
    return Interval(math.exp(mu), math.exp(mu - half), math.exp(mu + half), level, method, k)


# --------------------------------------------------------------------------------------
# (e): flip rates, exact McNemar
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairedFlips:
    """The 2 × 2 table of paired attack outcomes, reduced to what McNemar needs.

    Attributes:
        n: images attacked under both A and B.
        b: images flipped under A only.
        c: images flipped under B only.
    """

    n: int
    b: int
    c: int

    def __post_init__(self) -> None:
        for name in ("n", "b", "c"):
            _check_count(getattr(self, name), name)
        if self.b + self.c > self.n:
            raise OptionError(f"discordant pairs b + c = {self.b + self.c} exceed the {self.n} images")


def paired_flips(flipped_a: Sequence[bool] | np.ndarray, flipped_b: Sequence[bool] | np.ndarray) -> PairedFlips:
    """Count the discordant pairs of two paired flip records.

    Args:
        flipped_a: per image, whether the attack flipped it under A, bool shape (n,).
        flipped_b: the same under B, on the same images in the same order, bool shape (n,).

    Returns:
        n, b = flipped under A only, c = flipped under B only.
    """
    a = _as_vector(flipped_a, "flipped_a", bool)
    b = _as_vector(flipped_b, "flipped_b", bool)
    n = _check_same_length([a, b], "flipped_a and flipped_b")
    return PairedFlips(n=n, b=int(np.sum(a & ~b)), c=int(np.sum(~a & b)))


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: ``scipy.stats.binomtest(c, b + c, 0.5)``.

    Args:
        b: pairs positive under A only (flipped under A only), ≥ 0.
        c: pairs positive under B only, ≥ 0.

    Returns:
        The p-value; 1 when there is no discordant pair (b + c = 0).
    """
    b, c = _check_count(b, "b"), _check_count(c, "c")
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(c, b + c, 0.5).pvalue)


def _rate_comparison(flips: PairedFlips, level: float, scope: str) -> Comparison:
    m = flips.b + flips.c
    p_value = mcnemar_exact(flips.b, flips.c)
    counts = {"n": flips.n, "b": flips.b, "c": flips.c}
    method = f"exact conditional interval (Clopper–Pearson on c/(b+c)){scope}"
    test = f"exact McNemar on {_count(m, 'discordant pair')}{scope}"
    if flips.n == 0:
        return Comparison(Interval(NAN, NAN, NAN, level, method, 0), NAN, test, counts)
    estimate = (flips.c - flips.b) / flips.n
    if m == 0:
        return Comparison(Interval(estimate, NAN, NAN, level, method + "; no discordant pairs", flips.n),
                          p_value, test, counts)
    ci = stats.binomtest(flips.c, m, 0.5).proportion_ci(confidence_level=level, method="exact")
    scale = m / flips.n
    interval = Interval(estimate, scale * (2 * ci.low - 1), scale * (2 * ci.high - 1), level, method, flips.n)
    return Comparison(interval, p_value, test, counts)


def paired_rate_difference(flipped_a: Sequence[bool] | np.ndarray, flipped_b: Sequence[bool] | np.ndarray,
                           *, level: float = DEFAULT_LEVEL) -> Comparison:
    """Flip rate of B minus flip rate of A on the same images, with the exact McNemar test.

    With b images flipped under A only, c under B only, m = b + c and n images,
    rate_B − rate_A = (c − b)/n = (m/n)(2p̂ − 1), p̂ = c/m. The interval maps the exact
    Clopper–Pearson interval of p = P(flipped under B | discordant) through
    (m/n)(2p − 1): it is conditional on the observed m, and it excludes 0 exactly when
    the exact McNemar test rejects at 1 − level.

    Args:
        flipped_a: per image, whether the attack flipped it under A, bool shape (n,).
        flipped_b: the same under B, on the same images in the same order, bool shape (n,).
        level: confidence level, in (0, 1) [default: 0.95].

    Returns:
        The difference (a fraction) with its interval (NaN bounds without discordant
        pairs), the McNemar p-value and the counts n, b, c.
    """
    level = _check_level(level)
    return _rate_comparison(paired_flips(flipped_a, flipped_b), level, "")


def pooled_rate_difference(per_seed: Sequence[PairedFlips], *, level: float = DEFAULT_LEVEL) -> Comparison:
    """The flip-rate difference pooled over seeds: stratified (Mantel–Haenszel) McNemar.

    For matched pairs the Mantel–Haenszel test over strata (seeds) is McNemar's test on
    the summed discordant pairs, so the pooled difference is Σ(c − b)/Σn and its interval
    and p-value are those of :func:`paired_rate_difference` on Σn, Σb, Σc.

    Args:
        per_seed: each seed's counts (from :func:`paired_flips`).
        level: confidence level, in (0, 1) [default: 0.95].

    Returns:
        The pooled comparison; ``counts`` adds ``"seeds"``. One seed: that seed's own.
    """
    level = _check_level(level)
    total = PairedFlips(n=sum(f.n for f in per_seed), b=sum(f.b for f in per_seed),
                        c=sum(f.c for f in per_seed))
    k = len(per_seed)
    result = _rate_comparison(total, level, f", stratified over {k} seeds" if k > 1 else "")
    return Comparison(result.interval, result.p_value, result.test, {**result.counts, "seeds": k})


# --------------------------------------------------------------------------------------
# (e): time to flip, right-censored at the budget
# --------------------------------------------------------------------------------------
def _check_times(times: Any, observed: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    t = _as_vector(times, f"{what}times")
    e = _as_vector(observed, f"{what}observed", bool)
    _check_same_length([t, e], f"{what}times and {what}observed")
    if np.any(~np.isfinite(t)) or np.any(t < 0):
        raise OptionError(f"{what}times must be finite and non-negative")
    return t, e


def _product_limit(times: np.ndarray, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort along the last axis (events before censorings at equal times) and multiply.

    Returns the sorted times, and the Kaplan–Meier survival just after each sorted
    observation, S_i = Π_{j ≤ i} (1 − δ_j / (n − j)): taking tied events one at a time
    telescopes to the usual factor (1 − d/n_at_risk) per distinct time.
    """
    order = np.lexsort((~observed, times), axis=-1)
    t = np.take_along_axis(times, order, axis=-1)
    events = np.take_along_axis(observed, order, axis=-1)
    n = times.shape[-1]
    at_risk = n - np.arange(n)
    return t, events, np.cumprod(1.0 - events / at_risk, axis=-1)


def _restricted_mean(times: np.ndarray, observed: np.ndarray, horizon: float, axis: int = -1) -> np.ndarray:
    """Area under the Kaplan–Meier survival from 0 to ``horizon``, along the last axis."""
    t, _, survival = _product_limit(np.asarray(times), np.asarray(observed, dtype=bool))
    clipped = np.minimum(t, horizon)
    edges = np.concatenate([np.zeros_like(clipped[..., :1]), clipped,
                            np.full_like(clipped[..., :1], horizon)], axis=-1)
    steps = np.concatenate([np.ones_like(survival[..., :1]), survival], axis=-1)
    return np.sum(steps * np.diff(edges, axis=-1), axis=-1)


def success_curve(times: Sequence[float] | np.ndarray,
                  observed: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of images flipped by time t: 1 − Kaplan–Meier survival (own product-limit).

    Args:
        times: per image, the queries (or generations) until the flip, or the budget spent
            when it never flipped; ≥ 0, shape (n,).
        observed: per image, whether it flipped (False: right-censored at ``times``).

    Returns:
        ``(t, fraction)``, each shape (k,): the distinct flip times, ascending, and the
        estimated fraction flipped at or before each — a right-continuous step function,
        0 before ``t[0]``. Empty when nothing flipped.
    """
    t, e = _check_times(times, observed, "")
    if not e.any():
        return np.zeros(0), np.zeros(0)
    sorted_t, _, survival = _product_limit(t, e)
    event_times = np.unique(t[e])
    last = np.searchsorted(sorted_t, event_times, side="right") - 1
    return event_times, 1.0 - survival[last]


def restricted_mean(times: Sequence[float] | np.ndarray, observed: Sequence[bool] | np.ndarray,
                    horizon: float) -> float:
    """Restricted mean time to flip: the area under the Kaplan–Meier survival on [0, horizon].

    With censoring only at the budget and ``horizon`` = budget this is mean(min(T, horizon)).
    Beyond the last observed time the survival is held at its last value.

    Args:
        times: per image, queries (or generations) until the flip, or until censoring; ≥ 0.
        observed: per image, whether it flipped, bool shape (n,).
        horizon: upper limit of the integral (same unit as ``times``), > 0.

    Returns:
        The restricted mean; NaN for no images.
    """
    t, e = _check_times(times, observed, "")
    horizon = _check_horizon(horizon)
    if len(t) == 0:
        return NAN
    return float(_restricted_mean(t, e, horizon))


def _check_horizon(horizon: float) -> float:
    horizon = float(horizon)
    if not (math.isfinite(horizon) and horizon > 0):
        raise OptionError(f"horizon must be a positive number, got {horizon}")
    return horizon


def _logrank_p(times_a: np.ndarray, observed_a: np.ndarray, times_b: np.ndarray, observed_b: np.ndarray) -> float:
    if len(times_a) == 0 or len(times_b) == 0 or not (observed_a.any() or observed_b.any()):
        return NAN
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.logrank(stats.CensoredData.right_censored(times_a, ~observed_a),
                               stats.CensoredData.right_censored(times_b, ~observed_b))
    return float(result.pvalue)


def censored_difference(times_a: Sequence[float] | np.ndarray, observed_a: Sequence[bool] | np.ndarray,
                        times_b: Sequence[float] | np.ndarray, observed_b: Sequence[bool] | np.ndarray,
                        horizon: float, *, paired: bool = True, level: float = DEFAULT_LEVEL,
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Comparison:
    """Restricted mean time to flip of B minus that of A, with a bootstrap and a log-rank test.

    Args:
        times_a: per image, A's queries (or generations) until the flip or censoring, ≥ 0.
        observed_a: per image, whether A's attack flipped it, bool.
        times_b: the same for B (the same images in the same order when ``paired``).
        observed_b: the same for B.
        horizon: the restricted-mean horizon, normally the attack budget, > 0.
        paired: resample image indices jointly for A and B; False resamples each model's
            images on its own [default: True].
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples [default: 9999].
        seed: seed of the resampling [default: 0].

    Returns:
        RMST_B − RMST_A with its percentile bootstrap interval, and the two-sided
        ``scipy.stats.logrank`` p-value beside it (NaN when nothing flipped). The log-rank
        test treats the samples as independent, which ignores the pairing; the interval
        does not.
    """
    ta, ea = _check_times(times_a, observed_a, "A's ")
    tb, eb = _check_times(times_b, observed_b, "B's ")
    horizon = _check_horizon(horizon)
    if paired:
        _check_same_length([ta, tb], "times_a and times_b")

    def difference(*rows: np.ndarray, axis: int = -1) -> np.ndarray:
        t_a, e_a, t_b, e_b = rows
        return (_restricted_mean(t_b, e_b.astype(bool), horizon)
                - _restricted_mean(t_a, e_a.astype(bool), horizon))

    if paired:
        interval = bootstrap_interval((ta, ea, tb, eb), difference, paired=True, level=level,
                                      n_resamples=n_resamples, seed=seed, unit="images")
    else:
        # resample each model's (time, observed) rows jointly, the two models independently
        def by_index(i_a: np.ndarray, i_b: np.ndarray, axis: int = -1) -> np.ndarray:
            return difference(ta[i_a], ea[i_a], tb[i_b], eb[i_b])

        interval = bootstrap_interval((np.arange(len(ta)), np.arange(len(tb))), by_index, paired=False,
                                      level=level, n_resamples=n_resamples, seed=seed, unit="images")
    interval = Interval(interval.estimate, interval.low, interval.high, interval.level,
                        f"restricted mean to {horizon:g}, {interval.method}", interval.n)
    counts = {"n_a": len(ta), "flipped_a": int(ea.sum()), "n_b": len(tb), "flipped_b": int(eb.sum())}
    return Comparison(interval, _logrank_p(ta, ea, tb, eb), "log-rank (scipy.stats.logrank)", counts)


# --------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """How an interval becomes a verdict.

    Attributes:
        direction: ``"greater"`` when the finding claims a large effect, ``"less"`` when
            it claims a small one.
        claim_bound: the finding's threshold: *held* when the whole interval lies beyond
            it in the claimed direction.
        contradict_bound: *contradicted* when the whole interval lies strictly on the
            other side of it (no effect, or for a non-inferiority claim the margin).
        claim_inclusive: whether a bound equal to ``claim_bound`` still holds (True for
            "≥ 10 points"; False for "more than no effect") [default: True].
        description: the rule in words.
    """

    direction: Literal["greater", "less"]
    claim_bound: float
    contradict_bound: float
    claim_inclusive: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        check_choice(self.direction, DIRECTIONS, "direction")
        wrong = (self.contradict_bound > self.claim_bound if self.direction == "greater"
                 else self.contradict_bound < self.claim_bound)
        if wrong:
            raise OptionError(f"contradict_bound {self.contradict_bound} lies beyond claim_bound "
                              f"{self.claim_bound} in the claimed direction ({self.direction})")


#: The findings' rules. Effects are B − A (or B / A) as the module docstring sets out.
FINDING_RULES: dict[str, Rule] = {
    "a": Rule("greater", 0.10, 0.0, True,
              "regular Y10 − Y1 accuracy: held if the CI lies at or above 0.10 (10 points), "
              "contradicted if it lies below 0 (Y1 more accurate)"),
    "b": Rule("greater", 0.05, 0.0, True,
              "MMD − regular Y1 accuracy: held if the CI lies at or above 0.05, "
              "contradicted if it lies below 0 (MMD worse on Y1)"),
    "c": Rule("less", 0.03, 0.03, True,
              "regular − MMD Y10 accuracy (non-inferiority): held if the CI lies at or below 0.03, "
              "contradicted if it lies above 0.03 (MMD costs more than 3 points)"),
    "d": Rule("greater", 1.0, 1.0, False,
              "DA / regular median d_E(Y10–1P) on the common scale: held if the CI lies above 1, "
              "contradicted if it lies below 1"),
    "e_rate": Rule("less", 0.0, 0.0, False,
                   "MMD − regular flip rate: held if the CI lies below 0, contradicted if above 0"),
    "e_queries": Rule("greater", 0.0, 0.0, False,
                      "MMD − regular restricted mean time to flip: held if the CI lies above 0, "
                      "contradicted if below 0"),
}


def verdict(interval: Interval, rule: Rule | str) -> str:
    """The verdict word of an interval under a rule.

    Args:
        interval: the effect and its interval (NaN bounds: undefined).
        rule: a :class:`Rule`, or a key of :data:`FINDING_RULES` (``"a"``, ``"b"``, ``"c"``,
            ``"d"``, ``"e_rate"``, ``"e_queries"``).

    Returns:
        ``"held"`` when the whole interval lies beyond the claim bound in the claimed
        direction, ``"contradicted"`` when it lies wholly on the other side of the
        contradiction bound, ``"inconclusive"`` otherwise (and whenever a bound is NaN).
        Comparisons allow a tolerance of 1e-9 for float noise.
    """
    if isinstance(rule, str):
        rule = FINDING_RULES[check_choice(rule, FINDING_RULES, "finding")]
    low, high = interval.low, interval.high
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    if rule.direction == "greater":
        held = low >= rule.claim_bound - TOLERANCE if rule.claim_inclusive else low > rule.claim_bound + TOLERANCE
        contradicted = high < rule.contradict_bound - TOLERANCE
    else:
        held = high <= rule.claim_bound + TOLERANCE if rule.claim_inclusive else high < rule.claim_bound - TOLERANCE
        contradicted = low > rule.contradict_bound + TOLERANCE
    return "held" if held else "contradicted" if contradicted else "inconclusive"


def combine_verdicts(*words: str) -> str:
    """One verdict from the verdicts of a finding's parts (finding (e): rate and queries).

    Args:
        words: part verdicts, each ``"held"``, ``"contradicted"`` or ``"inconclusive"``.

    Returns:
        ``"held"`` if some part held and none was contradicted; ``"contradicted"`` if some
        part was contradicted and none held; ``"inconclusive"`` otherwise.
    """
    for word in words:
        check_choice(word, VERDICTS, "verdict")
    held, contradicted = "held" in words, "contradicted" in words
    if held and not contradicted:
        return "held"
    if contradicted and not held:
        return "contradicted"
    return "inconclusive"
