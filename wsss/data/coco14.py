"""MS COCO 2014 as split records with image-level labels and semantic masks rasterised once.

Layout under ``dataset.root``: images ``<root>/train2014/*.jpg`` and ``<root>/val2014/*.jpg``,
annotations ``<root>/annotations/instances_train2014.json`` and ``instances_val2014.json``
(the official instance annotations). Conventions (also in docs/data.md, "COCO 2014"):

* **Classes.** 80 thing classes + background (index 0). The 80 non-contiguous category ids
  (1..90) map to 1..80 in ascending id order; the names come from the file's ``categories``
  and must equal :data:`wsss.data.classes.COCO_CLASSES` (the list the Snakefile uses before any
  file is read), else an error names the file and the first differing id.
* **Masks.** Every instance is rasterised with ``pycocotools.mask`` (polygons, uncompressed RLE,
  compressed RLE). ``iscrowd=1`` regions become 255 (ignore) unless a non-crowd instance covers
  the pixel. Overlapping non-crowd instances: drawn in descending area order (area = rasterised
  pixel count; ties keep file order), so a smaller object is drawn last and wins the pixels it
  shares with a larger one. A polygon part of fewer than 3 points covers no area and is skipped.
* **Image labels.** Every annotated category of the image, crowd annotations included (as the
  usual WSSS COCO label lists, built from all of an image's annotations). A crowd-only category
  is therefore a label whose pixels are 255 in the mask.
* **Images without annotations** (about 1 % of train2014) are left out with one warning giving
  the count and the first ids: they have no label to learn from (the usual WSSS practice).
* **Ids** are the file names without extension (``COCO_train2014_000000000009``).

Masks are P-mode PNGs with the VOC palette (as VOC's ``SegmentationClass``), one per image, of the
size the annotation file gives (``validate_records`` then checks it against the image).
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from wsss.data.classes import IGNORE_INDEX, voc_palette
from wsss.data.coverage import format_ids
from wsss.data.table import check_id
from wsss.errors import DataError

log = logging.getLogger(__name__)

COCO_SPLITS: tuple[str, ...] = ("train2014", "val2014")
# The 80 category ids of COCO 2014 (1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83), in the
# order of wsss.data.classes.COCO_CLASSES[1:].
COCO_CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))
_PALETTE: list[int] = voc_palette(256).ravel().tolist()


class Instance(NamedTuple):
    """One annotation of an image: its id, contiguous class index 1..80, crowd flag, shape."""

    ann_id: object
    class_index: int
    iscrowd: bool
    segmentation: Any


@dataclass(frozen=True)
class CocoImage:
    """An image of the annotation file with its instances (file order)."""

    coco_id: int
    ident: str
    file_name: str
    height: int
    width: int
    instances: tuple[Instance, ...]


def annotation_path(root: Path, split: str) -> Path:
    """``<root>/annotations/instances_<split>.json`` for split train2014 | val2014.

    Raises:
        DataError: an unknown split.
    """
    if split not in COCO_SPLITS:
        raise DataError(f"unknown COCO split {split!r} (use one of {', '.join(COCO_SPLITS)})")
    return Path(root) / "annotations" / f"instances_{split}.json"


def load_annotations(path: Path) -> dict[str, list]:
    """Read a COCO instances file: a JSON object with the lists ``images``, ``annotations`` and
    ``categories``.

    Raises:
        DataError: the file is missing, unreadable, not JSON, or not of that shape (named).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"COCO annotation file not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not a COCO annotation file (invalid JSON: {exc})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read COCO annotation file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a COCO annotation file (expected a JSON object with "
                        f"images, annotations and categories, got {type(data).__name__})")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: not a COCO annotation file (no list {key!r})")
    return data


def category_map(categories: Sequence[Any], classes: Sequence[str], source: str
                 ) -> dict[int, int]:
    """Map the file's category ids to contiguous class indices 1..K in ascending id order.

    ``classes`` is the configured list (background first); the file's category names, sorted
    by id, must equal ``classes[1:]``.

    Raises:
        DataError: a malformed or duplicate category, or names that differ from ``classes``
            (naming ``source``, the category id and both names).
    """
    names: dict[int, str] = {}
    for i, cat in enumerate(categories):
        cid = cat.get("id") if isinstance(cat, dict) else None
        name = cat.get("name") if isinstance(cat, dict) else None
        if not _is_int(cid) or not isinstance(name, str):
            raise DataError(f"{source}: categories[{i}] needs an integer 'id' and a string "
                            f"'name' (got {cat!r:.80})")
        if cid in names:
            raise DataError(f"{source}: category id {cid} is listed twice")
        names[cid] = name
    ids = sorted(names)
    if len(ids) != len(classes) - 1:
        raise DataError(f"{source}: {len(ids)} categories, but the coco14 class list has "
                        f"{len(classes) - 1} (wsss.data.classes.COCO_CLASSES)")
    for index, cid in enumerate(ids, start=1):
        if names[cid] != classes[index]:
            raise DataError(f"{source}: category id {cid} is {names[cid]!r}, but class "
                            f"{index} of the coco14 class list is {classes[index]!r}")
    return {cid: index for index, cid in enumerate(ids, start=1)}


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def index_images(data: Mapping[str, list], cat_map: Mapping[int, int], source: str
                 ) -> tuple[list[CocoImage], list[str]]:
    """Group the annotations by image: ``(images with at least one annotation, in file order;
    ids of the images without any)``.

    Raises:
        DataError: a malformed image or annotation entry, a duplicate image id or file name, an
            id that breaks :func:`wsss.data.table.check_id`, an annotation of an image id not in
            ``images``, or a category id not in ``cat_map`` (naming ``source``, the annotation
            id, the image id and the category id).
    """
    by_id: dict[int, dict[str, Any]] = {}
    seen_names: dict[str, int] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise DataError(f"{source}: images[{i}] is not an object")
        iid, name = img.get("id"), img.get("file_name")
        h, w = img.get("height"), img.get("width")
        if not _is_int(iid) or not isinstance(name, str) or not _is_int(h) or not _is_int(w) \
                or h < 1 or w < 1:
            raise DataError(f"{source}: images[{i}] needs an integer 'id', a 'file_name' and "
                            f"positive integer 'height' and 'width' (got {img!r:.120})")
        if iid in by_id:
            raise DataError(f"{source}: image id {iid} is listed twice")
        ident = Path(name).stem
        check_id(ident, f"{source}, image id {iid} ({name!r})")
        if ident in seen_names:
            raise DataError(f"{source}: image id {iid}: id {ident!r} also names image id "
                            f"{seen_names[ident]}")
        seen_names[ident] = iid
        by_id[iid] = {"img": img, "ident": ident, "instances": []}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise DataError(f"{source}: annotations[{i}] is not an object")
        ann_id = ann.get("id", f"#{i}")
        iid, cid = ann.get("image_id"), ann.get("category_id")
        where = f"{source}: annotation {ann_id} (image id {iid})"
        if not _is_int(iid) or iid not in by_id:
            raise DataError(f"{where}: image id {iid!r} is not in the file's images")
        if not _is_int(cid) or cid not in cat_map:
            raise DataError(f"{where}: category id {cid!r} is not in the file's categories "
                            f"(ids {', '.join(str(c) for c in sorted(cat_map))})")
        crowd = ann.get("iscrowd", 0)
        if crowd not in (0, 1):
            raise DataError(f"{where}: iscrowd must be 0 or 1 (got {crowd!r})")
        if "segmentation" not in ann:
            raise DataError(f"{where}: no 'segmentation'")
        by_id[iid]["instances"].append(
            Instance(ann_id, cat_map[cid], bool(crowd), ann["segmentation"]))
    images, empty = [], []
    for iid, entry in by_id.items():
        img = entry["img"]
        if not entry["instances"]:
            empty.append(entry["ident"])
            continue
        images.append(CocoImage(iid, entry["ident"], img["file_name"], img["height"],
                                img["width"], tuple(entry["instances"])))
    return images, empty


def _string_counts(counts: bytes, where: str) -> list[int]:
    """The run lengths of a compressed RLE string (the COCO API's ``rleFrString``)."""
    out: list[int] = []
    p = 0
    while p < len(counts):
        x, k, more = 0, 0, True
        while more:
            if p >= len(counts):
                raise DataError(f"{where}: compressed RLE counts end inside a number")
            c = counts[p] - 48
            if not 0 <= c < 64:
                raise DataError(f"{where}: compressed RLE counts hold a character outside "
                                f"'0'..'o' ({chr(counts[p])!r})")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _check_counts(counts: Sequence[Any], height: int, width: int, where: str) -> None:
    """Run lengths must be non-negative integers summing to ``height * width``."""
    if any(not _is_int(c) or c < 0 for c in counts):
        raise DataError(f"{where}: RLE counts must be non-negative integers")
    if sum(counts) != height * width:
        raise DataError(f"{where}: RLE counts sum to {sum(counts)}, not height x width = "
                        f"{height} x {width} = {height * width}")


def decode_segmentation(segmentation: Any, height: int, width: int, where: str) -> np.ndarray:
    """Rasterise one annotation's ``segmentation`` on an image of ``height`` x ``width``.

    Accepts a polygon list (``[[x1, y1, x2, y2, ...], ...]``; parts of fewer than 3 points are
    skipped), an uncompressed RLE (``{"size": [h, w], "counts": [int, ...]}``) or a compressed
    RLE (``counts`` a string), as ``pycocotools.mask`` does.

    Returns:
        bool array (height, width), True inside the instance.

    Raises:
        DataError: any other shape, an RLE whose size differs from the image's or whose run
            lengths do not cover it exactly, odd or non-numeric polygon coordinates (``where``
            names the file, annotation and image).
    """
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        parts = []
        for poly in segmentation:
            if not isinstance(poly, list) or len(poly) % 2 or any(
                    isinstance(v, bool) or not isinstance(v, int | float) for v in poly):
                raise DataError(f"{where}: a polygon must be a flat list of x, y numbers "
                                f"(got {poly!r:.80})")
            if len(poly) >= 6:
                parts.append([float(v) for v in poly])
        if not parts:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(parts, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        size = segmentation["size"]
        if not isinstance(size, list | tuple) or list(size) != [height, width]:
            raise DataError(f"{where}: RLE size {size!r} differs from the image's "
                            f"[height, width] = [{height}, {width}]")
        counts = segmentation["counts"]
        if isinstance(counts, list):
            _check_counts(counts, height, width, where)
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height,
                                         width)
        elif isinstance(counts, str | bytes):
            raw = counts.encode("ascii", "replace") if isinstance(counts, str) else counts
            _check_counts(_string_counts(raw, where), height, width, where)
            rle = {"size": [height, width], "counts": raw}
        else:
            raise DataError(f"{where}: RLE counts must be a list of integers or a string")
    else:
        raise DataError(f"{where}: segmentation must be a polygon list or an RLE object with "
                        f"'size' and 'counts' (got {type(segmentation).__name__})")
    try:
        with warnings.catch_warnings():
            # pycocotools 2.0.11's Cython array under numpy 2: "__array__ implementation
            # doesn't accept a copy keyword" (harmless, once per process)
            warnings.filterwarnings("ignore", category=DeprecationWarning,
                                    message=r"__array__ implementation")
            mask = mask_utils.decode(rle)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{where}: cannot decode the segmentation: {exc}") from None
    return np.ascontiguousarray(mask, dtype=bool)


def rasterise(image: CocoImage, source: str) -> np.ndarray:
    """The semantic mask of one image.

    Crowd regions are set to 255 first; non-crowd instances are then drawn in descending
    rasterised area (ties in file order), so smaller objects are drawn last and win, and any
    non-crowd pixel overrides a crowd one.

    Returns:
        uint8 array (height, width): 0 background, 1..80 class index, 255 crowd (ignore).

    Raises:
        DataError: a segmentation that cannot be rasterised (naming ``source``, the annotation
            id and the image id).
    """
    mask = np.zeros((image.height, image.width), dtype=np.uint8)
    drawn = []
    for order, inst in enumerate(image.instances):
        where = f"{source}: annotation {inst.ann_id} (image id {image.coco_id})"
        pixels = decode_segmentation(inst.segmentation, image.height, image.width, where)
        if inst.iscrowd:
            mask[pixels] = IGNORE_INDEX
        else:
            drawn.append((-int(pixels.sum()), order, inst.class_index, pixels))
    for _, _, index, pixels in sorted(drawn, key=lambda d: d[:2]):
        mask[pixels] = index
    return mask


def image_labels(image: CocoImage, classes: Sequence[str]) -> list[str]:
    """Class names of every annotated category of ``image`` (crowd included), by class index."""
    return [classes[i] for i in sorted({inst.class_index for inst in image.instances})]


def write_mask(job: tuple[CocoImage, str, str]) -> None:
    """Rasterise ``image`` and save it as a P-mode PNG (VOC palette) at ``path``; job =
    ``(image, path, source)`` so that it can run in a worker process."""
    image, path, source = job
    m = Image.fromarray(rasterise(image, source), mode="P")
    m.putpalette(_PALETTE)
    m.save(path, format="PNG")


def coco14_records(root: Path, split: str, classes: Sequence[str], mask_dir: Path,
                   threads: int = 1,
                   progress: Callable[[Iterator[Any], int], Iterator[Any]] | None = None,
                   ) -> list[dict]:
    """Index a COCO 2014 split and write its masks to ``mask_dir/<id>.png``.

    Returns records ``{"id", "image", "mask", "labels"}`` (absolute paths, labels as class
    names) for the images with at least one annotation, in the annotation file's order; the
    images without any are logged in one warning (count and first ids) and left out.
    ``threads`` > 1 rasterises in that many processes; ``progress(iterator, total)`` may wrap
    the per-image results (e.g. tqdm).

    Raises:
        DataError: an unknown split, a missing or malformed annotation file, a bad category,
            annotation or segmentation, a missing image file, or no annotated image at all
            (each naming the file and the ids involved).
    """
    root = Path(root).resolve()
    source_path = annotation_path(root, split)
    data = load_annotations(source_path)
    source = str(source_path)
    cat_map = category_map(data["categories"], classes, source)
    images, empty = index_images(data, cat_map, source)
    del data
    total = len(images) + len(empty)
    if empty:
        log.warning("%s: %d of %d images have no annotation and are left out (no label to "
                    "learn from): %s", source, len(empty), total, format_ids(empty))
    if not images:
        raise DataError(f"{source}: none of its {total} images has an annotation")
    image_dir = root / split
    missing = [img for img in images if not (image_dir / img.file_name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"COCO image not found: {image_dir / missing[0].file_name} (image id "
                        f"{missing[0].coco_id} of {source}){more}")
    mask_dir = Path(mask_dir)
    mask_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(img, str(mask_dir / f"{img.ident}.png"), source) for img in images]
    wrap = progress if progress is not None else (lambda it, total: it)
    if threads <= 1 or len(jobs) < 64:
        for _ in wrap(map(write_mask, jobs), len(jobs)):
            pass
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ctx.Pool(threads) as pool:
            chunk = max(1, min(32, len(jobs) // (8 * threads)))
            for _ in wrap(pool.imap(write_mask, jobs, chunksize=chunk), len(jobs)):
                pass
    return [{"id": img.ident, "image": str(image_dir / img.file_name), "mask": path,
             "labels": image_labels(img, classes)} for img, path, _ in jobs]
