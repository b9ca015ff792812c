"""Registries of the pluggable choices against the config schema, and how errors in worker
processes reach the user: expected ones as one line naming the image, anything else with its
traceback (the worker's too) in the stage's log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.cams.fuse import FUSIONS
from wsss.cams.thresholds import ATTENTION_STATISTICS
from wsss.config import load_schema, validate_config
from wsss.data.table import write_split_csv
from wsss.errors import ConfigError, DataError
from wsss.io.h5store import H5Writer
from wsss.models.segmentation import SEGMENTERS
from wsss.parallel import ordered_map
from wsss.refine.ir_labels import THRESHOLD_RULES
from wsss.refine.mask_rules import MASK_RULES

ROOT = Path(__file__).resolve().parent.parent


def _enum(schema: dict, path: str) -> list[str]:
    node = schema
    for part in path.split("."):
        node = node["properties"][part]
    return node["enum"]


@pytest.mark.parametrize("path, registry", [
    ("fusion", FUSIONS),
    ("masks.rule", MASK_RULES),
    ("ir_labels.threshold", THRESHOLD_RULES),
    ("ir_labels.attention.statistic", ATTENTION_STATISTICS),
    ("segmentation.model", SEGMENTERS),
])
def test_schema_enums_are_the_registries(path, registry):
    """A name the code does not know is refused when the config is parsed, and every name the
    code knows can be configured; each registry names its config key in its errors."""
    assert _enum(load_schema(), path) == list(registry.names())
    assert registry.config_key == path
    names_key = "^config key " + re.escape(path) + ": "
    with pytest.raises(ConfigError, match=names_key + "unknown .* 'no_such_name' \\(known: "):
        registry.get("no_such_name")
    config: object = "no_such_name"
    for part in reversed(path.split(".")):
        config = {part: config}
    with pytest.raises(ConfigError, match=names_key + "'no_such_name' is not one of"):
        validate_config(config)


# ---------------------------------------------------------------- errors in worker processes


@dataclass(frozen=True)
class Item:
    """A task naming its image."""

    id: str
    value: int


class Explode:
    """A picklable worker function: IndexError on image 'b', DataError on image 'c'."""

    def __call__(self, item: Item) -> int:
        if item.id == "b":
            return [1, 2, 3][item.value]  # IndexError: list index out of range
        if item.id == "c":
            raise DataError(f"cannot read image {item.id}.png")
        return item.value * 10


def _formatted(exc: BaseException) -> str:
    """The exception as the stage's log shows it (logging's traceback formatting)."""
    return logging.Formatter().formatException((type(exc), exc, exc.__traceback__))


@pytest.mark.parametrize("workers", [1, 2])
def test_unexpected_worker_error_keeps_its_traceback_and_names_the_image(workers):
    items = [Item("a", 1), Item("b", 7), Item("d", 2)]
    assert list(ordered_map(Explode(), [items[0], items[2]], workers, what="testing")) == [10, 20]
    with pytest.raises(IndexError) as info:
        list(ordered_map(Explode(), items, workers, what="testing"))
    exc = info.value
    assert exc.__notes__ == ["while testing image 'b'"]
    text = _formatted(exc)
    assert "Traceback" in text and "IndexError: list index out of range" in text
    assert "while testing image 'b'" in text
    assert "return [1, 2, 3][item.value]" in text  # the worker's own frame
    if workers > 1:  # the worker process's traceback, chained by concurrent.futures
        assert type(exc.__cause__).__name__ == "_RemoteTraceback"
        assert "return [1, 2, 3][item.value]" in str(exc.__cause__)


@pytest.mark.parametrize("workers", [1, 2])
def test_expected_worker_error_is_one_line_naming_the_image(workers):
    with pytest.raises(DataError) as info:
        list(ordered_map(Explode(), [Item("a", 1), Item("c", 0)], workers, what="testing"))
    assert str(info.value) == "testing image 'c': cannot read image c.png"


WORKER_MODULE = '''
import sys
from dataclasses import dataclass

from wsss import __main__ as cli
from wsss.parallel import ordered_map
import wsss.stages.eval_masks as stage


@dataclass(frozen=True)
class Item:
    id: str


class Explode:
    def __call__(self, item):
        return [][len(item.id)]  # IndexError in the worker


def run(inputs, outputs, params, threads=1):
    list(ordered_map(Explode(), [Item("a"), Item("bb"), Item("ccc")], threads,
                     what="exploding"))


if __name__ == "__main__":
    stage.run = run  # the test's stand-in stage, run by the real command line
    sys.exit(cli.main(["eval_masks", "--threads", "2", "--log", sys.argv[1]]))
'''


def test_injected_worker_indexerror_reaches_the_log(tmp_path):
    """``python -m wsss``'s handler with a stage whose worker raises IndexError: exit status 1,
    the console names the exception and the log, the log holds the whole traceback."""
    (tmp_path / "inject.py").write_text(textwrap.dedent(WORKER_MODULE))
    log = tmp_path / "logs" / "stage.log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    proc = subprocess.run([sys.executable, str(tmp_path / "inject.py"), str(log)],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    console = proc.stderr.strip().splitlines()
    assert console == [f"wsss eval_masks: unexpected IndexError: list index out of range; see "
                       f"{log} for the traceback"]
    text = log.read_text()
    assert "Traceback" in text and "IndexError: list index out of range" in text
    assert "while exploding image 'a'" in text
    assert "_RemoteTraceback" in text and "return [][len(item.id)]" in text  # worker's frames


# ---------------------------------------------------------------- a stage's CRF worker fails


CLASSES = ["background", "cat", "dog"]


def _ir_inputs(root: Path, n: int = 4, h: int = 20, w: int = 24) -> dict[str, Path]:
    """n images with a cat square, their seeds (peaked on the square) and masks, a split."""
    rng = np.random.default_rng(0)
    records = []
    with H5Writer(root / "seeds.h5", "seeds", CLASSES, {"fusion": "cnn"}) as seeds:
        for i in range(n):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            mask = np.zeros((h, w), np.uint8)
            mask[4:12, 6:16] = 1
            cam = np.where(mask == 1, 0.9, 0.01)[None].astype(np.float32)
            Image.fromarray(img).save(root / f"im{i}.png")
            Image.fromarray(mask).save(root / f"gt{i}.png")
            seeds.add(f"im{i}", (h, w), np.array([1]), {"cam": cam, "cam_strided": cam})
            records.append({"id": f"im{i}", "image": f"im{i}.png", "mask": f"gt{i}.png",
                            "labels": ["cat"]})
    write_split_csv(root / "train.csv", records)
    return {"seeds": root / "seeds.h5", "cams": root / "cams.h5", "split": root / "train.csv"}


def _make_ir_labels(root: Path, inputs: dict[str, Path]) -> tuple[subprocess.CompletedProcess,
                                                                    Path, dict[str, Path]]:
    outputs = {"labels": root / "out" / "ir.h5", "metrics": root / "out" / "ir.csv"}
    params = {"ir_labels": validate_config({"ir_labels": {"threshold": "fixed"}})["ir_labels"],
              "classes": CLASSES}
    log = root / "logs" / "make_ir_labels.log"
    cmd = [sys.executable, "-m", "wsss", "make_ir_labels", "--params", json.dumps(params),
           "--threads", "2", "--log", str(log)]
    cmd += [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    cmd += [a for k, v in outputs.items() for a in ("--output", f"{k}={v}")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env), log, outputs


def test_crf_worker_failure_on_a_crafted_mask_keeps_the_traceback(tmp_path):
    """A mask replaced after prepare_data validated it, now holding class 50 of 3: the IR
    labeller's worker fails scoring it (ValueError, not a bad-file DataError); the log has the
    worker's traceback with the image named, the console one line naming the log."""
    inputs = _ir_inputs(tmp_path)
    mask = np.zeros((20, 24), np.uint8)
    mask[4:12, 6:16] = 50
    Image.fromarray(mask).save(tmp_path / "gt2.png")
    proc, log, outputs = _make_ir_labels(tmp_path, inputs)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"wsss make_ir_labels: unexpected ValueError: label value >= n_classes (3); see {log} "
        f"for the traceback"]
    text = log.read_text()
    assert "Traceback" in text and "ValueError: label value >= n_classes (3)" in text
    assert "while labelling image 'im2'" in text
    assert "_RemoteTraceback" in text and "in label" in text  # the worker's frames
    assert not any(p.exists() for p in outputs.values())


def test_crf_worker_bad_file_is_one_line_naming_the_image(tmp_path):
    inputs = _ir_inputs(tmp_path)
    (tmp_path / "im1.png").write_bytes(b"not a png")
    proc, log, outputs = _make_ir_labels(tmp_path, inputs)
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("wsss make_ir_labels: error: labelling image 'im1': cannot read "
                           "image ") and "im1.png" in line
    assert "Traceback" not in log.read_text()
    assert not any(p.exists() for p in outputs.values())
