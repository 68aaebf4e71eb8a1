"""The package's shape: no import cycle among bridgegan's modules, lazy (function-level)
imports included. The graph is read from the source with ``ast``: every ``import`` and
``from ... import`` statement anywhere in a module, relative ones resolved; ``from package
import name`` imports the submodule ``package.name`` when there is one, the submodule a
package exports ``name`` from lazily (its ``_EXPORTS``, ``lazy.py``) when it does, else
``package``. A package's ``__init__`` also imports each submodule it names in a string
(lazy exports, the backend registry's ``import_module``), and a module holding a string
``".module:attr"`` imports that module (the command table's runners, the dataset
registry's classes). Parent packages, which Python initialises first, are not edges.
Beside it, every registry row is checked to name a module and function that exist (those
are imported: torch with them)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import bridgegan

ROOT = Path(bridgegan.__file__).parent


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def lazy_exports(path: Path) -> dict[str, str]:
    """name -> ".submodule" of a package ``__init__``'s ``_EXPORTS`` table (or {})."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_EXPORTS"
                                                for t in node.targets):
            return {n: sub for sub, names in ast.literal_eval(node.value).items() for n in names}
    return {}


def imports_of(name: str, path: Path, files: dict[str, Path]) -> set[str]:
    """The bridgegan modules that module ``name`` (file ``path``) imports."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up level - 1 packages from this one
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            lazy = lazy_exports(files[base]) if files.get(base, Path()).name == "__init__.py" \
                else {}
            for alias in node.names:  # a submodule, a lazy export, or a name ``base`` defines
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in files else
                          base + lazy[alias.name] if alias.name in lazy else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if is_package:
                found.add(f"{name}.{node.value.lstrip('.')}")
            target = re.fullmatch(r"(\.+)([\w.]+):\w+", node.value)  # a registry's ".mod:attr"
            if target:
                parts = package.split(".")
                found.add(".".join(parts[:len(parts) - len(target[1]) + 1] + [target[2]]))
    return {m for m in found if m in files and m != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, files) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "bridgegan.engine.backends.torch" in graph["bridgegan.engine.backends.triton"]
    assert "bridgegan.reference.model" in graph["bridgegan.engine.engine"]
    # a function-level import counts (engine/commands.py imports the engine lazily)
    assert "bridgegan.engine.engine" in graph["bridgegan.engine.commands"]
    # lazy exports: `from ..engine import Engine` reaches engine/engine.py, and the
    # registry's import_module reaches each backend's module
    assert "bridgegan.engine.engine" in graph["bridgegan.evaluate"]
    assert "bridgegan.engine.backends.onnxruntime" in graph["bridgegan.engine.backends"]
    # ".module:attr" strings: the command table's runners, the dataset registry's classes
    assert "bridgegan.engine.commands" in graph["bridgegan.cli"]
    assert "bridgegan.reference.data.celeba" in graph["bridgegan.reference.data.registry"]


def test_a_planted_lazy_cycle_is_found():
    """The loop issue 15 named (engine/parity -> evaluate -> the engine, lazily) is seen."""
    graph = import_graph()
    graph["bridgegan.engine.engine"].add("bridgegan.evaluate")
    assert find_cycle(graph) is not None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _resolved(package: str, target: str):
    """What a registry's ``".module:attr"`` (relative to ``package``) names."""
    import importlib

    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module, package), attr)


def test_every_registry_row_names_what_exists():
    """Each command's runner and each dataset kind's class resolve (a typo in a row passed
    every test and failed only when that command or dataset was used), and the backends'
    rows and modules match one for one, each module with its ``build``."""
    from bridgegan import cli
    from bridgegan.engine import backends
    from bridgegan.reference.data import registry

    for command in cli.COMMANDS:
        assert callable(_resolved("bridgegan", command.run)), command.name
    for name, kind in registry.DATASETS.items():
        assert isinstance(_resolved("bridgegan.reference.data", kind.target), type), name
    helpers = {"__init__", "base", "exported"}  # the registry and what backends share
    modules = {p.stem for p in (ROOT / "engine" / "backends").glob("*.py")} - helpers
    assert modules == set(backends.REGISTRY), "a backend module without a row, or a row " \
                                              "without a module"
    for name, row in backends.REGISTRY.items():
        assert name.isidentifier(), name  # the name is its module's
        assert callable(_resolved("bridgegan.engine.backends", f".{name}:build")), name


def test_every_kernel_row_names_what_exists():
    """Each fused op's row in kernels/registry.py names a function of its op module that
    bridgegan.kernels exports, whose ``impl`` defaults to the row's first impl and refuses
    what the row does not list; a Triton module; a parity test file that calls it (the op
    table's rows: tests/test_kernels.py). Every op module and Triton module of kernels/,
    and every exported function with an ``impl``, is some row's."""
    import importlib
    import inspect

    import pytest

    from bridgegan import kernels
    from bridgegan.kernels.registry import IMPLS, KERNELS, OP_PARITY

    shared = {"__init__", "registry", "dispatch", "layout", "parity"}  # what the ops share
    stems = {p.stem for p in (ROOT / "kernels").glob("*.py")} - shared
    tritons = {s.removeprefix("_triton_") for s in stems if s.startswith("_triton_")}
    assert stems - {f"_triton_{t}" for t in tritons} == {k.module for k in KERNELS.values()}, \
        "an op module without a row, or a row without its module"
    assert tritons == {k.triton for k in KERNELS.values()}, \
        "a Triton module without a row, or a row without its module"
    assert {n for n in kernels.__all__ if inspect.isfunction(getattr(kernels, n))
            and "impl" in inspect.signature(getattr(kernels, n)).parameters} == set(KERNELS)
    for name, row in KERNELS.items():
        fn = getattr(importlib.import_module(f"bridgegan.kernels.{row.module}"), name)
        assert fn.__module__ == f"bridgegan.kernels.{row.module}", name
        assert name in kernels.__all__ and getattr(kernels, name) is fn, name
        assert inspect.signature(fn).parameters["impl"].default == row.impls[0] == "auto"
        assert set(row.impls) <= set(IMPLS), name
        for impl in set(IMPLS) - set(row.impls):
            with pytest.raises(ValueError, match=f"^{name}: unknown impl '{impl}'"):
                fn(*[None] * 2, impl=impl)
        if row.parity != OP_PARITY:
            assert name in (ROOT.parent / row.parity).read_text(), name
