"""Class weights of the training cross-entropy (SPEC 5): w_m = N / (M n_m) from the training labels.

Every method trains with the same weighted cross-entropy; ``config.json`` records the weights
(:func:`deepadversaries.training.train.resolve_run_config`). No file I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from deepadversaries import CLASSES
from deepadversaries.errors import DeepAdvError


def class_weights(labels: np.ndarray | torch.Tensor, n_classes: int = len(CLASSES),
                  names: Sequence[str] = CLASSES) -> torch.Tensor:
    """Cross-entropy weights w_m = N / (M n_m) from the training labels (class indices).

    N is the number of images, M the number of classes and n_m the images of class m.
    A class without any training image is an error (the classifier could not learn it).

    Args:
        labels: (N,) class indices.
        n_classes: M [default: 3].
        names: class names for the message [default: the paper's].
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    counts = np.bincount(labels, minlength=n_classes)[:n_classes]
    if len(labels) == 0 or (counts == 0).any():
        missing = [names[m] if m < len(names) else str(m) for m in np.flatnonzero(counts == 0)]
        raise DeepAdvError(f"the training split has no images of class {', '.join(missing)}; "
                           "every class needs training examples")
    return torch.as_tensor(len(labels) / (n_classes * counts), dtype=torch.float32)

