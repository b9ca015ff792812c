"""Peak memory of ``python -m wsss extract_cams`` on one large image, with and without the cap.

Runs the stage exactly as the Snakemake rule does, in a child process per (image size,
``dataset.max_side``), on one synthetic photo-like JPEG (smooth colour gradients plus noise)
with the demo settings of ``config.yaml`` (cams: scales, flip, batch size; classifier: the
demo's tf_efficientnet_lite0 + vit_tiny depth 6). Nothing is trained: an untrained classifier
is saved to model.pt in train_classifier's format (weights and meta). The peak resident memory
is the child's ``ru_maxrss`` (``os.wait4``); "per MP" divides the growth over a 64x64 run
(imports, model, buffers) by the image's megapixels. Each child runs under an address-space
limit (``--limit-gb``, RLIMIT_AS) and a wall-clock timeout: a run that hits either is reported
as such (with the peak reached before it was stopped), never left to swap the machine.

    python bench/extract_memory.py [--sizes 800x600 1600x1200 2000x1500]
        [--max-side none 1024] [--repo PATH] [--threads 2] [--limit-gb 16] [--timeout 900]

``--repo`` runs another checkout's code (e.g. ``git archive <commit> | tar -x -C /tmp/before``)
for a before/after comparison; the model file is the same for both (same architecture). Code
from before ``dataset.max_side`` ignores the cap (its params key), so measure it with
``--max-side none``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss.config import load_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.hashing import config_hash  # noqa: E402
from wsss.models.classifier import build_classifier, save_classifier  # noqa: E402


def save_untrained_classifier(cfg: dict, classes: list[str], path: Path) -> None:
    """Build the configured classifier (random heads, no training) and save it as
    train_classifier does (:func:`wsss.models.classifier.save_classifier`)."""
    ccfg = dict(cfg["classifier"])
    build = {**ccfg, "cnn": {**ccfg["cnn"], "pretrained": "none"}}
    if "vit" in build:
        build["vit"] = {**build["vit"], "pretrained": "none"}
    torch.manual_seed(0)
    model = build_classifier(build, len(classes) - 1)
    save_classifier(path, model, ccfg, list(classes), config_hash(ccfg))


def photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A photo-like (h, w, 3) uint8 image: smooth colour gradients, a disc, mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 1 - (xx + yy) / (h + w)], -1) * 200
    disc = (yy - h / 2) ** 2 + (xx - w / 3) ** 2 < (min(h, w) / 4) ** 2
    img[disc] = [220, 60, 40]
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def one_image_split(folder: Path, h: int, w: int, label: str) -> Path:
    """Write one (h, w) JPEG and a split CSV naming it; return the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(photo(h, w)).save(folder / "img.jpg", quality=90)
    csv_path = folder / "split.csv"
    with open(csv_path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["id", "image", "mask", "labels"])
        wr.writerow([f"img_{w}x{h}", "img.jpg", "", label])
    return csv_path


def run_stage(repo: Path, model: Path, split: Path, out: Path, params: dict, threads: int,
              limit_gb: float, timeout: float) -> dict:
    """Run extract_cams in a child under an address-space limit; return rc, peak MB, seconds."""
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "wsss", "extract_cams", "--input", f"model={model}",
           "--input", f"split={split}", "--output", f"cams={out}", "--params",
           json.dumps(params), "--threads", str(threads), "--log", str(out.with_suffix(".log"))]
    limit = int(limit_gb * 2**30)

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, preexec_fn=preexec,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - t0 > timeout:
            proc.kill()
            timed_out = True
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    log = out.with_suffix(".log")
    text = err + (log.read_text(errors="replace") if log.exists() else "")
    oom = "can't allocate memory" in text or "MemoryError" in text or "out of memory" in text
    return {"rc": proc.returncode, "peak_mb": usage.ru_maxrss / 1024,
            "seconds": time.perf_counter() - t0, "timed_out": timed_out, "oom": oom,
            "tail": text.strip().splitlines()[-1:] if proc.returncode else []}


def main() -> None:
    """Measure each (size, max_side) and print a table (and optionally JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(ROOT / "config.yaml"))
    ap.add_argument("--sizes", nargs="+", default=["800x600", "1600x1200", "2000x1500"],
                    help="WxH of the synthetic image")
    ap.add_argument("--max-side", nargs="+", default=["none", "1024"])
    ap.add_argument("--repo", default=str(ROOT), help="checkout whose `python -m wsss` runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit-gb", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=900.0)
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    cfg = load_config(args.config)
    classes = classes_for(cfg["dataset"])
    label = classes[1]
    repo = Path(args.repo).resolve()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.pt"
        save_untrained_classifier(cfg, classes, model)
        caps = [None if m.lower() in ("none", "null") else int(m) for m in args.max_side]
        sizes = ["64x64", *args.sizes]
        base: dict = {}
        for size in sizes:
            w, h = (int(v) for v in size.split("x"))
            split = one_image_split(tmp / size, h, w, label)
            for cap in caps:
                params = {"cams": cfg["cams"], "classes": classes, "device": "cpu",
                          "method": cfg["classifier"]["method"],
                          "max_side": cap}
                out = tmp / size / f"cams_{cap}.h5"
                res = run_stage(repo, model, split, out, params, args.threads, args.limit_gb,
                                args.timeout)
                mp = h * w / 1e6
                if size == "64x64":
                    base[cap] = res["peak_mb"]
                    continue
                grow = res["peak_mb"] - base.get(cap, 0.0)
                row = {"size": size, "megapixels": round(mp, 3), "max_side": cap, **res,
                       "base_mb": base.get(cap), "mb_per_mp": grow / mp}
                rows.append(row)
                status = ("ok" if res["rc"] == 0 else
                          "TIMEOUT" if res["timed_out"] else
                          f"FAILED rc {res['rc']}" + (" (memory limit)" if res["oom"] else "")
                          + (f": {res['tail'][0]}" if res["tail"] else ""))
                print(f"{size:>10} {mp:5.2f} MP  max_side {str(cap):>5}: peak RSS "
                      f"{res['peak_mb']:8.0f} MB  (+{grow:7.0f} MB over 64x64 = "
                      f"{row['mb_per_mp']:6.0f} MB/MP)  {res['seconds']:6.1f} s  {status}",
                      flush=True)
    # side by side: one line per image size, one column per cap
    print(f"\n{'image':>10} {'MP':>6}" + "".join(f" | max_side {str(c):>5}: peak MB (MB/MP)"
                                                for c in caps))
    for size in args.sizes:
        cells = []
        for cap in caps:
            row = next(r for r in rows if r["size"] == size and r["max_side"] == cap)
            flag = "" if row["rc"] == 0 else (" TIMEOUT" if row["timed_out"] else " FAILED")
            cells.append(f" | {row['peak_mb']:>9.0f} ({row['mb_per_mp']:>5.0f}){flag:<15}")
        mp = next(r for r in rows if r["size"] == size)["megapixels"]
        print(f"{size:>10} {mp:>6.2f}" + "".join(cells))
    print(f"code: {repo}; scales {cfg['cams']['scales']}, flip {cfg['cams']['flip']}, batch "
          f"{cfg['cams']['batch_size']}, {args.threads} threads, limit {args.limit_gb} GB "
          f"address space; baseline (64x64) peak {base}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
