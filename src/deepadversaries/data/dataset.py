"""Dataset folders: the published ``.npy`` layout plus our catalogue and metadata.

A dataset folder (SPEC 3.6) holds, for each split in train/valid/test,
``images_Y10_{split}.npy`` and ``images_Y1_{split}.npy`` (raw pixels, float32,
(N, B, H, W)) and ``labels_{split}.npy`` (one-hot, (N, K)); ours adds
``catalog_{split}.csv`` and ``dataset.json``. A folder with only the published files
loads too: 3 bands (g, r, i) and 3 classes (spiral, elliptical, merger) are then assumed,
and the paper's stretch constants are computed from its training split.

A folder written by ``deepadv import`` describes itself in ``dataset.json``: its
``classes`` (label order), ``bands``, ``image_shape`` (B, H, W), ``domain_names`` (the
user's names of the Y10 and Y1 slots) and ``normalisation`` (kind ``paper``, ``asinh``,
``zscore`` or ``none`` with per-domain params; :mod:`deepadversaries.data.stretches`). Every
stage takes these from the dataset (:attr:`GalaxyDataset.classes`, :attr:`~GalaxyDataset.bands`,
:attr:`~GalaxyDataset.image_shape`) and turns raw pixels into model input with one method,
:meth:`GalaxyDataset.model_input`.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from deepadversaries import BANDS, CLASSES, DOMAINS, SPLITS
from deepadversaries.data import stretches
from deepadversaries.errors import OptionError, check_choice, file_error
from deepadversaries.io import read_json

#: the paper stretch, defined once in :mod:`deepadversaries.data.stretches` (re-exported here by the
#: names the stages use)
STRETCH_SCALE = stretches.PAPER_SCALE
STRETCH_PERCENTILES = stretches.PAPER_PERCENTILES
#: images used to estimate stretch constants (the simulator's and a folder without ``dataset.json``)
STRETCH_SAMPLE = stretches.FIT_SAMPLE
stretch_constants = stretches.paper_constants
apply_stretch = stretches.apply_paper
invert_stretch = stretches.invert_paper


def image_file(domain: str, split: str) -> str:
    """File name of one domain's images in one split."""
    return f"images_{domain}_{split}.npy"


def label_file(split: str) -> str:
    """File name of one split's one-hot labels."""
    return f"labels_{split}.npy"


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise file_error(path, "file not found")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except MemoryError:
        raise
    except Exception as exc:  # a damaged header fails in many ways (ValueError, SyntaxError, TokenError, ...)
        raise file_error(path, f"not a readable .npy array ({type(exc).__name__}: {exc})") from exc


@dataclass
class GalaxyDataset:
    """A loaded dataset folder. Arrays are memory-mapped and validated on first use."""

    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)
    _arrays: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _checked: set[str] = field(default_factory=set, repr=False)
    _stretch: dict[str, tuple[float, float]] = field(default_factory=dict, repr=False)
    _norm: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict, repr=False)

    # -- discovery ---------------------------------------------------------------
    @property
    def domains(self) -> tuple[str, ...]:
        """Domains present in every split (Y10 always, Y1 when its files exist)."""
        return tuple(d for d in DOMAINS if all((self.path / image_file(d, s)).is_file() for s in SPLITS))

    def has_domain(self, domain: str) -> bool:
        return domain in self.domains

    @property
    def domain_names(self) -> dict[str, str]:
        """The user's name of each domain slot present, e.g. ``{"Y10": "deep", "Y1": "wide"}``
        (``dataset.json``'s ``domain_names``; the slot names themselves for our own data)."""
        names = self.metadata.get("domain_names") or {}
        if not isinstance(names, dict):
            raise file_error(self.path / "dataset.json", "'domain_names' must be an object {slot: name}")
        return {d: str(names.get(d, d)) for d in self.domains}

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in label order: ``dataset.json``'s ``classes``, else the simulator's
        :data:`deepadversaries.CLASSES` (spiral, elliptical, merger)."""
        names = self.metadata.get("classes")
        if names is None:
            return CLASSES
        if (not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names)
                or len(set(names)) != len(names)):
            raise file_error(self.path / "dataset.json", f"'classes' must be a list of at least 2 distinct names, "
                                                         f"got {names!r}")
        return tuple(names)

    @property
    def n_classes(self) -> int:
        """Number of classes, K."""
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(bands, height, width) of one image."""
        return tuple(self._raw("Y10", "train").shape[1:])  # type: ignore[return-value]

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names in channel order: ``dataset.json``'s ``bands``, else g, r, i for 3 bands
        (``band0``, ``band1``, … for another count)."""
        n = self.image_shape[0]
        names = self.metadata.get("bands")
        if names is None:
            return BANDS if n == len(BANDS) else tuple(f"band{b}" for b in range(n))
        if not isinstance(names, list) or len(names) != n or not all(isinstance(b, str) and b for b in names):
            raise file_error(self.path / "dataset.json", f"'bands' must list {n} names (the images have {n} "
                                                         f"bands), got {names!r}")
        return tuple(names)

    def _expected_shape(self) -> tuple[int, ...] | None:
        """(B, H, W) from ``dataset.json``'s ``image_shape`` (None without one)."""
        shape = self.metadata.get("image_shape")
        if shape is None:
            return None
        if (not isinstance(shape, list) or len(shape) != 3
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)):
            raise file_error(self.path / "dataset.json", f"'image_shape' must be [bands, height, width] of positive "
                                                         f"integers, got {shape!r}")
        return tuple(shape)

    def __len__(self) -> int:
        return sum(len(self.labels(s)) for s in SPLITS)

    # -- arrays -------------------------------------------------------------------
    def _get(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = _load_array(self.path / name)
        return self._arrays[name]

    def _raw(self, domain: str, split: str) -> np.ndarray:
        check_choice(domain, DOMAINS, "domain")
        check_choice(split, SPLITS, "split")
        name = image_file(domain, split)
        arr = self._get(name)
        if name not in self._checked:
            _validate_images(self.path / name, arr, self._expected_shape())
            n = len(self.labels(split))
            if len(arr) != n:
                raise file_error(self.path / name, f"{len(arr)} images but {label_file(split)} has {n} labels")
            if domain != "Y10" and (self.path / image_file("Y10", split)).is_file():
                ref = self._get(image_file("Y10", split))
                if ref.shape != arr.shape:
                    raise file_error(self.path / name, f"shape {arr.shape} differs from Y10's {ref.shape}")
            first = image_file("Y10", "train")
            if name != first and (self.path / first).is_file():
                ref = self._get(first)
                if ref.ndim == arr.ndim and ref.shape[1:] != arr.shape[1:]:
                    raise file_error(self.path / name, f"images of shape {arr.shape[1:]} differ from "
                                                       f"{first}'s {ref.shape[1:]}")
            self._checked.add(name)
        return arr

    def images(self, domain: str, split: str, stretched: bool = True) -> np.ndarray:
        """Images of one domain and split: model input (:meth:`model_input`), or the raw pixels
        as stored (memory-mapped) with ``stretched=False``."""
        raw = self._raw(domain, split)
        if not stretched:
            return raw
        return self.model_input(raw, domain)

    def model_input(self, raw: np.ndarray, domain: str) -> np.ndarray:
        """Raw pixels of ``domain`` -> model input, by the dataset's normalisation: the one place
        every stage (training, evaluation, attacks, analysis, robustness) normalises images.

        Args:
            raw: (..., B, H, W) raw pixels of ``domain`` (a memory map is read whole).
            domain: ``Y10`` or ``Y1``: whose fitted constants to use.

        Returns:
            float32 model input of the same shape (a new array). The paper stretch gives the
            numbers of :func:`apply_stretch` with :meth:`stretch`'s constants, bit for bit.
        """
        kind, params = self.normalisation(domain)
        if kind == "paper":
            lo, hi = self.stretch(domain)
            return apply_stretch(raw, lo, hi)
        return stretches.apply(kind, params, raw)

    def one_hot(self, split: str) -> np.ndarray:
        """The one-hot label array of one split, validated."""
        check_choice(split, SPLITS, "split")
        name = label_file(split)
        arr = self._get(name)
        if name not in self._checked:
            _validate_labels(self.path / name, arr, self.n_classes)
            self._checked.add(name)
        return arr

    def labels(self, split: str) -> np.ndarray:
        """Class indices (into :attr:`classes`) of one split, (N,) int64."""
        return np.argmax(np.asarray(self.one_hot(split)), axis=1).astype(np.int64)

    # -- normalisation --------------------------------------------------------------
    @property
    def normalisation_kind(self) -> str:
        """``paper`` (the default), ``asinh``, ``zscore`` or ``none`` (stored already normalised)."""
        norm = self.metadata.get("normalisation")
        if norm is None:
            return "paper"
        if not isinstance(norm, dict) or norm.get("kind") not in stretches.KINDS:
            raise file_error(self.path / "dataset.json", f"'normalisation' must be an object with a kind in "
                                                         f"{', '.join(stretches.KINDS)}, got {norm!r}")
        return str(norm["kind"])

    @property
    def raw_is_model_input(self) -> bool:
        """Whether the stored pixels already are model input (``--stretch none``: no raw electrons)."""
        return self.normalisation_kind == "none"

    def normalisation(self, domain: str) -> tuple[str, dict[str, Any]]:
        """The normalisation of ``domain``: its kind and params (:mod:`deepadversaries.data.stretches`).

        Returns:
            ``(kind, params)``; the paper stretch (also of a folder without ``dataset.json``)
            gives ``("paper", {"low": lo, "high": hi})`` from :meth:`stretch`.
        """
        if domain not in self._norm:
            kind = self.normalisation_kind
            if kind == "paper":
                lo, hi = self.stretch(domain)
                params: dict[str, Any] = {"low": lo, "high": hi}
            else:
                table = self.metadata["normalisation"].get("params")
                params = table.get(domain) if isinstance(table, dict) else None
                if not isinstance(params, dict):
                    raise file_error(self.path / "dataset.json", f"'normalisation' has no params for {domain}; "
                                                                 "import the dataset again")
            self._norm[domain] = (kind, params)
        return self._norm[domain]

    def describe_normalisation(self, domain: str) -> str:
        """One line, e.g. ``"paper (low -12.3, high 845)"`` (:func:`stretches.describe`)."""
        return stretches.describe(*self.normalisation(domain))

    def input_transform(self, domain: str) -> tuple[Callable[[np.ndarray], np.ndarray],
                                                    Callable[[np.ndarray], np.ndarray]]:
        """The normalisation of ``domain`` as a pair of functions on (..., B, H, W) arrays: raw
        pixels -> model input, and model input -> raw pixels (inverse inside the paper stretch's
        clip range). For the ``physical`` attack value range, which reads the raw pixels as electrons.

        Raises:
            OptionError: a dataset stored already normalised (``none``): it has no raw pixels.
        """
        kind, params = self.normalisation(domain)
        if kind == "none":
            raise OptionError(f"{self.path}: the images are stored already normalised (--stretch none), so their "
                              "raw electrons are unknown; this needs raw electrons and a paper, asinh or zscore "
                              "normalisation (deepadv import --stretch paper)")
        if kind == "paper":
            lo, hi = self.stretch(domain)
            return functools.partial(apply_stretch, lo=lo, hi=hi), functools.partial(invert_stretch, hi=hi)
        return functools.partial(stretches.apply, kind, params), functools.partial(stretches.invert, kind, params)

    def stretch(self, domain: str) -> tuple[float, float]:
        """The paper stretch's constants (p0.1, p99.9) of a domain, from metadata or its training split.

        Raises:
            FileError: the dataset uses another normalisation (see :meth:`normalisation`).
        """
        if domain not in self._stretch:
            table = self.metadata.get("stretch", {})
            if isinstance(table, str) or self.normalisation_kind != "paper":
                raise file_error(self.path / "dataset.json", f"the normalisation is {self.normalisation_kind}, "
                                                             "not the paper stretch: there are no (low, high) "
                                                             "stretch constants (use normalisation())")
            if not isinstance(table, dict):
                raise file_error(self.path / "dataset.json", "'stretch' must be an object {domain: [low, high]}")
            stored = table.get(domain)
            if stored is not None:
                source = self.path / "dataset.json"
                try:
                    lo, hi = (float(v) for v in stored)
                except (TypeError, ValueError) as exc:
                    raise file_error(source, f"stretch of {domain} must be a pair [low, high] of numbers, "
                                             f"got {stored!r}") from exc
            else:
                source = self.path / image_file(domain, "train")
                raw = self._raw(domain, "train")
                if len(raw) > STRETCH_SAMPLE:
                    idx = np.sort(np.random.default_rng(0).choice(len(raw), STRETCH_SAMPLE, replace=False))
                    raw = raw[idx]
                lo, hi = stretch_constants(raw)
            if not (np.isfinite(lo) and np.isfinite(hi) and hi > 0 and lo < hi):
                raise file_error(source, f"unusable stretch constants of {domain} (low {lo}, high {hi}): "
                                         "need finite numbers with 0 < high and low < high (blank images?)")
            self._stretch[domain] = (lo, hi)
        return self._stretch[domain]

    def catalog(self, split: str) -> list[dict[str, str]]:
        """Rows of ``catalog_{split}.csv`` (empty list for a folder without a catalogue)."""
        path = self.path / f"catalog_{split}.csv"
        if not path.is_file():
            return []
        try:
            with open(path, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise file_error(path, f"not a readable CSV catalogue ({exc})") from exc

    def galaxy_ids(self, split: str) -> np.ndarray:
        """Galaxy id of each image (the image index when there is no catalogue)."""
        rows = self.catalog(split)
        path = self.path / f"catalog_{split}.csv"
        if path.is_file() and not (rows and "galaxy_id" not in rows[0]):
            if len(rows) != len(self.labels(split)):
                raise file_error(path, f"{len(rows)} rows but {label_file(split)} has {len(self.labels(split))} labels")
            try:
                return np.array([int(r["galaxy_id"]) for r in rows], dtype=np.int64)
            except (TypeError, ValueError) as exc:
                raise file_error(path, f"galaxy_id must be integers ({exc})") from exc
        return np.arange(len(self.labels(split)), dtype=np.int64)

    def torch_dataset(self, domain: str, split: str) -> "TensorImageDataset":
        """A torch ``Dataset`` of (model-input image tensor, class index)."""
        return TensorImageDataset(self.images(domain, split), self.labels(split))

    def describe(self) -> dict[str, Any]:
        """What a report says about the data: path, classes, bands, image shape, domains
        (with the user's names) and each domain's normalisation."""
        return {"data": str(self.path.resolve()), "classes": list(self.classes), "bands": list(self.bands),
                "image_shape": list(self.image_shape), "domains": list(self.domains),
                "domain_names": self.domain_names,
                "normalisation": {d: self.describe_normalisation(d) for d in self.domains}}

    def validate(self) -> None:
        """Check every file of the folder now (instead of on first use)."""
        for split in SPLITS:
            self.one_hot(split)
            for domain in self.domains:
                self._raw(domain, split)


class TensorImageDataset(Dataset):
    """Stretched images and class indices held as tensors."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        self.y = torch.from_numpy(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def _validate_images(path: Path, arr: np.ndarray, expected: tuple[int, ...] | None = None) -> None:
    """Images (N, B, H, W) of float dtype, every pixel finite; (B, H, W) = ``expected`` when given
    (``dataset.json``'s ``image_shape``), else 3 bands."""
    if expected is not None:
        if arr.ndim != 4 or tuple(arr.shape[1:]) != tuple(expected):
            b, h, w = expected
            raise file_error(path, f"expected images of shape (N, {b}, {h}, {w}) as dataset.json's image_shape "
                                   f"says, got {arr.shape}; import the data again")
    elif arr.ndim != 4 or arr.shape[1] != 3:
        raise file_error(path, f"expected images of shape (N, 3, H, W), got {arr.shape} (a folder without "
                               "dataset.json holds 3-band images; import other shapes with 'deepadv import')")
    if arr.dtype.kind != "f":
        raise file_error(path, f"expected float images, got dtype {arr.dtype}")
    # scan in chunks so that a large memory-mapped file is not read into memory at once
    step = max(1, 2**27 // max(1, int(np.prod(arr.shape[1:]))))
    for start in range(0, len(arr), step):
        chunk = np.asarray(arr[start : start + step])
        finite = np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1)
        if not finite.all():
            raise file_error(path, f"image {start + int(np.flatnonzero(~finite)[0])} has NaN or infinite pixels")


def _validate_labels(path: Path, arr: np.ndarray, n_classes: int = len(CLASSES)) -> None:
    """One-hot float labels (N, K), N >= 1, K = ``n_classes``."""
    if arr.ndim != 2 or arr.shape[1] != n_classes:
        raise file_error(path, f"expected one-hot labels of shape (N, {n_classes}) (one column per class), "
                               f"got {arr.shape}")
    if len(arr) == 0:
        raise file_error(path, "holds no labels (an empty split)")
    a = np.asarray(arr, dtype=np.float64)
    if not np.isfinite(a).all():
        raise file_error(path, "labels contain NaN or infinite values")
    ok = np.isin(a, (0.0, 1.0)).all(axis=1) & (a.sum(axis=1) == 1.0)
    if not ok.all():
        raise file_error(path, f"label {int(np.flatnonzero(~ok)[0])} is not one-hot")


def load_dataset(path: str | Path) -> GalaxyDataset:
    """Open a dataset folder (ours, or one holding only the published ``.npy`` files)."""
    path = Path(path)
    if not path.is_dir():
        raise file_error(path, "dataset folder not found")
    meta_path = path / "dataset.json"
    metadata = read_json(meta_path) if meta_path.is_file() else {}
    if not isinstance(metadata, dict):
        raise file_error(meta_path, "expected a JSON object")
    for split in SPLITS:
        for name in (label_file(split), image_file("Y10", split)):
            if not (path / name).is_file():
                raise file_error(path / name, "file not found (is this a dataset folder?)")
    return GalaxyDataset(path=path, metadata=metadata)
