"""wsss: weakly supervised semantic segmentation as a Snakemake pipeline (CoBra, CoSA, IRN)."""

from wsss import compat as _compat

_compat.apply()

__version__ = "0.1.0"
