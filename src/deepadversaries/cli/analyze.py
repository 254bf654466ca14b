"""`deepadv analyze` (work in progress)."""

from __future__ import annotations

import typer


def register(app: typer.Typer, plot_app: typer.Typer) -> None:
    """Register this verb on the app (filled in by its issue)."""
