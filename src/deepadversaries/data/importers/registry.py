"""The importer registry: one :class:`~deepadversaries.data.importers.base.ImporterSpec` per input format.

:data:`FORMATS` holds the formats by name: the built-ins ``fits`` (FITS cutouts listed in a catalogue,
:mod:`~deepadversaries.data.importers.fits`), ``hdf5`` (:mod:`~deepadversaries.data.importers.hdf5`) and
``npy`` (a folder in the dataset layout, :mod:`~deepadversaries.data.importers.npy`), then formats added
with :func:`register_format`. ``deepadv import --format`` takes its choices and help from it, routes
to the spec's builder, refuses the options of another format (:func:`foreign_options`) and, without
``--format``, picks the format from the given input (:func:`guess_format`).

Adding a format: one module with ``build_source(inputs, options) -> Source`` (see
:class:`~deepadversaries.data.importers.base.Source`) and one :class:`ImporterSpec` -- in
:data:`BUILTIN` below for the package, or with :func:`register_format` at run time. This module is
light (no astropy, no h5py): a built-in spec names its builder as ``"module:function"``, imported on
first use, so the command line can build its help from it at start-up.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepadversaries.data.importers.base import ImporterSpec, ImportOptions, Source
from deepadversaries.errors import OptionError, check_choice

__all__ = ["BUILTIN", "FORMATS", "SHARED_OPTIONS", "register_format", "unregister_format", "get_format",
           "check_format", "guess_format", "foreign_options", "build_source", "formats_help"]

_PACKAGE = "deepadversaries.data.importers"
_FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")

#: the options every format takes (:class:`~deepadversaries.data.importers.base.ImportOptions`)
SHARED_OPTIONS: tuple[str, ...] = ("--out", "--format", "--classes", "--bands", "--domain-names", "--stretch",
                                   "--seed", "--chunk", "--fit-sample", "--overwrite")

#: the package's formats, in the order :func:`guess_format` asks them
BUILTIN: tuple[ImporterSpec, ...] = (
    ImporterSpec("fits", "--catalog", f"{_PACKAGE}.fits:build_source", lambda path: True,
                 ("--path-column", "--label-column", "--id-column", "--split-column", "--augmentation-column",
                  "--target-path-column", "--hdus", "--band-axis"), _FITS_SUFFIXES,
                 "FITS cutouts listed in a catalogue (FITS binary table or CSV)"),
    ImporterSpec("hdf5", "--input", f"{_PACKAGE}.hdf5:build_source", lambda path: not Path(path).is_dir(),
                 ("--images-key", "--labels-key", "--split-key", "--ids-key", "--target-images-key",
                  "--augmentation-key", "--groups", "--band-axis"), (".h5", ".hdf5", ".he5", ".hdf"),
                 "one HDF5 file: named datasets, Galaxy10 DECaLS, or one group per domain and split"),
    ImporterSpec("npy", "--input", f"{_PACKAGE}.npy:build_source", lambda path: Path(path).is_dir(), (),
                 (".npy",), "a folder in the dataset layout (validated, normalisation redone)"),
)

#: every format by name: the built-ins, then run-time registrations
FORMATS: dict[str, ImporterSpec] = {spec.name: spec for spec in BUILTIN}


def register_format(spec: ImporterSpec, *, replace: bool = False) -> ImporterSpec:
    """Add an input format to :data:`FORMATS`; return the spec.

    Args:
        spec: the format; its ``input_option`` must be "--catalog" or "--input" (the command line's).
        replace: replace a registered format of the same name [default: False].

    Raises:
        OptionError: the name is taken (without ``replace``), or an unknown input option.
    """
    if spec.name in FORMATS and not replace:
        raise OptionError(f"an import format named {spec.name!r} is registered already; choose another name")
    check_choice(spec.input_option, ("--catalog", "--input"), "input option")
    FORMATS[spec.name] = spec
    return spec


def unregister_format(name: str) -> None:
    """Remove a format registered at run time (the built-ins stay)."""
    if any(spec.name == name for spec in BUILTIN):
        raise OptionError(f"{name!r} is a built-in import format and cannot be removed")
    FORMATS.pop(name, None)


def get_format(name: str) -> ImporterSpec:
    """The spec of format ``name``; an :class:`OptionError` naming the choices otherwise."""
    check_choice(name, FORMATS, "--format")
    return FORMATS[name]


def check_format(value: str) -> str:
    """``value`` if it is a known ``--format``."""
    return get_format(value).name


def guess_format(inputs: Mapping[str, Any]) -> str:
    """The ``--format`` implied by the given inputs (``{"--catalog": path or None, "--input": ...}``):
    the first format, run-time registrations before the built-ins, whose input option was given and
    whose ``detect`` accepts it (built-ins: fits with a catalogue, npy for a folder, else hdf5)."""
    registered = [s for s in FORMATS.values() if s not in BUILTIN]
    for spec in registered + [s for s in BUILTIN if s.name in FORMATS]:
        value = inputs.get(spec.input_option)
        if value is not None and spec.detect(Path(value)):
            return spec.name
    given = [o for o in ("--catalog", "--input") if inputs.get(o) is not None]
    if given:
        raise OptionError(f"no import format recognises {given[0]} {inputs[given[0]]}; name one with --format "
                          f"({', '.join(FORMATS)})")
    raise OptionError("give --catalog FILE (FITS cutouts) or --input FILE|FOLDER (HDF5 file or npy folder)")


def foreign_options(spec: ImporterSpec, given: Mapping[str, Any]) -> list[str]:
    """The given command-line options (name -> value, None when not given) that ``spec`` does not read."""
    reads = {spec.input_option, *spec.options, *SHARED_OPTIONS}
    return [name for name, value in given.items() if value is not None and name not in reads]


def build_source(spec: ImporterSpec, inputs: Mapping[str, Any], options: ImportOptions) -> Source:
    """Open the user's data with the spec's builder (a ``"module:function"`` imported here)."""
    build = spec.build
    if isinstance(build, str):
        module, _, attr = build.partition(":")
        build = getattr(importlib.import_module(module), attr)
    return build(inputs, options)


def formats_help() -> str:
    """The ``--format`` help: each format with its input option and description."""
    parts = [f"{s.name} ({s.input_option}: {s.help})" if s.help else f"{s.name} ({s.input_option})"
             for s in FORMATS.values()]
    return ("One of: " + "; ".join(parts) + ". Default: fits with --catalog, npy when --input is a folder, "
            "else hdf5.")
