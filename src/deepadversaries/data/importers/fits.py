"""FITS cutouts listed in a catalogue: the ``fits`` importer (``deepadv import --catalog``).

A catalogue (FITS binary table or CSV) with a column of cutout paths (relative to the catalogue's
folder), one file per galaxy: a cube (bands on the first numpy axis, or ``band_axis``) in the primary
HDU or the first image HDU, or one 2-D HDU per band (``bands`` names their EXTNAMEs, or ``hdus``
their numbers). A label column (class names or integers), optional id, split, augmentation and
second-domain (``target_path_column``) columns; the catalogue's other plain columns are copied into
the dataset's catalogues. Scaled integers (BZERO/BSCALE, e.g. int16 from a cutout service) are read
as BZERO + BSCALE x stored value, scaled in float64 and rounded once to float32 (no memory map for
those files); BLANK pixels become NaN and so are refused like any NaN pixel (:func:`_physical`). FITS
is big-endian; the result is native float32. Missing cutouts are refused before the first is read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from deepadversaries.data.importers.base import (
    ImportOptions, Source, masked_values, name_list, plain_values, record_name, split_names, text_value,
)
from deepadversaries.errors import FileError, OptionError, file_error
from deepadversaries.io import sha256_of

FITS_SUFFIXES: tuple[str, ...] = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")



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
    """Open a catalogue of FITS cutouts (see :func:`deepadversaries.data.importing.import_fits` for the arguments)."""
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
        format="fits", nan_hint="FITS BLANK pixels read as NaN", path=catalog, root=root, n=len(table),
        labels=cols["--label-column"],
        label_what=f"column {label_column!r}", ids=cols["--id-column"], augmentations=cols["--augmentation-column"],
        splits=cols["--split-column"], split_what=f"column {split_column!r}", n_domains=len(paths),
        image_shape=shape, bands=band_names, read=_fits_reader(catalog, root, paths, layouts, shape, hashes),
        locate=lambda domain, row: (paths[domain][row], f"row {row + 1} of {catalog.name}"),
        extra=_extra_columns(table, cols), files={record_name(catalog, root): catalog}, hashes=hashes,
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
        missing = masked_values(col)
        values = plain_values(col)
        domain_paths = []
        for i in range(len(col)):
            text = "" if missing[i] else text_value(values[i])
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
            name = record_name(p, root)
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


def hdu_numbers(hdus: str | Sequence[int] | None) -> list[int] | None:
    """``--hdus 1,2,3`` (or a sequence) as HDU numbers (``None`` stays ``None``)."""
    try:
        return [int(h) for h in split_names(hdus)] if hdus is not None else None  # type: ignore[arg-type]
    except ValueError:
        raise OptionError(f"--hdus takes comma-separated HDU numbers, e.g. 1,2,3; got {hdus!r}") from None


def build_source(inputs: Mapping[str, Any], options: ImportOptions) -> Source:
    """The ``fits`` format's builder (:class:`~deepadversaries.data.importers.base.ImporterSpec`): open the
    catalogue ``inputs["--catalog"]`` with the command line's column options.

    Args:
        inputs: command-line option name -> value (None when not given): ``--catalog``, ``--path-column``
            and ``--label-column`` required; ``--id-column``, ``--split-column``, ``--augmentation-column``,
            ``--target-path-column``, ``--hdus`` ("1,2,3"), ``--band-axis`` (int) [default: 0].
        options: the checked shared options (``bands``: cube planes or EXTNAMEs).

    Returns:
        The opened :class:`~deepadversaries.data.importers.base.Source`.
    """
    missing = [name for name in ("--catalog", "--path-column", "--label-column") if inputs.get(name) is None]
    if missing:
        raise OptionError(f"--format fits needs {', '.join(missing)} (e.g. --catalog cat.csv "
                          "--path-column file --label-column class)")
    band_axis = inputs.get("--band-axis")
    return fits_source(inputs["--catalog"], path_column=inputs["--path-column"],
                       label_column=inputs["--label-column"], id_column=inputs.get("--id-column"),
                       split_column=inputs.get("--split-column"),
                       augmentation_column=inputs.get("--augmentation-column"),
                       target_path_column=inputs.get("--target-path-column"),
                       bands=name_list(options.bands, "--bands") if options.bands is not None else None,
                       hdus=hdu_numbers(inputs.get("--hdus")), band_axis=band_axis if band_axis is not None else 0)
