"""Bad input of the kinds users report against IRN, AffinityNet, SEAM, ToCo, pydensecrf and
Snakemake, tried on small ``folder`` data sets: one parametrised test, one case per kind.

Each case builds its own data set under ``tmp_path``, runs one command (a stage through
``python -m wsss`` or a Snakemake target on the tiny preset) and returns what must hold: the exit
code, a pattern the output must contain (the file, row or config key named), the artifacts that
must not exist (a failing stage leaves nothing partial) and, for handled cases, a check of the
correct output.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["background", "cat", "dog"]


@dataclass
class Expect:
    """What a case's command must show."""

    proc: subprocess.CompletedProcess
    rc: int
    message: str | None = None  # regex searched in stdout + stderr (+ the ``logs`` files)
    absent: Sequence[Path] = ()
    present: Sequence[Path] = ()
    logs: Sequence[Path] = ()
    check: Callable[[], None] | None = None
    extra: dict = field(default_factory=dict)


CASES: dict[str, Callable[[Path], Expect]] = {}


def case(fn: Callable[[Path], Expect]) -> Callable[[Path], Expect]:
    """Register a bad-input case under its function name without the ``case_`` prefix."""
    CASES[fn.__name__.removeprefix("case_")] = fn
    return fn


# ---------------------------------------------------------------- building blocks


def write_image(path: Path, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Write a random RGB image (format from the suffix) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def write_mask(path: Path, mask: np.ndarray) -> None:
    """Write a label map as a grayscale PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8), mode="L").save(path)


def folder_dataset(root: Path, n_train: int = 12, n_val: int = 4, h: int = 48, w: int = 64,
                   labels: Callable[[str, int], list[str]] | None = None,
                   masks: bool = True) -> dict[str, Path]:
    """A small ``folder`` data set: ``img/<id>.png``, ``masks/<id>.png`` (a class rectangle),
    ``train.csv`` / ``val.csv`` (``id,labels``). ``labels(split, i)`` picks an image's classes
    (default: alternately cat and dog). Returns the paths."""
    def default(split: str, i: int) -> list[str]:
        return [CLASSES[1 + i % 2]]

    labels = labels or default
    for split, n in (("train", n_train), ("val", n_val)):
        rows = []
        for i in range(n):
            ident = f"{split}_{i:03d}"
            write_image(root / "img" / f"{ident}.png", h, w, seed=hash((split, i)) % 2**32)
            names = labels(split, i)
            if masks:
                mask = np.zeros((h, w), np.uint8)
                for k, name in enumerate(names):
                    c = CLASSES.index(name)
                    mask[4 + 8 * k:h // 2 + 8 * k, 4 + 10 * k:w // 2 + 10 * k] = c
                write_mask(root / "masks" / f"{ident}.png", mask)
            rows.append({"id": ident, "labels": ";".join(names)})
        with open(root / f"{split}.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, ["id", "labels"])
            writer.writeheader()
            writer.writerows(rows)
    return {"root": root, "images": root / "img", "masks": root / "masks",
            "train": root / "train.csv", "val": root / "val.csv"}


def folder_config(ds: dict[str, Path], results: Path, masks: bool = True, **sections: dict
                  ) -> Path:
    """A config overlay (on the tiny preset) for the folder data set ``ds``; written next to it."""
    cfg: dict = {
        "results": str(results),
        "run": "case",
        "dataset": {"name": "folder", "root": str(ds["root"]), "classes": CLASSES,
                    "folder": {"images": "img", "masks": "masks" if masks else None,
                               "train_labels": "train.csv", "val_labels": "val.csv"}},
    }
    for key, value in sections.items():
        cfg[key] = value
    path = ds["root"] / "case.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snakemake(configfile: Path, *args: str) -> subprocess.CompletedProcess:
    """Run Snakemake on the tiny preset plus ``configfile`` (2 cores)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(ROOT), "--cores", "2", "--configfile",
           str(ROOT / "workflow/presets/tiny.yaml"), str(configfile), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def stage(name: str, inputs: dict[str, Path], outputs: dict[str, Path], params: dict,
          log: Path | None = None) -> subprocess.CompletedProcess:
    """Run one stage as the rules do: ``python -m wsss <stage> ...``."""
    cmd = [sys.executable, "-m", "wsss", name, "--params", json.dumps(params)]
    cmd += [a for k, v in inputs.items() for a in ("--input", f"{k}={v}")]
    cmd += [a for k, v in outputs.items() for a in ("--output", f"{k}={v}")]
    if log is not None:
        cmd += ["--log", str(log)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


# ---------------------------------------------------------------- the cases


@case
def case_path_separator_in_id(tmp_path: Path) -> Expect:
    """An id with ``/`` (an image in a sub-folder) is refused by prepare_data, naming the CSV
    line; no split CSV is written."""
    ds = folder_dataset(tmp_path / "ds")
    rows = ds["train"].read_text().splitlines()
    rows[3] = "sub/train_002,cat"
    write_image(ds["images"] / "sub" / "train_002.png")
    ds["train"].write_text("\n".join(rows) + "\n")
    results = tmp_path / "results"
    cfg = folder_config(ds, results)
    proc = snakemake(cfg, "--until", "prepare_data")
    return Expect(proc, rc=1, message=r"train\.csv, line 4: .*id 'sub/train_002'",
                  absent=[results / "case/data/train.csv", results / "case/data/val.csv"])


# ---------------------------------------------------------------- images (issue 8: bit depth,
# EXIF orientation, images beyond dataset.max_side)


def _cam_input(results: Path, ident: str, max_side: int | None = 1024) -> np.ndarray:
    """The (H, W, 3) uint8 pixels extract_cams feeds the network for one image of the prepared
    train split (its dataset, before normalisation)."""
    from wsss.data.datasets import InferenceImages
    from wsss.data.table import read_split_csv

    records = read_split_csv(results / "case/data/train.csv", CLASSES)
    i = [r.id for r in records].index(ident)
    x, _, _, _ = InferenceImages(records, len(CLASSES) - 1, max_side)[i]
    return x.permute(1, 2, 0).numpy()


@case
def case_sixteen_bit_greyscale_image(tmp_path: Path) -> Expect:
    """A 16-bit greyscale PNG (PIL mode I;16, 0..65535) is accepted and read by its real range
    (v * 255 / 65535), not as all 255: the CAM input of that image is the scaled gradient."""
    ds = folder_dataset(tmp_path / "ds")
    grad = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    (ds["images"] / "train_000.png").unlink()
    Image.fromarray(grad).save(ds["images"] / "train_000.png")
    results = tmp_path / "results"
    proc = snakemake(folder_config(ds, results), "--until", "prepare_data")

    def check() -> None:
        with Image.open(ds["images"] / "train_000.png") as im:
            assert im.mode == "I;16"
        x = _cam_input(results, "train_000")
        expected = np.rint(grad.astype(np.float64) * 255 / 65535).astype(np.uint8)
        assert x.shape == (48, 64, 3) and (x == expected[:, :, None]).all()
        assert x.min() == 0 and x.max() == 255 and (x == 255).mean() < 0.01

    return Expect(proc, rc=0, present=[results / "case/data/train.csv"], check=check)


@case
def case_exif_rotated_jpeg_with_displayed_mask(tmp_path: Path) -> Expect:
    """A phone JPEG whose pixels are stored rotated (EXIF orientation 6) with a mask drawn on
    the displayed image is accepted (the sizes match after transposition), and the pixels read
    are the displayed ones: red top half, blue bottom half, where the mask's cat is."""
    ds = folder_dataset(tmp_path / "ds")
    shown = np.zeros((48, 64, 3), np.uint8)
    shown[:24] = [255, 0, 0]
    shown[24:] = [0, 0, 255]
    (ds["images"] / "train_000.png").unlink()
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # 48 wide, 64 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(ds["images"] / "train_000.jpg", exif=exif.tobytes(), quality=95)
    mask = np.zeros((48, 64), np.uint8)
    mask[:24] = CLASSES.index("cat")  # drawn on the displayed image: the red half
    write_mask(ds["masks"] / "train_000.png", mask)
    results = tmp_path / "results"
    proc = snakemake(folder_config(ds, results), "--until", "prepare_data")

    def check() -> None:
        x = _cam_input(results, "train_000").astype(int)
        assert x.shape == (48, 64, 3)
        assert np.abs(x[4:20] - [255, 0, 0]).max() <= 8  # the cat half is red
        assert np.abs(x[28:44] - [0, 0, 255]).max() <= 8

    return Expect(proc, rc=0, present=[results / "case/data/train.csv"], check=check)


@case
def case_image_beyond_max_side(tmp_path: Path) -> Expect:
    """An image whose long side exceeds dataset.max_side is named (id, file, size) by
    prepare_data; extract_cams runs the network on it capped at max_side and stores its
    full-size CAMs at the image's own size, the strided maps on the capped image's grid;
    make_pseudo_masks walks on that grid and stores the masks at the image's own size."""
    ds = folder_dataset(tmp_path / "ds")
    (ds["images"] / "train_001.png").unlink()
    write_image(ds["images"] / "train_001.png", h=96, w=200, seed=1)
    mask = np.zeros((96, 200), np.uint8)
    mask[10:60, 20:120] = CLASSES.index("dog")
    write_mask(ds["masks"] / "train_001.png", mask)
    results = tmp_path / "results"
    cams = results / "case/cams/train.h5"
    cfg = folder_config(ds, results)
    overlay = yaml.safe_load(cfg.read_text())
    overlay["dataset"]["max_side"] = 64
    cfg.write_text(yaml.safe_dump(overlay))
    proc = snakemake(cfg, "--until", "make_pseudo_masks")

    def check() -> None:
        from wsss.io.h5store import H5Reader

        store = H5Reader(cams, kind="cams")
        big = store.get("train_001", ["cnn", "cnn_strided", "tran", "attn"])
        assert big["size"] == (96, 200) and store.infer_size("train_001") == (31, 64)
        assert big["cnn"].shape == big["tran"].shape == (1, 96, 200)  # the original size
        assert big["cnn_strided"].shape == (1, 8, 16)  # stride 4 of 31x64
        assert big["attn"].shape == (8, 16)
        assert np.isfinite(big["cnn"]).all() and 0 <= big["cnn"].min() <= big["cnn"].max() <= 1
        small = store.get("train_002", ["cnn"])
        assert small["cnn"].shape == (1, 48, 64) and store.infer_size("train_002") == (48, 64)
        assert store.meta["max_side"] == 64
        masks = H5Reader(results / "case/masks/train.h5", kind="masks")
        for key in ("mask", "mask_crf"):  # walked on the capped grid, back at 96x200
            assert masks.get("train_001", [key])[key].shape == (96, 200)
        with Image.open(results / "case/masks/train/train_001.png") as png:
            assert png.size == (200, 96)

    return Expect(proc, rc=0, message=r"1 of 12 image\(s\) have a long side above "
                  r"dataset\.max_side = 64.*train_001 \S*train_001\.png \(200x96\)",
                  logs=[results / "case/logs/prepare_data.log"], present=[cams], check=check)


# ---------------------------------------------------------------- the test


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name: str, tmp_path: Path) -> None:
    expect = CASES[name](tmp_path)
    text = expect.proc.stdout + expect.proc.stderr
    text += "".join(p.read_text() for p in expect.logs if p.exists())
    assert expect.proc.returncode == expect.rc, text[-4000:]
    if expect.message is not None:
        assert re.search(expect.message, text), f"no /{expect.message}/ in:\n{text[-4000:]}"
    for path in expect.absent:
        assert not path.exists(), f"{path} exists"
    for path in expect.present:
        assert path.exists(), f"{path} is missing"
    if expect.check is not None:
        expect.check()
