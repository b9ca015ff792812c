"""Tests for the coco14 adapter: a tiny COCO tree written here (40 x 30 images, the standard 80
categories with the non-contiguous ids 1, 18 and 90 in use), masks checked pixel by pixel."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from wsss.config import validate_config
from wsss.data.classes import COCO_CLASSES, IGNORE_INDEX
from wsss.data.coco14 import (
    COCO_CATEGORY_IDS,
    category_map,
    coco14_records,
    decode_segmentation,
)
from wsss.data.dataset_classes import classes_for
from wsss.errors import ConfigError, DataError
from wsss.stages import prepare_data

H, W = 30, 40
PERSON, DOG, BRUSH = 1, 18, 90  # COCO category ids
I_PERSON, I_DOG, I_BRUSH = 1, 17, 80  # their contiguous class indices
CATEGORIES = [{"id": cid, "name": name, "supercategory": "x"}
              for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES[1:], strict=True)]
TRAIN_A = "COCO_train2014_000000000009"
TRAIN_B = "COCO_train2014_000000000025"
TRAIN_EMPTY = "COCO_train2014_000000000030"
VAL_A = "COCO_val2014_000000000042"


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """bool (H, W), True on rows r0..r1 and columns c0..c1 (inclusive)."""
    m = np.zeros((H, W), dtype=bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


def _uncompressed(m: np.ndarray) -> dict:
    """COCO uncompressed RLE of a bool mask: column-major run lengths, starting with zeros."""
    flat = m.T.ravel()
    counts, value, run = [], False, 0
    for v in flat:
        if bool(v) == value:
            run += 1
        else:
            counts.append(run)
            value, run = bool(v), 1
    counts.append(run)
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": counts}


def _compressed(m: np.ndarray) -> dict:
    """COCO compressed RLE (string counts) of a bool mask, as pycocotools writes it."""
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


# train image A: polygon (dog), uncompressed RLE (person), compressed RLE (toothbrush), a crowd
# region (person) partly covered by a non-crowd dog, and two overlapping instances of different
# area listed small first (file order would let the large one win).
POLY = [[2, 2, 12, 2, 12, 10, 2, 10]]  # pycocotools covers rows 2..9, columns 2..11
RLE_PERSON = _box(12, 16, 20, 24)
RLE_BRUSH = _box(10, 12, 30, 33)
CROWD = _box(0, 5, 30, 39)
OVER_CROWD = _box(3, 8, 35, 39)
LARGE = _box(20, 29, 0, 15)
SMALL = _box(22, 25, 5, 8)


def _expected_a() -> np.ndarray:
    m = np.zeros((H, W), dtype=np.uint8)
    m[_box(2, 9, 2, 11)] = I_DOG
    m[RLE_PERSON] = I_PERSON
    m[RLE_BRUSH] = I_BRUSH
    m[CROWD] = IGNORE_INDEX
    m[OVER_CROWD] = I_DOG
    m[LARGE] = I_PERSON
    m[SMALL] = I_BRUSH
    return m


def _train_annotations() -> dict:
    images = [{"id": 9, "file_name": f"{TRAIN_A}.jpg", "height": H, "width": W},
              {"id": 25, "file_name": f"{TRAIN_B}.jpg", "height": H, "width": W},
              {"id": 30, "file_name": f"{TRAIN_EMPTY}.jpg", "height": H, "width": W}]
    anns = [
        {"id": 101, "image_id": 9, "category_id": DOG, "iscrowd": 0, "segmentation": POLY},
        {"id": 102, "image_id": 9, "category_id": PERSON, "iscrowd": 0,
         "segmentation": _uncompressed(RLE_PERSON)},
        {"id": 103, "image_id": 9, "category_id": BRUSH, "iscrowd": 0,
         "segmentation": _compressed(RLE_BRUSH)},
        {"id": 104, "image_id": 9, "category_id": PERSON, "iscrowd": 1,
         "segmentation": _uncompressed(CROWD)},
        {"id": 105, "image_id": 9, "category_id": DOG, "iscrowd": 0,
         "segmentation": _uncompressed(OVER_CROWD)},
        {"id": 106, "image_id": 9, "category_id": BRUSH, "iscrowd": 0,
         "segmentation": _compressed(SMALL)},
        {"id": 107, "image_id": 9, "category_id": PERSON, "iscrowd": 0,
         "segmentation": _uncompressed(LARGE)},
        # image B: a dog and a crowd-only toothbrush region (compressed RLE, as COCO's crowds)
        {"id": 201, "image_id": 25, "category_id": DOG, "iscrowd": 0,
         "segmentation": _uncompressed(_box(0, 29, 0, 9))},
        {"id": 202, "image_id": 25, "category_id": BRUSH, "iscrowd": 1,
         "segmentation": _compressed(_box(5, 9, 20, 29))},
    ]
    return {"info": {}, "images": images, "annotations": anns, "categories": CATEGORIES}


def _val_annotations() -> dict:
    return {"images": [{"id": 42, "file_name": f"{VAL_A}.jpg", "height": H, "width": W}],
            "annotations": [{"id": 301, "image_id": 42, "category_id": PERSON, "iscrowd": 0,
                             "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]}],
            "categories": CATEGORIES}


def _write_tree(root: Path, train: dict | None = None, val: dict | None = None) -> Path:
    """Write images and both annotation files under ``root``; returns ``root``."""
    train = _train_annotations() if train is None else train
    val = _val_annotations() if val is None else val
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, data in (("train2014", train), ("val2014", val)):
        (root / split).mkdir(exist_ok=True)
        for img in data["images"]:
            path = root / split / img["file_name"]
            if not path.exists():
                Image.new("RGB", (img["width"], img["height"]), (90, 120, 150)).save(path)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def _read_mask(path: str | Path) -> np.ndarray:
    with Image.open(path) as m:
        assert m.mode == "P"
        return np.asarray(m)


def _outputs(data: Path) -> dict[str, Path]:
    return {"train": data / "train.csv", "val": data / "val.csv", "classes": data / "classes.csv"}


def _params(root: Path, **coco: str) -> dict:
    return validate_config({"dataset": {"name": "coco14", "root": str(root),
                                        "coco14": coco}})["dataset"]


def test_category_map_contiguous_in_id_order() -> None:
    assert len(COCO_CATEGORY_IDS) == 80 and COCO_CATEGORY_IDS[-1] == 90
    cmap = category_map(CATEGORIES[::-1], COCO_CLASSES, "f.json")  # file order does not matter
    assert cmap[PERSON] == I_PERSON and cmap[DOG] == I_DOG and cmap[BRUSH] == I_BRUSH
    assert sorted(cmap.values()) == list(range(1, 81))
    assert COCO_CLASSES[cmap[DOG]] == "dog" and COCO_CLASSES[cmap[BRUSH]] == "toothbrush"
    tiny = [{"id": 90, "name": "c"}, {"id": 1, "name": "a"}, {"id": 18, "name": "b"}]
    assert category_map(tiny, ["background", "a", "b", "c"], "f.json") == {1: 1, 18: 2, 90: 3}
    assert classes_for({"name": "coco14"}) == list(COCO_CLASSES)


def test_category_map_errors() -> None:
    with pytest.raises(DataError, match=r"f\.json: category id 18 is 'b', but class 2 of the "
                                        r"coco14 class list is 'dog'"):
        category_map([{"id": 1, "name": "person"}, {"id": 18, "name": "b"}],
                     ["background", "person", "dog"], "f.json")
    with pytest.raises(DataError, match=r"f\.json: 1 categories, but the coco14 class list "
                                        r"has 80"):
        category_map([{"id": 1, "name": "person"}], COCO_CLASSES, "f.json")
    with pytest.raises(DataError, match=r"f\.json: category id 1 is listed twice"):
        category_map([{"id": 1, "name": "a"}, {"id": 1, "name": "a"}], ["background", "a", "a"],
                     "f.json")


def test_decode_formats() -> None:
    poly = decode_segmentation(POLY, H, W, "w")
    assert poly.dtype == bool and poly.shape == (H, W)
    assert np.array_equal(poly, _box(2, 9, 2, 11))
    assert np.array_equal(decode_segmentation(_uncompressed(RLE_PERSON), H, W, "w"), RLE_PERSON)
    assert np.array_equal(decode_segmentation(_compressed(RLE_BRUSH), H, W, "w"), RLE_BRUSH)
    # a degenerate polygon part (two points) covers nothing
    assert not decode_segmentation([[1, 1, 5, 5]], H, W, "w").any()


@pytest.mark.parametrize(("segmentation", "message"), [
    ({"size": [H, W + 1], "counts": [H * (W + 1)]}, r"RLE size \[30, 41\] differs"),
    ({"size": [H, W], "counts": [5, 3]}, r"RLE counts sum to 8, not height x width"),
    ({"size": [H, W], "counts": [H * W - 2, -1, 3]}, r"RLE counts must be non-negative"),
    ({"size": [H, W], "counts": "0d0"}, r"RLE counts sum to 20"),
    ({"size": [H, W], "counts": "\x7f"}, r"compressed RLE counts hold a character outside"),
    ([[1, 2, 3]], r"a polygon must be a flat list of x, y numbers"),
    ("polygon", r"segmentation must be a polygon list or an RLE object"),
])
def test_decode_errors(segmentation: object, message: str) -> None:
    with pytest.raises(DataError, match=r"^where: " + message):
        decode_segmentation(segmentation, H, W, "where")


def test_records_masks_and_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _write_tree(tmp_path / "coco")
    with caplog.at_level(logging.WARNING):
        recs = coco14_records(root, "train2014", COCO_CLASSES, tmp_path / "m")
    assert [r["id"] for r in recs] == [TRAIN_A, TRAIN_B]
    assert recs[0]["image"] == str((root / "train2014" / f"{TRAIN_A}.jpg").resolve())
    assert recs[0]["labels"] == ["person", "dog", "toothbrush"]
    assert recs[1]["labels"] == ["dog", "toothbrush"]  # crowd-only toothbrush counts
    a = _read_mask(recs[0]["mask"])
    assert a.shape == (H, W) and a.dtype == np.uint8
    expected = _expected_a()
    assert np.array_equal(a, expected), np.argwhere(a != expected)[:5]
    # spot checks of the rules behind the expectation
    assert a[0, 30] == IGNORE_INDEX and a[3, 35] == I_DOG  # crowd, non-crowd over crowd
    assert a[23, 6] == I_BRUSH and a[21, 6] == I_PERSON  # smaller instance wins the overlap
    assert a[2, 2] == I_DOG and a[9, 11] == I_DOG and a[10, 2] == 0 and a[2, 12] == 0
    b = _read_mask(recs[1]["mask"])
    exp_b = np.zeros((H, W), dtype=np.uint8)
    exp_b[_box(0, 29, 0, 9)] = I_DOG
    exp_b[_box(5, 9, 20, 29)] = IGNORE_INDEX
    assert np.array_equal(b, exp_b)
    assert not (tmp_path / "m" / f"{TRAIN_EMPTY}.png").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "instances_train2014.json: 1 of 3 images have no annotation and are left out" in \
        warnings[0] and TRAIN_EMPTY in warnings[0]


def test_records_in_processes_equal_in_process(tmp_path: Path) -> None:
    data = _train_annotations()
    base = data["annotations"][:7]
    for k in range(1, 70):  # 70 annotated images: enough for the process pool
        iid = 1000 + k
        data["images"].append({"id": iid, "file_name": f"COCO_train2014_{iid:012d}.jpg",
                               "height": H, "width": W})
        data["annotations"] += [{**a, "id": iid * 10 + j, "image_id": iid}
                                for j, a in enumerate(base)]
    root = _write_tree(tmp_path / "coco", train=data)
    one = coco14_records(root, "train2014", COCO_CLASSES, tmp_path / "m1", threads=1)
    two = coco14_records(root, "train2014", COCO_CLASSES, tmp_path / "m2", threads=2)
    assert [r["labels"] for r in one] == [r["labels"] for r in two]
    for r1, r2 in zip(one, two, strict=True):
        assert np.array_equal(_read_mask(r1["mask"]), _read_mask(r2["mask"]))
    assert np.array_equal(_read_mask(two[-1]["mask"]), _expected_a())


def test_prepare_data_stage(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "coco")
    out = _outputs(tmp_path / "run" / "data")
    prepare_data.run({}, out, _params(root), threads=1)
    with open(out["train"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [
        {"id": TRAIN_A, "image": str((root / "train2014" / f"{TRAIN_A}.jpg").resolve()),
         "mask": f"masks/train/{TRAIN_A}.png", "labels": "person;dog;toothbrush"},
        {"id": TRAIN_B, "image": str((root / "train2014" / f"{TRAIN_B}.jpg").resolve()),
         "mask": f"masks/train/{TRAIN_B}.png", "labels": "dog;toothbrush"},
    ]
    with open(out["val"], newline="") as fh:
        val = list(csv.DictReader(fh))
    assert [(r["id"], r["mask"], r["labels"]) for r in val] == [
        (VAL_A, f"masks/val/{VAL_A}.png", "person")]
    data = out["train"].parent
    assert np.array_equal(_read_mask(data / "masks/train" / f"{TRAIN_A}.png"), _expected_a())
    exp_val = np.zeros((H, W), dtype=np.uint8)
    exp_val[_box(0, 9, 0, 9)] = I_PERSON
    assert np.array_equal(_read_mask(data / "masks/val" / f"{VAL_A}.png"), exp_val)
    assert out["classes"].is_file()
    assert sorted(p.name for p in data.iterdir()) == ["classes.csv", "masks", "train.csv",
                                                      "val.csv"]
    # val_split train2014 (as voc12's val_split train): the same images, masks under masks/val
    prepare_data.run({}, out, _params(root, val_split="train2014"))
    with open(out["val"], newline="") as fh:
        assert [r["mask"] for r in csv.DictReader(fh)] == [
            f"masks/val/{TRAIN_A}.png", f"masks/val/{TRAIN_B}.png"]


def _bad(tmp_path: Path, train: dict | None = None, val: dict | None = None,
         root: Path | None = None) -> tuple[dict[str, Path], dict]:
    root = _write_tree(tmp_path / "coco", train, val) if root is None else root
    return _outputs(tmp_path / "run" / "data"), _params(root)


def _nothing_written(out: dict[str, Path]) -> None:
    data = out["train"].parent
    assert not any(p.exists() for p in out.values())
    assert not data.exists() or not any(data.iterdir()), list(data.iterdir())


def _with(data: dict, **ann: object) -> dict:
    """``data`` with one more annotation on image 9."""
    extra = {"id": 999, "image_id": 9, "category_id": PERSON, "iscrowd": 0,
             "segmentation": POLY, **ann}
    return {**data, "annotations": [*data["annotations"], extra]}


@pytest.mark.parametrize(("train", "message"), [
    (_with(_train_annotations(), category_id=12),
     r"instances_train2014\.json: annotation 999 \(image id 9\): category id 12 is not in the "
     r"file's categories"),
    (_with(_train_annotations(), image_id=77),
     r"instances_train2014\.json: annotation 999 \(image id 77\): image id 77 is not in the "
     r"file's images"),
    (_with(_train_annotations(), segmentation={"size": [H, W], "counts": [1, 2]}),
     r"instances_train2014\.json: annotation 999 \(image id 9\): RLE counts sum to 3"),
    (_with(_train_annotations(), iscrowd=2), r"annotation 999 \(image id 9\): iscrowd must be"),
    ({**_train_annotations(), "categories": [{**c, "name": "human"} if c["id"] == 1 else c
                                             for c in CATEGORIES]},
     r"instances_train2014\.json: category id 1 is 'human', but class 1 of the coco14 class "
     r"list is 'person'"),
    ({**_train_annotations(), "annotations": []},
     r"instances_train2014\.json: none of its 3 images has an annotation"),
    ({**_train_annotations(), "images": [*_train_annotations()["images"],
                                        {"id": 31, "file_name": f"{TRAIN_A}.png", "height": H,
                                         "width": W}]},
     r"image id 31: id 'COCO_train2014_000000000009' also names image id 9"),
])
def test_bad_annotations_stop_prepare_data(tmp_path: Path, train: dict, message: str) -> None:
    out, params = _bad(tmp_path, train=train)
    with pytest.raises(DataError, match=message):
        prepare_data.run({}, out, params)
    _nothing_written(out)


def test_bad_files_stop_prepare_data(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "coco")
    out, params = _bad(tmp_path, root=root)
    val_json = root / "annotations" / "instances_val2014.json"

    val_json.write_text("{not json")
    with pytest.raises(DataError, match=r"instances_val2014\.json: not a COCO annotation file "
                                        r"\(invalid JSON"):
        prepare_data.run({}, out, params)
    _nothing_written(out)  # the train masks rasterised before val failed are gone too

    val_json.write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match=r"instances_val2014\.json: not a COCO annotation file "
                                        r"\(expected a JSON object"):
        prepare_data.run({}, out, params)
    val_json.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match=r"instances_val2014\.json: not a COCO annotation file "
                                        r"\(no list 'categories'\)"):
        prepare_data.run({}, out, params)

    val_json.unlink()
    with pytest.raises(DataError, match=r"COCO annotation file not found: .*"
                                        r"annotations/instances_val2014\.json"):
        prepare_data.run({}, out, params)
    _nothing_written(out)

    _write_tree(root)
    (root / "train2014" / f"{TRAIN_B}.jpg").unlink()
    with pytest.raises(DataError, match=rf"COCO image not found: .*{TRAIN_B}\.jpg \(image id 25"):
        prepare_data.run({}, out, params)
    _nothing_written(out)

    # an image whose size differs from the annotation file's: caught by the validation
    Image.new("RGB", (W + 2, H), (0, 0, 0)).save(root / "train2014" / f"{TRAIN_B}.jpg")
    with pytest.raises(DataError, match=r"mask size 40x30 differs from image size 42x30"):
        prepare_data.run({}, out, params)
    _nothing_written(out)

    with pytest.raises(ConfigError, match=r"dataset\.root"):
        prepare_data.run({}, out, {**params, "root": None})


def test_failed_rerun_keeps_previous_outputs(tmp_path: Path) -> None:
    root = _write_tree(tmp_path / "coco")
    out, params = _bad(tmp_path, root=root)
    prepare_data.run({}, out, params)
    before = {p: p.read_bytes() for p in out["train"].parent.rglob("*") if p.is_file()}
    (root / "annotations" / "instances_val2014.json").write_text("{}")
    with pytest.raises(DataError, match=r"no list 'images'"):
        prepare_data.run({}, out, params)
    after = {p: p.read_bytes() for p in out["train"].parent.rglob("*") if p.is_file()}
    assert after == before
    assert not list(out["train"].parent.glob(".*.tmp"))


def test_schema_coco14_section() -> None:
    params = _params(Path("/nowhere"))
    assert params["coco14"] == {"train_split": "train2014", "val_split": "val2014"}
    with pytest.raises(ConfigError):
        validate_config({"dataset": {"name": "coco14", "coco14": {"train_split": "test2014"}}})


def test_prepare_data_code_hash_covers_the_rasteriser() -> None:
    from wsss.codehash import reachable

    defs, _ = reachable("wsss.stages.prepare_data")
    assert {("wsss.data.coco14", "rasterise"), ("wsss.data.coco14", "decode_segmentation"),
            ("wsss.data.coco14", "write_mask")} <= defs
