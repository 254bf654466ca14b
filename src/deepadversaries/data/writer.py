"""Writing a dataset folder: the file names, the output folder's checks, and the streaming writer of an import.

One home for what ``deepadv import`` (:mod:`deepadversaries.data.importing`) and ``deepadv simulate``
(:mod:`deepadversaries.simulation.simulate`) write: the file names of a dataset folder
(:func:`~deepadversaries.data.dataset.image_file`, :func:`~deepadversaries.data.dataset.label_file`,
:func:`catalog_file`, :func:`dataset_files`, ``dataset.json`` last), the check of the output folder
(:func:`check_output_folder`), reserving a new array's blocks up front so that a full disk fails early
with ENOSPC (:func:`reserve_blocks`) and clearing a folder's dataset files (:func:`clear_dataset_files`).

The two stages fill the arrays differently and keep that apart: the simulator assembles its shards into
memory-mapped arrays renamed atomically into place (it resumes); the import streams rows with positional
writes into ``OUT/.import/`` (:func:`open_image_files`, :func:`pwrite_all`, :func:`close_image_files`),
writes labels and catalogues there (:func:`catalog_writer`, :func:`csv_cell`) and swaps the files into
place, ``dataset.json`` last (:func:`swap_in`). This module knows files, not formats. Contract: a
folder without ``dataset.json`` is unfinished.
"""

from __future__ import annotations

import csv
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from deepadversaries import SPLITS
from deepadversaries.data.dataset import image_file, label_file
from deepadversaries.errors import DeepAdvError, file_error
from deepadversaries.io import write_json

#: the metadata file, written last: a folder without it is unfinished
DATASET_JSON = "dataset.json"
#: the two domain slots of a dataset folder: the labelled training domain and the second (shifted) one
SLOTS: tuple[str, str] = ("Y10", "Y1")


def catalog_file(split: str) -> str:
    """File name of one split's catalogue."""
    return f"catalog_{split}.csv"


def dataset_files() -> list[str]:
    """Every file name a dataset folder may hold (``dataset.json`` first)."""
    names = [DATASET_JSON]
    for split in SPLITS:
        names += [image_file(s, split) for s in SLOTS] + [label_file(split), catalog_file(split)]
    return names


def clear_dataset_files(out: Path) -> None:
    """Remove every dataset file of ``out`` (:func:`dataset_files`; never anything else)."""
    for name in dataset_files():
        (out / name).unlink(missing_ok=True)


def pwrite_all(fd: int, data: bytes | memoryview, at: int) -> None:
    """Write all of ``data`` at byte ``at`` of the open file ``fd`` (positional writes, no memory map)."""
    view = memoryview(data).cast("B")
    pos = 0
    while pos < len(view):
        pos += os.pwrite(fd, view[pos:], at + pos)


def check_output_folder(out: Path) -> None:
    """Refuse (FileError) an ``out`` that is not a folder or cannot be created or written."""
    if out.exists() and not out.is_dir():
        raise file_error(out, "exists and is not a folder; choose a folder for --out")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise file_error(out, f"cannot create the output folder ({parent} is not a folder)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise file_error(out, f"cannot create or write the output folder (in {parent}): permission denied")


def reserve_blocks(path: Path) -> None:
    """Allocate a memory-mapped file's blocks now: a full disk fails here with ENOSPC, not with SIGBUS later."""
    if hasattr(os, "posix_fallocate"):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)


def write_error(path: Path, exc: OSError) -> DeepAdvError:
    """A one-line error for a full disk or a refused write to ``path``; any other OSError is raised again."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DeepAdvError(f"{path}: no space left on device; free some space and run again")
    if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return DeepAdvError(f"{path}: cannot write ({exc.strerror})")
    raise exc


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (renames) to disk, where the system allows it."""
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


def catalog_writer(path: Path, fields: list[str]) -> tuple[Any, Any]:
    """An open catalogue file and its CSV writer (``\\n`` line ends), the header ``fields`` written."""
    fh = open(path, "w", newline="", encoding="utf-8")
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(fields)
    return fh, writer


def csv_cell(v: Any) -> Any:
    """A catalogue cell: bytes decoded, floats as ``repr`` (round-trip exact), numpy scalars as Python's."""
    if isinstance(v, (bytes, np.bytes_)):
        return v.decode("utf-8", "replace")
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.generic):
        return v.item()
    if v is np.ma.masked:
        return ""
    return v


def open_image_files(work: Path, slots: list[str], counts_per: list[int], shape: tuple[int, int, int],
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
                reserve_blocks(path)
                fds[d, s] = (os.open(path, os.O_RDWR), offset)
            except OSError as exc:
                raise write_error(path, exc) from exc


def close_image_files(fds: dict[tuple[str, int], tuple[int, int]]) -> None:
    """Flush the image files to disk and close them (emptying ``fds``)."""
    for key in list(fds):
        fd, _ = fds.pop(key)
        os.fsync(fd)
        os.close(fd)


def swap_in(out: Path, work: Path, meta: dict[str, Any]) -> None:
    """Replace the dataset files of ``out`` by those of ``work`` (a folder inside ``out``); ``dataset.json``
    last, then ``work`` is removed."""
    (out / DATASET_JSON).unlink(missing_ok=True)  # from here on the folder reads as unfinished
    made = {p.name for p in work.iterdir()}
    for name in dataset_files():
        if name not in made:
            (out / name).unlink(missing_ok=True)  # e.g. an old Y1 domain the new data lacks
    for name in sorted(made):
        os.replace(work / name, out / name)
    fsync_dir(out)
    write_json(out / DATASET_JSON, meta)
    shutil.rmtree(work, ignore_errors=True)
