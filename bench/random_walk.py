"""Sparse vs dense IRN random walk on a VOC-sized stride-4 grid: same maps, time and peak memory.

IRN's ``propagate_to_edge`` forms the dense (HW x HW) transition matrix and raises it to the
power 2**8 by squaring; ``wsss.refine.random_walk.sparse_random_walk`` does 256 sparse steps.
Each method runs in a fresh (spawned) process on the same synthetic inputs (a smooth edge map
around an elliptical object, a CAM blob on part of it, background channel; fixed seed); the
peak memory is that process's ru_maxrss growth over the call(s), the outputs come back to this
process and are compared after dividing each by its max.

    python bench/random_walk.py [--size 94 125] [--repeats 3] [--dense-repeats 1] [--threads 2]

A 500x375 VOC image gives a 94x125 grid at stride 4 (11,750 pixels). Prints medians and ratios
against the goals (sparse >= 200x faster, peak memory <= 1/20 of dense).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsss.refine.random_walk import dense_random_walk, sparse_random_walk  # noqa: E402

METHODS = {"dense": dense_random_walk, "sparse": sparse_random_walk}


def make_inputs(h: int, w: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Synthetic (2, h, w) CAMs (background, object) and a smooth (h, w) edge map in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    # object: an ellipse; its boundary is a soft ridge in the edge map
    rho = (((yy - 0.55) / 0.3) ** 2 + ((xx - 0.45) / 0.25) ** 2).sqrt()
    ridge = torch.exp(-((rho - 1.0) ** 2) / (2 * 0.06 ** 2))
    # smooth clutter: low-resolution noise upsampled bicubically, plus a faint inner line
    clutter = F.interpolate(torch.rand(1, 1, 6, 8, generator=g), size=(h, w), mode="bicubic",
                            align_corners=False)[0, 0].clamp(0, 1)
    inner = 0.3 * torch.exp(-((xx - 0.5) ** 2) / (2 * 0.01 ** 2)) * (rho < 0.8)
    edge = (0.9 * ridge + 0.15 * clutter + inner).clamp(0, 1)
    # the CAM covers only a discriminative part of the object, as CAMs do
    blob = torch.exp(-(((yy - 0.45) / 0.12) ** 2 + ((xx - 0.38) / 0.1) ** 2) / 2)
    fg = (blob + 0.05 * torch.rand(h, w, generator=g)).clamp(0, 1)
    bg = (1.0 - F.avg_pool2d(blob[None, None], 9, 1, 4)[0, 0] * 1.5).clamp(0, 1)
    return torch.stack([bg, fg]), edge


def _run(method: str, size: tuple[int, int], seed: int, repeats: int, threads: int) -> dict:
    """In a fresh process: time ``repeats`` calls of one method; its RSS growth and output."""
    torch.set_num_threads(threads)
    cams, edge = make_inputs(*size, seed)
    fn = METHODS[method]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(cams, edge, beta=10, exp_times=8, radius=5)
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"times": times, "peak_mib": (peak - base) / 1024, "base_mib": base / 1024,
            "out": out.numpy()}


def measure(method: str, args: argparse.Namespace, repeats: int) -> dict:
    """Run one method in its own spawned process so memory high-water marks do not mix."""
    with mp.get_context("spawn").Pool(1) as pool:
        return pool.apply(_run, (method, tuple(args.size), args.seed, repeats, args.threads))


def main() -> None:
    """Time both walks on the same inputs, check they agree and print the table and ratios."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, nargs=2, default=[94, 125], help="stride-4 grid h w")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3, help="sparse runs (median reported)")
    ap.add_argument("--dense-repeats", type=int, default=1, help="dense runs (slow: ~minutes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    args = ap.parse_args()
    sparse = measure("sparse", args, args.repeats)
    dense = measure("dense", args, args.dense_repeats)
    a = torch.from_numpy(sparse["out"])
    b = torch.from_numpy(dense["out"])
    diff = (a / a.max() - b / b.max()).abs().max().item()
    ts, td = statistics.median(sparse["times"]), statistics.median(dense["times"])
    ms, md = sparse["peak_mib"], dense["peak_mib"]
    h, w = args.size
    print(f"grid {h}x{w} ({h * w} pixels), 2 channels, radius 5, beta 10, 2^8 steps, "
          f"{args.threads} threads; median of {args.repeats} (sparse) / {args.dense_repeats} "
          f"(dense) in fresh processes (baseline RSS {sparse['base_mib']:.0f} MiB)")
    ok = diff < args.tolerance
    print(f"max |difference| of max-normalised outputs: {diff:.2e} "
          f"({'OK' if ok else 'FAIL'}, tolerance {args.tolerance:g})")
    print(f"{'method':<22}{'time s':>10}{'peak MiB':>12}")
    print(f"{'dense (IRN)':<22}{td:>10.3f}{md:>12.1f}")
    print(f"{'sparse (wsss)':<22}{ts:>10.3f}{ms:>12.1f}")
    print(f"speed-up: {td / ts:.0f}x (goal >= 200x)   memory: 1/{md / max(ms, 1e-9):.0f} of dense "
          f"(goal <= 1/20)")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
