"""Bring your own data: convert FITS cutouts, HDF5 or ``.npy`` into a dataset folder (``deepadv import``).

The package has one internal format, the dataset folder (SPEC 3.6, :mod:`deepadversaries.data.dataset`).
This module converts a user's data into it, checked once:

- **FITS** (:func:`import_fits`): a catalogue (FITS binary table or CSV) with a column of
  cutout paths (relative to the catalogue's folder), one file per galaxy: a cube (bands on
  the first numpy axis, or ``band_axis``) in the primary HDU or the first image HDU, or one
  2-D HDU per band (``bands`` names their EXTNAMEs, or ``hdus`` their numbers). A label
  column (class names or integers), optional id, split, augmentation and second-domain
  (``target_path_column``) columns. Scaled integers (BZERO/BSCALE, e.g. int16 from a cutout
  service) are read as BZERO + BSCALE x stored value, scaled in float64 and rounded once to
  float32; BLANK pixels become NaN and so are refused like any NaN pixel (:func:`_physical`).
- **HDF5** (:func:`import_hdf5`): one file with named datasets: images (N, B, H, W), or
  (N, H, W, B) (``band_axis=-1``; found by itself when the last axis has at most 4 entries
  and the image side more, as in Galaxy10 DECaLS's ``images`` uint8 (N, 256, 256, 3)), or
  (N, H, W) for one band; labels (N,) as integers or (byte) strings, or one-hot (N, K)
  (``labels``, or Galaxy10's ``ans`` when the file has no ``labels``); optional split (N,)
  strings, ids (N,) and a second domain's images of the same shape, in the same order; the
  file's other per-image (N,) datasets (e.g. ``ra``, ``dec``, ``redshift``) become catalogue
  columns. Or one group per domain and split: ``/{domain}/{split}/images`` and
  ``/{source}/{split}/labels`` (``groups``).
- **npy** (:func:`import_npy`): a folder in the dataset layout (e.g. the published data, or
  arrays of another shape): copied with validation, the normalisation recomputed, the
  folder's own split kept.

Any byte order and numeric dtype is read (FITS is big-endian; HDF5 and ``.npy`` may be
either); the dataset folder holds native float32.

Whatever the source, the result is: the labelled training domain in the "Y10" slot
(``images_Y10_{split}.npy``), the optional second (shifted) domain in the "Y1" slot, raw
float32 pixels exactly as read (with ``--stretch none`` they already are model input),
``labels_{split}.npy`` one-hot float32 (N, K) in the order of ``classes``,
``catalog_{split}.csv`` (galaxy_id, augmentation, label, source row, the catalogue's other
columns) and ``dataset.json`` (layout in :func:`dataset_metadata`).

Splits. A split column (values train/valid/test; ``val``/``validation``, ``training``,
``testing`` are accepted too) is honoured. Without one, the galaxies are split 70:10:20 per
class with a seeded permutation (``numpy.random.default_rng([seed, 2])``, classes in label
order): every image of one galaxy id (copies marked by an augmentation column) lands in
one split, each class is split in the same proportions (valid = max(1, round(0.1 n)),
test = max(1, round(0.2 n)), the rest train; so each class needs 3 galaxies), and the same
seed gives the same split. The permutation runs over each class's galaxy ids in sorted
order, so a galaxy's split depends on the ids, their classes and the seed only, not on
the order of the rows. Within a split, images keep their source order.

Rows. Messages name catalogue rows from 1 (data rows, the header not counted: CSV line =
row + 1), HDF5 and npy images by their 0-based index, as the catalogues written here
(``source_row`` / ``source_index``) do.

Checked once, before anything is kept: missing columns or datasets, empty or duplicate
galaxy ids (unless an augmentation column marks the copies), labels outside ``classes``,
fewer than 2 classes, split values, a split missing a class, missing cutouts (all checked
before the first image is read), unreadable cutouts, cutouts of another shape than the
first, NaN or infinite pixels. Each is a one-line :class:`~deepadversaries.errors.FileError`
(or :class:`~deepadversaries.errors.OptionError`) naming the file and row and the fix.

Files and atomicity. Everything is written into ``OUT/.import/`` (each array created with
``numpy.lib.format.open_memmap``, its blocks reserved up front so that a full disk fails
early, then filled chunk by chunk with positional writes, not through a memory map, so
that the written pages do not pile up in the process's resident set); at the end the
old dataset files of ``OUT`` (with ``overwrite``) are removed, the new ones renamed into
place and ``dataset.json`` written last; then ``.import`` is removed.
An import that fails or is interrupted leaves no ``dataset.json``: the next run starts
clean (it removes ``.import`` and, if the interruption came during the final renames, the
dataset files without a ``dataset.json``). An import is not resumed: it is one streaming
pass. A folder created by a failed import is removed again.

Memory bound. Images are read ``chunk`` at a time (FITS files memory-mapped, one per
galaxy; HDF5 datasets sliced; ``.npy`` files read by rows with :class:`NpyRows`) and
written at their place in the ``.npy`` files; input files
are checksummed (SHA-256) in 1 MiB blocks; the normalisation is fitted as
:mod:`deepadversaries.data.stretches` says (at most 256 MiB). Peak memory is about a few
``chunk`` images plus the per-row catalogue (labels, ids, splits, extra columns), whatever
the number of images.

Determinism: the same input and options give the same arrays, split and constants
(``created`` and the absolute ``root`` aside).
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import h5py
import numpy as np
from astropy.io import fits
from astropy.table import Table
from rich.progress import Progress

from deepadversaries import CLASSES, SPLITS, __version__
from deepadversaries.data import stretches
from deepadversaries.errors import DeepAdvError, FileError, OptionError, check_choice, file_error
from deepadversaries.formatting import utc_now
from deepadversaries.io import LOCK_NAME, OutputLock, read_json, sha256_of, write_json, write_npy
from deepadversaries.progress import make_progress

IMPORT_VERSION = 1
FORMATS: tuple[str, ...] = ("fits", "hdf5", "npy")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
DEFAULT_CHUNK = 256
DEFAULT_DOMAIN_NAMES: tuple[str, str] = ("source", "target")
WORK_DIR = ".import"
SLOTS: tuple[str, str] = ("Y10", "Y1")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                                 "validation": "valid", "test": "test", "testing": "test"}
FITS_SUFFIXES: tuple[str, ...] = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
#: catalogue columns written first in every ``catalog_{split}.csv``
CATALOG_FIELDS: tuple[str, ...] = ("galaxy_id", "augmentation", "label")


def image_file(slot: str, split: str) -> str:
    """File name of one domain slot's images in one split (as :func:`deepadversaries.data.dataset.image_file`)."""
    return f"images_{slot}_{split}.npy"


def label_file(split: str) -> str:
    """File name of one split's one-hot labels (as :func:`deepadversaries.data.dataset.label_file`)."""
    return f"labels_{split}.npy"


def dataset_files() -> list[str]:
    """Every file name a dataset folder may hold (``dataset.json`` first)."""
    names = ["dataset.json"]
    for split in SPLITS:
        names += [image_file(s, split) for s in SLOTS] + [label_file(split), f"catalog_{split}.csv"]
    return names


# -- options ----------------------------------------------------------------------------


@dataclass
class ImportOptions:
    """The options every format shares.

    Attributes:
        stretch: the normalisation (``paper``, ``asinh:Q``, ``zscore``, ``none``) [default: paper].
        seed: seeds the stratified split and the normalisation's subsample [default: 0].
        chunk: images read and written at a time; bounds memory [default: 256].
        fit_sample: most images used to fit the percentile normalisations [default: 2000].
        classes: class names in label order; integer labels index them [default: from the labels].
        bands: band names (FITS: EXTNAMEs of one-HDU-per-band cutouts) [default: from the data].
        domain_names: the user's names of the source (labelled training) domain and of the
            second (shifted) domain [default: ("source", "target")].
        overwrite: replace the dataset in a non-empty ``out`` [default: False].
        progress: show progress bars (on a terminal) [default: True].
    """

    stretch: str | stretches.Stretch = "paper"
    seed: int = 0
    chunk: int = DEFAULT_CHUNK
    fit_sample: int = stretches.FIT_SAMPLE
    classes: Sequence[str] | None = None
    bands: Sequence[str] | None = None
    domain_names: Sequence[str] | None = None
    overwrite: bool = False
    progress: bool = True

    def checked(self) -> ImportOptions:
        """Validate the options (OptionError naming the option); return a normalised copy."""
        stretch = stretches.parse(self.stretch)
        if int(self.seed) < 0:
            raise OptionError(f"--seed must be a non-negative integer, got {self.seed}")
        if int(self.chunk) < 1:
            raise OptionError(f"--chunk must be at least 1 image, got {self.chunk}")
        if int(self.fit_sample) < 1:
            raise OptionError(f"--fit-sample must be at least 1 image, got {self.fit_sample}")
        classes = _name_list(self.classes, "--classes") if self.classes is not None else None
        if classes is not None and len(classes) < 2:
            raise OptionError(f"--classes names {len(classes)} class; a classifier needs at least 2 "
                              "(e.g. --classes spiral,elliptical)")
        bands = _name_list(self.bands, "--bands") if self.bands is not None else None
        names = _name_list(self.domain_names, "--domain-names") if self.domain_names is not None else None
        if names is not None and len(names) > 2:
            raise OptionError(f"--domain-names takes one or two names (source,target), got {len(names)}")
        return ImportOptions(stretch, int(self.seed), int(self.chunk), int(self.fit_sample), classes, bands,
                             names, bool(self.overwrite), bool(self.progress))

    def record(self) -> dict[str, Any]:
        """The options as ``dataset.json`` records them."""
        return {"stretch": str(self.stretch), "seed": self.seed, "chunk": self.chunk, "fit_sample": self.fit_sample,
                "classes": list(self.classes) if self.classes is not None else None,
                "bands": list(self.bands) if self.bands is not None else None,
                "domain_names": list(self.domain_names) if self.domain_names is not None else None,
                "overwrite": self.overwrite}


def split_names(text: str | Sequence[str] | None) -> list[str] | None:
    """``"a,b, c"`` -> ``["a", "b", "c"]`` (``None`` stays ``None``); a sequence is returned as a list."""
    if text is None:
        return None
    if isinstance(text, str):
        return [t.strip() for t in text.split(",")]
    return [str(t).strip() for t in text]


def _name_list(values: Sequence[str] | str, option: str) -> tuple[str, ...]:
    names = tuple(split_names(values) or ())
    if not names or any(not n for n in names):
        raise OptionError(f"{option} needs comma-separated non-empty names, got {values!r}")
    dup = [n for n in names if names.count(n) > 1]
    if dup:
        raise OptionError(f"{option} names {dup[0]!r} twice; names must be distinct")
    return names


# -- what a source provides -----------------------------------------------------------


@dataclass
class Source:
    """A user's data, opened and its per-row metadata read (images are read on demand).

    Attributes:
        format: ``fits``, ``hdf5`` or ``npy``.
        path: the file or folder the rows come from (named by row-level messages).
        root: the folder that recorded file names are relative to.
        n: number of rows (images of each domain).
        labels: raw label values (N,) or one-hot (N, K).
        label_what: how messages name the labels (e.g. "column 'label'").
        ids: raw galaxy ids (N,) or ``None`` (each row its own galaxy).
        augmentations: augmentation names (N,) or ``None``.
        splits: raw split values (N,) or ``None`` (stratified split).
        split_what: how messages name the split values.
        n_domains: 1 or 2.
        image_shape: (bands, height, width).
        bands: band names.
        read: ``read(domain, start, stop)`` -> float32 (stop - start, B, H, W) of rows
            [start, stop); raises a FileError naming the file and row for an unreadable or
            misshapen image.
        locate: ``locate(domain, row)`` -> (file, "row k of …") for messages about one image.
        row_column: ``source_row`` (catalogue rows from 1) or ``source_index`` (from 0).
        row_offset: added to the 0-based row in messages and ``row_column`` (1 or 0).
        extra: other catalogue columns to copy into ``catalog_{split}.csv``: name -> values (N,).
        files: input files to checksum before the image pass: recorded name -> path.
        hashes: recorded name -> sha256, filled as files are read.
        options: the format's own options as ``dataset.json`` records them.
        layout: details of how images were found (recorded).
        default_classes: class names the source itself records (npy's ``dataset.json``).
        default_domain_names: domain names the source itself gives (HDF5 groups).
        close: releases open files.
    """

    format: str
    path: Path
    root: Path
    n: int
    labels: Any
    label_what: str
    ids: Any | None
    augmentations: Any | None
    splits: Any | None
    split_what: str
    n_domains: int
    image_shape: tuple[int, int, int]
    bands: list[str]
    read: Callable[[int, int, int], np.ndarray]
    locate: Callable[[int, int], tuple[Path, str]]
    row_column: str = "source_row"
    row_offset: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, Any] = field(default_factory=dict)
    default_classes: list[str] | None = None
    default_domain_names: list[str] | None = None
    close: Callable[[], None] = lambda: None

    def row(self, i: int) -> str:
        """How messages name row ``i`` (0-based)."""
        return f"row {i + self.row_offset}" if self.row_offset else f"index {i}"


class NpyRows:
    """Rows of a ``.npy`` file read with ``os.pread``: array-like for chunked reading, no memory map.

    Pages read through a memory map stay in the process's resident set until unmapped, so
    a streaming pass over a memory-mapped file larger than memory shows a resident set as
    large as the file; reading rows into fresh buffers keeps it at one chunk.

    Args:
        path: a C-ordered ``.npy`` file (any dtype but object).

    Attributes:
        shape, ndim, dtype, offset (bytes before the data), row_bytes.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fmt = np.lib.format
        with open(self.path, "rb") as fh:
            version = fmt.read_magic(fh)
            reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = reader(fh)
            self.offset = fh.tell()
        if fortran or dtype.hasobject:
            raise ValueError(f"{self.path}: a Fortran-ordered or object array cannot be read in rows")
        self.shape: tuple[int, ...] = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = dtype
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * dtype.itemsize
        size = self.offset + self.row_bytes * (self.shape[0] if self.shape else 1)
        if self.path.stat().st_size < size:
            raise ValueError(f"{self.path}: the file is shorter than its header says (truncated?)")

    def __len__(self) -> int:
        return self.shape[0]

    def _read(self, fd: int, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        buf = bytearray(n * self.row_bytes)
        view = memoryview(buf)
        pos, at = 0, self.offset + start * self.row_bytes
        while pos < len(buf):
            got = os.preadv(fd, [view[pos:]], at + pos)
            if got <= 0:
                raise OSError(errno.EIO, f"{self.path}: unexpected end of file")
            pos += got
        return np.frombuffer(buf, dtype=self.dtype).reshape((n, *self.shape[1:]))

    def __getitem__(self, key: Any) -> np.ndarray:
        """``rows[a:b]`` (step 1) or ``rows[index_array]`` as a new array."""
        fd = os.open(self.path, os.O_RDONLY)
        try:
            if isinstance(key, slice):
                start, stop, step = key.indices(len(self))
                if step != 1:
                    raise IndexError("NpyRows reads contiguous slices (step 1) or index arrays")
                return self._read(fd, start, stop)
            idx = np.asarray(key, dtype=np.int64).reshape(-1)
            out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
            if len(idx) == 0:
                return out
            # read runs of consecutive indices at once
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            for run in np.split(np.arange(len(idx)), breaks):
                first = int(idx[run[0]])
                out[run[0]:run[-1] + 1] = self._read(fd, first, first + len(run))
            return out
        finally:
            os.close(fd)


def _pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    view = memoryview(data).cast("B")
    pos = 0
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], at + pos)


def _record_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (POSIX separators), else absolute."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def _text(value: Any) -> str:
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def _masked(column: Any) -> np.ndarray:
    """Boolean (N,) mask of missing values of a table column (or array)."""
    mask = getattr(column, "mask", None)
    n = len(column)
    if mask is None or mask is np.ma.nomask:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    return mask.reshape(n, -1).any(axis=1) if mask.ndim > 1 else mask


def _values(column: Any) -> np.ndarray:
    """A plain numpy array of a column's values (masked entries left as they are)."""
    data = getattr(column, "data", column)
    if isinstance(data, np.ma.MaskedArray):
        data = data.data
    return np.asarray(data)


# -- metadata: labels, ids, splits --------------------------------------------------


def _as_integers(values: np.ndarray) -> np.ndarray | None:
    """Integer view of numeric labels/ids (integral floats accepted), else None."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "f" and np.all(np.isfinite(values)) and np.all(values == np.round(values)):
        return values.astype(np.int64)
    return None


def resolve_labels(source: Source, classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names in label order and each row's class index.

    Integer labels index ``classes`` (0 .. K-1) or, without it, the sorted distinct integers
    are the classes (named by their value). Text labels must be one of ``classes`` or,
    without it, the sorted distinct names are the classes. One-hot (N, K) labels: class k
    of ``classes`` (or named "k").

    Returns:
        (classes, index array (N,) int64).

    Raises:
        FileError: a missing label, a label outside ``classes``, a non-integral number, fewer
            than 2 classes, a class of ``classes`` without any galaxy.
    """
    _check_labels_given(source)
    values = _values(source.labels)
    if values.ndim == 2:
        names, index = _one_hot_labels(source, values, classes)
    elif values.ndim == 1:
        names, index = _flat_labels(source, values, classes)
    else:
        raise file_error(source.path, f"labels ({source.label_what}) must be one value per image (N,) or one-hot "
                                      f"(N, K), got shape {values.shape}")
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    _check_label_classes(source, names, index)
    return names, index


def _check_labels_given(source: Source) -> None:
    """Refuse (FileError) a row whose label is missing (masked)."""
    missing = _masked(source.labels)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise file_error(source.path, f"{source.row(i)}: empty label ({source.label_what}); give every row a label "
                                      "or drop the row")


def _one_hot_labels(source: Source, values: np.ndarray,
                    classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and indices of one-hot (N, K) labels."""
    path, what = source.path, source.label_what
    a = values.astype(np.float64)
    ok = np.isin(a, (0.0, 1.0)).all(axis=1) & (a.sum(axis=1) == 1.0)
    if not ok.all():
        raise file_error(path, f"{source.row(int(np.flatnonzero(~ok)[0]))}: labels ({what}) of shape "
                               f"{values.shape} are not one-hot; store class indices (N,) or one-hot rows")
    k = values.shape[1]
    names = list(classes) if classes is not None else (list(CLASSES) if k == len(CLASSES) else
                                                        [str(c) for c in range(k)])
    if len(names) != k:
        raise OptionError(f"--classes names {len(names)} classes but the one-hot labels ({what}) of {path} "
                          f"have {k} columns")
    return names, a.argmax(axis=1).astype(np.int64)


def _flat_labels(source: Source, values: np.ndarray, classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and indices of one label per image (N,): integers or class names."""
    ints = _as_integers(values)
    if ints is not None:
        return _integer_labels(source, ints, classes)
    if values.dtype.kind in "fc":
        _reject_non_integral_label(source, values)
    return _text_labels(source, values, classes)


def _integer_labels(source: Source, ints: np.ndarray, classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and indices of integer labels: indices into ``classes``, else their sorted distinct values."""
    if classes is None:
        distinct, index = np.unique(ints, return_inverse=True)
        return [str(int(v)) for v in distinct], index
    bad = (ints < 0) | (ints >= len(classes))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise file_error(source.path, f"{source.row(i)}: label {ints[i]} ({source.label_what}) is outside "
                                      f"--classes, whose indices are 0..{len(classes) - 1} "
                                      f"({', '.join(classes)}); fix the label or add the class")
    return list(classes), ints


def _reject_non_integral_label(source: Source, values: np.ndarray) -> NoReturn:
    """Refuse (FileError) numeric labels that are not integers: name the first."""
    bad = ~np.isfinite(values) | (values != np.round(values)) if values.dtype.kind == "f" else \
        np.ones(len(values), bool)
    i = int(np.flatnonzero(bad)[0])
    raise file_error(source.path, f"{source.row(i)}: label {values[i].item()!r} ({source.label_what}) is neither a "
                                  "class name nor an integer class index")


def _text_labels(source: Source, values: np.ndarray, classes: Sequence[str] | None) -> tuple[list[str], np.ndarray]:
    """Class names and indices of text labels: names in ``classes``, else their sorted distinct values."""
    path, what = source.path, source.label_what
    text = np.array([_text(v) for v in values], dtype=object)
    empty = text == ""
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise file_error(path, f"{source.row(i)}: empty label ({what}); give every row a label or drop it")
    names = list(classes) if classes is not None else sorted(set(text.tolist()))
    lookup = {c: k for k, c in enumerate(names)}
    index = np.empty(len(text), dtype=np.int64)
    for i, t in enumerate(text):
        k = lookup.get(t)
        if k is None:
            raise file_error(path, f"{source.row(i)}: label {t!r} ({what}) is not one of --classes "
                                   f"({', '.join(names)}); add it to --classes or drop the row")
        index[i] = k
    return names, index


def _check_label_classes(source: Source, names: list[str], index: np.ndarray) -> None:
    """Refuse (FileError) fewer than 2 classes or a class without any galaxy."""
    path, what = source.path, source.label_what
    present = np.bincount(index, minlength=len(names))
    if len(names) < 2:
        raise file_error(path, f"the labels ({what}) hold only {len(names)} class ({', '.join(names)}); a classifier "
                               "needs at least 2")
    if (present == 0).any():
        c = names[int(np.flatnonzero(present == 0)[0])]
        raise file_error(path, f"class {c!r} has no galaxy in the labels ({what}); remove it from --classes "
                               "or add galaxies of it")


def resolve_ids(source: Source) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Integer galaxy ids, the user's ids when they are not integers, and augmentations.

    Returns:
        (galaxy_id (N,) int64, source ids (N,) object or None, augmentation (N,) object or None).

    Raises:
        FileError: an empty id, two rows with the same id (with an augmentation column: the
            same id and augmentation), copies of one galaxy with different labels is checked
            in :func:`assign_splits`.
    """
    path = source.path
    n = source.n
    aug = None
    if source.augmentations is not None:
        missing = _masked(source.augmentations)
        aug = np.array(["none" if m else (_text(v) or "none") for v, m in
                        zip(_values(source.augmentations), missing)], dtype=object)
    if source.ids is None:
        return np.arange(n, dtype=np.int64), None, aug
    missing = _masked(source.ids)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise file_error(path, f"{source.row(i)}: empty galaxy id; give every row an id or drop the row")
    values = _values(source.ids).reshape(n, -1)[:, 0] if _values(source.ids).ndim > 1 else _values(source.ids)
    ints = _as_integers(values)
    user: np.ndarray | None = None
    if ints is None:
        user = np.array([_text(v) for v in values], dtype=object)
        empty = user == ""
        if empty.any():
            i = int(np.flatnonzero(empty)[0])
            raise file_error(path, f"{source.row(i)}: empty galaxy id; give every row an id or drop the row")
        first: dict[str, int] = {}
        ints = np.array([first.setdefault(u, len(first)) for u in user], dtype=np.int64)
    seen: dict[Any, int] = {}
    for i in range(n):
        key = (int(ints[i]), aug[i]) if aug is not None else int(ints[i])
        j = seen.setdefault(key, i)
        if j != i:
            shown = repr(str(user[i])) if user is not None else str(int(ints[i]))
            hint = (f" and augmentation {aug[i]!r}; each copy needs its own augmentation name" if aug is not None
                    else "; galaxy ids must be unique (name an --augmentation-column if these are augmented copies)")
            raise file_error(path, f"{source.row(j)} and {source.row(i)} have the same galaxy id {shown}{hint}")
    return ints, user, aug


def split_sizes(n: int) -> tuple[int, int, int]:
    """(train, valid, test) galaxies of one class: 70:10:20, at least one in valid and test."""
    valid = max(1, int(round(n * SPLIT_FRACTIONS[1])))
    test = max(1, int(round(n * SPLIT_FRACTIONS[2])))
    return n - valid - test, valid, test


def stratified_split(groups_class: np.ndarray, seed: int, classes: Sequence[str], path: Path) -> np.ndarray:
    """Seeded stratified 70:10:20 split of galaxies (groups).

    Args:
        groups_class: class index of each galaxy (G,).
        seed: the permutation's seed (``default_rng([seed, 2])``, classes in order).
        classes: class names (for messages).
        path: the file named by a message.

    Returns:
        split index (0 train, 1 valid, 2 test) of each galaxy, int8 (G,).

    Raises:
        FileError: a class with fewer than 3 galaxies.
    """
    rng = np.random.default_rng([int(seed), 2])
    out = np.empty(len(groups_class), dtype=np.int8)
    for c in range(len(classes)):
        members = np.flatnonzero(groups_class == c)
        if len(members) < len(SPLITS):
            raise file_error(path, f"class {classes[c]!r} has {len(members)} galaxies; a stratified split needs at "
                                   "least 3 (one per split): add galaxies or give a --split-column")
        members = members[rng.permutation(len(members))]
        train, valid, _ = split_sizes(len(members))
        out[members[:train]] = 0
        out[members[train:train + valid]] = 1
        out[members[train + valid:]] = 2
    return out


def assign_splits(source: Source, labels: np.ndarray, galaxy_ids: np.ndarray, classes: Sequence[str],
                  seed: int) -> tuple[np.ndarray, str]:
    """Split index (0 train, 1 valid, 2 test) of every row, and the mode (``column`` or ``stratified``).

    Raises:
        FileError: copies of one galaxy with different labels, an empty or unknown split
            value, a split without a galaxy of some class.
    """
    path = source.path
    _, first, inverse = np.unique(galaxy_ids, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    clash = labels != labels[first[inverse]]
    if clash.any():
        i = int(np.flatnonzero(clash)[0])
        j = int(first[inverse[i]])
        raise file_error(path, f"{source.row(j)} and {source.row(i)} are copies of galaxy {int(galaxy_ids[i])} with "
                               f"labels {classes[labels[j]]!r} and {classes[labels[i]]!r}; copies must share a label")
    if source.splits is None:
        group_split = stratified_split(labels[first], seed, classes, path)
        split = group_split[inverse]
        mode = "stratified"
    else:
        what = source.split_what
        missing = _masked(source.splits)
        split = np.empty(source.n, dtype=np.int8)
        for i, (v, m) in enumerate(zip(_values(source.splits), missing)):
            name = SPLIT_ALIASES.get("" if m else _text(v).lower())
            if name is None:
                shown = "empty" if m or not _text(v) else repr(_text(v))
                raise file_error(path, f"{source.row(i)}: split {shown} ({what}) is not one of train, valid, test; "
                                       "fix the value or drop the split column for a stratified split")
            split[i] = SPLITS.index(name)
        mode = "column"
    for s, name in enumerate(SPLITS):
        have = np.bincount(labels[split == s], minlength=len(classes))
        if (have == 0).any():
            c = classes[int(np.flatnonzero(have == 0)[0])]
            raise file_error(path, f"split {name!r} ({source.split_what if mode == 'column' else 'stratified'}) has "
                                   f"no galaxy of class {c!r}; every split needs every class: fix the split values")
    return split, mode


# -- FITS ------------------------------------------------------------------------------


def _read_catalog(path: Path) -> Any:
    """An astropy Table from a FITS binary table or a CSV file."""
    if not path.is_file():
        raise file_error(path, "catalogue not found; give --catalog a FITS binary table or a CSV file")
    with open(path, "rb") as fh:
        head = fh.read(6)
    is_fits = head == b"SIMPLE" or path.name.lower().endswith(FITS_SUFFIXES)
    try:
        if is_fits:
            table = Table.read(path, format="fits", character_as_bytes=False)
        else:
            table = Table.read(path, format="ascii.csv")
    except Exception as exc:  # astropy raises many kinds for a damaged or foreign file
        kind = "FITS binary table" if is_fits else "CSV file with a header line"
        raise file_error(path, f"not a readable catalogue ({kind}): {type(exc).__name__}: "
                               f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if len(table) == 0:
        raise file_error(path, "the catalogue has no rows")
    return table


def _column(table: Any, name: str | None, option: str, path: Path) -> Any:
    if name is None:
        return None
    if name not in table.colnames:
        raise file_error(path, f"no column {name!r} ({option}); its columns are: {', '.join(table.colnames)}")
    return table[name]


@dataclass
class _FitsLayout:
    kind: str  # "cube" or "hdus"
    keys: list[Any]  # HDU keys of the planes (hdus) or [hdu index] (cube)
    band_axis: int


def _open_fits(path: Path, where: str):
    """The cutout opened with its stored values unscaled (memory-mapped where the file allows).

    ``do_not_scale_image_data``: astropy refuses to memory-map an image with BZERO/BSCALE/BLANK
    and would scale 16-bit integers in float32; :func:`_physical` scales them instead.
    """
    try:
        return fits.open(path, memmap=True, lazy_load_hdus=False, do_not_scale_image_data=True)
    except FileNotFoundError as exc:
        raise file_error(path, f"{where}: cutout not found; fix the path or drop the row") from exc
    except Exception as exc:
        raise file_error(path, f"{where}: not a readable FITS file ({type(exc).__name__}: {exc}); "
                               "replace the file or drop the row") from exc


def _physical(hdu: Any) -> np.ndarray:
    """An image HDU's pixels in physical units, float32 of the HDU's shape.

    FITS stores scaled integers (BITPIX 8/16/32/64, common from cutout services) as
    value = BZERO + BSCALE x stored; pixels equal to BLANK are undefined. Here the stored
    values (read unscaled) are scaled in float64 and rounded once to float32, BLANK pixels
    become NaN, so the import's bad-pixel check refuses the cutout naming the first one.
    Integer results below 2**24 (unsigned 16-bit via BZERO = 32768, BSCALE 1) are kept exactly.
    Byte order is the file's (big-endian); the result is native float32.
    """
    data = hdu.data
    header = hdu.header
    bscale, bzero = float(header.get("BSCALE", 1.0)), float(header.get("BZERO", 0.0))
    blank = header.get("BLANK") if data.dtype.kind in "iu" else None
    if bscale == 1.0 and bzero == 0.0 and blank is None:
        return np.array(data, dtype=np.float32)
    stored = np.asarray(data)
    values = bzero + bscale * stored.astype(np.float64)
    if blank is not None:
        values[stored == int(blank)] = np.nan
    return values.astype(np.float32)


def _hdu_names(hdul: Any) -> str:
    return ", ".join(f"{k}:{h.name or '-'}" for k, h in enumerate(hdul))


def _detect_layout(path: Path, where: str, bands: Sequence[str] | None, hdus: Sequence[int] | None,
                   band_axis: int) -> tuple[_FitsLayout, list[str]]:
    """How the first cutout holds its bands, and the band names."""
    hdul = _open_fits(path, where)
    try:
        if hdus is not None:
            names = []
            for k in hdus:
                if not (0 <= k < len(hdul)):
                    raise file_error(path, f"{where}: has no HDU {k} (--hdus); its HDUs: {_hdu_names(hdul)}")
                name = hdul[k].name
                names.append(name if name and name != "PRIMARY" else f"hdu{k}")
            return _FitsLayout("hdus", list(hdus), band_axis), list(bands) if bands is not None else names
        extnames = {h.name.upper() for h in hdul}
        if bands is not None and all(b.upper() in extnames for b in bands):
            return _FitsLayout("hdus", list(bands), band_axis), list(bands)
        for k, h in enumerate(hdul):
            if h.is_image and h.data is not None and h.data.ndim in (2, 3):
                break
        else:
            hint = (f"; --bands {','.join(bands)} names no HDU of it either" if bands is not None else "")
            raise file_error(path, f"{where}: holds no 2-D or 3-D image (HDUs {_hdu_names(hdul)}){hint}; "
                                   "give --hdus for one HDU per band")
        data = h.data
        if data.ndim == 3 and not -3 <= band_axis <= 2:
            raise OptionError(f"--band-axis must be 0, 1, 2 or -1 for a cube, got {band_axis}")
        nb = data.shape[band_axis] if data.ndim == 3 else 1
        if bands is not None and len(bands) != nb:
            raise file_error(path, f"{where}: the image cube in HDU {k} has {nb} bands (axis {band_axis} of shape "
                                   f"{data.shape}) but --bands names {len(bands)} and no HDU is named "
                                   f"{bands[0]!r}; fix --bands or --band-axis")
        return _FitsLayout("cube", [k], band_axis), list(bands) if bands is not None else [f"band{b}" for b in
                                                                                           range(nb)]
    finally:
        hdul.close()


def _read_cutout(path: Path, where: str, layout: _FitsLayout) -> np.ndarray:
    """One cutout as float32 (B, H, W)."""
    hdul = _open_fits(path, where)
    try:
        if layout.kind == "hdus":
            planes = []
            for key in layout.keys:
                try:
                    hdu = hdul[key]
                except (KeyError, IndexError) as exc:
                    option = "--bands" if isinstance(key, str) else "--hdus"
                    raise file_error(path, f"{where}: has no HDU {key!r} ({option}); its HDUs: "
                                           f"{_hdu_names(hdul)}") from exc
                data = hdu.data if hdu.is_image else None
                if data is None or data.ndim != 2:
                    shape = None if data is None else data.shape
                    raise file_error(path, f"{where}: HDU {key!r} holds {shape} instead of a 2-D image; "
                                           "one HDU per band must each be 2-D")
                del data
                planes.append(_physical(hdu))
            return np.stack(planes)
        hdu = hdul[layout.keys[0]] if layout.keys[0] < len(hdul) else None
        data = hdu.data if hdu is not None and hdu.is_image else None
        if data is None or data.ndim not in (2, 3):
            for h in hdul:  # another file may put the cube elsewhere: the first image HDU
                if h.is_image and h.data is not None and h.data.ndim in (2, 3):
                    hdu = h
                    break
            else:
                raise file_error(path, f"{where}: holds no 2-D or 3-D image (HDUs {_hdu_names(hdul)})")
        del data
        img = _physical(hdu)
        return img[None] if img.ndim == 2 else np.ascontiguousarray(np.moveaxis(img, layout.band_axis, 0))
    except FileError:
        raise
    except Exception as exc:  # a truncated data unit, a bad BSCALE, ...
        raise file_error(path, f"{where}: not a readable FITS image ({type(exc).__name__}: {exc}); "
                               "replace the file or drop the row") from exc
    finally:
        hdul.close()


def fits_source(catalog: str | Path, *, path_column: str, label_column: str, id_column: str | None = None,
                split_column: str | None = None, augmentation_column: str | None = None,
                target_path_column: str | None = None, bands: Sequence[str] | None = None,
                hdus: Sequence[int] | None = None, band_axis: int = 0) -> Source:
    """Open a catalogue of FITS cutouts (see :func:`import_fits` for the arguments)."""
    catalog = Path(catalog)
    table = _read_catalog(catalog)
    root = catalog.parent
    cols = {opt: _column(table, name, opt, catalog) for opt, name in (
        ("--path-column", path_column), ("--label-column", label_column), ("--id-column", id_column),
        ("--split-column", split_column), ("--augmentation-column", augmentation_column),
        ("--target-path-column", target_path_column))}
    path_cols = [cols["--path-column"]] + ([cols["--target-path-column"]] if target_path_column else [])
    paths = _cutout_paths(catalog, root, path_cols)
    _check_cutouts_exist(catalog, paths)
    if hdus is not None and any(int(k) < 0 for k in hdus):
        raise OptionError(f"--hdus takes HDU numbers >= 0 (0 is the primary HDU), got {list(hdus)}")
    layouts, band_names = _fits_layouts(catalog, paths, bands, hdus, band_axis)
    first = _read_cutout(paths[0][0], f"row 1 of {catalog.name}", layouts[0])
    shape = tuple(int(v) for v in first.shape)
    if len(band_names) != shape[0]:
        raise OptionError(f"--bands names {len(band_names)} bands but the cutouts have {shape[0]}")
    hashes: dict[str, str] = {}
    return Source(
        format="fits", path=catalog, root=root, n=len(table), labels=cols["--label-column"],
        label_what=f"column {label_column!r}", ids=cols["--id-column"], augmentations=cols["--augmentation-column"],
        splits=cols["--split-column"], split_what=f"column {split_column!r}", n_domains=len(paths),
        image_shape=shape, bands=band_names, read=_fits_reader(catalog, root, paths, layouts, shape, hashes),
        locate=lambda domain, row: (paths[domain][row], f"row {row + 1} of {catalog.name}"),
        extra=_extra_columns(table, cols), files={_record_name(catalog, root): catalog}, hashes=hashes,
        options={"catalog": str(catalog), "path_column": path_column, "label_column": label_column,
                 "id_column": id_column, "split_column": split_column, "augmentation_column": augmentation_column,
                 "target_path_column": target_path_column, "hdus": list(hdus) if hdus is not None else None,
                 "band_axis": int(band_axis)},
        layout={"fits": layouts[0].kind, "hdus": layouts[0].keys,
                **({"target_fits": layouts[1].kind, "target_hdus": layouts[1].keys} if len(layouts) > 1 else {})},
    )


def _cutout_paths(catalog: Path, root: Path, path_cols: list[Any]) -> list[list[Path]]:
    """Each domain's cutout path of every row (relative paths from ``root``); refuse an empty path."""
    paths: list[list[Path]] = []
    for option, col in zip(("--path-column", "--target-path-column"), path_cols):
        missing = _masked(col)
        values = _values(col)
        domain_paths = []
        for i in range(len(col)):
            text = "" if missing[i] else _text(values[i])
            if not text:
                raise file_error(catalog, f"row {i + 1}: empty cutout path ({option} {col.name!r}); give every row "
                                          "a cutout or drop the row")
            p = Path(text).expanduser()
            domain_paths.append(p if p.is_absolute() else root / p)
        paths.append(domain_paths)
    return paths


def _check_cutouts_exist(catalog: Path, paths: list[list[Path]]) -> None:
    """Refuse (FileError) the first cutout that is not a file, before any is read."""
    for option, domain_paths in zip(("--path-column", "--target-path-column"), paths):
        for i, p in enumerate(domain_paths):
            if not p.is_file():
                raise file_error(catalog, f"row {i + 1}: cutout {p} ({option}) not found; fix the path (relative "
                                          "paths are read from the catalogue's folder) or drop the row")


def _fits_layouts(catalog: Path, paths: list[list[Path]], bands: Sequence[str] | None,
                  hdus: Sequence[int] | None, band_axis: int) -> tuple[list[_FitsLayout], list[str]]:
    """Each domain's layout (cube or one HDU per band), found from its first cutout, and the band names."""
    layouts, band_names = [], []
    for domain_paths in paths:
        layout, names = _detect_layout(domain_paths[0], f"row 1 of {catalog.name}", bands,
                                       [int(k) for k in hdus] if hdus is not None else None, int(band_axis))
        layouts.append(layout)
        band_names = band_names or names
    return layouts, band_names


def _fits_reader(catalog: Path, root: Path, paths: list[list[Path]], layouts: list[_FitsLayout],
                 shape: tuple[int, ...], hashes: dict[str, str]) -> Callable[[int, int, int], np.ndarray]:
    """``read(domain, start, stop)`` of the cutouts; checksums each file into ``hashes`` as it is first read."""

    def read(domain: int, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *shape), dtype=np.float32)
        for i in range(start, stop):
            p = paths[domain][i]
            where = f"row {i + 1} of {catalog.name}"
            name = _record_name(p, root)
            if name not in hashes:
                hashes[name] = sha256_of(p)
            img = _read_cutout(p, where, layouts[domain])
            if img.shape != shape:
                ref = "the first cutout's" if domain == 0 else "the source domain's"
                hint = ("; if its bands are 2-D images in separate HDUs, name them with --bands (EXTNAMEs) or "
                        "--hdus" if layouts[domain].kind == "cube" and img.shape[0] == 1 < shape[0] else "")
                raise file_error(p, f"{where}: cutout of shape {img.shape} differs from {ref} {shape} "
                                    f"({paths[0][0].name}, row 1); every cutout must have the same shape{hint}")
            out[i - start] = img
        return out

    return read


def _extra_columns(table: Any, cols: dict[str, Any]) -> dict[str, Any]:
    """The catalogue's other plain columns (the path columns included), to copy into the new catalogues."""
    used = {c.name for opt, c in cols.items() if c is not None and "path" not in opt}  # paths are kept
    extra = {}
    for name in table.colnames:
        col = table[name]
        if name not in used and col.ndim == 1 and col.dtype.kind in "biufUS":
            extra[name] = col
    return extra


# -- HDF5 -------------------------------------------------------------------------------


def _h5_datasets(h5: Any) -> list[str]:
    names: list[str] = []
    h5.visititems(lambda name, obj: names.append("/" + name) if isinstance(obj, h5py.Dataset) else None)
    return names


def _h5_get(h5: Any, key: str | None, option: str, path: Path) -> Any:
    if key is None:
        return None
    obj = h5.get(key)
    if not isinstance(obj, h5py.Dataset):
        names = _h5_datasets(h5)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise file_error(path, f"no dataset {key!r} ({option}); its datasets: {shown or 'none'}")
    return obj


def _h5_image_shape(ds: Any, key: str, file: Path, band_axis: int) -> tuple[int, int, int]:
    """(bands, H, W) of one image of an images dataset (N, B, H, W) / (N, H, W, B) / (N, H, W)."""
    if ds.ndim not in (3, 4) or ds.dtype.kind not in "biuf":
        raise file_error(file, f"dataset {key!r} holds {ds.dtype} of shape {ds.shape}; expected numbers of shape "
                               "(N, bands, H, W), (N, H, W, bands) with --band-axis -1, or (N, H, W)")
    if ds.ndim == 3:
        return 1, int(ds.shape[1]), int(ds.shape[2])
    if not -3 <= band_axis <= 2:
        raise OptionError(f"--band-axis must be 0, 1, 2 or -1, got {band_axis}")
    per = ds.shape[1:]
    hw = [int(v) for k, v in enumerate(per) if k != band_axis % 3]
    return int(per[band_axis]), hw[0], hw[1]


#: one domain's images: [(dataset, its name, its first row)], one part per split in the groups layout
_H5Parts = list[tuple[Any, str, int]]
#: the labels dataset tried in turn when none is named: ours, then Galaxy10's (``ans``)
H5_LABELS_KEYS: tuple[str, ...] = ("labels", "ans")
#: most bands of a channels-last (N, H, W, B) images dataset recognised without ``band_axis``
MAX_TRAILING_BANDS = 4


def _h5_labels_key(h5: Any, groups: Sequence[str] | None) -> str:
    """The first of :data:`H5_LABELS_KEYS` the file holds (in the source group's train split), else "labels"."""
    prefix = f"{groups[0]}/{SPLITS[0]}/" if groups is not None else ""
    for key in H5_LABELS_KEYS:
        if isinstance(h5.get(prefix + key), h5py.Dataset):
            return key
    return H5_LABELS_KEYS[0]


def _h5_band_axis(ds: Any) -> int:
    """-1 for channels-last images (N, H, W, B) with B <= MAX_TRAILING_BANDS < H (Galaxy10's RGB), else 0."""
    if ds.ndim == 4 and ds.shape[3] <= MAX_TRAILING_BANDS < min(ds.shape[1], ds.shape[2]):
        return -1
    return 0


def _h5_extra(h5: Any, n: int, used: Sequence[str | None]) -> dict[str, np.ndarray]:
    """The file's other per-image datasets (N,) of numbers or strings, by path (catalogue columns)."""
    taken = {k.strip("/") for k in used if k is not None}
    extra: dict[str, np.ndarray] = {}
    for name in _h5_datasets(h5):
        ds = h5[name]
        text = h5py.check_string_dtype(ds.dtype) is not None
        if name.strip("/") not in taken and ds.shape == (n,) and (ds.dtype.kind in "biufS" or text):
            values = ds.asstr()[()] if text else ds[()]
            extra[name.strip("/")] = np.asarray(values, dtype=object if text else None)
    return extra


def hdf5_source(file: str | Path, *, images_key: str = "images", labels_key: str | None = None,
                split_key: str | None = None, ids_key: str | None = None, target_images_key: str | None = None,
                augmentation_key: str | None = None, groups: Sequence[str] | None = None,
                bands: Sequence[str] | None = None, band_axis: int | None = None) -> Source:
    """Open an HDF5 file (see :func:`import_hdf5` for the arguments)."""
    file = Path(file)
    h5 = _open_h5(file)
    extra: dict[str, np.ndarray] = {}
    try:
        if labels_key is None:
            labels_key = _h5_labels_key(h5, groups)
        meta_keys = (("--labels-key", labels_key), ("--split-key", split_key), ("--ids-key", ids_key),
                     ("--augmentation-key", augmentation_key))
        if groups is None:
            parts, meta, n = _h5_datasets_layout(h5, file, images_key, target_images_key, meta_keys)
            extra = _h5_extra(h5, n, [images_key, target_images_key] + [key for _, key in meta_keys])
        else:
            parts, meta, n = _h5_groups_layout(h5, file, groups, images_key, split_key, target_images_key, meta_keys)
        first, first_key = parts[0][0][0], parts[0][0][1]
        if band_axis is None:
            band_axis = _h5_band_axis(first)
        shape = _h5_check_parts(parts, file, band_axis)
        if n == 0:
            raise file_error(file, f"dataset {first_key!r} holds no images")
        band_names = list(bands) if bands is not None else [f"band{b}" for b in range(shape[0])]
        if len(band_names) != shape[0]:
            raise OptionError(f"--bands names {len(band_names)} bands but {first_key!r} of {file} has {shape[0]} "
                              f"(shape {first.shape}, band axis {band_axis})")
    except BaseException:
        h5.close()
        raise
    lab = f"{groups[0]}/{{train,valid,test}}/{labels_key}" if groups is not None else labels_key
    return Source(
        format="hdf5", path=file, root=file.parent, n=n, labels=meta["--labels-key"],
        label_what=f"dataset {lab!r}", ids=meta.get("--ids-key"),
        augmentations=meta.get("--augmentation-key"), splits=meta.get("--split-key"),
        split_what=f"groups {groups[0]}/{{train,valid,test}}" if groups is not None else f"dataset {split_key!r}",
        n_domains=len(parts), image_shape=shape, bands=band_names,
        read=_h5_reader(parts, file, shape, band_axis), locate=_h5_locator(parts, file),
        row_column="source_index", row_offset=0, extra=extra,
        files={file.name: file},
        options={"input": str(file), "images_key": images_key, "labels_key": labels_key, "split_key": split_key,
                 "ids_key": ids_key, "target_images_key": target_images_key, "augmentation_key": augmentation_key,
                 "groups": list(groups) if groups is not None else None, "band_axis": int(band_axis)},
        layout={"hdf5": "groups" if groups is not None else "datasets", "shape": list(first.shape),
                "dtype": str(first.dtype)},
        default_domain_names=list(groups) if groups is not None else None,
        close=h5.close,
    )


def _open_h5(file: Path) -> Any:
    """The HDF5 file opened for reading; FileError when it is missing or unreadable."""
    if not file.is_file():
        raise file_error(file, "HDF5 file not found")
    try:
        return h5py.File(file, "r")
    except OSError as exc:
        raise file_error(file, f"not a readable HDF5 file ({exc})") from exc


def _h5_datasets_layout(h5: Any, file: Path, images_key: str, target_images_key: str | None,
                        meta_keys: Sequence[tuple[str, str | None]]) -> tuple[list[_H5Parts], dict[str, Any], int]:
    """Named datasets: each domain's images, the per-image datasets read (by option) and the image count."""
    images = _h5_get(h5, images_key, "--images-key", file)
    parts: list[_H5Parts] = [[(images, images_key, 0)]]
    if target_images_key is not None:
        parts.append([(_h5_get(h5, target_images_key, "--target-images-key", file), target_images_key, 0)])
    n = images.shape[0]
    meta: dict[str, Any] = {}
    for opt, key in meta_keys:
        ds = _h5_get(h5, key, opt, file)
        if ds is not None:
            if ds.shape[:1] != (n,):
                raise file_error(file, f"dataset {key!r} ({opt}) has shape {ds.shape}; it needs one entry "
                                       f"per image of {images_key!r} ({n})")
            meta[opt] = ds[()]
    return parts, meta, n


def _h5_groups_layout(h5: Any, file: Path, groups: Sequence[str], images_key: str, split_key: str | None,
                      target_images_key: str | None,
                      meta_keys: Sequence[tuple[str, str | None]]) -> tuple[list[_H5Parts], dict[str, Any], int]:
    """One group per domain and split: each domain's parts, the source group's per-image data and the count."""
    if len(groups) not in (1, 2):
        raise OptionError(f"--groups names one or two domain groups (source[,target]), got {len(groups)}")
    if split_key is not None or target_images_key is not None:
        raise OptionError("--groups takes the split and the domains from the groups: drop --split-key and "
                          "--target-images-key")
    parts = [_h5_group_parts(h5, file, g, images_key) for g in groups]
    sizes = [ds.shape[0] for ds, _, _ in parts[0]]
    meta: dict[str, Any] = {}
    for opt, key in meta_keys[:1] + meta_keys[2:]:  # the split comes from the groups
        if key is not None:
            meta[opt] = _h5_group_meta(h5, file, groups[0], key, opt, sizes, images_key)
    meta["--split-key"] = np.repeat(np.array(SPLITS, dtype=object), sizes)
    return parts, meta, sum(sizes)


def _h5_group_parts(h5: Any, file: Path, group: str, images_key: str) -> _H5Parts:
    """One domain group's images: one part per split, rows counted on across the splits."""
    domain_parts, row = [], 0
    for split in SPLITS:
        key = f"{group}/{split}/{images_key}"
        ds = _h5_get(h5, key, "--groups/--images-key", file)
        domain_parts.append((ds, key, row))
        row += ds.shape[0]
    return domain_parts


def _h5_group_meta(h5: Any, file: Path, group: str, key: str, opt: str, sizes: Sequence[int],
                   images_key: str) -> np.ndarray:
    """One per-image dataset of a group's splits, read and joined in split order."""
    pieces = []
    for split, size in zip(SPLITS, sizes):
        name = f"{group}/{split}/{key}"
        ds = _h5_get(h5, name, opt, file)
        if ds.shape[:1] != (size,):
            raise file_error(file, f"dataset {name!r} ({opt}) has shape {ds.shape}; it needs one entry "
                                   f"per image of {group}/{split}/{images_key} ({size})")
        pieces.append(ds[()])
    return np.concatenate(pieces)


def _h5_check_parts(parts: list[_H5Parts], file: Path, band_axis: int) -> tuple[int, int, int]:
    """(bands, H, W) of the images; refuse parts whose image shape or image count differ from the source's."""
    first, first_key = parts[0][0][0], parts[0][0][1]
    shape = _h5_image_shape(first, first_key, file, band_axis)
    for domain_parts in parts:
        for k, (ds, key, _) in enumerate(domain_parts):
            if _h5_image_shape(ds, key, file, band_axis) != shape or ds.shape[1:] != first.shape[1:]:
                raise file_error(file, f"dataset {key!r} holds images of shape {ds.shape[1:]}; they must match "
                                       f"{first_key!r}'s {first.shape[1:]}")
            if ds.shape[0] != parts[0][k][0].shape[0]:
                raise file_error(file, f"dataset {key!r} holds {ds.shape[0]} images but {parts[0][k][1]!r} "
                                       f"holds {parts[0][k][0].shape[0]}; both domains need the same galaxies")
    return shape


def _h5_reader(parts: list[_H5Parts], file: Path, shape: tuple[int, int, int],
               band_axis: int) -> Callable[[int, int, int], np.ndarray]:
    """``read(domain, start, stop)`` of the HDF5 images, as float32 (stop - start, B, H, W)."""

    def read(domain: int, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *shape), dtype=np.float32)
        for ds, key, row in parts[domain]:
            a, b = max(start, row), min(stop, row + ds.shape[0])
            if a >= b:
                continue
            try:
                block = np.asarray(ds[a - row:b - row], dtype=np.float32)
            except Exception as exc:  # a damaged chunk, a missing filter plugin
                raise file_error(file, f"{key}[{a - row}:{b - row}]: cannot read ({type(exc).__name__}: {exc})") \
                    from exc
            out[a - start:b - start] = block[:, None] if block.ndim == 3 else np.moveaxis(block, 1 + band_axis % 3, 1)
        return out

    return read


def _h5_locator(parts: list[_H5Parts], file: Path) -> Callable[[int, int], tuple[Path, str]]:
    """``locate(domain, row)``: the file and the dataset entry of one image."""

    def locate(domain: int, row: int) -> tuple[Path, str]:
        for ds, key, first_row in parts[domain]:
            if row < first_row + ds.shape[0]:
                return file, f"{key}[{row - first_row}]"
        return file, f"index {row}"

    return locate


# -- npy --------------------------------------------------------------------------------


def npy_source(folder: str | Path, *, bands: Sequence[str] | None = None) -> Source:
    """Open a folder in the dataset layout (see :func:`import_npy`)."""
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
    catalogs = [folder / f"catalog_{s}.csv" for s in SPLITS]
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


# -- the import ------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder; choose a folder for --out")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise file_error(out, f"cannot create or write the output folder (in {parent})")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Start clean (remove an interrupted import); refuse a finished or foreign non-empty folder."""
    work = out / WORK_DIR
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
        if not (out / "dataset.json").exists():  # interrupted while renaming: its files are incomplete
            for name in dataset_files():
                (out / name).unlink(missing_ok=True)
    if (out / "dataset.json").exists() and not overwrite:
        raise file_error(out, "already holds a dataset; use --overwrite to replace it or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise file_error(out, f"output folder is not empty ({shown}); choose an empty or new folder, or use "
                              "--overwrite to replace its dataset files")


def _reserve(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk fails here with ENOSPC, not with SIGBUS later."""
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)


def _write_error(path: Path, exc: OSError) -> DeepAdvError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeepAdvError(f"{path}: no space left on device; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return DeepAdvError(f"{path}: cannot write ({exc.strerror})")
    raise exc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def dataset_metadata(*, classes: Sequence[str], bands: Sequence[str], image_shape: Sequence[int],
                     domain_names: dict[str, str], stretch: stretches.Stretch, params: dict[str, dict[str, Any]],
                     fit: dict[str, Any], counts: dict[str, Any], split: dict[str, Any],
                     source: dict[str, Any]) -> dict[str, Any]:
    """The ``dataset.json`` of an imported folder.

    Layout::

        {"kind": "deepadv-dataset", "version": 1, "package_version": "...", "origin": "import",
         "classes": [names in label order], "bands": [names], "image_shape": [B, H, W],
         "domains": ["Y10"] or ["Y10", "Y1"], "domain_names": {"Y10": "source", "Y1": "target"},
         "stretch": {"Y10": [low, high], "Y1": [low, high]}   (paper; today's loader reads it)
                    or the kind's name, e.g. "zscore"          (other kinds: today's loader refuses),
         "normalisation": {"kind": "paper"|"asinh"|"zscore"|"none", "spec": "asinh:8",
                           "params": {"Y10": {...}, "Y1": {...}},
                           "fit": {"split": "train", "images": {"Y10": n, ...}, "seed": s, "sample": m}},
         "counts": {split: {"total": n, "galaxies": g, <class>: n, ...}},
         "split": {"mode": "column"|"stratified", "seed": s, "fractions": [0.7, 0.1, 0.2]},
         "source": {"format": "fits"|"hdf5"|"npy", "root": absolute folder, "options": {...},
                    "layout": {...}, "files": {name relative to root (else absolute): sha256}},
         "created": ISO 8601 time (UTC)}
    """
    slots = list(params)
    legacy: Any = ({d: [params[d]["low"], params[d]["high"]] for d in slots} if stretch.kind == "paper"
                   else stretch.kind)
    return {
        "kind": "deepadv-dataset",
        "version": IMPORT_VERSION,
        "package_version": __version__,
        "origin": "import",
        "classes": list(classes),
        "bands": list(bands),
        "image_shape": [int(v) for v in image_shape],
        "domains": slots,
        "domain_names": {d: domain_names[d] for d in slots},
        "stretch": legacy,
        "normalisation": {"kind": stretch.kind, "spec": str(stretch), "params": params, "fit": fit},
        "counts": counts,
        "split": split,
        "source": source,
        "created": utc_now(),
    }


def _catalog_writer(path: Path, fields: list[str]) -> tuple[Any, Any]:
    fh = open(path, "w", newline="", encoding="utf-8")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(fields)
    return fh, writer


def _cell(v: Any) -> Any:
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", "replace")
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.generic):
        return v.item()
    if v is np.ma.masked:
        return ""
    return v


def run_import(out: str | Path, source: Source, options: ImportOptions) -> Path:
    """Write ``source`` into the dataset folder ``out`` (the engine of every ``import_*``).

    Args:
        out: the dataset folder (created; must be new or empty unless ``options.overwrite``).
        source: an opened source (closed here).
        options: the shared options (validated here).

    Returns:
        ``out``.

    Raises:
        FileError, OptionError: bad input (nothing of the new dataset is kept).
    """
    out = Path(out)
    try:
        opts = options.checked()
        classes, labels = resolve_labels(source, opts.classes)
        galaxy_ids, user_ids, augs = resolve_ids(source)
        split, mode = assign_splits(source, labels, galaxy_ids, classes, opts.seed)
        slots = list(SLOTS[:source.n_domains])
        names = (list(opts.domain_names) if opts.domain_names is not None else source.default_domain_names
                 or list(DEFAULT_DOMAIN_NAMES[:len(slots)]))
        if len(names) != len(slots):
            raise OptionError(f"--domain-names names {len(names)} domains but {source.path} has {len(slots)}"
                              + (" (add a second domain, e.g. --target-path-column / --target-images-key, or give "
                                 "one name)" if len(slots) == 1 else "; give one name per domain, e.g. deep,wide"))
        if source.format == "npy" and out.resolve() == source.path.resolve():
            raise OptionError("--out must be another folder than --input")
        _check_out(out)
        created = not out.exists()
        try:
            with OutputLock(out, "import"):
                _prepare_out(out, opts.overwrite)
                meta = _build(out, source, opts, classes, labels, galaxy_ids, user_ids, augs, split, mode, slots,
                              dict(zip(slots, names)))
                _swap_in(out, meta)
        except BaseException:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
    finally:
        source.close()
    return out


def _build(out: Path, source: Source, opts: ImportOptions, classes: list[str], labels: np.ndarray,
           galaxy_ids: np.ndarray, user_ids: np.ndarray | None, augs: np.ndarray | None, split: np.ndarray,
           mode: str, slots: list[str], domain_names: dict[str, str]) -> dict[str, Any]:
    """Write every file into ``OUT/.import`` and return the metadata (``dataset.json`` is not written here)."""
    work = out / WORK_DIR
    fds: dict[tuple[str, int], tuple[int, int]] = {}  # (slot, split) -> (open file, data offset)
    try:
        work.mkdir()
        positions, counts_per = _split_positions(split)
        shape = source.image_shape
        stretch = stretches.parse(opts.stretch)
        with make_progress(disable=None if opts.progress else True) as progress:
            _checksum_inputs(source, progress)
            _open_image_files(work, slots, counts_per, shape, fds)
            _copy_images(work, source, opts.chunk, slots, split, positions, fds, progress)
            _close_image_files(fds)
            params, fit_images = _fit_normalisation(work, slots, stretch, opts, shape, progress)
        counts = _write_labels_and_catalogs(work, source, classes, labels, galaxy_ids, user_ids, augs, split)
        return dataset_metadata(
            classes=classes, bands=source.bands, image_shape=shape, domain_names=domain_names, stretch=stretch,
            params=params,
            fit={"split": "train", "images": fit_images, "seed": opts.seed,
                 "sample": opts.fit_sample if stretch.kind in ("paper", "asinh") else None},
            counts=counts,
            split={"mode": mode, "seed": opts.seed if mode == "stratified" else None,
                   "fractions": list(SPLIT_FRACTIONS) if mode == "stratified" else None},
            source={"format": source.format, "root": str(source.root.resolve()),
                    "options": {**source.options, **opts.record()}, "layout": source.layout,
                    "files": {**source.hashes}},
        )
    except BaseException:
        for fd, _ in fds.values():
            os.close(fd)
        shutil.rmtree(work, ignore_errors=True)
        raise


def _split_positions(split: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Each row's position within its split (source order), and the rows of each split."""
    positions = np.empty(len(split), dtype=np.int64)
    counts_per = [int((split == s).sum()) for s in range(len(SPLITS))]
    for s in range(len(SPLITS)):
        positions[split == s] = np.arange(counts_per[s])
    return positions, counts_per


def _checksum_inputs(source: Source, progress: Progress) -> None:
    """SHA-256 of the source's input files into ``source.hashes``."""
    hashed = progress.add_task("checksums", total=len(source.files))
    for name, path in source.files.items():
        source.hashes[name] = sha256_of(path)
        progress.advance(hashed)


def _open_image_files(work: Path, slots: list[str], counts_per: list[int], shape: tuple[int, int, int],
                      fds: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Create every image file (blocks reserved) and open it into ``fds``: (slot, split) -> (fd, data offset)."""
    for d in slots:
        for s, name in enumerate(SPLITS):
            path = work / image_file(d, name)
            try:
                header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                                   shape=(counts_per[s], *shape))
                offset = header.offset
                del header
                _reserve(path)
                fds[d, s] = (os.open(path, os.O_RDWR), offset)
            except OSError as exc:
                raise _write_error(path, exc) from exc


def _copy_images(work: Path, source: Source, chunk: int, slots: list[str], split: np.ndarray, positions: np.ndarray,
                 fds: dict[tuple[str, int], tuple[int, int]], progress: Progress) -> None:
    """Read the images ``chunk`` rows at a time, check them and write each row at its place in its split."""
    n = source.n
    row_bytes = int(np.prod(source.image_shape)) * 4
    task = progress.add_task("importing images", total=n * len(slots))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        for k, d in enumerate(slots):
            block = source.read(k, a, b)
            _check_finite(source, block, k, a)
            for s in range(len(SPLITS)):
                rows = np.flatnonzero(split[a:b] == s)
                if len(rows):  # their positions in the split are consecutive (source order)
                    fd, offset = fds[d, s]
                    try:
                        _pwrite_all(fd, np.ascontiguousarray(block[rows]).data,
                                    offset + int(positions[a + rows[0]]) * row_bytes)
                    except OSError as exc:
                        raise _write_error(work / image_file(d, SPLITS[s]), exc) from exc
            del block
            progress.advance(task, b - a)


def _check_finite(source: Source, block: np.ndarray, domain: int, start: int) -> None:
    """Refuse (FileError) the first image of ``block`` (rows from ``start``) with a NaN or infinite pixel."""
    finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
    if not finite.all():
        r = int(np.flatnonzero(~finite)[0])
        band, y, x = (int(v) for v in np.argwhere(~np.isfinite(block[r]))[0])
        nbad = int((~np.isfinite(block[r])).sum())
        path, where = source.locate(domain, start + r)
        blank = " (FITS BLANK pixels read as NaN)" if source.format == "fits" else ""
        raise file_error(path, f"{where}: {nbad} NaN or infinite pixel{'s' if nbad > 1 else ''} "
                               f"(first at band {band}, y {y}, x {x}){blank}; replace them (e.g. by 0 or "
                               "the sky level) or drop the row")


def _close_image_files(fds: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Flush the image files to disk and close them (emptying ``fds``)."""
    for key in list(fds):
        fd, _ = fds.pop(key)
        os.fsync(fd)
        os.close(fd)


def _fit_normalisation(work: Path, slots: list[str], stretch: stretches.Stretch, opts: ImportOptions,
                       shape: tuple[int, int, int],
                       progress: Progress) -> tuple[dict[str, dict[str, Any]], dict[str, int]]:
    """Each domain's normalisation constants, fitted on its training split, and how many images each used."""
    params: dict[str, dict[str, Any]] = {}
    fit_images: dict[str, int] = {}
    fitting = progress.add_task(f"fitting {stretch}", total=len(slots))
    for d in slots:
        train = NpyRows(work / image_file(d, "train"))
        params[d] = stretches.fit(stretch, train, chunk=opts.chunk, sample=opts.fit_sample, seed=opts.seed)
        fit_images[d] = (len(stretches.sample_indices(len(train), int(np.prod(shape)), sample=opts.fit_sample,
                                                      seed=opts.seed))
                         if stretch.kind in ("paper", "asinh") else len(train))
        del train
        progress.advance(fitting)
    return params, fit_images


def _write_labels_and_catalogs(work: Path, source: Source, classes: list[str], labels: np.ndarray,
                               galaxy_ids: np.ndarray, user_ids: np.ndarray | None, augs: np.ndarray | None,
                               split: np.ndarray) -> dict[str, Any]:
    """Write each split's one-hot labels and catalogue; return the counts ``dataset.json`` records."""
    eye = np.eye(len(classes), dtype=np.float32)
    fields, extra_names = _catalog_fields(source, user_ids)
    extra_values = {name: _values(col) for name, col in source.extra.items() if name in extra_names}
    extra_masks = {name: _masked(col) for name, col in source.extra.items() if name in extra_names}
    counts: dict[str, Any] = {}
    for s, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == s)
        write_npy(work / label_file(name), eye[labels[rows]])
        fh, writer = _catalog_writer(work / f"catalog_{name}.csv", fields)
        with fh:
            for i in rows:
                line = [int(galaxy_ids[i]), augs[i] if augs is not None else "none", classes[labels[i]],
                        int(i) + source.row_offset]
                if user_ids is not None:
                    line.append(user_ids[i])
                line += ["" if extra_masks[c][i] else _cell(extra_values[c][i]) for c in extra_names]
                writer.writerow(line)
            fh.flush()
            os.fsync(fh.fileno())
        counts[name] = {"total": len(rows), "galaxies": int(len(np.unique(galaxy_ids[rows]))),
                        **{c: int((labels[rows] == k).sum()) for k, c in enumerate(classes)}}
    return counts


def _catalog_fields(source: Source, user_ids: np.ndarray | None) -> tuple[list[str], dict[str, str]]:
    """The catalogue header, and the source's extra columns by the names they get (``source_`` on a clash)."""
    fields = list(CATALOG_FIELDS) + [source.row_column] + (["source_id"] if user_ids is not None else [])
    extra_names: dict[str, str] = {}
    for name in source.extra:
        shown = name if name not in fields else f"source_{name}"
        if shown not in fields and shown not in extra_names.values():
            extra_names[name] = shown
    return fields + list(extra_names.values()), extra_names


def _swap_in(out: Path, meta: dict[str, Any]) -> None:
    """Replace the dataset files of ``out`` by those of ``out/.import``; ``dataset.json`` last."""
    work = out / WORK_DIR
    (out / "dataset.json").unlink(missing_ok=True)  # from here on the folder reads as unfinished
    made = {p.name for p in work.iterdir()}
    for name in dataset_files():
        if name not in made:
            (out / name).unlink(missing_ok=True)  # e.g. an old Y1 domain the new data lacks
    for name in sorted(made):
        os.replace(work / name, out / name)
    _fsync_dir(out)
    write_json(out / "dataset.json", meta)
    shutil.rmtree(work, ignore_errors=True)


# -- the three formats ------------------------------------------------------------------


def import_fits(out: str | Path, catalog: str | Path, *, path_column: str, label_column: str,
                id_column: str | None = None, split_column: str | None = None,
                augmentation_column: str | None = None, target_path_column: str | None = None,
                hdus: Sequence[int] | None = None, band_axis: int = 0,
                options: ImportOptions | None = None) -> Path:
    """Import FITS cutouts listed in a catalogue into the dataset folder ``out``.

    Args:
        out: dataset folder to write (new or empty, unless ``options.overwrite``).
        catalog: FITS binary table or CSV file, one row per image.
        path_column: column of cutout paths (relative to the catalogue's folder, or absolute).
        label_column: column of class names or integer class indices.
        id_column: column of galaxy ids (integers or text) [default: the row number].
        split_column: column of train/valid/test [default: a seeded stratified 70:10:20 split].
        augmentation_column: column naming augmented copies of one galaxy id (rows with the
            same id and different augmentations are allowed, and kept in one split) [default: none].
        target_path_column: column of the second (shifted) domain's cutouts, same shape [default: none].
        hdus: HDU numbers of one 2-D image per band (0 is the primary HDU) [default: auto].
        band_axis: numpy axis of the bands in a cube (0: (B, H, W); -1: (H, W, B)) [default: 0].
        options: the shared options (``bands`` names cube planes, or EXTNAMEs of one HDU per band).

    Returns:
        ``out``.
    """
    options = (options or ImportOptions()).checked()  # bad options fail before any reading
    source = fits_source(catalog, path_column=path_column, label_column=label_column, id_column=id_column,
                         split_column=split_column, augmentation_column=augmentation_column,
                         target_path_column=target_path_column,
                         bands=_name_list(options.bands, "--bands") if options.bands is not None else None,
                         hdus=hdus, band_axis=band_axis)
    return run_import(out, source, options)


def import_hdf5(out: str | Path, file: str | Path, *, images_key: str = "images", labels_key: str | None = None,
                split_key: str | None = None, ids_key: str | None = None, target_images_key: str | None = None,
                augmentation_key: str | None = None, groups: Sequence[str] | None = None,
                band_axis: int | None = None, options: ImportOptions | None = None) -> Path:
    """Import an HDF5 file into the dataset folder ``out``.

    Two layouts. Named datasets (the default): ``images_key`` (N, ...), ``labels_key`` (N,) and
    the optional per-image datasets below, all in one order. Groups (``groups=[source,
    target]``): ``/{group}/{split}/{images_key}`` and, for the source group,
    ``/{group}/{split}/{labels_key}`` (and ``ids_key``, ``augmentation_key``) for split in
    train/valid/test; the groups give the split and the domains (and, by default, the
    domains' names); the target group's images are the source's galaxies in the same order.
    In the named-datasets layout the file's other (N,) datasets of numbers or strings (e.g.
    Galaxy10's ``ra``, ``dec``, ``redshift``) are copied into the catalogues as columns.

    Args:
        out: dataset folder to write (new or empty, unless ``options.overwrite``).
        file: the HDF5 file.
        images_key: images (N, B, H, W), (N, H, W, B) with ``band_axis=-1``, or (N, H, W) [default: "images"].
        labels_key: labels (N,) integers or (byte) strings, or one-hot (N, K) [default: "labels", or
            "ans" (Galaxy10 DECaLS's integer labels) when the file has no "labels"].
        split_key: (N,) train/valid/test strings [default: a seeded stratified 70:10:20 split].
        ids_key: (N,) galaxy ids [default: the index].
        target_images_key: the second (shifted) domain's images, same shape and order [default: none].
        augmentation_key: (N,) names of augmented copies of one id [default: none].
        groups: the source and optional target group names of the groups layout [default: none,
            named datasets].
        band_axis: axis of the bands within one image [default: -1 when the images are (N, H, W, B)
            with B <= 4 < H, W (Galaxy10's uint8 (N, 256, 256, 3)), else 0].
        options: the shared options.

    Returns:
        ``out``.
    """
    options = (options or ImportOptions()).checked()  # bad options fail before any reading
    source = hdf5_source(file, images_key=images_key, labels_key=labels_key, split_key=split_key, ids_key=ids_key,
                         target_images_key=target_images_key, augmentation_key=augmentation_key,
                         groups=_name_list(groups, "--groups") if groups is not None else None,
                         bands=_name_list(options.bands, "--bands") if options.bands is not None else None,
                         band_axis=band_axis)
    return run_import(out, source, options)


def import_npy(out: str | Path, folder: str | Path, *, options: ImportOptions | None = None) -> Path:
    """Copy a folder in the dataset layout into ``out`` with validation, recomputing the normalisation.

    The folder's split is kept; ``galaxy_id``/``augmentation`` come from its catalogues when
    it has them. Classes: ``options.classes``, else its ``dataset.json``'s, else the package's
    three when the labels have 3 columns, else "0" .. "K-1".

    Args:
        out: dataset folder to write (another folder than ``folder``).
        folder: ``images_Y10_{split}.npy`` (+ optional ``images_Y1_{split}.npy``),
            ``labels_{split}.npy`` one-hot, optional ``catalog_{split}.csv`` and ``dataset.json``.
        options: the shared options.

    Returns:
        ``out``.
    """
    options = (options or ImportOptions()).checked()  # bad options fail before any reading
    source = npy_source(folder, bands=_name_list(options.bands, "--bands") if options.bands is not None else None)
    if options.classes is None and source.default_classes is not None:
        options = ImportOptions(**{**options.__dict__, "classes": source.default_classes})
    return run_import(out, source, options)


def guess_format(catalog: str | Path | None, input: str | Path | None) -> str:
    """The ``--format`` implied by the given inputs: fits with a catalogue, npy for a folder, else hdf5."""
    if catalog is not None:
        return "fits"
    if input is None:
        raise OptionError("give --catalog FILE (FITS cutouts) or --input FILE|FOLDER (HDF5 file or npy folder)")
    return "npy" if Path(input).is_dir() else "hdf5"


def check_format(value: str) -> str:
    """``value`` if it is a known ``--format``."""
    return check_choice(value, FORMATS, "--format")
