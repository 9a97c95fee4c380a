"""Lists the public names of an original implementation's packages, for the compatibility tests.

Reads the sources of a checkout of the original code (its ``.py`` files, with ``ast``; nothing
is imported or run) and prints, per module: the public classes and functions it defines or
re-exports, each function's parameter names, and each class's constructor parameters, public
methods, properties and the public attributes its constructor sets. ``tests/test_original_api.py``
checks every one of them against this project::

    python tools/original_api.py /path/to/g_selfatt g_selfatt models datasets \\
        > tests/original_api/g_selfatt.json

``--table`` prints instead, from those lists, the Markdown table of ``runs/README.md`` that says
where each original name lives here::

    python tools/original_api.py --table tests/original_api/*.json

``--experiments`` lists, per task of att_gconvs' ``experiments/``, the model classes its
``models`` package exports and the class (with its arguments) that its ``run_experiment.py``
builds for each ``--model`` name, also the names of lines commented out there::

    python tools/original_api.py --experiments /path/to/att_gconvs \
        > tests/original_api/experiments/att_gconvs.json
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import re
import sys
import types
from typing import Any, Dict, List

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _parameters(function: ast.FunctionDef) -> List[str]:
    names = [a.arg for a in function.args.posonlyargs + function.args.args + function.args.kwonlyargs]
    return [name for name in names if name not in ("self", "cls")]


def _instance_attributes(function: ast.FunctionDef) -> List[str]:
    found = set()
    for node in ast.walk(function):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            if (isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name)
                    and target.value.id == "self" and not target.attr.startswith("_")):
                found.add(target.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "register_buffer"
                and node.args and isinstance(node.args[0], ast.Constant) and not str(node.args[0].value).startswith("_")):
            found.add(node.args[0].value)
    return sorted(found)


def _class(node: ast.ClassDef) -> Dict[str, Any]:
    methods, properties, attributes, init = [], [], [], None
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            if item.name == "__init__":
                init = item
            elif any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list):
                properties.append(item.name)
            elif not item.name.startswith("_"):
                methods.append(item.name)
        elif isinstance(item, ast.ClassDef) and not item.name.startswith("_"):
            methods.append(item.name)  # a nested class (H.grid_global) is an attribute of the class
    if init is not None:
        attributes = _instance_attributes(init)
    return {"kind": "class", "parameters": _parameters(init) if init else [], "methods": sorted(methods),
            "properties": sorted(properties), "attributes": attributes}


def module_names(path: pathlib.Path) -> Dict[str, Any]:
    """The public names of one source file."""
    tree = ast.parse(path.read_text(), str(path))
    names: Dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            names[node.name] = _class(node)
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            names[node.name] = {"kind": "function", "parameters": _parameters(node)}
        elif isinstance(node, ast.ImportFrom) and (node.level or path.name == "__init__.py"):
            for alias in node.names:
                if alias.name != "*" and not (alias.asname or alias.name).startswith("_"):
                    names.setdefault(alias.asname or alias.name, {"kind": "reexport"})
        elif isinstance(node, ast.Import) and path.name == "__init__.py":
            for alias in node.names:
                names.setdefault((alias.asname or alias.name).split(".")[-1], {"kind": "reexport"})
    return names


def package_names(root: pathlib.Path, packages: List[str]) -> Dict[str, Any]:
    """Module path -> its public names, for every module of ``packages`` under ``root``."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if ".ipynb_checkpoints" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = module_names(path)
    return modules


# The lines of a run_experiment.py that choose the model: ``if 'allcnnc' in args.model:`` (the
# architecture's plain model, built unless a later branch replaces it), ``if args.model == 'x':``
# and ``model = models.Class(arguments)``, each possibly commented out.
_KEYWORD = re.compile(r"^\s*(#)?\s*if '(\w+)' in args\.model\s*:")
_NAME = re.compile(r"^\s*(#)?\s*(?:el)?if args\.model == '(\w+)'\s*:")
_BUILD = re.compile(r"^\s*(#)?\s*model = models\.(\w+)\((.*)\)\s*$")


def _arguments(text: str) -> Dict[str, Any]:
    call = ast.parse(f"f({text})", mode="eval").body
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def experiment_models(script: str) -> Dict[str, Any]:
    """``--model`` name -> ``{"module", "kwargs", "commented"}`` of one run_experiment.py's source."""
    models: Dict[str, Any] = {}
    pending = None
    for line in script.splitlines():
        match = _KEYWORD.match(line) or _NAME.match(line)
        if match:
            pending = (match.group(2), bool(match.group(1)))
            continue
        build = _BUILD.match(line)
        if build and pending is not None and bool(build.group(1)) == pending[1]:
            models[pending[0]] = {"module": build.group(2), "kwargs": _arguments(build.group(3)),
                                  "commented": pending[1]}
            pending = None
    return models


def exported_classes(package: pathlib.Path) -> List[str]:
    """The classes an experiment's ``models/__init__.py`` exports (``*`` from a module: all of its classes)."""
    exported = []
    for node in ast.parse((package / "__init__.py").read_text()).body:
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if alias.name != "*":
                exported.append(alias.asname or alias.name)
                continue
            source = package / f"{node.module.rsplit('.', 1)[-1]}.py"
            exported += [item.name for item in ast.parse(source.read_text()).body if isinstance(item, ast.ClassDef)]
    return sorted(exported)


def experiments(root: pathlib.Path) -> Dict[str, Any]:
    """Task -> its exported model classes and the model of each ``--model`` name."""
    tasks = {}
    for script in sorted((root / "experiments").glob("*/run_experiment.py")):
        tasks[script.parent.name] = {"classes": exported_classes(script.parent / "models"),
                                     "models": experiment_models(script.read_text())}
    return tasks


def where_here(module: str, name: str) -> str:
    """Where the object an original ``module.name`` stands for is defined in this project."""
    import importlib

    obj = getattr(importlib.import_module(module), name)
    if isinstance(obj, types.ModuleType):
        return obj.__name__
    qualname = getattr(obj, "__qualname__", name)
    if "<locals>" in qualname:
        return f"`{module}.{name}` (made by `{obj.__module__}`)"
    here = f"`{obj.__module__}.{qualname}`"
    implementation = _implementation(obj)
    return f"{here}, on `{implementation}`" if implementation else here


# Modules that hold the originals' classes as subclasses of this project's layers.
COMPATIBILITY_MODULES = ("attgconv.compat.layers", "attgconv.compat.attention_layers",
                         "attgconv.compat.romhog_attention", "g_selfatt.compat.rd_self_attention")


def _implementation(obj: Any) -> str:
    """For a class of a compatibility module: the first class of this project below it (not a mixin)."""
    if not isinstance(obj, type) or obj.__module__ not in COMPATIBILITY_MODULES:
        return ""
    for base in obj.__mro__[1:]:
        if (base.__module__.split(".")[0] in ("g_selfatt", "attgconv", "g_selfatt_models", "datasets")
                and base.__module__ != obj.__module__ and not base.__name__.startswith("_")):
            return f"{base.__module__}.{base.__qualname__}"
    return ""


def table(manifests: List[pathlib.Path]) -> str:
    """``| original | here |`` for every class and function the manifests list (re-exports omitted)."""
    rows = ["| original name | here |", "|---|---|"]
    for manifest in manifests:
        for module, names in sorted(json.loads(manifest.read_text()).items()):
            for name, entry in sorted(names.items()):
                if entry["kind"] != "reexport":
                    rows.append(f"| `{module}.{name}` | {where_here(module, name)} |")
    return "\n".join(rows) + "\n"


def main(argv: List[str]) -> None:
    if argv[:1] == ["--experiments"] and len(argv) == 2:
        json.dump(experiments(pathlib.Path(argv[1])), sys.stdout, indent=1, sort_keys=True)
        sys.stdout.write("\n")
        return
    if argv[:1] == ["--table"]:
        sys.path.insert(0, str(REPO_ROOT))  # the checkout's packages (datasets, models) by their names
        sys.stdout.write(table([pathlib.Path(path) for path in argv[1:]]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("root", type=pathlib.Path, help="a checkout of the original implementation")
    parser.add_argument("packages", nargs="+", help="its top-level packages to list")
    args = parser.parse_args(argv)
    json.dump(package_names(args.root, args.packages), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
