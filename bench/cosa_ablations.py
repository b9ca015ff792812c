"""CoSA ablations on the demo (issue 11; CoSA Tab. 1, 4, 5): one short run per config switch,
side by side with the full method.

Each row is its own run directory (``results/<base>-<row>``) of the demo with the CoSA overlay
(``config.yaml`` + ``workflow/presets/demo-cosa.yaml``) and one switch, run by Snakemake up to
the CoSA scores, so nothing of the IRN / segmenter chain is trained:

* ``full``: the overlay as it is (the run ``results/<base>``, reused when finished);
* ``fixed``: fixed CPL threshold xi = 0.5 instead of the GMM of Eq. (6) (``threshold: fixed``);
* ``no_raw``: plain cross entropy in L_c2s instead of the RAW weights of Eq. (5) (``raw: false``);
* ``no_csc``: without the contrastive separation of Eq. (9)-(10) (``csc: false``).

Printed per row: CoSA's single-stage val mIoU (raw, CRF: ``metrics/cosa_seg.csv``), the CPL
train mIoU (``metrics/seeds.csv``, rule ``cpl``), the best seed sweep of the AN's CAM, the
final held-out mAP of the online network's main head and the last epoch's threshold. One
training seed per row: differences smaller than the seed spread of the full method are noise.

    python bench/cosa_ablations.py [--rows full fixed no_raw no_csc] [--base demo-cosa]
        [--cores 2] [--csv FILE]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SWITCHES = {
    "full": None,
    "fixed": "classifier={cosa: {threshold: fixed}}",
    "no_raw": "classifier={cosa: {raw: false}}",
    "no_csc": "classifier={cosa: {csc: false}}",
}


def run_dir(base: str, row: str) -> Path:
    return ROOT / "results" / (base if row == "full" else f"{base}-{row}")


def run(base: str, row: str, cores: int) -> None:
    """Snakemake up to the CoSA scores of one row (nothing when they are up to date)."""
    out = run_dir(base, row)
    targets = [str((out / t).relative_to(ROOT)) for t in ("metrics/cosa_seg.csv",
                                                           "metrics/seeds.csv")]
    config = [f"run={out.name}"] + ([SWITCHES[row]] if SWITCHES[row] else [])
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile",
           "config.yaml", "workflow/presets/demo-cosa.yaml", "--config", *config, "--",
           *targets]
    print("[cosa_ablations]", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def row_figures(out: Path) -> dict[str, float]:
    """The figures of one finished row."""
    seg = pd.read_csv(out / "metrics/cosa_seg.csv").set_index("variant")["miou"]
    seeds = pd.read_csv(out / "metrics/seeds.csv")
    cpl = seeds[seeds["rule"] == "cpl"]["miou"].max()
    sweep = seeds[seeds["rule"] == "sweep"]["miou"].max()
    last = pd.read_csv(out / "classifier/metrics.csv").iloc[-1]
    return {"cosa_seg raw (val)": seg["raw"], "cosa_seg crf (val)": seg["crf"],
            "CPL (train)": cpl, "seeds sweep (train)": sweep,
            "held-out mAP main": last["holdout_map_main"], "threshold": last["threshold"]}


def main(argv: list[str] | None = None) -> int:
    """Run the missing rows, then print (and with ``--csv`` write) the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    ap.add_argument("--base", default="demo-cosa", help="the overlay's run name")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--csv", type=Path)
    ap.add_argument("--no-run", action="store_true", help="only read finished rows")
    args = ap.parse_args(argv)
    table = {}
    for row in args.rows:
        if not args.no_run:
            run(args.base, row, args.cores)
        table[row] = row_figures(run_dir(args.base, row))
    frame = pd.DataFrame(table).T
    print(frame.to_string(float_format=lambda x: f"{x:.4f}"))
    if args.csv:
        frame.to_csv(args.csv, float_format="%.4f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
