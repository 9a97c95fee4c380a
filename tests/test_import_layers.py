"""The project's modules import in one direction: libraries <- models <- experiments, no cycles.

Every module's imports are read from its source (lazy imports inside functions included), so an
import that only runs on some path cannot hide an upward dependency or a cycle.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Dict, Iterator, List, Set

import pytest

from tests.conftest import REPO_ROOT

# Layer of each top-level name; every other module of the project is an experiment (layer 2).
LIBRARIES = ("g_selfatt", "attgconv")
# ``models`` is the checkout's alias of ``g_selfatt_models`` (the originals' package name).
LAYERS = {**{name: 0 for name in LIBRARIES}, "g_selfatt_models": 1, "models": 1}
LAYER_NAMES = ("library", "models", "experiments")
NOT_MODULES = {".venv", "tests", "build", "demo", ".git"}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> Dict[str, pathlib.Path]:
    """Module name -> file, for every Python file of the project outside the tests."""
    files = (path for path in REPO_ROOT.rglob("*.py") if not NOT_MODULES & set(path.relative_to(REPO_ROOT).parts))
    return {_module_name(path): path for path in sorted(files)}


def _imported_names(path: pathlib.Path, module: str, modules: Set[str]) -> Iterator[str]:
    """Every module ``path`` imports: ``from a import b`` is ``a.b`` if that is a module, else ``a``."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                yield f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project modules it imports (by their files)."""
    modules = project_modules()
    return {module: {name for name in _imported_names(path, module, set(modules)) if name in modules and name != module}
            for module, path in modules.items()}


def layer(module: str) -> int:
    return LAYERS.get(module.split(".")[0], 2)


def upward_imports(graph: Dict[str, Set[str]]) -> List[str]:
    return sorted(f"{module} ({LAYER_NAMES[layer(module)]}) imports {target} ({LAYER_NAMES[layer(target)]})"
                  for module, targets in graph.items() for target in targets if layer(target) > layer(module))


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph()) == []


def test_no_modules_import_each_other_in_a_cycle():
    assert cycles(import_graph()) == []


def test_the_project_does_not_import_the_checkout_alias():
    # Only users' code may import ``models``; the project's modules use the installed name.
    importers = sorted(module for module, targets in import_graph().items()
                       if module.split(".")[0] != "models" and any(t.split(".")[0] == "models" for t in targets))
    assert importers == []


def test_the_checker_sees_lazy_relative_and_upward_imports(tmp_path):
    # A library module importing models inside a function, relatively spelled siblings, a cycle.
    graph = {"g_selfatt.nn.a": {"g_selfatt_models.registry"}, "g_selfatt_models.registry": set(),
             "datasets.x": {"datasets.y"}, "datasets.y": {"datasets.x"}}
    assert upward_imports(graph) == ["g_selfatt.nn.a (library) imports g_selfatt_models.registry (models)"]
    assert cycles(graph) == [["datasets.x", "datasets.y"]]
    source = tmp_path / "g_selfatt" / "nn" / "b.py"
    source.parent.mkdir(parents=True)
    source.write_text("def f():\n    from . import attention\n    from ..groups import Group\n    import g_selfatt_models.cnn\n")
    names = set(_imported_names(source, "g_selfatt.nn.b", {"g_selfatt.nn.attention", "g_selfatt.groups"}))
    assert names == {"g_selfatt.nn.attention", "g_selfatt.groups", "g_selfatt_models.cnn"}


@pytest.mark.parametrize("module", ["g_selfatt.nn.attention", "g_selfatt_models.registry", "main"])
def test_the_project_modules_are_found(module):
    assert module in project_modules()


# The classes a reader opens first, and the compatibility classes attached to them.
ATTACHED = [("g_selfatt.nn.attention", "SelfAttentionCore", "g_selfatt.compat.layer_api", "OriginalLayerAPI"),
            ("g_selfatt.nn.attention", "SelfAttentionCore", "g_selfatt.compat.state_dict", "StateDictCompatibility"),
            ("g_selfatt_models.group_transformer", "GroupTransformer", "g_selfatt_models.compat.group_transformer",
             "OriginalGroupTransformerAPI")]
# The originals' module paths that this project re-exports from its compatibility modules.
ORIGINAL_PATHS = ["attgconv/layers.py", "attgconv/attention_layers.py", "attgconv/RomHog_attention.py",
                  "g_selfatt/nn/rd_self_attention.py", "g_selfatt/nn/lift_self_attention.py",
                  "g_selfatt/nn/group_self_attention.py", "g_selfatt/nn/lift_local_self_attention.py",
                  "g_selfatt/nn/group_local_self_attention.py", "models/group_transformer.py"]


@pytest.mark.parametrize("module, name, compat_module, compat_name", ATTACHED)
def test_compatibility_is_attached_from_its_own_module_not_written_in_the_class(module, name, compat_module, compat_name):
    import importlib

    from torch import nn

    cls = getattr(importlib.import_module(module), name)
    compat = getattr(importlib.import_module(compat_module), compat_name)
    assert cls.__bases__ == (nn.Module,), "the class derives from nn.Module alone, no compatibility mixin"
    attached = [key for key in vars(compat) if not key.startswith("__")]
    assert attached
    source = ast.parse(pathlib.Path(importlib.import_module(module).__file__).read_text())
    (body,) = [node for node in source.body if isinstance(node, ast.ClassDef) and node.name == name]
    own = {node.name for node in body.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    own |= {target.id for node in body.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(target, ast.Name)}
    assert not own & set(attached), f"{name} writes compatibility names itself"
    assert all(vars(cls)[key] is vars(compat)[key] for key in attached), "attached when the package is imported"


def test_attaching_never_replaces_what_a_class_defines():
    from g_selfatt.compat.attach import attach

    class Layer:
        def forward(self):
            return "own"

    class Compat:
        def forward(self):
            return "compat"

    with pytest.raises(TypeError, match=r"Layer already defines \['forward'\]"):
        attach(Layer, Compat)
    assert Layer().forward() == "own"


@pytest.mark.parametrize("path", ORIGINAL_PATHS)
def test_the_originals_module_paths_only_re_export(path):
    tree = ast.parse((REPO_ROOT / path).read_text())
    statements = [node for node in tree.body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))
                  and not (isinstance(node, ast.Assign) and [getattr(t, "id", "") for t in node.targets] == ["__all__"])]
    assert statements and all(isinstance(node, ast.ImportFrom) for node in statements), path
    assert all(".compat" in node.module or node.module == "g_selfatt.nn.attention" or
               node.module == "g_selfatt_models.group_transformer" for node in statements), path
