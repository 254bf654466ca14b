"""``deepadv robustness --survey FILE.json``: the user's survey numbers replace the LSST model's in the
noise check and the corruptions, are validated with one-line errors and recorded in the summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from deepadversaries.corruptions.benchmark import check_survey_noise, robustness_run
from deepadversaries.corruptions.suite import CorruptionOptions, corrupt
from deepadversaries.corruptions.survey_numbers import read_survey
from deepadversaries.data.dataset import load_dataset
from deepadversaries.errors import DeepAdvError, FileError, OptionError
from deepadversaries.io import read_json

from test_robustness import cli, runs  # noqa: F401  (fixtures: the toy runs and the CLI app)


def _border_sigma(images: np.ndarray, width: int = 4) -> list[float]:
    """Per band: 1.4826 x MAD of the outer ``width``-pixel frame, by an explicit loop over the frame."""
    n, bands, h, w = images.shape
    sigmas = []
    for b in range(bands):
        values = []
        for y in range(h):
            for x in range(w):
                if y < width or y >= h - width or x < width or x >= w - width:
                    values.append(images[:, b, y, x])
        pixels = np.concatenate(values).astype(np.float64)
        sigmas.append(1.4826 * float(np.median(np.abs(pixels - np.median(pixels)))))
    return sigmas


def _survey_file(path: Path, dataset, sky_factor: float = 1.0, read_noise: float = 0.0, **extra) -> Path:
    """A survey file whose sky per band is the toy images' border variance times ``sky_factor``."""
    raw = np.asarray(dataset.images("Y10", "test", stretched=False)[:256])
    sigmas = _border_sigma(raw)
    bands = {b: {"sky_e_per_pixel": s ** 2 * sky_factor, "exposure_s": 3000.0} for b, s in zip(dataset.bands, sigmas)}
    data = {"name": "toy survey", "read_noise_e": read_noise, "bands": bands, **extra}
    path.write_text(json.dumps(data))
    return path


def test_matching_survey_numbers_pass_the_check_the_lsst_defaults_fail(toy_dataset, tmp_path):
    ds = load_dataset(toy_dataset)
    with pytest.raises(FileError, match="--survey FILE.json"):  # the refusal names the option
        check_survey_noise(ds, "Y10", ds.bands, "refuse")
    survey = read_survey(_survey_file(tmp_path / "s.json", ds), ds.bands)
    report = check_survey_noise(ds, "Y10", ds.bands, "refuse", survey=survey)
    assert report["ok"] is True and report["survey"] == str(tmp_path / "s.json")
    assert all(r == pytest.approx(1.0, abs=1e-9) for r in report["ratios"].values())
    # four times the variance: sigma ratio 1/2, outside 0.7-1.4: refused, naming the file
    wrong = read_survey(_survey_file(tmp_path / "w.json", ds, sky_factor=4.0), ds.bands)
    with pytest.raises(FileError, match="w.json") as err:
        check_survey_noise(ds, "Y10", ds.bands, "refuse", survey=wrong)
    assert "\n" not in str(err.value)


def test_read_noise_enters_the_expected_sigma(toy_dataset, tmp_path):
    ds = load_dataset(toy_dataset)
    # B = variance / 2 and N x RN^2 = variance / 2 (N = 3000 s / 30 s = 100 visits): the sum is the variance
    raw = np.asarray(ds.images("Y10", "test", stretched=False)[:256])
    sigma_r = _border_sigma(raw)[list(ds.bands).index("r")]
    path = _survey_file(tmp_path / "rn.json", ds, sky_factor=0.5, read_noise=math.sqrt(sigma_r ** 2 / 2 / 100))
    report = check_survey_noise(ds, "Y10", ds.bands, "warn", survey=read_survey(path, ds.bands))
    assert report["ratios"]["r"] == pytest.approx(1.0, rel=1e-9)
    assert report["ratios"]["r"] != pytest.approx(math.sqrt(2.0), rel=1e-3)  # not sqrt(2): read noise counted


def test_the_corruptions_use_the_survey_numbers(toy_dataset, tmp_path):
    ds = load_dataset(toy_dataset)
    survey = read_survey(_survey_file(tmp_path / "s.json", ds), ds.bands)
    options = CorruptionOptions(survey=survey)
    images = np.zeros((4, len(ds.bands), 20, 20), np.float32)
    # sky_error shifts each band by exactly +- f B: B is now the file's sky, not LSST's
    out = corrupt(images, "sky_error", 3, 0, bands=ds.bands, options=options)
    lsst = corrupt(images, "sky_error", 3, 0, bands=ds.bands)
    for b, band in enumerate(ds.bands):
        ratio = np.abs(out[:, b]) / np.abs(lsst[:, b])
        np.testing.assert_allclose(ratio, survey.band(band).sky / _lsst_sky(band), rtol=1e-5)
    assert not np.allclose(out, lsst)


def _lsst_sky(band: str) -> float:
    """LSST's Y10 sky per pixel, from the survey constants by hand: 10 yr x exposure x zp x 10^(-0.4 (m - 24)) x 0.2^2."""
    from deepadversaries.simulation.survey import BAND_SPECS

    spec = BAND_SPECS[band]
    return 10 * spec.exposure_per_year * spec.zero_point * 10 ** (-0.4 * (spec.sky_brightness - 24.0)) * 0.2 ** 2


def test_stage_with_survey_runs_where_lsst_is_refused_and_records_it(runs, toy_dataset, tmp_path):  # noqa: F811
    ds = load_dataset(toy_dataset)
    path = _survey_file(tmp_path / "s.json", ds)
    with pytest.raises(FileError, match="--survey"):
        robustness_run(runs["other"], corruptions="depth", severities="1", device="cpu", overwrite=True)
    summary = robustness_run(runs["other"], corruptions="depth,sky_error", severities="1", device="cpu",
                             overwrite=True, survey=path)
    written = read_json(runs["other"] / "robustness" / "summary.json")
    assert written["settings"]["survey"]["bands"]["r"]["sky_e_per_pixel"] == pytest.approx(
        json.loads(path.read_text())["bands"]["r"]["sky_e_per_pixel"])
    assert written["noise_check"]["ok"] is True and summary["settings"]["survey"]["source"] == str(path)
    with pytest.raises(OptionError, match="one co-add depth"):
        robustness_run(runs["other"], domain="both", survey=path, device="cpu", overwrite=True)


@pytest.mark.parametrize("data,message", [
    ({"bands": {"r": {"sky_e_per_pixel": 100.0}}}, "has no exposure_s"),
    ({"bands": {"r": {"sky_e_per_pixel": -1.0, "exposure_s": 300.0}}}, "must be positive"),
    ({"bands": {"z": {"sky_e_per_pixel": 1.0, "exposure_s": 300.0}}}, "band 'z' is not one"),
    ({"bands": {"r": {"sky_e_per_pixel": 1.0, "exposure_s": 10.0}}}, "shorter than one visit"),
    ({"pixel_scale_arcsec": 0.168, "bands": {"r": {"sky_e_per_pixel": 1.0, "exposure_s": 300.0}}}, "not LSST's 0.2"),
    ({"bands": {"r": {"sky_e_per_pixel": "a lot", "exposure_s": 300.0}}}, "finite number"),
    ({"bands": {"r": {"sky_e_per_pixel": 1.0, "exposure_s": 300.0}}, "sky": 3}, "unknown key 'sky'"),
    ({"bands": {}}, "'bands' must be"),
    ([1, 2], "JSON object"),
])
def test_bad_survey_files_are_refused_with_one_line(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FileError, match=message) as err:
        read_survey(path, ("r",))
    assert "\n" not in str(err.value) and err.value.exit_code == 2 and "bad.json" in str(err.value)


def test_missing_band_missing_file_and_bad_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"bands": {"r": {"sky_e_per_pixel": 1.0, "exposure_s": 300.0}}}))
    with pytest.raises(FileError, match="band 'g'"):
        read_survey(path, ("g", "r"))
    with pytest.raises(FileError, match="not found"):
        read_survey(tmp_path / "none.json")
    path.write_text("{not json")
    with pytest.raises(FileError, match="not valid JSON"):
        read_survey(path)


def test_cli_survey_option(cli, runs, toy_dataset, tmp_path):  # noqa: F811
    from typer.testing import CliRunner

    path = _survey_file(tmp_path / "s.json", load_dataset(toy_dataset))
    runner = CliRunner()
    assert "--survey" in runner.invoke(cli, ["robustness", "--help"]).output
    result = runner.invoke(cli, ["robustness", "--run", str(runs["other"]), "--survey", str(path), "--domain", "both"])
    assert isinstance(result.exception, DeepAdvError) and result.exception.exit_code == 2
    result = runner.invoke(cli, ["robustness", "--run", str(runs["other"]), "--survey", str(path), "--corruptions",
                                 "depth", "--severities", "1", "--device", "cpu", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert read_json(runs["other"] / "robustness" / "summary.json")["settings"]["survey"]["name"] == "toy survey"
