"""Latent-space robustness analysis (SPEC 8): distances, JS distance, church windows, isomaps.

The building blocks of the paper's sections 4–5, on latents and models directly: no file
I/O. :mod:`deepadversaries.analysis.analyze` (the ``analyze`` stage) reads two runs' attack results,
calls these functions and the plots, and writes the files.

Conventions
- ``d_E`` is the Euclidean distance between the latent of the Y10 image and that of its
  perturbed counterpart (Y1: same galaxy, noisier; 1P: the one-pixel-attacked Y10 image).
- Two runs are compared by method name: the reference (``regular``) and the adapted run
  (e.g. ``mmd``); ratios are adapted over reference.
- Distances are compared on the images flipped by the attack under *both* runs.
- Two trained models' latent spaces have no common unit: a shift of every latent by a
  constant (absorbed by the head's bias) or a scale (absorbed by its weights) changes ‖z‖
  but not the model. Beside raw d_E (the paper's quantity, scale ``latent``) the tables give
  two versions no such reparametrisation changes: ``logit`` — ‖head(z') − head(z(Y10))‖ —
  and ``spread`` — d_E divided by the model's latent spread, the median ‖z − z̄‖ over the
  Y10 latents of the images attacked under both runs. Nothing is divided by ‖z‖.
- The distance from z(Y10) to the decision boundary of its true class (linear head:
  min over the other classes t of the margin / ‖w_y − w_t‖) is measured for every attacked
  image, flipped or not.
- Standard error = std / sqrt(n) with the population std (ddof = 0), as the authors' code.
- The JS distance is ``scipy.spatial.distance.jensenshannon`` in base 2 (so it lies in
  [0, 1]) between histograms on common bins (numpy's ``"auto"`` edges of the pooled
  sample), each normalised to sum 1.
- A church window puts z(Y10) at the origin, z(1P) - z(Y10) along the horizontal axis and
  z(Y1) - z(Y10) along the vertical one, on a 221 x 221 grid over [-1.1, 1.1]^2, and
  classifies every grid point with one batched call of ``model.head``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial.distance import jensenshannon
from sklearn.manifold import Isomap
from threadpoolctl import threadpool_limits

from deepadversaries import CLASSES
from deepadversaries.errors import OptionError
from deepadversaries.evaluation.inference import model_device
from deepadversaries.analysis.stats import latent_spread, success_curve

#: the two perturbations whose latent distances are measured, and how tables and figures name them
PERTURBATIONS: tuple[str, ...] = ("Y10-Y1", "Y10-1P")
PERTURBATION_LABELS: dict[str, str] = {"Y10-Y1": "Y10–Y1", "Y10-1P": "Y10–1P"}
SCALES: tuple[str, ...] = ("latent", "logit", "spread")
#: the scales Figure 6 draws (one row each)
FIGURE_SCALES: tuple[str, ...] = ("latent", "spread")
JS_BASE = 2
JS_BINS = "auto"
CHURCH_EXTENT = 1.1
CHURCH_STEP = 0.01
ISOMAP_NEIGHBORS = 5


# --------------------------------------------------------------------------------------
# distances and their summary
# --------------------------------------------------------------------------------------

def euclidean_distances(z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance ||z_a[i] - z_b[i]||_2 (float64)."""
    a = np.asarray(z_a, dtype=np.float64)
    b = np.asarray(z_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise OptionError(f"latent arrays must have the same (n, d) shape, got {a.shape} and {b.shape}")
    return np.sqrt(np.sum((a - b) ** 2, axis=1))


def perturbation_distances(z_y10: np.ndarray, z_y1: np.ndarray, z_1p: np.ndarray) -> dict[str, np.ndarray]:
    """``{"Y10-Y1": d_E(Y10, Y1), "Y10-1P": d_E(Y10, 1P)}`` per image."""
    return {"Y10-Y1": euclidean_distances(z_y10, z_y1), "Y10-1P": euclidean_distances(z_y10, z_1p)}


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float | int]:
    """Median, mean, population std, standard error (std/sqrt(n)) and n; NaN when empty."""
    v = np.asarray(values, dtype=np.float64)
    n = int(v.size)
    if n == 0:
        nan = float("nan")
        return {"n": 0, "median": nan, "mean": nan, "std": nan, "stderr": nan}
    std = float(np.std(v))
    return {"n": n, "median": float(np.median(v)), "mean": float(np.mean(v)), "std": std,
            "stderr": std / math.sqrt(n)}


@dataclass
class JSResult:
    """The JS distance (base 2) between two samples and the histograms it was computed on."""

    distance: float
    edges: np.ndarray
    p: np.ndarray  # histogram of the first sample, normalised to sum 1
    q: np.ndarray
    base: int = JS_BASE


def common_bins(a: np.ndarray, b: np.ndarray, bins: int | str = JS_BINS) -> np.ndarray:
    """Bin edges shared by both samples: numpy's ``bins`` rule on the pooled sample."""
    pooled = np.concatenate([np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()])
    if pooled.size == 0:
        return np.array([0.0, 1.0])
    return np.histogram_bin_edges(pooled, bins=bins)


def normalised_histogram(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts of ``values`` in ``edges``, divided by their sum (NaN when empty)."""
    counts = np.histogram(np.asarray(values, np.float64), bins=edges)[0].astype(np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.full_like(counts, np.nan)


def js_distance(a: np.ndarray, b: np.ndarray, bins: int | str = JS_BINS, base: int = JS_BASE) -> JSResult:
    """JS distance (sqrt of the JS divergence, ``base``) between the distributions of two samples.

    Both are histogrammed on common bins and normalised to sum 1; NaN when a sample is empty.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    edges = common_bins(a, b, bins)
    p = normalised_histogram(a, edges)
    q = normalised_histogram(b, edges)
    if a.size == 0 or b.size == 0:
        return JSResult(float("nan"), edges, p, q, base)
    return JSResult(float(jensenshannon(p, q, base=base)), edges, p, q, base)


# --------------------------------------------------------------------------------------
# church windows
# --------------------------------------------------------------------------------------
def grid_coordinates(extent: float = CHURCH_EXTENT, step: float = CHURCH_STEP) -> np.ndarray:
    """Grid values from -extent to +extent in ``step`` (exact 0 and 1): 221 values by default."""
    n = int(round(extent / step))
    scale = int(round(1.0 / step))
    if not math.isclose(n * step, extent) or not math.isclose(scale * step, 1.0):
        raise OptionError(f"extent {extent} and 1 must be whole multiples of step {step}")
    return np.arange(-n, n + 1, dtype=np.float64) / scale


@dataclass
class ChurchWindow:
    """Classes of the latent plane through z(Y10) spanned by the 1P and Y1 directions.

    ``classes[j, i]`` is the class of ``z0 + alphas[i] * (z1p - z0) + betas[j] * (zy1 - z0)``
    (rows: vertical / noisy direction, columns: horizontal / adversarial direction).
    """

    alphas: np.ndarray
    betas: np.ndarray
    classes: np.ndarray

    def class_at(self, alpha: float, beta: float) -> int:
        """Class of the grid point nearest to (alpha, beta)."""
        i = int(np.argmin(np.abs(self.alphas - alpha)))
        j = int(np.argmin(np.abs(self.betas - beta)))
        return int(self.classes[j, i])

    def fractions(self, n_classes: int = len(CLASSES)) -> list[float]:
        """Fraction of the window taken by each of ``n_classes`` classes [default: 3]."""
        counts = np.bincount(self.classes.ravel(), minlength=n_classes)
        return [float(c) / self.classes.size for c in counts]


def _as_tensor(z: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(z, np.float32)) if not isinstance(z, torch.Tensor) else z.detach()
    return t.to(device=device, dtype=torch.float32).reshape(-1)


def _head_device(head: Callable) -> torch.device:
    owner = getattr(head, "__self__", head)
    return model_device(owner) if isinstance(owner, torch.nn.Module) else torch.device("cpu")


_WORKSPACE: dict[str, torch.Tensor] = {}


def _grid_workspace(rows: int, dim: int, device: torch.device) -> torch.Tensor:
    """A reused (rows, dim) float32 buffer for the grid latents (~50 MB for 221^2 x 256).

    Allocating it afresh for every window costs as much as the whole head call on a CPU (the
    allocator returns blocks this large to the OS, so every page faults again); one buffer per
    device is kept instead.
    """
    key = str(device)
    buf = _WORKSPACE.get(key)
    if buf is None or buf.shape != (rows, dim):
        buf = torch.empty((rows, dim), dtype=torch.float32, device=device)
        _WORKSPACE[key] = buf
    return buf


def church_window_grid(head: Callable[[torch.Tensor], torch.Tensor], z_y10: np.ndarray | torch.Tensor,
                       z_y1: np.ndarray | torch.Tensor, z_1p: np.ndarray | torch.Tensor, *,
                       extent: float = CHURCH_EXTENT, step: float = CHURCH_STEP) -> ChurchWindow:
    """Classify the whole church-window grid with ONE batched call of ``head``.

    Args:
        head: the model's latent-to-logits map (``model.head``), taking (B, D) and giving (B, C).
        z_y10: (D,) latent of the Y10 image: the origin.
        z_y1: (D,) latent of the same galaxy at Y1: the vertical direction z(Y1) − z(Y10).
        z_1p: (D,) latent of the one-pixel-attacked image: the horizontal direction z(1P) − z(Y10).
        extent: the grid spans [−extent, extent] in units of each direction [default: 1.1].
        step: the grid step in the same units [default: 0.01: a 221 × 221 grid].

    Returns:
        The window: ``classes[j, i]`` (int8, (n, n)) is the class of
        z0 + alphas[i] (z1p − z0) + betas[j] (zy1 − z0).
    """
    device = _head_device(head)
    z0 = _as_tensor(z_y10, device)
    u = _as_tensor(z_1p, device) - z0  # horizontal: adversarial (one-pixel) direction
    v = _as_tensor(z_y1, device) - z0  # vertical: noisy (Y1) direction
    coords = grid_coordinates(extent, step)
    n = len(coords)
    bb, aa = np.meshgrid(coords, coords, indexing="ij")  # rows = beta (vertical), cols = alpha
    # z = a u + b v + 1 z0 as ONE matrix product (n*n, 3) @ (3, d): a single pass over the output
    coeffs = np.stack([aa.ravel(), bb.ravel(), np.ones(n * n)], axis=1).astype(np.float32)
    basis = torch.stack([u, v, z0])
    with torch.inference_mode():
        z = _grid_workspace(n * n, len(z0), device)
        torch.mm(torch.from_numpy(coeffs).to(device), basis, out=z)
        logits = head(z).float().cpu().numpy()  # the one batched head call
    classes = logits.argmax(axis=1).astype(np.int8)  # numpy: ~10x faster than torch on (n*n, 3)
    return ChurchWindow(coords, coords.copy(), classes.reshape(n, n))


def church_window_loop(head: Callable[[torch.Tensor], torch.Tensor], z_y10: np.ndarray | torch.Tensor,
                       z_y1: np.ndarray | torch.Tensor, z_1p: np.ndarray | torch.Tensor, *,
                       alphas: Sequence[float] | None = None, betas: Sequence[float] | None = None,
                       extent: float = CHURCH_EXTENT, step: float = CHURCH_STEP) -> ChurchWindow:
    """The same window with one head call per grid point: the reference for tests and the benchmark."""
    device = _head_device(head)
    z0 = _as_tensor(z_y10, device)
    u = _as_tensor(z_1p, device) - z0
    v = _as_tensor(z_y1, device) - z0
    coords = grid_coordinates(extent, step)
    a_vals = np.asarray(coords if alphas is None else alphas, np.float64)
    b_vals = np.asarray(coords if betas is None else betas, np.float64)
    out = np.zeros((len(b_vals), len(a_vals)), np.int8)
    with torch.inference_mode():
        for j, b in enumerate(b_vals):
            for i, a in enumerate(a_vals):
                z = z0 + float(a) * u + float(b) * v
                logits = head(z.unsqueeze(0))
                out[j, i] = int(torch.softmax(logits, dim=1).argmax(dim=1).item())
    return ChurchWindow(a_vals, b_vals, out)


# --------------------------------------------------------------------------------------
# isomaps
# --------------------------------------------------------------------------------------
def isomap_projection(latents: np.ndarray, n_components: int = 2, n_neighbors: int = ISOMAP_NEIGHBORS) -> np.ndarray:
    """scikit-learn ``Isomap`` of the rows of ``latents`` (dense eigensolver: deterministic).

    A disconnected neighbour graph is completed by scikit-learn (its warnings are silenced);
    ``n_neighbors`` is reduced when there are too few points.
    """
    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < n_components + 2:
        raise OptionError(f"isomap needs at least {n_components + 2} latent vectors, got {len(x)}")
    k = max(1, min(n_neighbors, len(x) - 1))
    # one BLAS thread: the small dense eigenproblem is ~50x slower when threads are oversubscribed
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # disconnected-graph completion warns (UserWarning, SparseEfficiencyWarning)
        return Isomap(n_neighbors=k, n_components=n_components, eigen_solver="dense").fit_transform(x)


def isomap_sample_indices(n_test: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct random test indices (sorted), the same for a given seed."""
    n = min(n, n_test)
    if n <= 0:
        return np.zeros(0, np.int64)
    return np.sort(np.random.default_rng(seed).choice(n_test, size=n, replace=False)).astype(np.int64)


@dataclass
class IsomapEmbedding:
    """Isomap coordinates of a sample of test galaxies (both domains) and example triplets.

    ``kind`` is one of "Y10", "Y1" (the random sample), "triplet-Y10", "triplet-Y1",
    "triplet-1P"; ``example`` is the example number of a triplet point (-1 for the sample);
    ``predicted`` the model's class of each latent.
    """

    coords: np.ndarray
    kind: np.ndarray
    predicted: np.ndarray
    example: np.ndarray

    def select(self, kind: str, example: int | None = None) -> np.ndarray:
        mask = self.kind == kind
        if example is not None:
            mask &= self.example == example
        return mask


def isomap_embedding(z_sample_y10: np.ndarray, z_sample_y1: np.ndarray, predicted_y10: np.ndarray,
                     predicted_y1: np.ndarray, triplets: Sequence[dict[str, Any] | None], *,
                     n_components: int = 3, n_neighbors: int = ISOMAP_NEIGHBORS) -> IsomapEmbedding:
    """Isomap of the sample latents (Y10 and Y1) plus each triplet's z_y10, z_y1 and z_1p.

    ``triplets``: dicts with ``z_y10``, ``z_y1``, ``z_1p`` and ``pred_y10``, ``pred_y1``, ``pred_1p``;
    a None entry (an example without a result in this run) keeps its number but adds no point.
    """
    blocks = [np.asarray(z_sample_y10), np.asarray(z_sample_y1)]
    kinds = ["Y10"] * len(z_sample_y10) + ["Y1"] * len(z_sample_y1)
    preds = list(np.asarray(predicted_y10)) + list(np.asarray(predicted_y1))
    examples = [-1] * (len(z_sample_y10) + len(z_sample_y1))
    for e, t in enumerate(triplets):
        if t is None:
            continue
        for key, kind in (("y10", "triplet-Y10"), ("y1", "triplet-Y1"), ("1p", "triplet-1P")):
            blocks.append(np.asarray(t[f"z_{key}"], np.float64).reshape(1, -1))
            kinds.append(kind)
            preds.append(int(t[f"pred_{key}"]))
            examples.append(e)
    coords = isomap_projection(np.concatenate(blocks, axis=0), n_components, n_neighbors)
    return IsomapEmbedding(coords, np.array(kinds), np.array(preds, np.int64), np.array(examples, np.int64))


# --------------------------------------------------------------------------------------
# the images flipped under both runs, and the distance tables
# --------------------------------------------------------------------------------------
@dataclass
class Triplets:
    """The latents of one run's attacked images, one row per image.

    Attributes:
        test_index: (n,) int test-set indices.
        z_y10, z_y1, z_1p: (n, d) float32 latents of the Y10 image, the same galaxy at Y1,
            and the one-pixel-attacked Y10 image.
        success: (n,) bool, whether the attack flipped the image.
    """

    test_index: np.ndarray
    z_y10: np.ndarray
    z_y1: np.ndarray
    z_1p: np.ndarray
    success: np.ndarray

    def row(self, test_index: int) -> int | None:
        """Row number of an attacked test image, or None."""
        hits = np.flatnonzero(self.test_index == test_index)
        return int(hits[0]) if hits.size else None

    def spread(self, rows: np.ndarray | None = None) -> float:
        """The latent spread, median ‖z(Y10) − z̄‖, over ``rows`` [default: all attacked images]."""
        return latent_spread(self.z_y10 if rows is None else self.z_y10[rows])


@dataclass
class PairedDistances:
    """Per-image distances of the images flipped under both runs of a comparison.

    Attributes:
        methods: (reference, adapted) method names, e.g. ("regular", "mmd").
        test_index: (n,) test indices flipped under both, sorted.
        rows: per method, (n,) the images' rows in that run's :class:`Triplets`.
        distances: per method and perturbation, (n,) d_E.
        logit: per method and perturbation, (n,) the same distances between the logits
            (NaN when the model has no head).
        spread: per method, the latent spread (median ‖z(Y10) − z̄‖) over the images attacked
            under both runs, which divides its distances on the ``spread`` scale.
    """

    methods: tuple[str, str]
    test_index: np.ndarray
    rows: dict[str, np.ndarray]
    distances: dict[str, dict[str, np.ndarray]]
    logit: dict[str, dict[str, np.ndarray]]
    spread: dict[str, float]

    def values(self, method: str, perturbation: str, scale: str) -> np.ndarray:
        """The distances on the ``latent``, ``logit`` or ``spread`` scale."""
        if scale == "latent":
            return self.distances[method][perturbation]
        if scale == "logit":
            return self.logit[method][perturbation]
        if scale == "spread":
            return self.distances[method][perturbation] / self.spread[method]
        raise OptionError(f"unknown distance scale {scale!r}; expected one of {', '.join(SCALES)}")


def flipped_under_both(a: Triplets, b: Triplets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test indices flipped under both runs (sorted) and their rows in each run."""
    common = np.array(sorted(set(a.test_index[a.success].tolist()) & set(b.test_index[b.success].tolist())),
                      dtype=np.int64)
    return (common, np.array([a.row(int(t)) for t in common], dtype=np.int64),
            np.array([b.row(int(t)) for t in common], dtype=np.int64))


def paired_distances(runs: Mapping[str, Triplets],
                     heads: Mapping[str, Callable[[np.ndarray], np.ndarray] | None] | None = None) -> PairedDistances:
    """d_E (Y10–Y1, Y10–1P) of each run on the images flipped under both, raw and in logit space.

    Args:
        runs: two entries, method name → its triplets; the first is the reference.
        heads: method → the model's latent-to-logits map on (n, d) arrays, giving (n, K)
            [default: none: the logit distances are NaN].

    Returns:
        The per-image distances. The spread of each run is measured over the same images for
        both runs — those attacked under both.
    """
    heads = heads or {}
    (ref, data_ref), (ada, data_ada) = runs.items()
    common, rows_ref, rows_ada = flipped_under_both(data_ref, data_ada)
    rows = {ref: rows_ref, ada: rows_ada}
    dist, logit = {}, {}
    for method, data in runs.items():
        r = rows[method]
        dist[method] = perturbation_distances(data.z_y10[r], data.z_y1[r], data.z_1p[r]) if len(r) else \
            {p: np.zeros(0) for p in PERTURBATIONS}
        head = heads.get(method)
        if head is not None and len(r):
            logit[method] = perturbation_distances(*(np.asarray(head(z[r]), np.float64)
                                                     for z in (data.z_y10, data.z_y1, data.z_1p)))
        else:
            logit[method] = {p: np.full(len(r), np.nan) for p in PERTURBATIONS}
    both = attacked_under_both(data_ref, data_ada)
    spread = {ref: data_ref.spread(both[1]), ada: data_ada.spread(both[2])}
    return PairedDistances((ref, ada), common, rows, dist, logit, spread)


def boundary_distances(z: np.ndarray, true: Sequence[int] | np.ndarray, weight: np.ndarray,
                       bias: np.ndarray) -> np.ndarray:
    """Distance from each latent to the decision boundary of its true class, for a linear head.

    The region where a linear head ``W z + b`` predicts class y is the intersection of the
    half-spaces (w_y − w_t)·z + b_y − b_t ≥ 0, t ≠ y; from a point inside it, the distance to
    its boundary is the smallest distance to one of those hyperplanes:
    min_t [(w_y − w_t)·z + b_y − b_t] / ‖w_y − w_t‖. It is negative for a latent the head
    classifies wrongly. It needs no attack: every attacked image has one.

    Args:
        z: (n, d) latents.
        true: (n,) true class of each.
        weight: (K, d) the head's weights.
        bias: (K,) the head's biases.

    Returns:
        (n,) distances in latent units.
    """
    z = np.asarray(z, np.float64)
    w, b = np.asarray(weight, np.float64), np.asarray(bias, np.float64)
    y = np.asarray(true, np.int64)
    if z.ndim != 2 or w.ndim != 2 or w.shape[1] != z.shape[1] or b.shape != (w.shape[0],) or y.shape != (len(z),):
        raise OptionError(f"boundary distances need z (n, d), true (n,), weight (K, d), bias (K,); got {z.shape}, "
                          f"{y.shape}, {w.shape}, {b.shape}")
    logits = z @ w.T + b
    out = np.full(len(z), np.inf)
    for t in range(w.shape[0]):
        other = y != t
        gap = w[y[other]] - w[t]
        out[other] = np.minimum(out[other], (logits[other, y[other]] - logits[other, t]) / np.linalg.norm(gap, axis=1))
    return out


def attacked_under_both(a: Triplets, b: Triplets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test indices attacked under both runs (sorted) and their rows in each run."""
    common = np.array(sorted(set(a.test_index.tolist()) & set(b.test_index.tolist())), dtype=np.int64)
    return (common, np.array([a.row(int(t)) for t in common], dtype=np.int64),
            np.array([b.row(int(t)) for t in common], dtype=np.int64))


def distance_tables(paired: PairedDistances) -> dict[str, Any]:
    """Summaries, ratios and JS distances for every scale (``latent``, ``logit``, ``spread``) and
    perturbation (Tables 3/5 on the first).

    Returns:
        ``tables[scale][perturbation]`` with, per method, :func:`summarize`'s numbers, and
        ``js_distance`` (base 2), ``js_bins``, ``js_bin_edges``, ``ratio_median`` and
        ``ratio_mean`` (adapted over reference; NaN when undefined).
    """
    ref, ada = paired.methods
    out: dict[str, Any] = {}
    for scale in SCALES:
        out[scale] = {}
        for pert in PERTURBATIONS:
            a = paired.values(ref, pert, scale)
            b = paired.values(ada, pert, scale)
            # logit distances of a model without a head are NaN: no histogram, no JS distance
            js = js_distance(a, b) if np.isfinite(a).all() and np.isfinite(b).all() else \
                JSResult(float("nan"), np.zeros(0), np.zeros(0), np.zeros(0))
            out[scale][pert] = {
                ref: summarize(a), ada: summarize(b),
                "js_distance": js.distance, "js_base": js.base, "js_bins": max(len(js.edges) - 1, 0),
                "js_bin_edges": js.edges.tolist(),
                "ratio_median": _ratio(np.median(b) if b.size else np.nan, np.median(a) if a.size else np.nan),
                "ratio_mean": _ratio(np.mean(b) if b.size else np.nan, np.mean(a) if a.size else np.nan),
            }
    return out


def _ratio(a: float, b: float) -> float:
    return float(a / b) if np.isfinite(a) and np.isfinite(b) and b != 0 else float("nan")


# --------------------------------------------------------------------------------------
# the attack suite: success against queries, and where the dangerous pixels are
# --------------------------------------------------------------------------------------
#: radii (in Petrosian radii) of the dangerous-pixel table; beyond the last: the sky
DANGER_RADII: tuple[float, ...] = (1.0, 2.0, 4.0)


def queries_to_reach(times: np.ndarray, observed: np.ndarray, rate: float) -> float | None:
    """The fewest queries per image after which a search has flipped ``rate`` of the images.

    Args:
        times: (n,) queries until each image's flip (or the budget spent when it failed).
        observed: (n,) whether each image flipped.
        rate: the success rate to reach, a fraction.

    Returns:
        The queries, or None when the search never reaches ``rate``.
    """
    t, fraction = success_curve(np.asarray(times, np.float64), np.asarray(observed, bool))
    hit = np.flatnonzero(fraction >= rate - 1e-12)
    return float(t[hit[0]]) if hit.size and rate > 0 else (0.0 if rate <= 0 else None)


def light_centroid(image: np.ndarray, smooth: float = 2.0) -> tuple[float, float]:
    """(x, y) pixel centroid of an image's positive light after Gaussian smoothing.

    Args:
        image: (H, W) one band of a background-subtracted image (e.g. r, electrons).
        smooth: σ of the smoothing, pixels [default: 2]: it keeps the noise out of the centroid.
    """
    light = np.clip(ndimage.gaussian_filter(np.asarray(image, np.float64), smooth), 0.0, None)
    total = light.sum()
    if total <= 0:
        h, w = light.shape
        return (w - 1) / 2.0, (h - 1) / 2.0
    ys, xs = np.indices(light.shape)
    return float((light * xs).sum() / total), float((light * ys).sum() / total)


def _scaled_radius(shape: tuple[int, int], centre: tuple[float, float], scale: float) -> np.ndarray:
    ys, xs = np.indices(shape)
    return np.hypot(xs - centre[0], ys - centre[1]) / scale


def dangerous_pixel_shares(flips: np.ndarray, centres: np.ndarray, scales: np.ndarray,
                           radii: Sequence[float] = DANGER_RADII) -> dict[str, Any]:
    """Where the pixels that flip images lie, in units of each galaxy's Petrosian radius.

    Args:
        flips: (n, H, W) bool, per image and position whether some value there flips it.
        centres: (n, 2) each image's light centroid (x, y), pixels.
        scales: (n,) each galaxy's Petrosian radius, pixels.
        radii: the radii (Petrosian radii) of the table [default: 1, 2, 4].

    Returns:
        ``{"n_positions": total flipping positions, "shares": {"< 1 r_p": …, "1–2 r_p": …, …,
        "> 4 r_p (sky)": …}, "area_shares": the same for all positions}`` — the second says
        how much of the stamp each annulus covers, for comparison.
    """
    flips = np.asarray(flips, bool)
    edges = [0.0, *radii, np.inf]
    counts = np.zeros(len(edges) - 1)
    area = np.zeros(len(edges) - 1)
    for f, c, s in zip(flips, np.asarray(centres, np.float64), np.asarray(scales, np.float64)):
        r = _scaled_radius(f.shape, (c[0], c[1]), max(float(s), 1e-9))
        counts += np.histogram(r[f], bins=edges)[0]
        area += np.histogram(r, bins=edges)[0]
    names = [f"< {radii[0]:g} r_p"] + [f"{a:g}–{b:g} r_p" for a, b in zip(radii, radii[1:])] + \
        [f"> {radii[-1]:g} r_p (sky)"]
    total = counts.sum()
    return {"n_positions": int(total),
            "shares": {n: float(c / total) if total else float("nan") for n, c in zip(names, counts)},
            "area_shares": {n: float(a / area.sum()) if area.sum() else float("nan") for n, a in zip(names, area)}}


def stacked_flip_map(flips: np.ndarray, centres: np.ndarray, scales: np.ndarray, *, extent: float = 6.0,
                     bins: int = 49) -> tuple[np.ndarray, np.ndarray]:
    """Flip maps stacked in galaxy-centred coordinates (units of the Petrosian radius).

    Args:
        flips: (n, H, W) bool flip maps.
        centres: (n, 2) light centroids (x, y), pixels.
        scales: (n,) Petrosian radii, pixels.
        extent: the stack covers [−extent, extent]² Petrosian radii [default: 6].
        bins: bins per axis [default: 49].

    Returns:
        ``(flipping, positions)``, each (bins, bins): counts of flipping positions and of all
        positions in each bin; their ratio is the probability that a pixel there flips an image.
    """
    edges = np.linspace(-extent, extent, bins + 1)
    flipping = np.zeros((bins, bins))
    positions = np.zeros((bins, bins))
    for f, c, s in zip(np.asarray(flips, bool), np.asarray(centres, np.float64), np.asarray(scales, np.float64)):
        ys, xs = np.indices(f.shape)
        u, v = (xs - c[0]) / s, (ys - c[1]) / s
        flipping += np.histogram2d(v[f], u[f], bins=(edges, edges))[0]
        positions += np.histogram2d(v.ravel(), u.ravel(), bins=(edges, edges))[0]
    return flipping, positions
