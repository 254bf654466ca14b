"""Typed settings of the three long stages: simulate, train and attack.

Each is a frozen dataclass that owns its defaults, its presets (``tiny``, ``quick``,
``paper``), its validation (in ``__post_init__``: a bad value raises
:class:`~deepadversaries.errors.OptionError` with the option's name) and its JSON form
(``to_json`` / ``from_json``). Stage functions take these objects; the command line builds
them from its options with ``from_preset(preset, **overrides)``, where an override of
``None`` means "the preset's value".

Contract: ``from_json(to_json(c)) == c``, and the JSON keys are those the stages have
always written (``dataset.json``'s ``config``, a run's ``config.json``, an attack's
``summary.json`` ``settings``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from deepadversaries import FILE_PREFIX, MODELS, PRESETS, TIMM_PREFIX
from deepadversaries.attacks.choices import ATTACK_PRECISIONS, KEEP_RULES, MODES, SUCCESS_RULES, VALUE_RANGES
from deepadversaries.attacks.searches import search_spec
from deepadversaries.errors import OptionError, check_choice
from deepadversaries.methods import (
    ADV_1P_POSITIONS, MethodSettings, method_spec, reserve_setting_keys, setting_keys,
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OptionError(f"{_flag(name)} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise OptionError(f"{_flag(name)} must be at least {minimum}, got {value!r}")


def _check_number(name: str, value: Any, *, positive: bool = False, non_negative: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OptionError(f"{_flag(name)} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise OptionError(f"{_flag(name)} must be positive, got {value!r}")
    if non_negative and value < 0:
        raise OptionError(f"{_flag(name)} must be non-negative, got {value!r}")


def _check_overrides(cls: type, overrides: Mapping[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise OptionError(f"unknown {cls.__name__} setting {unknown[0]!r}; choose from {', '.join(allowed)}")
    return given


# --------------------------------------------------------------------------------------
# model names
# --------------------------------------------------------------------------------------
def is_timm(name: str) -> bool:
    """Whether ``name`` is a ``timm:NAME`` model."""
    return str(name).startswith(TIMM_PREFIX)


def is_adopted(name: str) -> bool:
    """Whether ``name`` is an adopted TorchScript model (``file:NAME``)."""
    return str(name).startswith(FILE_PREFIX)


def check_model_name(name: str, *, trainable: bool = False) -> str:
    """Return ``name`` if it names a model: a built-in (:data:`MODELS`), ``timm:NAME`` or, unless
    ``trainable``, ``file:NAME``; else an :class:`OptionError` listing the forms.

    Only the form is checked here; :func:`build_model` checks that timm knows the name.
    """
    text = str(name)
    if text in MODELS:
        return text
    for prefix in (TIMM_PREFIX,) + (() if trainable else (FILE_PREFIX,)):
        if text.startswith(prefix) and text[len(prefix):].strip():
            return text
    if trainable and text.startswith(FILE_PREFIX):
        raise OptionError(f"model {text!r} is a TorchScript file trained elsewhere: adopt it with "
                          "'deepadv train --model-file FILE' (it is not trained here)")
    raise OptionError(f"unknown model {text!r}; choose one of {', '.join(MODELS)} or timm:NAME (any timm "
                      "backbone, e.g. timm:resnet10t)")


def preset_model(name: str) -> str:
    """The built-in model whose training preset a model uses: itself, or ``resnet18`` for a
    timm backbone (and an adopted model, which is not trained here)."""
    return name if name in MODELS else "resnet18"


# --------------------------------------------------------------------------------------
# simulate
# --------------------------------------------------------------------------------------
SPLIT_MODES: tuple[str, ...] = ("galaxy", "paper")


@dataclass(frozen=True)
class SimulateConfig:
    """Settings of ``deepadv simulate`` (SPEC 3).

    Attributes:
        preset: size preset [default: "quick"].
        n_galaxies: galaxies before merger augmentation [default: the preset's: tiny 60,
            quick 2,500, paper 25,005].
        seed: random seed; the same seed gives bit-identical arrays [default: 0].
        split_mode: ``galaxy`` (split by galaxy, then augment) or ``paper`` (augment, then
            split images at random) [default: "galaxy"].
        brightness: factor on every galaxy's flux; 1 puts the median Y10 r-band peak S/N
            per pixel near 20 [default: 1.0].
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"n_galaxies": 60},
        "quick": {"n_galaxies": 2500},
        "paper": {"n_galaxies": 25005},
    }
    OVERRIDABLE: ClassVar[tuple[str, ...]] = ("n_galaxies", "seed", "split_mode", "brightness")

    preset: str = "quick"
    n_galaxies: int = 2500
    seed: int = 0
    split_mode: str = "galaxy"
    brightness: float = 1.0

    def __post_init__(self) -> None:
        check_choice(self.preset, PRESETS, "preset")
        _check_int("n_galaxies", self.n_galaxies, 1)
        _check_int("seed", self.seed, 0)
        check_choice(self.split_mode, SPLIT_MODES, "split mode")
        _check_number("brightness", self.brightness, positive=True)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> "SimulateConfig":
        """The preset's settings with ``overrides`` (None = keep the preset's value)."""
        check_choice(preset, PRESETS, "preset")
        given = _check_overrides(cls, overrides, cls.OVERRIDABLE)
        if "brightness" in given:
            given["brightness"] = float(given["brightness"])
        return cls(preset=preset, **{**cls.PRESETS[preset], **given})

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SimulateConfig":
        return cls(**{f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name in obj})


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------
SCHEDULES: tuple[str, ...] = ("constant", "cosine")
PRECISIONS: tuple[str, ...] = ("32-true", "bf16-mixed", "16-mixed")
#: training augmentations (``--augment``): name -> what it does (the command line's help)
AUGMENTATIONS: dict[str, str] = {
    "none": "no augmentation (the paper)",
    "survey-mix": ("AugMix on chains of the package's detector and pipeline corruptions in electrons, with "
                   "AugMix's Jensen-Shannon consistency loss (lambda 12); observing and scene corruptions are "
                   "held out (docs/defences.md)"),
}

#: joins a method and a training augmentation in a grid's recipe: ``regular+survey-mix``
RECIPE_JOIN = "+"


def split_recipe(recipe: str) -> tuple[str, str]:
    """A grid's training recipe ``METHOD[+AUGMENT]`` as ``(method, augment)``, both validated.

    Args:
        recipe: a registered method (``mmd``), optionally joined to a key of
            :data:`AUGMENTATIONS` (``regular+survey-mix``: regular training with survey-mix).

    Returns:
        ``(method, augment)``; ``augment`` is ``"none"`` when the recipe names none.

    Raises:
        OptionError: an unknown method or augmentation, or more than one ``+``.
    """
    method, _, augment = recipe.strip().lower().partition(RECIPE_JOIN)
    if RECIPE_JOIN in augment:
        raise OptionError(f"recipe {recipe!r} joins more than one augmentation; write METHOD or METHOD+AUGMENT")
    method_spec(method)
    augment = augment or "none"
    check_choice(augment, AUGMENTATIONS, "augmentation in a recipe")
    return method, augment


_PAPER_TRAINING = {
    "epochs": 100, "lr": 1e-5, "betas": (0.7, 0.8), "eps": 1e-8,
    "batch_size": 128, "eval_batch_size": 64, "patience": 10, "schedule": "constant",
    "note": "SPEC 5 to the letter: the paper's optimiser, batch sizes and up to 100 epochs, in float32; "
            "meant for the paper's data size on a GPU",
}
_QUICK_CONVNET = {
    "epochs": 10, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
    "batch_size": 128, "eval_batch_size": 256, "patience": 10, "schedule": "cosine",
    "note": "faster than the paper so that it converges on a CPU: Adam lr 1e-3 (paper 1e-5) with default "
            "betas and cosine decay over 10 epochs (paper: constant lr, up to 100 epochs); early stopping "
            "patience = the epoch count, since the validation loss jumps until the decay settles BatchNorm",
}
_QUICK_RESNET = dict(_QUICK_CONVNET, batch_size=64, note=(
    "faster than the paper so that it converges on a CPU: Adam lr 1e-3 (paper 1e-5) with default betas "
    "and cosine decay over 10 epochs, batch 64 (paper 128); early stopping patience = the epoch count"))
_TINY = {
    "epochs": 3, "lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8,
    "batch_size": 32, "eval_batch_size": 128, "patience": 3, "schedule": "constant",
    "note": "seconds-long smoke run for tests; not a trained model",
}


@dataclass(frozen=True)
class TrainConfig:
    """Settings of ``deepadv train`` (SPEC 5): what a preset sets and a user may override.

    Attributes:
        model: ``convnet``, ``d4-convnet`` (trained with the ConvNet's preset), ``resnet18``,
            ``timm:NAME`` (a timm backbone; trained with the resnet18 preset) or ``file:NAME`` (an adopted TorchScript model, not trained here)
            [default: "convnet"].
        method: ``regular``, ``mmd``, ``dann``, ``coral``, ``adabn`` or ``adv-1p`` [default: "regular"]; for
            an adopted model, how it was trained elsewhere (not ``adabn``).
        preset: the preset the other values came from [default: "quick"].
        seed: seed of weights and batch order [default: 0].
        epochs: maximum number of epochs [default: the preset's].
        lr: Adam learning rate [default: the preset's; paper 1e-5].
        betas, eps: Adam's (β₁, β₂) and ε [default: the preset's; paper (0.7, 0.8), 1e-8].
        weight_decay: Adam weight decay [default: paper's 1e-3 regular, 1e-4 with domain adaptation].
        batch_size: training images per step (per domain with domain adaptation).
        eval_batch_size: images per validation step.
        patience: early stopping: epochs without a lower validation loss.
        schedule: ``constant`` or ``cosine`` learning rate.
        method_settings: the method's own settings, one mapping checked by its spec
            (:class:`~deepadversaries.methods.MethodSpec`): ``mmd`` has ``weight`` (λ of λ·MMD²,
            0.05, the paper), ``estimator`` and ``sigmas2``; ``coral`` ``weight`` (1); ``dann``
            ``weight`` (1), ``gamma`` (10) and ``hidden`` (256); ``regular``, ``adabn`` and
            ``adv-1p`` none [default: the spec's defaults]. In ``from_preset`` and on the command
            line each is also ``{method}_{setting}`` (``mmd_weight``, ``--mmd-weight``); a
            ``config.json`` written before the registry (``mmd_weight`` etc.) still reads.
        adv_share: the share of each Y10 batch replaced by its most damaging one-pixel change
            (:mod:`deepadversaries.training.adversarial`) [default: 0.5 with ``adv-1p``
            (:data:`~deepadversaries.methods.ADV_1P_SHARE`), else 0]; with ``mmd``, ``dann``,
            ``coral`` or ``adabn`` a share > 0 adds the same one-pixel adversarial training.
        adv_positions: pixel positions the corner search ranks and tries per image [default: 8].
        augment: training augmentation, a key of :data:`AUGMENTATIONS`: ``none`` or ``survey-mix``
            (:mod:`deepadversaries.training.survey_mix`) [default: "none"; a ``config.json`` without
            it reads as "none"].
        compile: ``torch.compile`` the model [default: False].
        channels_last: NHWC memory layout [default: on for the ConvNet and on GPUs].
        precision: Lightning precision: ``32-true`` (the paper), ``bf16-mixed`` or ``16-mixed``
            (GPU only) [default: "32-true"].
        devices, num_nodes: Lightning DDP processes per node and nodes [default: 1, 1].
        note: how the preset departs from the paper.
        overridden: the settings the user changed from the preset.
    """

    PRESETS: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {
        "tiny": {"convnet": _TINY, "resnet18": _TINY, "d4-convnet": _TINY},
        "quick": {"convnet": _QUICK_CONVNET, "resnet18": _QUICK_RESNET, "d4-convnet": _QUICK_CONVNET},
        "paper": {"convnet": _PAPER_TRAINING, "resnet18": _PAPER_TRAINING, "d4-convnet": _PAPER_TRAINING},
    }
    #: weight decay (the paper: 1e-3 regular, 1e-4 with domain adaptation during training)
    WEIGHT_DECAY: ClassVar[dict[bool, float]] = {False: 1e-3, True: 1e-4}
    #: the training settings a user may override; besides these, ``method_settings`` and every registered
    #: method setting by its flat name (``mmd_weight``: :func:`deepadversaries.methods.setting_keys`)
    OVERRIDABLE: ClassVar[tuple[str, ...]] = (
        "epochs", "lr", "batch_size", "eval_batch_size", "weight_decay", "patience", "schedule", "compile",
        "channels_last", "precision", "devices", "num_nodes", "adv_share", "adv_positions", "augment")
    #: settings that must be the same when an unfinished run is continued
    RESUME_KEYS: ClassVar[tuple[str, ...]] = (
        "model", "method", "preset", "seed", "epochs", "lr", "betas", "eps", "weight_decay", "batch_size",
        "patience", "schedule", "method_settings", "adv_share", "adv_positions", "augment")

    model: str = "convnet"
    method: str = "regular"
    preset: str = "quick"
    seed: int = 0
    epochs: int = 10
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 1e-3
    batch_size: int = 128
    eval_batch_size: int = 256
    patience: int = 10
    schedule: str = "cosine"
    method_settings: MethodSettings = MethodSettings()
    adv_share: float = 0.0
    adv_positions: int = ADV_1P_POSITIONS
    augment: str = "none"
    compile: bool = False
    channels_last: bool = True
    precision: str = "32-true"
    devices: int = 1
    num_nodes: int = 1
    note: str = ""
    overridden: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        check_model_name(self.model)
        spec = method_spec(self.method)
        if not isinstance(self.method_settings, Mapping):
            raise OptionError(f"method settings must be a mapping of setting names to values, got "
                              f"{self.method_settings!r}")
        object.__setattr__(self, "method_settings", spec.resolve(self.method_settings))
        if is_adopted(self.model) and spec.adapts_before_inference:
            raise OptionError(f"--method {self.method} re-estimates the model's batch-norm statistics here; a "
                              "TorchScript model is adopted as it is (--method names how it was trained elsewhere: "
                              "regular, mmd, dann or coral)")
        check_choice(self.preset, PRESETS, "preset")
        _check_int("seed", self.seed, 0)
        for name, minimum in (("epochs", 1), ("batch_size", 2), ("eval_batch_size", 1), ("patience", 1),
                              ("devices", 1), ("num_nodes", 1)):
            _check_int(name, getattr(self, name), minimum)
        _check_number("lr", self.lr, positive=True)
        _check_number("eps", self.eps, positive=True)
        _check_number("weight_decay", self.weight_decay, non_negative=True)
        _check_number("adv_share", self.adv_share, non_negative=True)
        if self.adv_share > 1:
            raise OptionError(f"--adv-share is a share of each batch, in [0, 1]; got {self.adv_share!r}")
        _check_int("adv_positions", self.adv_positions, 1)
        if self.method == "adv-1p" and self.adv_share == 0:
            raise OptionError("--method adv-1p with --adv-share 0 is regular training; use --method regular")
        if self.method == "regular" and self.adv_share > 0:
            raise OptionError("--adv-share with --method regular is one-pixel adversarial training: use --method adv-1p "
                              f"--adv-share {self.adv_share}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise OptionError(f"Adam betas must be two numbers in [0, 1), got {self.betas!r}")
        check_choice(self.schedule, SCHEDULES, "schedule")
        check_choice(self.precision, PRECISIONS, "precision")
        check_choice(self.augment, AUGMENTATIONS, "--augment")
        if self.augment != "none" and is_adopted(self.model):
            raise OptionError("--augment trains the model; a TorchScript model (--model-file) is adopted as it is")
        for name in ("compile", "channels_last"):
            if not isinstance(getattr(self, name), bool):
                raise OptionError(f"setting {name} must be true or false, got {getattr(self, name)!r}")

    @classmethod
    def from_preset(cls, preset: str = "quick", *, model: str = "convnet", method: str = "regular", seed: int = 0,
                    device_type: str = "cpu", method_settings: Mapping[str, Any] | None = None,
                    **overrides: Any) -> "TrainConfig":
        """The preset's settings for ``model`` and ``method`` with ``overrides`` (None = the preset's).

        Args:
            preset: ``tiny``, ``quick`` or ``paper``.
            model, method, seed: the run's identity.
            device_type: ``cpu`` or ``cuda``; sets the default memory layout [default: "cpu"].
            method_settings: the method's settings by their names on its spec (``{"weight": 0.1}``)
                [default: the spec's defaults].
            **overrides: any of :attr:`OVERRIDABLE`, or a method setting by its flat name
                (``mmd_weight=0.1``, what ``--mmd-weight`` gives); numbers are converted to the
                field's type. A setting of another method is refused.
        """
        check_choice(preset, PRESETS, "preset")
        check_model_name(model, trainable=True)
        spec = method_spec(method)
        flat = setting_keys()
        chosen = {k: v for k, v in (method_settings or {}).items() if v is not None}
        for key in [k for k, v in overrides.items() if k in flat and v is not None]:
            owner, name = flat[key]
            if owner != method:
                own = ", ".join(_flag(spec.key(s.name)) for s in spec.settings if s.on_command_line) or "no settings"
                raise OptionError(f"{_flag(key)} belongs to another method (--method {owner}); --method {method} "
                                  f"has {own}")
            chosen[name] = overrides.pop(key)
        overrides = {k: v for k, v in overrides.items() if k not in flat}
        given = _check_overrides(cls, overrides, cls.OVERRIDABLE)
        base = dict(cls.PRESETS[preset][preset_model(model)])
        base.update(weight_decay=cls.WEIGHT_DECAY[spec.adapts_in_training],
                    channels_last=device_type == "cuda" or model == "convnet")
        base["adv_share"] = spec.adversarial_share
        # measured on the 2-core CPU: channels_last made ConvNet training steps 1.0-1.3x and its evaluation
        # 1.6x faster, but ResNet18 training 2x slower; on a GPU it is the layout tensor cores want
        for key, value in given.items():
            given[key] = _coerce(key, value, type(base.get(key, getattr(cls, key, value))))
        settings = spec.resolve(chosen)
        overridden = sorted([*given, *(spec.key(name) for name in chosen)])
        return cls(model=model, method=method, preset=preset, seed=seed, **{**base, **given},
                   method_settings=settings, overridden=tuple(overridden))

    @property
    def uses_target_domain(self) -> bool:
        """Whether training draws unlabelled Y1 batches (domain adaptation during training)."""
        return method_spec(self.method).adapts_in_training

    def to_json(self) -> dict[str, Any]:
        """The settings as ``config.json`` stores them (``note`` as ``preset_note``)."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        out["method_settings"] = self.method_settings.to_json()
        out["overridden"] = list(self.overridden)
        out["preset_note"] = out.pop("note")
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "TrainConfig":
        """Read ``to_json``'s form, or a ``config.json`` written before the registry, where each method
        setting was a field of its own (``mmd_weight``, ``mmd_estimator``, ``mmd_sigmas2``, ``coral_weight``,
        ``dann_weight``): the run's method takes its own, the other methods' are dropped."""
        values = {f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name in obj}
        if "preset_note" in obj:
            values["note"] = obj["preset_note"]
        for key in ("betas", "overridden"):
            if key in values:
                values[key] = tuple(values[key])
        if "method_settings" not in obj:
            spec = method_spec(values.get("method", cls.method))
            values["method_settings"] = {s.name: obj[spec.key(s.name)] for s in spec.settings if spec.key(s.name) in obj}
        return cls(**values)


reserve_setting_keys({f.name for f in dataclasses.fields(TrainConfig)} | {"method_settings"})


def _coerce(key: str, value: Any, typ: type) -> Any:
    """An override converted to its setting's type, with a clear error."""
    if typ is bool:
        if not isinstance(value, bool):
            raise OptionError(f"setting {key} must be true or false, got {value!r}")
        return value
    if typ is str:
        return str(value)
    if typ in (int, float):
        try:
            number = typ(value)
        except (TypeError, ValueError) as exc:
            raise OptionError(f"{_flag(key)} must be a number, got {value!r}") from exc
        if isinstance(value, bool) or (typ is int and number != value):
            raise OptionError(f"{_flag(key)} must be an integer, got {value!r}")
        return number
    return value


# --------------------------------------------------------------------------------------
# attack
# --------------------------------------------------------------------------------------
# (the attack's named choices have one home, :mod:`deepadversaries.attacks.choices`; the searches
# are the registry :mod:`deepadversaries.attacks.searches`, read when a config is checked)


@dataclass(frozen=True)
class AttackConfig:
    """Settings of ``deepadv attack``: the one-pixel attack campaign (SPEC 7).

    Attributes:
        preset: size preset [default: "quick"].
        n_images: test images in the seeded random subsample [default: the preset's; paper 150].
        pop_size: differential-evolution population [default: the preset's; paper 400; at least 4].
        max_iter: generations evolved before giving up [default: the preset's; paper 80].
        pixels: pixels changed per candidate, L in ‖e‖₀ ≤ L [default: 1].
        mode: ``targeted`` (p(target) > 0.5) or ``untargeted`` (p(true) < 0.05) [default: "targeted"].
        success: ``paper`` (the thresholds) or ``top-class`` [default: "paper"].
        seed: seed of the subsample and of every image's search [default: 0].
        precision: ``fp32`` (the paper) or ``bf16`` search, successes verified in fp32 [default: "fp32"].
        keep: ``fittest`` (the authors' code: finish the generation in which a success appears
            and keep the population's fittest member) or ``first`` (the first candidate over the
            threshold) [default: "fittest"].
        search: ``de`` (differential evolution, the paper's), ``exhaustive`` (every position ×
            a value set, the corner search: exhaustive over that set only, a lower bound) or
            ``sparse-rs`` (Croce et al. 2022)
            [default: "de"].
        value_range: ``input`` ([0, 1] of the stretched image, the paper's) or ``physical``
            (0 e⁻ to the full well through the stretch) [default: "input"].
        values: extra values (one per band: g, r, i for the paper's images) the exhaustive search
            tries at every position, besides the 2^B corners of the value range [default: none].
        max_queries: Sparse-RS's queries per target [default: DE's budget, pop_size × (max_iter + 1)].
        F: the differential weight of the mutation x₁ + F (x₂ − x₃) [default: 0.5].
        split, domain: the images attacked [default: the Y10 test split].
    """

    PRESETS: ClassVar[dict[str, dict[str, int]]] = {
        "tiny": {"n_images": 6, "pop_size": 40, "max_iter": 4},
        "quick": {"n_images": 150, "pop_size": 400, "max_iter": 10},
        "paper": {"n_images": 150, "pop_size": 400, "max_iter": 80},
    }
    OVERRIDABLE: ClassVar[tuple[str, ...]] = ("n_images", "pop_size", "max_iter", "pixels", "mode", "success",
                                              "seed", "precision", "keep", "search", "value_range", "values",
                                              "max_queries")

    preset: str = "quick"
    n_images: int = 150
    pop_size: int = 400
    max_iter: int = 10
    pixels: int = 1
    mode: str = "targeted"
    success: str = "paper"
    seed: int = 0
    precision: str = "fp32"
    keep: str = "fittest"
    search: str = "de"
    value_range: str = "input"
    values: tuple[tuple[float, ...], ...] = ()
    max_queries: int | None = None
    F: float = 0.5
    split: str = "test"
    domain: str = "Y10"

    def __post_init__(self) -> None:
        check_choice(self.preset, PRESETS, "preset")
        _check_int("n_images", self.n_images, 1)
        _check_int("pop_size", self.pop_size)
        if self.pop_size < 4:
            raise OptionError(f"--pop-size must be at least 4 (mutation needs three other members), "
                              f"got {self.pop_size}")
        _check_int("max_iter", self.max_iter, 0)
        _check_int("pixels", self.pixels, 1)
        check_choice(self.mode, MODES, "--mode")
        check_choice(self.success, SUCCESS_RULES, "--success")
        _check_int("seed", self.seed, 0)
        check_choice(self.precision, ATTACK_PRECISIONS, "--precision")
        check_choice(self.keep, KEEP_RULES, "--keep")
        spec = search_spec(self.search)
        check_choice(self.value_range, VALUE_RANGES, "--value-range")
        if spec.one_pixel and self.pixels != 1:
            raise OptionError(f"the {spec.name} search changes one pixel; use --search de or sparse-rs for "
                              "--pixels > 1")
        if self.values and not spec.takes_values:
            raise OptionError("--values is for the exhaustive search (--search exhaustive)")
        for v in self.values:
            if (len(v) < 1 or len(v) != len(self.values[0])
                    or not all(isinstance(x, (int, float)) and 0.0 <= x <= 1.0 for x in v)):
                raise OptionError(f"--values: each value is one number per band (g, r, i for the paper's images), "
                                  f"all in [0, 1] and all of one length; got {v!r}")
        if self.max_queries is not None:
            _check_int("max_queries", self.max_queries, 1)
        _check_number("F", self.F, positive=True)

    @classmethod
    def from_preset(cls, preset: str = "quick", **overrides: Any) -> "AttackConfig":
        """The preset's campaign sizes with ``overrides`` (None = the preset's value)."""
        check_choice(preset, PRESETS, "preset")
        given = _check_overrides(cls, overrides, cls.OVERRIDABLE)
        for key in ("n_images", "pop_size", "max_iter", "pixels", "seed"):
            if key in given:
                given[key] = _coerce(key, given[key], int)
        return cls(preset=preset, **{**cls.PRESETS[preset], **given})

    @property
    def paper(self) -> "AttackConfig":
        """The paper's campaign (the ``paper`` preset's sizes, one pixel, targeted)."""
        return AttackConfig.from_preset("paper")

    def departures_from_paper(self) -> list[str]:
        """Plain statements of every setting that differs from the paper's campaign."""
        paper = self.paper
        out = []
        spec = search_spec(self.search)
        sizes = (("n_images", "images in the subsample"),) + ((("pop_size", "population size"),
                                                               ("max_iter", "iteration cap")) if spec.population_sized
                                                             else ())
        for key, what in sizes:
            if getattr(self, key) != getattr(paper, key):
                out.append(f"{what} {getattr(self, key)} (paper: {getattr(paper, key)})")
        if self.pixels != 1:
            out.append(f"{self.pixels}-pixel attack (paper: one pixel)")
        if self.mode != "targeted":
            out.append("untargeted attack, success at p(true) < 0.05 (paper: targeted, p(target) > 0.5)")
        if self.success != "paper":
            out.append("success when the target becomes the top class (paper: p(target) > 0.5)")
        if spec.departure:
            out.append(spec.departure.format(query_budget=self.query_budget))
        if self.value_range != "input":
            out.append("pixel values limited to what a detector can produce, 0 e⁻ to the full well through the "
                       "stretch (paper: any value in [0, 1])")
        if self.keep != "fittest":
            out.append("the first successful candidate kept (the authors' code keeps the fittest member of the "
                       "successful generation)")
        if self.precision != "fp32":
            out.append("search in bfloat16 mixed precision, successes verified in float32 (paper: float32)")
        return out

    @property
    def query_budget(self) -> int:
        """Sparse-RS's queries per target: ``max_queries``, else DE's pop_size × (max_iter + 1)."""
        return self.max_queries if self.max_queries is not None else self.pop_size * (self.max_iter + 1)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["values"] = [list(v) for v in self.values]
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "AttackConfig":
        values = {f.name: obj[f.name] for f in dataclasses.fields(cls) if f.name in obj}
        if "values" in values:
            values["values"] = tuple(tuple(v) for v in values["values"])
        return cls(**values)
