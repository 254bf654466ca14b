"""Training from arrays in memory (notebooks): ``run = da.train(images, labels)``.

Contract: :func:`train` checks the arrays (one-line :class:`~deepadversaries.errors.OptionError`\\ s
naming the argument and the shape it needs), writes them into a dataset folder with the package's
own dataset writer (:func:`deepadversaries.data.importing.run_import`, the engine of
``deepadv import``: the same stratified split, normalisation fit, catalogue and ``dataset.json``),
trains on that folder with :func:`deepadversaries.training.train.train_model` and returns a
:class:`~deepadversaries.models.run_handle.Run`. Nothing here trains differently from
``deepadv train``: a run made from arrays is an ordinary run folder that every stage reads.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from deepadversaries import CLASSES
from deepadversaries.config import TrainConfig
from deepadversaries.data.importing import ImportOptions, Source, run_import
from deepadversaries.errors import OptionError
from deepadversaries.models.run_handle import Run
from deepadversaries.training.train import train_model

#: the dataset and the run inside ``out`` (or inside the temporary folder)
DATA_NAME = "data"
RUN_NAME = "run"


def _as_array(value: Any, what: str) -> np.ndarray:
    """A numpy array of ``value`` (numpy, torch tensor on any device, or nested sequences)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(f"{what} must be an array, got {type(value).__name__} ({exc})") from None


def dataset_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, H, W) and labels (N,) or (N, K) of a map-style torch ``Dataset`` whose items are
    ``(image, label)`` pairs, stacked in index order.

    Raises:
        OptionError: an empty dataset, or items that are not (image, label) pairs of one shape.
    """
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise OptionError("a Dataset passed to da.train must have a length (a map-style dataset)") from None
    if n == 0:
        raise OptionError("the Dataset passed to da.train is empty")
    images, labels = [], []
    for i in range(n):
        item = dataset[i]
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise OptionError(f"item {i} of the Dataset is not an (image, label) pair")
        images.append(_as_array(item[0], f"image {i} of the Dataset"))
        labels.append(_as_array(item[1], f"label {i} of the Dataset"))
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise OptionError(f"the Dataset's images have different shapes {sorted(shapes)[:3]}; give one (C, H, W)")
    return np.stack(images), np.stack(labels)


def check_images(images: np.ndarray, what: str = "images", shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``images`` as float32 (N, C, H, W) with every pixel finite.

    Args:
        images: raw pixel values (any real dtype).
        what: the argument's name in messages [default: "images"].
        shape: the shape ``images`` must have (the first domain's) [default: any (N, C, H, W)].

    Raises:
        OptionError: another number of dimensions, another shape than ``shape``, a non-real dtype,
            NaN or infinite pixels.
    """
    if images.ndim != 4:
        raise OptionError(f"{what} must have shape (N, C, H, W) (bands first), got {images.shape}"
                          + ("; add a band axis: images[:, None]" if images.ndim == 3 else ""))
    if shape is not None and images.shape != shape:
        raise OptionError(f"{what} must have the same shape as images, {shape}, got {images.shape}")
    if images.dtype.kind not in "fiub":
        raise OptionError(f"{what} must hold real numbers, got dtype {images.dtype}")
    if min(images.shape) == 0:
        raise OptionError(f"{what} is empty: shape {images.shape}")
    out = np.ascontiguousarray(images, dtype=np.float32)
    bad = ~np.isfinite(out).reshape(len(out), -1).all(axis=1)
    if bad.any():
        raise OptionError(f"{what}[{int(np.flatnonzero(bad)[0])}] has NaN or infinite pixels")
    return out


def check_labels(labels: np.ndarray, n: int) -> np.ndarray:
    """``labels`` as class indices (N,) int64 or one-hot (N, K) rows, for ``n`` images.

    Raises:
        OptionError: another length than the images', another shape, negative or non-integral
            class indices, one-hot rows that are not one-hot.
    """
    if labels.ndim not in (1, 2):
        raise OptionError(f"labels must be class indices (N,) or one-hot (N, K), got shape {labels.shape}")
    if len(labels) != n:
        raise OptionError(f"labels has {len(labels)} entries but images has {n}; give one label per image")
    if labels.dtype.kind not in "fiub":
        raise OptionError(f"labels must be integers (class indices) or one-hot rows, got dtype {labels.dtype}")
    values = labels.astype(np.float64)
    if labels.ndim == 2:
        ok = np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1.0)
        if not ok.all():
            raise OptionError(f"labels[{int(np.flatnonzero(~ok)[0])}] is not a one-hot row")
        return values.astype(np.float32)
    bad = ~np.isfinite(values) | (values < 0) | (values != np.round(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise OptionError(f"labels[{i}] = {labels[i]} is not a class index (0, 1, ...)")
    return values.astype(np.int64)


def arrays_source(images: np.ndarray, labels: np.ndarray, domain_images: np.ndarray | None = None,
                  splits: np.ndarray | None = None, bands: Sequence[str] | None = None) -> Source:
    """A :class:`~deepadversaries.data.importing.Source` over checked arrays (rows = images, from 0).

    Args:
        images: float32 (N, C, H, W), the labelled domain ("Y10" slot).
        labels: (N,) class indices or (N, K) one-hot.
        domain_images: float32 (N, C, H, W), the same scenes in the shifted domain ("Y1" slot) [default: none].
        splits: (N,) ``train``/``valid``/``test`` per image [default: the importer's stratified split].
        bands: band names [default: g, r, i for 3 bands, else band0, band1, ...].
    """
    stacks = [images] if domain_images is None else [images, domain_images]
    n, shape = len(images), tuple(int(v) for v in images.shape[1:])
    names = list(bands) if bands is not None else (["g", "r", "i"] if shape[0] == 3 else
                                                    [f"band{b}" for b in range(shape[0])])
    where = Path("<arrays>")

    def read(domain: int, start: int, stop: int) -> np.ndarray:
        return stacks[domain][start:stop]

    def locate(domain: int, row: int) -> tuple[Path, str]:
        return where, f"{'images' if domain == 0 else 'domain_images'}[{row}]"

    return Source(format="arrays", path=where, root=Path.cwd(), n=n, labels=labels, label_what="labels",
                  ids=None, augmentations=None, splits=splits, split_what="splits", n_domains=len(stacks),
                  image_shape=shape, bands=names, read=read, locate=locate, row_column="source_index",
                  row_offset=0, options={"input": "arrays (deepadversaries.train)"},
                  layout={"arrays": [list(images.shape), "float32"]})


def train(images: Any, labels: Any = None, *, domain_images: Any = None, model: str = "convnet",
          method: str = "regular", preset: str = "tiny", epochs: int | None = None, seed: int = 0,
          classes: Sequence[str] | None = None, bands: Sequence[str] | None = None, splits: Any = None,
          stretch: str = "paper", out: str | Path | None = None, device: str = "auto", progress: bool = False,
          overwrite: bool = False, **settings: Any) -> Run:
    """Train a classifier on images in memory and return its :class:`~deepadversaries.models.run_handle.Run`.

    What it writes, in ``out`` (a new temporary folder ``deepadv-train-*`` under the system's temporary
    directory when ``out`` is None; it is not removed, as the run refers to its dataset):

    - ``out/data/``: a dataset folder, written by the package's dataset writer (as ``deepadv import``):
      ``images_Y10_{split}.npy`` (the ``images``, float32, unchanged), ``images_Y1_{split}.npy`` (the
      ``domain_images``, when given), ``labels_{split}.npy`` (one-hot float32 (n, K)),
      ``catalog_{split}.csv`` (its ``source_index`` column is each image's index in ``images``) and
      ``dataset.json`` (classes, bands, the fitted normalisation). Splits: ``splits`` when given,
      else 70:10:20 per class by ``seed`` (each class needs at least 3 images); within a split the
      images keep their order.
    - ``out/run/``: the run folder of :func:`~deepadversaries.training.train.train_model`
      (``config.json``, ``checkpoints/best.pt``, ``log.csv``, ``training.json``, ...).

    Args:
        images: raw pixel values (N, C, H, W) as a numpy array or torch tensor (the labelled, "Y10",
            domain; converted to float32); or a map-style torch ``Dataset`` of ``(image (C, H, W),
            label)`` pairs, then ``labels`` is left out.
        labels: (N,) class indices 0 .. K-1, or (N, K) one-hot rows.
        domain_images: the same N scenes seen in a shifted domain (the "Y1" slot; needed by the domain
            adaptation methods, which use them unlabelled) (N, C, H, W) [default: none].
        model: ``convnet``, ``resnet18``, ``d4-convnet`` or ``timm:NAME`` [default: "convnet"].
        method: ``regular``, ``mmd``, ``dann``, ``coral``, ``adabn`` or ``adv-1p`` [default: "regular"].
        preset: the training preset whose settings are used [default: "tiny": 3 epochs, batches of 32].
        epochs: maximum epochs [default: the preset's].
        seed: seeds the split, the normalisation's subsample, the weights and the batch order [default: 0].
        classes: class names in label order [default: the package's three (spiral, elliptical, merger) for
            3 classes, else "0", "1", ...].
        bands: band names [default: g, r, i for 3 bands, else band0, band1, ...].
        splits: (N,) ``train``/``valid``/``test`` per image [default: stratified 70:10:20].
        stretch: the normalisation fitted on the training split: ``paper``, ``asinh:Q``, ``zscore`` or
            ``none`` (images already model input) [default: "paper"].
        out: the folder to write ``data/`` and ``run/`` into (new or empty) [default: a temporary one].
        device: ``auto``, ``cpu`` or ``cuda`` [default: "auto"].
        progress: show progress bars [default: False].
        overwrite: replace a dataset and run already in ``out`` [default: False].
        **settings: other :class:`~deepadversaries.config.TrainConfig` overrides (``lr``, ``batch_size``, ...).

    Returns:
        The handle on ``out/run``.

    Raises:
        OptionError: bad shapes, labels or settings (one line naming the argument).
        FileError: ``out`` holds something else.
    """
    if isinstance(images, Dataset):
        if labels is not None:
            raise OptionError("give labels inside the Dataset's (image, label) items, not as labels=")
        images, labels = dataset_arrays(images)
    elif labels is None:
        raise OptionError("labels are missing: da.train(images, labels) or da.train(dataset)")
    x = check_images(_as_array(images, "images"))
    y = check_labels(_as_array(labels, "labels"), len(x))
    x_shifted = (check_images(_as_array(domain_images, "domain_images"), "domain_images", x.shape)
                 if domain_images is not None else None)
    split = _as_array(splits, "splits") if splits is not None else None
    if split is not None and split.shape != (len(x),):
        raise OptionError(f"splits must name one split per image, shape ({len(x)},), got {split.shape}")
    if classes is None:
        k = y.shape[1] if y.ndim == 2 else int(y.max()) + 1
        classes = CLASSES if k == len(CLASSES) else tuple(str(c) for c in range(k))
    elif y.ndim == 1 and int(y.max()) >= len(classes):
        raise OptionError(f"labels hold class index {int(y.max())} but classes names {len(classes)} classes")
    config = TrainConfig.from_preset(preset, model=model, method=method, seed=seed,
                                     **({"epochs": epochs} if epochs is not None else {}), **settings)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="deepadv-train-"))
    data = folder / DATA_NAME
    run_import(data, arrays_source(x, y, x_shifted, split, bands),
               ImportOptions(stretch=stretch, seed=seed, classes=list(classes), overwrite=overwrite, progress=progress))
    run = train_model(data, folder / RUN_NAME, config, device=device, overwrite=overwrite, progress=progress)
    return Run(run)
