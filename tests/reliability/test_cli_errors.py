"""Bad options and unwritable folders for `deepadv simulate`, and what DEEPADV_DEBUG=1 adds.

(Bad datasets are in test_bad_dataset_inputs.py, bad runs and checkpoints in test_bad_run_inputs.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepadversaries import PRESETS
from deepadversaries.cli import main
from deepadversaries.config import SPLIT_MODES
from deepadversaries.simulation.simulate import min_galaxies

from .conftest import mount_tmpfs, tmpfs_or_skip, unmount

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; it must exit 2 with one ``error:`` line and no traceback."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


WORD = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FFF, blacklist_characters="-"), min_size=1, max_size=8)
BAD_OPTION = st.one_of(
    st.tuples(st.just("--preset"), WORD.filter(lambda w: w not in PRESETS), st.just("unknown preset")),
    st.tuples(st.just("--n-galaxies"), st.integers(-10**9, min_galaxies() - 1).map(str), st.just("--n-galaxies")),
    st.tuples(st.just("--brightness"), st.one_of(st.floats(max_value=0), st.sampled_from([float("nan"), float("inf")]))
              .map(repr), st.just("--brightness")),
    st.tuples(st.just("--seed"), st.integers(max_value=-1).map(str), st.just("--seed")),
    st.tuples(st.just("--workers"), st.integers(max_value=0).map(str), st.just("--workers")),
    st.tuples(st.just("--split-mode"), WORD.filter(lambda w: w not in SPLIT_MODES), st.just("split mode")),
)


@SETTINGS
@given(bad=BAD_OPTION)
def test_simulate_bad_option_values_exit_2_and_create_nothing(tmp_path, capsys, bad):
    option, value, fragment = bad
    out = tmp_path / "never"
    err = one_line_error(capsys, ["simulate", "--preset", "tiny", "--out", out, option, value])
    assert fragment in err
    assert not out.exists()


@pytest.mark.parametrize("argv, fragment", [
    (["simulate", "--n-galaxies", "many"], "'--n-galaxies'"),
    (["simulate", "--brightness", "bright"], "'--brightness'"),
    (["simulate", "--no-such-option"], "--no-such-option"),
    (["simulate"], "--out"),
])
def test_usage_errors_exit_2_name_the_option_without_traceback(tmp_path, capsys, argv, fragment):
    code = main(argv + (["--out", str(tmp_path / "x")] if argv != ["simulate"] else []))
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder nobody may write into: a read-only tmpfs (root), else chmod 0500."""
    ro = tmp_path / "ro"
    mounted = mount_tmpfs(ro, "ro,size=1m")
    if not mounted:
        import os

        if os.geteuid() == 0:  # root writes everywhere: only a read-only mount makes a folder unwritable
            mounted = tmpfs_or_skip(ro, "ro,size=1m") is not None  # fails under CI unless DEEPADV_SKIP_TMPFS=1
        else:
            ro.chmod(0o500)
    yield ro
    if mounted:
        unmount(ro)
    else:
        ro.chmod(0o700)


def test_simulate_into_an_unwritable_folder(read_only_dir, capsys):
    for out in (read_only_dir, read_only_dir / "new" / "deeper"):
        err = one_line_error(capsys, ["simulate", "--preset", "tiny", "--out", out])
        assert str(read_only_dir) in err and "cannot" in err
    assert list(read_only_dir.iterdir()) == []


def test_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPADV_DEBUG", "1")
    assert main(["simulate", "--preset", "huge", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "OptionError: unknown preset 'huge'" in err
    assert err.strip().splitlines()[-1] == "error: unknown preset 'huge'; choose one of tiny, quick, paper"


@pytest.mark.parametrize("debug", ["", "1"])
def test_internal_errors_are_short_unless_debugging(capsys, monkeypatch, tmp_path, debug):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr("deepadversaries.simulation.simulate.simulate_dataset", broken)
    monkeypatch.setenv("DEEPADV_DEBUG", debug)
    assert main(["simulate", "--preset", "tiny", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    if debug:
        assert "Traceback (most recent call last)" in err and "in broken" in err
    else:
        assert err == ("internal error: ZeroDivisionError: a bug, not the user's fault "
                       "(set DEEPADV_DEBUG=1 for the traceback)")


def test_a_refused_tmpfs_mount_fails_under_ci_unless_opted_out(tmp_path, monkeypatch):
    """The disk-full and read-only tests need `mount -t tmpfs`: a skip locally, a failure under CI
    (CI=true/1/yes, as .ci/run sets it) unless DEEPADV_SKIP_TMPFS=1 opts out."""
    from . import conftest

    monkeypatch.setattr(conftest, "mount_tmpfs", lambda mnt, options: False)
    monkeypatch.delenv("DEEPADV_SKIP_TMPFS", raising=False)
    for ci in ("true", "1", "YES"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.fail.Exception, match="DEEPADV_SKIP_TMPFS=1"):
            conftest.tmpfs_or_skip(tmp_path / "m", "size=1m")
    monkeypatch.setenv("DEEPADV_SKIP_TMPFS", "1")
    with pytest.raises(pytest.skip.Exception, match="cannot mount a tmpfs"):
        conftest.tmpfs_or_skip(tmp_path / "m", "size=1m")
    monkeypatch.delenv("DEEPADV_SKIP_TMPFS")
    for ci in ("", "false", "0"):
        monkeypatch.setenv("CI", ci)
        with pytest.raises(pytest.skip.Exception, match="cannot mount a tmpfs"):
            conftest.tmpfs_or_skip(tmp_path / "m", "size=1m")
