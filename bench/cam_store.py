"""Size of the HDF5 CAM store vs IRN-style pickled .npy dicts holding the same CAMs.

IRN (and CoBra) save one ``np.save``'d dict per image with float32 maps (``keys``, ``cam``,
``high_res``, ...). We store float16, chunked, shuffle + gzip, one file per split.

    python bench/cam_store.py [results/demo/cams/train.h5] [--images 200]

Needs a CAM store: run ``snakemake --cores all --until extract_cams`` first.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.io.h5store import H5Reader, H5Writer  # noqa: E402


def main() -> None:
    """Re-store the first N images both ways and print bytes per image and the ratio."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store", nargs="?", default="results/demo/cams/train.h5")
    ap.add_argument("--images", type=int, default=200)
    args = ap.parse_args()
    src = H5Reader(args.store, kind="cams")
    ids = src.ids[: args.images]
    with tempfile.TemporaryDirectory() as tmp:
        h5_path = Path(tmp) / "subset.h5"
        npy_bytes = 0
        with H5Writer(h5_path, "cams", src.classes, src.meta) as w:
            for image_id in ids:
                item = src.get(image_id)
                maps = {k: v for k, v in item.items() if k not in ("size", "keys")}
                w.add(image_id, item["size"], item["keys"], maps,
                      dtypes={"attn": np.float32})
                irn = {"keys": item["keys"] - 1}
                irn.update({k: v.astype(np.float32) for k, v in maps.items()})
                npy = Path(tmp) / f"{image_id}.npy"
                np.save(npy, irn, allow_pickle=True)
                npy_bytes += npy.stat().st_size
                npy.unlink()
        h5_bytes = os.path.getsize(h5_path)
    n = len(ids)
    maps = sorted(k for k in src.get(ids[0]) if k not in ("size", "keys"))
    print(f"images: {n} from {args.store}; maps per image: {', '.join(maps)}")
    print(f"{'format':<36}{'KiB/image':>12}")
    print(f"{'IRN-style pickled .npy dict (f32)':<36}{npy_bytes / n / 1024:>12.1f}")
    print(f"{'wsss HDF5 (f16, shuffle+gzip)':<36}{h5_bytes / n / 1024:>12.1f}")
    print(f"ratio HDF5 / npy: {h5_bytes / npy_bytes:.3f}  (goal <= {1 / 6:.3f})")


if __name__ == "__main__":
    main()
