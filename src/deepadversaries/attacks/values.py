"""The values a changed pixel may take (``--value-range``): :class:`ValueRange` and its makers.

A range is one interval [low, high] per band in model-input space. ``input`` (the paper's)
is [0, 1] in every band; ``physical`` is what a detector pixel can hold, 0 e- to the full
well (:data:`deepadversaries.simulation.survey.FULL_WELL_ELECTRONS`), mapped through the
domain's stretch, with float32 ends rounded inwards so that the inverse stretch of every
allowed value stays inside [0, full well]. A search draws unit values u in [0, 1] and maps
them with :meth:`ValueRange.to_values` (low + u (high - low)).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from deepadversaries.attacks.choices import VALUE_RANGES
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.simulation.survey import FULL_WELL_ELECTRONS

#: the paper's band count (g, r, i): the default of the value ranges
N_BANDS = 3


@dataclass(frozen=True)
class ValueRange:
    """The values a changed pixel may take: band b in [low[b], high[b]], model-input space.

    Attributes:
        kind: ``"input"`` or ``"physical"`` (see :data:`VALUE_RANGES`).
        low: per band (g, r, i for the paper's images; any number B >= 1), the smallest
            allowed model-input value.
        high: per band, the largest allowed model-input value.
        electrons: for ``physical``, the electron interval (0, full well) it models; else None.
    """

    kind: str
    low: tuple[float, ...]
    high: tuple[float, ...]
    electrons: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        lo, hi = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        if lo.ndim != 1 or len(lo) < 1 or hi.shape != lo.shape:
            raise OptionError(f"a value range needs one low and one high value per band, got low {self.low} and "
                              f"high {self.high}")
        if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) and np.all(lo < hi)):
            raise OptionError(f"the {self.kind} value range is empty or not finite: low {tuple(lo)}, "
                              f"high {tuple(hi)}")

    @property
    def bands(self) -> int:
        """B, the number of bands."""
        return len(self.low)

    @property
    def low_array(self) -> np.ndarray:
        """(B,) float64."""
        return np.asarray(self.low, dtype=np.float64)

    @property
    def high_array(self) -> np.ndarray:
        """(B,) float64."""
        return np.asarray(self.high, dtype=np.float64)

    def to_values(self, unit: np.ndarray) -> np.ndarray:
        """Model-input values (..., B) of unit values (..., B) in [0, 1]: low + u (high - low).

        Exact at the ends (u = 0 gives low, u = 1 gives high), and the identity for ``input``.
        """
        lo, hi = self.low_array, self.high_array
        return np.clip(lo + np.asarray(unit, dtype=np.float64) * (hi - lo), lo, hi)

    def corners(self) -> np.ndarray:
        """The 2^B corners of the value cube (2^B, B), 8 for g, r, i: each band at its low or high
        end, in the order of ``itertools.product`` (the first band slowest; all low first)."""
        pairs = [(lo, hi) for lo, hi in zip(self.low, self.high)]
        return np.array(list(itertools.product(*pairs)), dtype=np.float64)

    def contains(self, values: np.ndarray) -> np.ndarray:
        """Whether each row of values (V, B) lies inside the range (per row, all bands)."""
        v = np.asarray(values, dtype=np.float64).reshape(-1, self.bands)
        return np.all((v >= self.low_array) & (v <= self.high_array), axis=1)

    def describe(self) -> dict:
        """A JSON-ready description (for ``summary.json``)."""
        out = {"kind": self.kind, "low": [float(v) for v in self.low], "high": [float(v) for v in self.high]}
        if self.electrons is not None:
            out["electrons"] = [float(v) for v in self.electrons]
        return out


def input_range(bands: int = N_BANDS) -> ValueRange:
    """The paper's range: any stretched value in [0, 1] in every band (``bands`` of them [default: 3])."""
    return ValueRange("input", (0.0,) * int(bands), (1.0,) * int(bands))


def _float32_towards(x: float, direction: float) -> float:
    """``x`` rounded to a float32 no farther than ``x`` in ``direction`` (+inf: up, -inf: down)."""
    f = np.float32(x)
    if (direction > 0 and f < x) or (direction < 0 and f > x):
        f = np.nextafter(f, np.float32(direction))
    return float(f)


def physical_range(stretch: Callable[[np.ndarray], np.ndarray], inverse: Callable[[np.ndarray], np.ndarray],
                   full_well: float = FULL_WELL_ELECTRONS, bands: int = N_BANDS) -> ValueRange:
    """The model-input values a detector pixel can produce: stretch(0 e-) ... stretch(full well), per band.

    Args:
        stretch: the domain's normalisation, raw electrons -> model input, on image-shaped
            arrays (..., B, H, W), non-decreasing in each pixel
            (``partial(data.apply_stretch, lo=lo, hi=hi)`` for the paper's, element-wise; or
            :meth:`~deepadversaries.data.dataset.GalaxyDataset.input_transform`). The paper's clips
            to its [lo, hi], so counts above hi all map to stretch(hi): the upper end is then
            stretch(min(full well, hi)).
        inverse: its inverse, model input -> electrons (``partial(data.invert_stretch, hi=hi)``).
        full_well: the full-well capacity, electrons [default: :data:`FULL_WELL_ELECTRONS`].
        bands: B, the images' band count [default: 3].

    Returns:
        A ``physical`` :class:`ValueRange`, one interval per band (the same for the three
        bands of the paper's one stretch per domain). Its ends are float32 values rounded
        inwards, so that ``inverse`` of any allowed float32 value lies in [0, full well].

    Raises:
        OptionError: a full well that is not positive, or a normalisation that maps every count
            from 0 to the full well onto one value (or is not finite there) in some band.
    """
    if not np.isfinite(full_well) or full_well <= 0:
        raise OptionError(f"the full well must be a positive number of electrons, got {full_well}")
    bands = int(bands)
    counts = np.zeros((bands, 1, 2), dtype=np.float32)
    counts[:, 0, 1] = full_well
    ends = np.asarray(stretch(counts), dtype=np.float64).reshape(bands, 2)
    for b in range(bands):
        if not np.all(np.isfinite(ends[b])) or not ends[b, 1] > ends[b, 0]:
            raise OptionError(f"the stretch cannot express physical values: it maps 0 and {full_well:g} e- (the "
                              f"full well) to {ends[b].tolist()}" + (f" in band {b}" if bands > 1 else "") +
                              ", not to an interval")
    low = np.array([_float32_towards(v, np.inf) for v in ends[:, 0]], dtype=np.float32)
    high = np.array([_float32_towards(v, -np.inf) for v in ends[:, 1]], dtype=np.float32)

    def electrons(values: np.ndarray) -> np.ndarray:
        return np.asarray(inverse(values.reshape(bands, 1, 1)), dtype=np.float64).reshape(bands)

    # round inwards until the inverse stays inside [0, full well] (it may round, too)
    for _ in range(64):
        over = electrons(high) > full_well
        if not over.any():
            break
        high[over] = np.nextafter(high[over], np.float32(-np.inf))
    for _ in range(64):
        under = electrons(low) < 0.0
        if not under.any():
            break
        low[under] = np.nextafter(low[under], np.float32(np.inf))
    return ValueRange("physical", tuple(float(v) for v in low), tuple(float(v) for v in high),
                      electrons=(0.0, float(full_well)))


def make_value_range(kind: str = "input", stretch: Callable[[np.ndarray], np.ndarray] | None = None,
                     inverse: Callable[[np.ndarray], np.ndarray] | None = None,
                     full_well: float = FULL_WELL_ELECTRONS, bands: int = N_BANDS) -> ValueRange:
    """The value range named ``kind`` (``--value-range``), checked.

    Args:
        kind: ``"input"`` or ``"physical"`` [default: "input"].
        stretch, inverse: the domain's stretch and its inverse (``physical`` only; see
            :func:`physical_range`).
        full_well: electrons [default: :data:`FULL_WELL_ELECTRONS`].
        bands: B, the images' band count [default: 3].

    Raises:
        OptionError: an unknown kind, ``physical`` without a stretch, or a stretch that
            cannot express it.
    """
    check_choice(kind, VALUE_RANGES, "value range")
    if kind == "input":
        return input_range(bands)
    if stretch is None or inverse is None:
        raise OptionError("the physical value range needs the domain's stretch and its inverse")
    return physical_range(stretch, inverse, full_well, bands)
