"""How numbers, durations, times and missing values are written (formatting.py), against literal text."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from deepadversaries.formatting import (
    first_line,
    fmt_clock,
    fmt_fixed,
    fmt_pm,
    fmt_points,
    fmt_seconds,
    fmt_sig,
    is_number,
    nan_to_none,
    utc_now,
)

MISSING = (None, float("nan"), float("inf"), -float("inf"), "text", True)


@pytest.mark.parametrize("value, decimals, text", [(0.5, 3, "0.500"), (1 / 3, 3, "0.333"), (2.0, 1, "2.0"),
                                                  (-0.0004, 3, "-0.000"), (np.float32(0.25), 2, "0.25"), (7, 0, "7")])
def test_fixed(value, decimals, text):
    assert fmt_fixed(value, decimals) == text


@pytest.mark.parametrize("value, text", [(0, "0"), (6.2345, "6.23"), (0.12345, "0.123"), (123.456, "123"),
                                         (12345.6, "12346"), (0.000123, "0.000123"), (1.5e-5, "1.50e-05"),
                                         (2.5e7, "2.50e+07"), (-3.14159, "-3.14"), (np.float64(2.0), "2.00")])
def test_significant_digits(value, text):
    assert fmt_sig(value) == text


def test_missing_numbers_print_as_na():
    for value in MISSING:
        assert fmt_fixed(value) == fmt_sig(value) == fmt_pm(value) == fmt_seconds(value) == "n/a"
        assert not is_number(value)
    assert fmt_clock(None) == fmt_clock(float("nan")) == "-:--:--"
    assert is_number(3) and is_number(np.float32(1.5)) and not is_number(np.nan)


def test_plus_minus_points_and_durations():
    assert fmt_pm(0.0123) == "±0.0123" and fmt_pm(1.0) == "±1.00"
    assert fmt_points(0.025) == "+2.5 points" and fmt_points(-0.1) == "-10.0 points"
    assert fmt_points(0.0) == "+0.0 points"
    assert [fmt_seconds(s) for s in (0.04, 12.34, 59.94, 60, 245, 3599.6, 3600, 3725)] == [
        "0.0 s", "12.3 s", "59.9 s", "1 min 00 s", "4 min 05 s", "1 h 00 min", "1 h 00 min", "1 h 02 min"]
    assert [fmt_clock(s) for s in (0, 59.4, 61, 3725, -5)] == ["0:00:00", "0:00:59", "0:01:01", "1:02:05", "0:00:00"]


def test_nan_to_none_makes_strict_json():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), {"c": -float("inf")}], "d": (2, float("nan")), "e": "nan"}
    clean = nan_to_none(obj)
    assert clean == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, None], "e": "nan"}
    json.loads(json.dumps(clean, allow_nan=False))
    assert obj["a"] != obj["a"]  # the input is left as it was


def test_utc_now_is_iso_8601_utc_to_the_second():
    text = utc_now()
    stamp = dt.datetime.fromisoformat(text)
    assert text.endswith("+00:00") and stamp.microsecond == 0
    assert abs((dt.datetime.now(dt.timezone.utc) - stamp).total_seconds()) < 5


def test_first_line_of_an_exception():
    assert first_line(ValueError("one\ntwo")) == "one"
    assert first_line(RuntimeError("")) == "RuntimeError"
    assert first_line(KeyError("x" * 500), limit=10) == "'" + "x" * 9
