"""The registry of attack searches: one :class:`SearchSpec` per ``--search`` value.

Contract: every list of searches the package shows — ``AttackConfig``'s validation and
its departures from the paper, the run folders (:func:`deepadversaries.models.runs.attack_dir`),
the campaign's engine (:func:`deepadversaries.attacks.campaign.attack_run`), the figures'
labels and line styles (:mod:`deepadversaries.plots.attacks`), the ``deepadv attack
--search`` help, the grid's and the analysis's lists — is read from :func:`search_specs`
at the time it is needed, so a search registered with :func:`register_search` (from any
module, a test file included) is known everywhere at once.

Adding a search is one new module (an :class:`~deepadversaries.attacks.base.Attack`
subclass and a builder) plus one :func:`register_search` call (the built-in ones are the
entries of :data:`BUILT_IN` below). This module sits at the vocabulary level (it imports
nothing of the package but :mod:`deepadversaries.errors`), so the configuration and the
run-folder layout can read it; the built-in builders are therefore named by a
``"module:function"`` string, imported only when a campaign builds its engine. A builder
registered at run time may be any callable.

A builder is called as ``builder(model, config, *, batch_images, mode, success, seed, device,
chunk_size, bf16, value_range, threads)`` with the campaign's
:class:`~deepadversaries.config.AttackConfig` and returns the
:class:`~deepadversaries.attacks.base.Attack` that searches every image.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deepadversaries.errors import OptionError, check_choice


@dataclass(frozen=True)
class SearchSpec:
    """One search: its names, where it writes, how it is drawn and how it is built.

    Attributes:
        name: the ``--search`` value (``"de"``), lower case, no spaces.
        folder: its folder in a run (``RUN/<folder>/``), unique over the searches.
        label: the name figures and reports give it (``"differential evolution"``).
        style: its line in figures, (matplotlib line style, colour).
        builder: ``builder(model, config, *, batch_images, **common) -> Attack`` (see the module
            docstring), or a ``"package.module:function"`` string naming one.
        help: what it is, one or two sentences for ``deepadv attack --help``.
        departure: how it departs from the paper's campaign, for ``summary.json``'s
            ``departures_from_paper`` (``{query_budget}`` is replaced by the campaign's);
            empty for the paper's own search [default: ""].
        one_pixel: it changes exactly one pixel (``--pixels`` other than 1 is refused) [default: False].
        takes_values: it tries the value set ``--values`` (other searches refuse it) [default: False].
        population_sized: ``--pop-size`` and ``--max-iter`` size it (departures from the
            paper's sizes are reported) [default: False].
    """

    name: str
    folder: str
    label: str
    style: tuple[str, str]
    builder: Callable[..., Any] | str
    help: str
    departure: str = ""
    one_pixel: bool = False
    takes_values: bool = False
    population_sized: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip().lower() or " " in self.name:
            raise OptionError(f"a search name is one lower-case word such as 'de', got {self.name!r}")
        if not self.folder or "/" in self.folder or "\\" in self.folder or self.folder.startswith("."):
            raise OptionError(f"search {self.name!r}: its folder must be a plain folder name, got {self.folder!r}")
        if isinstance(self.builder, str) and ":" not in self.builder:
            raise OptionError(f"search {self.name!r}: a builder named by a string is 'package.module:function', "
                              f"got {self.builder!r}")
        if not isinstance(self.builder, str) and not callable(self.builder):
            raise OptionError(f"search {self.name!r}: the builder must be callable, got {self.builder!r}")

    def resolve_builder(self) -> Callable[..., Any]:
        """The builder itself (a ``"module:function"`` string is imported here)."""
        if not isinstance(self.builder, str):
            return self.builder
        module, function = self.builder.split(":", 1)
        return getattr(importlib.import_module(module), function)

    def build(self, model: Any, config: Any, **settings: Any) -> Any:
        """The search engine for ``model`` under ``config`` (the builder called with ``settings``)."""
        return self.resolve_builder()(model, config, **settings)


#: the package's searches, in the order lists show them
BUILT_IN: tuple[SearchSpec, ...] = (
    SearchSpec(
        name="de", folder="attack", label="differential evolution", style=("-", "#003f5c"),
        builder="deepadversaries.attacks.de:build_search", population_sized=True,
        help="differential evolution (the paper's; RUN/attack/)."),
    SearchSpec(
        name="exhaustive", folder="attack_exhaustive", label="corner search (lower bound)", style=(":", "k"),
        builder="deepadversaries.attacks.exhaustive:build_search", one_pixel=True, takes_values=True,
        help="the corner search, every pixel position x the value set (the 8 corners of the range and --values), "
             "exhaustive over that set only, so a lower bound of one-pixel vulnerability; 'deepadv certify' gives "
             "the exact answer (RUN/attack_exhaustive/, with flipmap.npz).",
        departure="the corner search: every pixel position × the value set, exhaustive over that set only "
                  "(paper: differential evolution)"),
    SearchSpec(
        name="sparse-rs", folder="attack_sparse_rs", label="Sparse-RS", style=("--", "#bc5090"),
        builder="deepadversaries.attacks.sparse_rs:build_search",
        help="Sparse-RS random search, Croce et al. 2022 (RUN/attack_sparse_rs/).",
        departure="Sparse-RS random search (Croce et al. 2022), {query_budget} queries per target "
                  "(paper: differential evolution)"),
)

_REGISTRY: dict[str, SearchSpec] = {spec.name: spec for spec in BUILT_IN}


def register_search(spec: SearchSpec, *, replace: bool = False) -> SearchSpec:
    """Make ``spec`` a search every list knows (``--search``, run folders, figures, ...).

    Args:
        spec: the search.
        replace: allow replacing a search of the same name [default: False].

    Returns:
        ``spec``.

    Raises:
        OptionError: a name already registered (without ``replace``) or a folder another
            search writes.
    """
    if spec.name in _REGISTRY and not replace:
        raise OptionError(f"a search named {spec.name!r} is already registered")
    clash = [s.name for s in _REGISTRY.values() if s.folder == spec.folder and s.name != spec.name]
    if clash:
        raise OptionError(f"search {spec.name!r}: folder {spec.folder!r} is already search {clash[0]!r}'s")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_search(name: str) -> None:
    """Forget a registered search (a built-in one cannot be removed).

    Raises:
        OptionError: an unknown name or a built-in search.
    """
    check_choice(name, _REGISTRY, "search")
    if any(spec.name == name for spec in BUILT_IN):
        raise OptionError(f"{name!r} is a built-in search and cannot be removed")
    del _REGISTRY[name]


def search_specs() -> tuple[SearchSpec, ...]:
    """Every registered search, built-in ones first, then in order of registration."""
    return tuple(_REGISTRY.values())


def search_names() -> tuple[str, ...]:
    """The ``--search`` values, in :func:`search_specs` order."""
    return tuple(_REGISTRY)


def search_spec(name: str, what: str = "--search") -> SearchSpec:
    """The spec of search ``name``.

    Raises:
        OptionError: an unknown search (the message names ``what`` and lists the choices).
    """
    check_choice(name, _REGISTRY, what)
    return _REGISTRY[name]


def search_help() -> str:
    """The ``--search`` help: each search's name and :attr:`SearchSpec.help`, separated by semicolons."""
    return "; ".join(f"{spec.name}: {spec.help.rstrip('.')}" for spec in search_specs()) + "."
