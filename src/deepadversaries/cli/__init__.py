"""The ``deepadv`` command line.

Each verb lives in its own module here and registers itself on the shared Typer app
(and, for figures, on the ``plot`` sub-app). ``main`` turns :class:`DeepAdvError` into
one line on stderr and exit status 2; ``DEEPADV_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from deepadversaries.errors import DeepAdvError
from deepadversaries.cli import (
    analyze, attack, card, certify, evaluate, import_data, reproduce, robustness, simulate, study, train,
)

app = typer.Typer(
    name="deepadv",
    help=(
        "DeepAdversaries: how robust are galaxy-morphology classifiers to survey noise "
        "(Y10 -> Y1), to survey defects and to one-pixel corruption, with and without domain adaptation?\n\n"
        "Pipeline: simulate -> train -> evaluate -> attack -> analyze, or all of it with "
        "'deepadv reproduce --preset quick'; over several seeds with confidence intervals: 'deepadv study'."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
plot_app = typer.Typer(
    help="Make one figure from a dataset or a run folder.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(plot_app, name="plot")


def _register_all() -> None:
    for module in (simulate, import_data, train, evaluate, attack, certify, robustness, analyze, reproduce, study, card):
        module.register(app, plot_app)


_register_all()


def _debug() -> bool:
    return os.environ.get("DEEPADV_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``deepadv`` console script."""
    try:
        app(args=argv, prog_name="deepadv")  # standalone: handles --help and usage errors (exit 2)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except DeepAdvError as exc:
        if _debug():
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        code = 130
    except MemoryError:
        print("error: out of memory; try a smaller --batch-size or fewer --workers", file=sys.stderr)
        code = 1
    except Exception as exc:  # an internal error: short message unless debugging
        if _debug():
            traceback.print_exc()
        else:
            print(
                f"internal error: {type(exc).__name__}: {exc} (set DEEPADV_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
        code = 1
    sys.stdout.flush()
    if argv is None:
        sys.exit(code)
    return code
