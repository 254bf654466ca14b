"""The dataset loader: published layout, stretch, validation of bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deepadversaries.cli import main
from deepadversaries.data.dataset import (
    apply_stretch,
    image_file,
    invert_stretch,
    label_file,
    load_dataset,
    stretch_constants,
)
from deepadversaries.errors import DeepAdvError

from conftest import make_toy_dataset


def test_stretch_matches_formula():
    rng = np.random.default_rng(1)
    x = rng.normal(0, 30, (4, 3, 10, 10)).astype(np.float32)
    x[0, 0, 0, 0] = 5000.0
    lo, hi = stretch_constants(x)
    assert lo == pytest.approx(np.percentile(x, 0.1)) and hi == pytest.approx(np.percentile(x, 99.9))
    y = apply_stretch(x, lo, hi)
    ref = (np.arcsinh(0.85 * np.clip(x, lo, hi) / hi) + 1) / 2
    np.testing.assert_allclose(y, ref, rtol=1e-6)
    assert y.dtype == np.float32 and y.max() == pytest.approx((np.arcsinh(0.85) + 1) / 2)
    inside = (x > lo) & (x < hi)
    np.testing.assert_allclose(invert_stretch(y, hi)[inside], x[inside], rtol=1e-4, atol=1e-3)


def test_published_layout_loads(toy_dataset):
    ds = load_dataset(toy_dataset)
    assert ds.domains == ("Y10", "Y1")
    assert ds.image_shape == (3, 100, 100)
    train = np.load(toy_dataset / image_file("Y10", "train"))
    lo, hi = ds.stretch("Y10")
    assert (lo, hi) == pytest.approx(stretch_constants(train))
    # valid and test reuse the training split's constants
    valid_raw = np.load(toy_dataset / image_file("Y10", "valid"))
    np.testing.assert_array_equal(ds.images("Y10", "valid"), apply_stretch(valid_raw, lo, hi))
    labels = ds.labels("test")
    np.testing.assert_array_equal(labels, np.load(toy_dataset / label_file("test")).argmax(1))
    x, y = ds.torch_dataset("Y1", "test")[3]
    assert x.shape == (3, 100, 100) and x.dtype == torch.float32 and int(y) == labels[3]
    assert ds.catalog("train") == [] and list(ds.galaxy_ids("valid")) == list(range(len(ds.labels("valid"))))
    assert isinstance(ds.images("Y10", "train", stretched=False), np.memmap)


@pytest.fixture
def small(tmp_path):
    return make_toy_dataset(tmp_path / "d", n={"train": 9, "valid": 3, "test": 6}, size=20)


def _corrupt(path, case):
    if case == "missing":
        (path / image_file("Y10", "test")).unlink()
        return "images_Y10_test.npy: file not found"
    if case == "truncated":
        f = path / image_file("Y1", "train")
        f.write_bytes(f.read_bytes()[:500])
        return "images_Y1_train.npy: not a readable .npy array"
    if case == "shape":
        np.save(path / image_file("Y10", "train"), np.zeros((9, 100, 100), np.float32))
        return "expected images of shape"
    if case == "dtype":
        np.save(path / image_file("Y10", "train"), np.zeros((9, 3, 20, 20), np.int32))
        return "expected float images"
    if case == "nan":
        a = np.load(path / image_file("Y1", "valid"))
        a[2, 1, 5, 5] = np.nan
        np.save(path / image_file("Y1", "valid"), a)
        return "image 2 has NaN or infinite pixels"
    if case == "onehot":
        a = np.load(path / label_file("valid"))
        a[1] = [0.5, 0.5, 0]
        np.save(path / label_file("valid"), a)
        return "label 1 is not one-hot"
    if case == "length":
        a = np.load(path / image_file("Y1", "test"))
        np.save(path / image_file("Y1", "test"), a[:4])
        return "4 images but labels_test.npy has 6 labels"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing", "truncated", "shape", "dtype", "nan", "onehot", "length"])
def test_bad_files_are_named(small, case):
    expected = _corrupt(small, case)
    with pytest.raises(DeepAdvError, match=expected.replace("(", r"\(")):
        load_dataset(small).validate()


def test_missing_folder():
    with pytest.raises(DeepAdvError, match="dataset folder not found"):
        load_dataset("/nonexistent/folder")


def test_cli_error_is_one_line_exit_2(tmp_path, capsys):
    code = main(["plot", "gm20", "--data", str(tmp_path / "nope")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
