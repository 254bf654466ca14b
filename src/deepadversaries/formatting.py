"""How numbers, times and missing values are written, everywhere in the package.

- Missing or undefined numbers (None, NaN, ±inf) print as ``n/a`` and are stored in JSON
  as ``null`` (:func:`nan_to_none`), so every JSON file is strict JSON.
- Timestamps are ISO 8601 in UTC with seconds (:func:`utc_now`), one time zone for every
  file the package writes.
- Durations print as ``12.3 s``, ``4 min 05 s`` or ``1 h 02 min`` (:func:`fmt_seconds`);
  progress displays use ``H:MM:SS`` (:func:`fmt_clock`).
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np

MISSING = "n/a"


def is_number(x: Any) -> bool:
    """Whether ``x`` is a finite real number (bools excluded)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) and not hasattr(x, "__float__"):
        return False
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_fixed(x: Any, decimals: int = 3) -> str:
    """A fixed-point number with ``decimals`` decimals [default: 3]; ``n/a`` when missing."""
    if not is_number(x):
        return MISSING
    return f"{float(x):.{decimals}f}"


def fmt_sig(x: Any, digits: int = 3) -> str:
    """``digits`` significant digits [default: 3], in exponent form only for magnitudes
    below 1e-4 or above 1e6; ``n/a`` when missing."""
    if not is_number(x):
        return MISSING
    x = float(x)
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    if mag < -4 or mag > 6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - mag)}f}"


def fmt_pm(x: Any) -> str:
    """A standard error as ``±value`` (3 significant digits); ``n/a`` when missing."""
    text = fmt_sig(x)
    return text if text == MISSING else "±" + text


def fmt_points(x: float) -> str:
    """A difference of two fractions in percentage points, signed: ``+2.5 points``."""
    return f"{round(100 * x, 1) + 0.0:+.1f} points"


def fmt_seconds(s: Any) -> str:
    """A duration in seconds as ``12.3 s``, ``4 min 05 s`` or ``1 h 02 min``; ``n/a`` when missing."""
    if not is_number(s):
        return MISSING
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def fmt_clock(s: float | None) -> str:
    """A duration as ``H:MM:SS`` (progress displays); ``-:--:--`` when unknown."""
    if s is None or not is_number(s):
        return "-:--:--"
    s = max(0, int(round(s)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def nan_to_none(obj: Any) -> Any:
    """A copy of a JSON-like structure with NaN and ±inf floats (numpy's too) replaced by ``None``."""
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        return None
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_to_none(v) for v in obj]
    return obj


def utc_now() -> str:
    """The current time, ISO 8601 in UTC to the second (``2026-11-29T09:11:15+00:00``)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__
