"""How much the results move with the training seed: the DAG run with N seeds on the same data.

Runs the workflow once per training seed (config key ``seed``: every random source of the
trained stages, their data order and augmentation) into ``results/<run>_seed<k>/``, with the
data set itself unchanged (``dataset.demo.seed`` and the split files stay), then prints per
stage and variant of ``report/summary.csv`` the mean, standard deviation (ddof 1), min and max
mIoU over the seeds, the per-class IoU of the final segmentation the same way, and the whole
DAG time (sum of ``benchmarks/*.tsv``) per seed. Runs that already finished are reused, so a
killed bench resumes.

    python bench/seed_spread.py [--seeds 0 1 2] [--configfile config.yaml ...] [--cores 2]
        [--stages seeds masks segmentation]

It takes N whole DAG runs (about 15 minutes each for the demo on 2 CPU cores); it is a bench,
not a test. ``--summary-only`` prints the table from runs already made.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent


def run_dir(results: Path, run: str, seed: int) -> Path:
    """Where the run of training seed ``seed`` lives."""
    return results / f"{run}_seed{seed}"


def dag_seconds(run: Path) -> float:
    """The sum of the run's per-rule wall times (``benchmarks/*.tsv``)."""
    return sum(float(pd.read_csv(p, sep="\t")["s"].iloc[0])
               for p in (run / "benchmarks").glob("*.tsv"))


def spread(values: pd.DataFrame, by: list[str], column: str) -> pd.DataFrame:
    """mean, std (ddof 1), min, max and n of ``column`` grouped by ``by``."""
    out = values.groupby(by, sort=False)[column].agg(["mean", "std", "min", "max", "count"])
    return out.rename(columns={"count": "n"})


def main() -> None:
    """Run (or reuse) one DAG per seed and print the spread of every summary row."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--configfile", nargs="+", default=[str(ROOT / "config.yaml")])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--stages", nargs="+", default=["seeds", "ir_labels", "masks",
                                                    "segmentation"])
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args()
    config: dict = {}
    for path in args.configfile:
        config.update(yaml.safe_load(Path(path).read_text()) or {})
    run, results = config.get("run", "demo"), ROOT / config.get("results", "results")
    rows, classes, times = [], [], {}
    for seed in args.seeds:
        target = run_dir(results, run, seed)
        if not args.summary_only:
            cmd = [sys.executable, "-m", "snakemake", "--cores", str(args.cores),
                   "--directory", str(ROOT), "--configfile", *args.configfile,
                   "--config", f"seed={seed}", f"run={target.name}"]
            print(f"[seed {seed}] {' '.join(cmd)}", flush=True)
            subprocess.run(cmd, check=True, cwd=ROOT)
        summary = pd.read_csv(target / "report/summary.csv")
        summary["seed"] = seed
        rows.append(summary)
        seg = pd.read_csv(target / "metrics/segmentation.csv")
        seg["seed"] = seed
        classes.append(seg)
        times[seed] = dag_seconds(target)
    table = pd.concat(rows, ignore_index=True)
    table = table[table["stage"].isin(args.stages)]
    print(f"\n{len(args.seeds)} training seeds {args.seeds}, data and settings of "
          f"{' '.join(args.configfile)}\n")
    print(spread(table, ["stage", "variant"], "miou").to_string(float_format="%.4f"))
    seg = pd.concat(classes, ignore_index=True)
    per_class = seg.melt(id_vars=["variant", "seed"],
                         value_vars=[c for c in seg.columns if c.startswith("iou_")],
                         var_name="class", value_name="iou")
    print("\nfinal segmentation (val), per class:")
    print(spread(per_class, ["variant", "class"], "iou").to_string(float_format="%.4f"))
    secs = pd.Series(times, name="DAG seconds (sum of benchmarks/*.tsv)")
    print(f"\nwhole DAG per seed: {secs.round(1).to_dict()}; mean {secs.mean():.1f} s "
          f"({secs.mean() / 60:.1f} min)")


if __name__ == "__main__":
    main()
