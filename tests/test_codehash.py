"""A stage's code hash follows the meaning of the code it reaches, not files or formatting."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wsss.codehash import code_hash, reachable

ROOT = Path(__file__).resolve().parent.parent
# Every stage module, so a new stage cannot escape these checks.
STAGES = sorted(p.stem for p in (ROOT / "wsss" / "stages").glob("*.py") if p.stem != "__init__")
assert {"train_classifier", "predict_cosa", "make_cpl_masks", "report"} <= set(STAGES)


def hashes_of(package_root: Path) -> dict[str, str]:
    """Every stage's code hash computed from the ``wsss`` package under ``package_root``."""
    code = ("import json, sys; from wsss.codehash import code_hash; "
            f"print(json.dumps({{s: code_hash(s) for s in {STAGES!r}}}))")
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=env, cwd=package_root)
    return json.loads(out.stdout)


@pytest.fixture()
def package(tmp_path: Path) -> Path:
    """A private copy of the package to edit."""
    shutil.copytree(ROOT / "wsss", tmp_path / "wsss",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def insert_statement(path: Path, function: str, statement: str) -> None:
    """Insert ``statement`` before the first statement after the docstring of ``function``."""
    import ast

    lines = path.read_text().splitlines(keepends=True)
    node = next(n for n in ast.walk(ast.parse("".join(lines)))
                if isinstance(n, ast.FunctionDef) and n.name == function)
    body = node.body[1:] if isinstance(node.body[0], ast.Expr) else node.body
    first = body[0]
    indent = " " * first.col_offset
    lines.insert(first.lineno - 1, f"{indent}{statement}\n")
    path.write_text("".join(lines))


def test_every_stage_has_a_hash_and_reaches_its_library():
    defs, modules = reachable("wsss.stages.fuse_cams")
    assert ("wsss.cams.fuse", "fuse_maps") in defs or any(m == "wsss.cams.fuse" for m in modules)
    assert all(len(code_hash(s)) == 16 for s in STAGES)


def test_touch_comment_docstring_and_format_change_nothing(package: Path):
    before = hashes_of(package)
    errors = package / "wsss/errors.py"
    os.utime(errors, (1, 1))  # a touch, a git checkout round trip
    edit(errors, '"""User-facing errors', '"""User-facing errors (reworded docstring)')
    edit(errors, "class WsssError(Exception):", "# a comment\nclass WsssError(Exception):  # hi")
    fuse = package / "wsss/cams/fuse.py"  # blank lines and comments between definitions
    text = fuse.read_text()
    fuse.write_text(text.replace("\n\n\ndef ", "\n\n\n\n# a comment\ndef "))
    assert fuse.read_text() != text
    assert hashes_of(package) == before


def test_an_edit_reruns_exactly_the_stages_that_reach_it(package: Path):
    before = hashes_of(package)
    fuse = package / "wsss/cams/fuse.py"
    insert_statement(fuse, "fuse_maps", "_unused = 1")
    after = hashes_of(package)
    changed = {s for s in STAGES if after[s] != before[s]}
    users = {s for s in STAGES if ("wsss.cams.fuse", "fuse_maps") in
             reachable(f"wsss.stages.{s}")[0]}
    assert changed == users and "fuse_cams" in changed and "train_classifier" not in changed


def test_an_edit_behind_a_lazy_import_reruns_its_stage(package: Path):
    """``wsss.data.prepare`` imports the voc12 and demo adapters inside functions: an edit of
    either reaches prepare_data (and only the stages that run that code)."""
    before = hashes_of(package)
    insert_statement(package / "wsss/data/voc12.py", "voc12_records", "_unused = 1")
    after = hashes_of(package)
    assert after["prepare_data"] != before["prepare_data"]
    assert after["fuse_cams"] == before["fuse_cams"]
    insert_statement(package / "wsss/data/demo.py", "generate_demo", "_unused = 2")
    assert hashes_of(package)["prepare_data"] != after["prepare_data"]


def test_a_new_unused_function_changes_nothing(package: Path):
    before = hashes_of(package)
    path = package / "wsss/metrics.py"
    path.write_text(path.read_text() + "\n\ndef not_used_by_any_stage():\n    return 42\n")
    assert hashes_of(package) == before


@pytest.mark.parametrize("stage, module", [
    ("fuse_cams", "wsss.cams.fuse"), ("eval_seeds", "wsss.cams.fuse"),
    ("make_ir_labels", "wsss.refine.ir_labels"), ("make_pseudo_masks", "wsss.refine.mask_rules"),
    ("train_segmentation", "wsss.models.segmentation"), ("predict", "wsss.models.segmentation"),
])
def test_registered_entries_count_for_the_stage_that_looks_them_up(stage, module):
    """Entries registered with a decorator are reached by the stage using their registry, so an
    edit of one (a fusion variant, a mask rule...) reruns that stage."""
    import ast

    from wsss.codehash import module_file

    tree = ast.parse(module_file(module).read_text())
    registered = {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)
                  and any("register" in ast.dump(d) for d in n.decorator_list)}
    assert len(registered) >= 2
    defs, _ = reachable(f"wsss.stages.{stage}")
    assert {(module, name) for name in registered} <= defs
