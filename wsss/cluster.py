"""What a SLURM cluster offers, for sizing jobs at submission (imported by the Snakefile: light)."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache


@cache
def _largest(field: str, partition: str | None) -> int | None:
    """The largest value of an ``sinfo`` node field over the nodes of ``partition``."""
    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "--noheader", "--format", field]
    if partition:
        cmd += ["--partition", partition]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    counts = [int(tok.rstrip("+")) for tok in out.split() if tok.rstrip("+").isdigit()]
    return max(counts) if counts else None


def largest_node_cpus(partition: str | None = None) -> int | None:
    """The most CPUs of any node in ``partition`` (None: every partition), from ``sinfo``; None
    when sinfo is missing or fails (then the configured thread count is used as it is)."""
    return _largest("%c", partition)


def largest_node_memory(partition: str | None = None) -> int | None:
    """The most memory (MB) of any node in ``partition``, from ``sinfo``; None when unknown."""
    return _largest("%m", partition)


def threads_for(wanted: int, partition: str | None) -> int:
    """``wanted`` threads, capped at the CPUs of the largest node of ``partition`` (a job asking
    for more CPUs than any node has would stay pending forever)."""
    cpus = largest_node_cpus(partition)
    return max(1, min(wanted, cpus)) if cpus else max(1, wanted)


def check_memory(key: str, mem_mb: int, partition: str | None) -> int:
    """``mem_mb`` when some node of ``partition`` has that much memory.

    Raises:
        ConfigError: naming ``key`` when no node of the partition has ``mem_mb`` MB.
    """
    largest = largest_node_memory(partition)
    if largest is not None and mem_mb > largest:
        from wsss.errors import ConfigError

        raise ConfigError(f"config key {key}: {mem_mb} MB is more than any node of partition "
                          f"{partition or '(default)'} has ({largest} MB)")
    return mem_mb
