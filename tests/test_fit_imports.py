"""No import cycle inside a package (fitting/, engine/, kernels/, flopscale/), function-local
imports counted; fitting/ keeps its imports at the top of each module, matplotlib aside, and its
layers (compute, results, presentation, orchestration) point one way; docs/ARCHITECTURE.md names
every module of the four packages.

    python -m pytest -q tests/test_fit_imports.py

Beside the one-way test between packages (tests/test_backends.py, test_fitting_imports_only_fileio
and test_kernels_import_no_engine), which these do not repeat.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = {"fitting": ROOT / "fitting", "engine": ROOT / "engine", "kernels": ROOT / "kernels",
            "flopscale": ROOT / "flopscale"}
# heavy and optional for computing a fit: drawing imports it where it draws
LOCAL_OK = ("matplotlib",)


def module_imports(path: pathlib.Path, package: str):
    """(target module inside the package, line, function-local?) for every import of path."""
    mods = {p.stem for p in path.parent.glob("*.py")}
    tree = ast.parse(path.read_text(), str(path))
    top = set(map(id, tree.body))
    for node in ast.walk(tree):
        local = id(node) not in top
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                base = node.module.split(".")[0] if node.module else None
            elif node.level == 0 and node.module and node.module.startswith(f"flopscale.{package}"):
                rest = node.module[len(f"flopscale.{package}"):].lstrip(".")
                base = rest.split(".")[0] if rest else None
            elif node.level == 0 and package == "flopscale" and node.module and node.module.startswith("flopscale."):
                base = node.module.split(".")[1]
            else:
                continue
            if base is None:  # from . import a, b  /  from flopscale.fitting import fit
                targets = [a.name for a in node.names if a.name in mods] or ["__init__"]
            else:
                targets = [base]
        elif isinstance(node, ast.Import):
            targets = []
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "flopscale" and (package == "flopscale" or parts[1:2] == [package]):
                    rest = parts[1:] if package == "flopscale" else parts[2:]
                    targets.append(rest[0] if rest else "__init__")
        else:
            continue
        for t in targets:
            if t in mods and t != path.stem:
                yield t, node.lineno, local


def find_cycle(graph):
    """One cycle of the directed graph {node: {succ}} as a list of nodes, or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                c = visit(m)
                if c:
                    return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            c = visit(n)
            if c:
                return c
    return None


def package_graph(package):
    d = PACKAGES[package]
    return {p.stem: {t for t, _, _ in module_imports(p, package)} for p in sorted(d.glob("*.py"))}


# Cycles known when this test was written, each to be removed by its owner (then drop it here: the
# test fails while an entry no longer exists, so the list cannot go stale).
KNOWN_CYCLES: dict = {}  # {package: [(module, module it imports), ...]} a cycle waiting for a fix; none now


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_import_cycle_inside_a_package(package):
    # a submodule importing its own package's __init__ is the package importing itself: not an edge
    g = {m: {t for t in ts if t != "__init__" or m == "__init__"} for m, ts in package_graph(package).items()}
    for a, b in KNOWN_CYCLES.get(package, []):
        assert b in g.get(a, set()), f"{package}: the known cycle {a} -> {b} is gone; remove it from KNOWN_CYCLES"
        g[a] = g[a] - {b}
    cyc = find_cycle(g)
    assert cyc is None, f"{package}/ has an import cycle (function-local imports counted): {' -> '.join(cyc)}"


def test_fitting_imports_at_module_top():
    bad = []
    for p in sorted(PACKAGES["fitting"].glob("*.py")):
        tree = ast.parse(p.read_text(), str(p))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                name = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                if not (name or "").startswith(LOCAL_OK):
                    bad.append(f"fitting/{p.name}:{node.lineno} imports {'.' * getattr(node, 'level', 0)}{name}")
    assert not bad, "function-local imports in fitting/: " + "; ".join(bad)


def test_the_cycle_finder_sees_a_function_local_cycle(tmp_path):
    pkg = tmp_path / "fitting"
    pkg.mkdir()
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("def f():\n    from .a import y\n")
    (pkg / "c.py").write_text("from flopscale.fitting.a import x\nimport flopscale.fitting.b\n")
    g = {p.stem: {t for t, _, _ in module_imports(p, "fitting")} for p in sorted(pkg.glob("*.py"))}
    assert g == {"a": {"b"}, "b": {"a"}, "c": {"a", "b"}}
    assert find_cycle(g) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# fitting/'s layers (docs/ARCHITECTURE.md): compute builds the results, presentation reads them,
# orchestration (api, cli, writes) calls both.  numbers.py, the one number formatter, serves both
# (caveats and plan notes are text too); results.py is the bottom and imports nothing of fitting/.
PRESENTATION = ("plotting", "figures", "panels", "report", "ablation_report", "outlook_report")
ORCHESTRATION = ("__init__", "api", "cli", "writes")
# what a presentation module may import from fitting/: the results, the laws, the plotting helpers
PRESENTATION_MAY_IMPORT = {"results", "laws", "numbers", *PRESENTATION}


def _layer_edges():
    return {m: ts - {"__init__"} for m, ts in package_graph("fitting").items()}


@pytest.mark.parametrize("name", PRESENTATION)
def test_presentation_imports_only_results_laws_and_plotting(name):
    bad = _layer_edges()[name] - PRESENTATION_MAY_IMPORT
    assert not bad, f"fitting/{name}.py (presentation) imports {sorted(bad)}: only {sorted(PRESENTATION_MAY_IMPORT)}"


def test_compute_imports_no_presentation_and_results_imports_nothing():
    g = _layer_edges()
    for m, ts in g.items():
        if m not in PRESENTATION and m not in ORCHESTRATION:
            assert not ts & set(PRESENTATION), f"fitting/{m}.py (compute) imports presentation {sorted(ts & set(PRESENTATION))}"
    assert g["results"] == set(), f"fitting/results.py imports {sorted(g['results'])}"
    assert g["numbers"] == set(), f"fitting/numbers.py imports {sorted(g['numbers'])}"


def test_every_fitting_module_has_a_layer():
    compute = set(_layer_edges()) - set(PRESENTATION) - set(ORCHESTRATION)
    # a new module lands in one of the three on purpose: name it here when it is compute
    assert compute == {"_threads", "ablations", "backtest", "batch", "estimator", "frontier", "isoflop", "laws",
                       "numbers", "plan", "positions", "results", "runs", "selection", "study", "synth"}
FITTERS = {"fit", "fit_power", "fit_isoflop", "frontier", "lower_envelope", "fit_position_law", "position_fits",
           "ablations", "build_payload", "approach3", "fit_and_report", "plan_runs", "plan_table", "load_runs",
           "load_run"}


@pytest.mark.parametrize("name", PRESENTATION)
def test_presentation_imports_no_fitting_function(name):
    tree = ast.parse((PACKAGES["fitting"] / f"{name}.py").read_text())
    got = {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for a in node.names}
    assert not got & FITTERS, f"fitting/{name}.py imports {sorted(got & FITTERS)}: presentation must not fit"


def test_architecture_names_every_module():
    # docs/ARCHITECTURE.md's module maps: a module added without a line there fails here
    doc = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    missing = [f"{pkg}/{p.name}" for pkg, d in PACKAGES.items() for p in sorted(d.glob("*.py"))
               if p.name != "__init__.py" and f"`{p.name}`" not in doc and f"{pkg}/{p.name}" not in doc
               and f"`{p.stem}`" not in doc]
    assert not missing, f"docs/ARCHITECTURE.md names no line for: {', '.join(missing)}"
