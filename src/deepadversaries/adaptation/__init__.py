"""Domain adaptation without file I/O, one module per method on shared building blocks (TLlib-style).

``modules`` (Gaussian kernels, gradient reversal, the alignment-term interface), ``mmd``, ``coral``,
``dann`` (each method's loss and alignment term), ``adabn`` (batch-norm re-estimation before
inference), ``measures`` (alignment measures by name) and ``alignment`` (a method's term built
from the registry :mod:`deepadversaries.methods`).
"""
