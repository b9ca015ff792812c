"""Peak memory of the per-image stages at two split sizes: does any stage grow with the split?

Each stage streams (read one image, process it, write it, drop it), so its peak memory should
not depend on how many images the split has. This runs extract_cams, fuse_cams,
make_ir_labels, make_pseudo_masks and predict on demo splits of ``--sizes`` images (default 200
and 2000) and prints, per stage, the peak resident memory at each size and their ratio (goal:
below 1.3).

Data: ``python -m wsss prepare_data`` with the demo generator (``dataset.demo.n_train`` = the
size; image ``i`` depends only on the seed and ``i``, so the small split is the start of the
large one). Models: a finished demo run's trained networks (``--models``, default
``results/demo``: classifier/, irn/ and segmentation/ ``model.pt``), copied into the work folder
first and only read. Every stage runs as its own child process, with the command line of its
Snakemake rule (``python -m wsss <stage> --input ... --output ... --params <rule params.cfg>``;
params built from ``--config`` as ``workflow/rules/*.smk`` build them) and ``--threads``;
predict runs on the train split (the ``--sizes`` images) instead of val.

Two memory figures per run:

* ``peak``: the stage process's ``ru_maxrss`` (``os.wait4``; exact; with ``--threads`` > 1 the
  largest of it and its reaped worker processes, not their sum);
* ``tree``: the largest sum of the resident memory of the stage process and all its
  descendants (CRF worker pools, the forkserver), sampled every ``--poll`` seconds with psutil,
  so a short spike between two samples can be missed.

Wall seconds are per stage (the machine's other load included). ``--threads 1`` (default) runs
each stage in one process (no CRF worker pool: ``peak`` is then all of it); on a 2-core machine
already busy with another job, ``--threads 2`` oversubscribes the cores and the network stages
run ~10x slower (predict on 48 demo images: 108 s against 10 s).

    python bench/memory.py [--sizes 200 2000] [--threads 1] [--models results/demo]
        [--scales 1.0] [--stages extract_cams fuse_cams ...] [--work DIR] [--repo PATH]
        [--repeats 1] [--json FILE]

``--repeats`` runs every stage that many times per size and prints the medians (and the peaks'
range): the random walk's peak moved by ~15 % between two identical runs of 200 images
(936 and 1066 MB), more than the difference between the sizes.

``--scales`` overrides ``cams.scales`` (fewer forwards per image: extract_cams is the slow
stage; its memory per image does not depend on the split size either way) and is printed in
the header. ``--work`` keeps the data and outputs there (default: a temporary folder, removed).
``--repo`` runs another checkout's stages (``git archive <commit> | tar -x -C /tmp/before``) for
a before/after comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss.config import load_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.hashing import as_params, without_execution  # noqa: E402

STAGES = ("extract_cams", "fuse_cams", "make_ir_labels", "make_pseudo_masks", "predict")
MODELS = {"classifier": "classifier/model.pt", "irn": "irn/model.pt",
          "segmentation": "segmentation/model.pt"}
GOAL = 1.3


def stage_commands(cfg: dict[str, Any], run: Path, models: Path) -> dict[str, dict[str, Any]]:
    """Per stage its inputs, outputs and params, as the Snakemake rules give them (``--params``
    is the rule's ``params.cfg``: the sections without execution-only keys, sorted JSON)."""
    classes = classes_for(cfg["dataset"])
    max_side, device = cfg["dataset"]["max_side"], cfg["device"]
    data, train = run / "data", run / "data" / "train.csv"
    masks = {k: v for k, v in cfg["masks"].items() if k not in ("source", "cpl")}
    return {
        "extract_cams": {
            "inputs": {"model": models / MODELS["classifier"], "split": train},
            "outputs": {"cams": run / "cams/train.h5"},
            "params": {"cams": cfg["cams"], "classes": classes, "device": device,
                       "max_side": max_side, "method": cfg["classifier"]["method"]}},
        "fuse_cams": {
            "inputs": {"cams": run / "cams/train.h5"},
            "outputs": {"seeds": run / "seeds/train.h5"},
            "params": {"fusion": cfg["fusion"], "classes": classes}},
        "make_ir_labels": {
            "inputs": {"seeds": run / "seeds/train.h5", "cams": run / "cams/train.h5",
                       "split": train},
            "outputs": {"labels": run / "ir_labels/train.h5",
                        "metrics": run / "metrics/ir_labels_train.csv"},
            "params": {"ir_labels": cfg["ir_labels"], "classes": classes}},
        "make_pseudo_masks": {
            "inputs": {"irn": models / MODELS["irn"], "seeds": run / "seeds/train.h5",
                       "cams": run / "cams/train.h5", "ir_labels": run / "ir_labels/train.h5",
                       "split": train},
            "outputs": {"masks": run / "masks/train.h5", "png": run / "masks/train"},
            "params": {"masks": masks, "classes": classes, "device": device,
                       "max_side": max_side}},
        "predict": {
            "inputs": {"model": models / MODELS["segmentation"], "split": train},
            "outputs": {"predictions": run / "predictions/train.h5",
                        "png": run / "predictions/train"},
            "params": {"predict": {**cfg["predict"], "split": "train"}, "classes": classes,
                       "device": device, "max_side": max_side}},
        "prepare_data": {
            "inputs": {},
            "outputs": {"train": train, "val": data / "val.csv", "classes": data / "classes.csv"},
            "params": {k: v for k, v in cfg["dataset"].items() if k != "max_side"}},
    }


def command(stage: str, spec: dict[str, Any], threads: int, log: Path) -> list[str]:
    """``python -m wsss <stage> --input k=v ... --output k=v ... --params ... --threads ...``"""
    cmd = [sys.executable, "-m", "wsss", stage]
    for flag, key in (("--input", "inputs"), ("--output", "outputs")):
        for name, path in spec[key].items():
            cmd += [flag, f"{name}={path}"]
    return cmd + ["--params", as_params(without_execution(spec["params"])),
                  "--threads", str(threads), "--log", str(log)]


def tree_rss(proc: psutil.Process) -> int:
    """Resident bytes of ``proc`` and all its descendants (0 for those gone meanwhile)."""
    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_child(cmd: list[str], repo: Path, threads: int, poll: float,
              timeout: float) -> dict[str, Any]:
    """Run one stage; return rc, exact peak (MB), sampled tree peak (MB), seconds."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    child = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    watched = psutil.Process(child.pid)
    tree_peak, timed_out = 0, False
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        tree_peak = max(tree_peak, tree_rss(watched))
        if time.perf_counter() - t0 > timeout:
            child.kill()
            timed_out = True
            pid, status, usage = os.wait4(child.pid, 0)
            break
        time.sleep(poll)
    seconds = time.perf_counter() - t0
    child.returncode = os.waitstatus_to_exitcode(status)
    err = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
    return {"rc": child.returncode, "peak_mb": usage.ru_maxrss / 1024,
            "tree_mb": tree_peak / 2**20, "seconds": seconds, "timed_out": timed_out,
            "error": err.splitlines()[-1] if child.returncode and err else ""}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Median peak, tree and seconds of a stage's runs at one size (and the peak's range);
    rc: the first failure's, 0 when all ran. None without runs."""
    if not runs:
        return None
    peaks = [r["peak_mb"] for r in runs]
    return {"peak_mb": statistics.median(peaks), "peak_lo": min(peaks), "peak_hi": max(peaks),
            "tree_mb": statistics.median(r["tree_mb"] for r in runs),
            "seconds": statistics.median(r["seconds"] for r in runs),
            "rc": next((r["rc"] for r in runs if r["rc"]), 0)}


def main() -> None:
    """Prepare each split size, run the stages on it, print the side-by-side table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--sizes", nargs=2, type=int, default=[200, 2000],
                    help="the small and the large split (train images)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--models", default=str(ROOT / "results/demo"),
                    help="a finished run holding classifier/, irn/, segmentation/ model.pt")
    ap.add_argument("--scales", nargs="+", type=float, default=None,
                    help="override cams.scales (default: the config's)")
    ap.add_argument("--threads", type=int, default=1,
                    help="the stages' --threads (1: one process, no worker pool)")
    ap.add_argument("--poll", type=float, default=0.1, help="tree RSS sampling period (s)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="per stage run (s)")
    ap.add_argument("--work", default=None, help="keep data and outputs in this folder")
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose `python -m wsss` runs")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per stage and size; the table shows their median (and range)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    cfg = copy.deepcopy(load_config(args.config))
    if args.scales:
        cfg["cams"]["scales"] = list(args.scales)
    if cfg["masks"]["source"] != "walk" or cfg["classifier"]["method"] == "cosa":
        sys.exit(f"{args.config}: the bench runs the walk pipeline (masks.source walk, a "
                 "non-cosa classifier)")
    repo = Path(args.repo).resolve()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="wsss-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    models = work / "models"
    for rel in MODELS.values():  # a copy: the run folder may be rewritten meanwhile
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(args.models) / rel, models / rel)
    print(f"code {repo}; config {args.config}; models {args.models}; {args.threads} thread(s); "
          f"cams.scales {cfg['cams']['scales']}"
          + (" (overridden by --scales)" if args.scales else "")
          + f"; predict.scales {cfg['predict']['scales']}, predict.crf "
          f"{'on' if cfg['predict']['crf']['enabled'] else 'off'}; work {work}", flush=True)
    rows: list[dict[str, Any]] = []
    try:
        for n in args.sizes:
            run = work / f"n{n}"
            size_cfg = copy.deepcopy(cfg)
            size_cfg["dataset"]["demo"] = {**cfg["dataset"]["demo"], "n_train": n,
                                           "n_val": max(8, n // 100)}
            specs = stage_commands(size_cfg, run, models)
            t0 = time.perf_counter()
            res = run_child(command("prepare_data", specs["prepare_data"], args.threads,
                                    run / "logs/prepare_data.log"), repo, args.threads,
                            args.poll, args.timeout)
            if res["rc"]:
                sys.exit(f"prepare_data ({n} images) failed: {res['error']}")
            print(f"{n} images: demo data in {time.perf_counter() - t0:.1f} s", flush=True)
            for stage in args.stages:
                for rep in range(args.repeats):
                    res = run_child(command(stage, specs[stage], args.threads,
                                            run / f"logs/{stage}.log"), repo, args.threads,
                                    args.poll, args.timeout)
                    rows.append({"stage": stage, "images": n, "repeat": rep, **res})
                    status = "ok" if res["rc"] == 0 else "TIMEOUT" if res["timed_out"] \
                        else f"FAILED rc {res['rc']}: {res['error']}"
                    print(f"{n:>6} images {stage:<18} run {rep + 1} peak {res['peak_mb']:7.0f} "
                          f"MB  tree {res['tree_mb']:7.0f} MB  {res['seconds']:7.1f} s  "
                          f"{status}", flush=True)
                    if res["rc"]:
                        break
                if rows[-1]["rc"]:
                    break
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    small, large = args.sizes
    print(f"\n{'stage':<18} | {'peak MB (stage process, ru_maxrss)':^34} | "
          f"{'tree MB (all processes, sampled)':^34} | {'seconds':^17}")
    print(f"{'':<18} | {small:>9} {large:>9} {'ratio':>14} | {small:>9} {large:>9} "
          f"{'ratio':>14} | {small:>8} {large:>8}")
    ranges = []
    for stage in args.stages:
        got = {n: summarise([r for r in rows if r["stage"] == stage and r["images"] == n])
               for n in args.sizes}
        a, b = got[small], got[large]
        if a is None or b is None:
            print(f"{stage:<18} | not run")
            continue
        if args.repeats > 1:
            ranges.append(f"{stage}: peak {a['peak_lo']:.0f}-{a['peak_hi']:.0f} / "
                          f"{b['peak_lo']:.0f}-{b['peak_hi']:.0f} MB")
        cells = []
        for key in ("peak_mb", "tree_mb"):
            ratio = b[key] / a[key] if a[key] else float("nan")
            verdict = "ok" if ratio < GOAL else "OVER"
            cells.append(f"{a[key]:>9.0f} {b[key]:>9.0f} {ratio:>8.2f} {verdict:>5}")
        bad = "" if a["rc"] == 0 and b["rc"] == 0 else "  (a run failed)"
        print(f"{stage:<18} | {cells[0]} | {cells[1]} | {a['seconds']:>8.1f} "
              f"{b['seconds']:>8.1f}{bad}")
    print(f"ratio = {large} / {small} images; goal < {GOAL} ('ok'); peak: the stage process's "
          f"ru_maxrss; tree: the largest sampled sum over the process and its workers"
          + (f"; median of {args.repeats} runs, seconds too" if args.repeats > 1 else ""))
    if ranges:
        print(f"range of the {args.repeats} runs ({small} / {large} images): " + "; ".join(ranges))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
