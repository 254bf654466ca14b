"""`deepadv reproduce` killed with SIGKILL inside its stages, then run again.

The session's real ``tiny`` reproduction (tests/reproduce_support.py) is the uninterrupted
reference. A copy of it (modification times kept, so nothing is stale) loses the regular
run's attack results; ``reproduce`` must then re-run that attack, the analysis and the
report. It is killed right after the attack's marker, in the analysis (by time and
after its first table) and while writing the report; the final run must leave the same
results as the reference, and a further run must skip every stage.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from deepadversaries.io import LOCK_NAME, TMP_MARK

from .conftest import leftovers, snapshot, wait_for

ATTACK = Path("runs/convnet_regular/attack")
#: files that must come out bit-identical (the others hold paths, dates or wall times; the
#: isomap figures also move with the last bits of latents computed with other thread counts)
ANALYSIS = Path("analysis/convnet_mmd")
IDENTICAL = [ATTACK / "results.csv", ATTACK / "latents.npz", ANALYSIS / "distances.csv",
             ANALYSIS / "distances_per_image.csv", Path("findings.json")]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    from reproduce_support import tiny_reproduction

    return tiny_reproduction(tmp_path_factory)["out"]


def argv(out: Path) -> list[str]:
    return ["reproduce", "--preset", "tiny", "--seed", "0", "--device", "cpu", "--out", str(out)]


def invocations(out: Path) -> list[dict]:
    return json.loads((out / "timings.json").read_text())["invocations"]


@pytest.fixture(scope="module")
def chain(warm_forkserver, reference, tmp_path_factory) -> dict:
    server = warm_forkserver
    out = tmp_path_factory.mktemp("reproduce-chain") / "out"
    shutil.copytree(reference, out)  # keeps modification times: nothing is stale
    shutil.rmtree(out / ATTACK)
    seen: dict = {"out": out}

    # 1. right after the attack stage's marker, before reproduce records the stage
    seen["after_marker"] = server.run(argv(out), env={"DEEPADV_FAULT_AFTER": "summary.json"})
    # 2. by time: 0.5 s into the analysis stage (figures take seconds)
    child = server.start(argv(out))
    seen["analysis_started"] = wait_for(lambda: (out / ANALYSIS / LOCK_NAME).exists(), child)
    time.sleep(0.5)
    seen["time"] = server.kill(child)
    seen["time_marker"] = (out / ANALYSIS / "analysis.json").exists()
    # 3. in the middle of the analysis: after its first table, before analysis.json
    seen["mid_analysis"] = server.run(argv(out), env={"DEEPADV_FAULT_AFTER": "distances.csv"})
    seen["mid_analysis_marker"] = (out / ANALYSIS / "analysis.json").exists()
    # 4. while writing the report
    seen["during_report"] = server.run(argv(out), env={"DEEPADV_FAULT_DURING": "report.html"})
    seen["during_report_temporaries"] = [p.name for p in out.iterdir() if TMP_MARK in p.name]
    # the same command: finishes; once more: nothing to do
    seen["final"] = server.run(argv(out))
    seen["final_ran"] = invocations(out)[-1]["ran"]
    before = snapshot(out)
    seen["again"] = server.run(argv(out))
    seen["again_ran"] = invocations(out)[-1]["ran"]
    seen["again_changed"] = sorted(k for k, v in snapshot(out).items() if before.get(k) != v)
    return seen


def test_killed_after_a_stage_marker_before_it_is_recorded(chain):
    assert chain["after_marker"].rc == -9, chain["after_marker"].err
    assert "attack convnet_regular" in chain["after_marker"].err


def test_killed_by_time_in_the_analysis_stage(chain):
    assert chain["analysis_started"]
    assert chain["time"].rc == -9 and not chain["time_marker"], "the analysis finished before it was killed"


def test_killed_in_the_middle_of_the_analysis(chain):
    assert chain["mid_analysis"].rc == -9, chain["mid_analysis"].err
    assert not chain["mid_analysis_marker"]


def test_killed_while_writing_the_report(chain):
    assert chain["during_report"].rc == -9, chain["during_report"].err
    assert chain["during_report_temporaries"], "the kill was meant to leave a half-written report"


def test_final_run_finishes_only_what_was_left(chain):
    final = chain["final"]
    assert final.rc == 0, final.err
    assert chain["final_ran"] == ["report"], "the attack and the analysis were finished by the killed runs"
    assert leftovers(chain["out"]) == []


def test_results_equal_the_uninterrupted_reproduction(chain, reference):
    for name in IDENTICAL:
        assert (chain["out"] / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs"
    for name in ("report.md", "report.html"):
        assert (chain["out"] / name).stat().st_size > 1000


def test_a_further_run_skips_every_stage(chain):
    assert chain["again"].rc == 0, chain["again"].err
    assert chain["again_ran"] == []
    assert chain["again_changed"] == ["timings.json"]
