"""The import layers of docs/architecture.md, enforced by import-linter (pyproject.toml `[tool.importlinter]`).

Two contracts: `layers` (each layer imports only from the layers below it, function-level imports
included; every top-level module must be given a layer) and `acyclic` (no import cycle between the
package's modules). The first test runs them on the package as it is; the others run the same
contracts on a copy of the package with one deliberate fault each and check that the right contract
breaks, naming the offending import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deepadversaries

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PACKAGE = Path(deepadversaries.__file__).resolve().parent
LAYERS = "Imports flow one way"
ACYCLIC = "No import cycle"


def lint_imports(search_path: Path) -> subprocess.CompletedProcess:
    """Run the `lint-imports` CLI on the package found first on `search_path`, with the repo's config."""
    env = dict(os.environ, PYTHONPATH=str(search_path), NO_COLOR="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         str(PYPROJECT), "--no-cache", "--no-logo"],
        cwd=search_path, env=env, capture_output=True, text=True, timeout=300,
    )


def verdict(output: str, contract: str) -> str:
    """'KEPT' or 'BROKEN' for the contract whose name starts with `contract` in lint-imports' summary."""
    summary = output.split("Broken contracts")[0]
    for line in summary.splitlines():
        if line.startswith(contract):
            return line.split()[-1]
    raise AssertionError(f"contract {contract!r} missing from the output:\n{output}")


def test_the_package_keeps_its_import_contracts():
    result = lint_imports(PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "KEPT"
    assert verdict(result.stdout, ACYCLIC) == "KEPT"


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the package under tmp_path/src (returned: the copy's package folder)."""
    copy = tmp_path / "src" / "deepadversaries"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_an_upward_import_in_a_scratch_module_breaks_the_layers(package_copy):
    # plots sit below grid: a figure module must not import the experiment grid
    (package_copy / "plots" / "_scratch_upward.py").write_text("from deepadversaries import grid\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.plots is not allowed to import deepadversaries.grid" in result.stdout
    assert "deepadversaries.plots._scratch_upward -> deepadversaries.grid" in result.stdout


def test_an_upward_import_hidden_in_a_function_breaks_the_layers(package_copy):
    # a maths module (no file I/O) reaching for a report from inside a function
    stats = package_copy / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _scratch():\n    from deepadversaries import report\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.stats -> deepadversaries.report" in result.stdout


def test_a_cycle_inside_one_layer_breaks_the_acyclic_contract(package_copy):
    # analysis imports stats (both maths); stats importing analysis back is a cycle, not a layer fault
    stats = package_copy / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _scratch():\n    from deepadversaries import analysis\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "KEPT"
    assert verdict(result.stdout, ACYCLIC) == "BROKEN"
    assert ".stats -> .analysis" in result.stdout


def test_a_module_without_a_layer_breaks_the_layers(package_copy):
    (package_copy / "scratch_unplaced.py").write_text('"""A module nobody gave a layer."""\n')
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.scratch_unplaced" in result.stdout.split("not listed as layers")[1]
