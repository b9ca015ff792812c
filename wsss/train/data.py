"""The batches of one training epoch: a seeded order that a resume can start part-way through.

:func:`epoch_loader` is the loader factory the trained stages hand to :func:`wsss.train.loop.train`:
for epoch ``e`` starting at step ``s`` it yields the batches of the order of ``(seed, e)`` from
batch ``s`` on, so a run resumed after ``s`` steps sees exactly the batches the uninterrupted run
saw next (see :mod:`wsss.train.rng` for the seeding).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from wsss.train.distributed import World, current_world, per_process_batch, process_slice
from wsss.train.rng import epoch_generator, seed_worker


class EpochDataset(Protocol):
    """A map-style data set whose augmentation depends on (seed, ``epoch``, index)."""

    epoch: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int): ...  # noqa: ANN204


class EpochSampler(Sampler[int]):
    """A shuffled order that depends only on (seed, epoch), in whole global batches of
    ``batch_size``, from batch ``start_step`` on (for resuming). Under torchrun each process
    takes its slice of every global batch (:func:`wsss.train.distributed.process_slice`); one
    process takes the whole batches."""

    def __init__(self, n: int, seed: int, epoch: int, batch_size: int, start_step: int = 0,
                 world: World | None = None) -> None:
        world = world or World()
        order = torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()
        share = batch_size // world.size
        self.order = process_slice(order, batch_size, world)[start_step * share:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


def epoch_loader(dataset: EpochDataset, batch_size: int, seed: int, epoch: int, start_step: int,
                 num_workers: int, pin_memory: bool = False) -> DataLoader:
    """The full batches (``drop_last``) of epoch ``epoch`` from batch ``start_step`` on.

    Sets ``dataset.epoch``; the order is :class:`EpochSampler`'s, the loader's generator and
    worker seeds come from (seed, epoch) (:mod:`wsss.train.rng`), so neither a resume nor
    ``num_workers`` changes a batch. ``batch_size`` is the global batch: under torchrun
    (:mod:`wsss.train.distributed`) this process loads its ``batch_size / processes`` images of
    each one.

    Raises:
        ConfigError: when ``batch_size`` does not divide by the number of processes.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"expected a torch Dataset, got {type(dataset).__name__}")
    world = current_world()
    share = per_process_batch(batch_size, world, "batch_size")
    dataset.epoch = epoch
    sampler = EpochSampler(len(dataset), seed, epoch, batch_size, start_step, world)
    return DataLoader(dataset, batch_size=share, sampler=sampler, drop_last=True,
                      num_workers=num_workers, pin_memory=pin_memory,
                      generator=epoch_generator(seed, epoch), worker_init_fn=seed_worker)


def check_enough_images(n_images: int, batch_size: int, where: str, key: str) -> None:
    """Refuse a split with fewer images than one batch (training would take no step).

    Raises:
        DataError: naming ``where`` (the split file) and the config ``key`` of the batch size.
    """
    if n_images < batch_size:
        from wsss.errors import DataError

        raise DataError(f"{where}: {n_images} training images is fewer than {key} = "
                        f"{batch_size}")
