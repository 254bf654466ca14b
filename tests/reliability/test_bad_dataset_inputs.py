"""Bad datasets, generated: every corruption is refused with a DeepAdvError naming a file, or loads clean.

The fixed cases of ``tests/test_data.py`` show the messages; here hypothesis throws
truncations at any byte, flipped bytes, arrays of any shape and dtype, NaN/inf anywhere,
non-one-hot rows, mismatched lengths, pickled objects and arbitrary ``dataset.json``
values at the loader, and checks that it never fails any other way (no IndexError deep
inside training) and never hands out non-finite model input.
"""

from __future__ import annotations

import json
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from deepadversaries import SPLITS
from deepadversaries.cli import main
from deepadversaries.data.dataset import image_file, label_file, load_dataset
from deepadversaries.errors import DeepAdvError

from conftest import make_toy_dataset

from .conftest import snapshot

N = {"train": 6, "valid": 3, "test": 3}
SIZE = 12
ARRAY_FILES = [image_file(d, s) for d in ("Y10", "Y1") for s in SPLITS] + [label_file(s) for s in SPLITS]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    path = make_toy_dataset(tmp_path_factory.mktemp("pristine") / "data", n=N, size=SIZE, seed=3)
    # with a catalogue and metadata as the simulator writes them
    for split in SPLITS:
        rows = "galaxy_id,augmentation\n" + "".join(f"{i},none\n" for i in range(N[split]))
        (path / f"catalog_{split}.csv").write_text(rows)
    stretch = {d: [float(v) for v in np.percentile(np.load(path / image_file(d, "train")), (0.1, 99.9))]
               for d in ("Y10", "Y1")}
    (path / "dataset.json").write_text(json.dumps({"kind": "deepadv-dataset", "stretch": stretch}))
    return path


def load_everything(path: Path) -> None:
    """What the stages do with a dataset: validate, stretch every array, read labels and galaxy ids."""
    ds = load_dataset(path)
    ds.validate()
    for split in SPLITS:
        labels = ds.labels(split)
        assert set(labels.tolist()) <= {0, 1, 2}
        ids = ds.galaxy_ids(split)
        assert len(ids) == len(labels)
        for domain in ds.domains:
            x = ds.images(domain, split)
            assert x.shape == (len(labels), *ds.image_shape)
            assert np.isfinite(x).all(), "non-finite model input was handed out"


def check_refused_or_clean(path: Path) -> str:
    """The property: loading either succeeds with clean data or raises a DeepAdvError naming a file in ``path``."""
    try:
        load_everything(path)
    except DeepAdvError as exc:
        message = str(exc)
        assert message.startswith(str(path)), message
        assert "\n" not in message
        return "refused"
    return "accepted"


def corrupt_and_check(pristine: Path, mutate) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data"
        shutil.copytree(pristine, path)
        mutate(path)
        return check_refused_or_clean(path)


def test_pristine_dataset_loads(pristine):
    assert check_refused_or_clean(pristine) == "accepted"


@SETTINGS
@given(name=st.sampled_from(ARRAY_FILES + ["dataset.json", "catalog_test.csv"]),
       fraction=st.floats(0, 1, exclude_max=True))
def test_truncated_files(pristine, name, fraction):
    def mutate(path):
        data = (path / name).read_bytes()
        (path / name).write_bytes(data[: int(fraction * len(data))])

    outcome = corrupt_and_check(pristine, mutate)
    if name.endswith(".npy"):
        assert outcome == "refused", f"{name} cut at {fraction:.3f} was accepted"


@SETTINGS
@given(name=st.sampled_from(ARRAY_FILES), data=st.data())
def test_flipped_bytes(pristine, name, data):
    size = (pristine / name).stat().st_size
    edits = data.draw(st.lists(st.tuples(st.integers(0, size - 1), st.integers(0, 255)), min_size=1, max_size=8))

    def mutate(path):
        raw = bytearray((path / name).read_bytes())
        for offset, value in edits:
            raw[offset] = value
        (path / name).write_bytes(bytes(raw))

    corrupt_and_check(pristine, mutate)


ANY_ARRAY = hnp.arrays(
    dtype=st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes(),
                    hnp.complex_number_dtypes(), hnp.unicode_string_dtypes(max_len=3)),
    shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))


@SETTINGS
@given(name=st.sampled_from(ARRAY_FILES), array=ANY_ARRAY)
def test_arrays_of_any_shape_and_dtype(pristine, name, array):
    corrupt_and_check(pristine, lambda path: np.save(path / name, array))


@SETTINGS
@given(name=st.sampled_from(ARRAY_FILES[:6]), data=st.data(),
       value=st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nan_and_inf_pixels(pristine, name, data, value):
    shape = np.load(pristine / name, mmap_mode="r").shape
    index = tuple(data.draw(st.integers(0, n - 1)) for n in shape)

    def mutate(path):
        a = np.load(path / name)
        a[index] = value
        np.save(path / name, a)

    assert corrupt_and_check(pristine, mutate) == "refused"


@SETTINGS
@given(split=st.sampled_from(SPLITS), data=st.data())
def test_labels_that_are_not_one_hot(pristine, split, data):
    n = N[split]
    row = data.draw(st.integers(0, n - 1))
    bad = data.draw(st.lists(st.floats(-2, 2) | st.just(np.nan), min_size=3, max_size=3)
                    .filter(lambda r: sorted(r) != [0.0, 0.0, 1.0]))

    def mutate(path):
        a = np.load(path / label_file(split))
        a[row] = bad
        np.save(path / label_file(split), a)

    assert corrupt_and_check(pristine, mutate) == "refused"


@SETTINGS
@given(name=st.sampled_from(ARRAY_FILES + ["catalog_valid.csv"]), keep=st.integers(0, 2))
def test_mismatched_lengths(pristine, name, keep):
    def mutate(path):
        if name.endswith(".csv"):
            lines = (path / name).read_text().splitlines()
            (path / name).write_text("\n".join(lines[: 1 + keep]) + "\n")
        else:
            np.save(path / name, np.load(path / name)[:keep])

    assert corrupt_and_check(pristine, mutate) == "refused"


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)


@SETTINGS
@given(whole=st.booleans(), value=JSON, domain=st.sampled_from(["Y10", "Y1"]))
def test_dataset_json_with_wrong_types_or_unknown_keys(pristine, whole, value, domain):
    def mutate(path):
        meta = json.loads((path / "dataset.json").read_text())
        if whole:
            meta["stretch"] = value  # the whole table
        else:
            meta["stretch"][domain] = value
        meta["unknown_key"] = value
        (path / "dataset.json").write_text(json.dumps(meta))

    corrupt_and_check(pristine, mutate)


class Payload:
    """Unpickling this would create ``marker``: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pickle code ran"))


@pytest.mark.parametrize("name", [label_file("train"), image_file("Y1", "test")])
def test_pickled_object_arrays_are_refused_without_running_code(pristine, tmp_path, name):
    path = tmp_path / "data"
    shutil.copytree(pristine, path)
    marker = tmp_path / "pwned"
    np.save(path / name, np.array([Payload(marker)] * 3, dtype=object), allow_pickle=True)
    assert check_refused_or_clean(path) == "refused"
    (path / name).write_bytes(pickle.dumps(Payload(marker)))  # a bare pickle under a .npy name
    assert check_refused_or_clean(path) == "refused"
    assert not marker.exists(), "unpickling ran code"


def test_cli_refuses_a_corrupt_dataset_in_one_line_and_writes_nothing(pristine, tmp_path, capsys):
    path = tmp_path / "data"
    shutil.copytree(pristine, path)
    a = np.load(path / image_file("Y1", "test"))
    a[1, 2, 3, 4] = np.nan
    np.save(path / image_file("Y1", "test"), a)
    before = snapshot(path)
    figure = tmp_path / "fig.png"
    assert main(["plot", "examples", "--data", str(path), "--out", str(figure)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {path / image_file('Y1', 'test')}: image 1 has NaN or infinite pixels"
    assert snapshot(path) == before and not figure.exists()
