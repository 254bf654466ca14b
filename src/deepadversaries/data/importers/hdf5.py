"""HDF5 files: the ``hdf5`` importer (``deepadv import --input FILE.h5``).

One file with named datasets: images (N, B, H, W), or (N, H, W, B) (``band_axis=-1``; found by itself
when the last axis has at most :data:`MAX_TRAILING_BANDS` entries and the image side more, as in
Galaxy10 DECaLS's ``images`` uint8 (N, 256, 256, 3)), or (N, H, W) for one band; labels (N,) as
integers or (byte) strings, or one-hot (N, K) (``labels``, or Galaxy10's ``ans`` when the file has no
``labels``); optional split (N,) strings, ids (N,) and a second domain's images of the same shape, in
the same order; the file's other per-image (N,) datasets (e.g. ``ra``, ``dec``, ``redshift``) become
catalogue columns. Or one group per domain and split: ``/{domain}/{split}/images`` and
``/{source}/{split}/labels`` (``groups``). Any byte order and numeric dtype is read; datasets are
sliced ``chunk`` images at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from deepadversaries import SPLITS
from deepadversaries.data.importers.base import ImportOptions, Source, name_list
from deepadversaries.errors import OptionError, file_error

#: file-name endings of HDF5 files
HDF5_SUFFIXES: tuple[str, ...] = (".h5", ".hdf5", ".he5", ".hdf")



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
    """Open an HDF5 file (see :func:`deepadversaries.data.importing.import_hdf5` for the arguments)."""
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


def build_source(inputs: Mapping[str, Any], options: ImportOptions) -> Source:
    """The ``hdf5`` format's builder (:class:`~deepadversaries.data.importers.base.ImporterSpec`): open the
    file ``inputs["--input"]`` with the command line's key options.

    Args:
        inputs: command-line option name -> value (None when not given): ``--input`` required;
            ``--images-key`` [default: "images"], ``--labels-key``, ``--split-key``, ``--ids-key``,
            ``--target-images-key``, ``--augmentation-key``, ``--groups`` ("deep,wide"), ``--band-axis`` (int).
        options: the checked shared options.

    Returns:
        The opened :class:`~deepadversaries.data.importers.base.Source`.
    """
    if inputs.get("--input") is None:
        raise OptionError("--format hdf5 needs --input (an HDF5 file)")
    groups = inputs.get("--groups")
    return hdf5_source(inputs["--input"], images_key=inputs.get("--images-key") or "images",
                       labels_key=inputs.get("--labels-key"), split_key=inputs.get("--split-key"),
                       ids_key=inputs.get("--ids-key"), target_images_key=inputs.get("--target-images-key"),
                       augmentation_key=inputs.get("--augmentation-key"),
                       groups=name_list(groups, "--groups") if groups is not None else None,
                       bands=name_list(options.bands, "--bands") if options.bands is not None else None,
                       band_axis=inputs.get("--band-axis"))
