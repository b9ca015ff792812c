"""What code a stage runs, as a hash of its meaning: reruns follow code edits, not file times.

Snakemake reruns a rule when its ``params`` change. Each rule passes ``code_hash(stage)``: a
hash of the *syntax trees* (docstrings removed) of exactly the definitions the stage can reach
from its ``run()`` function, inside the ``wsss`` package. So

* touching a file, a ``git checkout`` round trip, or editing a comment, a docstring or the
  formatting reruns nothing;
* editing a function, class or constant that a stage reaches reruns that stage (and, through
  its outputs, its descendants), and no stage that cannot reach it.

Reachability is a static, conservative closure over names: starting from ``run`` in
``wsss/stages/<stage>.py``, every name a reached definition mentions is resolved to a top-level
definition of the same module or of a ``wsss`` module it imports (``from wsss.x import y``,
``import wsss.x as m`` + ``m.y``, ``from wsss import x`` + ``x.y``). A class is reached whole
(every method, its bases and decorators). A module's top-level statements that are not
definitions (constants, registries, ``import``-time code) belong to every definition of that
module, and so do each package ``__init__.py`` on the way and the top-level code of every
``wsss`` module it imports (importing runs it). A definition whose decorator
mentions a reached name (a registry's ``register``) is reached too, so registered builders
count for the stage that looks them up. Nothing outside ``wsss`` is hashed (library versions are
the environment's business).

Imported at parse time by the Snakefile: standard library only.
"""

from __future__ import annotations

import ast
import hashlib
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

Def = tuple[str, str]  # (module, top-level name)


def module_file(module: str) -> Path | None:
    """The source file of a ``wsss`` module: wsss/a/b.py or wsss/a/b/__init__.py for wsss.a.b."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _strip_docstrings(tree: ast.AST) -> ast.AST:
    """Remove docstrings (the first string expression of a module, class or function body)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def _names(node: ast.AST) -> set[tuple[str, ...]]:
    """Every name a node mentions, with attribute chains: ``a.b.c`` -> ('a', 'b', 'c')."""
    out: set[tuple[str, ...]] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            out.add((sub.id,))
        elif isinstance(sub, ast.Attribute):
            chain: list[str] = []
            cur: ast.AST = sub
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name):
                out.add((cur.id, *reversed(chain)))
    return out


@dataclass
class ModuleInfo:
    """A parsed ``wsss`` module: its definitions, its other top-level code and its imports."""

    name: str
    defs: dict[str, ast.AST] = field(default_factory=dict)
    other: list[ast.AST] = field(default_factory=list)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # alias -> target
    imported: set[str] = field(default_factory=set)  # wsss modules its imports execute
    # per definition, the imports inside it: (alias -> target, wsss modules they execute)
    local: dict[str, tuple[dict[str, tuple[str, str | None]], set[str]]] = field(
        default_factory=dict)

    def dump(self, node: ast.AST) -> str:
        """A stable text of a node's syntax tree (no positions)."""
        return ast.dump(node, include_attributes=False)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _read_import(node: ast.Import | ast.ImportFrom, package: str,
                 imports: dict[str, tuple[str, str | None]], imported: set[str]) -> None:
    """Record what an import statement of ``package`` binds (``imports``: alias -> target) and
    the ``wsss`` modules it executes (``imported``); imports from outside ``wsss`` are left out."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE:
                imported.add(alias.name)
                if alias.asname:
                    imports[alias.asname] = (alias.name, None)
                else:  # `import wsss.a.b` binds `wsss`; chains resolve from the root
                    imports[PACKAGE] = (PACKAGE, None)
        return
    base = node.module or ""
    if node.level:
        parent = package.split(".")
        parent = parent[:len(parent) - (node.level - 1)]
        base = ".".join([*parent, *([base] if base else [])])
    if base.split(".")[0] != PACKAGE:
        return
    imported.add(base)
    for alias in node.names:
        target = f"{base}.{alias.name}"
        if module_file(target) is not None:  # `from wsss.a import b` (a module)
            imported.add(target)
            imports[alias.asname or alias.name] = (target, None)
        else:
            imports[alias.asname or alias.name] = (base, alias.name)


@cache
def parse_module(module: str) -> ModuleInfo | None:
    """Parse one ``wsss`` module (cached); None outside the package."""
    path = module_file(module)
    if path is None:
        return None
    tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
    info = ModuleInfo(module)
    package = _package_of(module, path)
    for node in tree.body:  # type: ignore[attr-defined]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            info.defs[node.name] = node
            # imports inside the definition (lazy imports): bound and executed when it runs
            local: dict[str, tuple[str, str | None]] = {}
            local_imported: set[str] = set()
            for sub in ast.walk(node):
                if isinstance(sub, ast.Import | ast.ImportFrom):
                    _read_import(sub, package, local, local_imported)
            if local or local_imported:
                info.local[node.name] = (local, local_imported)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            _read_import(node, package, info.imports, info.imported)
            continue
        info.other.append(node)
    return info


def _resolve(info: ModuleInfo, chain: tuple[str, ...]) -> list[Def | str]:
    """Definitions (or whole modules, as a module name) a name chain in ``info`` may refer to."""
    head = chain[0]
    if head in info.defs:
        return [(info.name, head)]
    if head not in info.imports:
        return []
    module, name = info.imports[head]
    if name is not None:  # `from m import name`
        target = parse_module(module)
        if target is None:
            return []
        if name in target.defs:
            return [(module, name)]
        if name in target.imports:  # re-exported
            return _resolve(target, (name, *chain[1:]))
        return [module]  # a constant of m: covered by m's other code
    # `chain[0]` is a module: walk the attribute chain through submodules
    rest = list(chain[1:])
    while rest and module_file(f"{module}.{rest[0]}") is not None:
        module = f"{module}.{rest.pop(0)}"
    target = parse_module(module)
    if target is None:
        return []
    if rest and rest[0] in target.defs:
        return [(module, rest[0])]
    if rest and rest[0] in target.imports:
        return _resolve(target, tuple(rest))
    return [module]


def _assigned(info: ModuleInfo) -> set[str]:
    """The names a module's top-level assignments bind (constants, registries)."""
    out: set[str] = set()
    for node in info.other:
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, ast.AnnAssign) else []
        out |= {t.id for t in targets if isinstance(t, ast.Name)}
    return out


def _packages(module: str) -> list[str]:
    """The package ``__init__`` modules imported on the way to ``module`` (``wsss``, ``wsss.a``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def reachable(module: str, name: str = "run") -> tuple[set[Def], set[str]]:
    """The definitions and the modules (their non-definition code) reachable from ``name``."""
    defs: set[Def] = set()
    modules: set[str] = set()
    todo: list[Def | str] = [(module, name)]
    while True:
        while todo:
            item = todo.pop()
            if isinstance(item, str):
                if item in modules:
                    continue
                info = parse_module(item)
                if info is None:
                    continue
                modules.add(item)
                todo.extend(_packages(item))
                todo.extend(info.imported)  # importing runs their top-level code
                for node in info.other:
                    for chain in _names(node):
                        todo.extend(_resolve(info, chain))
                continue
            if item in defs:
                continue
            info = parse_module(item[0])
            if info is None or item[1] not in info.defs:
                continue
            defs.add(item)
            todo.append(item[0])
            scope = info
            if item[1] in info.local:  # names bound by the definition's own imports
                local, local_imported = info.local[item[1]]
                todo.extend(local_imported)
                scope = replace(info, imports={**info.imports, **local})
            for chain in _names(info.defs[item[1]]):
                todo.extend(_resolve(scope, chain))
        # registered definitions: a decorator mentioning a reached definition or module code
        for mod in list(modules):
            info = parse_module(mod)
            assert info is not None
            for dname, node in info.defs.items():
                if (mod, dname) in defs:
                    continue
                decorators = getattr(node, "decorator_list", [])
                # a registry assigned in this module (`FUSIONS = Registry(...)`) is module code
                hits = [r for d in decorators for c in _names(d)
                        for r in (_resolve(info, c) or ([mod] if c[0] in _assigned(info) else []))]
                if any(r in defs or r in modules for r in hits if isinstance(r, tuple)) or any(
                        isinstance(r, str) and r in modules for r in hits):
                    todo.append((mod, dname))
        if not todo:
            return defs, modules


def code_hash(stage: str) -> str:
    """A 16-hex-digit hash of everything ``wsss/stages/<stage>.py``'s ``run()`` can reach.

    Raises:
        ValueError: when the stage module or its ``run`` function does not exist.
    """
    module = f"{PACKAGE}.stages.{stage}"
    info = parse_module(module)
    if info is None or "run" not in info.defs:
        raise ValueError(f"no stage function {module}.run")
    defs, modules = reachable(module)
    digest = hashlib.sha256()
    for mod, name in sorted(defs):
        digest.update(f"{mod}:{name}\n".encode())
        digest.update(parse_module(mod).dump(parse_module(mod).defs[name]).encode())  # type: ignore[union-attr]
    for mod in sorted(modules):
        info_m = parse_module(mod)
        assert info_m is not None
        digest.update(f"{mod}:<module>\n".encode())
        for node in info_m.other:
            digest.update(info_m.dump(node).encode())
    return digest.hexdigest()[:16]


def stage_files(stage: str) -> list[str]:
    """The source files whose definitions ``stage`` reaches (for humans and tests)."""
    defs, modules = reachable(f"{PACKAGE}.stages.{stage}")
    names = {m for m, _ in defs} | modules
    return sorted(str(module_file(m)) for m in names if module_file(m) is not None)
