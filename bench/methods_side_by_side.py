"""Several finished runs side by side: the mIoU of every (stage, variant) row of their
``report/summary.csv``, one column per run, headed by the run and its method.

For comparing methods (CoBra, CoSA, IRN's CAM) run on the same data, e.g. the demo and its CoSA
overlay:

    snakemake --cores all                                                       # results/demo
    snakemake --cores all --configfile config.yaml workflow/presets/demo-cosa.yaml  # demo-cosa
    python bench/methods_side_by_side.py results/demo results/demo-cosa

Rows keep the pipeline's stage order (seeds, ir_labels, masks, segmentation, cosa_seg) and each
run's variant order; a row a run does not have (CoBra has no ``cosa_seg``; ``masks.source: cpl``
no ``ir_labels``) is ``-``. The method is the summary's ``method`` column (``?`` for a summary
written before the column existed). ``--csv FILE`` also writes the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

STAGES = ("seeds", "ir_labels", "masks", "segmentation", "cosa_seg")


def read_summary(run: Path) -> pd.DataFrame:
    """A run's summary rows (``stage, variant, split, miou, method``); SystemExit naming the
    file when it is missing."""
    path = run / "report/summary.csv"
    if not path.is_file():
        raise SystemExit(f"no summary at {path}: is {run} a finished run directory "
                         "(results/<run>)?")
    table = pd.read_csv(path, dtype={"stage": str, "variant": str, "split": str})
    if "method" not in table.columns:
        table["method"] = "?"
    if "split" not in table.columns:
        table["split"] = ""
    return table[["stage", "variant", "split", "miou", "method"]]


def side_by_side(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per (stage, variant, split) in pipeline order, one mIoU column per run headed
    ``<run> (<method>)``; NaN where a run lacks the row."""
    columns, order = {}, []
    for name, table in runs.items():
        methods = [m for m in dict.fromkeys(table["method"].astype(str)) if m and m != "nan"]
        header = f"{name} ({'/'.join(methods) or '?'})"
        if header in columns:  # two runs of the same name (different parents): keep both
            header = f"{header} #{len(columns) + 1}"
        keyed = table.set_index(["stage", "variant", "split"])["miou"]
        columns[header] = keyed[~keyed.index.duplicated()]
        order += [k for k in keyed.index if k not in order]
    rank = {s: i for i, s in enumerate(STAGES)}
    order.sort(key=lambda k: rank.get(k[0], len(STAGES)))  # stable: variants keep their order
    index = pd.MultiIndex.from_tuples(order, names=["stage", "variant", "split"])
    return pd.DataFrame({h: col.reindex(index) for h, col in columns.items()}, index=index)


def main(argv: list[str] | None = None) -> int:
    """Print the table (and write it with ``--csv``)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", metavar="RUN_DIR",
                    help="finished run directories, e.g. results/demo results/demo-cosa")
    ap.add_argument("--csv", type=Path, help="also write the table to this CSV file")
    args = ap.parse_args(argv)
    table = side_by_side({run.name or str(run): read_summary(run) for run in args.runs})
    with pd.option_context("display.max_rows", None, "display.max_columns", None,
                           "display.width", 200):
        print(table.to_string(float_format=lambda x: f"{x:.4f}", na_rep="-"))
    if args.csv:
        table.to_csv(args.csv, float_format="%.4f")
    return 0


if __name__ == "__main__":
    sys.exit(main())
