"""Code versions of pipeline steps: a digest of exactly the code a step function runs.

A step's cache key must change when the code that computes its output changes, and only then:
editing a technique's sampler must not retrain its model, and editing report styling must not
re-run anything but publishing. Module-level hashing cannot tell those apart, so the version of a
function is computed from its syntax tree and from the trees of every module-level definition it
refers to, followed transitively through this project's modules: `from models.x import y`, and
`from models import x` / `import models.x as x` followed by `x.y`, at module level or inside
functions.

The trees are compared without docstrings, comments or formatting (`ast.dump`), so rewording a
comment or reformatting a file keeps every cache. References are found by name: attribute access
on objects, `getattr` and registry lookups are not followed (step functions do not use them for
computation), and a local variable that shadows a module-level name only adds that definition.
Annotations are skipped: a parameter typed as the technique's params model does not make the
step depend on every field description of that model (parameter values are in the key anyway).

Hand-written because no library computes this: caching tools (Prefect's cache policies, joblib,
DVC) hash a function's own source or whole files, not the closure of module-level definitions a
function reaches through the project's imports.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import importlib.util
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

# Code under this folder is "ours" (followed into); anything else is a library (not followed).
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class _Module:
    name: str
    path: Path
    definitions: dict[str, list[ast.AST]]  # top-level name -> every statement that (re)defines it
    imports: dict[str, tuple[str, str]]  # local name -> (module, name) for `from <ours> import`
    aliases: dict[str, str]  # local name -> module, for `from <pkg> import <module>` and `import x as m`
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
    """Whether a module belongs to this project, judged by where its top-level package lives
    (found without importing anything: a library's submodule is never imported for this)."""
    try:
        spec = importlib.util.find_spec(module_name.split(".")[0])
    except (ImportError, ValueError):
        return False
    origin = spec.origin if spec else None
    if not origin or origin in ("built-in", "frozen"):
        return False
    path = Path(origin).resolve()
    return path.is_relative_to(root) and ".venv" not in path.relative_to(root).parts


def _is_module(name: str) -> bool:
    if not _is_ours(name):
        return False
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Top-level statements, including those inside top-level `if`, `try` and `with` blocks."""
    for node in body:
        if isinstance(node, ast.If | ast.Try | ast.With):
            yield from _statements([*node.body, *getattr(node, "orelse", [])])
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body)
            yield from _statements(getattr(node, "finalbody", []))
        else:
            yield node


def _record_import(node: ast.ImportFrom | ast.Import, imports: dict, aliases: dict) -> None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.asname and _is_ours(alias.name):
                aliases[alias.asname] = alias.name
        return
    if not node.module or node.level:
        return
    for alias in node.names:
        local = alias.asname or alias.name
        if _is_module(f"{node.module}.{alias.name}"):
            aliases[local] = f"{node.module}.{alias.name}"
        else:
            imports[local] = (node.module, alias.name)


@cache
def _parse(name: str, path: Path, text: str) -> _Module:
    """The parsed module (cached on its exact source text, so an edited file is re-parsed)."""
    tree = _strip_docstrings(ast.parse(text, filename=str(path)))
    definitions: dict[str, list[ast.AST]] = {}
    imports: dict[str, tuple[str, str]] = {}
    aliases: dict[str, str] = {}
    for node in _statements(tree.body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions.setdefault(node.name, []).append(node)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                # `X = ...`, `a, b = ...` define; `X[k] = ...`, `X.a = ...`, `X += ...` add to X.
                base = target
                while isinstance(base, ast.Subscript | ast.Attribute | ast.Starred):
                    base = base.value
                names = (
                    [base]
                    if isinstance(base, ast.Name)
                    else [n for n in ast.walk(base) if isinstance(n, ast.Name)]
                )
                for leaf in names:
                    definitions.setdefault(leaf.id, []).append(node)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            _record_import(node, imports, aliases)
    return _Module(name, path, definitions, imports, aliases)


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


def _attributes_of(node: ast.AST, names: dict[str, str]) -> list[tuple[str, str]]:
    """(module, attribute) for every `alias.attribute` in `node` whose alias names a module."""
    return [
        (names[n.value.id], n.attr)
        for n in ast.walk(node)
        if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in names
    ]


def _facts(module: _Module, name: str) -> tuple[str, list[tuple[str, str]]]:
    """The dump of a definition and the (module, name) pairs it refers to (computed once per
    parsed source)."""
    if name not in module.facts:
        nodes = module.definitions[name]
        refs: list[tuple[str, str]] = []
        for node in nodes:
            used = _referenced_names(node)
            refs += [(module.name, r) for r in used if r in module.definitions or r in module.imports]
            refs += _attributes_of(node, {a: m for a, m in module.aliases.items() if a in used})
            # Imports inside functions (this project imports lazily) are followed like top-level ones.
            local_imports: dict[str, tuple[str, str]] = {}
            local_aliases: dict[str, str] = {}
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom | ast.Import) and inner is not node:
                    _record_import(inner, local_imports, local_aliases)
            refs += [target for target in local_imports.values() if _is_ours(target[0])]
            refs += _attributes_of(node, local_aliases)
        dump = "\n".join(ast.dump(n, include_attributes=False) for n in dict.fromkeys(nodes))
        module.facts[name] = (dump, refs)
    return module.facts[name]


def closure(roots: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Every definition reachable from `roots` ((module, top-level name) pairs), as
    `"module:name" -> ast.dump` of its defining statements. A root that names no top-level
    definition (a lambda, a partial, a typo) is an error: it would hash to nothing."""
    found: dict[str, str] = {}
    todo = list(roots)
    for module_name, name in todo:
        module = _load(module_name)
        if name not in module.definitions and name not in module.imports:
            raise ValueError(f"{module_name}:{name} is not a top-level definition; step functions must be")
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
