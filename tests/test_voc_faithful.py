"""The ``voc12-cobra`` preset end to end on a miniature PASCAL VOC 2012 + SBD tree laid out as
distributed.

The tree mirrors ``VOCdevkit/VOC2012`` (the ``dataset.root`` of the voc12 presets) with the SBD
augmentation unpacked into it, as the SegmentationClassAug releases (DeepLab, IRN, CoBra) have it:

* ``JPEGImages/<id>.jpg``: real JPEGs at sizes the data set has (500 x 375, 375 x 500,
  500 x 281, 500 x 366, 333 x 500), ids like ``2007_000032``;
* ``SegmentationClass/<id>.png``: palette ('P') PNGs with the VOC colour map, the objects
  outlined by the 255 boundary band, only for the images of ``train.txt`` and ``val.txt``;
* ``SegmentationClassAug/<id>.png``: grayscale ('L') PNGs, class indices as values, for every
  train_aug image and the val images (the released folder holds both); SBD-only images have no
  boundary band;
* ``ImageSets/Segmentation/{train,val,trainval}.txt`` (one id a line) and ``train_aug.txt`` in
  the release's ``/JPEGImages/<id>.jpg /SegmentationClassAug/<id>.png`` form: the VOC train
  images and SBD-only ones, no val image.

Every image shows flat coloured shapes exactly where its masks put their classes, so every
class of an image has pixels. The preset runs to the report through Snakemake with CPU sizing
overridden (tiny timm backbones without pretrained weights, small crops, one epoch, batch 2,
one test scale, two overlay sheets, device cpu) and one consequence of it: the IR labels use
IRN's fixed thresholds, as CoBra's attention rule needs a trained ViT (see ``FORCED``). The
dataset, splits, classes, fusion, mask rule, edge padding, seed and every CRF setting stay the
preset's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image, ImageDraw

from wsss.config import validate_config
from wsss.data.classes import VOC_CLASSES
from wsss.data.table import read_split_csv
from wsss.errors import DataError
from wsss.stages import prepare_data

ROOT = Path(__file__).resolve().parent.parent
PRESET = ROOT / "workflow/presets/voc12-cobra.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"),
             "--directory", str(ROOT), "--cores", "2"]

# A shape: (class index, "rect" | "ellipse", (x0, y0, x1, y1)) in image pixels.
Shape = tuple[int, str, tuple[int, int, int, int]]
# id -> (width, height, shapes); class indices as in VOC_CLASSES (aeroplane 1 ... tvmonitor 20)
IMAGES: dict[str, tuple[int, int, list[Shape]]] = {
    # VOC train (SegmentationClass and SegmentationClassAug)
    "2007_000032": (500, 281, [(1, "ellipse", (40, 40, 300, 150)),
                               (15, "rect", (340, 120, 420, 270))]),
    "2007_000039": (500, 375, [(20, "rect", (120, 80, 380, 300))]),
    "2007_000063": (375, 500, [(12, "ellipse", (40, 220, 250, 440)),
                               (9, "rect", (230, 60, 340, 300))]),
    # VOC val (SegmentationClass; SegmentationClassAug as released)
    "2007_000033": (500, 366, [(1, "ellipse", (60, 100, 440, 260))]),
    "2007_000129": (333, 500, [(2, "ellipse", (30, 250, 300, 460)),
                               (15, "rect", (110, 40, 220, 280))]),
    # SBD only (train_aug; SegmentationClassAug only)
    "2008_000008": (500, 375, [(13, "ellipse", (50, 90, 330, 330)),
                               (15, "rect", (360, 40, 450, 250))]),
    "2008_000015": (375, 500, [(12, "ellipse", (60, 60, 300, 260)),
                               (8, "ellipse", (90, 300, 280, 470))]),
}
TRAIN = ["2007_000032", "2007_000039", "2007_000063"]
VAL = ["2007_000033", "2007_000129"]
SBD_ONLY = ["2008_000008", "2008_000015"]
TRAIN_AUG = sorted(TRAIN + SBD_ONLY)
BOUNDARY = 5  # width of VOC's 255 band around the objects
# flat object colours per class, far from the background's grey-green
COLOURS = {1: (200, 40, 40), 2: (40, 40, 200), 8: (230, 160, 30), 9: (120, 60, 20),
           12: (150, 90, 200), 13: (90, 50, 30), 15: (250, 200, 170), 20: (20, 20, 20)}

# CPU sizing laid over the preset: models, sizes, epochs, batches, workers, scales, device.
# Nothing else (dataset name and splits, classes, fusion, mask rule, edge padding, CRF settings,
# seed) is touched but FORCED below; test_overlay_sizes_only keeps it that way.
CPU_SIZING = {
    "device": "cpu",
    "classifier": {
        "epochs": 1, "batch_size": 2, "crop": 64, "resize_long": [96, 160], "num_workers": 0,
        "cnn": {"name": "test_resnet", "pretrained": "none"},
        "vit": {"name": "test_vit", "pretrained": "none"},
    },
    "cams": {"scales": [1.0], "batch_size": 2},
    "irn": {"backbone": {"name": "test_resnet", "pretrained": "none"}, "crop": 64,
            "batch_size": 2, "epochs": 1, "num_workers": 0},
    "segmentation": {"backbone": {"name": "test_resnet", "pretrained": "none"}, "width": 32,
                     "crop": 64, "batch_size": 2, "epochs": 1, "num_workers": 0},
    "predict": {"scales": [1.0]},
    "report": {"overlay_images": 2},
}
# Not sizing, forced by it: the untrained test_vit's CLS attention is flat (max-normalised, all
# of it within 0.97-1.0), so CoBra's rule (bg = its 93rd percentile snapped down to 0.05, i.e.
# 0.95; fg = bg + 0.5, clipped to 1) leaves no confident foreground and train_irn stops, as it
# should ("no negative pairs"). IRN's fixed pair (0.30 / 0.05) keeps the walk, the CRFs and the
# segmenter running; eval_seeds still scores the attention rule.
FORCED = {"ir_labels": {"threshold": "fixed"}}
SIZING_KEYS = {"device", "classifier.epochs", "classifier.batch_size", "classifier.crop",
               "classifier.resize_long", "classifier.num_workers", "classifier.cnn.name",
               "classifier.cnn.pretrained", "classifier.vit.name", "classifier.vit.pretrained",
               "cams.scales", "cams.batch_size", "irn.backbone.name", "irn.backbone.pretrained",
               "irn.crop", "irn.batch_size", "irn.epochs", "irn.num_workers",
               "segmentation.backbone.name", "segmentation.backbone.pretrained",
               "segmentation.width", "segmentation.crop", "segmentation.batch_size",
               "segmentation.epochs", "segmentation.num_workers", "predict.scales",
               "report.overlay_images"}


def voc_colour_map(n: int = 256) -> np.ndarray:
    """The PASCAL VOC devkit's colour map (VOClabelcolormap.m), (n, 3) uint8; 255 is the
    boundary colour (224, 224, 192)."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for j in range(8):
            for k in range(3):
                rgb[k] |= ((c >> k) & 1) << (7 - j)
            c >>= 3
        cmap[i] = rgb
    return cmap


def _label_map(width: int, height: int, shapes: list[Shape], boundary: bool) -> np.ndarray:
    """The mask of ``shapes`` (later shapes on top), with VOC's 255 band on their outlines."""
    im = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(im)
    for cls, kind, box in shapes:
        (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=cls)
    if boundary:
        for _, kind, box in shapes:
            (draw.ellipse if kind == "ellipse" else draw.rectangle)(
                box, outline=255, width=BOUNDARY)
    return np.asarray(im)


def _photo(ident: str, width: int, height: int, shapes: list[Shape]) -> Image.Image:
    """A textured background with the flat coloured shapes of the masks."""
    rng = np.random.default_rng(int(ident.replace("_", "")))
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([90 + 40 * yy / height, 120 + 30 * xx / width, 80 + 0 * xx], -1)
    noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(noisy)
    draw = ImageDraw.Draw(im)
    for cls, kind, box in shapes:
        (draw.ellipse if kind == "ellipse" else draw.rectangle)(box, fill=COLOURS[cls])
    return im


def build_voc_tree(base: Path, *, with_aug: bool = True) -> Path:
    """Write the miniature ``VOCdevkit/VOC2012`` (SBD masks inside it unless ``with_aug`` is
    false) under ``base`` and return that VOC2012 directory."""
    voc = base / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    for folder in ("JPEGImages", "SegmentationClass", "SegmentationClassAug"):
        (voc / folder).mkdir(parents=True, exist_ok=True)
    sets.mkdir(parents=True, exist_ok=True)
    palette = voc_colour_map().ravel().tolist()
    for ident, (width, height, shapes) in IMAGES.items():
        _photo(ident, width, height, shapes).save(voc / "JPEGImages" / f"{ident}.jpg",
                                                  quality=90)
        voc_gt = ident not in SBD_ONLY
        if voc_gt:
            png = Image.fromarray(_label_map(width, height, shapes, boundary=True), mode="P")
            png.putpalette(palette)
            png.save(voc / "SegmentationClass" / f"{ident}.png")
        aug = _label_map(width, height, shapes, boundary=voc_gt)
        Image.fromarray(aug, mode="L").save(voc / "SegmentationClassAug" / f"{ident}.png")
    (sets / "train.txt").write_text("".join(f"{i}\n" for i in TRAIN))
    (sets / "val.txt").write_text("".join(f"{i}\n" for i in VAL))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in sorted(TRAIN + VAL)))
    (sets / "train_aug.txt").write_text("".join(
        f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in TRAIN_AUG))
    if not with_aug:
        for png in (voc / "SegmentationClassAug").iterdir():
            png.unlink()
        (voc / "SegmentationClassAug").rmdir()
    return voc


def _leaves(node: object, prefix: str = "") -> set[str]:
    """The dotted keys of a nested dict's leaves."""
    if isinstance(node, dict):
        return {k for key, value in node.items() for k in _leaves(value, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


@pytest.fixture(scope="module")
def voc_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The voc12-cobra DAG run once on the tree: (its VOC2012 root, results/<run>)."""
    base = tmp_path_factory.mktemp("voc")
    voc = build_voc_tree(base)
    overlay = base / "cpu.yaml"
    overlay.write_text(yaml.safe_dump({**CPU_SIZING, **FORCED, "dataset": {"root": str(voc)}}))
    results = base / "results"
    cmd = [*SNAKEMAKE, "--configfile", str(PRESET), str(overlay),
           "--config", f"results={results}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, f"snakemake failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-4000:]}"
    return voc, results / "voc12-cobra"


def test_overlay_sizes_only() -> None:
    """The overlay changes CPU sizing and the IR-label rule only; the preset is the VOC one
    this file claims."""
    assert _leaves(CPU_SIZING) <= SIZING_KEYS
    assert _leaves(FORCED) == {"ir_labels.threshold"} and not set(CPU_SIZING) & set(FORCED)
    preset = yaml.safe_load(PRESET.read_text())
    assert preset["dataset"]["name"] == "voc12"
    assert preset["dataset"]["voc12"] == {"train_split": "train_aug", "val_split": "val"}


def test_dag_reaches_the_report(voc_run: tuple[Path, Path]) -> None:
    _, run = voc_run
    summary = pd.read_csv(run / "report/summary.csv")
    assert list(summary.columns[:5]) == ["stage", "variant", "miou", "split", "method"]
    assert list(dict.fromkeys(summary["stage"])) == ["seeds", "ir_labels", "masks",
                                                     "segmentation"]
    assert set(summary["method"]) == {"cobra"}
    assert set(summary.loc[summary["stage"] == "masks", "variant"]) == {"walk", "walk_crf"}
    assert set(summary.loc[summary["stage"] == "segmentation", "variant"]) == {"raw", "crf"}
    # the 21 VOC classes reach the report
    assert [c for c in summary.columns if c.startswith("iou_")] == [
        f"iou_{c}" for c in VOC_CLASSES]
    # the papers' protocol: seeds and masks scored on the VOC train images, the segmenter on val
    seg = pd.read_csv(run / "metrics/segmentation.csv")
    assert list(seg["images"]) == [len(VAL)] * 2
    assert (pd.read_csv(run / "metrics/seeds.csv")["images"] == len(TRAIN)).all()
    assert list(pd.read_csv(run / "metrics/masks.csv")["images"]) == [len(TRAIN)] * 2
    assert summary["miou"].between(0, 1).all()
    assert len(list((run / "report/overlays").glob("*.png"))) == 2


def test_prepared_train_split_reads_the_sbd_masks(voc_run: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    voc, run = voc_run
    train = read_split_csv(run / "data/train.csv", VOC_CLASSES)
    assert [r.id for r in train] == TRAIN_AUG
    for rec in train:
        aug = np.asarray(Image.open(voc / "SegmentationClassAug" / f"{rec.id}.png"))
        assert rec.labels == tuple(int(v) for v in np.unique(aug) if 0 < v < 255), rec.id
        assert rec.image == voc / "JPEGImages" / f"{rec.id}.jpg"
        # scored_train: train (the preset's default): only VOC train images keep a mask, the
        # official SegmentationClass one; SBD-only images are trained on, not scored
        expected = voc / "SegmentationClass" / f"{rec.id}.png" if rec.id in TRAIN else None
        assert rec.mask == expected, rec.id
    val = read_split_csv(run / "data/val.csv", VOC_CLASSES)
    assert [(r.id, r.mask) for r in val] == [
        (i, voc / "SegmentationClass" / f"{i}.png") for i in VAL]
    # scored_train: all: every train_aug image is scored on its SegmentationClassAug mask
    params = validate_config({"dataset": {"name": "voc12", "root": str(voc), "voc12": {
        "train_split": "train_aug", "val_split": "val", "scored_train": "all"}}})["dataset"]
    out = {k: tmp_path / f"{k}.csv" for k in ("train", "val", "classes")}
    prepare_data.run({}, out, params)
    assert [r.mask for r in read_split_csv(out["train"], VOC_CLASSES)] == [
        voc / "SegmentationClassAug" / f"{i}.png" for i in TRAIN_AUG]


@pytest.mark.parametrize("folder, ids", [("masks/train", TRAIN_AUG), ("predictions/val", VAL)])
def test_label_pngs_are_voc_palette_images_at_the_image_size(
        voc_run: tuple[Path, Path], folder: str, ids: list[str]) -> None:
    voc, run = voc_run
    pngs = sorted((run / folder).glob("*.png"))
    assert [p.stem for p in pngs] == ids
    cmap = voc_colour_map()
    for png in pngs:
        with Image.open(png) as im:
            assert im.mode == "P", png
            palette = np.asarray(im.getpalette(), np.uint8).reshape(-1, 3)
            values = np.unique(np.asarray(im))
            size = im.size
        np.testing.assert_array_equal(palette[:21], cmap[:21], err_msg=str(png))
        assert set(values.tolist()) <= set(range(21)) | {255}, (png, values)
        with Image.open(voc / "JPEGImages" / f"{png.stem}.jpg") as jpg:
            assert size == jpg.size == IMAGES[png.stem][:2], png  # no square resize


def test_train_aug_without_the_sbd_masks_names_the_folder(tmp_path: Path) -> None:
    """A VOC root without SegmentationClassAug: train_aug stops prepare_data with one message
    naming the missing folder, and nothing is written."""
    voc = build_voc_tree(tmp_path, with_aug=False)
    params = validate_config({"dataset": {"name": "voc12", "root": str(voc), "voc12": {
        "train_split": "train_aug", "val_split": "val"}}})["dataset"]
    out = {k: tmp_path / "data" / f"{k}.csv" for k in ("train", "val", "classes")}
    with pytest.raises(DataError) as err:
        prepare_data.run({}, out, params)
    message = str(err.value)
    assert "\n" not in message
    assert f"SBD masks folder {voc / 'SegmentationClassAug'} " in message, message
    assert message.endswith("not found")
    assert not any(p.exists() for p in out.values())
