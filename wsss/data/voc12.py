"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) as split records with image-level labels."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from wsss.data.classes import IGNORE_INDEX, VOC_CLASSES
from wsss.errors import DataError

log = logging.getLogger(__name__)

VOC_SPLITS: tuple[str, ...] = ("train", "val", "train_aug")


def _read_id_list(path: Path) -> list[str]:
    """Read an ImageSets list; accepts plain ids or ``/JPEGImages/<id>.jpg ...`` lines."""
    if not path.is_file():
        raise DataError(f"VOC split list not found: {path}")
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().split()[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem if "/" in token or "." in token else token)
    if not ids:
        raise DataError(f"VOC split list is empty: {path}")
    return ids


def _split_ids(root: Path, split: str) -> list[str]:
    """Ids of a VOC split; train_aug falls back to all SegmentationClassAug ids minus val."""
    sets = root / "ImageSets" / "Segmentation"
    if split != "train_aug":
        return _read_id_list(sets / f"{split}.txt")
    listed = sets / "train_aug.txt"
    if listed.is_file():
        return _read_id_list(listed)
    aug = root / "SegmentationClassAug"
    if not aug.is_dir():
        raise DataError(f"train_aug needs {listed} or the SBD masks directory {aug}")
    val = set(_read_id_list(sets / "val.txt"))
    ids = sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
    if not ids:
        raise DataError(f"no train_aug masks found in {aug}")
    return ids


def _mask_labels(path: Path) -> list[str]:
    """Class names present in a VOC mask (excluding background and the ignore value)."""
    try:
        with Image.open(path) as m:
            values = np.unique(np.asarray(m))
    except OSError as exc:
        raise DataError(f"cannot read VOC mask {path}: {exc}") from exc
    bad = [int(v) for v in values if v >= len(VOC_CLASSES) and v != IGNORE_INDEX]
    if bad:
        raise DataError(f"VOC mask {path} has values {bad[:5]} outside 0..20 and 255")
    return [VOC_CLASSES[int(v)] for v in values if 0 < v < len(VOC_CLASSES)]


def voc12_records(root: Path, split: str, threads: int = 1) -> list[dict]:
    """Return records (absolute paths, labels from the masks) for VOC split train|val|train_aug."""
    if split not in VOC_SPLITS:
        raise DataError(f"unknown VOC split {split!r} (use one of {', '.join(VOC_SPLITS)})")
    root = Path(root).resolve()
    if not root.is_dir():
        raise DataError(f"VOC root directory not found: {root}")
    mask_dirs = [root / "SegmentationClass", root / "SegmentationClassAug"]
    if split == "train_aug":
        if not mask_dirs[1].is_dir():  # else its images in train.txt would silently fall back
            raise DataError(f"VOC split train_aug needs the SBD masks folder {mask_dirs[1]} "
                            "(SegmentationClassAug of the SBD-augmented release): not found")
        mask_dirs.reverse()
    records, fell_back = [], []
    for ident in _split_ids(root, split):
        image = root / "JPEGImages" / f"{ident}.jpg"
        if not image.is_file():
            raise DataError(f"VOC image not found: {image}")
        mask = next((d / f"{ident}.png" for d in mask_dirs if (d / f"{ident}.png").is_file()),
                    None)
        if mask is None:
            raise DataError(f"VOC mask not found: {mask_dirs[0] / f'{ident}.png'}")
        if mask.parent != mask_dirs[0]:
            fell_back.append(ident)
        records.append({"id": ident, "image": str(image), "mask": str(mask)})
    if fell_back:  # the same annotation, so the same labels; but the tree is not as released
        log.warning("VOC split %s: %d image(s) have no mask in %s and take theirs from %s "
                    "(e.g. %s)", split, len(fell_back), mask_dirs[0], mask_dirs[1],
                    ", ".join(fell_back[:3]))
    with ThreadPoolExecutor(max(1, threads)) as pool:
        labels = list(pool.map(_mask_labels, [Path(r["mask"]) for r in records]))
    for rec, lab in zip(records, labels, strict=True):
        rec["labels"] = lab
    return records


def scored_subset(records: list[dict], root: Path, subset: str) -> list[dict]:
    """Keep the ground-truth mask only on the train images that score seeds and pseudo masks.

    ``subset`` ``train``: the papers' protocol (IRN, CoBra: seeds and masks scored on the 1,464
    images of VOC ``train`` with the official ``SegmentationClass`` masks); every other image
    keeps its labels (read from its mask before) but gets an empty mask, so the scoring stages
    skip it. ``all``: every image keeps its mask (train_aug is then scored on SBD masks).
    """
    if subset == "all":
        return records
    if subset != "train":
        raise DataError(f"unknown scored subset {subset!r} (use train or all)")
    root = Path(root).resolve()
    official = set(_read_id_list(root / "ImageSets" / "Segmentation" / "train.txt"))
    out = []
    for rec in records:
        mask = root / "SegmentationClass" / f"{rec['id']}.png"
        out.append({**rec, "mask": str(mask) if rec["id"] in official and mask.is_file() else ""})
    return out
