"""The HDF5 label readers under DataLoader workers: each worker opens the store itself.

train_irn (:class:`wsss.refine.ir_crops.IRCrops`) and train_segmentation
(:class:`wsss.segment.data.SegmentationCrops`) read their labels through one
:class:`wsss.io.h5store.H5Reader` that the parent has already opened (its checks read the store
before the loader forks). The reader keys its handle by pid, so a forked worker opens its own
instead of using the parent's; these tests iterate loaders with two workers over a small store
and check the values against the arrays written and against a loader without workers.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from wsss.data.table import Record
from wsss.errors import DataError
from wsss.io.h5store import H5Reader, H5Writer
from wsss.refine.ir_crops import IRCrops
from wsss.segment.data import SegmentationCrops
from wsss.train.data import epoch_loader

CLASSES = ["background", "cat", "dog"]
N_IMAGES = 12
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def store(tmp_path: Path) -> tuple[list[Record], dict[str, np.ndarray], Path]:
    """Images of several sizes, random label maps (0..2 and 255) as "label" and "mask_crf"."""
    rng = np.random.default_rng(0)
    records, maps = [], {}
    path = tmp_path / "labels.h5"
    with H5Writer(path, "ir_labels", CLASSES, {}) as w:
        for i in range(N_IMAGES):
            h, w_ = 20 + 2 * i, 30 - i
            ident = f"im{i:02d}"
            Image.fromarray(rng.integers(0, 255, (h, w_, 3), dtype=np.uint8)).save(
                tmp_path / f"{ident}.png")
            label = rng.choice(np.array([0, 1, 2, 255], np.uint8), size=(h, w_))
            maps[ident] = label
            w.add(ident, (h, w_), np.array([1 + i % 2]), {"label": label, "mask_crf": label},
                  dtypes={"label": np.uint8, "mask_crf": np.uint8})
            records.append(Record(ident, tmp_path / f"{ident}.png", None, (1 + i % 2,)))
    return records, maps, path


class _RawLabels(Dataset):
    """Item i: (the process's pid, the pid the reader's handle was opened in, label map i)."""

    def __init__(self, reader: H5Reader, ids: list[str]) -> None:
        self.reader, self.ids = reader, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[int, int, np.ndarray]:
        label = self.reader.get(self.ids[i], ["label"])["label"]
        return os.getpid(), self.reader._pid, label


def _opened_in_parent(path: Path, ids: list[str]) -> H5Reader:
    """A reader whose file the parent has opened, as the stages' checks leave it."""
    reader = H5Reader(path, kind="ir_labels", classes=CLASSES)
    assert all(i in reader for i in ids)
    assert reader._file is not None and reader._pid == os.getpid()
    return reader


def test_workers_open_their_own_handle_and_read_the_stored_values(store):
    records, maps, path = store
    ids = [r.id for r in records]
    reader = _opened_in_parent(path, ids)
    parent_file = reader._file
    loader = DataLoader(_RawLabels(reader, ids), batch_size=None, num_workers=2)
    seen = list(loader)
    assert len(seen) == N_IMAGES
    workers = {pid for pid, _, _ in seen}
    assert os.getpid() not in workers and len(workers) == 2
    for (pid, opened_in, label), ident in zip(seen, ids, strict=True):
        assert opened_in == pid  # the worker's own handle, not the parent's
        np.testing.assert_array_equal(np.asarray(label), maps[ident])
    # the parent's handle is untouched and still reads
    assert reader._file is parent_file and reader._pid == os.getpid()
    np.testing.assert_array_equal(reader.get(ids[-1], ["label"])["label"], maps[ids[-1]])


@pytest.mark.parametrize("kind", ["ir", "seg"])
def test_training_crops_with_two_workers_match_the_serial_loader(store, kind):
    records, maps, path = store
    reader = _opened_in_parent(path, [r.id for r in records])
    if kind == "ir":
        ds = IRCrops(records, reader, len(CLASSES), 16, (0.8, 1.2), MEAN, STD, seed=3)
    else:
        ds = SegmentationCrops(records, reader, "mask_crf", len(CLASSES), 16, (0.8, 1.2), MEAN,
                               STD, seed=3)

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(epoch_loader(ds, 4, seed=3, epoch=1, start_step=0, num_workers=workers))

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == N_IMAGES // 4
    for (x0, y0), (x2, y2) in zip(serial, parallel, strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    labels = torch.cat([y for _, y in parallel])
    values = set(torch.unique(labels).tolist())
    assert values <= {0, 1, 2, 255} and len(values - {255}) >= 2  # real labels, not all padding


def test_read_map_returns_what_get_returns(tmp_path: Path):
    path = tmp_path / "cams.h5"
    cam = np.random.default_rng(1).random((2, 5, 7)).astype(np.float16)
    label = np.arange(35, dtype=np.uint8).reshape(5, 7)
    with H5Writer(path, "cams", CLASSES, {}) as w:
        w.add("a", (5, 7), np.array([1, 2]), {"cam": cam, "label": label},
              dtypes={"label": np.uint8})
        w.add("empty", (5, 7), np.array([], np.int64), {"cam": np.zeros((0, 5, 7))})
    reader = H5Reader(path, kind="cams")
    for image_id, name in (("a", "cam"), ("a", "label"), ("empty", "cam")):
        expected = reader.get(image_id, [name])[name]
        got = reader.read_map(image_id, name)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    assert reader.read_map("a", "cam").dtype == np.float32
    assert reader.read_map("a", "label").flags.writeable
    with pytest.raises(DataError, match="no entry for image 'b'"):
        reader.read_map("b", "cam")
    with pytest.raises(DataError, match="no map 'mask' for image 'a'"):
        reader.read_map("a", "mask")


def _without_hdf5_reads(reader: H5Reader, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make read_map's HDF5 path fail, so that only the chunk index can answer."""

    def fail(image_id: str, name: str) -> np.ndarray:
        raise AssertionError(f"read {image_id}/{name} through HDF5")

    monkeypatch.setattr(reader, "_read_map_hdf5", fail)


def test_label_maps_are_read_through_the_chunk_index(store, monkeypatch):
    records, maps, path = store
    ids = [r.id for r in records]
    with h5py.File(path, "r") as f:
        rows = f["chunk_index/label"][()]
        assert sorted(f["chunk_index"]) == ["label", "mask_crf"]
        for row, ident in zip(rows, ids, strict=True):  # /ids order: offset, bytes, H, W
            info = f["images"][ident]["label"].id.get_chunk_info(0)
            assert tuple(row) == (info.byte_offset, info.size, *maps[ident].shape)
    reader = H5Reader(path, kind="ir_labels")
    _without_hdf5_reads(reader, monkeypatch)
    for ident in ids:
        got = reader.read_map(ident, "label")
        assert got.dtype == np.uint8 and got.flags.writeable
        np.testing.assert_array_equal(got, maps[ident])
    # and in forked workers (the positioned reads share the parent's handle)
    ds = SegmentationCrops(records, reader, "mask_crf", len(CLASSES), 16, (0.8, 1.2), MEAN, STD,
                           seed=3)
    assert len(list(epoch_loader(ds, 4, seed=3, epoch=1, start_step=0, num_workers=2))) == 3


def test_a_chunk_index_that_does_not_match_the_file_is_not_used(store, caplog):
    records, maps, path = store
    ids = [r.id for r in records]
    with h5py.File(path, "r+") as f:  # as if the store had been repacked: offsets moved
        f["chunk_index/label"][len(ids) // 2, 0] += 8
    reader = H5Reader(path, kind="ir_labels")
    with caplog.at_level("WARNING"):
        for ident in ids:
            np.testing.assert_array_equal(reader.read_map(ident, "label"), maps[ident])
    assert sum("/chunk_index/label does not match" in r.message for r in caplog.records) == 1
    reader.close()
    # an entry that the spot check does not see fails loudly, never returns other bytes
    with h5py.File(path, "r+") as f:
        f["chunk_index/mask_crf"][1, 0] += 8
    with pytest.raises(DataError, match=r"entry of map 'mask_crf' of image 'im01' does not hold"):
        H5Reader(path, kind="ir_labels").read_map("im01", "mask_crf")


def test_merged_shards_index_their_own_chunks(store, tmp_path, monkeypatch):
    from wsss.shards import merge_stores

    records, maps, path = store
    ids = [r.id for r in records]
    parts = []
    for k, part_ids in enumerate((ids[1::2], ids[::2])):  # the merged file reorders the chunks
        part = tmp_path / f"part{k}.h5"
        with H5Writer(part, "ir_labels", CLASSES, {}) as w:
            for ident in part_ids:
                w.add(ident, maps[ident].shape, np.array([1]), {"label": maps[ident]},
                      dtypes={"label": np.uint8})
        parts.append(part)
    merge_stores(parts, tmp_path / "merged.h5", ids)
    reader = H5Reader(tmp_path / "merged.h5", kind="ir_labels")
    _without_hdf5_reads(reader, monkeypatch)
    for ident in ids:
        np.testing.assert_array_equal(reader.read_map(ident, "label"), maps[ident])


def test_a_store_replaced_under_a_reader_is_not_read_with_the_old_index(store, tmp_path):
    records, maps, path = store
    ids = [r.id for r in records]

    def write(order: list[str], target: Path) -> None:
        with H5Writer(target, "ir_labels", CLASSES, {}) as w:
            for ident in order:
                w.add(ident, maps[ident].shape, np.array([1]), {"label": maps[ident]},
                      dtypes={"label": np.uint8})

    reader = H5Reader(path, kind="ir_labels")
    np.testing.assert_array_equal(reader.read_map(ids[0], "label"), maps[ids[0]])
    reader.close()
    write(ids[::-1], tmp_path / "new.h5")  # the rule reran: same ids, other places
    os.replace(tmp_path / "new.h5", path)
    for ident in ids:  # a closed reader reloads the index of the file it reopens
        np.testing.assert_array_equal(reader.read_map(ident, "label"), maps[ident])
    reader.close()
    # replaced between HDF5's open and the first positioned read: named, never other bytes
    reader = H5Reader(path, kind="ir_labels")
    assert ids[0] in reader  # HDF5 holds the file from here
    write(ids, tmp_path / "new.h5")
    os.replace(tmp_path / "new.h5", path)
    with pytest.raises(DataError, match="was replaced while it was being read"):
        reader.read_map(ids[0], "label")


def test_every_label_map_is_indexed_whichever_image_has_it(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    maps = {f"i{k}": rng.integers(0, 3, (4 + k, 5), dtype=np.uint8) for k in range(4)}
    with H5Writer(tmp_path / "s.h5", "masks", CLASSES, {}) as w:
        for k, (ident, label) in enumerate(maps.items()):
            extra = {} if k == 0 else {"mask_crf": label}  # the first image lacks one map
            empty = np.zeros((0, 5), np.uint8) if k == 1 else label  # an empty map
            w.add(ident, label.shape, np.array([1]), {"mask": empty, **extra},
                  dtypes={"mask": np.uint8, "mask_crf": np.uint8})
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["chunk_index/mask_crf"][0, 0] == -1 and f["chunk_index/mask"][1, 0] == -1
    reader = H5Reader(tmp_path / "s.h5", kind="masks")
    for ident in list(maps)[1:]:
        np.testing.assert_array_equal(reader.read_map(ident, "mask_crf"), maps[ident])
    assert reader.read_map("i1", "mask").shape == (0, 5)  # through HDF5
    _without_hdf5_reads(reader, monkeypatch)
    for ident in ("i0", "i2", "i3"):
        np.testing.assert_array_equal(reader.read_map(ident, "mask"), maps[ident])
