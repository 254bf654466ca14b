"""`deepadv import`: FITS / HDF5 / npy round trips, splits, checksums, bad input, bounded memory.

Every input is written here with astropy and h5py; every round trip compares the imported
arrays with the originals, found through the catalogue's source row.
"""

from __future__ import annotations

import csv
import hashlib
import json
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import typer
from astropy.io import fits
from astropy.table import Table
from conftest import make_toy_dataset

from deepadversaries import SPLITS
from deepadversaries.cli import import_data
from deepadversaries.data.dataset import apply_stretch, load_dataset, stretch_constants
from deepadversaries.errors import DeepAdvError, FileError, OptionError
from deepadversaries.data.importers.base import ImportOptions, split_sizes
from deepadversaries.data.importing import WORK_DIR, import_fits, import_hdf5, import_npy
from deepadversaries.data.stretches import apply as apply_norm

# -- generated inputs --------------------------------------------------------------------


def fake_images(n: int, shape: tuple[int, int, int], seed: int = 0, offset: float = 0.0) -> np.ndarray:
    """Noise plus a blob whose brightness grows with the index: distinct, finite images."""
    rng = np.random.default_rng(seed)
    b, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    blob = np.exp(-((yy - h / 2) ** 2 + (xx - w / 2) ** 2) / (2 * (h / 8) ** 2))
    x = rng.normal(0, 5, (n, b, h, w)) + (50 + np.arange(n))[:, None, None, None] * blob + offset
    return x.astype(np.float32)


def write_cubes(folder: Path, images: np.ndarray, prefix: str = "g", dtype: str = ">f4") -> list[str]:
    """One FITS cube per image in the primary HDU (big-endian, as FITS stores it); relative paths."""
    (folder / "cutouts").mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        name = f"cutouts/{prefix}{i:04d}.fits"
        fits.PrimaryHDU(img.astype(dtype)).writeto(folder / name)
        names.append(name)
    return names


def write_hdu_per_band(folder: Path, images: np.ndarray, bands: list[str], prefix: str) -> list[str]:
    """One FITS file per image: an empty primary HDU and one 2-D image HDU per band (EXTNAME = band)."""
    (folder / "cutouts").mkdir(parents=True, exist_ok=True)
    names = []
    for i, img in enumerate(images):
        name = f"cutouts/{prefix}{i:04d}.fits"
        hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(img[k], name=band) for k, band in enumerate(bands)]
        fits.HDUList(hdus).writeto(folder / name)
        names.append(name)
    return names


def write_csv_catalog(path: Path, columns: dict[str, list]) -> Path:
    keys = list(columns)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for row in zip(*(columns[k] for k in keys)):
            w.writerow(row)
    return path


def read_split(out: Path, split: str, slot: str = "Y10") -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    images = np.load(out / f"images_{slot}_{split}.npy")
    labels = np.load(out / f"labels_{split}.npy")
    with open(out / f"catalog_{split}.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return images, labels, rows


def opts(**kw) -> ImportOptions:
    return ImportOptions(progress=False, **kw)


@pytest.fixture
def cube_catalog(tmp_path) -> tuple[Path, np.ndarray, list[str]]:
    """40 cubes 1 x 64 x 64 of 4 classes, one domain, CSV catalogue with integer ids."""
    images = fake_images(40, (1, 64, 64))
    names = write_cubes(tmp_path / "in", images)
    labels = [["spiral", "elliptical", "merger", "edge-on"][i % 4] for i in range(40)]
    cat = write_csv_catalog(tmp_path / "in" / "cat.csv", {
        "file": names, "morph": labels, "objid": [5000 + 7 * i for i in range(40)],
        "mag_r": [20.0 + i / 10 for i in range(40)]})
    return cat, images, labels


def import_cubes(cat: Path, out: Path, **kw) -> Path:
    o = kw.pop("options", None) or opts(classes=["spiral", "elliptical", "merger", "edge-on"])
    return import_fits(out, cat, path_column="file", label_column="morph", id_column="objid", options=o, **kw)


# -- round trips ----------------------------------------------------------------------------


def test_fits_cube_round_trip(cube_catalog, tmp_path):
    cat, images, labels = cube_catalog
    out = import_cubes(cat, tmp_path / "ds")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["origin"] == "import" and meta["kind"] == "deepadv-dataset"
    assert meta["classes"] == ["spiral", "elliptical", "merger", "edge-on"]
    assert meta["image_shape"] == [1, 64, 64] and meta["bands"] == ["band0"]
    assert meta["domains"] == ["Y10"] and meta["domain_names"] == {"Y10": "source"}
    assert not any(out.glob("images_Y1_*")) and not (out / WORK_DIR).exists()
    seen = []
    for split in SPLITS:
        x, y, rows = read_split(out, split)
        assert x.dtype == np.float32 and x.shape[1:] == (1, 64, 64)
        src = np.array([int(r["source_row"]) - 1 for r in rows])
        np.testing.assert_array_equal(x, images[src])  # bit-exact, despite big-endian FITS
        assert [meta["classes"][k] for k in y.argmax(1)] == [labels[i] for i in src]
        assert [int(r["galaxy_id"]) for r in rows] == [5000 + 7 * i for i in src]
        assert [float(r["mag_r"]) for r in rows] == pytest.approx([20.0 + i / 10 for i in src])
        assert list(src) == sorted(src)  # source order kept within a split
        assert meta["counts"][split]["total"] == len(rows)
        seen += list(src)
    assert sorted(seen) == list(range(40))
    # paper stretch: the constants of the training split, readable by today's loader
    train = np.load(out / "images_Y10_train.npy")
    assert meta["stretch"]["Y10"] == pytest.approx(list(stretch_constants(train)), rel=1e-12)
    assert meta["normalisation"]["kind"] == "paper"
    assert meta["normalisation"]["params"]["Y10"]["high"] == meta["stretch"]["Y10"][1]


def test_fits_table_catalog_hdu_per_band_two_domains(tmp_path):
    """2 bands as named HDUs, two domains, a FITS binary-table catalogue with text ids and a split column."""
    n, bands = 30, ["g", "r"]
    deep, wide = fake_images(n, (2, 24, 20), seed=1), fake_images(n, (2, 24, 20), seed=2, offset=3.0)
    folder = tmp_path / "in"
    deep_names = write_hdu_per_band(folder, deep, bands, "deep")
    wide_names = write_hdu_per_band(folder, wide, bands, "wide")
    split = [SPLITS[0] if i % 10 < 6 else SPLITS[1] if i % 10 < 8 else SPLITS[2] for i in range(n)]
    labels = [i % 3 for i in range(n)]
    Table({"deep": deep_names, "wide": wide_names, "cls": labels, "name": [f"J{i:05d}+01" for i in range(n)],
           "split": split}).write(folder / "cat.fits")
    out = import_fits(tmp_path / "ds", folder / "cat.fits", path_column="deep", target_path_column="wide",
                      label_column="cls", id_column="name", split_column="split",
                      options=opts(bands="g,r", classes="spiral,elliptical,merger", domain_names="deep,wide"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["domains"] == ["Y10", "Y1"] and meta["domain_names"] == {"Y10": "deep", "Y1": "wide"}
    assert meta["bands"] == ["g", "r"] and meta["image_shape"] == [2, 24, 20]
    assert meta["source"]["layout"]["fits"] == "hdus" and meta["split"]["mode"] == "column"
    for s in SPLITS:
        rows = read_split(out, s)[2]
        src = np.array([int(r["source_row"]) - 1 for r in rows])
        assert all(split[i] == s for i in src) and len(src) == split.count(s)
        np.testing.assert_array_equal(read_split(out, s, "Y10")[0], deep[src])
        np.testing.assert_array_equal(read_split(out, s, "Y1")[0], wide[src])
        assert [r["source_id"] for r in rows] == [f"J{i:05d}+01" for i in src]
        assert [meta["classes"][k] for k in read_split(out, s)[1].argmax(1)] == \
            [["spiral", "elliptical", "merger"][labels[i]] for i in src]
    for slot, other in (("Y10", deep), ("Y1", wide)):
        train = np.load(out / f"images_{slot}_train.npy")
        assert meta["stretch"][slot] == pytest.approx(list(stretch_constants(train)), rel=1e-12)


def test_hdf5_round_trip_two_domains(tmp_path):
    n = 45
    images = fake_images(n, (4, 32, 32), seed=3)
    target = fake_images(n, (4, 32, 32), seed=4, offset=-2)
    names = np.array([b"disk", b"bulge", b"irregular"])[np.arange(n) % 3]
    with h5py.File(tmp_path / "g.h5", "w") as h5:
        h5["images"] = images
        h5["shallow/images"] = target
        h5["meta/class"] = names
        h5["meta/id"] = np.arange(n) * 3 + 11
    out = import_hdf5(tmp_path / "ds", tmp_path / "g.h5", labels_key="meta/class", ids_key="meta/id",
                      target_images_key="shallow/images", options=opts(classes="disk,bulge,irregular"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["source"]["format"] == "hdf5" and meta["image_shape"] == [4, 32, 32]
    assert meta["split"] == {"mode": "stratified", "seed": 0, "fractions": [0.7, 0.1, 0.2]}
    total = 0
    for s in SPLITS:
        x, y, rows = read_split(out, s)
        src = np.array([int(r["source_index"]) for r in rows])
        np.testing.assert_array_equal(x, images[src])
        np.testing.assert_array_equal(read_split(out, s, "Y1")[0], target[src])
        np.testing.assert_array_equal(y.argmax(1), src % 3)
        assert [int(r["galaxy_id"]) for r in rows] == list(src * 3 + 11)
        total += len(src)
    assert total == n


def test_hdf5_groups_per_domain_and_split(tmp_path):
    """/{domain}/{split}/images and /{source}/{split}/labels: the groups give the split and the domain names."""
    sizes = {"train": 9, "valid": 3, "test": 6}
    deep = {s: fake_images(k, (2, 10, 12), seed=i) for i, (s, k) in enumerate(sizes.items())}
    wide = {s: x + 1 for s, x in deep.items()}
    with h5py.File(tmp_path / "g.h5", "w") as h5:
        for s in SPLITS:
            h5[f"deep/{s}/images"], h5[f"wide/{s}/images"] = deep[s], wide[s]
            h5[f"deep/{s}/labels"] = np.arange(sizes[s]) % 3
    out = import_hdf5(tmp_path / "ds", tmp_path / "g.h5", groups="deep,wide", options=opts(stretch="zscore"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["domain_names"] == {"Y10": "deep", "Y1": "wide"} and meta["split"]["mode"] == "column"
    assert meta["source"]["layout"]["hdf5"] == "groups"
    for s in SPLITS:
        np.testing.assert_array_equal(np.load(out / f"images_Y10_{s}.npy"), deep[s])
        np.testing.assert_array_equal(np.load(out / f"images_Y1_{s}.npy"), wide[s])
        np.testing.assert_array_equal(np.load(out / f"labels_{s}.npy").argmax(1), np.arange(sizes[s]) % 3)
    with h5py.File(tmp_path / "g.h5", "a") as h5:
        h5["deep/test/images"][0, 1, 2, 3] = np.nan
    with pytest.raises(FileError, match=r"g.h5: deep/test/images\[0\]: 1 NaN or infinite pixel \(first at band 1, "
                                        r"y 2, x 3\)"):
        import_hdf5(tmp_path / "ds2", tmp_path / "g.h5", groups="deep,wide", options=opts())
    assert not (tmp_path / "ds2").exists()


def test_hdf5_bands_last_three_classes_load_with_todays_loader(tmp_path):
    """(N, H, W, B) with --band-axis -1; 3 bands and 3 classes, so today's data.py reads the folder as it is."""
    images = fake_images(30, (3, 16, 16), seed=5)
    with h5py.File(tmp_path / "g.h5", "w") as h5:
        h5["x"] = np.moveaxis(images, 1, -1)
        h5["y"] = (np.arange(30) // 3) % 3
        h5["split"] = np.array([b"train", b"valid", b"test"] * 10)
    out = import_hdf5(tmp_path / "ds", tmp_path / "g.h5", images_key="x", labels_key="y", split_key="split",
                      band_axis=-1, options=opts())
    ds = load_dataset(out)
    ds.validate()
    src = np.array([int(r["source_index"]) for r in ds.catalog("test")])
    np.testing.assert_array_equal(ds.images("Y10", "test", stretched=False), images[src])
    lo, hi = ds.stretch("Y10")
    np.testing.assert_array_equal(ds.images("Y10", "test"), apply_stretch(images[src], lo, hi))
    assert list(ds.galaxy_ids("test")) == list(src)


def test_npy_folder_copied_with_validation(tmp_path):
    src = make_toy_dataset(tmp_path / "toy", n={"train": 12, "valid": 6, "test": 6}, size=16)
    out = import_npy(tmp_path / "ds", src, options=opts(stretch="zscore", domain_names="Y10,Y1"))
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["classes"] == ["spiral", "elliptical", "merger"] and meta["stretch"] == "zscore"
    for s in SPLITS:
        for slot in ("Y10", "Y1"):
            np.testing.assert_array_equal(np.load(out / f"images_{slot}_{s}.npy"),
                                          np.load(src / f"images_{slot}_{s}.npy"))
        np.testing.assert_array_equal(np.load(out / f"labels_{s}.npy"), np.load(src / f"labels_{s}.npy"))
    with pytest.raises(OptionError, match="another folder"):
        import_npy(src, src, options=opts())


# -- splits --------------------------------------------------------------------------------


def _split_of(out: Path) -> dict[int, str]:
    return {int(r["source_row"]) - 1: s for s in SPLITS for r in read_split(out, s)[2]}


def test_stratified_split_proportions_seeding_and_groups(tmp_path):
    """Per class 70:10:20; same seed same split, another seed another; copies of one id in one split."""
    n_gal = 60
    ids, augs, labels, files = [], [], [], []
    classes = ["a", "b", "c"]
    counts = {"a": 30, "b": 20, "c": 10}
    gal_class = [c for c in classes for _ in range(counts[c])]
    images = fake_images(1, (1, 8, 8))
    names = write_cubes(tmp_path / "in", images)
    for g in range(n_gal):
        copies = ["none", "hflip"] if gal_class[g] == "c" else ["none"]
        for a in copies:
            ids.append(100 + g)
            augs.append(a)
            labels.append(gal_class[g])
            files.append(names[0])
    cat = write_csv_catalog(tmp_path / "in" / "cat.csv", {"f": files, "y": labels, "id": ids, "aug": augs})

    def run(seed: int, name: str) -> Path:
        return import_fits(tmp_path / name, cat, path_column="f", label_column="y", id_column="id",
                           augmentation_column="aug", options=opts(seed=seed))

    a, b, c = run(0, "a"), run(0, "b"), run(1, "c")
    split_a = _split_of(a)
    assert split_a == _split_of(b)
    assert split_a != _split_of(c)
    # the row order does not matter: the same galaxy ids land in the same splits
    write_csv_catalog(cat, {"f": files[::-1], "y": labels[::-1], "id": ids[::-1], "aug": augs[::-1]})
    reversed_split = {ids[len(ids) - 1 - row]: s for row, s in _split_of(run(0, "r")).items()}
    assert reversed_split == {ids[row]: s for row, s in split_a.items()}
    for out in (a, c):
        split = _split_of(out)
        by_id: dict[int, set[str]] = {}
        for row, s in split.items():
            by_id.setdefault(ids[row], set()).add(s)
        assert all(len(v) == 1 for v in by_id.values())  # no galaxy id in two splits
        for cls in classes:
            gal = [g for g in range(n_gal) if gal_class[g] == cls]
            got = tuple(sum(1 for g in gal if by_id[100 + g] == {s}) for s in SPLITS)
            assert got == split_sizes(len(gal))
        meta = json.loads((out / "dataset.json").read_text())
        assert meta["counts"]["test"]["galaxies"] == sum(split_sizes(k)[2] for k in counts.values())
    assert split_sizes(30) == (21, 3, 6) and split_sizes(10) == (7, 1, 2)


def test_split_column_is_honoured(cube_catalog, tmp_path):
    cat, images, labels = cube_catalog
    table = Table.read(cat, format="ascii.csv")
    table["part"] = ["test" if i < 8 else "Val" if i < 16 else "train" for i in range(40)]
    table.write(cat, format="ascii.csv", overwrite=True)
    out = import_cubes(cat, tmp_path / "ds", split_column="part")
    split = _split_of(out)
    assert all(split[i] == ("test" if i < 8 else "valid" if i < 16 else "train") for i in range(40))
    assert json.loads((out / "dataset.json").read_text())["split"]["mode"] == "column"


# -- checksums, stretches, options ---------------------------------------------------------


def test_checksums_equal_hashlib(cube_catalog, tmp_path):
    cat, _, _ = cube_catalog
    out = import_cubes(cat, tmp_path / "ds")
    files = json.loads((out / "dataset.json").read_text())["source"]["files"]
    expected = {p.relative_to(cat.parent).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in [cat, *sorted((cat.parent / "cutouts").iterdir())]}
    assert files == expected


@pytest.mark.parametrize("stretch", ["zscore", "asinh:8", "none"])
def test_other_stretches_recorded(cube_catalog, tmp_path, stretch):
    cat, images, _ = cube_catalog
    out = import_cubes(cat, tmp_path / "ds", options=opts(stretch=stretch, classes="spiral,elliptical,merger,edge-on"))
    meta = json.loads((out / "dataset.json").read_text())
    norm = meta["normalisation"]
    assert norm["kind"] == stretch.split(":")[0] and meta["stretch"] == norm["kind"]
    train = np.load(out / "images_Y10_train.npy")
    y = apply_norm(norm["kind"], norm["params"]["Y10"], train)
    if stretch == "zscore":
        assert y.mean() == pytest.approx(0, abs=1e-5) and y.std() == pytest.approx(1, abs=1e-5)
    elif stretch == "none":
        np.testing.assert_array_equal(y, train)
    else:
        assert norm["params"]["Y10"]["Q"] == 8.0
        assert norm["params"]["Y10"]["scale"][0] == pytest.approx(np.percentile(train, 99.9))


def test_overwrite_replaces_and_drops_a_stale_domain(tmp_path):
    n = 30
    two = fake_images(n, (1, 8, 8), seed=1)
    with h5py.File(tmp_path / "two.h5", "w") as h5:
        h5["images"], h5["t"], h5["labels"] = two, two + 1, np.arange(n) % 2
    with h5py.File(tmp_path / "one.h5", "w") as h5:
        h5["images"], h5["labels"] = two, np.arange(n) % 2
    out = import_hdf5(tmp_path / "ds", tmp_path / "two.h5", target_images_key="t", options=opts())
    assert (out / "images_Y1_test.npy").exists()
    with pytest.raises(FileError, match="--overwrite"):
        import_hdf5(out, tmp_path / "one.h5", options=opts())
    import_hdf5(out, tmp_path / "one.h5", options=opts(overwrite=True))
    assert not any(out.glob("images_Y1_*")) and json.loads((out / "dataset.json").read_text())["domains"] == ["Y10"]
    # a failing import with --overwrite keeps the old dataset
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        bad = two.copy()
        bad[n - 1, 0, 3, 4] = np.nan
        h5["images"], h5["labels"] = bad, np.arange(n) % 2
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileError, match=r"images\[29\]"):
        import_hdf5(out, tmp_path / "bad.h5", options=opts(overwrite=True, chunk=4))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_interrupted_import_starts_clean(cube_catalog, tmp_path):
    cat, images, _ = cube_catalog
    out = tmp_path / "ds"
    (out / WORK_DIR).mkdir(parents=True)
    (out / WORK_DIR / "images_Y10_train.npy").write_bytes(b"half")
    (out / "images_Y10_valid.npy").write_bytes(b"renamed before the kill")
    import_cubes(cat, out)
    assert not (out / WORK_DIR).exists()
    assert np.load(out / "images_Y10_valid.npy").shape[1:] == (1, 64, 64)


def test_cli_import_and_help(cube_catalog, tmp_path):
    from typer.testing import CliRunner

    app, plot_app = typer.Typer(), typer.Typer()
    import_data.register(app, plot_app)

    @app.command("other")
    def other() -> None:  # a second command, so that "import" is a sub-command as in deepadv
        pass

    runner = CliRunner()
    cat, _, _ = cube_catalog
    result = runner.invoke(app, ["import", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--catalog", "--path-column", "--label-column", "--split-column", "--target-path-column",
                   "--images-key", "--labels-key", "--target-images-key", "--stretch", "--chunk", "--classes",
                   "--bands", "--hdus", "--band-axis", "--domain-names", "--overwrite", "--seed", "--format"):
        assert option in result.output
    result = runner.invoke(app, ["import", "--out", str(tmp_path / "ds"), "--catalog", str(cat), "--path-column",
                                 "file", "--label-column", "morph", "--stretch", "asinh:4", "--chunk", "7"])
    assert result.exit_code == 0, result.output
    assert "one domain only" in result.output
    meta = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert meta["source"]["options"]["chunk"] == 7 and meta["classes"] == ["edge-on", "elliptical", "merger", "spiral"]
    result = runner.invoke(app, ["import", "--out", str(tmp_path / "e"), "--catalog", str(cat), "--path-column",
                                 "file", "--label-column", "morph", "--images-key", "x"])
    assert isinstance(result.exception, OptionError) and "--format fits" in str(result.exception)
    result = runner.invoke(app, ["import", "--out", str(tmp_path / "e"), "--catalog", str(cat), "--path-column",
                                 "file", "--label-column", "morph", "--stretch", "log"])
    assert isinstance(result.exception, OptionError) and "--stretch" in str(result.exception)
    assert not (tmp_path / "e").exists()


# -- bad input ------------------------------------------------------------------------------


def _bad_csv(folder: Path, n: int = 12, **changes) -> tuple[Path, list[str]]:
    images = fake_images(n, (1, 8, 8))
    names = write_cubes(folder, images)
    cols = {"file": names, "y": [["a", "b"][i % 2] for i in range(n)], "id": list(range(n))}
    cols.update(changes)
    return write_csv_catalog(folder / "cat.csv", cols), names


def _case_missing_column(folder):
    cat, _ = _bad_csv(folder)
    return dict(catalog=cat, label_column="morph"), "no column 'morph'", cat, None


def _case_missing_cutout(folder):
    cat, names = _bad_csv(folder)
    (folder / names[5]).unlink()
    return {}, "not found", cat, 6


def _case_other_shape(folder):
    cat, names = _bad_csv(folder)
    (folder / names[7]).unlink()
    fits.PrimaryHDU(np.zeros((1, 8, 9), np.float32)).writeto(folder / names[7])
    return {}, r"shape \(1, 8, 9\) differs from the first cutout's \(1, 8, 8\)", folder / names[7], 8


def _case_label_outside_classes(folder):
    cat, _ = _bad_csv(folder, y=["a", "b"] * 5 + ["a", "c"])
    return dict(classes="a,b"), "label 'c'.*not one of --classes", cat, 12


def _case_nan_pixels(folder):
    cat, names = _bad_csv(folder)
    (folder / names[9]).unlink()
    img = np.ones((1, 8, 8), np.float32)
    img[0, 2, 3] = np.inf
    fits.PrimaryHDU(img).writeto(folder / names[9])
    return {}, r"NaN or infinite.*band 0, y 2, x 3", folder / names[9], 10


def _case_duplicate_id(folder):
    cat, _ = _bad_csv(folder, id=[0, 1, 2, 3, 4, 5, 6, 3, 8, 9, 10, 11])
    return {}, "row 4 and row 8 have the same galaxy id 3", cat, 8


def _case_bad_split_value(folder):
    cat, _ = _bad_csv(folder, split=["train"] * 5 + ["holdout"] + ["test"] * 6)
    return dict(split_column="split"), "split 'holdout'", cat, 6


def _case_split_missing_class(folder):
    cat, _ = _bad_csv(folder, split=["train"] * 4 + ["valid", "valid"] + ["test", "test"] + ["train"] * 4,
                      y=["a", "b"] * 2 + ["a", "a"] + ["a", "b"] + ["a", "b"] * 2)
    return dict(split_column="split"), "split 'valid'.*no galaxy of class 'b'", cat, None


def _case_one_class(folder):
    cat, _ = _bad_csv(folder, y=["a"] * 12)
    return {}, "only 1 class", cat, None


def _case_empty_label(folder):
    cat, _ = _bad_csv(folder, y=["a", "b"] * 3 + [""] + ["b", "a"] * 2 + ["b"])
    return {}, "empty label", cat, 7


def _case_unreadable_cutout(folder):
    cat, names = _bad_csv(folder)
    (folder / names[3]).write_bytes(b"not a fits file at all")
    return {}, "not a readable FITS", folder / names[3], 4


def _case_too_few_for_stratified(folder):
    cat, _ = _bad_csv(folder, y=["a"] * 10 + ["b", "b"])
    return {}, "class 'b' has 2 galaxies", cat, None


BAD_CASES = {name[6:]: f for name, f in list(globals().items()) if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_line_naming_file_and_row_nothing_written(tmp_path, case):
    kwargs, pattern, named, row = BAD_CASES[case](tmp_path / "in")
    args = dict(catalog=tmp_path / "in" / "cat.csv", path_column="file", label_column="y", id_column="id")
    args.update(kwargs)
    o = opts(classes=args.pop("classes", None), chunk=4)
    out = tmp_path / "ds"
    with pytest.raises(DeepAdvError) as info:
        import_fits(out, args.pop("catalog"), options=o, **args)
    message = str(info.value)
    assert isinstance(info.value, FileError), message
    assert "\n" not in message and message.startswith(str(named)), message
    import re

    assert re.search(pattern, message), message
    if row is not None:
        assert re.search(rf"row {row}\b", message), message
    assert not out.exists(), "a failed import left its folder behind"


def test_existing_non_empty_out_is_refused(cube_catalog, tmp_path):
    cat, _, _ = cube_catalog
    out = tmp_path / "ds"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileError, match="not empty.*--overwrite") as info:
        import_cubes(cat, out)
    assert str(info.value).startswith(str(out))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_bad_options(cube_catalog, tmp_path):
    cat, _, _ = cube_catalog
    for o, pattern in ((opts(classes="a"), "at least 2"), (opts(chunk=0), "--chunk"),
                       (opts(stretch="asinh:-1"), "Q must be"), (opts(domain_names="a,b"), "--domain-names"),
                       (opts(classes="a,a"), "twice")):
        with pytest.raises(OptionError, match=pattern):
            import_cubes(cat, tmp_path / "ds", options=o)
    assert not (tmp_path / "ds").exists()
    with pytest.raises(FileError, match="no dataset 'imgs'.*/images"):
        with h5py.File(tmp_path / "g.h5", "w") as h5:
            h5["images"], h5["labels"] = np.zeros((3, 1, 4, 4)), np.arange(3)
        import_hdf5(tmp_path / "ds", tmp_path / "g.h5", images_key="imgs", options=opts())


def _h5(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as h5:
        for key, value in datasets.items():
            h5[key.replace("__", "/")] = value
    return path


def test_bad_hdf5_and_npy_inputs_name_the_file_and_index(tmp_path):
    x, y = fake_images(12, (1, 6, 6)), np.arange(12) % 2
    nan = x.copy()
    nan[7, 0, 1, 1] = np.nan
    cases = [
        (dict(images=x, labels=y[:11]), {}, r"dataset 'labels' \(--labels-key\) has shape \(11,\)"),
        (dict(images=x, labels=y, t=x[:, :, :5]), dict(target_images_key="t"), "'t' holds images of shape"),
        (dict(images=nan, labels=y), {}, r"images\[7\]: 1 NaN"),
        (dict(images=x, labels=y, s=np.array([b"train"] * 11 + [b"dev"])), dict(split_key="s"),
         "index 11: split 'dev'"),
        (dict(images=x, labels=np.eye(2)[y] * 2), {}, "index 0: labels .* are not one-hot"),
        (dict(images=x, labels=y + 0.5), {}, "index 0: label 0.5 .* neither a class name nor an integer"),
        (dict(images=x.astype(np.complex64), labels=y), {}, "expected numbers"),
    ]
    for k, (datasets, kw, pattern) in enumerate(cases):
        path = _h5(tmp_path / f"bad{k}.h5", **datasets)
        with pytest.raises(FileError, match=pattern) as info:
            import_hdf5(tmp_path / f"ds{k}", path, options=opts(chunk=4), **kw)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
        assert not (tmp_path / f"ds{k}").exists()
    folder = make_toy_dataset(tmp_path / "toy", n={"train": 6, "valid": 3, "test": 3}, size=8)
    bad = np.load(folder / "images_Y1_valid.npy")
    bad[2, 1, 0, 0] = np.inf
    np.save(folder / "images_Y1_valid.npy", bad)
    with pytest.raises(FileError, match=r"images_Y1_valid.npy: image 2: 1 NaN or infinite pixel"):
        import_npy(tmp_path / "npy", folder, options=opts())
    (folder / "labels_test.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FileError, match="labels_test.npy: not a readable .npy"):
        import_npy(tmp_path / "npy", folder, options=opts())
    assert not (tmp_path / "npy").exists()


# -- bounded memory ---------------------------------------------------------------------------


def _traced_import(folder: Path, n: int, shape: tuple[int, int, int]) -> tuple[int, int]:
    """(traced peak bytes of importing n FITS cubes with --chunk 8, the images' bytes)."""
    images = fake_images(n, shape, seed=n)
    names = write_cubes(folder, images)
    cat = write_csv_catalog(folder / "cat.csv", {"file": names, "y": [i % 2 for i in range(n)]})
    size = images.nbytes
    del images
    tracemalloc.start()
    try:
        import_fits(folder / "ds", cat, path_column="file", label_column="y", options=opts(chunk=8, fit_sample=16))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(len(np.load(folder / "ds" / f"labels_{s}.npy")) for s in SPLITS) == n
    return peak, size


def test_import_memory_is_bounded_by_the_chunk(tmp_path):
    """Cutouts of 2 x 64 x 64 in chunks of 8: the traced peak stays far below the dataset and hardly grows with it.

    A first small import loads every module the import uses, so that their memory is not counted.
    """
    shape = (2, 64, 64)
    _traced_import(tmp_path / "warm", 12, shape)
    small_peak, small_size = _traced_import(tmp_path / "small", 100, shape)
    peak, size = _traced_import(tmp_path / "large", 400, shape)  # 13 MB of images
    chunk_bytes = 8 * int(np.prod(shape)) * 4
    assert peak < size / 4, (peak, size)
    assert peak < 12 * chunk_bytes + 16 * int(np.prod(shape)) * 4 + 1_000_000, (peak, chunk_bytes)
    # 4x the images, the peak grows only by the per-row catalogue (about 1 kB a row)
    assert peak - small_peak < (size - small_size) / 20, (small_peak, peak)


# -- scaled integers, byte order, Galaxy10 (through `deepadv import`) ------------------------


def deepadv(*args: str) -> int:
    """Run `deepadv ARGS` in this process; its exit status."""
    from deepadversaries.cli import main

    return main([str(a) for a in args])


def _stored_catalog(folder: Path, hdus_of: list[list[fits.ImageHDU]] | list, n_classes: int = 2) -> Path:
    """One FITS file per entry of ``hdus_of`` (an HDUList each) and a CSV catalogue with labels i % n_classes."""
    (folder / "cutouts").mkdir(parents=True, exist_ok=True)
    names = []
    for i, hdul in enumerate(hdus_of):
        name = f"cutouts/c{i:03d}.fits"
        fits.HDUList(hdul).writeto(folder / name)
        names.append(name)
    return write_csv_catalog(folder / "cat.csv", {"file": names, "y": [i % n_classes for i in range(len(names))]})


def _imported_by_source_row(out: Path, slot: str = "Y10") -> np.ndarray:
    """The imported images of every split, put back in source-row order."""
    rows, images = [], []
    for s in SPLITS:
        x, _, cat = read_split(out, s, slot)
        rows += [int(r["source_row"]) - 1 for r in cat]
        images.append(x)
    return np.concatenate(images)[np.argsort(rows)]


def _scaled_hdu(stored: np.ndarray, bscale: float, bzero: float, blank: int | None = None,
                extension: str | None = None) -> fits.ImageHDU | fits.PrimaryHDU:
    """An image HDU holding ``stored`` as written, with BSCALE/BZERO (/BLANK) keywords."""
    hdu = fits.ImageHDU(stored, name=extension) if extension else fits.PrimaryHDU(stored)
    hdu.header["BSCALE"], hdu.header["BZERO"] = bscale, bzero
    if blank is not None:
        hdu.header["BLANK"] = blank
    return hdu


@pytest.mark.parametrize("layout", ["int16-cube", "uint16", "int32-hdu-per-band", "uint8-signed"])
def test_scaled_integer_fits_read_as_bzero_plus_bscale(tmp_path, layout):
    """BZERO + BSCALE x stored, scaled in float64 and rounded once to float32 (memory-mapping refused these)."""
    rng = np.random.default_rng(7)
    n, shape = 12, (2, 9, 7)
    if layout == "int16-cube":
        stored = rng.integers(-32768, 32767, (n, *shape), dtype=np.int16)
        scale = [(0.0137, 1021.5)] * n
        files = [[_scaled_hdu(x, *scale[i])] for i, x in enumerate(stored)]
    elif layout == "uint16":  # astropy writes uint16 as int16 with BZERO = 32768: integers, kept exactly
        physical = rng.integers(0, 65535, (n, *shape), dtype=np.uint16)
        files = [[fits.PrimaryHDU(x)] for x in physical]
        stored, scale = (physical.astype(np.int64) - 32768), [(1.0, 32768.0)] * n
    elif layout == "int32-hdu-per-band":  # one 2-D HDU per band, each with its own scaling
        stored = rng.integers(-2**31, 2**31 - 1, (n, *shape), dtype=np.int32)
        scale = [[(1e-6 * (b + 1), -3.25 * b) for b in range(2)] for _ in range(n)]
        files = [[fits.PrimaryHDU()] + [_scaled_hdu(x[b], *scale[i][b], extension=band)
                                        for b, band in enumerate(("g", "r"))] for i, x in enumerate(stored)]
    else:  # BITPIX 8 is unsigned; BZERO = -128 is the signed-byte convention
        stored = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        scale = [(0.5, -128.0)] * n
        files = [[_scaled_hdu(x, *scale[i])] for i, x in enumerate(stored)]
    cat = _stored_catalog(tmp_path / "in", files)
    extra = ["--bands", "g,r"] if layout == "int32-hdu-per-band" else []
    assert deepadv("import", "--out", tmp_path / "ds", "--catalog", cat, "--path-column", "file",
                   "--label-column", "y", "--stretch", "zscore", *extra) == 0  # zscore: negative values too
    got = _imported_by_source_row(tmp_path / "ds")
    per_band = np.array(scale, dtype=np.float64).reshape(n, -1, 2)  # (n, 1 or bands, [bscale, bzero])
    bscale, bzero = per_band[..., 0, None, None], per_band[..., 1, None, None]
    expected = (bzero + bscale * stored.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(got, expected)
    # astropy's own scaling (no memory map) agrees to float32 rounding of the same sum
    for i, p in enumerate(sorted((tmp_path / "in" / "cutouts").glob("*.fits"))):
        with fits.open(p, memmap=False) as hdul:
            ref = np.stack([h.data.astype(np.float64) for h in hdul if h.data is not None]).reshape(shape)
        bound = 4 * np.finfo(np.float32).eps * (np.abs(bzero[i]) + np.abs(bscale[i] * stored[i]))
        assert np.all(np.abs(got[i] - ref) <= bound)


def test_fits_blank_pixels_are_refused_as_bad_pixels(tmp_path, capsys):
    """BLANK marks undefined pixels: read as NaN, so the cutout is refused naming it; BLANK unused imports."""
    stored = np.arange(12 * 36, dtype=np.int16).reshape(12, 1, 6, 6) - 200
    stored[5, 0, 4, 1] = -32768
    files = [[_scaled_hdu(x, 2.0, 10.0, blank=-32768)] for x in stored]
    cat = _stored_catalog(tmp_path / "in", files)
    assert deepadv("import", "--out", tmp_path / "ds", "--catalog", cat, "--path-column", "file",
                   "--label-column", "y") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "c005.fits: row 6 of cat.csv: 1 NaN or infinite pixel (first at band 0, y 4, x 1) " \
                                "(FITS BLANK pixels read as NaN)" in err, err
    assert not (tmp_path / "ds").exists()
    stored[5, 0, 4, 1] = 0  # the keyword alone changes nothing
    cat = _stored_catalog(tmp_path / "ok", [[_scaled_hdu(x, 2.0, 10.0, blank=-32768)] for x in stored])
    assert deepadv("import", "--out", tmp_path / "ds", "--catalog", cat, "--path-column", "file",
                   "--label-column", "y") == 0
    np.testing.assert_array_equal(_imported_by_source_row(tmp_path / "ds"), (10.0 + 2.0 * stored).astype(np.float32))


def test_big_endian_arrays_in_every_format(tmp_path):
    """Big-endian FITS (int16, float64), HDF5 (float64 images, int16 labels, int64 ids) and .npy: the same numbers."""
    rng = np.random.default_rng(3)
    n = 18
    ints = rng.integers(-30000, 30000, (n, 1, 8, 8)).astype(">i2")
    doubles = rng.normal(100.0, 30.0, (n, 1, 8, 8)).astype(">f8")
    for name, stored in (("int16", ints), ("float64", doubles)):
        cat = _stored_catalog(tmp_path / name, [[fits.PrimaryHDU(x)] for x in stored])
        assert deepadv("import", "--out", tmp_path / f"ds_{name}", "--catalog", cat, "--path-column", "file",
                       "--label-column", "y") == 0
        got = _imported_by_source_row(tmp_path / f"ds_{name}")
        assert got.dtype == np.dtype("<f4") or got.dtype.isnative
        np.testing.assert_array_equal(got, stored.astype(np.float32))
    with h5py.File(tmp_path / "be.h5", "w") as h5:
        h5.create_dataset("images", data=doubles)
        h5.create_dataset("labels", data=(np.arange(n) % 3).astype(">i2"))
        h5.create_dataset("ids", data=(np.arange(n) * 1001 + 2**40).astype(">i8"))
    assert deepadv("import", "--out", tmp_path / "ds_h5", "--input", tmp_path / "be.h5", "--ids-key", "ids") == 0
    for s in SPLITS:
        x, y, rows = read_split(tmp_path / "ds_h5", s)
        src = np.array([int(r["source_index"]) for r in rows])
        np.testing.assert_array_equal(x, doubles[src].astype(np.float32))
        np.testing.assert_array_equal(y.argmax(1), src % 3)
        assert [int(r["galaxy_id"]) for r in rows] == list(src * 1001 + 2**40)
    folder = make_toy_dataset(tmp_path / "toy", n={"train": 9, "valid": 3, "test": 3}, size=8)
    native = {f.name: np.load(f) for f in folder.glob("*.npy")}
    for name, a in native.items():
        np.save(folder / name, a.astype(a.dtype.newbyteorder(">")))
    assert np.load(folder / "images_Y10_train.npy").dtype.byteorder == ">"
    assert deepadv("import", "--out", tmp_path / "ds_npy", "--input", folder) == 0
    for name, a in native.items():
        np.testing.assert_array_equal(np.load(tmp_path / "ds_npy" / name), a)


GALAXY10_CLASSES = ("disturbed,merging,round-smooth,in-between-round-smooth,cigar-shaped-smooth,barred-spiral,"
                    "unbarred-tight-spiral,unbarred-loose-spiral,edge-on-without-bulge,edge-on-with-bulge")


def test_galaxy10_decals_layout_imports_without_keys(tmp_path):
    """Galaxy10 DECaLS's file: `images` uint8 (N, H, W, 3), `ans` integer labels, ra/dec/redshift per image."""
    rng = np.random.default_rng(10)
    n = 50
    images = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
    ans = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    ra, dec, z = rng.uniform(0, 360, n), rng.uniform(-20, 30, n), rng.uniform(0, 0.3, n)
    with h5py.File(tmp_path / "Galaxy10_DECals.h5", "w") as h5:
        h5["images"], h5["ans"], h5["ra"], h5["dec"], h5["redshift"] = images, ans, ra, dec, z
        h5["pxscale"] = np.full(n, 0.262)
    assert deepadv("import", "--out", tmp_path / "g10", "--input", tmp_path / "Galaxy10_DECals.h5",
                   "--bands", "g,r,z", "--classes", GALAXY10_CLASSES) == 0
    meta = json.loads((tmp_path / "g10" / "dataset.json").read_text())
    assert meta["image_shape"] == [3, 24, 24] and meta["bands"] == ["g", "r", "z"]
    assert meta["classes"] == GALAXY10_CLASSES.split(",")
    assert meta["source"]["options"]["labels_key"] == "ans" and meta["source"]["options"]["band_axis"] == -1
    seen = []
    for s in SPLITS:
        x, y, rows = read_split(tmp_path / "g10", s)
        src = np.array([int(r["source_index"]) for r in rows])
        np.testing.assert_array_equal(x, np.moveaxis(images[src], -1, 1).astype(np.float32))
        np.testing.assert_array_equal(y.argmax(1), ans[src])
        assert [r["label"] for r in rows] == [GALAXY10_CLASSES.split(",")[k] for k in ans[src]]
        for column, values in (("ra", ra), ("dec", dec), ("redshift", z)):
            assert [float(r[column]) for r in rows] == list(values[src])  # repr round trip: exact
        seen += list(src)
    assert sorted(seen) == list(range(n))
    # (N, B, H, W) with few bands stays bands-first; a wrong guess is overridden with --band-axis
    with h5py.File(tmp_path / "first.h5", "w") as h5:
        h5["images"], h5["ans"] = np.moveaxis(images, -1, 1), ans
    assert deepadv("import", "--out", tmp_path / "first", "--input", tmp_path / "first.h5") == 0
    assert json.loads((tmp_path / "first" / "dataset.json").read_text())["image_shape"] == [3, 24, 24]
    assert deepadv("import", "--out", tmp_path / "forced", "--input", tmp_path / "Galaxy10_DECals.h5",
                   "--band-axis", "1") == 0
    assert json.loads((tmp_path / "forced" / "dataset.json").read_text())["image_shape"] == [24, 24, 3]
