"""The corruption registry: one :class:`CorruptionSpec` per corruption, the one list everything derives from.

A spec holds everything the package says about one corruption: its function, its severity table in
each table set (with the parameter's name and unit), how a table entry is labelled in figures, a
one-phrase description (``deepadv robustness --help``), its sources, its family and what priors it
needs. :data:`CORRUPTIONS` holds the specs by name in the benchmark's order; the benchmark's
``--corruptions`` choices and help, the robustness table's rows, the figures' labels, the table
fingerprint and the card's rows all derive from it.

Adding a corruption: write its function ``f(electrons, severity, rng, domain, bands, options) ->
electrons`` (the contract of :mod:`deepadversaries.corruptions.suite`; a new module, or a function in
``suite``) and give it one :class:`CorruptionSpec` -- in :data:`BUILTIN` below for the package, or with
:func:`register_corruption` at run time (a notebook, a plug-in, a test). The rest follows.

This module is light (numbers and names, no GalSim or SciPy): the command line builds its help from it
at start-up. A built-in spec names its function as ``"module:function"``, imported on first use.
Contracts: names are unique, tables map every severity 1-5 to a finite number, the registration order
is the benchmark's order (built-ins first, then registrations in call order).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from deepadversaries.corruptions import tables as T
from deepadversaries.errors import OptionError, check_choice

__all__ = ["CorruptionSpec", "CORRUPTIONS", "BUILTIN", "TABLE_SET_NAMES", "FAMILIES", "register_corruption",
           "unregister_corruption", "get_spec", "table_set", "table_fingerprint", "corruptions_help"]

#: the table sets every spec gives a table for: "rubin" (Rubin-grounded, the default) and "stress"
TABLE_SET_NAMES: tuple[str, ...] = ("rubin", "stress")
#: the severities every table gives (0, the identity, is no table entry)
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
#: what a corruption models
FAMILIES: tuple[str, ...] = ("observing", "detector", "pipeline", "scene")
#: priors a corruption may need beyond the survey model: "galaxies" (the simulator's), "stars" (solar colours)
PRIORS: tuple[str, ...] = ("galaxies", "stars")

Corruption = Callable[..., Any]


@dataclass(frozen=True)
class CorruptionSpec:
    """One corruption of the benchmark.

    Attributes:
        name: the name on the command line, in files and in figures (``[a-z0-9_]``, unique).
        function: ``f(electrons, severity, rng, domain, bands, options) -> electrons`` (see
            :mod:`deepadversaries.corruptions.suite`), or ``"module:function"`` imported on first use.
        tables: severity (1-5) -> parameter value, per table set: ``{"rubin": {...}, "stress": {...}}``;
            a spec without a "stress" table uses its "rubin" one there.
        parameter: what the table's value is, e.g. "r-band zenith seeing FWHM of the co-add".
        unit: its unit, e.g. "arcsec".
        label: value -> short figure label, e.g. ``lambda v: f'{v:g}"'`` [default: ``f"{v:g} {unit}"``].
        help: one phrase for ``deepadv robustness --help`` [default: the parameter].
        sources: where the table's numbers come from (docs/robustness.md prints them) [default: ""].
        family: "observing", "detector", "pipeline" or "scene" [default: "pipeline"].
        needs: priors beyond the survey model, of "galaxies" (the simulator's) and "stars" [default: none].
        defect_placement: whether ``CorruptionOptions.defects`` (dithered, masked, no-dither) applies
            [default: False].
    """

    name: str
    function: Corruption | str
    tables: Mapping[str, Mapping[int, float]]
    parameter: str
    unit: str
    label: Callable[[float], str] | None = None
    help: str = ""
    sources: str = ""
    family: str = "pipeline"
    needs: tuple[str, ...] = ()
    defect_placement: bool = False
    _resolved: list[Corruption] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "_" for c in self.name) or self.name != self.name.lower():
            raise OptionError(f"corruption name {self.name!r} must be lower-case letters, digits and '_'")
        check_choice(self.family, FAMILIES, "corruption family")
        for prior in self.needs:
            check_choice(prior, PRIORS, "corruption prior")
        if "rubin" not in self.tables:
            raise OptionError(f"corruption {self.name!r} needs a 'rubin' table (severity 1-5 -> value)")
        for set_name, table in self.tables.items():
            check_choice(set_name, TABLE_SET_NAMES, "table set")
            if sorted(table) != list(SEVERITIES) or not all(math.isfinite(float(v)) for v in table.values()):
                raise OptionError(f"corruption {self.name!r}: the {set_name} table must map each severity 1-5 to a "
                                  f"finite number, got {dict(table)!r}")

    def table(self, set_name: str = "rubin") -> Mapping[int, float]:
        """The severity table (1-5 -> value) in the table set ``set_name``."""
        check_choice(set_name, TABLE_SET_NAMES, "table set")
        return self.tables.get(set_name, self.tables["rubin"])

    def format(self, value: float) -> str:
        """The short figure label of a table value."""
        return self.label(value) if self.label is not None else f"{value:g} {self.unit}"

    @property
    def apply(self) -> Corruption:
        """The corruption function (imported from ``"module:function"`` on first use)."""
        if not self._resolved:
            if isinstance(self.function, str):
                module, _, attr = self.function.partition(":")
                self._resolved.append(getattr(importlib.import_module(module), attr))
            else:
                self._resolved.append(self.function)
        return self._resolved[0]


def _pct(v: float) -> str:
    return f"{100 * v:g}"


_SUITE = "deepadversaries.corruptions.suite"
_S = T.STRESS_TABLES

#: the package's corruptions, in the benchmark's order (numbers and sources: corruptions/tables.py)
BUILTIN: tuple[CorruptionSpec, ...] = (
    CorruptionSpec("seeing", f"{_SUITE}:seeing", {"rubin": T.SEEING_FWHM_R, "stress": _S["seeing"]},
                   "r-band zenith seeing FWHM of the co-add", "arcsec", lambda v: f'{v:g}"',
                   "a worse co-add PSF", "SRD median 0.7\"; 5-30 % worse (ASSUMPTION)", "observing"),
    CorruptionSpec("psf_ellipticity", f"{_SUITE}:psf_ellipticity",
                   {"rubin": T.PSF_ELLIPTICITY, "stress": _S["psf_ellipticity"]},
                   "PSF ellipticity in r", "|e|", lambda v: f"e = {v:g}", "a sheared, band-dependent PSF",
                   "SRD SE1/SE2", "observing"),
    CorruptionSpec("sky_error", f"{_SUITE}:sky_error", {"rubin": T.SKY_ERROR_FRACTION, "stress": _S["sky_error"]},
                   "sky-subtraction error", "fraction of sky", lambda v: f"±{_pct(v)} % sky",
                   "+- a fraction of the sky", "SMTN-016; HSC PDR2 (Aihara et al. 2019)", "pipeline"),
    CorruptionSpec("background_gradient", f"{_SUITE}:background_gradient",
                   {"rubin": T.BACKGROUND_GRADIENT, "stress": _S["background_gradient"]},
                   "background plane across the stamp", "fraction of sky", lambda v: f"{_pct(v)} % sky",
                   "a plane and local over-subtraction", "LSST/HSC background binSize 128 (ASSUMPTION)", "pipeline"),
    CorruptionSpec("cosmic_rays", f"{_SUITE}:cosmic_rays",
                   {"rubin": T.COSMIC_RAY_SURVIVAL, "stress": _S["cosmic_rays"]},
                   "tracks surviving rejection", "fraction", lambda v: f"{_pct(v)} % kept",
                   "tracks surviving rejection", "PDG; Groom 2004 (ASSUMPTION for survival)", "detector"),
    CorruptionSpec("hot_pixels", f"{_SUITE}:hot_pixels", {"rubin": T.HOT_PIXEL_FRACTION, "stress": _S["hot_pixels"]},
                   "hot pixels missed by the mask", "fraction of pixels per visit", lambda v: f"{_pct(v)} %",
                   "hot pixels missed by the mask, see --defects", "OSS PixFrac; eotest", "detector",
                   defect_placement=True),
    CorruptionSpec("dead_pixels", f"{_SUITE}:dead_pixels",
                   {"rubin": T.DEAD_PIXEL_FRACTION, "stress": _S["dead_pixels"]},
                   "dead pixels missed by the mask", "fraction of pixels per visit", lambda v: f"{_pct(v)} %",
                   "dead pixels missed by the mask, see --defects", "OSS PixFrac", "detector",
                   defect_placement=True),
    CorruptionSpec("bad_columns", f"{_SUITE}:bad_columns", {"rubin": T.BAD_COLUMNS, "stress": _S["bad_columns"]},
                   "bad columns missed by the mask", "columns per stamp per visit", lambda v: f"{v:g} col",
                   "bad columns missed by the mask, see --defects", "ASSUMPTION", "detector",
                   defect_placement=True),
    CorruptionSpec("star_neighbour", f"{_SUITE}:star_neighbour",
                   {"rubin": T.STAR_NEIGHBOUR_R_MAG, "stress": _S["star_neighbour"]},
                   "neighbouring star", "r mag", lambda v: f"r = {v:g}", "a star at least 4\" from the galaxy",
                   "Coupon et al. 2018 (HSC star masks)", "scene", ("stars",)),
    CorruptionSpec("bleed", f"{_SUITE}:bleed_trail", {"rubin": T.BLEED_STAR_R_MAG, "stress": _S["bleed"]},
                   "saturated star outside the stamp", "r mag", lambda v: f"r = {v:g}",
                   "a saturated star's bleed trail running into the stamp", "Baumer & Roodman 2015 (full well)",
                   "scene", ("stars",)),
    CorruptionSpec("blend", f"{_SUITE}:blend", {"rubin": T.BLEND_FLUX_RATIO, "stress": _S["blend"]},
                   "neighbour galaxy", "flux ratio to the primary (r)", lambda v: f"ratio {v:g}",
                   "a second galaxy from the simulator", "Bosch et al. 2018; Melchior et al. 2021", "scene",
                   ("galaxies",)),
    CorruptionSpec("satellite", f"{_SUITE}:satellite", {"rubin": T.SATELLITE_G_MAG, "stress": _S["satellite"]},
                   "satellite trail", "g mag", lambda v: f"g = {v:g}", "a LEO-satellite trail",
                   "Tyson et al. 2020", "scene", ("stars",)),
    CorruptionSpec("misregistration", f"{_SUITE}:misregistration",
                   {"rubin": T.MISREGISTRATION_ARCSEC, "stress": _S["misregistration"]},
                   "band shift", "arcsec", lambda v: f"{1000 * v:g} mas", "one band shifted",
                   "SITCOMTN-159; SRD AM1", "pipeline"),
    CorruptionSpec("correlated_noise", f"{_SUITE}:correlated_noise",
                   {"rubin": T.CORRELATED_NOISE_SIGMA_PX, "stress": _S["correlated_noise"]},
                   "warping-kernel RMS", "pixels", lambda v: f"{v:g} px", "co-add warping",
                   "Lanczos-3 resampling (ASSUMPTION)", "pipeline"),
    CorruptionSpec("compression", f"{_SUITE}:compression", {"rubin": T.COMPRESSION_Q, "stress": _S["compression"]},
                   "quantisation level q", "noise / step", lambda v: f"q = {v:g}", "RICE quantisation",
                   "obs_base policy/writeRecipes.yaml", "pipeline"),
    CorruptionSpec("depth", f"{_SUITE}:depth", {"rubin": T.DEPTH_FRACTION, "stress": _S["depth"]},
                   "depth", "fraction of the domain's exposure", lambda v: f"{_pct(v)} % depth",
                   "a shallower co-add", "ASSUMPTION", "observing"),
)

#: every corruption by name, in the benchmark's order: the built-ins, then run-time registrations
CORRUPTIONS: dict[str, CorruptionSpec] = {spec.name: spec for spec in BUILTIN}


def register_corruption(spec: CorruptionSpec, *, replace: bool = False) -> CorruptionSpec:
    """Add a corruption to :data:`CORRUPTIONS` (after the others); return the spec.

    Args:
        spec: the corruption.
        replace: replace a registered corruption of the same name (in its place) [default: False].

    Raises:
        OptionError: the name is taken (without ``replace``).
    """
    if spec.name in CORRUPTIONS and not replace:
        raise OptionError(f"a corruption named {spec.name!r} is registered already; choose another name")
    CORRUPTIONS[spec.name] = spec
    return spec


def unregister_corruption(name: str) -> None:
    """Remove a corruption registered at run time (the built-ins stay)."""
    if any(spec.name == name for spec in BUILTIN):
        raise OptionError(f"{name!r} is a built-in corruption and cannot be removed")
    CORRUPTIONS.pop(name, None)


def get_spec(name: str) -> CorruptionSpec:
    """The spec of corruption ``name``; an :class:`OptionError` naming the choices otherwise."""
    check_choice(name, CORRUPTIONS, "corruption")
    return CORRUPTIONS[name]


def table_set(set_name: str = "rubin") -> dict[str, Mapping[int, float]]:
    """Every registered corruption's table in the table set ``set_name``, by name."""
    check_choice(set_name, TABLE_SET_NAMES, "table set")
    return {name: spec.table(set_name) for name, spec in CORRUPTIONS.items()}


def table_fingerprint(set_name: str = "rubin") -> str:
    """A short hash of one table set of every registered corruption and of every constant: equal
    fingerprints, the same corruptions (:func:`deepadversaries.corruptions.tables.fingerprint`)."""
    return T.fingerprint(table_set(set_name))


def corruptions_help() -> str:
    """The ``--corruptions`` help: 'all' or the registered names, each with its phrase."""
    names = ", ".join(f"{s.name} ({s.help or s.parameter})" for s in CORRUPTIONS.values())
    return f"'all' or a comma-separated list of: {names}. Tables and sources: docs/robustness.md."
