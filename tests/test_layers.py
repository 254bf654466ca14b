"""The import layers of docs/architecture.md, enforced by import-linter (pyproject.toml `[tool.importlinter]`).

Two contracts: `layers` (each module imports only from the levels below its own, function-level
imports included; every top-level module must be given a level) and `acyclic` (no import cycle
between the modules of one subpackage). Two checks import-linter cannot state are made here with its
graph library (grimp): every module of every subpackage has a level, and the whole module graph has
no cycle (two modules of one level, in different subpackages, importing each other). The first tests
run them on the package as it is; the others run the same checks on a copy of the package with one
deliberate fault each and check that the right one breaks, naming the offending import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import deepadversaries

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
PACKAGE = Path(deepadversaries.__file__).resolve().parent
LAYERS = "Imports flow one way"
ACYCLIC = "No import cycle"


def layered_modules() -> set[str]:
    """Every module named in the layers contract of pyproject.toml (full dotted names)."""
    import tomllib
    config = tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]
    contract = next(c for c in config["contracts"] if c["id"] == "layers")
    names = set()
    for level in contract["layers"]:
        for tail in level.replace("|", ":").split(":"):
            names.add(f"deepadversaries.{tail.strip()}")
    return names


def module_graph(search_path: Path) -> grimp.ImportGraph:
    """The package's import graph (function-level imports included), as found first on `search_path`."""
    sys.path.insert(0, str(search_path))
    saved = {name: module for name, module in sys.modules.items() if name.split(".")[0] == "deepadversaries"}
    for name in saved:
        del sys.modules[name]
    try:
        return grimp.build_graph("deepadversaries", cache_dir=None)
    finally:
        sys.path.remove(str(search_path))
        sys.modules.update(saved)


def unplaced_modules(graph: grimp.ImportGraph) -> list[str]:
    """Modules inside a subpackage (other than its ``__init__``) that no level of the layers contract names,
    neither themselves nor a package above them (``cli``, ``plots``)."""
    placed = layered_modules()
    packages = {m for m in graph.modules if graph.find_children(m)}
    unplaced = []
    for module in sorted(graph.modules):
        if module.count(".") < 2 or module in packages:
            continue  # top-level modules: import-linter's exhaustive check
        parents = [module.rsplit(".", k)[0] for k in range(module.count("."))]  # itself, then its packages
        if not any(p in placed for p in parents):
            unplaced.append(module)
    return unplaced


def import_cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every cycle (a strongly connected component of two or more modules) in the module graph; imports of
    a package's ``__init__`` are left out (a subpackage's ``__init__`` re-exports lazily)."""
    packages = {m for m in graph.modules if graph.find_children(m)}
    nodes = sorted(m for m in graph.modules if m not in packages)
    edges = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d in nodes and d != m) for m in nodes}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return components


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


def test_every_module_has_a_level_and_the_module_graph_has_no_cycle():
    graph = module_graph(PACKAGE.parent)
    assert "deepadversaries.attacks.campaign" in graph.modules  # the graph is the package's
    assert unplaced_modules(graph) == []
    assert import_cycles(graph) == []


@pytest.fixture
def package_copy(tmp_path) -> Path:
    """A copy of the package under tmp_path/src (returned: the copy's package folder)."""
    copy = tmp_path / "src" / "deepadversaries"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_an_upward_import_in_a_scratch_module_breaks_the_layers(package_copy):
    # plots sit below grid: a figure module must not import the experiment grid
    (package_copy / "plots" / "_scratch_upward.py").write_text("from deepadversaries.workflow import grid\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.plots is not allowed to import deepadversaries.workflow.grid" in result.stdout
    assert "deepadversaries.plots._scratch_upward -> deepadversaries.workflow.grid" in result.stdout


def test_an_upward_import_hidden_in_a_function_breaks_the_layers(package_copy):
    # a maths module (no file I/O) reaching for a report from inside a function
    stats = package_copy / "analysis" / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _scratch():\n    from deepadversaries.reporting import report\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.analysis.stats -> deepadversaries.reporting.report" in result.stdout


def test_a_cycle_inside_one_subpackage_breaks_the_acyclic_contract(package_copy):
    # latent imports stats (both maths of analysis/); stats importing latent back is a cycle, not a layer fault
    stats = package_copy / "analysis" / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _scratch():\n    from deepadversaries.analysis import latent\n")
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "KEPT"
    assert verdict(result.stdout, ACYCLIC) == "BROKEN"
    assert ".stats -> .latent" in result.stdout


def test_a_cycle_across_subpackages_is_found_in_the_module_graph(package_copy):
    # analysis.stats and corruptions.error share a level; each importing the other is a cycle no contract sees
    error = package_copy / "corruptions" / "error.py"
    error.write_text(error.read_text() + "\n\ndef _scratch():\n    from deepadversaries.analysis import stats\n")
    stats = package_copy / "analysis" / "stats.py"
    stats.write_text(stats.read_text() + "\n\ndef _scratch():\n    from deepadversaries.corruptions import error\n")
    assert lint_imports(package_copy.parent).returncode == 0  # both contracts kept ...
    cycles = import_cycles(module_graph(package_copy.parent))
    assert cycles == [["deepadversaries.analysis.stats", "deepadversaries.corruptions.error"]]  # ... the graph check is not


def test_a_module_without_a_layer_breaks_the_layers(package_copy):
    (package_copy / "scratch_unplaced.py").write_text('"""A module nobody gave a layer."""\n')
    result = lint_imports(package_copy.parent)
    assert result.returncode == 1, result.stdout + result.stderr
    assert verdict(result.stdout, LAYERS) == "BROKEN"
    assert "deepadversaries.scratch_unplaced" in result.stdout.split("not listed as layers")[1]


def test_a_subpackage_module_without_a_level_is_found(package_copy):
    (package_copy / "attacks" / "scratch_unplaced.py").write_text('"""A search nobody gave a level."""\n')
    assert unplaced_modules(module_graph(package_copy.parent)) == ["deepadversaries.attacks.scratch_unplaced"]
