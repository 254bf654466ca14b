"""A folder in the dataset layout: the ``npy`` importer (``deepadv import --input FOLDER``).

``images_Y10_{split}.npy`` (+ optional ``images_Y1_{split}.npy``), ``labels_{split}.npy`` one-hot,
optional ``catalog_{split}.csv`` and ``dataset.json`` (e.g. the published data, or arrays of another
shape): copied with validation, the normalisation recomputed, the folder's own split kept; ids and
augmentations come from its catalogues, classes from its ``dataset.json``. Files are read by rows with
:class:`~deepadversaries.data.importers.base.NpyRows` (no memory map).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import SPLITS
from deepadversaries.data.dataset import image_file, label_file
from deepadversaries.data.importers.base import ImportOptions, NpyRows, Source, name_list
from deepadversaries.data.writer import catalog_file
from deepadversaries.errors import OptionError, file_error
from deepadversaries.io import read_json



def npy_source(folder: str | Path, *, bands: Sequence[str] | None = None) -> Source:
    """Open a folder in the dataset layout (see :func:`deepadversaries.data.importing.import_npy`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise file_error(folder, "folder not found; give --input a folder of images_Y10_{train,valid,test}.npy "
                                 "and labels_{train,valid,test}.npy")
    slots = _npy_slots(folder)
    arrays = {(d, s): _load_npy(folder, image_file(d, s)) for d in slots for s in SPLITS}
    labels = {s: _load_npy(folder, label_file(s)) for s in SPLITS}
    _check_npy_images(folder, arrays, labels)
    _check_npy_labels(folder, labels)
    first = arrays["Y10", "train"]
    sizes = [len(labels[s]) for s in SPLITS]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    all_labels = np.concatenate([labels[s][:] for s in SPLITS])
    split_values = np.repeat(np.array(SPLITS, dtype=object), sizes)
    meta = _folder_metadata(folder)
    catalogs = [folder / catalog_file(s) for s in SPLITS]
    ids, augs, extra = (_npy_catalog_columns(catalogs, labels) if all(c.is_file() for c in catalogs)
                        else (None, None, {}))
    band_names = list(bands) if bands is not None else (
        list(meta["bands"]) if isinstance(meta.get("bands"), list) and len(meta["bands"]) == first.shape[1]
        else [f"band{b}" for b in range(first.shape[1])])
    if len(band_names) != first.shape[1]:
        raise OptionError(f"--bands names {len(band_names)} bands but the images of {folder} have {first.shape[1]}")
    return Source(
        format="npy", path=folder, root=folder, n=int(offsets[-1]), labels=all_labels, label_what="labels_*.npy",
        ids=ids, augmentations=augs, splits=split_values, split_what="the folder's split files",
        n_domains=len(slots), image_shape=tuple(int(v) for v in first.shape[1:]), bands=band_names,
        read=_npy_reader(arrays, slots, offsets, first.shape[1:]), locate=_npy_locator(folder, slots, offsets),
        row_column="source_index", row_offset=0, extra=extra, files=_npy_files(folder, arrays, catalogs),
        options={"input": str(folder)}, layout={"npy": slots},
        default_classes=[str(c) for c in meta["classes"]] if isinstance(meta.get("classes"), list) else None,
    )


def _load_npy(folder: Path, name: str) -> NpyRows:
    """``folder/name`` opened for reading by rows; FileError when it is missing or unreadable."""
    path = folder / name
    if not path.is_file():
        raise file_error(path, "file not found (a dataset folder needs images_Y10_*, labels_* of every split)")
    try:
        return NpyRows(path)
    except Exception as exc:
        raise file_error(path, f"not a readable .npy array ({type(exc).__name__}: {exc})") from exc


def _npy_slots(folder: Path) -> list[str]:
    """The folder's domain slots: Y10, and Y1 when every split has its images."""
    present_y1 = [(folder / image_file("Y1", s)).is_file() for s in SPLITS]
    if any(present_y1) and not all(present_y1):
        missing = image_file("Y1", SPLITS[present_y1.index(False)])
        raise file_error(folder / missing, "file not found while other images_Y1_* exist; add it or remove them")
    return ["Y10", "Y1"] if all(present_y1) else ["Y10"]


def _check_npy_images(folder: Path, arrays: dict[tuple[str, str], NpyRows], labels: dict[str, NpyRows]) -> None:
    """Refuse (FileError) images that are not (N, bands, H, W) numbers of one shape, one per label."""
    first = arrays["Y10", "train"]
    for (d, s), a in arrays.items():
        if a.ndim != 4 or a.dtype.kind not in "biuf":
            raise file_error(folder / image_file(d, s), f"expected images (N, bands, H, W) of numbers, got "
                                                        f"{a.dtype} {a.shape}")
        if a.shape[1:] != first.shape[1:]:
            raise file_error(folder / image_file(d, s), f"images of shape {a.shape[1:]} differ from "
                                                        f"{image_file('Y10', 'train')}'s {first.shape[1:]}")
        if len(a) != len(labels[s]):
            raise file_error(folder / image_file(d, s), f"{len(a)} images but {label_file(s)} has {len(labels[s])}")


def _check_npy_labels(folder: Path, labels: dict[str, NpyRows]) -> None:
    """Refuse (FileError) labels that are not non-empty one-hot (N, K) with the training split's K."""
    for s, lab in labels.items():
        if lab.ndim != 2 or lab.shape[1] != labels["train"].shape[1] or len(lab) == 0:
            k = labels["train"].shape[1] if labels["train"].ndim == 2 else "?"
            raise file_error(folder / label_file(s), f"expected one-hot labels (N, K) like {label_file('train')}'s "
                                                     f"(N, {k}), got {lab.shape}")


def _folder_metadata(folder: Path) -> dict[str, Any]:
    """The folder's ``dataset.json`` when it has one (an object), else ``{}``."""
    meta_path = folder / "dataset.json"
    if meta_path.is_file():
        loaded = read_json(meta_path)
        return loaded if isinstance(loaded, dict) else {}
    return {}


def _npy_catalog_columns(catalogs: list[Path],
                         labels: dict[str, NpyRows]) -> tuple[np.ndarray | None, np.ndarray | None, dict[str, Any]]:
    """Galaxy ids, augmentations and the other columns of the folder's ``catalog_{split}.csv`` (split order)."""
    rows: list[dict[str, str]] = []
    for s, c in zip(SPLITS, catalogs):
        try:
            with open(c, newline="", encoding="utf-8") as fh:
                part = list(csv.DictReader(fh))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise file_error(c, f"not a readable CSV catalogue ({exc})") from exc
        if len(part) != len(labels[s]):
            raise file_error(c, f"{len(part)} rows but {label_file(s)} has {len(labels[s])} labels")
        rows += part
    fields = list(rows[0].keys()) if rows else []
    ids = augs = None
    if "galaxy_id" in fields:
        ids = np.array([r["galaxy_id"] for r in rows], dtype=object)
        ints = [v.strip().lstrip("-").isdigit() for v in ids]
        if all(ints):
            ids = np.array([int(v) for v in ids], dtype=np.int64)
    if "augmentation" in fields:
        augs = np.array([r["augmentation"] for r in rows], dtype=object)
    extra = {f: np.array([r[f] for r in rows], dtype=object) for f in fields
             if f not in ("galaxy_id", "augmentation", "label")}
    return ids, augs, extra


def _npy_reader(arrays: dict[tuple[str, str], NpyRows], slots: list[str], offsets: np.ndarray,
                image_shape: tuple[int, ...]) -> Callable[[int, int, int], np.ndarray]:
    """``read(domain, start, stop)`` across the split files (rows counted on in split order), as float32."""

    def read(domain: int, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *image_shape), dtype=np.float32)
        for k, s in enumerate(SPLITS):
            a, b = max(start, offsets[k]), min(stop, offsets[k + 1])
            if a < b:
                out[a - start:b - start] = arrays[slots[domain], s][a - offsets[k]:b - offsets[k]]
        return out

    return read


def _npy_locator(folder: Path, slots: list[str], offsets: np.ndarray) -> Callable[[int, int], tuple[Path, str]]:
    """``locate(domain, row)``: the split file and the image index in it."""

    def locate(domain: int, row: int) -> tuple[Path, str]:
        k = int(np.searchsorted(offsets, row, side="right") - 1)
        return folder / image_file(slots[domain], SPLITS[k]), f"image {row - offsets[k]}"

    return locate


def _npy_files(folder: Path, arrays: dict[tuple[str, str], NpyRows], catalogs: list[Path]) -> dict[str, Path]:
    """The input files to checksum: every image and label file and the catalogues present."""
    files = {}
    for (d, s) in arrays:
        files[image_file(d, s)] = folder / image_file(d, s)
    for s in SPLITS:
        files[label_file(s)] = folder / label_file(s)
    for c in catalogs:
        if c.is_file():
            files[c.name] = c
    return files


def build_source(inputs: Mapping[str, Any], options: ImportOptions) -> Source:
    """The ``npy`` format's builder (:class:`~deepadversaries.data.importers.base.ImporterSpec`): open the
    folder ``inputs["--input"]`` (required).

    Args:
        inputs: command-line option name -> value (None when not given).
        options: the checked shared options (``bands`` renames the bands).

    Returns:
        The opened :class:`~deepadversaries.data.importers.base.Source` (its ``default_classes`` from the
        folder's ``dataset.json``).
    """
    if inputs.get("--input") is None:
        raise OptionError("--format npy needs --input (a folder)")
    return npy_source(inputs["--input"],
                      bands=name_list(options.bands, "--bands") if options.bands is not None else None)
