"""Two finished runs side by side: every mIoU of ``report/summary.csv`` and the DAG time.

For a before/after comparison of a change (run the same config on two checkouts, one after the
other or at once with the same ``--cores``, on one machine): prints each (stage, variant) row's
mIoU in both runs and the difference, the largest per-class IoU difference, and per rule the
seconds of ``benchmarks/*.tsv`` with the totals and the before/after ratio.

    python bench/compare_runs.py BEFORE_RUN_DIR AFTER_RUN_DIR [--tolerance 0.005]

e.g. ``python bench/compare_runs.py /tmp/before/results/demo results/demo``. Exits 1 when a
row is missing from one run or an mIoU differs by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

KEY = ["stage", "variant"]


def benchmark_seconds(run: Path) -> dict[str, float]:
    """Wall seconds per rule (``s`` of each ``benchmarks/<rule>.tsv``)."""
    return {p.stem: float(pd.read_csv(p, sep="\t")["s"].iloc[0])
            for p in sorted((run / "benchmarks").glob("*.tsv"))}


def main() -> int:
    """Print the comparison; 1 when the runs differ beyond the tolerance."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--tolerance", type=float, default=0.005)
    args = ap.parse_args()
    before = pd.read_csv(args.before / "report/summary.csv")
    after = pd.read_csv(args.after / "report/summary.csv")
    rows = before.merge(after, on=KEY, how="outer", suffixes=("_before", "_after"),
                        indicator=True)
    rows["diff"] = rows["miou_after"] - rows["miou_before"]
    print(rows[[*KEY, "miou_before", "miou_after", "diff"]].to_string(index=False,
                                                                      float_format="%.4f"))
    both = rows[rows["_merge"] == "both"]
    ious = [c[:-len("_before")] for c in rows.columns
            if c.startswith("iou_") and c.endswith("_before")]
    per_class = max(((both[f"{c}_after"] - both[f"{c}_before"]).abs().max() for c in ious),
                    default=float("nan"))
    worst = both["diff"].abs().max()
    print(f"\nlargest |mIoU difference| {worst:.4f} (tolerance {args.tolerance}); largest "
          f"per-class IoU difference {per_class:.4f}")
    tb, ta = benchmark_seconds(args.before), benchmark_seconds(args.after)
    print(f"\n{'rule':>28} {'before s':>9} {'after s':>9}")
    for rule in sorted(set(tb) | set(ta)):
        print(f"{rule:>28} {tb.get(rule, float('nan')):9.1f} {ta.get(rule, float('nan')):9.1f}")
    sb, sa = sum(tb.values()), sum(ta.values())
    print(f"{'total':>28} {sb:9.1f} {sa:9.1f}   before/after {sb / sa:.3f}")
    missing = rows[rows["_merge"] != "both"]
    if len(missing):
        print(f"rows in one run only: {missing[KEY].values.tolist()}")
    return int(len(missing) > 0 or worst > args.tolerance)


if __name__ == "__main__":
    sys.exit(main())
