"""Refinement under each IR-label threshold mode, side by side, on an existing run's seeds.

    python bench/threshold_modes.py                      # results/demo, modes attention gmm fixed
    python bench/threshold_modes.py --modes gmm --rules psa cobra irn   # mask rules too

For every mode it runs the four refinement stages exactly as the Snakemake rules do
(``python -m wsss make_ir_labels / train_irn / make_pseudo_masks / eval_masks`` with the run's
config and only ``ir_labels.threshold`` changed) into a scratch directory, then prints one row
per mode (and mask rule): IR-label confident fraction, precision and mIoU, mask mIoU without
and with the final CRF, and the best seed of ``metrics/seeds.csv`` for comparison. The run's own
artifacts are read, never written. ~4 minutes per mode and rule on 2 CPU cores for the demo.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wsss.config import validate_config  # noqa: E402
from wsss.data.dataset_classes import classes_for  # noqa: E402
from wsss.refine.ir_labels import THRESHOLD_RULES  # noqa: E402


def stage(name: str, inputs: dict[str, Path], outputs: dict[str, Path], params: dict,
          threads: int, log: Path, may_stop: bool = False) -> float | None:
    """Run one stage as its Snakemake rule would; return its wall time in seconds. With
    ``may_stop``, a user-facing stop (exit 2, e.g. train_irn on IR labels without foreground)
    is printed and returns None instead of ending the benchmark."""
    cmd = [sys.executable, "-m", "wsss", name, "--params", json.dumps(params),
           "--threads", str(threads), "--log", str(log)]
    cmd += [f"--input={k}={v}" for k, v in inputs.items()]
    cmd += [f"--output={k}={v}" for k, v in outputs.items()]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode == 2 and may_stop:
        print(f"{name} stopped: {proc.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed (see {log}):\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    """Run the refinement for each mode and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configfile", default=str(ROOT / "config.yaml"))
    parser.add_argument("--modes", nargs="+", default=list(THRESHOLD_RULES.names()))
    parser.add_argument("--rules", nargs="+", default=None,
                        help="mask rules to compare (default: the config's masks.rule)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", default=None, help="keep the scratch artifacts here")
    args = parser.parse_args()
    cfg = validate_config(yaml.safe_load(Path(args.configfile).read_text()))
    run = ROOT / cfg["results"] / cfg["run"]
    classes = classes_for(cfg["dataset"])
    for need in ("seeds/train.h5", "cams/train.h5", "data/train.csv", "metrics/seeds.csv"):
        if not (run / need).exists():
            raise SystemExit(f"{run / need} missing: run `snakemake --cores all masks` first")
    seeds = pd.read_csv(run / "metrics/seeds.csv")
    best = seeds.loc[seeds["miou"].idxmax()]
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="wsss-modes-"))
    rows = []
    for mode in args.modes:
        out = scratch / mode
        out.mkdir(parents=True, exist_ok=True)
        ir_cfg = copy.deepcopy(cfg["ir_labels"])
        ir_cfg["threshold"] = mode
        common = {"split": run / "data/train.csv"}
        t = {}
        t["ir"] = stage("make_ir_labels",
                        {"seeds": run / "seeds/train.h5", "cams": run / "cams/train.h5", **common},
                        {"labels": out / "ir.h5", "metrics": out / "ir.csv"},
                        {"ir_labels": ir_cfg, "classes": classes}, args.threads,
                        out / "ir.log")
        t_irn = stage("train_irn", {"labels": out / "ir.h5", **common},
                      {"model": out / "irn/model.pt", "metrics": out / "irn/metrics.csv"},
                      {"irn": cfg["irn"], "classes": classes, "device": cfg["device"],
                       "seed": cfg["seed"]}, args.threads, out / "irn.log", may_stop=True)
        ir = pd.read_csv(out / "ir.csv").iloc[-1]
        ir_row = {"mode": mode, "ir_confident": ir["confident_fraction"],
                  "ir_precision": ir["precision"], "ir_miou": ir["miou"]}
        if t_irn is None:  # nothing to learn (e.g. no foreground): no masks for this mode
            rows += [{**ir_row, "rule": rule, "mask_walk": float("nan"),
                      "mask_walk_crf": float("nan"), "note": "train_irn stopped"}
                     for rule in args.rules or [cfg["masks"]["rule"]]]
            continue
        t["irn"] = t_irn
        for rule in args.rules or [cfg["masks"]["rule"]]:
            masks_cfg = {**cfg["masks"], "rule": rule}
            t[rule] = stage("make_pseudo_masks",
                            {"irn": out / "irn/model.pt", "seeds": run / "seeds/train.h5",
                             "cams": run / "cams/train.h5", "ir_labels": out / "ir.h5",
                             **common},
                            {"masks": out / f"masks_{rule}.h5", "png": out / f"png_{rule}"},
                            {"masks": masks_cfg, "classes": classes, "device": cfg["device"]},
                            args.threads, out / f"masks_{rule}.log")
            stage("eval_masks", {"masks": out / f"masks_{rule}.h5", **common},
                  {"metrics": out / f"masks_{rule}.csv"}, {"classes": classes}, 1,
                  out / f"eval_{rule}.log")
            masks = pd.read_csv(out / f"masks_{rule}.csv").set_index("variant")["miou"]
            rows.append({**ir_row, "rule": rule, "mask_walk": masks["walk"],
                         "mask_walk_crf": masks["walk_crf"], "note": ""})
        print(f"{mode}: done in {sum(t.values()):.0f} s", flush=True)
    table = pd.DataFrame(rows, columns=["mode", "rule", "ir_confident", "ir_precision",
                                        "ir_miou", "mask_walk", "mask_walk_crf", "note"])
    print(f"\nrun {run} (fusion {cfg['fusion']}); best seed: "
          f"{best['variant']}/{best['rule']} at {best['threshold']:.2f} = {best['miou']:.4f}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"artifacts in {scratch}")


if __name__ == "__main__":
    main()
