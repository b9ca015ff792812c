"""Data-parallel training over several processes (one per GPU) under ``torchrun``.

A trained stage runs as ``cluster.gpus_per_job`` processes when that is above 1:
``python -m wsss <stage>`` re-launches itself under ``torchrun --standalone`` (:func:`launch`),
and each process (rank) trains on its slice of every batch. What stays the same whatever the
number of processes, so the setting is execution-only (it reruns nothing, and a resume state is
valid across it):

* the stage's ``batch_size`` is the **global** batch (the papers' number); each of the W
  processes takes ``batch_size / W`` consecutive images of it (:func:`process_slice`), so the
  union of the processes' batches at a step is the batch one process would see;
* the gradients are averaged over the processes after every backward (:func:`average_gradients`:
  one ``all_reduce`` of the flattened gradients, the arithmetic of PyTorch's
  ``DistributedDataParallel``), so every process applies the same update as one process with
  the whole batch (the per-process losses are means over equal slices);
* the loss terms are averaged and the learning counts summed over the processes
  (:func:`all_mean` / :func:`all_sum`) before the non-finite check and the metrics, so every
  process stops at the same step and the metrics are the whole batch's;
* only rank 0 writes (resume state, model, metrics, log file) and runs the end-of-epoch held-out
  evaluation; every rank restores the same resume state.

What differs: BatchNorm layers that train (the segmenter's) normalise each process's slice, as
DDP without SyncBatchNorm; the classifier (frozen BatchNorm) and IRN (frozen backbone,
GroupNorm) are unaffected. Processes use NCCL on CUDA (rank r on the r-th visible GPU) and gloo
on the CPU (for tests).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Sequence

import torch

from wsss.errors import ConfigError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the training processes: ``rank`` in ``[0, size)``,
    ``local_rank`` on this node (the index of its GPU). One process: rank 0 of size 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes."""
        return self.rank == 0


def current_world() -> World:
    """The world torchrun set up for this process (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), or
    a single process when those are not set."""
    if "WORLD_SIZE" not in os.environ:
        return World()
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", os.environ["RANK"])))


def init_process_group(world: World, device: str) -> torch.device | None:
    """Join the process group of ``world``: NCCL when the stage's ``device`` (the config's
    auto | cpu | cuda) resolves to CUDA, else gloo; returns this rank's CUDA device (the
    ``local_rank``-th visible GPU), or None on the CPU. A no-op for one process."""
    if world.size == 1 or torch.distributed.is_initialized():
        return None
    cuda = device != "cpu" and torch.cuda.is_available()
    rank_device = None
    if cuda:
        rank_device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(rank_device)
    torch.distributed.init_process_group("nccl" if cuda else "gloo")
    log.info("rank %d of %d (%s)", world.rank, world.size, rank_device or "cpu, gloo")
    return rank_device


def per_process_batch(batch_size: int, world: World, key: str) -> int:
    """The images each process takes of a global batch of ``batch_size``.

    Raises:
        ConfigError: naming ``key`` when ``batch_size`` does not divide by the process count.
    """
    if batch_size % world.size:
        raise ConfigError(f"config key {key}: {batch_size} is not divisible by the "
                          f"{world.size} processes of cluster.gpus_per_job (each process takes "
                          f"an equal slice of the global batch)")
    return batch_size // world.size


def process_slice(order: Sequence[int], batch_size: int, world: World) -> list[int]:
    """This process's part of a data order: of each global batch of ``batch_size`` consecutive
    indices (whole batches only), the ``rank``-th slice of ``batch_size / size``."""
    share = batch_size // world.size
    out: list[int] = []
    for start in range(0, len(order) - batch_size + 1, batch_size):
        first = start + world.rank * share
        out.extend(order[first:first + share])
    return out


def _reduce(values: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``values`` over the processes in place (on this rank's GPU under NCCL, which
    reduces CUDA tensors only) and return it on its own device."""
    if world.size == 1:
        return values
    if torch.distributed.get_backend() == "nccl" and values.device.type != "cuda":
        on_gpu = values.cuda()
        torch.distributed.all_reduce(on_gpu)
        return values.copy_(on_gpu)
    torch.distributed.all_reduce(values)
    return values


def all_mean(values: dict[str, float], world: World) -> dict[str, float]:
    """The mean of each value over the processes (the same keys on every process)."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    total = _reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64), world)
    return dict(zip(keys, (total / world.size).tolist(), strict=True))


def all_sum(values: dict[str, float], world: World) -> dict[str, float]:
    """The sum of each value over the processes (the same keys on every process)."""
    if world.size == 1 or not values:
        return values
    keys = sorted(values)
    total = _reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64), world)
    return dict(zip(keys, total.tolist(), strict=True))


def average_gradients(params: Iterable[torch.nn.Parameter], world: World) -> None:
    """Replace every gradient by its mean over the processes (one ``all_reduce``).

    A parameter that got a gradient on some process but not on this one gets zeros here first,
    and one that got none anywhere keeps ``None`` (its optimizer skips it, as with one process).
    """
    if world.size == 1:
        return
    params = [p for p in params if p.requires_grad]
    has = _reduce(torch.tensor([p.grad is not None for p in params], dtype=torch.int32),
                  world).tolist()
    used = [p for p, n in zip(params, has, strict=True) if n]
    for p in used:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if not used:
        return
    flat = torch.cat([p.grad.reshape(-1).float() for p in used])
    _reduce(flat, world).div_(world.size)
    offset = 0
    for p in used:
        n = p.grad.numel()
        p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


def broadcast_weights(module: torch.nn.Module, world: World) -> None:
    """Give every process rank 0's parameters and buffers (after a restore, before training)."""
    if world.size == 1:
        return
    for tensor in module.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)


def launch(argv: Sequence[str], processes: int) -> bool:
    """Run ``python -m wsss <argv>`` as ``processes`` ranks under torchrun's elastic agent
    (``torchrun --standalone``: a local rendezvous on a free port) and wait for them; returns
    whether every rank succeeded. The ranks inherit this process's stdout and stderr."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    launcher = parse_args(["--standalone", f"--nproc-per-node={processes}", "-m", "wsss"])
    launcher.training_script_args = list(argv)  # not parsed by torchrun (its own --log-dir...)
    log.info("training with %d processes: torchrun --standalone --nproc-per-node=%d -m wsss %s",
             processes, processes, " ".join(argv))
    try:
        run(launcher)
    except ChildFailedError as exc:
        log.error("%s", exc)
        return False
    return True
