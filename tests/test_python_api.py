"""The Python API (docs/python-api.md): the lazy names of ``import deepadversaries as da``, the run handle
``da.Run`` and the in-memory entry point ``da.train``.

References are independent of the code under test: names are resolved here with importlib from the
table's strings, metrics are recomputed from the model's logits with a loop, the arrays written by
``da.train`` are compared with the given ones through the catalogue's ``source_index`` column, and the
attack files are read with ``csv``/``json`` directly.
"""

from __future__ import annotations

import csv
import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import deepadversaries as da
from deepadversaries import API, SPLITS
from deepadversaries.errors import FileError, OptionError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOC = Path(__file__).resolve().parents[1] / "docs" / "python-api.md"
SUBPACKAGES = ("simulation", "data", "models", "adaptation", "training", "evaluation", "attacks", "certify",
               "corruptions", "analysis", "reporting", "card", "workflow")


# -- the lazy names ------------------------------------------------------------------------------------------


def test_importing_the_package_imports_no_stage_and_no_torch():
    code = ("import sys, deepadversaries as da; da.CLASSES; dir(da); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy', 'lightning') "
            "or m.startswith('deepadversaries.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    # only the vocabulary: the method registry (no torch; it names METHODS and their labels) and the errors
    assert out.strip() == "['deepadversaries.errors', 'deepadversaries.methods']"
    # and a name is imported on first use, with what it needs
    code = "import sys, deepadversaries as da; da.Run; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "True"


def _expected(target: str):
    module, _, attribute = target.partition(":")
    mod = importlib.import_module(module)
    return vars(mod)[attribute] if attribute else mod


@pytest.mark.parametrize("name", sorted(API))
def test_every_public_name_resolves_to_the_object_its_module_defines(name):
    assert getattr(da, name) is _expected(API[name])
    assert name in dir(da) and name in da.__all__


def test_all_and_dir_come_from_the_table_and_the_vocabulary():
    assert set(da.__all__) == set(API) | set(da.VOCABULARY) | {"__version__"}
    assert len(da.__all__) == len(set(da.__all__))
    for word in da.VOCABULARY:
        assert word in vars(da)  # defined eagerly, not through the table
    assert {s for s in SUBPACKAGES} <= set(API)


def test_an_unknown_name_is_an_attribute_error_and_modules_still_import():
    with pytest.raises(AttributeError, match="no attribute 'no_such_stage'"):
        da.no_such_stage  # noqa: B018
    assert not hasattr(da, "no_such_stage")
    from deepadversaries import cpu_threads  # a top-level module, not in the table
    assert cpu_threads.__name__ == "deepadversaries.cpu_threads"


def test_subpackages_export_their_own_entries_and_keep_their_modules():
    for package in ("simulation", "models", "evaluation", "certify", "analysis", "reporting", "card"):
        sub = importlib.import_module(f"deepadversaries.{package}")
        own = {n for n, t in API.items() if t.startswith(f"deepadversaries.{package}.") and ":" in t}
        modules = {p.stem for p in Path(sub.__file__).parent.glob("*.py")}
        assert set(sub.__all__) == own - modules, package
        for name in sub.__all__:
            assert getattr(sub, name) is getattr(da, name)
            assert name in dir(sub)
        with pytest.raises(AttributeError):
            getattr(sub, "no_such_name")
    assert {"Run", "load_model", "RunConfig"} <= set(da.models.__all__)
    # a function named like one of the subpackage's modules is not exported there: the module wins
    from deepadversaries import subpackage_exports
    from deepadversaries.workflow import study
    assert subpackage_exports("deepadversaries.workflow") == {}
    assert study.__name__ == "deepadversaries.workflow.study"
    assert da.study is study.study


def _doc_table() -> dict[str, str]:
    rows = re.findall(r"^\| `da\.([A-Za-z_0-9]+)` \| `([a-z_.]+)` \|", DOC.read_text(), flags=re.M)
    assert len(rows) == len({n for n, _ in rows})
    return dict(rows)


def test_the_table_matches_the_docs_list():
    assert _doc_table() == {name: target.partition(":")[0] for name, target in API.items()}


# -- the run handle ------------------------------------------------------------------------------------------


@pytest.fixture
def run_copy(regular_run, tmp_path) -> Path:
    """A copy of the session's tiny regular run as training left it (its dataset is the session's toy data):
    what other tests wrote into the shared run (evaluation, attack folders) is not copied."""
    stage_outputs = shutil.ignore_patterns("metrics.json", "predictions.npz", "attack*", "robustness*", "certify")
    return Path(shutil.copytree(regular_run, tmp_path / "run", ignore=stage_outputs))


def test_run_handle_reads_config_model_metrics_and_dataset(run_copy, toy_dataset):
    run = da.Run(run_copy)
    stored = json.loads((run_copy / "config.json").read_text())
    assert (run.config.model, run.config.method, run.config.seed) == (stored["model"], stored["method"], stored["seed"])
    assert run.trained
    assert Path(run.dataset.path).resolve() == toy_dataset.resolve()
    assert "convnet regular" in repr(run) and "trained" in repr(run)

    with pytest.raises(FileError, match="not evaluated yet") as err:
        run.metrics  # noqa: B018
    assert "\n" not in str(err.value)

    x = torch.from_numpy(np.ascontiguousarray(run.dataset.images("Y10", "test")))
    model = run.model()
    assert not model.training
    with torch.no_grad():
        logits, _ = model(x)
        reference, _ = da.load_model(run_copy)(x)
    assert torch.equal(logits, reference)
    with torch.no_grad():
        assert torch.equal(run.model("Y1")(x)[0], reference)  # a regular run has one model for both domains

    da.evaluate_run(run_copy, device="cpu")
    assert run.metrics == json.loads((run_copy / "metrics.json").read_text())
    labels = run.dataset.labels("test")
    predicted = logits.argmax(1).numpy()
    correct = sum(1 for p, t in zip(predicted, labels) if p == t)
    assert run.metrics["Y10"]["accuracy"] == pytest.approx(correct / len(labels), abs=0)
    assert "evaluated" in repr(run)


def test_run_handle_attacks_by_search(run_copy):
    run = da.Run(run_copy)
    assert list(run.attacks) == [] and len(run.attacks) == 0
    with pytest.raises(KeyError, match="finished: none"):
        run.attacks["de"]
    da.attack_run(run_copy, da.AttackConfig.from_preset("tiny", seed=0), device="cpu")
    assert list(run.attacks) == ["de"] and "de" in run.attacks
    record = run.attacks["de"]
    assert record.summary == json.loads((run_copy / "attack" / "summary.json").read_text())
    with open(run_copy / "attack" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(record.results) == len(rows) == record.summary["attacked"]
    for parsed, raw in zip(record.results, rows):
        assert parsed["test_index"] == int(raw["test_index"]) and isinstance(parsed["test_index"], int)
        assert parsed["success"] is (raw["success"] == "True")
    with pytest.raises(KeyError, match="'exhaustive'.*finished: de"):
        run.attacks["exhaustive"]
    with pytest.raises(KeyError, match="searches: de, exhaustive"):
        run.attacks["nope"]
    assert "attacked: de" in repr(run)


def test_run_handle_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(FileError, match="not a run folder"):
        da.Run(tmp_path)


# -- da.train over arrays ---------------------------------------------------------------------------------------


def _arrays(n: int = 30, size: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Learnable float32 images (n, 3, size, size) of three classes, their Y1 versions, int labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    yy, xx = np.mgrid[0:size, 0:size] - size / 2
    widths = np.array([4.0, 1.5, 2.5])
    scenes = np.exp(-(xx**2 + yy**2)[None] / (2 * widths[labels, None, None] ** 2)) * 500
    images = (scenes[:, None] + rng.normal(0, 5, (n, 3, size, size))).astype(np.float32)
    shifted = (scenes[:, None] + rng.normal(0, 15, (n, 3, size, size))).astype(np.float32)
    return images, shifted, labels


def _written(data: Path) -> dict[str, dict[str, np.ndarray]]:
    """Per split: the source index of each image (catalogue) and the arrays, read with numpy."""
    out = {}
    for split in SPLITS:
        with open(data / f"catalog_{split}.csv", newline="") as fh:
            index = np.array([int(r["source_index"]) for r in csv.DictReader(fh)])
        out[split] = {"index": index, "Y10": np.load(data / f"images_Y10_{split}.npy"),
                      "Y1": np.load(data / f"images_Y1_{split}.npy"), "labels": np.load(data / f"labels_{split}.npy")}
    return out


def test_train_over_arrays_writes_them_exactly_and_trains(tmp_path):
    images, shifted, labels = _arrays()
    run = da.train(images, labels, domain_images=shifted, epochs=1, out=tmp_path / "work", device="cpu")
    assert isinstance(run, da.Run) and run.trained
    assert run.path == (tmp_path / "work" / "run").absolute()
    data = tmp_path / "work" / "data"
    assert Path(run.config.data) == data.resolve()
    dataset = da.load_dataset(data)
    assert dataset.classes == da.CLASSES and dataset.image_shape == (3, 16, 16)
    written = _written(data)
    seen = np.concatenate([w["index"] for w in written.values()])
    assert sorted(seen.tolist()) == list(range(len(images)))  # every image once
    for split, w in written.items():
        assert np.array_equal(w["index"], np.sort(w["index"]))  # source order kept within a split
        assert np.array_equal(w["Y10"], images[w["index"]])
        assert np.array_equal(w["Y1"], shifted[w["index"]])
        assert np.array_equal(dataset.images("Y10", split, stretched=False), images[w["index"]])
        assert np.array_equal(w["labels"], np.eye(3, dtype=np.float32)[labels[w["index"]]])
    with torch.no_grad():
        logits, _ = run.model()(torch.from_numpy(np.ascontiguousarray(dataset.images("Y10", "test"))))
    assert logits.shape == (len(written["test"]["index"]), 3)


def test_train_over_a_dataset_or_one_hot_labels_writes_the_same_folder(tmp_path):
    images, _, labels = _arrays(n=24, size=8, seed=1)
    pairs = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    from_dataset = da.train(pairs, epochs=1, classes=("a", "b", "c"), out=tmp_path / "ds", device="cpu")
    one_hot = np.eye(3, dtype=np.float32)[labels]
    from_arrays = da.train(images, one_hot, epochs=1, classes=("a", "b", "c"), out=tmp_path / "oh", device="cpu")
    for split in SPLITS:
        for name in (f"images_Y10_{split}.npy", f"labels_{split}.npy"):
            a, b = np.load(tmp_path / "ds" / "data" / name), np.load(tmp_path / "oh" / "data" / name)
            assert np.array_equal(a, b), name
    assert from_dataset.dataset.classes == from_arrays.config.classes == ("a", "b", "c")
    assert not (tmp_path / "ds" / "data" / "images_Y1_train.npy").exists()  # no second domain given


def test_train_without_out_keeps_its_temporary_folder(tmp_path, monkeypatch):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    images, _, labels = _arrays(n=15, size=8)
    run = da.train(images, labels, epochs=1, device="cpu")
    assert run.path.parent.parent == tmp_path and run.path.parent.name.startswith("deepadv-train-")
    assert da.load_dataset(run.path.parent / "data").image_shape == (3, 8, 8)


@pytest.mark.parametrize(("change", "message"), [
    (lambda x, y, s: (x[:, 0], y, s), r"images must have shape \(N, C, H, W\).*images\[:, None\]"),
    (lambda x, y, s: (x, y[:-1], s), "labels has 29 entries but images has 30"),
    (lambda x, y, s: (x, y, s[:, :2]), r"domain_images must have the same shape as images"),
    (lambda x, y, s: (x, y.astype(float) + 0.5, s), r"labels\[0\] = 0.5 is not a class index"),
    (lambda x, y, s: (x, -y, s), r"labels\[1\] = -1 is not a class index"),
    (lambda x, y, s: (x, np.ones((30, 3)), s), r"labels\[0\] is not a one-hot row"),
    (lambda x, y, s: (x, y[:, None, None], s), r"labels must be class indices \(N,\) or one-hot"),
    (lambda x, y, s: (np.where(np.arange(30)[:, None, None, None] == 4, np.nan, x), y, s),
     r"images\[4\] has NaN or infinite pixels"),
    (lambda x, y, s: (x.astype(complex), y, s), "images must hold real numbers"),
])
def test_bad_arrays_are_one_line_option_errors_before_anything_is_written(tmp_path, change, message):
    images, shifted, labels = _arrays()
    x, y, s = change(images, labels, shifted)
    with pytest.raises(OptionError, match=message) as err:
        da.train(x, y, domain_images=s, out=tmp_path / "work", device="cpu")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "work").exists()


def test_bad_arguments_around_the_arrays(tmp_path):
    images, _, labels = _arrays()
    with pytest.raises(OptionError, match="labels are missing"):
        da.train(images, out=tmp_path / "w")
    pairs = torch.utils.data.TensorDataset(torch.from_numpy(images), torch.from_numpy(labels))
    with pytest.raises(OptionError, match="inside the Dataset"):
        da.train(pairs, labels, out=tmp_path / "w")
    with pytest.raises(OptionError, match="class index 2 but classes names 2"):
        da.train(images, labels, classes=("a", "b"), out=tmp_path / "w")
    with pytest.raises(OptionError, match=r"splits must name one split per image, shape \(30,\)"):
        da.train(images, labels, splits=["train"] * 3, out=tmp_path / "w")
    with pytest.raises(OptionError, match="epochs"):
        da.train(images, labels, epochs=0, out=tmp_path / "w")
    assert not (tmp_path / "w").exists()
