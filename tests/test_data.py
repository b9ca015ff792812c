"""Tests for the data layer: demo generator, split CSVs, validation, VOC/folder adapters, stage."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsss.config import validate_config
from wsss.data import prepare
from wsss.data.classes import DEMO_CLASSES, IGNORE_INDEX, VOC_CLASSES, voc_palette
from wsss.data.coverage import read_class_table
from wsss.data.dataset_classes import classes_for
from wsss.data.demo import HABITATS, HOME_HABITAT, generate_demo, plan_demo_image
from wsss.data.folder import folder_records
from wsss.data.table import (
    Record,
    check_id,
    read_split_csv,
    records_from_rows,
    validate_records,
    write_split_csv,
)
from wsss.data.voc12 import voc12_records
from wsss.errors import ConfigError, DataError
from wsss.stages import prepare_data

SIZE, JITTER = 64, 16
DEMO = {"n_train": 24, "n_val": 8, "size": SIZE, "seed": 3, "p_ctx": 0.3, "size_jitter": JITTER}


def _files(root: Path) -> dict[str, bytes]:
    """All files under ``root`` keyed by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[dict]]]:
    """One small demo generation shared by the read-only tests."""
    root = tmp_path_factory.mktemp("demo")
    return root, generate_demo(root, **DEMO)


def _outputs(data: Path) -> dict[str, Path]:
    """prepare_data's three outputs under ``data``."""
    return {"train": data / "train.csv", "val": data / "val.csv", "classes": data / "classes.csv"}


def _save_mask(path: Path, mask: np.ndarray) -> None:
    """Write a P-mode label PNG."""
    im = Image.fromarray(mask.astype(np.uint8), mode="P")
    im.putpalette(voc_palette(256).ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _save_image(path: Path, h: int, w: int) -> None:
    """Write a small random RGB JPEG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, quality=90)


# ---------------------------------------------------------------- demo generator


def test_demo_records_and_files(demo: tuple[Path, dict[str, list[dict]]]) -> None:
    root, recs = demo
    assert [len(recs["train"]), len(recs["val"])] == [DEMO["n_train"], DEMO["n_val"]]
    ids = [r["id"] for s in recs.values() for r in s]
    assert len(set(ids)) == len(ids)
    for split, rows in recs.items():
        for r in rows:
            assert set(r) == {"id", "image", "mask", "labels"}
            assert r["image"] == f"images/{split}/{r['id']}.jpg"
            assert r["mask"] == f"masks/{split}/{r['id']}.png"
            assert (root / r["image"]).is_file() and (root / r["mask"]).is_file()
            assert r["labels"] and all(n in DEMO_CLASSES[1:] for n in r["labels"])


def test_demo_masks_match_labels(demo: tuple[Path, dict[str, list[dict]]]) -> None:
    root, recs = demo
    shapes = set()
    for r in recs["train"] + recs["val"]:
        img = Image.open(root / r["image"])
        mask_im = Image.open(root / r["mask"])
        assert img.mode == "RGB" and mask_im.mode == "P"
        assert img.size == mask_im.size
        w, h = img.size
        assert SIZE <= h <= SIZE + JITTER and SIZE <= w <= SIZE + JITTER
        shapes.add((h, w))
        mask = np.asarray(mask_im)
        values = set(np.unique(mask).tolist())
        assert values <= set(range(len(DEMO_CLASSES))) | {IGNORE_INDEX}
        present = {DEMO_CLASSES[v] for v in values if 0 < v < IGNORE_INDEX}
        assert present == set(r["labels"])
    assert any(h != w for h, w in shapes)


def test_demo_border_band(demo: tuple[Path, dict[str, list[dict]]]) -> None:
    root, recs = demo
    for r in recs["train"]:
        m = np.asarray(Image.open(root / r["mask"])).astype(int)
        cls = (m > 0) & (m != IGNORE_INDEX)
        # 255 pixels touch class pixels ...
        near = np.zeros_like(cls)
        near[1:] |= cls[:-1]
        near[:-1] |= cls[1:]
        near[:, 1:] |= cls[:, :-1]
        near[:, :-1] |= cls[:, 1:]
        assert (near & (m == IGNORE_INDEX)).any()
        # ... and separate them from background and from other classes everywhere.
        for a, b in ((m[1:], m[:-1]), (m[:, 1:], m[:, :-1])):
            both = (a != IGNORE_INDEX) & (b != IGNORE_INDEX)
            assert not (both & (a != b)).any()


def test_demo_deterministic(tmp_path: Path, demo: tuple[Path, dict[str, list[dict]]]) -> None:
    root, recs = demo
    again = generate_demo(tmp_path / "a", **DEMO)
    assert again == recs
    assert _files(tmp_path / "a") == _files(root)
    # independent of the split sizes
    fewer = generate_demo(tmp_path / "b", **{**DEMO, "n_train": 5, "n_val": 2})
    assert fewer["train"] == recs["train"][:5]
    b_files = _files(tmp_path / "b")
    assert all(b_files[k] == v for k, v in _files(root).items() if k in b_files)
    # a different seed gives different images
    other = generate_demo(tmp_path / "c", **{**DEMO, "seed": 4})
    assert other != recs or _files(tmp_path / "c") != _files(root)
    assert (tmp_path / "c/images/train/train_00000.jpg").read_bytes() != (
        root / "images/train/train_00000.jpg").read_bytes()


def test_demo_workers_identical(tmp_path: Path) -> None:
    cfg = {**DEMO, "n_train": 60, "n_val": 10}
    one = generate_demo(tmp_path / "one", **cfg, workers=1)
    two = generate_demo(tmp_path / "two", **cfg, workers=2)
    assert one == two
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_demo_context_probability() -> None:
    def home_match(split: str, i: int, p_ctx: float) -> tuple[bool, bool, str]:
        plan = plan_demo_image(5, split, i, SIZE, p_ctx, JITTER)
        homes = {HOME_HABITAT[DEMO_CLASSES[c]] for c in plan.labels}
        return plan.habitat in homes, plan.context, plan.habitat

    always = [home_match("train", i, 1.0) for i in range(40)]
    assert all(match and ctx for match, ctx, _ in always)
    never = [home_match("val", i, 0.0) for i in range(60)]
    assert not any(ctx for _, ctx, _ in never)
    assert {h for _, _, h in never} == set(HABITATS)
    assert sum(m for m, _, _ in never) < 60  # random habitats often miss the home


def test_demo_plan_matches_written_mask(demo: tuple[Path, dict[str, list[dict]]]) -> None:
    root, recs = demo
    for i in range(4):
        plan = plan_demo_image(DEMO["seed"], "val", i, SIZE, DEMO["p_ctx"], JITTER)
        mask = np.asarray(Image.open(root / recs["val"][i]["mask"]))
        np.testing.assert_array_equal(mask, plan.mask)


def test_demo_silhouette_pools_disjoint() -> None:
    from wsss.data.demo import _cached_assets

    pools = _cached_assets(SIZE, JITTER).pools
    for c in range(1, len(DEMO_CLASSES)):
        train, val = set(pools["train", c].tolist()), set(pools["val", c].tolist())
        assert train and val and not train & val


def test_demo_fill_photos_not_backgrounds() -> None:
    from wsss.data.demo import FILL_PHOTOS

    backgrounds = {p for names in HABITATS.values() for p in names}
    assert not backgrounds & set(FILL_PHOTOS.values())
    assert set(HOME_HABITAT) == set(DEMO_CLASSES[1:]) == set(FILL_PHOTOS)


def test_demo_bad_settings(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="p_ctx"):
        generate_demo(tmp_path, **{**DEMO, "p_ctx": 1.5})


# ---------------------------------------------------------------- split CSV


def test_split_csv_roundtrip(tmp_path: Path) -> None:
    _save_image(tmp_path / "imgs/a.jpg", 20, 30)
    rows = [{"id": "a", "image": "imgs/a.jpg", "mask": "", "labels": ["dog", "cat"]},
            {"id": "b", "image": tmp_path / "imgs/a.jpg", "mask": None, "labels": []}]
    write_split_csv(tmp_path / "s.csv", rows)
    recs = read_split_csv(tmp_path / "s.csv", DEMO_CLASSES)
    assert recs[0] == Record("a", (tmp_path / "imgs/a.jpg").resolve(), None, (2, 4))
    assert recs[1].labels == () and recs[1].image.is_absolute()
    assert not list(tmp_path.glob(".*tmp"))


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_split_csv_errors(tmp_path: Path) -> None:
    p = _csv(tmp_path / "bad_class.csv",
             "id,image,mask,labels\na,a.jpg,,cat\nb,b.jpg,,cat;zebra\n")
    with pytest.raises(DataError, match=r"bad_class\.csv, line 3: unknown class 'zebra'"):
        read_split_csv(p, DEMO_CLASSES)
    p = _csv(tmp_path / "dup.csv", "id,image,mask,labels\na,a.jpg,,cat\na,b.jpg,,dog\n")
    with pytest.raises(DataError, match=r"dup\.csv, line 3: duplicate id 'a'"):
        read_split_csv(p, DEMO_CLASSES)
    p = _csv(tmp_path / "empty.csv", "id,image,mask,labels\n")
    with pytest.raises(DataError, match=r"empty\.csv.*empty split"):
        read_split_csv(p, DEMO_CLASSES)
    p = _csv(tmp_path / "cols.csv", "id,image,labels\na,a.jpg,cat\n")
    with pytest.raises(DataError, match=r"cols\.csv, line 1: missing column\(s\) mask"):
        read_split_csv(p, DEMO_CLASSES)
    with pytest.raises(DataError, match="not found"):
        read_split_csv(tmp_path / "nope.csv", DEMO_CLASSES)
    p = _csv(tmp_path / "path.csv", "id,image,mask,labels\na,a.jpg,,cat\nsub/b,b.jpg,,dog\n")
    with pytest.raises(DataError, match=r"path\.csv, line 3: id 'sub/b' contains a path sep"):
        read_split_csv(p, DEMO_CLASSES)


@pytest.mark.parametrize("ident, problem", [
    ("sub/x", "contains a path separator"), ("sub\\x", "contains a path separator"),
    ("../x", "contains a path separator"), (".", "is a relative directory name"),
    ("..", "is a relative directory name"), (".hidden", "starts with '.'"),
    ("a\tb", "contains a control character"), ("a\x00b", "contains a control character"),
    ("a\nb", "contains a control character"), ("a\x7fb", "contains a control character"),
    ("", "is empty")])
def test_check_id_refuses(ident: str, problem: str) -> None:
    with pytest.raises(DataError) as err:
        check_id(ident, "t.csv, line 7")
    assert str(err.value).startswith(f"t.csv, line 7: id {ident!r} {problem}")
    assert "; ids name files and HDF5 groups, so an id must be a plain name" in str(err.value)


@pytest.mark.parametrize("ident", ["2007_000032", "a.b", "x..y", "a b", "köln-1", "a~b", "A"])
def test_check_id_accepts(ident: str) -> None:
    check_id(ident, "t.csv, line 2")


def test_records_from_rows_checks_ids(tmp_path: Path) -> None:
    """Every data set's rows pass the id rule (the demo's, VOC's and the folder's alike)."""
    rows = [{"id": "a", "image": "a.jpg", "labels": []}, {"id": ".b", "image": "b.jpg"}]
    with pytest.raises(DataError, match=r"voc12 train, line 3: id '\.b' starts with"):
        records_from_rows(rows, DEMO_CLASSES, tmp_path, "voc12 train")


def test_validate_records(tmp_path: Path) -> None:
    _save_image(tmp_path / "ok.jpg", 20, 30)
    _save_mask(tmp_path / "ok.png", np.pad(np.full((18, 28), 2), 1, constant_values=255))
    good = Record("ok", tmp_path / "ok.jpg", tmp_path / "ok.png", (2,))
    validate_records([good] * 3, DEMO_CLASSES, threads=2)

    missing = Record("m", tmp_path / "missing.jpg", None, (1,))
    with pytest.raises(DataError, match=r"image not found: .*missing\.jpg"):
        validate_records([good, missing], DEMO_CLASSES)

    (tmp_path / "garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 10)
    with pytest.raises(DataError, match=r"corrupt image: .*garbage\.jpg"):
        validate_records([Record("g", tmp_path / "garbage.jpg", None, ())], DEMO_CLASSES)

    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"corrupt image: .*cut\.jpg"):
        validate_records([Record("c", tmp_path / "cut.jpg", None, ())], DEMO_CLASSES)

    _save_mask(tmp_path / "small.png", np.zeros((10, 10)))
    with pytest.raises(DataError, match=r"mask size 10x10 differs .*small\.png"):
        validate_records([Record("s", tmp_path / "ok.jpg", tmp_path / "small.png", ())],
                         DEMO_CLASSES)

    _save_mask(tmp_path / "values.png", np.full((20, 30), 9))
    bad_values = Record("v", tmp_path / "ok.jpg", tmp_path / "values.png", ())
    with pytest.raises(DataError, match=r"mask values \[9\] .*values\.png"):
        validate_records([bad_values], DEMO_CLASSES)
    validate_records([bad_values], DEMO_CLASSES, check_masks=False)

    with pytest.raises(DataError, match=r"mask not found: .*gone\.png"):
        validate_records([Record("n", tmp_path / "ok.jpg", tmp_path / "gone.png", ())],
                         DEMO_CLASSES)


# ---------------------------------------------------------------- folder and VOC adapters


def test_folder_records(tmp_path: Path) -> None:
    classes = ["background", "apple", "pear"]
    _save_image(tmp_path / "img/x1.jpg", 12, 16)
    _save_image(tmp_path / "img/x2.png", 12, 16)
    _save_mask(tmp_path / "masks/x1.png", np.ones((12, 16)))
    labels = _csv(tmp_path / "train.csv", "id,labels\nx1,apple\nx2,apple;pear\n")
    recs = folder_records(tmp_path / "img", labels, classes, tmp_path / "masks")
    assert [r["labels"] for r in recs] == [["apple"], ["apple", "pear"]]
    assert recs[0]["mask"].endswith("x1.png") and recs[1]["mask"] == ""
    assert recs[1]["image"].endswith("x2.png")

    bad = _csv(tmp_path / "bad.csv", "id,labels\nx1,apple\nx2,banana\n")
    with pytest.raises(DataError, match=r"bad\.csv, line 3: unknown class 'banana'"):
        folder_records(tmp_path / "img", bad, classes, None)
    noimg = _csv(tmp_path / "noimg.csv", "id,labels\nx3,apple\n")
    with pytest.raises(DataError, match=r"noimg\.csv, line 2: no image .*x3"):
        folder_records(tmp_path / "img", noimg, classes, None)
    _save_image(tmp_path / "img/sub/x4.jpg", 12, 16)  # exists, but its id is a path
    sub = _csv(tmp_path / "sub.csv", "id,labels\nx1,apple\nsub/x4,apple\n")
    with pytest.raises(DataError, match=r"sub\.csv, line 3: id 'sub/x4' contains a path "
                                        r"separator \(.*'sub_x4'\)"):
        folder_records(tmp_path / "img", sub, classes, None)


def _fake_voc(root: Path) -> None:
    """A tiny VOC tree: 4 images, SegmentationClass for 3, SegmentationClassAug for all."""
    sets = root / "ImageSets/Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000003\n")
    masks = {
        "2007_000001": [0, 8, 12],  # cat, dog
        "2007_000002": [0, 15],  # person
        "2007_000003": [0, 1],  # aeroplane
        "2007_000004": [0, 13],  # horse (only in SBD)
    }
    for ident, values in masks.items():
        _save_image(root / "JPEGImages" / f"{ident}.jpg", 8, 12)
        m = np.zeros((8, 12), np.uint8)
        for k, v in enumerate(values):
            m[:, 3 * k:3 * k + 3] = v
        m[0] = 255
        _save_mask(root / "SegmentationClassAug" / f"{ident}.png", m)
        if ident != "2007_000004":
            _save_mask(root / "SegmentationClass" / f"{ident}.png", m)


def test_voc12_train_aug_mask_from_segmentation_class_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A train_aug image without its SBD mask takes the official one, and the log says so."""
    _fake_voc(tmp_path)
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text(
        "2007_000001\n2007_000002\n2007_000004\n")
    (tmp_path / "SegmentationClassAug/2007_000001.png").unlink()
    with caplog.at_level("WARNING"):
        aug = voc12_records(tmp_path, "train_aug")
    assert [Path(r["mask"]).parent.name for r in aug] == \
        ["SegmentationClass", "SegmentationClassAug", "SegmentationClassAug"]
    assert aug[0]["labels"] == ["cat", "dog"]
    assert "1 image(s) have no mask in" in caplog.text and "2007_000001" in caplog.text


def test_voc12_records(tmp_path: Path) -> None:
    _fake_voc(tmp_path)
    train = voc12_records(tmp_path, "train")
    assert [r["id"] for r in train] == ["2007_000001", "2007_000002"]
    assert train[0]["labels"] == ["cat", "dog"] and train[1]["labels"] == ["person"]
    assert Path(train[0]["mask"]).parent.name == "SegmentationClass"
    assert Path(train[0]["image"]).is_absolute()
    val = voc12_records(tmp_path, "val", threads=2)
    assert [r["labels"] for r in val] == [["aeroplane"]]
    aug = voc12_records(tmp_path, "train_aug")
    assert [r["id"] for r in aug] == ["2007_000001", "2007_000002", "2007_000004"]
    assert aug[2]["labels"] == ["horse"]
    assert Path(aug[0]["mask"]).parent.name == "SegmentationClassAug"
    (tmp_path / "ImageSets/Segmentation/train_aug.txt").write_text(
        "/JPEGImages/2007_000002.jpg /SegmentationClassAug/2007_000002.png\n")
    assert [r["id"] for r in voc12_records(tmp_path, "train_aug")] == ["2007_000002"]
    (tmp_path / "JPEGImages/2007_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"VOC image not found: .*2007_000002\.jpg"):
        voc12_records(tmp_path, "train")
    with pytest.raises(DataError, match="unknown VOC split 'test'"):
        voc12_records(tmp_path, "test")
    (tmp_path / "ImageSets/Segmentation/val.txt").unlink()
    with pytest.raises(DataError, match=r"VOC split list not found: .*val\.txt"):
        voc12_records(tmp_path, "val")


# ---------------------------------------------------------------- prepare_data stage


def _dataset(**section: object) -> dict:
    """A validated ``dataset`` section (schema defaults for what is not given)."""
    return validate_config({"dataset": section})["dataset"]


def test_classes_for() -> None:
    assert classes_for({"name": "demo"}) == list(DEMO_CLASSES)
    assert classes_for({"name": "voc12"}) == list(VOC_CLASSES)
    assert classes_for({"name": "folder", "classes": ["background", "a"]}) == [
        "background", "a"]
    with pytest.raises(ConfigError, match=r"dataset\.classes"):
        classes_for({"name": "folder", "classes": None})
    with pytest.raises(ConfigError, match=r"dataset\.classes"):
        classes_for({"name": "folder", "classes": ["a", "background"]})


def test_prepare_demo(tmp_path: Path) -> None:
    out = _outputs(tmp_path / "data")
    prepare_data.run({}, out, _dataset(name="demo", demo=DEMO), threads=1)
    train = read_split_csv(out["train"], DEMO_CLASSES)
    val = read_split_csv(out["val"], DEMO_CLASSES)
    assert len(train) == DEMO["n_train"] and len(val) == DEMO["n_val"]
    assert train[0].image == (tmp_path / "data/images/train/train_00000.jpg").resolve()
    validate_records(train + val, DEMO_CLASSES)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [
        "classes.csv", "images", "masks", "train.csv", "val.csv"]
    stats = read_class_table(out["classes"])
    assert list(stats["class"]) == list(DEMO_CLASSES[1:])
    for split, recs in (("train", train), ("val", val)):
        counts = [sum(c in r.labels for r in recs) for c in range(1, len(DEMO_CLASSES))]
        assert list(stats[f"{split}_images"]) == counts  # every demo image has a mask:
        assert list(stats[f"{split}_masks"]) == counts
    assert (stats["problem"] == "").all()


def test_prepare_demo_failure_leaves_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise DataError("corrupt image: x.jpg")

    monkeypatch.setattr(prepare, "validate_records", fail)
    out = _outputs(tmp_path / "data")
    with pytest.raises(DataError, match="corrupt"):
        prepare_data.run({}, out, _dataset(name="demo", demo=DEMO), threads=1)
    assert list((tmp_path / "data").iterdir()) == []


def test_prepare_folder(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    classes = ["background", "apple", "pear"]
    _save_image(tmp_path / "ds/img/x1.jpg", 12, 16)
    _save_image(tmp_path / "ds/img/x2.jpg", 12, 16)
    _csv(tmp_path / "ds/train.csv", "id,labels\nx1,apple\n")
    _csv(tmp_path / "ds/val.csv", "id,labels\nx2,pear\n")
    params = _dataset(name="folder", root=str(tmp_path / "ds"), classes=classes,
                      folder={"images": "img", "masks": None, "train_labels": "train.csv",
                              "val_labels": "val.csv"})
    out = _outputs(tmp_path / "data")
    prepare_data.run({}, out, params)
    assert read_split_csv(out["val"], classes)[0].labels == (2,)
    # apple is on the only train image, pear on none: both warned about and in classes.csv
    stats = read_class_table(out["classes"]).set_index("class")
    assert stats.loc["apple"].to_dict() == {"train_images": 1, "val_images": 0, "train_masks": 0,
                                            "val_masks": 0, "problem": "no_negatives"}
    assert stats.loc["pear", "problem"] == "no_positives" and stats.loc["pear", "val_images"] == 1
    assert "class 'apple' is on every one of the 1 train images: no negative" in caplog.text
    assert "class 'pear' is on none of the train images: no positive" in caplog.text

    out2 = _outputs(tmp_path / "d2")
    (tmp_path / "ds/img/x2.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"corrupt image: .*x2\.jpg"):
        prepare_data.run({}, out2, params)
    assert not any(p.exists() for p in out2.values())


def test_prepare_voc12(tmp_path: Path) -> None:
    _fake_voc(tmp_path / "VOC2012")
    out = _outputs(tmp_path / "data")
    params = validate_config({"dataset": {
        "name": "voc12", "root": str(tmp_path / "VOC2012"),
        "voc12": {"train_split": "train_aug", "val_split": "val"}}})["dataset"]
    prepare_data.run({}, out, params, threads=2)
    train = read_split_csv(out["train"], VOC_CLASSES)
    # the papers' protocol: train_aug trains, the 1,464 VOC train images (official masks) score
    assert [r.id for r in train] == ["2007_000001", "2007_000002", "2007_000004"]
    assert [r.mask.parent.name if r.mask else None for r in train] == [
        "SegmentationClass", "SegmentationClass", None]
    assert train[2].labels == (VOC_CLASSES.index("horse"),)  # labels still from the SBD mask
    params["voc12"]["scored_train"] = "all"
    prepare_data.run({}, out, params, threads=2)
    train = read_split_csv(out["train"], VOC_CLASSES)
    assert [r.mask.parent.name for r in train] == ["SegmentationClassAug"] * 3
    with pytest.raises(ConfigError, match=r"dataset\.root"):
        prepare_data.run({}, out, _dataset(name="voc12", root=None))


def test_prepare_voc12_train_aug_without_sbd_masks(tmp_path: Path) -> None:
    """train_aug on a VOC root without SegmentationClassAug (SBD not unpacked there), with and
    without an ImageSets train_aug list: one line naming the missing folder (or a mask in it),
    exit 2 from the command line, nothing written."""
    root = tmp_path / "VOC2012"
    _fake_voc(root)
    shutil.rmtree(root / "SegmentationClassAug")
    aug = str(root / "SegmentationClassAug")
    out = _outputs(tmp_path / "data")
    params = validate_config({"dataset": {
        "name": "voc12", "root": str(root),
        "voc12": {"train_split": "train_aug", "val_split": "val"}}})["dataset"]
    cmd = [sys.executable, "-m", "wsss", "prepare_data", "--params", json.dumps(params)]
    cmd += [a for k, v in out.items() for a in ("--output", f"{k}={v}")]
    for listed in (False, True):
        if listed:  # the release's list, naming an SBD-only image
            (root / "ImageSets/Segmentation/train_aug.txt").write_text(
                "2007_000001\n2007_000004\n")
        with pytest.raises(DataError) as err:
            prepare_data.run({}, out, params)
        assert aug in str(err.value) and "\n" not in str(err.value), str(err.value)
        assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert aug in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not any(p.exists() for p in out.values())
