"""Statistics of the findings: confidence intervals, paired tests and the verdict rule.

Every finding of the paper (SPEC 10) is reported as an effect with a 95 % confidence
interval, the numbers of seeds and images behind it, one word about the paper's direction —
*held*, *contradicted* or *inconclusive* (:func:`verdict`) — and, beside it, a magnitude
statement against the paper's own number (:func:`magnitude`). This module computes those
numbers from arrays; it reads no files and knows nothing about models. Every comparison is
**B relative to A**: a difference is ``B − A`` and a ratio ``B / A``.

The verdict rule (SPEC 10)
--------------------------
Each finding has one pre-stated primary endpoint and one rule (:data:`FINDING_RULES`):
*held* when the whole interval lies on the claimed side of no effect (for (c), a
non-inferiority claim, of a 3-point margin that is ours, not the paper's), *contradicted*
when it lies wholly on the other side, *inconclusive* otherwise. Secondary measures are
reported and never decide the word: there is no "or" of two tests.

Which interval each endpoint uses, and why
------------------------------------------
(a)–(c) accuracy differences: per seed, :func:`accuracy_difference` — a *paired*
    percentile bootstrap over the test images (one trained model). Across seeds,
    :func:`pool_differences` — a t-interval of the per-seed differences (the seed is the
    unit that varies). The seeds share one test set, whose sampling error is common to
    all of them and not in the t-interval.
(d) ratio adapted / regular of the median d_E(Y10–1P) on the images flipped under both:
    per seed :func:`median_ratio` (paired bootstrap over images); across seeds
    :func:`log_ratio_t_interval`, a t-interval of the per-seed log ratios (each seed one
    number, whatever its bootstrap width). The spread-normalised sensitivity version is
    :func:`spread_normalised_ratio` (the spread, :func:`latent_spread`, recomputed inside
    every resample).
(e) paired flip-rate difference on the images attacked under both: per seed
    :func:`paired_rate_difference` (exact McNemar, conditional interval); across seeds
    :func:`pool_differences` of the per-seed differences, with
    :func:`cluster_bootstrap_difference` (galaxy × seed) as a sensitivity and
    :func:`pooled_rate_difference` (McNemar on summed pairs) only as a check conditional on
    the trained models. Time to flip: Kaplan–Meier (:func:`success_curve`),
    :func:`restricted_mean`, :func:`censored_difference` (secondary).

Contracts
---------
- Deterministic: every resampling draws from ``numpy.random.default_rng(seed)``; the same
  arguments give the same interval, bit for bit.
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
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from scipy import stats

from deepadversaries.errors import OptionError, check_choice

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
def t_interval(values: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL,
               bounds: tuple[float, float] | None = None) -> Interval:
    """Student-t interval of a mean: mean ± t_{n−1} · s / √n (``scipy.stats.t.interval``).

    Args:
        values: the per-seed effects, shape (n,). NaN values (a seed whose effect is
            undefined) are left out and ``n`` counts the others.
        level: confidence level, in (0, 1) [default: 0.95].
        bounds: the range the quantity cannot leave (e.g. (0, 1) for an accuracy or a
            rate): the interval is cut to it and ``method`` says so where it was [default:
            None, not cut].

    Returns:
        The mean with its interval (s with ddof = 1); NaN bounds for fewer than two
        values, and a zero-width interval when all values are equal (s = 0).
    """
    interval = _t_interval(values, level)
    if bounds is None or not interval.defined:
        return interval
    low, high = max(interval.low, bounds[0]), min(interval.high, bounds[1])
    if (low, high) == (interval.low, interval.high):
        return interval
    return replace(interval, low=low, high=high, method=f"{interval.method}, cut to [{bounds[0]:g}, {bounds[1]:g}]")


def _t_interval(values: Sequence[float] | np.ndarray, level: float) -> Interval:
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
    """McNemar on the discordant pairs summed over seeds: a check *conditional on these
    trained models*, never a verdict.

    It treats every image of every seed as independent, so the seed-to-seed variation of
    the trained models never enters (and the seeds' images are draws of the same galaxies):
    with a seed-level spread it rejects far more often than its nominal level. The verdict
    of (e) pools one paired difference per seed (:func:`pool_differences`). The pooled
    difference here is Σ(c − b)/Σn, with the interval and p-value of
    :func:`paired_rate_difference` on Σn, Σb, Σc.

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
    result = _rate_comparison(total, level, f", pairs summed over {k} seeds, conditional on these trained models"
                              if k > 1 else "")
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
# (d): seeds pooled on the log scale; the spread-normalised ratio
# --------------------------------------------------------------------------------------
def log_ratio_t_interval(ratios: Sequence[float] | np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Pool per-seed ratios: exp of the t-interval of their logs (each seed one number).

    Args:
        ratios: one positive ratio per seed, shape (k,). Non-positive or non-finite values
            (an undefined ratio) are left out and ``n`` counts the others.
        level: confidence level, in (0, 1) [default: 0.95].

    Returns:
        exp(mean log ratio) with exp of its t-interval; NaN bounds for fewer than two seeds.
    """
    level = _check_level(level)
    r = _as_vector(ratios, "ratios")
    r = r[np.isfinite(r) & (r > 0)]
    iv = t_interval(np.log(r), level)
    return Interval(math.exp(iv.estimate) if iv.n else NAN, math.exp(iv.low) if iv.defined else NAN,
                    math.exp(iv.high) if iv.defined else NAN, level,
                    f"t-interval of the log ratios over {_count(iv.n, 'seed')}", iv.n)


def latent_spread(z: np.ndarray) -> float:
    """The spread of a set of latents: median ‖z − z̄‖ (z̄ their mean).

    Unlike ‖z‖, it is unchanged when every latent moves by one constant vector (a shift the
    head's bias can absorb without changing the model), and it scales with the latents.

    Args:
        z: (n, d) latent vectors.

    Returns:
        The median distance to the mean; NaN for no vectors.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise OptionError(f"latents must be a 2-D array (n, d), got shape {z.shape}")
    if len(z) == 0:
        return NAN
    return float(np.median(np.linalg.norm(z - z.mean(axis=0), axis=1)))


def _resampled_spreads(z: np.ndarray, index: np.ndarray) -> np.ndarray:
    """:func:`latent_spread` of ``z[index[b]]`` for every row b of ``index`` (B, m), vectorised.

    ‖z_i − z̄_b‖² = ‖z_i‖² − 2 z_i·z̄_b + ‖z̄_b‖², with z̄_b the mean of resample b.
    """
    b_count, m = index.shape
    weights = np.zeros((b_count, len(z)))
    np.add.at(weights, (np.repeat(np.arange(b_count), m), index.ravel()), 1.0)
    centre = weights @ z / m
    squared = (np.sum(z**2, axis=1)[None, :] - 2.0 * centre @ z.T + np.sum(centre**2, axis=1)[:, None])
    distance = np.sqrt(np.clip(squared, 0.0, None))
    return np.median(np.take_along_axis(distance, index, axis=1), axis=1)


def spread_normalised_ratio(d_reference: Sequence[float] | np.ndarray, d_other: Sequence[float] | np.ndarray,
                            z_reference: np.ndarray, z_other: np.ndarray, flipped: Sequence[bool] | np.ndarray, *,
                            level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                            seed: int = 0) -> Interval:
    """Ratio of median distances, each model's divided by its latent spread, with a bootstrap.

    ratio = [median(d_B) / spread(z_B)] / [median(d_A) / spread(z_A)], the medians over the
    images flipped under both, the spreads (:func:`latent_spread`) over all images attacked
    under both. The bootstrap resamples the attacked images, stratified by whether they were
    flipped under both (so every resample has the same number of flipped images), and
    recomputes both medians and both spreads in every resample: the normaliser's own
    uncertainty is in the interval. Invariant to a shift of either model's latents, and to a
    scale of either (distances and spread scale together).

    Args:
        d_reference: A's distance per flipped image, shape (n_f,) (the flipped images in the
            order of ``flipped``'s True rows).
        d_other: B's distances on the same images, shape (n_f,).
        z_reference: A's (n, d) Y10 latents of the images attacked under both.
        z_other: B's (n, d') Y10 latents of the same images in the same order.
        flipped: (n,) bool, which rows were flipped under both; n_f of them.
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples [default: 9999].
        seed: seed of the resampling [default: 0].

    Returns:
        The ratio with its percentile interval; NaN when undefined (no flipped image, a zero
        median or spread), NaN bounds with fewer than two flipped images.
    """
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    d_a, d_b = _as_vector(d_reference, "d_reference"), _as_vector(d_other, "d_other")
    mask = _as_vector(flipped, "flipped", bool)
    z_a, z_b = np.asarray(z_reference, np.float64), np.asarray(z_other, np.float64)
    if z_a.ndim != 2 or z_b.ndim != 2 or len(z_a) != len(mask) or len(z_b) != len(mask):
        raise OptionError(f"latents must be (n, d) arrays with one row per attacked image ({len(mask)}), got "
                          f"{z_a.shape} and {z_b.shape}")
    n_f = _check_same_length([d_a, d_b], "d_reference and d_other")
    if n_f != int(mask.sum()):
        raise OptionError(f"{n_f} distances but {int(mask.sum())} flipped rows")
    how = (f"stratified percentile bootstrap over {len(mask)} attacked images ({n_f} flipped under both), "
           f"spreads recomputed in every resample, {n_resamples} resamples")

    def ratio(da: np.ndarray, db: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return (np.median(db, axis=-1) / sb) / (np.median(da, axis=-1) / sa)

    if n_f == 0:
        return Interval(NAN, NAN, NAN, level, how, n_f)
    estimate = float(ratio(d_a, d_b, np.float64(latent_spread(z_a)), np.float64(latent_spread(z_b))))
    if n_f < 2:
        return Interval(estimate, NAN, NAN, level, how, n_f)
    rng = np.random.default_rng(seed)
    rows_f, rows_n = np.flatnonzero(mask), np.flatnonzero(~mask)
    order_f = np.full(len(mask), -1)
    order_f[rows_f] = np.arange(n_f)
    values = []
    for start in range(0, n_resamples, 500):
        b = min(500, n_resamples - start)
        pick_f = rows_f[rng.integers(0, n_f, size=(b, n_f))]
        pick_n = rows_n[rng.integers(0, len(rows_n), size=(b, len(rows_n)))] if len(rows_n) else \
            np.zeros((b, 0), np.int64)
        index = np.concatenate([pick_f, pick_n], axis=1)
        values.append(ratio(d_a[order_f[pick_f]], d_b[order_f[pick_f]], _resampled_spreads(z_a, index),
                            _resampled_spreads(z_b, index)))
    distribution = np.concatenate(values)
    if not np.all(np.isfinite(distribution)):
        return Interval(estimate, NAN, NAN, level, how + f"; undefined on {int((~np.isfinite(distribution)).sum())}",
                        n_f)
    alpha = (1 - level) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), level, how, n_f)


# --------------------------------------------------------------------------------------
# (e): the galaxy × seed cluster bootstrap
# --------------------------------------------------------------------------------------
def cluster_bootstrap_difference(galaxies: Sequence[Sequence[Any]], differences: Sequence[Sequence[float]], *,
                                 level: float = DEFAULT_LEVEL, n_resamples: int = DEFAULT_RESAMPLES,
                                 seed: int = 0) -> Interval:
    """Mean over seeds of the per-seed mean paired difference, with a two-way cluster bootstrap.

    Each seed's images are draws of the same test galaxies, so an image's result is
    correlated with the same galaxy's in the other seeds as well as with its seed's. Every
    resample draws the seeds with replacement and, independently, the galaxies with
    replacement (a galaxy drawn k times counts k times in every seed that attacked it); the
    statistic is the mean over the drawn seeds of each one's weighted mean difference.

    Args:
        galaxies: per seed, the galaxy key of each image (test index or id), shape (n_s,).
        differences: per seed, each image's paired difference (e.g. flipped under B − under A,
            in {−1, 0, 1}), shape (n_s,).
        level: confidence level, in (0, 1) [default: 0.95].
        n_resamples: bootstrap resamples [default: 9999].
        seed: seed of the resampling [default: 0].

    Returns:
        The mean of the per-seed means with the percentile interval; NaN bounds with fewer
        than two seeds.
    """
    level = _check_level(level)
    n_resamples = _check_resamples(n_resamples)
    if len(galaxies) != len(differences):
        raise OptionError(f"{len(galaxies)} seeds of galaxies but {len(differences)} of differences")
    keys = sorted({g for seed_keys in galaxies for g in seed_keys}, key=str)
    column = {g: j for j, g in enumerate(keys)}
    k, g_count = len(galaxies), len(keys)
    how = f"galaxy × seed cluster bootstrap ({k} seeds, {g_count} galaxies), {n_resamples} resamples"
    total = np.zeros((k, g_count))
    count = np.zeros((k, g_count))
    for s, (seed_keys, values) in enumerate(zip(galaxies, differences)):
        v = _as_vector(values, "differences")
        if len(v) != len(seed_keys):
            raise OptionError(f"seed {s}: {len(seed_keys)} galaxies but {len(v)} differences")
        np.add.at(total[s], [column[g] for g in seed_keys], v)
        np.add.at(count[s], [column[g] for g in seed_keys], 1.0)
    with np.errstate(all="ignore"):
        per_seed = total.sum(axis=1) / count.sum(axis=1)
    estimate = float(np.mean(per_seed)) if k else NAN
    if k < 2 or g_count == 0:
        return Interval(estimate, NAN, NAN, level, how, k)
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, n_resamples, 1000):
        b = min(1000, n_resamples - start)
        weights = rng.multinomial(g_count, np.full(g_count, 1.0 / g_count), size=b).astype(np.float64)
        with np.errstate(all="ignore"):
            means = (weights @ total.T) / (weights @ count.T)  # (b, k): each seed's mean in this resample
        drawn = rng.integers(0, k, size=(b, k))
        values.append(np.mean(np.take_along_axis(means, drawn, axis=1), axis=1))
    distribution = np.concatenate(values)
    distribution = distribution[np.isfinite(distribution)]
    alpha = (1 - level) / 2
    low, high = np.quantile(distribution, [alpha, 1 - alpha])
    return Interval(estimate, float(low), float(high), level, how, k)


# --------------------------------------------------------------------------------------
# verdicts and magnitudes
# --------------------------------------------------------------------------------------
#: the words of the magnitude statement, in the order "inside", "beyond", "short of" the interval
MAGNITUDES = ("consistent with the paper's", "smaller than the paper's", "larger than the paper's")


@dataclass(frozen=True)
class Rule:
    """How an interval becomes a verdict (SPEC 10).

    Attributes:
        direction: ``"greater"`` when the finding claims an effect above ``bound``, ``"less"``
            when it claims one below.
        bound: no effect (0 for a difference, 1 for a ratio) or, for a non-inferiority
            claim, the margin: *held* when the whole interval lies strictly beyond it in the
            claimed direction, *contradicted* when it lies strictly on the other side.
        null: no effect, the origin of the magnitude statement (0 or 1).
        ratio: the effect is a ratio (magnitudes compared on the log scale) [default: False].
        description: the rule in words.
    """

    direction: Literal["greater", "less"]
    bound: float
    null: float = 0.0
    ratio: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        check_choice(self.direction, DIRECTIONS, "direction")


#: The findings' rules. Effects are B − A (or B / A) as the findings define them.
NON_INFERIORITY_MARGIN = 0.03
FINDING_RULES: dict[str, Rule] = {
    "a": Rule("less", 0.0, 0.0, False,
              "regular Y1 − Y10 accuracy: held if the whole CI lies below 0, contradicted if above 0"),
    "b": Rule("greater", 0.0, 0.0, False,
              "adapted − regular Y1 accuracy: held if the whole CI lies above 0, contradicted if below 0"),
    "c": Rule("greater", -NON_INFERIORITY_MARGIN, 0.0, False,
              "adapted − regular Y10 accuracy (non-inferiority, a 3-point margin that is ours, not the paper's): "
              "held if the whole CI lies above −3 points, contradicted if below −3 points"),
    "d": Rule("greater", 1.0, 1.0, True,
              "adapted / regular median raw d_E(Y10–1P), images flipped under both: held if the whole CI lies "
              "above 1, contradicted if below 1"),
    "e": Rule("less", 0.0, 0.0, False,
              "adapted − regular flip rate of the paper's attack, paired on the images attacked under both: held "
              "if the whole CI lies below 0, contradicted if above 0"),
}


def _rule(rule: Rule | str) -> Rule:
    return FINDING_RULES[check_choice(rule, FINDING_RULES, "finding")] if isinstance(rule, str) else rule


def verdict(interval: Interval, rule: Rule | str) -> str:
    """The verdict word of an interval under a rule.

    Args:
        interval: the effect and its interval (NaN bounds: undefined).
        rule: a :class:`Rule`, or a key of :data:`FINDING_RULES` (``"a"`` … ``"e"``).

    Returns:
        ``"held"`` when the whole interval lies strictly beyond the rule's bound in the
        claimed direction, ``"contradicted"`` when it lies strictly on the other side,
        ``"inconclusive"`` otherwise (and whenever a bound is NaN). A bound within 1e-9 of
        the rule's counts as touching it.
    """
    rule = _rule(rule)
    low, high = interval.low, interval.high
    if math.isnan(low) or math.isnan(high):
        return "inconclusive"
    above, below = low > rule.bound + TOLERANCE, high < rule.bound - TOLERANCE
    held, contradicted = (above, below) if rule.direction == "greater" else (below, above)
    return "held" if held else "contradicted" if contradicted else "inconclusive"


def magnitude(interval: Interval, paper: float | None, rule: Rule | str) -> str | None:
    """Where the paper's number lies against our interval (SPEC 10).

    Args:
        interval: our effect and its interval.
        paper: the paper's number for this effect (None: the paper has none).
        rule: the finding's rule (its ``null`` and ``ratio``).

    Returns:
        ``"consistent with the paper's"`` when the paper's number lies inside the interval,
        ``"smaller than the paper's"`` when it lies further from no effect than the whole
        interval (in the paper's direction), ``"larger than the paper's"`` when it lies
        nearer to no effect than the whole interval; None without a paper number or an
        interval.
    """
    rule = _rule(rule)
    if paper is None or not interval.defined or (rule.ratio and paper <= 0):
        return None

    def axis(x: float) -> float:  # position along the paper's direction, from no effect
        return math.log(x / rule.null) if rule.ratio else x - rule.null

    p = axis(paper)
    sign = -1.0 if p < 0 else 1.0
    try:
        low, high = sorted((sign * axis(interval.low), sign * axis(interval.high)))
    except ValueError:  # a ratio bound at or below 0
        return None
    p *= sign
    if low - TOLERANCE <= p <= high + TOLERANCE:
        return MAGNITUDES[0]
    return MAGNITUDES[1] if p > high else MAGNITUDES[2]
