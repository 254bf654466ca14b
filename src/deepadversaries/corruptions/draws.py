"""Random draws recorded under one severity and replayed under the next ones.

The corruption stage gives every chunk of a corruption the same random stream at every severity
(``numpy.random.default_rng([seed, crc32(name), chunk, ...])``): the draws are nested, and most
corruptions draw the very same fields (noise, positions, dark currents) at every severity and only
apply them differently. :class:`ReplayGenerator` is that stream, made once per (corruption, chunk)
and shared by its severities: it draws for the first severity and keeps a copy of every result;
for the next severities it hands back copies of the kept results while the calls are the same as
the first severity's (method, shapes, arguments -- array arguments compared value by value), and
where one differs (e.g. ``poisson`` of a severity-dependent mean) it sets the bit generator to the
state it had after the last matching call and draws from there on.

Contract: every call returns exactly what a fresh ``numpy.random.default_rng(key)`` would return to
the same sequence of calls (tests/test_corruptions_speed.py checks every corruption, table set,
defect placement and domain). Only the methods in :data:`REPLAYED_METHODS` are replayed; a
corruption that uses another method of the generator raises :class:`TypeError` rather than draw
silently out of step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the Generator methods the corruptions use; each is recorded and replayed
#: (``standard_gamma``: scipy.stats.moyal's, the cosmic rays' charge)
REPLAYED_METHODS = ("integers", "multinomial", "poisson", "random", "standard_gamma", "standard_normal", "uniform")


@dataclass
class _Draw:
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    result: Any
    state_after: dict[str, Any]


def _copy(value: Any) -> Any:
    return value.copy() if isinstance(value, np.ndarray) else value


def _same(a: Any, b: Any) -> bool:
    """Whether two call arguments give the same draws: arrays equal in dtype, shape and every value,
    other values of the same type and equal (tuples and lists element by element)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and bool(np.array_equal(a, b)))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and bool(a == b)


class ReplayGenerator(np.random.Generator):
    """A ``numpy.random.Generator`` seeded like ``default_rng(key)``, replaying another one's draws.

    Args:
        key: the seed sequence's entropy, as for ``numpy.random.default_rng(key)``.
        record: the draws of an earlier generator of the same key to replay (its :attr:`draws`)
            [default: None, draw and record].

    Attributes:
        draws: this generator's calls and copies of their results, in order (recorded only when
            ``record`` is None).
    """

    def __init__(self, key: int | Sequence[int], record: list[_Draw] | None = None) -> None:
        super().__init__(np.random.PCG64(np.random.SeedSequence(key)))
        self._record = record
        self._next = 0
        self._replaying = bool(record)
        self.draws: list[_Draw] = []

    def _draw(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._replaying:
            i = self._next
            entry = self._record[i] if i < len(self._record) else None
            if (entry is not None and entry.method == method and _same(entry.args, args)
                    and entry.kwargs.keys() == kwargs.keys()
                    and all(_same(entry.kwargs[k], v) for k, v in kwargs.items())):
                self._next += 1
                return _copy(entry.result)
            self._replaying = False  # out of step: on from the state after the last matching call
            if i > 0:
                self.bit_generator.state = self._record[i - 1].state_after
        result = getattr(super(), method)(*args, **kwargs)
        if self._record is None:
            self.draws.append(_Draw(method, tuple(_copy(a) for a in args), {k: _copy(v) for k, v in kwargs.items()},
                                    _copy(result), self.bit_generator.state))
        return result

    def __getattribute__(self, name: str) -> Any:
        if (not name.startswith("_") and name not in REPLAYED_METHODS and name not in ("draws", "bit_generator")
                and callable(getattr(np.random.Generator, name, None))):
            raise TypeError(f"ReplayGenerator does not replay Generator.{name}; use one of {', '.join(REPLAYED_METHODS)} "
                            "or add it to deepadversaries.corruptions.draws.REPLAYED_METHODS")
        return super().__getattribute__(name)


def _replayed(method: str) -> Any:
    def call(self: ReplayGenerator, *args: Any, **kwargs: Any) -> Any:
        return self._draw(method, args, kwargs)

    call.__name__, call.__qualname__ = method, f"ReplayGenerator.{method}"
    call.__doc__ = f"``numpy.random.Generator.{method}``, recorded or replayed."
    return call


for _method in REPLAYED_METHODS:  # one override per method of the table, nothing else replayed
    setattr(ReplayGenerator, _method, _replayed(_method))
