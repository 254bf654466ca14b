"""Adding an input format is one builder and one registry entry: a toy format (a folder of ``.txt`` arrays
with a ``labels.txt``) registered from this file alone imports through ``deepadv import`` -- named with
``--format`` or recognised by its ``detect`` -- into a dataset folder that ``load_dataset`` reads back
exactly (pixels and labels compared with the files written here)."""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from deepadversaries import SPLITS
from deepadversaries.cli import main
from deepadversaries.data.dataset import load_dataset
from deepadversaries.data.importers.base import ImporterSpec, ImportOptions, Source
from deepadversaries.data.importers.registry import (
    FORMATS, formats_help, guess_format, register_format, unregister_format,
)
from deepadversaries.errors import OptionError

#: bands, height and width of the toy images
SHAPE = (2, 6, 5)


def txt_source(inputs: Mapping[str, Any], options: ImportOptions) -> Source:
    """A folder of ``NAME.txt`` images ((B x H) rows of W numbers) listed with their labels in ``labels.txt``."""
    folder = Path(inputs["--input"])
    rows = [line.split() for line in (folder / "labels.txt").read_text().splitlines() if line.strip()]
    files = [folder / name for name, _ in rows]

    def read(domain: int, start: int, stop: int) -> np.ndarray:
        return np.stack([np.loadtxt(files[i], dtype=np.float64).reshape(SHAPE) for i in range(start, stop)]
                        ).astype(np.float32)

    return Source(format="txt", path=folder, root=folder, n=len(rows), labels=np.array([lab for _, lab in rows]),
                  label_what="labels.txt", ids=None, augmentations=None, splits=None, split_what="labels.txt",
                  n_domains=1, image_shape=SHAPE, bands=list(options.bands or ("u", "v")), read=read,
                  locate=lambda domain, row: (files[row], f"row {row + 1} of labels.txt"),
                  files={"labels.txt": folder / "labels.txt"})


SPEC = ImporterSpec("txt", "--input", txt_source, lambda path: (Path(path) / "labels.txt").is_file(),
                    suffixes=(".txt",), help="a folder of .txt arrays and labels.txt")


@pytest.fixture()
def txt_format() -> Iterator[ImporterSpec]:
    register_format(SPEC)
    try:
        yield SPEC
    finally:
        unregister_format("txt")
    assert "txt" not in FORMATS


def _write_folder(folder: Path, n: int = 15) -> tuple[np.ndarray, list[str]]:
    """n images (distinct: each holds its index) and alternating labels a, b, c; returns them."""
    folder.mkdir()
    rng = np.random.default_rng(3)
    images = rng.normal(100.0, 10.0, (n, *SHAPE)).round(3)
    images[:, 0, 0, 0] = np.arange(n)
    labels = ["abc"[i % 3] for i in range(n)]
    lines = []
    for i in range(n):
        np.savetxt(folder / f"gal{i:03d}.txt", images[i].reshape(-1, SHAPE[2]), fmt="%.3f")
        lines.append(f"gal{i:03d}.txt {labels[i]}")
    (folder / "labels.txt").write_text("\n".join(lines) + "\n")
    return images, labels


def _check_dataset(out: Path, images: np.ndarray, labels: list[str]) -> None:
    """Every imported image and label equals the file's, found by the catalogue's source row."""
    ds = load_dataset(out)
    assert tuple(ds.classes) == ("a", "b", "c") and tuple(ds.bands) == ("u", "v") and tuple(ds.image_shape) == SHAPE
    seen = []
    for split in SPLITS:
        with open(out / f"catalog_{split}.csv", newline="") as fh:
            source_rows = [int(r["source_row"]) - 1 for r in csv.DictReader(fh)]
        raw = np.asarray(ds.images("Y10", split, stretched=False))
        np.testing.assert_array_equal(raw, images[source_rows].astype(np.float32))
        assert [ds.classes[k] for k in ds.labels(split)] == [labels[i] for i in source_rows]
        seen += source_rows
    assert sorted(seen) == list(range(len(labels)))


def test_a_registered_format_imports_through_the_command_line(txt_format, tmp_path, capsys):
    images, labels = _write_folder(tmp_path / "txt")
    out = tmp_path / "named"
    assert main(["import", "--out", str(out), "--input", str(tmp_path / "txt"), "--format", "txt",
                 "--stretch", "zscore"]) == 0, capsys.readouterr().err
    _check_dataset(out, images, labels)
    # without --format the registered format's detect recognises the folder before the built-ins
    assert guess_format({"--input": tmp_path / "txt"}) == "txt"
    assert main(["import", "--out", str(tmp_path / "guessed"), "--input", str(tmp_path / "txt")]) == 0
    _check_dataset(tmp_path / "guessed", images, labels)
    # another format's option is refused; the help lists the format
    assert main(["import", "--out", str(tmp_path / "x"), "--input", str(tmp_path / "txt"), "--format", "txt",
                 "--images-key", "x"]) == 2
    assert "--images-key does not apply to --format txt" in capsys.readouterr().err
    assert "txt (--input: a folder of .txt arrays and labels.txt)" in formats_help()


def test_built_in_detection_and_registration_rules(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file.h5").write_bytes(b"")
    assert guess_format({"--catalog": tmp_path / "cat.csv", "--input": None}) == "fits"
    assert guess_format({"--input": tmp_path / "folder"}) == "npy"
    assert guess_format({"--input": tmp_path / "file.h5"}) == "hdf5"
    with pytest.raises(OptionError, match="give --catalog"):
        guess_format({})
    with pytest.raises(OptionError, match="registered already"):
        register_format(FORMATS["npy"])
    with pytest.raises(OptionError, match="built-in"):
        unregister_format("fits")
