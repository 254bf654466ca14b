"""``--augment survey-mix``: the family split, the augmenter's draws (instrumented), its mixing, the
Jensen–Shannon term against SciPy, and a tiny training through ``deepadv train``.

References are independent of the module: the held-out corruptions are written out here by name; the
augmenter's draws are recorded by wrapping :func:`deepadversaries.corruptions.suite.corrupt`; the JS
term is computed with ``scipy.spatial.distance.jensenshannon`` (two distributions) and
``scipy.stats.entropy`` (the KL divergences of three, as AugMix averages them).
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import make_toy_dataset
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy
from typer.testing import CliRunner

from deepadversaries.cli import app, main
from deepadversaries.config import TrainConfig
from deepadversaries.corruptions import suite
from deepadversaries.corruptions.registry import CORRUPTIONS, CorruptionSpec, register_corruption, unregister_corruption
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import OptionError
from deepadversaries.models.runs import read_run_config
from deepadversaries.training.datamodule import AugmentedBatches, GalaxyDataModule
from deepadversaries.training.survey_mix import (
    JS_WEIGHT, N_VIEWS, SurveyMix, held_out_corruptions, js_consistency, js_divergence, training_corruptions,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: the built-in corruptions of the observing and scene families, written out: never trained on
HELD_OUT = {"seeing", "psf_ellipticity", "depth", "star_neighbour", "bleed", "blend", "satellite"}
#: the built-in detector and pipeline corruptions: what survey-mix draws from
TRAINED = {"cosmic_rays", "hot_pixels", "dead_pixels", "bad_columns", "sky_error", "background_gradient",
           "misregistration", "correlated_noise", "compression"}


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    return make_toy_dataset(tmp_path_factory.mktemp("surveymix") / "data", n={"train": 24, "valid": 12, "test": 12},
                            size=24)


@pytest.fixture
def recorder(monkeypatch):
    """Every (corruption, severity, number of images) the augmenter asks suite.corrupt for."""
    calls: list[tuple[str, int, int]] = []
    real = suite.corrupt

    def recording(images, name, severity, rng, *args, **kwargs):
        calls.append((name, int(severity), len(images)))
        return real(images, name, severity, rng, *args, **kwargs)

    monkeypatch.setattr(suite, "corrupt", recording)
    return calls


def _augmenter() -> SurveyMix:
    return SurveyMix(lambda raw: np.arcsinh(raw / 100.0).astype(np.float32))


def test_the_split_follows_the_families_and_covers_every_builtin():
    assert set(held_out_corruptions()) >= HELD_OUT and set(training_corruptions()) >= TRAINED
    assert not set(held_out_corruptions()) & set(training_corruptions())
    builtin = HELD_OUT | TRAINED
    assert {n for n in CORRUPTIONS if n in builtin} == builtin  # every built-in is on one side


def test_the_augmenter_draws_only_training_corruptions_over_many_batches(recorder):
    rng = np.random.default_rng(1)
    raw = rng.normal(40.0, 20.0, (6, 3, 16, 16)).astype(np.float32)
    augmenter = _augmenter()
    for batch in range(25):
        views = augmenter(raw, np.random.default_rng(batch))
        assert len(views) == N_VIEWS and all(v.shape == raw.shape and v.dtype == torch.float32 for v in views)
    names = {name for name, _, _ in recorder}
    assert names and not names & HELD_OUT
    assert names == TRAINED  # and every training corruption is drawn, at every severity
    assert {s for _, s, _ in recorder} == {1, 2, 3, 4, 5}
    # 2 views x 3 chains x depth 1-3 applications per image and batch
    applications = sum(k for _, _, k in recorder) / (25 * len(raw))
    assert 2 * 3 * 1 < applications < 2 * 3 * 3


def test_no_held_out_corruption_reaches_a_training_batch(recorder, small_dataset):
    config = TrainConfig.from_preset("tiny", seed=3, augment="survey-mix", batch_size=8)
    datamodule = GalaxyDataModule(small_dataset, config)
    datamodule.setup("fit")
    ds = load_dataset(small_dataset)
    for epoch in range(3):
        loader = datamodule.train_dataloader()
        loader.sampler.set_epoch(epoch)
        for x, y, view1, view2 in loader:
            assert x.shape == view1.shape == view2.shape and len(y) == len(x)
            # the clean image is the dataset's own model input; the views are different images
            assert not torch.equal(view1, x) and not torch.equal(view1, view2)
    assert recorder and not {name for name, _, _ in recorder} & HELD_OUT
    assert {name for name, _, _ in recorder} <= TRAINED
    assert ds.bands == ("g", "r", "i")


def test_views_built_ahead_in_the_thread_equal_views_built_in_place(small_dataset):
    """The background thread changes when the views are built, never what they are; they are the
    augmenter's on the raw images with a generator seeded by (seed, stream, batch indices)."""
    config = TrainConfig.from_preset("tiny", seed=4, augment="survey-mix", batch_size=8)
    datamodule = GalaxyDataModule(small_dataset, config, prefetch_views=True)
    datamodule.setup("fit")
    loader = datamodule.train_dataloader()
    assert isinstance(loader.sampler, AugmentedBatches)
    loader.sampler.set_epoch(1)
    keys = list(loader.sampler)
    batches = list(loader)
    assert len(batches) == len(keys) == 3
    ds = load_dataset(small_dataset)
    raw = ds.images("Y10", "train", stretched=False)
    augmenter = SurveyMix(lambda r: ds.model_input(r, "Y10"), bands=ds.bands)
    for key, (x, y, view1, view2) in zip(keys, batches):
        idx = np.asarray(key)
        expected = augmenter(np.asarray(raw[idx]), np.random.default_rng([4, 2, *(int(i) for i in idx)]))
        assert torch.equal(view1, expected[0]) and torch.equal(view2, expected[1])
        assert torch.equal(x, torch.from_numpy(ds.images("Y10", "train")[idx]))
    datamodule.teardown("fit")


def test_the_views_are_convex_mixtures_with_the_clean_image():
    """A chain that blanks the image (its only corruption) leaves view = m x with m ~ Beta(1, 1)."""
    spec = CorruptionSpec("toy_blank", lambda x, severity, rng, domain, bands, options: np.zeros_like(x),
                          {"rubin": {s: float(s) for s in range(1, 6)}}, "nothing", "none", family="detector")
    register_corruption(spec)
    try:
        augmenter = SurveyMix(lambda raw: raw.copy(), corruptions=("toy_blank",))
        raw = np.random.default_rng(0).uniform(10.0, 100.0, (400, 3, 4, 4)).astype(np.float32)
        views = augmenter.mix(raw, np.random.default_rng(5))
        ratio = views / raw[None]
        m = ratio.reshape(N_VIEWS, len(raw), -1)
        assert np.allclose(m, m[..., :1], rtol=1e-5)  # one weight per image and view
        m = m[..., 0].ravel()
        assert m.min() > 0 and m.max() < 1
        assert abs(m.mean() - 0.5) < 0.05 and abs(m.var() - 1 / 12) < 0.02  # Beta(1, 1) = U(0, 1)
    finally:
        unregister_corruption("toy_blank")


def test_the_augmenter_is_deterministic_and_leaves_its_input_alone():
    raw = np.random.default_rng(2).normal(40.0, 20.0, (4, 3, 16, 16)).astype(np.float32)
    keep = raw.copy()
    a = _augmenter()(raw, np.random.default_rng(7))
    b = _augmenter()(raw, np.random.default_rng(7))
    c = _augmenter()(raw, np.random.default_rng(8))
    assert all(torch.equal(u, v) for u, v in zip(a, b)) and not torch.equal(a[0], c[0])
    assert np.array_equal(raw, keep)


def test_a_held_out_corruption_is_refused():
    with pytest.raises(OptionError, match="held out"):
        SurveyMix(lambda raw: raw, corruptions=("seeing",))


def test_the_js_term_equals_scipy_on_random_probabilities():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(5), size=(3, 16))  # three distributions of 16 rows over 5 classes
    tensors = [torch.tensor(q) for q in p]
    # two distributions: scipy's Jensen-Shannon distance, squared, natural log
    two = np.mean([jensenshannon(p[0, r], p[1, r]) ** 2 for r in range(16)])
    assert float(js_divergence(tensors[:2])) == pytest.approx(two, rel=1e-9)
    # three: AugMix's mean of KL(p_i || M), M the mean of the three
    three = np.mean([np.mean([entropy(p[i, r], p[:, r].mean(0)) for i in range(3)]) for r in range(16)])
    assert float(js_divergence(tensors)) == pytest.approx(three, rel=1e-9)
    # from logits: the softmax of each
    logits = [torch.tensor(np.log(q)) for q in p]
    assert float(js_consistency(logits)) == pytest.approx(three, rel=1e-6)
    assert float(js_divergence([tensors[0]] * 3)) == pytest.approx(0.0, abs=1e-12)
    assert JS_WEIGHT == 12.0  # AugMix's lambda


def _rows(run) -> list[dict[str, float]]:
    with open(run / "log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


@pytest.mark.parametrize("method", ["regular", "mmd"])
def test_a_tiny_survey_mix_training_runs_through_the_cli_and_logs_the_js_term(small_dataset, tmp_path, method):
    out = tmp_path / method
    result = CliRunner().invoke(app, ["train", "--data", str(small_dataset), "--out", str(out), "--preset", "tiny",
                                      "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--method", method,
                                      "--augment", "survey-mix"])
    assert result.exit_code == 0, (result.output, result.exception)
    config = read_run_config(out)
    assert config.train.augment == "survey-mix" and "augment" in config.train.overridden
    assert json.loads((out / "config.json").read_text())["augment"] == "survey-mix"
    rows = _rows(out)
    assert len(rows) == 2
    for row in rows:
        assert math.isfinite(row["train_js"]) and row["train_js"] > 0
        # the loss is the cross-entropy plus 12 JS (plus the MMD term with mmd)
        extra = 0.05 * row["train_mmd2"] if method == "mmd" else 0.0
        assert row["train_loss"] == pytest.approx(row["train_ce"] + JS_WEIGHT * row["train_js"] + extra, rel=1e-4)


def test_an_old_config_reads_as_none_and_an_unknown_augmentation_is_a_user_error(tmp_path, small_dataset, capsys):
    config = TrainConfig.from_preset("tiny")
    assert config.augment == "none"
    old = config.to_json()
    del old["augment"]
    assert TrainConfig.from_json(old).augment == "none"
    with pytest.raises(OptionError, match="augment"):
        TrainConfig.from_preset("tiny", augment="mixup")
    code = main(["train", "--data", str(small_dataset), "--out", str(tmp_path / "bad"), "--preset", "tiny",
                 "--augment", "mixup", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--augment" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_without_augment_the_log_has_no_js_column(tmp_path, small_dataset):
    out = tmp_path / "plain"
    result = CliRunner().invoke(app, ["train", "--data", str(small_dataset), "--out", str(out), "--preset", "tiny",
                                      "--epochs", "1", "--batch-size", "8", "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "train_js" not in _rows(out)[0] and read_run_config(out).train.augment == "none"
