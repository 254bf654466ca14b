"""DeepAdversaries: robustness testing of galaxy-morphology classifiers.

Simulate LSST-like Y10/Y1 galaxy images, train ConvNet/ResNet18 with and without
domain adaptation, attack them with one-pixel attacks and measure the damage in
accuracy and in latent space.

The package's vocabulary lives here, one word per thing: every module names classes,
domains, splits, presets, models and training methods with these constants.
"""

__version__ = "0.2.0"

#: galaxy classes, in label order (SPEC 3.6)
CLASSES: tuple[str, ...] = ("spiral", "elliptical", "merger")
#: survey depths: the labelled training domain and the shifted one
DOMAINS: tuple[str, ...] = ("Y10", "Y1")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
#: size presets of every verb
PRESETS: tuple[str, ...] = ("tiny", "quick", "paper")
#: the built-in architectures (SPEC 4); besides these, ``timm:NAME`` (any timm backbone with the
#: package's bottleneck and head) trains too, and ``file:NAME`` names a TorchScript model trained
#: elsewhere and adopted into a run folder (:mod:`deepadversaries.models.networks`)
MODELS: tuple[str, ...] = ("convnet", "resnet18", "d4-convnet")
#: prefixes of the model names outside :data:`MODELS`: a timm backbone, an adopted TorchScript file
TIMM_PREFIX = "timm:"
FILE_PREFIX = "file:"
#: band names of the simulator's images (and the default of a 3-band folder without ``dataset.json``)
BANDS: tuple[str, ...] = ("g", "r", "i")
#: training methods: regular, domain adaptation towards unlabelled Y1 (mmd, the paper's;
#: coral, dann, adabn) and one-pixel adversarial training (adv-1p), and how figures and tables
#: name them: read from the registry :mod:`deepadversaries.methods` (``METHODS`` lists the
#: built-in ones; the label tables are live views that include methods registered later)
from deepadversaries.methods import BUILT_IN_METHODS as METHODS, METHOD_LABELS, METHOD_SHORT  # noqa: E402, F401
#: the paper's grid of methods (reproduce's default)
PAPER_METHODS: tuple[str, ...] = ("regular", "mmd")
#: the method every domain-adapted run is compared with
REFERENCE_METHOD = "regular"


class _ModelLabels(dict):
    """Model labels for figures and reports; a name outside the table is labelled from its
    prefix (``timm:resnet10t`` -> "timm resnet10t", ``file:model.pt`` -> "TorchScript model.pt")."""

    def __missing__(self, name: str) -> str:
        text = str(name)
        if text.startswith(TIMM_PREFIX):
            return f"timm {text[len(TIMM_PREFIX):]}"
        if text.startswith(FILE_PREFIX):
            return f"TorchScript {text[len(FILE_PREFIX):]}"
        return text


#: how figures and reports name the models
MODEL_LABELS: dict[str, str] = _ModelLabels({"convnet": "ConvNet", "resnet18": "ResNet18",
                                                       "d4-convnet": "D4 ConvNet"})
# -- the Python API (``import deepadversaries as da``) -------------------------------------------
# Everything below is looked up on first use (PEP 562): importing the package imports neither torch
# nor any stage, so the vocabulary above stays cheap to import. docs/python-api.md lists the same names.

#: public name -> where it lives: ``"module:attribute"`` for a function or class, a bare module name
#: for a subpackage (``da.attacks``). The one table of the API: ``__all__``, ``dir(da)`` and the
#: subpackages' own exports (:func:`subpackage_exports`) are derived from it.
API: dict[str, str] = {
    # simulate
    "simulate_dataset": "deepadversaries.simulation.simulate:simulate_dataset",
    "SimulateConfig": "deepadversaries.config:SimulateConfig",
    # datasets: load, or import a survey's own images
    "load_dataset": "deepadversaries.data.dataset:load_dataset",
    "GalaxyDataset": "deepadversaries.data.dataset:GalaxyDataset",
    "import_fits": "deepadversaries.data.importing:import_fits",
    "import_hdf5": "deepadversaries.data.importing:import_hdf5",
    "import_npy": "deepadversaries.data.importing:import_npy",
    "ImportOptions": "deepadversaries.data.importing:ImportOptions",
    # train (from a dataset folder, or from arrays in memory), adopt, load
    "train_model": "deepadversaries.training.train:train_model",
    "TrainConfig": "deepadversaries.config:TrainConfig",
    "train": "deepadversaries.training.in_memory:train",
    "adopt_model": "deepadversaries.models.adopt:adopt_model",
    "build_model": "deepadversaries.models.networks:build_model",
    "load_model": "deepadversaries.models.networks:load_model",
    "Run": "deepadversaries.models.run_handle:Run",
    "RunConfig": "deepadversaries.models.runs:RunConfig",
    "read_run_config": "deepadversaries.models.runs:read_run_config",
    # evaluate
    "evaluate_run": "deepadversaries.evaluation.evaluate:evaluate_run",
    # attack: the campaign stage, and the searches on any batch of images
    "attack_run": "deepadversaries.attacks.campaign:attack_run",
    "AttackConfig": "deepadversaries.config:AttackConfig",
    "OnePixelDE": "deepadversaries.attacks.de:OnePixelDE",
    "ExhaustiveSearch": "deepadversaries.attacks.exhaustive:ExhaustiveSearch",
    "SparseRS": "deepadversaries.attacks.sparse_rs:SparseRS",
    # corruptions: the benchmark stage, and one corruption on any batch of images
    "robustness_run": "deepadversaries.corruptions.benchmark:robustness_run",
    "corrupt": "deepadversaries.corruptions.suite:corrupt",
    # certify, analyze, report, card
    "certify_run": "deepadversaries.certify.certify:certify_run",
    "CertifyConfig": "deepadversaries.certify.certify:CertifyConfig",
    "analyze_runs": "deepadversaries.analysis.analyze:analyze_runs",
    "write_report": "deepadversaries.reporting.report:write_report",
    "card_run": "deepadversaries.card.build:card_run",
    # the whole pipeline
    "reproduce": "deepadversaries.workflow.reproduce:reproduce",
    "study": "deepadversaries.workflow.study:study",
    # errors a user may catch
    "DeepAdvError": "deepadversaries.errors:DeepAdvError",
    "OptionError": "deepadversaries.errors:OptionError",
    "FileError": "deepadversaries.errors:FileError",
    # the subpackages
    "simulation": "deepadversaries.simulation",
    "data": "deepadversaries.data",
    "models": "deepadversaries.models",
    "adaptation": "deepadversaries.adaptation",
    "training": "deepadversaries.training",
    "evaluation": "deepadversaries.evaluation",
    "attacks": "deepadversaries.attacks",
    "certify": "deepadversaries.certify",
    "corruptions": "deepadversaries.corruptions",
    "analysis": "deepadversaries.analysis",
    "reporting": "deepadversaries.reporting",
    "card": "deepadversaries.card",
    "workflow": "deepadversaries.workflow",
}

#: the vocabulary defined in this file (public, imported eagerly)
VOCABULARY: tuple[str, ...] = (
    "CLASSES", "DOMAINS", "SPLITS", "PRESETS", "MODELS", "TIMM_PREFIX", "FILE_PREFIX", "BANDS", "METHODS",
    "PAPER_METHODS", "REFERENCE_METHOD", "MODEL_LABELS", "METHOD_LABELS", "METHOD_SHORT",
)
__all__ = ["__version__", *VOCABULARY, *API]


def resolve(target: str) -> object:
    """The object an :data:`API` entry names: ``"pkg.module:attr"`` -> the attribute, ``"pkg.module"`` -> the module."""
    import importlib

    module_name, _, attribute = target.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attribute) if attribute else module


def subpackage_exports(package: str) -> dict[str, str]:
    """The :data:`API` entries a subpackage re-exports: the functions and classes defined inside it, except a
    name that is also one of its modules (``workflow.study`` stays the module)."""
    import pkgutil
    import sys

    modules = {m.name for m in pkgutil.iter_modules(sys.modules[package].__path__)}
    return {name: target for name, target in API.items()
            if target.startswith(f"{package}.") and ":" in target and name not in modules}


def lazy_subpackage(package: str) -> tuple:
    """``__getattr__``, ``__dir__`` and ``__all__`` for a subpackage's ``__init__`` (PEP 562): its
    :func:`subpackage_exports`, imported on first use, e.g. ``deepadversaries.models.Run``.

    Usage, in ``deepadversaries/models/__init__.py``::

        from deepadversaries import lazy_subpackage as _lazy_subpackage

        __getattr__, __dir__, __all__ = _lazy_subpackage(__name__)
    """
    import sys

    exports = subpackage_exports(package)

    def __getattr__(name: str) -> object:  # noqa: N807 - PEP 562
        target = exports.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = resolve(target)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:  # noqa: N807
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__, sorted(exports)


def __getattr__(name: str) -> object:  # PEP 562
    target = API.get(name)
    if target is None:
        raise AttributeError(f"module 'deepadversaries' has no attribute {name!r}")
    value = resolve(target)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(API))
