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
import pandas as pd
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


# ---------------------------------------------------------------- data checks (issue 8: ids,
# classes without negatives, images without ground truth, stages with nothing to learn)


def tiny_config() -> dict:
    """The validated config Snakemake sees for the tiny preset (defaults filled in)."""
    from wsss.config import load_workflow_config

    return load_workflow_config([ROOT / "workflow/presets/tiny.yaml"])


def dataset_params(ds: dict[str, Path], masks: bool = True) -> dict:
    """prepare_data's params (the config's dataset section) for the folder data set ``ds``."""
    return {"name": "folder", "root": str(ds["root"]), "classes": CLASSES,
            "folder": {"images": "img", "masks": "masks" if masks else None,
                       "train_labels": "train.csv", "val_labels": "val.csv"}}


def prepared(ds: dict[str, Path], data: Path, masks: bool = True) -> dict[str, Path]:
    """Run prepare_data on ``ds`` into ``data``; return its outputs (it must succeed)."""
    out = {k: data / f"{k}.csv" for k in ("train", "val", "classes")}
    proc = stage("prepare_data", {}, out, dataset_params(ds, masks))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _bad_id(ident: str) -> Callable[[Path], Expect]:
    """A case: line 4 of train.csv holds the id ``ident``; prepare_data (through Snakemake)
    stops naming the file, the line and the id, and writes none of its three CSVs."""
    def build(tmp_path: Path) -> Expect:
        ds = folder_dataset(tmp_path / "ds")
        rows = ds["train"].read_text().splitlines()
        rows[3] = f"{ident},cat"
        ds["train"].write_text("\n".join(rows) + "\n")
        results = tmp_path / "results"
        proc = snakemake(folder_config(ds, results), "--until", "prepare_data")
        data = results / "case/data"
        return Expect(proc, rc=1, message=r"train\.csv, line 4: id " + re.escape(repr(ident)),
                      absent=[data / "train.csv", data / "val.csv", data / "classes.csv"])
    return build


for _label, _ident in [("dotdot", ".."), ("parent_path", "../train_002"),
                       ("leading_dot", ".train_002"), ("backslash", "sub\\train_002"),
                       ("control_char", "train\t002")]:
    CASES[f"id_{_label}"] = _bad_id(_ident)


@case
def case_bad_id_in_split_csv(tmp_path: Path) -> Expect:
    """A hand-edited data/train.csv with a path as id stops the stage reading it (here the
    classifier) before anything is trained, naming the CSV line."""
    ds = folder_dataset(tmp_path / "ds")
    data = prepared(ds, tmp_path / "data")
    rows = data["train"].read_text().splitlines()
    rows[2] = "../up," + rows[2].split(",", 1)[1]
    data["train"].write_text("\n".join(rows) + "\n")
    cfg = tiny_config()
    model = tmp_path / "classifier/model.pt"
    proc = stage("train_classifier", {"train": data["train"]},
                 {"model": model, "metrics": tmp_path / "classifier/metrics.csv"},
                 {"classifier": cfg["classifier"], "classes": CLASSES, "device": "cpu",
                  "seed": 0})
    return Expect(proc, rc=2, message=r"train\.csv, line 3: id '\.\./up' contains a path "
                                      r"separator",
                  absent=[model, tmp_path / "classifier/metrics.csv"])


@case
def case_class_on_every_train_image(tmp_path: Path) -> Expect:
    """Every train image labelled cat, none dog: prepare_data succeeds, warns about both in its
    log (what it means for the result) and writes the counts to data/classes.csv."""
    ds = folder_dataset(tmp_path / "ds", labels=lambda split, i: ["cat"])
    results = tmp_path / "results"
    proc = snakemake(folder_config(ds, results), "--until", "prepare_data")
    data = results / "case/data"

    def check() -> None:
        table = pd.read_csv(data / "classes.csv", keep_default_na=False)
        assert table.to_dict("list") == {
            "class": ["cat", "dog"], "train_images": [12, 0], "val_images": [4, 0],
            "train_masks": [12, 0], "val_masks": [4, 0],
            "problem": ["no_negatives", "no_positives"]}
        log = (results / "case/logs/prepare_data.log").read_text()
        assert "WARNING" in log and "class 'dog' is on none of the train images: no positive " \
            "examples, so it will never be predicted" in log

    return Expect(proc, rc=0,
                  message=r"class 'cat' is on every one of the 12 train images: no negative "
                          r"examples, so the classifier cannot tell where it is not; its CAMs "
                          r"and pseudo masks will cover whole images",
                  logs=[results / "case/logs/prepare_data.log"],
                  present=[data / "train.csv", data / "val.csv"], check=check)


def _perfect_cams(data: dict[str, Path], root: Path) -> dict[str, Path]:
    """A CNN CAM store equal to the ground truth (1 on each class's rectangle, where a mask
    exists; the rectangle of folder_dataset otherwise) and its seeds store."""
    from wsss.data.table import read_split_csv
    from wsss.io.h5store import H5Writer

    cams, seeds = root / "cams/train.h5", root / "seeds/train.h5"
    with H5Writer(cams, "cams", CLASSES, {"maps": ["cnn"]}) as cw, \
            H5Writer(seeds, "seeds", CLASSES, {"fusion": "cnn"}) as sw:
        for rec in read_split_csv(data["train"], CLASSES):
            with Image.open(rec.image) as im:
                w, h = im.size
            gt = np.zeros((h, w), np.uint8)
            gt[4:h // 2, 4:w // 2] = rec.labels[0]
            keys = np.array(rec.labels)
            cam = np.stack([(gt == c).astype(np.float32) for c in keys])
            cw.add(rec.id, (h, w), keys, {"cnn": cam})
            sw.add(rec.id, (h, w), keys, {"cam": cam})
    return {"cams": cams, "seeds": seeds, "split": data["train"]}


@case
def case_train_masks_partly_missing(tmp_path: Path) -> Expect:
    """Two train masks deleted: eval_seeds scores the other ten (seeds equal to the ground
    truth: mIoU 1.0, images 10) and names the two skipped in its log."""
    ds = folder_dataset(tmp_path / "ds")
    for ident in ("train_003", "train_007"):
        (ds["masks"] / f"{ident}.png").unlink()
    data = prepared(ds, tmp_path / "data")
    inputs = _perfect_cams(data, tmp_path)
    cfg = tiny_config()
    metrics, log = tmp_path / "metrics/seeds.csv", tmp_path / "eval_seeds.log"
    proc = stage("eval_seeds", inputs, {"metrics": metrics},
                 {"seeds": cfg["seeds"], "attention": cfg["ir_labels"]["attention"],
                  "classes": CLASSES}, log=log)

    def check() -> None:
        table = pd.read_csv(metrics)
        assert list(table["variant"]) == ["cnn"] and list(table["rule"]) == ["sweep"]
        row = table.iloc[0]
        assert row["images"] == 10 and row["miou"] == pytest.approx(1.0)
        assert [row[f"iou_{c}"] for c in CLASSES] == pytest.approx([1.0, 1.0, 1.0])
        # 0/1 maps: every threshold below 1 is perfect, the first (0.00) is taken and flagged
        assert row["threshold"] == 0.0 and bool(row["at_sweep_end"])

    return Expect(proc, rc=0, logs=[log],
                  message=r"eval_seeds \(.*train\.csv\): 2 of 12 image\(s\) have no ground-truth "
                          r"mask and are not scored \(scored on the other 10\): train_003, "
                          r"train_007",
                  present=[metrics], check=check)


@case
def case_no_masks_at_all(tmp_path: Path) -> Expect:
    """No masks anywhere: the whole tiny DAG runs to the report (every score NaN, every
    scoring stage's ``images`` 0) and report/warnings.txt says nothing could be scored."""
    ds = folder_dataset(tmp_path / "ds", masks=False)
    results = tmp_path / "results"
    proc = snakemake(folder_config(ds, results, masks=False))
    run = results / "case"

    def check() -> None:
        assert pd.read_csv(run / "report/summary.csv")["miou"].isna().all()
        for name in ("seeds", "masks", "segmentation"):
            table = pd.read_csv(run / f"metrics/{name}.csv")
            assert table["miou"].isna().all() and (table["images"] == 0).all(), name
        ir = pd.read_csv(run / "metrics/ir_labels_train.csv")
        assert ir["images"].iloc[-1] == 0 and np.isnan(ir["miou"].iloc[-1])
        warnings = (run / "report/warnings.txt").read_text()
        assert "train: none of the 12 images has a ground-truth mask, so seeds, IR labels and " \
               "pseudo masks could not be scored (mIoU n/a)" in warnings
        assert "val: none of the 4 images has a ground-truth mask" in warnings
        for name, columns in (("irn", ["pairs_bg_pos", "pairs_fg_pos", "pairs_neg"]),
                              ("classifier", ["pos_cat", "pos_dog"]),
                              ("segmentation", [f"pixels_{c}" for c in CLASSES])):
            table = pd.read_csv(run / f"{name}/metrics.csv")
            assert set(columns) <= set(table.columns), (name, list(table.columns))

    return Expect(proc, rc=0, message=r"nothing could be scored",
                  logs=[run / "report/warnings.txt"],
                  present=[run / "report/miou_stages.png", run / "report/iou_classes.png"],
                  check=check)


def _label_store(path: Path, kind: str, key: str, data: dict[str, Path], value: int,
                 meta: dict) -> Path:
    """A store of ``kind`` with map ``key`` = ``value`` everywhere for every train image."""
    from wsss.data.table import read_split_csv
    from wsss.io.h5store import H5Writer

    with H5Writer(path, kind, CLASSES, meta) as w:
        for rec in read_split_csv(data["train"], CLASSES):
            with Image.open(rec.image) as im:
                size = (im.size[1], im.size[0])
            w.add(rec.id, size, np.array(rec.labels), {key: np.full(size, value, np.uint8)},
                  dtypes={key: np.uint8})
    return path


@case
def case_ir_labels_all_background(tmp_path: Path) -> Expect:
    """IR labels that came out all background (attention thresholds): train_irn stops before
    training, naming the store, the threshold rule and the settings to change; no model."""
    data = prepared(folder_dataset(tmp_path / "ds"), tmp_path / "data")
    labels = _label_store(tmp_path / "ir_labels/train.h5", "ir_labels", "label", data, 0,
                          {"ir_labels": {"threshold": "attention"}})
    cfg = tiny_config()
    out = {"model": tmp_path / "irn/model.pt", "metrics": tmp_path / "irn/metrics.csv"}
    proc = stage("train_irn", {"labels": labels, "split": data["train"]}, out,
                 {"irn": cfg["irn"], "classes": CLASSES, "device": "cpu", "seed": 0})
    return Expect(proc, rc=2,
                  message=r"ir_labels/train\.h5: the IR labels of all 12 images hold no "
                          r"confident foreground pixel \(ir_labels\.threshold 'attention'\), so "
                          r"IRN has no negative pairs.*lower ir_labels\.attention\.gap",
                  absent=[out["model"], out["metrics"], tmp_path / "irn/_state"])


@case
def case_pseudo_masks_all_ignore(tmp_path: Path) -> Expect:
    """Pseudo masks that are 255 everywhere: train_segmentation stops before training (its loss
    would be zero), naming the store and the config key; no model."""
    data = prepared(folder_dataset(tmp_path / "ds"), tmp_path / "data")
    cfg = tiny_config()
    key = cfg["segmentation"]["mask"]
    masks = _label_store(tmp_path / "masks/train.h5", "masks", key, data, 255, {"rule": "psa"})
    out = {"model": tmp_path / "segmentation/model.pt",
           "metrics": tmp_path / "segmentation/metrics.csv"}
    proc = stage("train_segmentation", {"masks": masks, "split": data["train"]}, out,
                 {"segmentation": cfg["segmentation"], "classes": CLASSES, "device": "cpu",
                  "seed": 0})
    return Expect(proc, rc=2,
                  message=rf"masks/train\.h5: the pseudo masks \('{key}', config key "
                          r"segmentation\.mask\) of all 12 training images are ignore",
                  absent=[out["model"], out["metrics"], tmp_path / "segmentation/_state"])


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
    extract_cams, the first stage it concerns, which runs the network on it capped at max_side
    and stores its full-size CAMs at the image's own size, the strided maps on the capped grid;
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
                  logs=[results / "case/logs/extract_cams_train.log"], present=[cams],
                  check=check)


# ---------------------------------------------------------------- config files (issue 8: two
# --configfile flags)


@case
def case_configfile_flag_given_twice(tmp_path: Path) -> Expect:
    """Snakemake keeps only the last of repeated --configfile flags, so the run would silently
    drop the preset: refused at parse time with the form that works; nothing is run."""
    ds = folder_dataset(tmp_path / "ds")
    results = tmp_path / "results"
    cfg = folder_config(ds, results)
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
           "--directory", str(ROOT), "--cores", "2", "--configfile",
           str(ROOT / "workflow/presets/tiny.yaml"), "--configfile", str(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    return Expect(proc, rc=1, message=r"--configfile given more than once: Snakemake keeps only "
                                      r"the last one\. List every file after ONE flag",
                  absent=[results])


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
