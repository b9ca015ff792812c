"""IR labels (two label-CRF passes per image) in worker processes vs a serial loop, same outputs.

    python bench/crf.py [--images 128] [--workers 2] [--repeats 3] [--run-dir results/demo]

Uses the first N images of ``<run-dir>/seeds/train.h5`` (images from ``<run-dir>/data/train.csv``,
attention thresholds when ``<run-dir>/cams/train.h5`` holds ``attn``) when present; otherwise
synthesises demo-like images (128-160 px, smooth regions with blobs, peaked CAMs). The parallel
time includes the process pool's start (the forkserver itself is started once, in the first
repeat, printed separately). Prints medians of the repeats, the speed-up and the load average.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import wsss  # noqa: E402,F401
from wsss.config import validate_config  # noqa: E402
from wsss.data.classes import DEMO_CLASSES  # noqa: E402
from wsss.data.table import read_split_csv, write_split_csv  # noqa: E402
from wsss.errors import DataError  # noqa: E402
from wsss.io.h5store import H5Reader, H5Writer  # noqa: E402
from wsss.refine.ir_labeller import Labeller, Task, label_images  # noqa: E402
from wsss.refine.ir_labels import THRESHOLD_RULES, IrSettings  # noqa: E402

# the schema's ir_labels section (IRN's CRF, CoBra's attention rule), threshold rule fixed
SECTION = validate_config({"ir_labels": {"threshold": "fixed"}})["ir_labels"]


def synthesise(root: Path, n: int, seed: int = 0) -> tuple[Path, Path, Path]:
    """Write n demo-like images, a seeds store, a CAM store and a split CSV under ``root``."""
    rng = np.random.default_rng(seed)
    classes = list(DEMO_CLASSES)
    records = []
    with H5Writer(root / "seeds.h5", "seeds", classes, {"fusion": "fuse"}) as sw, \
            H5Writer(root / "cams.h5", "cams", classes, {"maps": ["cnn", "tran"]}) as cw:
        for i in range(n):
            h, w = 128 + 16 * int(rng.integers(0, 3)), 128 + 16 * int(rng.integers(0, 3))
            yy, xx = np.mgrid[0:h, 0:w]
            # background: two smooth colour regions split by a wavy line
            split = w / 2 + 12 * np.sin(yy / 17.0 + i)
            img = np.where((xx < split)[..., None], rng.integers(60, 200, 3),
                           rng.integers(60, 200, 3)).astype(np.float64)
            keys = np.sort(rng.choice(np.arange(1, len(classes)), 1 + i % 3, replace=False))
            cams = []
            for _ in keys:
                cy, cx = rng.integers(20, h - 20), rng.integers(20, w - 20)
                ry, rx = rng.integers(12, 30, 2)
                d2 = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
                img[d2 < 1] = rng.integers(0, 256, 3)
                cams.append(np.exp(-d2 / 1.5) * (0.8 + 0.2 * rng.random((h, w))))
            img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
            cam = np.stack(cams).astype(np.float32)
            cam /= cam.max(axis=(1, 2), keepdims=True)
            Image.fromarray(img).save(root / f"im{i:04d}.png")
            sw.add(f"im{i:04d}", (h, w), keys, {"cam": cam, "cam_strided": cam[:, ::4, ::4]})
            cw.add(f"im{i:04d}", (h, w), keys, {"attn": cam.max(0)[::4, ::4] ** 4},
                   dtypes={"attn": np.float32})
            records.append({"id": f"im{i:04d}", "image": f"im{i:04d}.png", "mask": "",
                            "labels": [classes[k] for k in keys]})
    write_split_csv(root / "train.csv", records)
    return root / "seeds.h5", root / "cams.h5", root / "train.csv"


def has_attn(cams: Path, image_id: str) -> bool:
    """Whether the CAM store holds the attention map used by CoBra's threshold rule."""
    try:
        r = H5Reader(cams, kind="cams")
        r.get(image_id, ["attn"])
        r.close()
        return True
    except (KeyError, OSError, DataError):  # missing store, map or image
        return False


def main() -> None:
    """Time the IR-label computation in worker processes and serially; check equal labels."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", default="results/demo")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk", type=int, default=None, help="images per task (default: auto)")
    ap.add_argument("--threshold", choices=["auto", *THRESHOLD_RULES.names()], default="auto")
    args = ap.parse_args()
    run_dir = Path(args.run_dir)
    seeds, cams, split = (run_dir / "seeds/train.h5", run_dir / "cams/train.h5",
                          run_dir / "data/train.csv")
    with contextlib.ExitStack() as stack:
        if seeds.exists() and split.exists():
            source = f"{seeds} (first {args.images} images)"
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            seeds, cams, split = synthesise(tmp, args.images)
            source = f"{args.images} synthetic demo-like images"
        store = H5Reader(seeds, kind="seeds")
        ids = store.ids[: args.images]
        by_id = {r.id: r for r in read_split_csv(split, store.classes)}
        store.close()
        section = copy.deepcopy(SECTION)
        mode = args.threshold
        if mode == "auto":
            mode = "attention" if has_attn(cams, ids[0]) else "fixed"
        section["threshold"] = mode
        if mode == "gmm":
            section["gmm"]["per_image"] = True  # per-image fits run in the workers too
        cfg = IrSettings.from_section(section)
        labeller = Labeller(seeds, cams, cfg)
        split = labeller.rule.for_split(labeller.seeds, ids, str(seeds))
        tasks = [Task(i, by_id[i].image, by_id[i].mask, split) for i in ids]

        def parallel() -> list:
            stream = label_images(tasks, labeller, args.workers, args.chunk)
            with contextlib.closing(stream):
                return list(stream)

        def serial() -> list:
            return [labeller.label(t) for t in tasks]

        t0 = time.perf_counter()
        first = parallel()  # starts the forkserver (imports once) and warms the file cache
        cold = time.perf_counter() - t0
        t_par, t_ser = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            par = parallel()
            t_par.append(time.perf_counter() - t)
            t = time.perf_counter()
            ser = serial()
            t_ser.append(time.perf_counter() - t)
        same = all(np.array_equal(a.label, b.label) and np.array_equal(a.label, c.label)
                   for a, b, c in zip(par, ser, first))
    n = len(tasks)
    pixels = statistics.mean(r.pixels for r in ser)
    p, s = statistics.median(t_par), statistics.median(t_ser)
    print(f"source: {source}; {n} images, mean {pixels:.0f} px, thresholds: {mode}; "
          f"CRF: 2 passes x {cfg.crf.iterations} iterations; median of {args.repeats}")
    print(f"labels identical (parallel == serial): {same}")
    print(f"{'scheme':<28}{'total s':>10}{'s/image':>10}")
    print(f"{'serial loop':<28}{s:>10.3f}{s / n:>10.4f}")
    print(f"{f'{args.workers} worker processes':<28}{p:>10.3f}{p / n:>10.4f}")
    print(f"speed-up: {s / p:.2f}x on {args.workers} workers (goal >= 1.8x on 2 cores); first "
          f"parallel run incl. forkserver start {cold:.2f} s; cpus {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
