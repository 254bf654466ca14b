"""The training methods as values: the one registry every list of methods is derived from.

A method is a :class:`MethodSpec`: its name (``--method``), its labels for figures and tables,
when it adapts to the unlabelled second domain (during training, before inference, or not at
all), its settings (each a :class:`MethodSetting` with default, type, bounds, help and the
source of its default), the quantities its alignment term logs (``log.csv`` columns
``train_<name>``), its alignment measure and the builder of its alignment term.

Contracts:

- Plain data, no torch: :mod:`deepadversaries.config` validates a run's method settings with
  the spec, the CLI generates ``deepadv train``'s method options from the specs, the training
  module builds the alignment term with :meth:`MethodSpec.build`, the package's tables
  (:data:`deepadversaries.METHODS`, ``METHOD_LABELS``, ``METHOD_SHORT``) are read from here.
- A builder is a callable ``builder(settings, latent_dim=d)`` returning the alignment term
  (``term, logs = term(z_source, z_target)``, ``term.set_progress(p)``), or the string
  ``"module:attribute"`` naming one, imported when first used: the built-in methods name
  their modules in :mod:`deepadversaries.adaptation`, so this module imports nothing above it.
- A setting ``s`` of method ``m`` is stored in :attr:`TrainConfig.method_settings
  <deepadversaries.config.TrainConfig>` as ``s``; on the command line and in ``config.json``
  files written before the registry it is ``{m}_{s}`` (``--mmd-weight``, ``mmd_weight``).
- :func:`register_method` adds a method at run time (a plugin or a test); its options, log
  columns and labels then appear everywhere the built-in ones do.

Checkpoint selection is the same label-free rule for every method: the epoch with the best
Y10 validation accuracy (ties: lower Y10 validation loss). Only Y10 labels are read; the Y1
validation accuracy is logged for information only. The alternatives are worse: the
validation alignment measure rewards a collapsed latent space, DANN's domain accuracy
oscillates, and reverse validation (Ganin et al. 2016) needs a second training per
candidate checkpoint.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from deepadversaries.errors import OptionError, check_choice

#: the share of each training batch that ``adv-1p`` replaces by one-pixel adversarial examples (the one
#: place it is declared; ``--adv-share`` overrides it, and adds the same examples to ``mmd``, ``dann``,
#: ``coral`` or ``adabn`` training): half, so every step still sees as many clean images as changed ones
ADV_1P_SHARE = 0.5
#: pixel positions the corner search of adv-1p ranks by first-order gain and tries per image
ADV_1P_POSITIONS = 8

#: how every method chooses its kept checkpoint (see the module docstring for why)
CHECKPOINT_CRITERION = ("best Y10 validation accuracy, ties broken by the lower Y10 validation loss "
                        "(Y10 labels only; no Y1 label is read)")

#: when a method adapts to the unlabelled second domain: each training step aligns the two domains'
#: latents (``training``), the trained model is adapted before Y1 inference (``inference``), or never
ADAPTS: tuple[str, ...] = ("training", "inference", "none")
#: the types a setting may have (a tuple setting is a non-empty tuple of numbers; not a CLI option)
SETTING_KINDS: tuple[type, ...] = (float, int, str, bool, tuple)

#: the published code's kernel widths, as σ² in k(a, b) = exp(−‖a − b‖² / (2σ²)) (SPEC 5)
MMD_SIGMAS2: tuple[float, ...] = (
    1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0,
    100.0, 1e3, 1e4, 1e5, 1e6,
)
#: the MMD² estimators: the paper's eq. 2 (a U-statistic) and the published code's means over all pairs
MMD_ESTIMATORS: tuple[str, ...] = ("unbiased", "biased")
#: γ of DANN's reversal-weight schedule λ_p = 2 / (1 + exp(−γ p)) − 1 (Ganin et al. 2016, sec. 5.2.2)
DANN_GAMMA = 10.0
#: width of DANN's domain-classifier hidden layers (DomainBed's DANN default ``mlp_width``)
DANN_HIDDEN = 256

_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class MethodSetting:
    """One setting of a method, declared on its spec.

    Attributes:
        name: the setting's name inside the method (``weight``); a lower-case identifier.
        default: its value when not given.
        help: one line for ``deepadv train --help`` (units, what it does).
        kind: ``float``, ``int``, ``str``, ``bool`` or ``tuple`` (of numbers) [default: float].
        minimum, maximum: bounds of a number, or of every element of a tuple [default: none].
        exclusive_minimum: the minimum itself is refused (``> minimum``) [default: False].
        choices: the allowed values of a ``str`` setting [default: any].
        source: where the default comes from (a paper, DomainBed) [default: ""].
    """

    name: str
    default: Any
    help: str
    kind: type = float
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if not _IDENTIFIER.match(self.name):
            raise OptionError(f"method setting name {self.name!r} must be a lower-case identifier")
        if self.kind not in SETTING_KINDS:
            raise OptionError(f"method setting {self.name!r}: kind must be one of float, int, str, bool, tuple")
        object.__setattr__(self, "default", self.check(self.default, self.name))

    @property
    def on_command_line(self) -> bool:
        """Whether ``deepadv train`` has an option for it (every kind but ``tuple``)."""
        return self.kind is not tuple

    def check(self, value: Any, key: str) -> Any:
        """``value`` converted to the setting's kind and checked; :class:`OptionError` naming ``--key``.

        Args:
            value: what the user, a preset or a ``config.json`` gave.
            key: the name the message uses (``mmd_weight`` → ``--mmd-weight``).
        """
        flag = _flag(key)
        if self.kind is bool:
            if not isinstance(value, bool):
                raise OptionError(f"{flag} must be true or false, got {value!r}")
            return value
        if self.kind is str:
            text = str(value)
            if self.choices:
                check_choice(text, self.choices, flag)
            return text
        if self.kind is tuple:
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
                raise OptionError(f"{flag} must be a list of numbers, got {value!r}")
            items = tuple(self._number(v, flag, float) for v in value)
            if not items:
                raise OptionError(f"{flag} must be a non-empty list of numbers")
            return items
        return self._number(value, flag, self.kind)

    def _number(self, value: Any, flag: str, kind: type) -> Any:
        if isinstance(value, bool):
            raise OptionError(f"{flag} must be a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{flag} must be a number, got {value!r}") from exc
        if kind is int and number != value:
            raise OptionError(f"{flag} must be an integer, got {value!r}")
        if not math.isfinite(number):
            raise OptionError(f"{flag} must be a finite number, got {value!r}")
        if self.minimum is not None:
            if self.exclusive_minimum and number <= self.minimum:
                raise OptionError(f"{flag} must be greater than {self.minimum:g}, got {value!r}")
            if number < self.minimum:
                raise OptionError(f"{flag} must be " + ("non-negative" if self.minimum == 0 else
                                                        f"at least {self.minimum:g}") + f", got {value!r}")
        if self.maximum is not None and number > self.maximum:
            raise OptionError(f"{flag} must be at most {self.maximum:g}, got {value!r}")
        return number


class MethodSettings(Mapping):
    """A method's settings after :meth:`MethodSpec.resolve`: read-only, hashable, JSON-ready."""

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values = dict(values or {})

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._values.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._values) == dict(other)

    def __repr__(self) -> str:
        return f"MethodSettings({self._values!r})"

    def to_json(self) -> dict[str, Any]:
        """A plain dict (tuples as lists) for ``config.json``."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self._values.items()}


@dataclass(frozen=True)
class MethodSpec:
    """What the configuration, the CLI, training, evaluation and the reports need to know about one method.

    Attributes:
        name: the method's value (``--method``): lower-case letters, digits and hyphens.
        label: its name in figures ("Domain adaptation (MMD)").
        short: its name in table columns ("DA (MMD)").
        summary: one line for help texts and reports.
        adapts: ``training`` (each step takes an unlabelled Y1 batch of the same size as the
            labelled Y10 batch and adds the alignment term; the paper's domain-adaptation
            weight decay, 1e-4, applies), ``inference`` (the trained model is adapted on the
            unlabelled Y1 training images before any Y1 inference: ``adabn``) or ``none``.
        settings: its settings, each with default, type, bounds, help and source.
        logs: the names the alignment term logs (``term, logs = alignment(z_s, z_t)``); each
            becomes the ``log.csv`` column ``train_<name>`` (NaN for the other methods).
        builder: the alignment term's builder, a callable or ``"module:attribute"`` (see the
            module docstring); required when ``adapts == "training"``, else unused.
        measure: the method's own alignment measure (a key of
            :data:`deepadversaries.adaptation.measures.ALIGNMENT_MEASURES`) [default: "mmd2"].
        reference: the method's paper.
        checkpoint_criterion: the label-free (for Y1) rule that keeps the checkpoint.
        adversarial_share: the share of each Y10 batch replaced by one-pixel adversarial
            examples by default (:mod:`deepadversaries.training.adversarial`); 0: none.
    """

    name: str
    label: str
    short: str
    summary: str
    adapts: str = "none"
    settings: tuple[MethodSetting, ...] = ()
    logs: tuple[str, ...] = ()
    builder: str | Callable[..., Any] | None = None
    measure: str = "mmd2"
    reference: str = ""
    checkpoint_criterion: str = CHECKPOINT_CRITERION
    adversarial_share: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise OptionError(f"method name {self.name!r} must be lower-case letters, digits and hyphens")
        check_choice(self.adapts, ADAPTS, "adaptation time")
        object.__setattr__(self, "settings", tuple(self.settings))
        object.__setattr__(self, "logs", tuple(self.logs))
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise OptionError(f"method {self.name!r} declares a setting twice: {', '.join(names)}")
        for log in self.logs:
            if not _IDENTIFIER.match(log):
                raise OptionError(f"method {self.name!r}: logged name {log!r} must be a lower-case identifier")
        if self.adapts == "training" and self.builder is None:
            raise OptionError(f"method {self.name!r} adapts during training and needs a builder of its alignment term")
        if not 0.0 <= self.adversarial_share <= 1.0:
            raise OptionError(f"method {self.name!r}: adversarial_share must be in [0, 1]")

    # -- when it adapts ---------------------------------------------------------------------------
    @property
    def adapts_in_training(self) -> bool:
        """Each training step aligns the Y10 and Y1 latents (draws unlabelled Y1 batches)."""
        return self.adapts == "training"

    @property
    def adapts_before_inference(self) -> bool:
        """The trained model is adapted on unlabelled Y1 images before Y1 inference."""
        return self.adapts == "inference"

    # -- settings ---------------------------------------------------------------------------------
    def key(self, setting: str) -> str:
        """The setting's flat name on the command line and in old ``config.json`` files: ``{method}_{setting}``."""
        return f"{self.name.replace('-', '_')}_{setting}"

    def setting(self, name: str) -> MethodSetting:
        """The declared :class:`MethodSetting` ``name``; :class:`OptionError` naming the choices."""
        for s in self.settings:
            if s.name == name:
                return s
        choices = ", ".join(s.name for s in self.settings) or "none"
        raise OptionError(f"unknown setting {name!r} of --method {self.name}; its settings: {choices}")

    def defaults(self) -> MethodSettings:
        """Every setting at its default."""
        return MethodSettings({s.name: s.default for s in self.settings})

    def resolve(self, given: Mapping[str, Any] | None = None) -> MethodSettings:
        """The method's settings: ``given`` (None values dropped) checked, the rest at their defaults.

        Raises:
            OptionError: a setting the method does not declare, or a value of the wrong type or out of bounds.
        """
        values = {s.name: s.default for s in self.settings}
        for name, value in (given or {}).items():
            if value is not None:
                values[name] = self.setting(name).check(value, self.key(name))
        return MethodSettings(values)

    # -- the alignment term -----------------------------------------------------------------------
    def build(self, settings: Mapping[str, Any] | None = None, *, latent_dim: int = 256) -> Any:
        """The alignment term with ``settings`` (checked by :meth:`resolve`), or None when the method has none.

        Args:
            settings: the method's settings [default: the defaults].
            latent_dim: width of the latent the term receives [default: 256].
        """
        if self.builder is None or not self.adapts_in_training:
            return None
        builder = self.builder
        if isinstance(builder, str):
            module, _, attribute = builder.partition(":")
            builder = importlib.import_module(module)
            for part in attribute.split("."):
                builder = getattr(builder, part)
        return builder(self.resolve(settings), latent_dim=latent_dim)


# ----------------------------------------------------------------------------------------------
# the built-in methods
# ----------------------------------------------------------------------------------------------
def _weight(default: float, help: str, source: str) -> MethodSetting:
    return MethodSetting("weight", default, help, minimum=0.0, source=source)


_BUILT_IN: tuple[MethodSpec, ...] = (
    MethodSpec(
        name="regular", label="Regular training", short="Reg",
        summary="weighted cross-entropy on labelled Y10 only",
        reference="Ćiprijanović et al. 2022 (SPEC 5)"),
    MethodSpec(
        name="mmd", label="Domain adaptation (MMD)", short="DA (MMD)",
        summary="+ λ·MMD²(z_Y10, z_Y1), multi-kernel Gaussian", adapts="training",
        settings=(
            _weight(0.05, "lambda of the MMD^2 term (paper 0.05; the authors' code 0.01).",
                    "the paper, λ = 0.05 (its published code used 0.01)"),
            MethodSetting("estimator", "unbiased", "MMD^2 estimator: unbiased (the paper's eq. 2) or biased "
                          "(the published code's means over all pairs, clamped at 0).", kind=str,
                          choices=MMD_ESTIMATORS, source="the paper, eq. 2"),
            MethodSetting("sigmas2", MMD_SIGMAS2, "kernel widths sigma^2 of the multi-kernel MMD, in squared "
                          "latent units.", kind=tuple, minimum=0.0, exclusive_minimum=True,
                          source="the published code's 19 widths"),
        ),
        logs=("mmd2",), builder="deepadversaries.adaptation.mmd:MMDAlignment.from_settings",
        measure="mmd2", reference="Ćiprijanović et al. 2022, eq. 2"),
    MethodSpec(
        name="coral", label="Domain adaptation (CORAL)", short="DA (CORAL)",
        summary="+ λ·‖C_Y10 − C_Y1‖²_F / (4d²), Deep CORAL", adapts="training",
        settings=(
            _weight(1.0, "Weight of the Deep CORAL term (default 1, DomainBed's; Sun & Saenko balance it with the "
                         "cross-entropy at the end of training: see log.csv).",
                    "DomainBed's default CORAL weight 1 (Gulrajani & Lopez-Paz 2021, mmd_gamma; its penalty "
                    "is the mean squared covariance difference, 4x this normalisation, plus a mean term). "
                    "Sun & Saenko 2016 choose λ so that the classification and CORAL losses are about equal "
                    "at the end of training, which needs a trained model: compare train_ce with train_coral "
                    "in log.csv and set --coral-weight ≈ train_ce / train_coral if they differ by more than "
                    "a factor 10"),
        ),
        logs=("coral",), builder="deepadversaries.adaptation.coral:CORALAlignment.from_settings",
        measure="coral", reference="Sun & Saenko 2016, Deep CORAL"),
    MethodSpec(
        name="dann", label="Domain adaptation (DANN)", short="DA (DANN)",
        summary="+ domain classifier behind a gradient reversal, λ_p = 2/(1+exp(−10p)) − 1", adapts="training",
        settings=(
            _weight(1.0, "Weight of the DANN domain loss (default 1, Ganin et al.; the reversal strength follows "
                         "their schedule).",
                    "Ganin et al. 2016: the domain loss enters the objective with weight 1 and the adaptation "
                    "strength is the reversal factor λ_p (DomainBed's default DANN lambda is also 1)"),
            MethodSetting("gamma", DANN_GAMMA, "gamma of the reversal schedule lambda_p = 2/(1+exp(-gamma p)) - 1.",
                          minimum=0.0, source="Ganin et al. 2016, sec. 5.2.2"),
            MethodSetting("hidden", DANN_HIDDEN, "Units in each of the domain classifier's two hidden layers.",
                          kind=int, minimum=1, source="DomainBed's DANN mlp_width"),
        ),
        logs=("dann_domain_loss", "dann_domain_acc", "dann_lambda"),
        builder="deepadversaries.adaptation.dann:DANNAlignment.from_settings",
        measure="proxy_a_distance", reference="Ganin et al. 2016, JMLR 17(59)"),
    MethodSpec(
        name="adabn", label="Domain adaptation (AdaBN)", short="DA (AdaBN)",
        summary="regular training, then batch-norm statistics re-estimated on unlabelled Y1 for Y1 inference",
        adapts="inference", reference="Li et al. 2016, AdaBN"),
    MethodSpec(
        name="adv-1p", label="One-pixel adversarial training", short="Adv-1p",
        summary=("regular training where a share of each batch is replaced by its most damaging one-pixel "
                 "change (corner values at sampled positions, lowest p(true))"),
        reference="Madry et al. 2018 (min-max adversarial training), with the one-pixel threat model of "
                  "Su et al. 2019",
        adversarial_share=ADV_1P_SHARE),
)

#: every method by name, in registration order: the built-ins, then those added by :func:`register_method`
METHOD_SPECS: dict[str, MethodSpec] = {spec.name: spec for spec in _BUILT_IN}
#: the built-in methods, in order (the package's :data:`deepadversaries.METHODS`)
BUILT_IN_METHODS: tuple[str, ...] = tuple(METHOD_SPECS)
#: flat names that a method setting's ``{method}_{setting}`` may not take (the training settings'
#: own names: :mod:`deepadversaries.config` reserves them)
_RESERVED_KEYS: set[str] = set()


def reserve_setting_keys(keys: tuple[str, ...] | set[str] | list[str]) -> None:
    """Reserve flat names (another setting's) that no method setting may take; for :mod:`deepadversaries.config`."""
    clash = [k for spec in METHOD_SPECS.values() for k in map(spec.key, (s.name for s in spec.settings)) if k in keys]
    if clash:
        raise OptionError(f"method setting {clash[0]!r} has the name of another setting")
    _RESERVED_KEYS.update(keys)


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a training method at run time: ``--method``, its options, log columns and labels follow.

    Args:
        spec: the method; its name must be new, and its settings' flat names
            (``{method}_{setting}``) must not be taken by another method or a training setting.

    Returns:
        ``spec``.

    Raises:
        OptionError: a name already registered, or a setting whose flat name is taken.
    """
    if not isinstance(spec, MethodSpec):
        raise OptionError(f"register_method takes a MethodSpec, got {type(spec).__name__}")
    if spec.name in METHOD_SPECS:
        raise OptionError(f"method {spec.name!r} is already registered")
    taken = set(_RESERVED_KEYS) | {other.key(s.name) for other in METHOD_SPECS.values() for s in other.settings}
    for s in spec.settings:
        if spec.key(s.name) in taken:
            raise OptionError(f"method {spec.name!r}: setting name {spec.key(s.name)!r} is taken")
    METHOD_SPECS[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    """Remove a method added by :func:`register_method` (the built-ins stay)."""
    if name in BUILT_IN_METHODS:
        raise OptionError(f"method {name!r} is built in and cannot be removed")
    METHOD_SPECS.pop(name, None)


def method_spec(method: str) -> MethodSpec:
    """The :class:`MethodSpec` of ``method``; :class:`OptionError` naming the choices if unknown."""
    return METHOD_SPECS[check_choice(method, METHOD_SPECS, "method")]


def method_names() -> tuple[str, ...]:
    """Every registered method's name, in registration order."""
    return tuple(METHOD_SPECS)


def setting_keys() -> dict[str, tuple[str, str]]:
    """Every method setting by its flat name: ``{"mmd_weight": ("mmd", "weight"), ...}``."""
    return {spec.key(s.name): (spec.name, s.name) for spec in METHOD_SPECS.values() for s in spec.settings}


def alignment_logs() -> tuple[str, ...]:
    """The names every registered method's alignment term logs, in registration order, each once."""
    return tuple(dict.fromkeys(log for spec in METHOD_SPECS.values() for log in spec.logs))


class _SpecField(Mapping):
    """A live read-only view ``{method: spec.<field>}`` over the registry (methods added later included)."""

    def __init__(self, attribute: str) -> None:
        self._attribute = attribute

    def __getitem__(self, method: str) -> str:
        # a grid's recipe ``METHOD+AUGMENT`` (``regular+survey-mix``) reads as the method's name + the augmentation
        base, join, augment = method.partition("+")
        value = getattr(METHOD_SPECS[base], self._attribute)
        return f"{value} + {augment}" if join else value

    def __iter__(self) -> Iterator[str]:
        return iter(METHOD_SPECS)

    def __len__(self) -> int:
        return len(METHOD_SPECS)

    def __repr__(self) -> str:
        return repr(dict(self))


#: how figures and reports name the methods (``spec.label``), and the short form of table columns
METHOD_LABELS: Mapping[str, str] = _SpecField("label")
METHOD_SHORT: Mapping[str, str] = _SpecField("short")

__all__ = ["ADAPTS", "ADV_1P_POSITIONS", "ADV_1P_SHARE", "BUILT_IN_METHODS", "CHECKPOINT_CRITERION", "DANN_GAMMA",
           "DANN_HIDDEN", "METHOD_LABELS", "METHOD_SHORT", "METHOD_SPECS", "MMD_ESTIMATORS", "MMD_SIGMAS2",
           "MethodSetting", "MethodSettings", "MethodSpec", "alignment_logs", "method_names", "method_spec",
           "register_method", "reserve_setting_keys", "setting_keys", "unregister_method"]
