"""The success rule of every attack, and the campaign's test subsample (SPEC 7).

:func:`is_success` is the one home of the rule: every search, the re-check of a claimed
success, the campaign's final check and ``deepadv certify`` call it. Under the paper's rule
a targeted attack succeeds when p(target) > 0.5 (:data:`TARGET_THRESHOLD`) and an
untargeted one when p(true class) < 0.05 (:data:`UNTARGETED_THRESHOLD`); under
``top-class`` the predicted class decides. :func:`subsample_index` draws the test images
an attack campaign (and a certification) examines.
"""

from __future__ import annotations

import numpy as np

from deepadversaries.attacks.choices import SUCCESS_RULES
from deepadversaries.errors import check_choice

#: targeted success: p(target) above this (paper rule)
TARGET_THRESHOLD = 0.5
#: untargeted success: p(true class) below this (paper rule)
UNTARGETED_THRESHOLD = 0.05


def is_success(probs: np.ndarray, label: int, target: int | None, rule: str = "paper") -> np.ndarray | bool:
    """Whether perturbed images count as successful attacks: the one home of the rule.

    Args:
        probs: class probabilities (softmax), shape (n_classes,) for one image or
            (B, n_classes) for B images.
        label: the true class of the attacked image.
        target: the class attacked (targeted), or None (untargeted).
        rule: ``"paper"`` — targeted: p(target) > 0.5 (:data:`TARGET_THRESHOLD`);
            untargeted: p(true) < 0.05 (:data:`UNTARGETED_THRESHOLD`); or ``"top-class"``
            — targeted: the target is the predicted class; untargeted: the true class is
            not [default: "paper"].

    Returns:
        A bool for one image, else a bool array (B,).

    Raises:
        OptionError: an unknown rule.
    """
    check_choice(rule, SUCCESS_RULES, "success rule")
    p = np.asarray(probs)
    single = p.ndim == 1
    p = p[None] if single else p
    if rule == "top-class":
        top = np.argmax(p, axis=1)
        ok = top == target if target is not None else top != label
    elif target is not None:
        ok = p[:, target] > TARGET_THRESHOLD
    else:
        ok = p[:, label] < UNTARGETED_THRESHOLD
    return bool(ok[0]) if single else ok


def subsample_index(n_test: int, n_images: int, seed: int) -> np.ndarray:
    """The attack campaign's seeded test subsample: ``n_images`` distinct indices of ``n_test``
    test images drawn with ``seed``, sorted (``deepadv attack`` and ``deepadv certify`` draw the same)."""
    return np.sort(np.random.default_rng(seed).choice(n_test, n_images, replace=False))
