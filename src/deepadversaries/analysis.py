"""Latent-space robustness analysis (SPEC 8): distances, JS distance, church windows, isomaps.

Everything here works on latents and models directly; :func:`analyze_runs` ties it to two
run folders (a regular and a domain-adapted run of the same model on the same dataset) and
writes the tables and figures of the paper's sections 4-5.

Conventions
- ``d_E`` is the Euclidean distance between the latent of the Y10 image and that of its
  perturbed counterpart (Y1: same galaxy, noisier; 1P: the one-pixel-attacked Y10 image).
- Distances are compared on the images flipped by the attack under *both* runs.
- Standard error = std / sqrt(n) with the population std (ddof = 0), as the authors' code.
- The JS distance is ``scipy.spatial.distance.jensenshannon`` in base 2 (so it lies in
  [0, 1]) between histograms on common bins (numpy's ``"auto"`` edges of the pooled
  sample), each normalised to sum 1.
- A church window puts z(Y10) at the origin, z(1P) - z(Y10) along the horizontal axis and
  z(Y1) - z(Y10) along the vertical one, on a 221 x 221 grid over [-1.1, 1.1]^2, and
  classifies every grid point with one batched call of ``model.head``.
"""

from __future__ import annotations

import csv
import math
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.spatial.distance import jensenshannon

from . import CLASSES
from .errors import DeepAdvError, check_preset, file_error
from .io import OutputLock, read_json, write_csv, write_json, write_text
from .progress import info, make_progress
from .runs import attack_dir, read_run_config

PERTURBATIONS: tuple[str, ...] = ("Y10-Y1", "Y10-1P")
TRAININGS: tuple[str, ...] = ("regular", "da")
TRAINING_LABELS = {"regular": "Regular training", "da": "Domain adaptation"}
SCALES: tuple[str, ...] = ("latent", "normalised")
JS_BASE = 2
JS_BINS = "auto"
CHURCH_EXTENT = 1.1
CHURCH_STEP = 0.01
ISOMAP_NEIGHBORS = 5
ANALYSIS_DONE = "analysis.json"

#: sizes that depend on the preset: only the rotating GIFs change (frames, resolution)
ANALYZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"gif_frames": 6, "gif_dpi": 40, "gif_fps": 6},
    "quick": {"gif_frames": 24, "gif_dpi": 80, "gif_fps": 8},
    "paper": {"gif_frames": 90, "gif_dpi": 100, "gif_fps": 15},
}

LATENT_KEYS = ("test_index", "z_y10", "z_y1", "z_1p", "success")
RESULT_COLUMNS = ("test_index", "true", "target", "success")


# --------------------------------------------------------------------------------------
# distances and their summary
# --------------------------------------------------------------------------------------
def euclidean_distances(z_a: np.ndarray, z_b: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean distance ||z_a[i] - z_b[i]||_2 (float64)."""
    a = np.asarray(z_a, dtype=np.float64)
    b = np.asarray(z_b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"latent arrays must have the same (n, d) shape, got {a.shape} and {b.shape}")
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
        raise ValueError(f"extent {extent} and 1 must be whole multiples of step {step}")
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

    def fractions(self) -> list[float]:
        """Fraction of the window taken by each class."""
        counts = np.bincount(self.classes.ravel(), minlength=len(CLASSES))
        return [float(c) / self.classes.size for c in counts]


def _as_tensor(z: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(z, np.float32)) if not isinstance(z, torch.Tensor) else z.detach()
    return t.to(device=device, dtype=torch.float32).reshape(-1)


def _head_device(head: Callable) -> torch.device:
    owner = getattr(head, "__self__", head)
    if isinstance(owner, torch.nn.Module):
        for p in owner.parameters():
            return p.device
    return torch.device("cpu")


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
    """Classify the whole church-window grid with ONE batched call of ``head``."""
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
    from sklearn.manifold import Isomap
    from threadpoolctl import threadpool_limits

    x = np.asarray(latents, dtype=np.float64)
    if x.ndim != 2 or len(x) < n_components + 2:
        raise DeepAdvError(f"isomap needs at least {n_components + 2} latent vectors, got {len(x)}")
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
# model helpers
# --------------------------------------------------------------------------------------
def embed_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Latents (n, d) and predicted classes (n,) of stretched images, in batches."""
    device = next(model.parameters()).device
    zs, preds = [], []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], np.float32)).to(device)
            z = model.embed(x)
            zs.append(z.float().cpu().numpy())
            preds.append(model.head(z).argmax(dim=1).cpu().numpy())
    if not zs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(zs), np.concatenate(preds).astype(np.int64)


def head_classes(model: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    """The model's class of each latent row."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        t = torch.from_numpy(np.asarray(z, np.float32).reshape(len(z), -1)).to(device)
        return model.head(t).argmax(dim=1).cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------------------
# attack results of a run
# --------------------------------------------------------------------------------------
def _class_index(value: Any, source: Path) -> int | None:
    text = str(value).strip()
    if text in ("", "-1", "None", "nan", "NaN"):
        return None
    if text in CLASSES:
        return CLASSES.index(text)
    try:
        k = int(float(text))
    except ValueError:
        raise file_error(source, f"unknown class {text!r}; expected one of {', '.join(CLASSES)} or 0-2") from None
    if not 0 <= k < len(CLASSES):
        raise file_error(source, f"class index {k} out of range 0-{len(CLASSES) - 1}")
    return k


@dataclass
class AttackData:
    """A run's attack results: latents (rows in results.csv order) and per-image metadata."""

    run: Path
    config: dict[str, Any]
    test_index: np.ndarray
    z_y10: np.ndarray
    z_y1: np.ndarray
    z_1p: np.ndarray
    success: np.ndarray
    true: list[int]
    target: list[int | None]
    galaxy_id: list[str]
    iterations: list[str]
    summary: dict[str, Any] = field(default_factory=dict)

    def row(self, test_index: int) -> int | None:
        """Row number of an attacked test image, or None."""
        hits = np.flatnonzero(self.test_index == test_index)
        return int(hits[0]) if hits.size else None

    def median_latent_norm(self) -> float:
        """Median ||z(Y10)|| over all attacked images (the scale of this model's latent space)."""
        if len(self.z_y10) == 0:
            return float("nan")
        return float(np.median(np.linalg.norm(self.z_y10.astype(np.float64), axis=1)))


def load_attack(run: str | Path) -> AttackData:
    """Read RUN/attack/{results.csv, latents.npz, summary.json}; clear errors when missing or inconsistent."""
    run = Path(run)
    config = read_run_config(run)
    folder = attack_dir(run)
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        raise file_error(summary_path, f"no finished attack for this run; run 'deepadv attack {run}' first")
    summary = read_json(summary_path)
    latents_path = folder / "latents.npz"
    results_path = folder / "results.csv"
    for p in (latents_path, results_path):
        if not p.is_file():
            raise file_error(p, "file not found (the attack folder is incomplete)")
    try:
        with np.load(latents_path, allow_pickle=False) as npz:
            missing = [k for k in LATENT_KEYS if k not in npz.files]
            if missing:
                raise file_error(latents_path, f"missing arrays {', '.join(missing)}")
            arrays = {k: np.asarray(npz[k]) for k in LATENT_KEYS}
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise file_error(latents_path, f"not a readable .npz file ({type(exc).__name__}: {exc})") from exc
    if arrays["test_index"].ndim != 1:
        raise file_error(latents_path, f"test_index has shape {arrays['test_index'].shape}; expected (n,)")
    n = len(arrays["test_index"])
    for k in ("z_y10", "z_y1", "z_1p"):
        if arrays[k].ndim != 2 or len(arrays[k]) != n or arrays[k].shape != arrays["z_y10"].shape:
            raise file_error(latents_path, f"{k} has shape {arrays[k].shape}; expected ({n}, d) like z_y10")
        if not np.isfinite(arrays[k]).all():
            raise file_error(latents_path, f"{k} has NaN or infinite values")
    if arrays["success"].shape != (n,):
        raise file_error(latents_path, f"success has shape {arrays['success'].shape}; expected ({n},)")
    try:
        with open(results_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise file_error(results_path, f"missing columns {', '.join(missing)}")
            rows = list(reader)
        if len(rows) != n:
            raise file_error(results_path, f"{len(rows)} rows but latents.npz has {n}")
        csv_index = np.array([int(float(r["test_index"])) for r in rows], dtype=np.int64)
    except (UnicodeDecodeError, csv.Error, ValueError, TypeError, OverflowError) as exc:
        raise file_error(results_path, f"not a readable results table ({type(exc).__name__}: {exc})") from exc
    test_index = arrays["test_index"].astype(np.int64)
    if not np.array_equal(csv_index, test_index):
        raise file_error(latents_path, "test_index differs from the order of results.csv")
    true = [_class_index(r["true"], results_path) for r in rows]
    if any(t is None for t in true):
        raise file_error(results_path, "a row has no true class")
    return AttackData(
        run=run, config=config, test_index=test_index,
        z_y10=arrays["z_y10"].astype(np.float32), z_y1=arrays["z_y1"].astype(np.float32),
        z_1p=arrays["z_1p"].astype(np.float32), success=arrays["success"].astype(bool),
        true=[int(t) for t in true], target=[_class_index(r["target"], results_path) for r in rows],
        galaxy_id=[r.get("galaxy_id", "") for r in rows], iterations=[r.get("iterations", "") for r in rows],
        summary=summary if isinstance(summary, dict) else {},
    )


def check_comparable(regular: AttackData | dict, da: AttackData | dict, regular_path: Path, da_path: Path) -> None:
    """Refuse two runs of different models or different datasets."""
    rc = regular.config if isinstance(regular, AttackData) else regular
    dc = da.config if isinstance(da, AttackData) else da
    if rc["model"] != dc["model"]:
        raise DeepAdvError(
            f"{da_path}: model {dc['model']!r} differs from the regular run's {rc['model']!r} ({regular_path}); "
            "compare two runs of the same model")
    if Path(rc["data"]).expanduser().resolve() != Path(dc["data"]).expanduser().resolve():
        raise DeepAdvError(
            f"{da_path}: dataset {dc['data']} differs from the regular run's {rc['data']} ({regular_path}); "
            "compare two runs on the same dataset")


# --------------------------------------------------------------------------------------
# the images flipped under both runs, and the distance tables
# --------------------------------------------------------------------------------------
@dataclass
class PairedDistances:
    """Per-image distances of the images flipped under both runs."""

    test_index: np.ndarray
    rows_regular: np.ndarray
    rows_da: np.ndarray
    distances: dict[str, dict[str, np.ndarray]]  # training -> perturbation -> d_E
    scale: dict[str, float]  # training -> median ||z(Y10)||

    def normalised(self, training: str, perturbation: str) -> np.ndarray:
        return self.distances[training][perturbation] / self.scale[training]

    def values(self, training: str, perturbation: str, scale: str) -> np.ndarray:
        if scale == "latent":
            return self.distances[training][perturbation]
        return self.normalised(training, perturbation)


def flipped_under_both(regular: AttackData, da: AttackData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test indices flipped under both runs (sorted) and their rows in each run."""
    flipped_r = set(regular.test_index[regular.success].tolist())
    flipped_d = set(da.test_index[da.success].tolist())
    common = np.array(sorted(flipped_r & flipped_d), dtype=np.int64)
    rows_r = np.array([regular.row(int(t)) for t in common], dtype=np.int64)
    rows_d = np.array([da.row(int(t)) for t in common], dtype=np.int64)
    return common, rows_r, rows_d


def paired_distances(regular: AttackData, da: AttackData) -> PairedDistances:
    """d_E (Y10-Y1, Y10-1P) of each run on the images flipped under both."""
    common, rows_r, rows_d = flipped_under_both(regular, da)
    dist = {}
    for name, data, rows in (("regular", regular, rows_r), ("da", da, rows_d)):
        dist[name] = perturbation_distances(data.z_y10[rows], data.z_y1[rows], data.z_1p[rows]) if len(rows) else \
            {p: np.zeros(0) for p in PERTURBATIONS}
    scale = {"regular": regular.median_latent_norm(), "da": da.median_latent_norm()}
    return PairedDistances(common, rows_r, rows_d, dist, scale)


def distance_tables(paired: PairedDistances) -> dict[str, Any]:
    """Summaries and JS distances for every scale and perturbation (the numbers of Tables 3/5)."""
    out: dict[str, Any] = {}
    for scale in SCALES:
        out[scale] = {}
        for pert in PERTURBATIONS:
            reg = paired.values("regular", pert, scale)
            da = paired.values("da", pert, scale)
            js = js_distance(reg, da)
            out[scale][pert] = {
                "regular": summarize(reg), "da": summarize(da),
                "js_distance": js.distance, "js_base": js.base, "js_bins": len(js.edges) - 1,
                "js_bin_edges": js.edges.tolist(),
                "ratio_median_da_over_regular": _ratio(np.median(da) if da.size else np.nan,
                                                       np.median(reg) if reg.size else np.nan),
                "ratio_mean_da_over_regular": _ratio(np.mean(da) if da.size else np.nan,
                                                     np.mean(reg) if reg.size else np.nan),
            }
    return out


def _rate(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def _ratio(a: float, b: float) -> float:
    return float(a / b) if np.isfinite(a) and np.isfinite(b) and b != 0 else float("nan")


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or not np.isfinite(x):
        return "NaN"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


PERT_LABEL = {"Y10-Y1": "Y10–Y1", "Y10-1P": "Y10–1P"}


def distances_markdown(tables: dict[str, Any], header: dict[str, Any], notes: Sequence[str]) -> str:
    """Tables 3/5 layout as Markdown, with n, the JS distance and its base."""
    lines = ["# Latent-space distances d_E (Tables 3/5 layout)", ""]
    lines.append(f"Model: {header['model']} · dataset: `{header['data']}` · "
                 f"regular run: `{header['regular']}` · DA run: `{header['da']}`")
    lines.append("")
    lines.append(f"Images flipped by the one-pixel attack under both runs: **n = {header['n_both']}** "
                 f"(attacked by both: {header['n_attacked_both']}; flipped under regular: "
                 f"{header['n_flipped_regular']} of {header['n_attacked_regular']}, under DA: "
                 f"{header['n_flipped_da']} of {header['n_attacked_da']}).")
    lines.append("")
    titles = {
        "latent": "## d_E in each model's latent space",
        "normalised": "## d_E divided by each model's median ‖z(Y10)‖ "
                      f"(regular {_fmt(header['scale_regular'])}, DA {_fmt(header['scale_da'])})",
    }
    for scale in SCALES:
        lines += [titles[scale], "", "| Perturb. | Training | Median | Mean | St. Err. | n | JS distance (base 2) |",
                  "|---|---|---|---|---|---|---|"]
        for pert in PERTURBATIONS:
            row = tables[scale][pert]
            for k, tr in enumerate(TRAININGS):
                s = row[tr]
                lines.append(f"| {PERT_LABEL[pert] if k == 0 else ''} | {'Reg' if tr == 'regular' else 'DA'} | "
                             f"{_fmt(s['median'])} | {_fmt(s['mean'])} | ±{_fmt(s['stderr'])} | {s['n']} | "
                             f"{_fmt(row['js_distance']) if k == 0 else ''} |")
        lines.append("")
    lines.append("Standard error = std/√n (population std, ddof = 0, as the authors' code). "
                 "JS distance = √(JS divergence), `scipy.spatial.distance.jensenshannon` with base 2 "
                 "(range 0–1), between the regular and DA histograms on common bins (numpy's 'auto' rule "
                 "on the pooled sample), each normalised to sum 1.")
    if notes:
        lines += ["", "**Notes**", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------
# example selection
# --------------------------------------------------------------------------------------
@dataclass
class Example:
    """One test image shown in the church-window figures, with its row in each run (or None)."""

    test_index: int
    rows: dict[str, int | None]
    status: str  # "flipped under both", "flipped under regular only", ...

    @property
    def flipped_under_both(self) -> bool:
        return self.status == "flipped under both"


def choose_examples(regular: AttackData, da: AttackData, k: int, seed: int = 0) -> list[Example]:
    """Up to ``k`` images, preferring those flipped under both runs, then under one, then any.

    Within the best tier, images are taken in turn from each true class (seeded order), so
    the examples show different classes as the paper's Figure 5.
    """
    rng = np.random.default_rng(seed)
    attacked = sorted(set(regular.test_index.tolist()) | set(da.test_index.tolist()))

    def status(t: int) -> tuple[int, str]:
        rr, rd = regular.row(t), da.row(t)
        sr = rr is not None and bool(regular.success[rr])
        sd = rd is not None and bool(da.success[rd])
        in_both = rr is not None and rd is not None
        if sr and sd:
            return 0, "flipped under both"
        if in_both and (sr or sd):
            return 1, f"flipped under {'regular' if sr else 'DA'} only"
        if in_both:
            return 2, "attacked under both, flipped under neither"
        if sr or sd:
            return 3, f"attacked under {'regular' if rr is not None else 'DA'} only (flipped there)"
        return 4, f"attacked under {'regular' if rr is not None else 'DA'} only (not flipped)"

    tiers: dict[int, list[tuple[int, str]]] = {}
    for t in attacked:
        rank, text = status(t)
        tiers.setdefault(rank, []).append((t, text))
    chosen: list[Example] = []
    for rank in sorted(tiers):
        members = tiers[rank]
        order = rng.permutation(len(members))
        by_class: dict[int, list[tuple[int, str]]] = {}
        for i in order:
            t, text = members[int(i)]
            data, row = (regular, regular.row(t)) if regular.row(t) is not None else (da, da.row(t))
            by_class.setdefault(data.true[row], []).append((t, text))
        queues = [by_class[c] for c in sorted(by_class)]
        while any(queues) and len(chosen) < k:
            for q in queues:
                if q and len(chosen) < k:
                    t, text = q.pop(0)
                    chosen.append(Example(int(t), {"regular": regular.row(t), "da": da.row(t)}, text))
        if len(chosen) >= k:
            break
    return chosen


# --------------------------------------------------------------------------------------
# the whole analysis of two runs
# --------------------------------------------------------------------------------------
def _triplet(data: AttackData, model: torch.nn.Module, row: int) -> dict[str, Any]:
    z = {"z_y10": data.z_y10[row], "z_y1": data.z_y1[row], "z_1p": data.z_1p[row]}
    preds = head_classes(model, np.stack([z["z_y10"], z["z_y1"], z["z_1p"]]))
    return {**z, "pred_y10": int(preds[0]), "pred_y1": int(preds[1]), "pred_1p": int(preds[2]),
            "true": data.true[row], "target": data.target[row], "success": bool(data.success[row]),
            "iterations": data.iterations[row], "galaxy_id": data.galaxy_id[row]}


def _png_info(path: Path) -> dict[str, Any]:
    from PIL import Image

    with Image.open(path) as im:
        dpi = im.info.get("dpi", (None, None))[0]
        frames = getattr(im, "n_frames", 1)
        return {"file": path.name, "width_px": im.width, "height_px": im.height,
                "dpi": round(float(dpi)) if dpi else None, "frames": int(frames),
                "bytes": path.stat().st_size}


def analyze_runs(regular: str | Path, da: str | Path, out: str | Path, *, n_isomap: int = 250, examples: int = 4,
                 seed: int = 0, preset: str = "quick", overwrite: bool = False, device: str = "auto") -> dict:
    """Compare a regular and a domain-adapted run: tables, figures and ``analysis.json``.

    Both runs must be of the same model on the same dataset and have finished attacks.
    Writes into ``out``: distances.csv, distances.md, distances_per_image.csv,
    fig3_church_isomap.png, fig4_isomap3d.png, fig5_church_windows.png, fig6_distances.png,
    isomap3d_regular.gif, isomap3d_da.gif and, last, analysis.json (returned).
    """
    from .devices import resolve_device
    from .models import load_model
    from .plots import latent as latent_plots

    started = time.perf_counter()
    sizes = check_preset(preset, ANALYZE_PRESETS)
    if n_isomap < 0:
        raise DeepAdvError(f"--n-isomap must be 0 or more, got {n_isomap}")
    if examples < 1:
        raise DeepAdvError(f"--examples must be 1 or more, got {examples}")
    regular, da, out = Path(regular), Path(da), Path(out)
    check_comparable(read_run_config(regular), read_run_config(da), regular, da)
    data_r, data_d = load_attack(regular), load_attack(da)
    if data_r.z_y10.shape[1:] != data_d.z_y10.shape[1:] and len(data_r.z_y10) and len(data_d.z_y10):
        raise DeepAdvError(f"{da}: latent size {data_d.z_y10.shape[1]} differs from the regular run's "
                           f"{data_r.z_y10.shape[1]}")
    if (out / ANALYSIS_DONE).is_file() and not overwrite:
        raise file_error(out / ANALYSIS_DONE, "a finished analysis is already here; pass --overwrite to redo it")
    device_t = resolve_device(device)
    notes: list[str] = []
    if data_r.config.get("method") != "regular":
        notes.append(f"the 'regular' run {regular} has method {data_r.config.get('method')!r}")
    if data_d.config.get("method") == "regular":
        notes.append(f"the 'DA' run {da} has method 'regular'")

    with OutputLock(out, "analyze"), make_progress() as progress:
        task = progress.add_task("analyze", total=7)
        timings: dict[str, float] = {}
        clock = [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            timings[name] = round(now - clock[0], 3)
            clock[0] = now
            progress.advance(task)

        # 1. distances on the images flipped under both runs
        paired = paired_distances(data_r, data_d)
        tables = distance_tables(paired)
        n_both = len(paired.test_index)
        attacked_both = len(set(data_r.test_index.tolist()) & set(data_d.test_index.tolist()))
        if n_both == 0:
            notes.append("no image was flipped under both runs: the distance tables hold n = 0 and NaN, "
                         "and Figure 6 has no histograms")
        elif n_both < 10:
            notes.append(f"only {n_both} images were flipped under both runs: medians, means and the "
                         "JS distance are very uncertain")
        header = {"model": data_r.config["model"], "data": data_r.config["data"], "regular": str(regular),
                  "da": str(da), "n_both": n_both, "n_attacked_both": attacked_both,
                  "n_attacked_regular": len(data_r.test_index), "n_attacked_da": len(data_d.test_index),
                  "n_flipped_regular": int(data_r.success.sum()), "n_flipped_da": int(data_d.success.sum()),
                  "scale_regular": paired.scale["regular"], "scale_da": paired.scale["da"]}
        _write_distance_files(out, paired, tables, header, data_r, data_d, notes)
        lap("distances")

        # 2. models, examples, church windows
        models = {"regular": load_model(regular, device=device_t), "da": load_model(da, device=device_t)}
        attack = {"regular": data_r, "da": data_d}
        chosen = choose_examples(data_r, data_d, examples, seed)
        if chosen and not chosen[0].flipped_under_both:
            notes.append(f"no image was flipped under both runs; the example figures show the best available "
                         f"image(s): test image {chosen[0].test_index} ({chosen[0].status})")
        elif len(chosen) < examples:
            notes.append(f"only {len(chosen)} attacked image(s) available for {examples} requested examples")
        if any(not e.flipped_under_both for e in chosen) and chosen and chosen[0].flipped_under_both:
            notes.append("fewer images flipped under both runs than examples requested; the extra examples "
                         "are the best available images (status given in analysis.json)")
        panels = [{"example": ex, "runs": {tr: _windowed_triplet(attack[tr], models[tr], ex.rows[tr])
                                           for tr in TRAININGS}} for ex in chosen]
        lap("church_windows")

        # 3. isomaps: random test galaxies in both domains plus the example triplets
        isomaps, sample_index, sample_stats = _isomaps(data_r.config["data"], models, panels, n_isomap, seed,
                                                       data_r.z_y10.shape[1], notes)
        n_sample = len(sample_index)
        lap("isomaps")

        # 4. figures
        figures: dict[str, dict[str, Any]] = {}
        caption_note = None if (not chosen or chosen[0].flipped_under_both) else \
            f"No image was flipped under both runs; shown: test image {chosen[0].test_index} ({chosen[0].status})."
        path = latent_plots.save_church_isomap_figure(out / "fig3_church_isomap.png", panels[0] if panels else None,
                                                      isomaps, example_number=0, note=caption_note)
        figures["fig3"] = _png_info(path)
        path = latent_plots.save_church_windows_figure(out / "fig5_church_windows.png", panels)
        figures["fig5"] = _png_info(path)
        lap("fig3_fig5")
        path = latent_plots.save_isomap3d_figure(out / "fig4_isomap3d.png", isomaps, example_number=0)
        figures["fig4"] = _png_info(path)
        lap("fig4")
        for tr in TRAININGS:
            name = f"isomap3d_{tr}.gif"
            path = latent_plots.save_isomap_gif(out / name, isomaps[tr], title=TRAINING_LABELS[tr],
                                                frames=sizes["gif_frames"], dpi=sizes["gif_dpi"],
                                                fps=sizes["gif_fps"], example_number=0)
            figures[f"gif_{tr}"] = _png_info(path)
        lap("gifs")
        path = latent_plots.save_distances_figure(out / "fig6_distances.png", paired, tables)
        figures["fig6"] = _png_info(path)
        lap("fig6")

        # 5. analysis.json, last: the finished marker
        result = {
            "kind": "deepadv-analysis",
            "regular": str(regular), "da": str(da), "model": data_r.config["model"],
            "methods": {"regular": data_r.config.get("method"), "da": data_d.config.get("method")},
            "data": data_r.config["data"], "seed": seed, "preset": preset, "n_isomap": n_sample,
            "n_isomap_requested": n_isomap, "examples_requested": examples,
            "attack": {tr: {"n_attacked": len(attack[tr].test_index), "n_flipped": int(attack[tr].success.sum()),
                            "flip_rate": _rate(attack[tr].success),
                            "median_latent_norm_Y10": paired.scale[tr]} for tr in TRAININGS},
            "n_attacked_both": attacked_both,
            "n_flipped_both": n_both,
            "flipped_both_test_index": paired.test_index.tolist(),
            "distances": tables,
            "js_base": JS_BASE,
            "stderr_definition": "std/sqrt(n), population std (ddof=0)",
            "normalisation": "distances divided by each model's median ||z(Y10)|| over all its attacked images",
            "examples": [_example_json(p) for p in panels],
            "isomap_sample": {"test_index": sample_index.tolist(), "n_neighbors": ISOMAP_NEIGHBORS,
                              "eigen_solver": "dense", **{tr: sample_stats[tr] for tr in TRAININGS}},
            "church_window": {"extent": CHURCH_EXTENT, "step": CHURCH_STEP, "size": len(grid_coordinates())},
            "figures": figures,
            "notes": notes,
            "seconds": round(time.perf_counter() - started, 2),
            "seconds_per_stage": timings,
        }
        write_json(out / ANALYSIS_DONE, result)
    info(f"analysis written to {out} ({n_both} images flipped under both runs)")
    return result


def _windowed_triplet(data: AttackData, model: torch.nn.Module, row: int | None) -> dict[str, Any] | None:
    """A run's triplet of one image with its church window (None when the run did not attack it)."""
    if row is None:
        return None
    trip = _triplet(data, model, row)
    trip["window"] = church_window_grid(model.head, trip["z_y10"], trip["z_y1"], trip["z_1p"])
    return trip


def _isomaps(data_path: str, models: dict[str, torch.nn.Module], panels: list[dict[str, Any]], n_isomap: int,
             seed: int, latent_dim: int, notes: list[str]) -> tuple[dict[str, IsomapEmbedding | None], np.ndarray,
                                                                     dict[str, Any]]:
    """3-D isomaps (first two axes = the 2-D isomap) of each run: a seeded test sample in Y10 and Y1 + triplets."""
    from .data import apply_stretch, load_dataset

    dataset = load_dataset(data_path)
    if not dataset.has_domain("Y1"):
        raise file_error(dataset.path, "dataset has no Y1 images; the isomaps need both domains")
    n_test = len(dataset.labels("test"))
    if n_test < n_isomap:
        notes.append(f"the test set has only {n_test} images: the isomaps use {n_test}, not {n_isomap}")
    sample_index = isomap_sample_indices(n_test, n_isomap, seed)
    labels = dataset.labels("test")[sample_index]
    images = {d: apply_stretch(np.asarray(dataset.images(d, "test", stretched=False)[sample_index]),
                               *dataset.stretch(d)) for d in ("Y10", "Y1")}
    isomaps: dict[str, IsomapEmbedding | None] = {}
    stats: dict[str, Any] = {}
    for tr, model in models.items():
        z10, p10 = embed_images(model, images["Y10"])
        z1, p1 = embed_images(model, images["Y1"])
        if not len(sample_index):
            z10 = z1 = np.zeros((0, latent_dim), np.float32)
        triplets = [p["runs"][tr] for p in panels]
        total = len(z10) + len(z1) + 3 * sum(t is not None for t in triplets)
        if total >= 5:
            isomaps[tr] = isomap_embedding(z10, z1, p10, p1, triplets, n_components=3)
        else:
            isomaps[tr] = None
            notes.append(f"too few latents ({total}) for an isomap of the {tr} run")
        stats[tr] = {**_sample_stats(z10, p10, labels, "Y10"), **_sample_stats(z1, p1, labels, "Y1")}
    return isomaps, sample_index, stats


def _sample_stats(z: np.ndarray, pred: np.ndarray, labels: np.ndarray, domain: str) -> dict[str, Any]:
    n = len(pred)
    if n == 0:
        return {f"accuracy_{domain}": float("nan"), f"predicted_fractions_{domain}": [float("nan")] * len(CLASSES),
                f"median_latent_norm_{domain}": float("nan")}
    return {f"accuracy_{domain}": float(np.mean(pred == labels)),
            f"predicted_fractions_{domain}": (np.bincount(pred, minlength=len(CLASSES)) / n).tolist(),
            f"median_latent_norm_{domain}": float(np.median(np.linalg.norm(z, axis=1)))}


def _example_json(panel: dict[str, Any]) -> dict[str, Any]:
    ex: Example = panel["example"]
    runs = {}
    for tr in TRAININGS:
        t = panel["runs"][tr]
        if t is None:
            runs[tr] = None
            continue
        w: ChurchWindow = t["window"]
        runs[tr] = {
            "true": CLASSES[t["true"]], "target": CLASSES[t["target"]] if t["target"] is not None else None,
            "success": t["success"], "iterations": t["iterations"],
            "predicted": {"Y10": CLASSES[t["pred_y10"]], "Y1": CLASSES[t["pred_y1"]], "1P": CLASSES[t["pred_1p"]]},
            "d_E": {"Y10-Y1": float(euclidean_distances(t["z_y10"][None], t["z_y1"][None])[0]),
                    "Y10-1P": float(euclidean_distances(t["z_y10"][None], t["z_1p"][None])[0])},
            "window_fractions": dict(zip(CLASSES, w.fractions())),
        }
    return {"test_index": ex.test_index, "status": ex.status, "runs": runs}


def _write_distance_files(out: Path, paired: PairedDistances, tables: dict[str, Any], header: dict[str, Any],
                          data_r: AttackData, data_d: AttackData, notes: list[str]) -> None:
    rows = []
    for scale in SCALES:
        for pert in PERTURBATIONS:
            for tr in TRAININGS:
                s = tables[scale][pert][tr]
                rows.append({"perturbation": pert, "training": tr, "scale": scale, "n": s["n"],
                             "median": s["median"], "mean": s["mean"], "std": s["std"], "stderr": s["stderr"],
                             "js_distance_base2": tables[scale][pert]["js_distance"]})
    write_csv(out / "distances.csv", rows, ["perturbation", "training", "scale", "n", "median", "mean", "std",
                                            "stderr", "js_distance_base2"])
    per_image = []
    for k, t in enumerate(paired.test_index):
        rr, rd = int(paired.rows_regular[k]), int(paired.rows_da[k])
        row = {"test_index": int(t), "galaxy_id": data_r.galaxy_id[rr], "true": CLASSES[data_r.true[rr]],
               "target_regular": _name(data_r.target[rr]), "target_da": _name(data_d.target[rd]),
               "iterations_regular": data_r.iterations[rr], "iterations_da": data_d.iterations[rd]}
        for tr in TRAININGS:
            for pert in PERTURBATIONS:
                key = pert.lower().replace("-", "_")
                row[f"d_{key}_{tr}"] = float(paired.distances[tr][pert][k])
                row[f"d_{key}_{tr}_normalised"] = float(paired.normalised(tr, pert)[k])
        per_image.append(row)
    fields = ["test_index", "galaxy_id", "true", "target_regular", "target_da", "iterations_regular",
              "iterations_da"] + [f"d_{p.lower().replace('-', '_')}_{tr}{suf}" for suf in ("", "_normalised")
                                  for tr in TRAININGS for p in PERTURBATIONS]
    write_csv(out / "distances_per_image.csv", per_image, fields)
    write_text(out / "distances.md", distances_markdown(tables, header, notes))


def _name(k: int | None) -> str:
    return CLASSES[k] if k is not None else ""


def analyze_single_window(run: str | Path, test_index: int, *, device: str = "auto") -> dict[str, Any]:
    """The church window of one attacked image of one run (for ``deepadv plot church-window``)."""
    from .devices import resolve_device
    from .models import load_model

    data = load_attack(run)
    row = data.row(int(test_index))
    if row is None:
        avail = data.test_index.tolist()
        shown = ", ".join(str(i) for i in avail[:20]) + (" ..." if len(avail) > 20 else "")
        raise file_error(attack_dir(run) / "results.csv",
                         f"test image {test_index} was not attacked in this run; attacked: {shown or 'none'}")
    model = load_model(run, device=resolve_device(device))
    trip = _triplet(data, model, row)
    trip["window"] = church_window_grid(model.head, trip["z_y10"], trip["z_y1"], trip["z_1p"])
    trip["test_index"] = int(test_index)
    trip["method"] = data.config.get("method")
    trip["model"] = data.config.get("model")
    return trip


__all__ = [
    "ANALYZE_PRESETS", "AttackData", "ChurchWindow", "Example", "IsomapEmbedding", "JSResult", "PairedDistances",
    "analyze_runs", "analyze_single_window", "check_comparable", "choose_examples", "church_window_grid",
    "church_window_loop", "common_bins", "distance_tables", "embed_images", "euclidean_distances",
    "flipped_under_both", "grid_coordinates", "head_classes", "isomap_embedding", "isomap_projection",
    "isomap_sample_indices", "js_distance", "load_attack", "normalised_histogram", "paired_distances",
    "perturbation_distances", "summarize",
]
