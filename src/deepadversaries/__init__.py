"""DeepAdversaries: robustness testing of galaxy-morphology classifiers.

Simulate LSST-like Y10/Y1 galaxy images, train ConvNet/ResNet18 with and without
MMD domain adaptation, attack them with one-pixel attacks and measure the damage
in accuracy and in latent space.
"""

__version__ = "0.1.0"

CLASSES: tuple[str, ...] = ("spiral", "elliptical", "merger")
DOMAINS: tuple[str, ...] = ("Y10", "Y1")
SPLITS: tuple[str, ...] = ("train", "valid", "test")
PRESETS: tuple[str, ...] = ("tiny", "quick", "paper")
