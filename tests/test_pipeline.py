"""The stage graph (pipeline.py) on hand-built stages that write small files: planning, running, failures.

Independent of the reproduction: three stages a -> b -> c (and d, which reads an outside
file), each writing its marker; the contract of pipeline.py's docstring checked directly.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import time
from pathlib import Path

import pytest

from deepadversaries.errors import DeepAdvError, FileError, StageFailed
from deepadversaries.workflow.layout import read_timings
from deepadversaries.workflow.stages import (
    Recorder,
    Stage,
    decide,
    environment,
    execute_stage,
    plan,
    run_in_order,
)


def write_marker(fresh: bool, *, marker: Path, log: list | None = None, extra: Path | None = None) -> None:
    """A stage action: write some output, then the marker last."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    if extra is not None:
        extra.write_text("output")
    marker.write_text(json.dumps({"fresh": fresh, "t": time.time_ns()}))
    if log is not None:
        log.append(marker.parent.name)


def rewrite_marker_later(marker: Path) -> None:
    """Rewrite a marker as its stage would and set its mtime 1 s past the old one, so that its
    fingerprint (mtime, size) changes whatever the filesystem's timestamp granularity."""
    before = marker.stat().st_mtime_ns
    write_marker(False, marker=marker)
    os.utime(marker, ns=(before + 10**9, before + 10**9))


def fail(fresh: bool, *, error: BaseException) -> None:
    raise error


def no_marker(fresh: bool) -> None:
    pass


def graph(root: Path, outside: Path, log: list | None = None) -> list[Stage]:
    def stage(name, depends=(), extra_inputs=()):
        folder = root / name
        return Stage(name, name, folder / "done.json", tuple(depends), (folder,),
                     functools.partial(write_marker, marker=folder / "done.json", log=log, extra=None),
                     extra_inputs=tuple(extra_inputs))

    return [stage("a"), stage("b", ["a"]), stage("c", ["b"]), stage("d", ["a"], [outside])]


def run_all(root: Path, stages: list[Stage]) -> list[str]:
    timings = read_timings(root)
    recorder = Recorder(root / "timings.json", timings, stages, environment("cpu"))
    ran = run_in_order(plan(stages, timings), recorder, root=root, logs=root / "logs")
    recorder.close()
    return ran


@pytest.fixture
def folder(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("v1")
    return tmp_path / "out", outside


def test_a_fresh_folder_runs_everything_in_order_then_nothing(folder):
    root, outside = folder
    log: list[str] = []
    stages = graph(root, outside, log)
    planned = plan(stages, read_timings(root))
    assert [(s.name, d.runs, d.fresh, d.why) for s, d in planned] == [
        ("a", True, False, "not finished"), ("b", True, True, "not finished"),
        ("c", True, True, "not finished"), ("d", True, True, "not finished")]
    assert run_all(root, stages) == ["a", "b", "c", "d"] == log
    assert all(s.marker.is_file() for s in stages)
    timings = read_timings(root)
    assert {k: v["status"] for k, v in timings["stages"].items()} == {n: "ran" for n in "abcd"}
    assert timings["stages"]["b"]["inputs"]["a"] == [stages[0].marker.stat().st_mtime_ns,
                                                     stages[0].marker.stat().st_size]
    assert all((root / "logs" / f"{n}.log").is_file() for n in "abcd")
    log.clear()
    assert run_all(root, stages) == [] and log == []
    assert read_timings(root)["invocations"][-1]["skipped"] == ["a", "b", "c", "d"]


def test_deleting_a_marker_reruns_that_stage_and_its_dependents_only(folder):
    root, outside = folder
    stages = graph(root, outside)
    run_all(root, stages)
    before = {s.name: s.marker.read_text() for s in stages}
    stages[1].marker.unlink()
    decisions = {s.name: d for s, d in plan(stages, read_timings(root))}
    assert [n for n, d in decisions.items() if d.runs] == ["b", "c"]
    assert decisions["c"].why == "b re-ran" and decisions["c"].fresh
    assert run_all(root, stages) == ["b", "c"]
    assert stages[0].marker.read_text() == before["a"] and stages[3].marker.read_text() == before["d"]


def test_a_marker_rewritten_outside_the_pipeline_reruns_what_reads_it(folder):
    root, outside = folder
    stages = graph(root, outside)
    run_all(root, stages)
    rewrite_marker_later(stages[0].marker)  # e.g. the stage's verb run by hand
    decisions = {s.name: d for s, d in plan(stages, read_timings(root))}
    assert not decisions["a"].runs
    assert (decisions["b"].runs, decisions["b"].why) == (True, "its inputs changed")
    assert decisions["d"].runs and decisions["c"].why == "b re-ran"
    assert run_all(root, stages) == ["b", "c", "d"]


def test_a_changed_outside_file_reruns_its_stage(folder):
    root, outside = folder
    stages = graph(root, outside)
    run_all(root, stages)
    outside.write_text("v2, longer")  # another size: a changed fingerprint without waiting on the clock
    assert run_all(root, stages) == ["d"]


def test_decide_without_a_marker_resumes_unless_an_input_changed(folder):
    root, outside = folder
    stages = graph(root, outside)
    by_name = {s.name: s for s in stages}
    run_all(root, stages)
    record = read_timings(root)["stages"]["b"]
    stages[1].marker.unlink()
    assert decide(stages[1], by_name, record, set()) == decide(stages[1], by_name, record, set())
    d = decide(stages[1], by_name, record, set())
    assert d.runs and not d.fresh  # resume what is there
    rewrite_marker_later(stages[0].marker)
    d = decide(stages[1], by_name, record, set())
    assert d.runs and d.fresh and d.why == "not finished; its inputs changed"


def test_a_failing_stage_is_one_line_naming_itself_and_its_log(tmp_path):
    log = tmp_path / "logs" / "x.log"
    boom = Stage("train:x", "train", tmp_path / "m", (), (), functools.partial(fail, error=RuntimeError("boom\nmore")))
    with pytest.raises(StageFailed) as info:
        execute_stage(boom, False, log)
    assert str(info.value) == f"stage train:x failed: boom (log: {log})" and info.value.exit_code == 1
    assert "Traceback" in log.read_text() and "RuntimeError: boom" in log.read_text()
    user = Stage("data", "data", tmp_path / "m", (), (), functools.partial(fail, error=FileError("x.npy: bad")))
    with pytest.raises(StageFailed) as info:
        execute_stage(user, False, log)
    assert info.value.exit_code == 2 and isinstance(info.value, DeepAdvError)
    silent = Stage("quiet", "quiet", tmp_path / "never", (), (), no_marker)
    with pytest.raises(StageFailed, match="ended without writing"):
        execute_stage(silent, False, log)
    interrupted = Stage("i", "i", tmp_path / "m", (), (), functools.partial(fail, error=KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        execute_stage(interrupted, False, log)
    assert log.read_text().rstrip().endswith("# interrupted")


def test_a_fresh_run_deletes_the_stages_outputs_first(tmp_path):
    out = tmp_path / "stage"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    lone = tmp_path / "lone.txt"
    lone.write_text("old")
    stage = Stage("s", "s", out / "done.json", (), (out, lone),
                  functools.partial(write_marker, marker=out / "done.json"))
    execute_stage(stage, True, tmp_path / "s.log")
    assert sorted(p.name for p in out.iterdir()) == ["done.json"] and not lone.exists()
    assert json.loads((out / "done.json").read_text())["fresh"] is True
    (out / "stale.txt").write_text("kept")
    execute_stage(stage, False, tmp_path / "s.log")
    assert (out / "stale.txt").read_text() == "kept"


def test_failures_are_recorded_and_the_run_resumes_after_the_fix(folder):
    root, outside = folder
    stages = graph(root, outside)
    broken = list(stages)
    broken[2] = Stage("c", "c", stages[2].marker, ("b",), stages[2].outputs,
                      functools.partial(fail, error=ValueError("bad c")))
    with pytest.raises(StageFailed, match="stage c failed: bad c"):
        run_all(root, broken)
    timings = read_timings(root)
    assert timings["stages"]["c"]["status"] == "failed" and timings["stages"]["c"]["error"] == "bad c"
    assert "d" not in timings["stages"]  # the run stopped at c
    assert run_all(root, stages) == ["c", "d"]


def test_stage_actions_are_picklable_for_dask(folder):
    root, outside = folder
    for stage in graph(root, outside):
        assert pickle.loads(pickle.dumps(stage.action)).keywords["marker"] == stage.marker
    from deepadversaries.config import SimulateConfig, TrainConfig
    from deepadversaries.workflow.grid import Grid, build_stages
    from deepadversaries.workflow.layout import Layout

    stages = build_stages(Layout(root), Grid(preset="tiny", device="cpu"))
    for stage in stages:
        pickle.dumps(stage.action)
    names = [s.name for s in stages if s.kind in ("simulate", "train", "evaluate", "attack", "analyze")]
    assert names == ["simulate", "train:convnet_regular", "train:convnet_mmd", "evaluate:convnet_regular",
                     "evaluate:convnet_mmd", "attack:convnet_regular", "attack:convnet_mmd", "analyze:convnet_mmd"]
    by_name = {s.name: s for s in stages}
    position = {s.name: k for k, s in enumerate(stages)}
    for stage in stages:  # the list respects every dependency
        assert all(position[d] < position[stage.name] for d in stage.depends), stage.name
    assert by_name["analyze:convnet_mmd"].depends == ("train:convnet_regular", "train:convnet_mmd",
                                                      "attack:convnet_regular", "attack:convnet_mmd")
    assert by_name["simulate"].action.keywords["config"] == SimulateConfig.from_preset("tiny", seed=0)
    assert by_name["train:convnet_mmd"].action.keywords["config"] == TrainConfig.from_preset("tiny", method="mmd")
    assert by_name["analyze:convnet_mmd"].marker == root / "analysis" / "convnet_mmd" / "analysis.json"


def test_layout_paths_and_manifest_errors(tmp_path):
    from deepadversaries.errors import FileError
    from deepadversaries.workflow.layout import Layout, read_manifest

    lay = Layout(tmp_path)
    assert lay.data() == tmp_path / "data" and lay.data(3) == tmp_path / "data_s3"
    assert lay.run("convnet", "mmd") == tmp_path / "runs" / "convnet_mmd"
    assert lay.analysis("resnet18", "mmd") == tmp_path / "analysis" / "resnet18_mmd"
    assert (lay.manifest, lay.report_html, lay.findings, lay.timings) == (
        tmp_path / "reproduce.json", tmp_path / "report.html", tmp_path / "findings.json", tmp_path / "timings.json")
    study = Layout(tmp_path, kind="study")
    assert study.run("convnet", "regular", 2) == tmp_path / "cells" / "convnet_regular_s2"
    assert study.analysis("convnet", "mmd", 2) == tmp_path / "analysis" / "convnet_mmd_s2"
    external = Layout(tmp_path, dataset=tmp_path / "published")
    assert external.data() == external.data(5) == tmp_path / "published"
    with pytest.raises(FileError, match="not a reproduction folder"):
        read_manifest(tmp_path)
    (tmp_path / "reproduce.json").write_text(json.dumps({"kind": "deepadv-reproduce", "preset": "tiny", "seed": "0",
                                                         "models": ["convnet"]}))
    with pytest.raises(FileError, match="malformed key 'seed'"):
        read_manifest(tmp_path)
    assert read_timings(tmp_path / "nowhere") == {"kind": "deepadv-reproduce-timings", "stages": {},
                                                  "invocations": []}


def test_a_marker_that_appears_after_the_plan_is_adopted_not_rerun(tmp_path):
    """A killed driver's task, finished by its worker after the rerun planned the stage: no second run."""
    out = tmp_path / "stage"
    marker = out / "done.json"
    boom = Stage("attack:x", "attack", marker, (), (out,), functools.partial(fail, error=RuntimeError("ran twice")))
    (decision,) = [d for _, d in plan([boom], {})]
    assert decision.runs and not decision.fresh  # planned before the orphan wrote its marker
    write_marker(False, marker=marker)  # the orphaned task finishes now
    assert execute_stage(boom, decision.fresh, tmp_path / "x.log") == 0.0
    assert "appeared after the plan" in (tmp_path / "x.log").read_text()
    vetted = Stage("attack:y", "attack", marker, (), (out,), functools.partial(fail, error=RuntimeError("ran")),
                   adopt_check=functools.partial(fail, False, error=FileError("summary.json: other settings")))
    with pytest.raises(StageFailed, match="other settings") as info:
        execute_stage(vetted, False, tmp_path / "y.log")
    assert info.value.exit_code == 2
    with pytest.raises(StageFailed, match="ran twice"):  # a fresh run still runs (after clearing the outputs)
        execute_stage(boom, True, tmp_path / "z.log")
    assert not marker.exists()
