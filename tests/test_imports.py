"""The package's import layering: kernels import nothing above them, and the config, the plugin
registry, the plugins and the outputs import each other without a cycle.

The graph is read from the source (every ``import`` of a ``forcedphot`` module, at module level
or inside a function, except under ``if TYPE_CHECKING:``), so an import deferred into a function
to dodge a cycle still counts. Run ``python tests/test_imports.py`` to print the graph's cycles.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "etl" / "forcedphot"
# third-party packages a kernel may import besides the standard library
KERNEL_LIBRARIES = {"numpy", "numba", "llvmlite", "scipy"}
# the modules whose imports must form no cycle (the registry, config, outputs and what they reach)
LAYERED = ("forcedphot.config", "forcedphot.layout", "forcedphot.outputs", "forcedphot.validity",
           "forcedphot.calibrate", "forcedphot.stages", "forcedphot.plugins", "forcedphot.kernels")


def module_files(root: Path = PACKAGE) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute; a ``from m import x`` counts m and m.x)."""
    names: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and _type_checking_only(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def import_graph(modules: dict[str, Path] | None = None) -> dict[str, set[str]]:
    """forcedphot module -> the forcedphot modules it imports (a module imports its parent packages;
    a module's own ancestors are left out: Python has loaded them before it)."""
    modules = modules or module_files()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for mod, path in modules.items():
        deps = set()
        for name in imported_names(path):
            target = resolve(name) if name.startswith("forcedphot") else None
            if target is None:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # importing a.b.c runs a.b's __init__ first
                dep = ".".join(parts[:i])
                if dep != mod and not mod.startswith(dep + ".") and dep in modules:
                    deps.add(dep)
        graph[mod] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _layered(mod: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in LAYERED)


def test_kernels_import_only_kernels_and_numeric_libraries():
    modules = module_files()
    offenders = {}
    for mod, path in modules.items():
        if not mod.startswith("forcedphot.kernels"):
            continue
        bad = sorted(n for n in imported_names(path)
                     if (n.startswith("forcedphot") and not n.startswith("forcedphot.kernels"))
                     or (not n.startswith("forcedphot") and n.split(".")[0] not in KERNEL_LIBRARIES
                         and n.split(".")[0] not in sys.stdlib_module_names))
        if bad:
            offenders[mod] = bad
    assert not offenders, f"kernel modules import from above forcedphot.kernels: {offenders}"


def test_config_registry_plugins_outputs_form_no_cycle():
    found = [c for c in cycles(import_graph()) if any(_layered(m) for m in c)]
    assert not found, f"import cycles: {found}"


def test_graph_finds_a_deferred_cycle(tmp_path):
    """The checks above can fail: a cycle closed by an import inside a function is found."""
    pkg = tmp_path / "forcedphot"
    (pkg / "plugins").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def check():\n    from forcedphot.plugins import PLUGINS\n")
    (pkg / "plugins" / "__init__.py").write_text("from forcedphot.plugins.base import Plugin\n")
    (pkg / "plugins" / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from forcedphot.outputs import x\n"
        "from forcedphot.config import check\n")
    (pkg / "outputs.py").write_text("from forcedphot.plugins import PLUGINS\n")
    graph = import_graph(module_files(pkg))
    assert cycles(graph) == [["forcedphot.config", "forcedphot.plugins", "forcedphot.plugins.base"]]
    assert "forcedphot.outputs" not in graph["forcedphot.plugins.base"]  # TYPE_CHECKING imports do not count


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_config_imports_no_plugin_even_to_validate_names():
    res = _fresh(
        "import sys\n"
        "import forcedphot.config as c\n"
        "assert 'forcedphot.plugins' not in sys.modules and 'numba' not in sys.modules, sorted(sys.modules)\n"
        "c.ForcedPhotConfig(plugins=('PsfFlux',))\n"
        "assert 'forcedphot.plugins' not in sys.modules  # names checked against config.PLUGIN_NAMES\n"
        "try:\n"
        "    c.ForcedPhotConfig(plugins=('NoSuchFlux',))\n"
        "except c.ConfigError as e:\n"
        "    print(e)\n")
    assert res.returncode == 0, res.stderr
    assert "unknown plugin(s) ['NoSuchFlux']" in res.stdout


@pytest.mark.parametrize("module", ["forcedphot.plugins", "forcedphot.outputs", "forcedphot.task"])
def test_plugins_first_in_a_fresh_interpreter(module):
    """Importing the registry (or what builds on it) first works, and the plugins load no config module."""
    res = _fresh(f"import sys, {module}\n"
                 "from forcedphot.plugins import PLUGINS\n"
                 "print(len(PLUGINS), 'forcedphot.config' in sys.modules)\n")
    assert res.returncode == 0, res.stderr
    count, config_loaded = res.stdout.split()
    assert int(count) >= 14
    if module == "forcedphot.plugins":
        assert config_loaded == "False"


def test_registry_is_filled_by_the_plugins_themselves():
    from forcedphot.config import ForcedPhotConfig
    from forcedphot.plugins import DEFAULT_PLUGINS, PLUGINS, Plugin, register

    assert set(ForcedPhotConfig().plugins) <= set(PLUGINS) == set(DEFAULT_PLUGINS)
    assert all(cls.name == name and issubclass(cls, Plugin) for name, cls in PLUGINS.items())

    class Impostor(Plugin):
        name = "PsfFlux"

    with pytest.raises(ValueError, match="taken by forcedphot.plugins.psf_flux.PsfFlux"):
        register(Impostor)
    assert PLUGINS["PsfFlux"].__module__ == "forcedphot.plugins.psf_flux"


if __name__ == "__main__":  # python tests/test_imports.py [etl/forcedphot]: import cycles and kernel offenders
    g = import_graph(module_files(Path(sys.argv[1]).resolve()) if len(sys.argv) > 1 else None)
    for c in cycles(g):
        print("cycle:", " ".join(c))
    for m in sorted(g):
        if m.startswith("forcedphot.kernels"):
            up = sorted(d for d in g[m] if not d.startswith("forcedphot.kernels"))
            if up:
                print(f"{m} imports {up}")
