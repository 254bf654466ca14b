"""User-facing errors: one clear line, exit status 2, no traceback."""

from __future__ import annotations

from pathlib import Path


class DeepAdvError(Exception):
    """An error caused by the user's input or environment (bad file, bad option).

    The command line prints ``error: <message>`` on one line and exits with status 2.
    """

    exit_code = 2


def file_error(path: str | Path, problem: str) -> DeepAdvError:
    """Build an error that names the file and the problem."""
    return DeepAdvError(f"{path}: {problem}")


def check_preset(preset: str, table: dict) -> dict:
    """Return ``table[preset]`` or raise a clear error naming the valid presets."""
    if preset not in table:
        raise DeepAdvError(f"unknown preset {preset!r}; choose one of {', '.join(table)}")
    return dict(table[preset])
