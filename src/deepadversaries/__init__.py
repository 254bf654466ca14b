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
