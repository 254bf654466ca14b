"""What every importer shares: the options, the :class:`Source` a format opens, label/id/split resolution,
and the :class:`ImporterSpec` a format registers (:mod:`deepadversaries.data.importers.registry`).

A format module (``fits``, ``hdf5``, ``npy``, or a new one) turns the user's files into a
:class:`Source`: the per-row metadata read up front (labels, optional ids, augmentations, splits,
extra catalogue columns) and a ``read(domain, start, stop)`` of the images on demand. Everything
after that is the same for every format and lives here (the checks of labels, ids and splits) or in
the stage, :mod:`deepadversaries.data.importing` (the streaming pass into a dataset folder).

Labels. Integer labels index ``classes`` (or, without it, the sorted distinct integers are the
classes); text labels must be class names; one-hot (N, K) labels name class k. Splits. A split
column (train/valid/test, with the aliases of :data:`SPLIT_ALIASES`) is honoured; without one the
galaxies are split 70:10:20 per class with ``numpy.random.default_rng([seed, 2])`` over each class's
galaxy ids in sorted order (every copy of one galaxy id in one split). Rows are named from 1 for
catalogue rows (``row_offset`` 1), from 0 for array indices. Every refusal is one line naming the
file and row and the fix (:class:`~deepadversaries.errors.FileError` /
:class:`~deepadversaries.errors.OptionError`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from deepadversaries import CLASSES, SPLITS
from deepadversaries.data import stretches
from deepadversaries.errors import OptionError, file_error

SPLIT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)
DEFAULT_CHUNK = 256
DEFAULT_DOMAIN_NAMES: tuple[str, str] = ("source", "target")
SPLIT_ALIASES: dict[str, str] = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                                 "validation": "valid", "test": "test", "testing": "test"}


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
        classes = name_list(self.classes, "--classes") if self.classes is not None else None
        if classes is not None and len(classes) < 2:
            raise OptionError(f"--classes names {len(classes)} class; a classifier needs at least 2 "
                              "(e.g. --classes spiral,elliptical)")
        bands = name_list(self.bands, "--bands") if self.bands is not None else None
        names = name_list(self.domain_names, "--domain-names") if self.domain_names is not None else None
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


def name_list(values: Sequence[str] | str, option: str) -> tuple[str, ...]:
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
        format: the registered format's name (``fits``, ``hdf5``, ``npy``, ...).
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
        nan_hint: what a NaN pixel may mean in this format, added to the refusal (FITS: BLANK pixels)
            [default: none].
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
    nan_hint: str = ""

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


def record_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (POSIX separators), else absolute."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())


def text_value(value: Any) -> str:
    """A cell as stripped text (bytes decoded as UTF-8)."""
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", "replace").strip()
    return str(value).strip()


def masked_values(column: Any) -> np.ndarray:
    """Boolean (N,) mask of missing values of a table column (or array)."""
    mask = getattr(column, "mask", None)
    n = len(column)
    if mask is None or mask is np.ma.nomask:
        return np.zeros(n, dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    return mask.reshape(n, -1).any(axis=1) if mask.ndim > 1 else mask


def plain_values(column: Any) -> np.ndarray:
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
    values = plain_values(source.labels)
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
    missing = masked_values(source.labels)
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
    text = np.array([text_value(v) for v in values], dtype=object)
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
        missing = masked_values(source.augmentations)
        aug = np.array(["none" if m else (text_value(v) or "none") for v, m in
                        zip(plain_values(source.augmentations), missing)], dtype=object)
    if source.ids is None:
        return np.arange(n, dtype=np.int64), None, aug
    missing = masked_values(source.ids)
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise file_error(path, f"{source.row(i)}: empty galaxy id; give every row an id or drop the row")
    given = plain_values(source.ids)
    values = given.reshape(n, -1)[:, 0] if given.ndim > 1 else given
    ints = _as_integers(values)
    user: np.ndarray | None = None
    if ints is None:
        user = np.array([text_value(v) for v in values], dtype=object)
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
        missing = masked_values(source.splits)
        split = np.empty(source.n, dtype=np.int8)
        for i, (v, m) in enumerate(zip(plain_values(source.splits), missing)):
            name = SPLIT_ALIASES.get("" if m else text_value(v).lower())
            if name is None:
                shown = "empty" if m or not text_value(v) else repr(text_value(v))
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


# -- what a format registers --------------------------------------------------------


@dataclass(frozen=True)
class ImporterSpec:
    """One input format of ``deepadv import`` (registered in :mod:`deepadversaries.data.importers.registry`).

    Attributes:
        name: the ``--format`` value, e.g. "fits".
        input_option: the command-line option naming the input, "--catalog" or "--input".
        options: the format's own command-line options it reads (by name, e.g. "--images-key"); any
            other format's option given with this format is refused [default: none].
        build: ``build(inputs, options) -> Source``, or ``"module:function"`` imported on first use:
            ``inputs`` maps each given command-line option
            name (the input option and ``options``; ``--band-axis`` as an int) to its value (None when
            not given), ``options`` are the checked shared :class:`ImportOptions`; refuses a missing
            required option with an :class:`~deepadversaries.errors.OptionError`.
        detect: ``detect(path) -> bool``: whether an input given without ``--format`` is this format's
            (registrations are asked before the built-ins, the built-ins in order).
        suffixes: file-name endings of this format's inputs (documentation and detection) [default: none].
        help: one phrase for ``deepadv import --help`` [default: ""].
    """

    name: str
    input_option: str
    build: Callable[[Mapping[str, Any], ImportOptions], Source] | str
    detect: Callable[[Path], bool]
    options: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    help: str = ""
