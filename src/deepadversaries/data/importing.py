"""The import stage: convert a user's data into a dataset folder, checked once (``deepadv import``).

The package has one internal format, the dataset folder (SPEC 3.6, :mod:`deepadversaries.data.dataset`).
This module is the stage: a registered format (:mod:`deepadversaries.data.importers.registry`) opens the
user's files as a :class:`~deepadversaries.data.importers.base.Source`; :func:`run_import` resolves the
labels, ids and split (:mod:`deepadversaries.data.importers.base`), streams the images into the folder
(:mod:`deepadversaries.data.writer`) and fits the normalisation. The built-in formats (each module
documents its layouts):

- **FITS** cutouts listed in a catalogue (:func:`import_fits`, :mod:`~deepadversaries.data.importers.fits`;
  scaled integers BZERO/BSCALE read exactly, BLANK pixels refused as NaN);
- **HDF5** named datasets, Galaxy10 DECaLS, or one group per domain and split (:func:`import_hdf5`,
  :mod:`~deepadversaries.data.importers.hdf5`);
- **npy**: a folder in the dataset layout (:func:`import_npy`, :mod:`~deepadversaries.data.importers.npy`).

Another format registered in the registry imports with :func:`import_data` (and ``deepadv import
--format NAME``).

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
galaxy; HDF5 datasets sliced; ``.npy`` files read by rows with :class:`~deepadversaries.data.importers.base.NpyRows`) and
written at their place in the ``.npy`` files; input files
are checksummed (SHA-256) in 1 MiB blocks; the normalisation is fitted as
:mod:`deepadversaries.data.stretches` says (at most 256 MiB). Peak memory is about a few
``chunk`` images plus the per-row catalogue (labels, ids, splits, extra columns), whatever
the number of images.

Determinism: the same input and options give the same arrays, split and constants
(``created`` and the absolute ``root`` aside).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from deepadversaries import SPLITS, __version__
from deepadversaries.data import stretches
from deepadversaries.data.dataset import image_file, label_file
from deepadversaries.data.importers.base import (
    DEFAULT_DOMAIN_NAMES, SPLIT_FRACTIONS, ImportOptions, NpyRows, Source, assign_splits, masked_values,
    plain_values, resolve_ids, resolve_labels,
)
from deepadversaries.data.importers.registry import build_source, get_format
from deepadversaries.data.writer import (
    DATASET_JSON, SLOTS, catalog_file, catalog_writer, check_output_folder, clear_dataset_files,
    close_image_files, csv_cell, open_image_files, pwrite_all, swap_in, write_error,
)
from deepadversaries.errors import OptionError, file_error
from deepadversaries.formatting import utc_now
from deepadversaries.io import LOCK_NAME, OutputLock, sha256_of, write_npy
from deepadversaries.progress import make_progress

IMPORT_VERSION = 1
#: the folder inside ``OUT`` an import writes into before swapping its files into place
WORK_DIR = ".import"
#: catalogue columns written first in every ``catalog_{split}.csv``
CATALOG_FIELDS: tuple[str, ...] = ("galaxy_id", "augmentation", "label")


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Start clean (remove an interrupted import); refuse a finished or foreign non-empty folder."""
    work = out / WORK_DIR
    if work.exists():
        shutil.rmtree(work, ignore_errors=True)
        if not (out / DATASET_JSON).exists():  # interrupted while renaming: its files are incomplete
            clear_dataset_files(out)
    if (out / DATASET_JSON).exists() and not overwrite:
        raise file_error(out, "already holds a dataset; use --overwrite to replace it or choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME)
    if others and not overwrite:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise file_error(out, f"output folder is not empty ({shown}); choose an empty or new folder, or use "
                              "--overwrite to replace its dataset files")


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
        if opts.classes is None and source.default_classes is not None:  # e.g. an npy folder's dataset.json
            opts = replace(opts, classes=list(source.default_classes)).checked()
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
        if source.path.is_dir() and out.resolve() == source.path.resolve():  # e.g. an npy folder
            raise OptionError("--out must be another folder than --input")
        check_output_folder(out)
        created = not out.exists()
        try:
            with OutputLock(out, "import"):
                _prepare_out(out, opts.overwrite)
                meta = _build(out, source, opts, classes, labels, galaxy_ids, user_ids, augs, split, mode, slots,
                              dict(zip(slots, names)))
                swap_in(out, out / WORK_DIR, meta)
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
            open_image_files(work, slots, counts_per, shape, fds)
            _copy_images(work, source, opts.chunk, slots, split, positions, fds, progress)
            close_image_files(fds)
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
                        pwrite_all(fd, np.ascontiguousarray(block[rows]).data,
                                    offset + int(positions[a + rows[0]]) * row_bytes)
                    except OSError as exc:
                        raise write_error(work / image_file(d, SPLITS[s]), exc) from exc
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
        blank = f" ({source.nan_hint})" if source.nan_hint else ""
        raise file_error(path, f"{where}: {nbad} NaN or infinite pixel{'s' if nbad > 1 else ''} "
                               f"(first at band {band}, y {y}, x {x}){blank}; replace them (e.g. by 0 or "
                               "the sky level) or drop the row")


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
    extra_values = {name: plain_values(col) for name, col in source.extra.items() if name in extra_names}
    extra_masks = {name: masked_values(col) for name, col in source.extra.items() if name in extra_names}
    counts: dict[str, Any] = {}
    for s, name in enumerate(SPLITS):
        rows = np.flatnonzero(split == s)
        write_npy(work / label_file(name), eye[labels[rows]])
        fh, writer = catalog_writer(work / catalog_file(name), fields)
        with fh:
            for i in rows:
                line = [int(galaxy_ids[i]), augs[i] if augs is not None else "none", classes[labels[i]],
                        int(i) + source.row_offset]
                if user_ids is not None:
                    line.append(user_ids[i])
                line += ["" if extra_masks[c][i] else csv_cell(extra_values[c][i]) for c in extra_names]
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
    return import_data(out, "fits", {
        "--catalog": catalog, "--path-column": path_column, "--label-column": label_column, "--id-column": id_column,
        "--split-column": split_column, "--augmentation-column": augmentation_column,
        "--target-path-column": target_path_column, "--hdus": hdus, "--band-axis": band_axis}, options)


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
    return import_data(out, "hdf5", {
        "--input": file, "--images-key": images_key, "--labels-key": labels_key, "--split-key": split_key,
        "--ids-key": ids_key, "--target-images-key": target_images_key, "--augmentation-key": augmentation_key,
        "--groups": groups, "--band-axis": band_axis}, options)


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
    return import_data(out, "npy", {"--input": folder}, options)


def import_data(out: str | Path, format: str, inputs: Mapping[str, Any], options: ImportOptions | None = None) -> Path:
    """Import the user's data with a registered format (what ``deepadv import`` runs).

    Args:
        out: dataset folder to write (new or empty, unless ``options.overwrite``).
        format: a name of :data:`deepadversaries.data.importers.registry.FORMATS`.
        inputs: command-line option name -> value (None when not given), as the format's spec reads them
            (e.g. ``{"--input": path, "--images-key": "x"}``).
        options: the shared options.

    Returns:
        ``out``.
    """
    spec = get_format(format)
    options = (options or ImportOptions()).checked()  # bad options fail before any reading
    return run_import(out, build_source(spec, inputs, options), options)
