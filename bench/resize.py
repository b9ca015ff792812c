"""Per-scale image resize for CAMs against PIL's bicubic (IRN's and CoBra's ``pil_rescale``).

For real photos bundled with scikit-image, at CoBra's scales, prints the largest difference in
grey levels between :func:`wsss.cams.multiscale.rescale_image` (bicubic with antialiasing on
the 0-255 image) and PIL ``Image.resize(BICUBIC)``, the share of values that differ at all, and
the same largest difference for the bilinear resize without antialiasing that wsss used before.

    python bench/resize.py [--photos astronaut chelsea coffee] [--scales 0.5 0.75 1.5 2.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.cams.multiscale import rescale_image  # noqa: E402


def main() -> None:
    """Print one row per (photo, scale)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", nargs="+", default=["astronaut", "chelsea", "coffee"])
    ap.add_argument("--scales", nargs="+", type=float, default=[0.5, 0.75, 1.25, 1.5, 2.0])
    args = ap.parse_args()
    print(f"{'photo':>10} {'size':>9} {'scale':>5} | ours vs PIL: max  differ % | "
          f"old bilinear vs PIL: max")
    worst = 0
    for photo in args.photos:
        img = getattr(data, photo)()
        h, w = img.shape[:2]
        x = torch.from_numpy(img).permute(2, 0, 1)[None]
        for s in args.scales:
            size = (round(h * s), round(w * s))
            ref = np.asarray(Image.fromarray(img).resize(size[::-1], Image.BICUBIC)).astype(int)
            ours = rescale_image(x, size)[0].permute(1, 2, 0).numpy().astype(int)
            old = torch.nn.functional.interpolate(x.float(), size, mode="bilinear",
                                                  align_corners=False)
            old_diff = np.abs(old[0].permute(1, 2, 0).numpy() - ref).max()
            diff = np.abs(ours - ref)
            worst = max(worst, int(diff.max()))
            share = 100 * (diff > 0).mean()
            print(f"{photo:>10} {w:>4}x{h:<4} {s:5.2f} | {diff.max():16d} {share:9.3f} "
                  f"| {old_diff:24.1f}")
    print(f"largest difference against PIL bicubic: {worst} grey level(s)")


if __name__ == "__main__":
    main()
