"""Splitting a per-image stage into shard jobs whose merged output equals one job's.

``cluster.shards: N`` makes ``extract_cams``, ``make_pseudo_masks`` and ``predict`` run as N
jobs (Snakemake can place them on N GPUs or cluster nodes) and a ``merge_shards`` job. A shard
gets whole batches of same-size images (the batches one job would form, dealt out round-robin),
so every network forward sees exactly the batch it would see in one job and the merged store is
identical to one job's; :func:`merge_stores` then writes the shards' images in split order.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from wsss.data.datasets import size_batches
from wsss.errors import DataError
from wsss.io.atomic import atomic_path
from wsss.io.h5store import (
    FORMAT_VERSION,
    ChunkRow,
    cap_metadata_cache,
    chunk_row,
    write_chunk_index,
)

T = TypeVar("T")


def parse_shard(value: Any) -> tuple[int, int] | None:
    """``[i, n]`` (shard i of n, 0-based) as a checked tuple; None for no sharding.

    Raises:
        ValueError: for anything but 0 <= i < n.
    """
    if value is None:
        return None
    i, n = (int(v) for v in value)
    if not 0 <= i < n:
        raise ValueError(f"shard {i} of {n} does not exist")
    return i, n


def shard_records(records: Sequence[T], batch_size: int, shard: tuple[int, int] | None
                  ) -> list[T]:
    """The records of shard ``(i, n)``: the batches :func:`size_batches` forms over all
    records, every n-th from the i-th, in record order (all records when ``shard`` is None).

    Re-batching the result with the same ``batch_size`` gives back exactly those batches.
    """
    if shard is None or shard[1] == 1:
        return list(records)
    i, n = shard
    batches = size_batches(list(records), batch_size)
    mine = sorted(j for batch in batches[i::n] for j in batch)
    return [records[j] for j in mine]


def merge_stores(parts: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str],
                 ids: Sequence[str]) -> None:
    """Write one store holding every image of the shard stores ``parts``, in the order of
    ``ids`` (the split), atomically; attributes and meta are the shards' (identical).

    Raises:
        DataError: naming the file when the shards disagree (kind, classes, meta), an image is
            in two shards, or an id of the split is in none.
    """
    handles = [h5py.File(p, "r") for p in parts]
    for f in handles:  # each would grow to 32 MiB of metadata otherwise
        cap_metadata_cache(f)
    try:
        first = handles[0]
        attrs = {k: first.attrs[k] for k in ("kind", "classes", "meta")}
        where: dict[str, h5py.File] = {}
        for path, f in zip(parts, handles, strict=True):
            for key, value in attrs.items():
                if f.attrs[key] != value:
                    raise DataError(f"shard {path} has another {key} than {parts[0]}")
            for ident in f["ids"].asstr()[()]:
                if ident in where:
                    raise DataError(f"image {ident!r} is in two shards ({path})")
                where[ident] = f
        missing = [i for i in ids if i not in where]
        if missing or len(where) != len(ids):
            raise DataError(f"the shards of {output} lack {len(missing)} image(s) of the split "
                            f"(e.g. {missing[:1]}) or hold others")
        # the label maps the shards index (H5Writer's /chunk_index), re-indexed at their
        # places in the merged file
        indexed = {f: {name for name, table in f["chunk_index"].items()
                       if (table[()][:, 0] >= 0).any()}
                   for f in handles if "chunk_index" in f}
        rows: dict[str, dict[str, ChunkRow]] = {}
        with atomic_path(output) as tmp, h5py.File(tmp, "w") as out:
            cap_metadata_cache(out)
            out.attrs.update({**attrs, "format_version": FORMAT_VERSION})
            images = out.create_group("images")
            for ident in ids:
                source = where[ident]
                source.copy(source["images"][ident], images, name=ident)
                copied = images[ident]
                for name in indexed.get(source, set()) & copied.keys():
                    row = chunk_row(copied[name].id)
                    if row is not None:
                        rows.setdefault(name, {})[ident] = row
            out.create_dataset("ids", data=np.array(list(ids), dtype=object),
                               dtype=h5py.string_dtype())
            write_chunk_index(out, list(ids), rows)
    finally:
        for f in handles:
            f.close()


def merge_png_dirs(parts: Sequence[str | os.PathLike[str]], output: Path) -> int:
    """Move the PNGs of the shard folders ``parts`` into ``output`` (a fresh folder); returns
    how many. Raises DataError when two shards wrote the same file."""
    count = 0
    for part in parts:
        for png in sorted(Path(part).glob("*.png")):
            target = output / png.name
            if target.exists():
                raise DataError(f"{png.name} is in two shards ({part})")
            shutil.copyfile(png, target)
            count += 1
    return count
