"""One look for every progress bar: rich, to stderr, quiet when not a terminal."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def make_progress(*extra_columns, transient: bool = False, disable: bool | None = None) -> Progress:
    """A rich progress display: description, bar, count, percent, elapsed, ETA, extras."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=transient,
        disable=disable,
    )


def info(message: str) -> None:
    """Print a status line to stderr."""
    console.print(message, highlight=False)
