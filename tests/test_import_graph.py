"""No import cycles between the kit's modules (lazy imports inside functions included), and the round
core, the methods and the federation math import neither Lightning nor Flower (nor the runtimes)."""

from __future__ import annotations

import ast
from pathlib import Path

from .conftest import REPO

PACKAGES = ("kit", "eval")


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from pkg import submodule` depends on the submodule (and on pkg only for other names)
                subs = [f"{node.module}.{a.name}" for a in node.names]
                targets = [t if t in files else node.module for t in subs]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in files and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles():
    graph = _graph()
    assert len(graph) > 50
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]  # the check finds one


def test_the_round_core_imports_no_runtime():
    graph = _graph()
    core = [m for m in graph if m.startswith(("kit.rounds", "kit.methods", "kit.federation"))]
    reach, todo = set(), list(core)
    while todo:
        m = todo.pop()
        if m not in reach:
            reach.add(m)
            todo += graph[m]
    assert not {m for m in reach if m.startswith(("kit.loop", "kit.deploy", "kit.module", "kit.cli"))}
    for m in reach:  # module-level imports (a Trainer's logging may import Lightning inside a function)
        path = REPO / (m.replace(".", "/") + ".py")
        path = path if path.is_file() else REPO / m.replace(".", "/") / "__init__.py"
        body = ast.parse(path.read_text()).body
        names = [a.name for n in body if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in body if isinstance(n, ast.ImportFrom) and n.module]
        assert not [n for n in names if n.split(".")[0] in ("lightning", "flwr")], m


def test_no_code_outside_the_methods_reads_a_methods_private_state():
    import re

    private = r"(probs|downlinks|pool|perturber|hp|server|probabilities_sorted|decay|named|wire_dtype|fed)"
    pattern = re.compile(rf"\b(method|m|self\.method|rt\.method|self\.rt\.method)\.{private}\b")
    hits = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for pkg in PACKAGES
        for p in (REPO / pkg).rglob("*.py")
        if not p.is_relative_to(REPO / "kit" / "methods")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, "\n".join(hits)
    assert pattern.search("x = m.probs") and pattern.search("self.method.hp['lr']")  # the check bites
