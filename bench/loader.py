"""Loader throughput: the training stages' HDF5 label readers vs IRN-style per-image PNGs.

IRN writes one PNG per image for the IR labels (``ir_label_out_dir/<id>.png``) and the pseudo
masks (``sem_seg_out_dir/<id>.png``); wsss keeps one HDF5 store per split
(``ir_labels/<split>.h5``, ``masks/<split>.h5``) read through :class:`wsss.io.h5store.H5Reader`,
which opens the file lazily in each process (each DataLoader worker opens its own handle). This
writes the same label maps as PNGs and times full passes of the training loaders over both:

* ``labels``: the label maps alone (``H5Reader.read_map`` vs ``PIL.Image.open`` of the PNG), the
  reader's own cost;
* ``crops``: the stages' actual data sets, :class:`wsss.refine.ir_crops.IRCrops` (train_irn) and
  :class:`wsss.segment.data.SegmentationCrops` (train_segmentation), once over the store and once
  with a reader of the PNGs in its place: the same image reads, rescale, flip, crop and stride-4
  reduction, so the rows differ only in where the labels come from.

Each pass is one epoch of :func:`wsss.train.data.epoch_loader` (shuffled, ``drop_last``, a fresh
loader per epoch as the stages make it, worker start-up included) with the batch size, crop and
rescale of the config (``irn.*`` / ``segmentation.*``); the two readers take turns, the figure is
the median of ``--passes`` passes, and the range of the per-pass ratios shows the noise; the CPU
seconds of a pass (this process and its reaped workers) give a second ratio that other load on
the machine disturbs less. Ratios, not absolute times, are what carries between machines;
HDF5 / PNG >= 1.0 means the store reads no slower.

    python bench/loader.py [RUN_DIR] [--images N] [--workers 0 2] [--passes 3]
                           [--configfile config.yaml] [--synthetic]

The crop data sets read their map with ``H5Reader.read_map``: a positioned read of the map's
deflated chunk at the offset that the store's ``/chunk_index`` lists, and an inflate. Before the
index it was one HDF5 path lookup per image (HDF5 / PNG 0.95-1.16 for the labels alone, 0.85-1.08
for the crops, idle 2-core CPU) and before that ``H5Reader.get(id, [key])``, which also opened
the image's group, its ``size`` attribute and its ``keys`` dataset: ~0.5 ms of HDF5 object opens
per image against ~0.2 ms for a PNG decode, HDF5 / PNG 0.22-0.28 for the labels alone and
0.56-0.90 for the crops on the demo (2-core CPU, loaded). A store written before the index is
timed as a copy of its maps written by the current :class:`H5Writer` into a temporary directory
(the run directory is only read).

``RUN_DIR`` (default ``results/demo``) is a finished run with ``data/train.csv``,
``ir_labels/train.h5`` and ``masks/train.h5``; it is only read. Without them, or with
``--synthetic``, a store of ``--images`` random 128-px images is built in a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.config import load_workflow_config  # noqa: E402
from wsss.data.table import Record, read_split_csv  # noqa: E402
from wsss.io.h5store import H5Reader, H5Writer  # noqa: E402
from wsss.refine.ir_crops import IRCrops  # noqa: E402
from wsss.segment.data import SegmentationCrops  # noqa: E402
from wsss.train.data import epoch_loader  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # input_stats' ImageNet default
SEED = 0


class PngLabels:
    """IRN-style label maps, ``<dir>/<id>.png``, behind the part of H5Reader's interface that
    the crop data sets use (``read_map``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def read_map(self, image_id: str, name: str) -> np.ndarray:
        with Image.open(self.directory / f"{image_id}.png") as im:
            return np.asarray(im)


class LabelsOnly(Dataset):
    """Item i: the label map of image i as a tensor (no image, no augmentation)."""

    def __init__(self, ids: list[str], reader: Any, key: str) -> None:
        self.ids, self.reader, self.key, self.epoch = ids, reader, key, 0

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        # maps differ in size: the item is the flat map, so batches collate as lists
        return torch.from_numpy(np.array(self.reader.read_map(self.ids[i], self.key)))


def _collate_list(batch: list) -> list:
    return batch


def synthetic_run(root: Path, n: int, classes: list[str]) -> Path:
    """A run directory with data/train.csv, ir_labels/train.h5 and masks/train.h5 of ``n``
    random 128-160-px JPEG images and blocky label maps (classes and 255)."""
    rng = np.random.default_rng(0)
    (root / "data/images").mkdir(parents=True)
    rows = ["id,image,mask,labels"]
    stores = {"ir_labels": ("label", root / "ir_labels/train.h5"),
              "masks": ("mask_crf", root / "masks/train.h5")}
    writers = {}
    for kind, (_, path) in stores.items():
        path.parent.mkdir(parents=True)
        writers[kind] = H5Writer(path, kind, classes, {"synthetic": True}).__enter__()
    for i in range(n):
        h, w = (int(v) for v in rng.integers(128, 161, 2))
        ident, cls = f"train_{i:05d}", 1 + i % (len(classes) - 1)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / f"data/images/{ident}.jpg", quality=90)
        rows.append(f"{ident},images/{ident}.jpg,,{classes[cls]}")
        label = np.zeros((h, w), np.uint8)
        y, x = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        label[y:y + h // 2, x:x + w // 2] = cls
        label[rng.random((h, w)) < 0.05] = 255
        for kind, (key, _) in stores.items():
            writers[kind].add(ident, (h, w), np.array([cls]), {key: label},
                              dtypes={key: np.uint8})
    for writer in writers.values():
        writer.__exit__(None, None, None)
    (root / "data/train.csv").write_text("\n".join(rows) + "\n")
    return root


def write_pngs(reader: H5Reader, ids: list[str], key: str, directory: Path) -> None:
    """Write map ``key`` of each image as ``<directory>/<id>.png`` (as IRN's imageio.imwrite of
    a uint8 array)."""
    directory.mkdir(parents=True)
    for image_id in ids:
        Image.fromarray(reader.get(image_id, [key])[key]).save(directory / f"{image_id}.png")


def rewrite(reader: H5Reader, ids: list[str], key: str, path: Path) -> Path:
    """Write map ``key`` of each image of ``reader`` into a new store at ``path`` through
    :class:`H5Writer` (as the stages write it today); returns ``path``."""
    with H5Writer(path, reader.kind, reader.classes, reader.meta) as writer:
        for image_id in ids:
            item = reader.get(image_id, [key])
            writer.add(image_id, item["size"], item["keys"], {key: item[key]},
                       dtypes={key: item[key].dtype})
    reader.close()
    return path


def dataset(name: str, data: str, records: list[Record], labels: Any, key: str, n_classes: int,
            section: dict[str, Any]) -> Dataset:
    """The row's data set over ``labels`` (an H5Reader or its PngLabels twin)."""
    if data == "labels":
        return LabelsOnly([r.id for r in records], labels, key)
    crop, rescale = section["crop"], tuple(section["rescale"])
    if name == "ir_labels":  # train_irn's
        return IRCrops(records, labels, n_classes, crop, rescale, MEAN, STD, SEED)
    return SegmentationCrops(records, labels, key, n_classes, crop, rescale, MEAN, STD, SEED)


def _cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the loader's finished workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def pass_seconds(ds: Any, batch: int, workers: int, epoch: int,
                 collate: bool) -> tuple[float, float]:
    """(wall, CPU) seconds of one full pass of the epoch's loader (creation and worker start-up
    included; CPU: this process and its workers, which the loader joins at the end)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    loader = epoch_loader(ds, batch, SEED, epoch, 0, workers)
    if not collate:
        loader.collate_fn = _collate_list
    for _ in loader:
        pass
    del loader
    return time.perf_counter() - start, _cpu_seconds() - cpu


def main(argv: list[str] | None = None) -> int:
    """Print images/s of each reader over its PNG twin, per data and worker count."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", nargs="?", default="results/demo")
    ap.add_argument("--images", type=int, default=None,
                    help="first N training images (default: all; 400 when synthetic)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--passes", type=int, default=3, help="timed passes per row (median)")
    ap.add_argument("--configfile", default=str(ROOT / "config.yaml"))
    ap.add_argument("--synthetic", action="store_true", help="ignore RUN_DIR, build a store")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = load_workflow_config([args.configfile])
    run = Path(args.run)
    needed = [run / "data/train.csv", run / "ir_labels/train.h5", run / "masks/train.h5"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.synthetic or not all(p.is_file() for p in needed):
            missing = [str(p) for p in needed if not p.is_file()]
            if missing and not args.synthetic:
                print(f"{run}: no {', '.join(missing)}: a synthetic store instead")
            classes = ["background", "cat", "dog", "horse", "sheep", "cow", "bird"]
            run = synthetic_run(Path(tmp) / "run", args.images or 400, classes)
        classes = H5Reader(run / "masks/train.h5", kind="masks").classes
        records: list[Record] = read_split_csv(run / "data/train.csv", classes)
        records = records[: args.images] if args.images else records
        ids = [r.id for r in records]
        seg = cfg["segmentation"]
        setups = {  # reader -> (store kind, map, config section)
            "ir_labels": ("ir_labels", "label", cfg["irn"]),
            "masks": ("masks", seg["mask"], seg),
        }
        results: list[tuple[str, str, int, int, float, float, float, float, float]] = []
        for name, (kind, key, section) in setups.items():
            path = run / kind / "train.h5"
            with h5py.File(path, "r") as f:
                indexed = "chunk_index" in f and key in f["chunk_index"]
            if not indexed:  # written before the index: time the map as H5Writer writes it now
                print(f"{path}: no /chunk_index/{key} (written before it); timing a copy of its "
                      f"{key!r} maps written by the current H5Writer")
                path = rewrite(H5Reader(path, kind=kind, classes=classes), ids, key,
                               Path(tmp) / f"{kind}_train.h5")
            reader = H5Reader(path, kind=kind, classes=classes)
            missing = [i for i in ids if i not in reader]  # opens the file here, as the stages
            if missing:
                raise SystemExit(f"{path} has no entry for {len(missing)} image(s)")
            png = PngLabels(Path(tmp) / f"png_{name}")
            write_pngs(reader, ids, key, png.directory)
            batch = section["batch_size"]
            for data in ("labels", "crops"):
                for workers in args.workers:
                    wall: dict[str, list[float]] = {"png": [], "h5": []}
                    cpu: dict[str, list[float]] = {"png": [], "h5": []}
                    for p in range(args.passes):
                        order = ("png", "h5") if p % 2 == 0 else ("h5", "png")
                        for which in order:
                            ds = dataset(name, data, records, png if which == "png" else reader,
                                         key, len(classes), section)
                            seconds, cpu_seconds = pass_seconds(ds, batch, workers, p,
                                                                data == "crops")
                            wall[which].append(seconds)
                            cpu[which].append(cpu_seconds)
                    n = len(ids) // batch * batch
                    paired = [p / h for p, h in zip(wall["png"], wall["h5"], strict=True)]
                    results.append((name, data, workers, batch, n / statistics.median(wall["png"]),
                                    n / statistics.median(wall["h5"]), min(paired), max(paired),
                                    statistics.median(cpu["png"]) / statistics.median(cpu["h5"])))
            reader.close()
    print(f"{len(ids)} training images of {args.run if run == Path(args.run) else 'synthetic'}; "
          f"median of {args.passes} passes; torch threads 1")
    print(f"{'reader':<10} {'data':<7} {'workers':>7} {'batch':>5} {'PNG img/s':>10} "
          f"{'HDF5 img/s':>11} {'HDF5/PNG':>9} {'per pass':>10} {'CPU PNG/HDF5':>13}")
    for name, data, workers, batch, png_rate, h5_rate, low, high, cpu_ratio in results:
        print(f"{name:<10} {data:<7} {workers:>7} {batch:>5} {png_rate:>10.0f} {h5_rate:>11.0f} "
              f"{h5_rate / png_rate:>9.2f} {f'{low:.2f}-{high:.2f}':>10} {cpu_ratio:>13.2f}")
    print("HDF5/PNG: images/s ratio of the medians (> 1: HDF5 faster); per pass: its range over "
          "the passes timed back to back (the noise); CPU PNG/HDF5: CPU seconds per pass, this "
          "process and its workers (> 1: HDF5 cheaper; less sensitive to other load)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
