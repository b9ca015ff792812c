"""Which GPU a stage runs on when a workstation has several.

Snakemake runs up to N GPU jobs at once when told ``--resources gpu=N`` (every GPU rule asks for
``gpu=1``), but it never says which device a job should use: without help every job would pick
GPU 0. So a GPU stage claims one device itself before CUDA starts: it takes the first device of
the visible list whose lock file it can lock (``fcntl.flock``, released by the kernel when the
process ends, even on SIGKILL), sets ``CUDA_VISIBLE_DEVICES`` to it, and waits when all are
taken. Under SLURM (or with ``CUDA_VISIBLE_DEVICES`` set to one device) there is nothing to
choose. A training job of ``cluster.gpus_per_job`` processes claims that many devices at once.
The lock files are per machine and user (``$TMPDIR/wsss-gpu-locks-<uid>/``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

# Stages that run a network on their device (their rules ask for gpu=1), and those of them that
# train: cluster.gpus_per_job processes under torchrun (wsss.train.distributed), gpu=N. Imported
# by the Snakefile at parse time, so this module does not import torch.
GPU_STAGES = frozenset({"train_classifier", "extract_cams", "train_irn", "make_pseudo_masks",
                        "train_segmentation", "predict", "predict_cosa"})
TRAINING_STAGES = frozenset({"train_classifier", "train_irn", "train_segmentation"})


def visible_devices() -> list[str]:
    """The GPUs this process may use: the entries of ``CUDA_VISIBLE_DEVICES`` when it is set
    (an empty value: none), else one index per GPU ``nvidia-smi -L`` lists (none without it)."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in out.splitlines()
                                            if ln.startswith("GPU "))]


def default_lock_dir() -> Path:
    """Where the per-device locks of this machine and user live."""
    return Path(tempfile.gettempdir()) / f"wsss-gpu-locks-{os.getuid()}"


@contextlib.contextmanager
def claim_device(devices: list[str] | None = None, lock_dir: Path | None = None,
                 poll_seconds: float = 1.0, count: int = 1) -> Iterator[str | None]:
    """Claim ``count`` free devices of ``devices`` (default :func:`visible_devices`) for the
    block and set ``CUDA_VISIBLE_DEVICES`` to them; yields them comma-joined, or None when there
    is none (a training job of several processes then runs them on the CPU).

    With no more devices than ``count`` nothing is locked (the scheduler gave this job its
    devices). With more, the first unlocked ones are taken; when fewer than ``count`` are free
    the call waits, polling every ``poll_seconds``, and says so once in the log.

    Raises:
        ConfigError: ``count`` devices are asked for and fewer are visible.
    """
    devices = visible_devices() if devices is None else devices
    if devices and len(devices) < count:
        from wsss.errors import ConfigError

        raise ConfigError(f"config key cluster.gpus_per_job: {count} processes need {count} "
                          f"GPUs, {len(devices)} visible ({','.join(devices)})")
    if len(devices) <= count:
        yield ",".join(devices) if devices else None
        return
    lock_dir = lock_dir or default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        held = []
        for device in devices:
            handle = open(lock_dir / f"gpu-{device}.lock", "a+")  # noqa: SIM115 (held below)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            held.append((device, handle))
            if len(held) == count:
                break
        if len(held) == count:
            claimed = ",".join(d for d, _ in held)
            os.environ["CUDA_VISIBLE_DEVICES"] = claimed
            log.info("using GPU %s of %s (CUDA_VISIBLE_DEVICES=%s; locks in %s)", claimed,
                     ",".join(devices), claimed, lock_dir)
            try:
                yield claimed
            finally:
                _release(held)
            return
        _release(held)
        if not waited:
            log.info("fewer than %d of the %d GPUs (%s) are free of other wsss jobs; waiting",
                     count, len(devices), ",".join(devices))
            waited = True
        time.sleep(poll_seconds)


def _release(held: list) -> None:
    for _, handle in held:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
