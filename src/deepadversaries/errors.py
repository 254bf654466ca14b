"""The errors a user can meet, and which one to raise.

Every error a user can cause — a bad option, a missing or malformed file, a stage of a
pipeline that failed — is a :class:`DeepAdvError`. The command line prints its message on
one line (``error: <message>``) and exits with status 2; ``DEEPADV_DEBUG=1`` shows the
traceback instead. Anything else that escapes is an internal error (a bug): exit status 1.

Which one to raise:

- :class:`OptionError` (also a ``ValueError``): an argument or command-line option has a
  value that is not allowed — an unknown name, a number out of range, options that do not
  go together. Build the common "unknown X; choose one of …" message with
  :func:`check_choice`; check each option once, where the user gives it.
- :class:`FileError`: a file or folder is missing, unreadable, or holds something other
  than what the command needs (a damaged array, a run folder of another kind, a finished
  result that would be overwritten). Build it with :func:`file_error`, which puts the path
  first so the user sees which file to fix.
- :class:`StageFailed`: a stage of ``reproduce`` or ``study`` failed; its message names
  the stage and its log (raised by the pipeline, not by stages themselves).
- :class:`DeepAdvError` itself: a user-caused problem that is neither of the above (for
  example a training that diverged, or a GPU asked for on a machine without one).

Library code never lets a bare ``ValueError``, ``RuntimeError`` or ``assert`` reach a user
for a problem the user can fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class DeepAdvError(Exception):
    """An error caused by the user's input or environment; exit status 2 on the command line."""

    exit_code = 2


class OptionError(DeepAdvError, ValueError):
    """An argument or option has a value that is not allowed (also a ``ValueError``)."""


class FileError(DeepAdvError):
    """A file or folder is missing, unreadable, or not what the command needs.

    Attributes:
        path: the file or folder at fault (``None`` when unknown).
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class StageFailed(DeepAdvError):
    """A stage of a pipeline failed; the message names the stage and its log file.

    Args:
        message: one line naming the stage, the cause and the log.
        exit_code: the exit status to use [default: 2; 1 when the cause was an internal error].
    """

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def file_error(path: str | Path, problem: str) -> FileError:
    """A :class:`FileError` whose message is ``"<path>: <problem>"``."""
    return FileError(f"{path}: {problem}", path)


def choice_list(choices: Iterable[Any]) -> str:
    """The choices as the messages print them: ``"a, b, c"``."""
    return ", ".join(str(c) for c in choices)


def check_choice(value: T, choices: Iterable[T], what: str) -> T:
    """Return ``value`` if it is one of ``choices``; else raise :class:`OptionError`.

    Args:
        value: the value the user gave.
        choices: the allowed values (any iterable; a mapping offers its keys).
        what: what the value names, as the message says it (e.g. ``"method"``, ``"--search"``).

    Returns:
        ``value`` unchanged.

    Raises:
        OptionError: ``"unknown <what> <value>; choose one of <choices>"``.
    """
    options = list(choices.keys() if isinstance(choices, Mapping) else choices)
    if value not in options:
        raise OptionError(f"unknown {what} {value!r}; choose one of {choice_list(options)}")
    return value


def check_preset(preset: str, table: Mapping[str, T]) -> T:
    """``table[preset]``, or an :class:`OptionError` naming the valid presets."""
    return table[check_choice(preset, table, "preset")]
