"""Code versions of pipeline steps: a digest of exactly the code a step function runs.

A step's cache key must change when the code that computes its output changes, and only then:
editing a technique's sampler must not retrain its model, and editing report styling must not
re-run anything but publishing. Module-level hashing cannot tell those apart, so the version of a
function is computed from its syntax tree and from the trees of every module-level definition it
refers to, followed transitively through this project's modules (`from models.x import y`).

The trees are compared without docstrings, comments or formatting (`ast.dump`), so rewording a
comment or reformatting a file keeps every cache. References are found by name: attribute access
on objects, `getattr` and registry lookups are not followed (step functions do not use them for
computation), and a local variable that shadows a module-level name only adds that definition.
Annotations are skipped: a parameter typed as the technique's params model does not make the
step depend on every field description of that model (parameter values are in the key anyway).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

# Code under this folder is "ours" (followed into); anything else is a library (not followed).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path
    definitions: dict[str, ast.AST]  # top-level name -> the node that defines it
    imports: dict[str, tuple[str, str]]  # local name -> (module, name) for `from <ours> import`
    facts: dict[str, tuple[str, list[tuple[str, str]]]] = field(default_factory=dict)  # see _facts


def _strip_docstrings(node: ast.AST) -> ast.AST:
    for child in ast.walk(node):
        body = getattr(child, "body", None)
        if (
            isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            child.body = body[1:] or [ast.Pass()]
    return node


def _is_ours(module_name: str) -> bool:
    return _is_ours_under(module_name, PROJECT_ROOT)


@cache
def _is_ours_under(module_name: str, root: Path) -> bool:
    module = sys.modules.get(module_name)
    if module is None:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return False
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = Path(path).resolve()
    return path.is_relative_to(root) and ".venv" not in path.relative_to(root).parts


@cache
def _parse(name: str, path: Path, text: str) -> _Module:
    """The parsed module (cached on its exact source text, so an edited file is re-parsed)."""
    tree = _strip_docstrings(ast.parse(text, filename=str(path)))
    definitions: dict[str, ast.AST] = {}
    imports: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for leaf in ast.walk(target):
                    if isinstance(leaf, ast.Name):
                        definitions[leaf.id] = node
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imports[alias.asname or alias.name] = (node.module, alias.name)
    return _Module(name, path, definitions, imports)


def _load(name: str) -> _Module:
    path = Path(importlib.import_module(name).__file__).resolve()
    return _parse(name, path, path.read_text())


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _bound(node: ast.AST) -> set[str]:
    """Names a statement binds in its own scope (nested scopes are not entered)."""
    found: set[str] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store | ast.Del):
            found.add(n.id)
        elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found.add(n.name)
            continue
        elif isinstance(n, ast.Import | ast.ImportFrom):
            found.update((a.asname or a.name).split(".")[0] for a in n.names)
        elif isinstance(n, ast.ExceptHandler) and n.name:
            found.add(n.name)
        elif isinstance(n, ast.Lambda | ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp):
            continue
        todo.extend(ast.iter_child_nodes(n))
    return found


def _arguments(args: ast.arguments) -> list[ast.arg]:
    return [*args.posonlyargs, *args.args, *args.kwonlyargs, *(a for a in (args.vararg, args.kwarg) if a)]


def _free(node: ast.AST) -> set[str]:
    """Names a node reads that it does not bind itself: what it refers to outside. Locals that
    shadow module-level names (`train, val = split(...)` beside a function `train`) are not
    references; annotations are skipped (see the module docstring)."""
    if isinstance(node, ast.Name):
        return {node.id} if isinstance(node.ctx, ast.Load) else set()
    if isinstance(node, _SCOPES):
        args = node.args
        outer = set().union(*map(_free, [*args.defaults, *(d for d in args.kw_defaults if d)]))
        outer |= set().union(*map(_free, getattr(node, "decorator_list", [])))
        body = node.body if isinstance(node.body, list) else [node.body]
        bound = {a.arg for a in _arguments(args)} | set().union(*map(_bound, body))
        return outer | (set().union(*map(_free, body)) - bound)
    if isinstance(node, _COMPREHENSIONS):
        bound = set().union(*(_bound(g.target) for g in node.generators))
        inner = set().union(*map(_free, ast.iter_child_nodes(node)))
        return inner - bound
    if isinstance(node, ast.ClassDef):
        outer = set().union(
            *map(_free, [*node.bases, *node.decorator_list, *(k.value for k in node.keywords)])
        )
        return outer | set().union(*map(_free, node.body))
    if isinstance(node, ast.arg | ast.AnnAssign):
        children = [node.value] if isinstance(node, ast.AnnAssign) and node.value else []
        if isinstance(node, ast.AnnAssign):
            children.append(node.target)
        return set().union(*map(_free, children))
    return set().union(*map(_free, ast.iter_child_nodes(node)))


def _referenced_names(node: ast.AST) -> set[str]:
    """Names a top-level definition refers to (a self-reference included, which is harmless)."""
    return _free(node)


def _facts(module: _Module, name: str) -> tuple[str, list[tuple[str, str]]]:
    """The dump of a definition and the (module, name) pairs it refers to (computed once per
    parsed source)."""
    if name not in module.facts:
        node = module.definitions[name]
        refs = [
            (module.name, r)
            for r in _referenced_names(node)
            if r in module.definitions or r in module.imports
        ]
        # Imports inside functions (this project imports lazily) are followed like top-level ones.
        for inner in ast.walk(node):
            if (
                isinstance(inner, ast.ImportFrom)
                and inner.module
                and inner.level == 0
                and _is_ours(inner.module)
            ):
                refs.extend((inner.module, alias.name) for alias in inner.names)
        module.facts[name] = (ast.dump(node, include_attributes=False), refs)
    return module.facts[name]


def closure(roots: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Every definition reachable from `roots` ((module, top-level name) pairs), as
    `"module:name" -> ast.dump` of its defining node."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        module_name, name = todo.pop()
        module = _load(module_name)
        if name in module.imports:  # re-exported or imported name: follow it to its definition
            source_module, source_name = module.imports[name]
            if _is_ours(source_module):
                todo.append((source_module, source_name))
            continue
        label = f"{module_name}:{name}"
        if name not in module.definitions or label in found:
            continue  # a builtin, a library name or a local variable; or seen already
        found[label], refs = _facts(module, name)
        todo.extend(refs)
    return found


def roots_of(*functions: Callable) -> list[tuple[str, str]]:
    """(module, top-level name) of each function (a method or nested function maps to the
    top-level definition that contains it)."""
    return [(f.__module__, f.__qualname__.split(".")[0]) for f in functions]


def digest(roots: Iterable[tuple[str, str]]) -> str:
    """A digest of the code reachable from `roots`."""
    text = "\n".join(f"{label}={dump}" for label, dump in sorted(closure(roots).items()))
    return hashlib.sha256(text.encode()).hexdigest()


def files(roots: Iterable[tuple[str, str]]) -> list[Path]:
    """The source files the closure of `roots` touches (what DVC, which sees files, depends on)."""
    modules = {label.split(":", 1)[0] for label in closure(roots)}
    return sorted({_load(m).path for m in modules})
