"""One look for every progress bar: rich, to stderr, quiet when not a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator

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


#: Lightning's loggers: silenced during a training, routed to the stage log by ``reproduce``
LIGHTNING_LOGGERS: tuple[str, ...] = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
#: Lightning advice that does not apply to the package's in-memory data and fixed settings
LIGHTNING_ADVICE: tuple[str, ...] = (
    ".*does not have many workers.*", ".*number of training batches.*", ".*LightningModule.log.*",
    ".*It is recommended to use `self.log.*", ".*on_epoch=True.*", ".*tensorboardX.*",
    ".*Checkpoint directory.*exists and is not empty.*", ".*`isinstance\\(treespec, LeafSpec\\)`.*",
    ".*val_loss.*Monitored.*", ".*has `shuffle=True`.*", ".*GPU available but not used.*",
)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Silence Lightning's banner lines (loggers at WARNING) and its advice warnings meanwhile."""
    levels = {name: logging.getLogger(name).level for name in LIGHTNING_LOGGERS}
    try:
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for pattern in LIGHTNING_ADVICE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
