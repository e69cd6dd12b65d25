"""kopt's import layers, read from the source with `ast` (every import, at module level or inside a function).

cli -> commands -> ttt/kernels -> pool -> samplers/evaluator/selection/metrics/prompt/task -> config ->
settings/records/errors. A module imports from its own layer or below, never above; no import circle between
modules (a package counts as one unit: kopt.evaluator, kopt.samplers, kopt.cli); no module imports another
module's private `_name`; the hermetic child package imports only the standard library, torch and itself.
docs/design.md shows the same map.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "kopt"

# Top to bottom. A unit is a module or a package (its submodules belong to it).
LAYERS: list[tuple[str, set[str]]] = [
    ("cli", {"kopt.cli", "kopt.__main__"}),
    ("commands", {"kopt.pipeline", "kopt.comparison", "kopt.check", "kopt.githook", "kopt.scaffold"}),
    ("ttt/kernels", {"kopt.ttt", "kopt.ttt_train", "kopt.refine", "kopt.kernels", "kopt.output", "kopt.swap", "kopt.git"}),
    ("pool", {"kopt.pool", "kopt.lazy", "kopt.run_options"}),
    ("services", {"kopt.samplers", "kopt.evaluator", "kopt.executors", "kopt.selection", "kopt.metrics", "kopt.scoring",
                  "kopt.compare_report", "kopt.prompt", "kopt.task",
                  "kopt.task_probe", "kopt.cache", "kopt.plots", "kopt.resources"}),
    ("config", {"kopt.config"}),
    ("base", {"kopt.settings", "kopt.records", "kopt.errors"}),
]
CHILD = "kopt.evaluator.kopt_child"
# Private names still imported across modules, each to be made public by its owner; the list only shrinks.
KNOWN_PRIVATE = {("kopt.evaluator", "kopt.task", "_apply_sets")}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = modules()


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((mod, [a.name for a in node.names], node.lineno))
    return out


def unit(name: str) -> str | None:
    for _, members in LAYERS:
        for m in members:
            if name == m or name.startswith(m + "."):
                return m
    return None


def layer(name: str) -> int | None:
    u = unit(name)
    return next(i for i, (_, members) in enumerate(LAYERS) if u in members) if u else None


def edges() -> dict[str, set[str]]:
    """unit -> units it imports (kopt's own modules only; `from kopt import x` counts as kopt.x)."""
    out: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        src = unit(name)
        if src is None:
            continue
        for mod, names, _ in imports(name, path):
            targets = [f"{mod}.{n}" for n in names if f"{mod}.{n}" in MODULES] if mod == "kopt" else [mod]
            for t in targets:
                dst = unit(t)
                if dst is not None and dst != src:
                    out.setdefault(src, set()).add(dst)
    return out


def test_every_module_has_a_layer():
    missing = sorted(n for n in MODULES if n != "kopt" and unit(n) is None)
    assert not missing, f"give these modules a layer in tests/test_layers.py and docs/design.md: {missing}"


def test_imports_point_down_the_layers():
    bad = []
    for src, dsts in edges().items():
        for dst in dsts:
            if layer(dst) < layer(src):
                bad.append(f"{src} ({LAYERS[layer(src)][0]}) imports {dst} ({LAYERS[layer(dst)][0]})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_circle():
    graph = edges()
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                cycles.append(" -> ".join(path[path.index(m):] + [m]) if m in path else f"{n} -> {m}")
            elif m not in state:
                visit(m, path + [m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert not cycles, "\n".join(cycles)


def test_no_module_imports_another_modules_private_name():
    bad = []
    for name, path in MODULES.items():
        for mod, names, line in imports(name, path):
            if not mod.startswith("kopt") or mod == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__") and (name, mod, n) not in KNOWN_PRIVATE:
                    bad.append(f"{path.relative_to(ROOT.parent)}:{line}: from {mod} import {n}")
    assert not bad, "\n".join(bad)


def test_the_child_package_imports_only_the_standard_library_torch_and_itself():
    bad = []
    for name, path in MODULES.items():
        if not (name == CHILD or name.startswith(CHILD + ".")):
            continue
        for mod, _, line in imports(name, path):
            top = mod.split(".")[0]
            if mod.startswith(CHILD) or top in sys.stdlib_module_names or top == "torch" or top == "__future__":
                continue
            bad.append(f"{path.relative_to(ROOT.parent)}:{line}: import {mod}")
    assert not bad, "\n".join(bad)


def test_the_checker_sees_a_violation():
    # The pool importing the pipeline would point up two layers; the rule must catch it.
    assert layer("kopt.pipeline") < layer("kopt.pool")
    assert unit("kopt.evaluator.kopt_child.harness") == "kopt.evaluator"
