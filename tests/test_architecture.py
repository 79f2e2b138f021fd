"""The package's import graph: one-way, as docs/contributing.rst draws it (adapters → traces → decomposition →
aggregation → engine → front ends). Read from the source with ``ast`` (function-level imports included), so an
import added anywhere that runs against the flow, or closes a circle, fails here."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: a module's floor (the longest matching prefix wins): a module may import its own floor or lower ones only
FLOORS: dict[str, int] = {
    # the data and the maths every floor shares
    "latim_captum._precision": 0,
    "latim_captum._model_state": 0,
    "latim_captum._embedding_forward": 0,
    "latim_captum.traces": 0,
    "latim_captum.activations": 0,
    "latim_captum.ssm": 0,
    "latim_captum.attention": 0,
    "latim_captum.shared": 0,
    "latim_captum.catalog": 0,
    "latim_captum.viz": 0,
    "latim_captum._environment": 0,  # versions and device names for reports: imports nothing of the package
    # model families in, traces out
    "latim_captum.adapters": 1,
    # checks on what a caller passes, contribution vectors, scores from vectors
    "latim_captum._validation": 2,
    "latim_captum._queries": 2,
    "latim_captum.decompose": 2,
    "latim_captum.row_sums": 2,
    "latim_captum.aggregate": 2,
    # the engine: traces in, maps out
    "latim_captum.maps": 3,
    # the functions that take a model
    "latim_captum.api": 4,
    "latim_captum._memory": 4,
    "latim_captum.single_query": 4,
    "latim_captum.baselines": 4,
    "latim_captum.gradient_rows": 4,
    # front ends
    "latim_captum.methods": 5,
    "latim_captum.attr": 5,
    "latim_captum.inseq": 5,
    "latim_captum.inseq_targets": 5,
    "latim_captum.tasks": 5,
    "latim_captum.copying": 5,
    "latim_captum.alignment": 5,
    "latim_captum.retrieval": 5,
    "latim_captum.paper": 5,
    "latim_captum.dataset": 5,
    "latim_captum.models": 5,
    "latim_captum._loading": 5,
    "latim_captum._plots": 5,
    # tools and the package itself
    "latim_captum.cli": 6,
    "latim_captum.inseq_cli": 6,
    "latim_captum.bench_speed": 6,
    "latim_captum.bench_whole": 6,
    "latim_captum": 6,
}


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the installed layout (``adapters/`` is ``latim_captum.adapters``): name → (file, is package)."""
    found = {}
    for base, package in ((ROOT / "latim_captum", "latim_captum"), (ROOT / "adapters", "latim_captum.adapters")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            found[".".join([package, *(parts[:-1] if is_package else parts)])] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, pkg, modules) for name, (path, pkg) in modules.items()}


def _floor(name: str) -> int:
    prefix = max((p for p in FLOORS if name == p or name.startswith(p + ".")), key=len, default=None)
    assert prefix is not None, f"{name} has no floor in FLOORS: place it in the flow"
    return FLOORS[prefix]


def test_every_module_has_a_floor_and_imports_only_down():
    upward = [
        f"{name} (floor {_floor(name)}) imports {dep} (floor {_floor(dep)})"
        for name, deps in _graph().items()
        for dep in sorted(deps)
        if _floor(dep) > _floor(name)
    ]
    assert not upward, "imports against the flow:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (circle := visit(dep)):
                return circle
        path.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            circle = visit(name)
            assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_graph_reader_sees_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The two tests above can fail: a package with ``a → b → a`` and a floor-0 module importing a floor-6 one."""
    pkg = tmp_path / "latim_captum"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "traces.py").write_text("from latim_captum import cli\n")
    (pkg / "cli.py").write_text("def f():\n    from .traces import x\n")
    (tmp_path / "adapters").mkdir()
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    graph = _graph()
    assert graph["latim_captum.traces"] == {"latim_captum.cli"}
    assert graph["latim_captum.cli"] == {"latim_captum.traces"}
    assert _floor("latim_captum.cli") > _floor("latim_captum.traces")
