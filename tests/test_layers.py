"""Layers import downward only (../shared/design/ARCHITECTURE.md), checked on the source.

The import graph is read with ``ast`` from every module of the package (the repository root
is ``keyprop``; tests/ and bench/ are not part of it), imports inside functions included:
a lazy import is still a dependency. ``from X import name`` counts as importing the module
``X.name`` when that is a module, else ``X``.
"""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "keyprop"
# Folders beside the package's modules that are not part of it (hidden ones neither: .venv,
# .git, tools/blender_envs.py's .venv-blender); they are not even walked (a bpy holds 10k+ files).
NOT_PACKAGE = {"tests", "bench", "tools", "docs", "samples", "models", "keyprop.egg-info"}
HEAVY = {"torch", "onnxruntime"}   # a host adapter never imports these (not even through core)


def _modules():
    """Module name -> (file, is a package) for every .py file of the package."""
    found = {}
    paths = []
    for folder, subfolders, files in os.walk(ROOT):
        if Path(folder) == ROOT:
            subfolders[:] = [d for d in subfolders if d not in NOT_PACKAGE]
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and d != "__pycache__")
        paths += [Path(folder) / f for f in files if f.endswith(".py")]
    for path in sorted(paths):
        rel = path.relative_to(ROOT)
        parts = [PACKAGE, *rel.with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


MODULES = _modules()


def _module_level(tree):
    """Nodes run when the module is imported (function bodies left out)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports(module, module_level_only=False):
    """Names of the modules ``module`` imports, as (name, line)."""
    path, is_package = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in _module_level(tree) if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                found.append((sub if sub in MODULES else source, node.lineno))
    return found


def import_graph():
    """keyprop module -> the keyprop modules it imports (anywhere in its source)."""
    return {m: sorted({t for t, _ in imports(m) if t in MODULES and t != m}) for m in MODULES}


def cycles(graph):
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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


def import_time_closure(module):
    """Everything importing ``module`` runs: its module-level imports, parents' __init__ included."""
    seen, todo, external = set(), [module], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for target, _ in imports(name, module_level_only=True):
            if target in MODULES:
                todo.append(target)
            elif target.split(".")[0] != PACKAGE:
                external.add(target.split(".")[0])
    return seen, external


def test_the_scan_sees_the_package():
    assert {"keyprop.core.runtime", "keyprop.export.engine", "keyprop.core.model.presets",
            "keyprop.plugin.farm.cli"} <= set(MODULES)
    assert "keyprop.core.model.config" in import_graph()["keyprop.core.model.presets"]


def test_core_imports_neither_export_nor_plugins():
    bad = [f"{MODULES[m][0].relative_to(ROOT)}:{line} imports {target}"
           for m in MODULES if m.startswith(f"{PACKAGE}.core")
           for target, line in imports(m)
           if target.startswith((f"{PACKAGE}.export", f"{PACKAGE}.plugin", f"{PACKAGE}.cli"))]
    assert not bad, "core/ sits below export/, plugin/ and cli.py:\n" + "\n".join(bad)


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_cycles():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c"]]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(f"{PACKAGE}.plugin")))
def test_host_adapters_do_not_import_torch_or_onnxruntime_when_imported(module):
    _, external = import_time_closure(module)
    assert not external & HEAVY, f"importing {module} imports {sorted(external & HEAVY)}"


# --- the engine registry that lets core/runtime.py reach export/ without importing it ---------

def test_create_engine_reaches_registered_and_known_backends(monkeypatch):
    from keyprop.core import runtime

    # Only torch registered, as in a fresh process (earlier tests may have registered onnx).
    monkeypatch.setattr(runtime, "_BACKENDS", {"torch": runtime._BACKENDS["torch"]})
    calls = []
    runtime.register_backend("fake", lambda **kw: calls.append(kw) or "engine")
    assert runtime.create_engine("fake", model="m", device="cpu", threads=3) == "engine"
    assert calls == [dict(model="m", device="cpu", threads=3)]

    with pytest.raises(ValueError, match=r"unknown backend 'nope' \(expected torch or fake or onnx\)"):
        runtime.create_engine("nope")
    from keyprop.export.engine import OnnxEngine
    assert runtime._backend("onnx") is OnnxEngine   # found by name in _KNOWN_BACKENDS


def test_unknown_backend_message_is_unchanged(monkeypatch):
    from keyprop.core import runtime

    monkeypatch.setattr(runtime, "_BACKENDS", {"torch": runtime._BACKENDS["torch"]})
    with pytest.raises(ValueError, match=r"^unknown backend 'tensorrt' \(expected torch or onnx\)$"):
        runtime.create_engine("tensorrt")


def test_onnx_backend_without_onnxruntime_says_what_to_install(monkeypatch):
    import sys

    from keyprop.core import runtime

    monkeypatch.setattr(runtime, "_BACKENDS", {"torch": runtime._BACKENDS["torch"]})
    monkeypatch.setitem(sys.modules, "onnxruntime", None)   # import onnxruntime -> ImportError
    with pytest.raises(ValueError, match=r"the onnx backend needs onnxruntime: run `python3 install.py --onnx`"):
        runtime.create_engine("onnx", model="preset:test", device="cpu")
