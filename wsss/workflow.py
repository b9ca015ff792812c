"""Helpers for the Snakefile: code dependencies of a stage and config sections as params.

Imported at parse time in every Snakemake job, so it must stay light (no torch, no numpy).
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "wsss":
        return None
    base = PACKAGE_DIR.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _imports(path: Path) -> tuple[str, ...]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return tuple(n for n in names if n.split(".")[0] == "wsss")


def stage_sources(stage: str) -> list[str]:
    """Every wsss source file a stage imports, transitively (rule inputs: code edits rerun it)."""
    start = _module_file(f"wsss.stages.{stage}")
    if start is None:
        raise ValueError(f"no stage module wsss/stages/{stage}.py")
    seen: set[Path] = set()
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imports(path):
            dep = _module_file(name)
            if dep is not None and dep not in seen:
                todo.append(dep)
    return sorted(str(p) for p in seen)
