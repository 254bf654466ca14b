"""The named choices of an attack (``deepadv attack`` options): their one home.

Names only, no behaviour, so that :mod:`deepadversaries.config` (which validates the
options) and the attacks (which act on them) read the same tuples. What each name means:
the success rule in :mod:`deepadversaries.attacks.rules`, the keep rule in
:class:`deepadversaries.attacks.de.OnePixelDE`, the value ranges in
:mod:`deepadversaries.attacks.values`. The searches are a registry of their own
(:mod:`deepadversaries.attacks.searches`).
"""

from __future__ import annotations

#: targeted: try the other classes in turn; untargeted: move the image off its true class
MODES: tuple[str, ...] = ("targeted", "untargeted")
#: ``paper``: the probability thresholds; ``top-class``: the predicted class decides
SUCCESS_RULES: tuple[str, ...] = ("paper", "top-class")
#: which successful candidate a DE search keeps: the authors' population argmax after the
#: success generation, or the first successful candidate in index order
KEEP_RULES: tuple[str, ...] = ("fittest", "first")
#: the values a changed pixel may take: any stretched value in [0, 1] (the paper's), or
#: what a detector pixel can hold (0 e- to the full well) mapped through the stretch
VALUE_RANGES: tuple[str, ...] = ("input", "physical")
#: arithmetic of the search: fp32 (the paper's) or bf16 mixed precision (successes re-checked in fp32)
ATTACK_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")
