"""The package's shape: no import cycles between modules and no upward imports, checked on the source itself.

Every `import` statement in every module counts, including the ones inside functions (the CLI and the heavy
paths import lazily, and a lazy cycle is still a cycle a reader has to untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fastcifar"
# Lower layers never import these (the arrows of the architecture run one way: cli -> study -> train -> data/models;
# serve -> export -> models).
UPWARD = {
    "fastcifar.data": ("fastcifar.train", "fastcifar.study", "fastcifar.serve", "fastcifar.bench", "fastcifar.export",
                       "fastcifar.cli"),
    "fastcifar.models": ("fastcifar.train", "fastcifar.study", "fastcifar.serve", "fastcifar.bench",
                         "fastcifar.export", "fastcifar.cli"),
    "fastcifar.preprocess": ("fastcifar.train", "fastcifar.study", "fastcifar.serve", "fastcifar.bench",
                             "fastcifar.export", "fastcifar.cli"),
    "fastcifar.export": ("fastcifar.train", "fastcifar.study", "fastcifar.serve", "fastcifar.bench", "fastcifar.cli"),
    "fastcifar.robustness": ("fastcifar.train", "fastcifar.study", "fastcifar.serve", "fastcifar.bench",
                             "fastcifar.export", "fastcifar.cli"),
    "fastcifar.train": ("fastcifar.study", "fastcifar.serve", "fastcifar.bench", "fastcifar.cli"),
    "fastcifar.study": ("fastcifar.serve", "fastcifar.bench", "fastcifar.cli"),
    "fastcifar.serve": ("fastcifar.study", "fastcifar.bench", "fastcifar.cli"),
    "fastcifar.bench": ("fastcifar.study", "fastcifar.cli"),
}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The fastcifar modules `name` imports (a `from pkg import x` names module pkg.x when x is a module)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import fastcifar.data.cifar.x` -> the module that exists
                target = target.rpartition(".")[0]
            if target.startswith("fastcifar") and target != name and target != "fastcifar":
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "modules that import each other (directly or in a ring): " + "; ".join(map(" <-> ".join, found))


def test_nothing_imports_upward():
    bad = [f"{name} imports {target}" for name, targets in import_graph().items() for target in targets
           for layer, banned in UPWARD.items() if (name == layer or name.startswith(layer + "."))
           and any(target == b or target.startswith(b + ".") for b in banned)]
    assert not bad, bad


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
