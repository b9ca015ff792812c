"""Per-image map stores in HDF5: one group per image, chunked compressed datasets, explicit ids.

Layout::

    /            attrs: kind, classes (JSON), meta (JSON: scales, flip, method, config hash ...)
    /ids         UTF-8 strings, the split order (groups iterate alphabetically, ids do not)
    /images/<id> attrs: size = (H, W) (the image as displayed), optional infer_size = (h, w)
                 (the size the network saw, when the long side was capped: cams stores);
                 datasets: keys (int16 class indices 1..C) and one dataset per map (float16
                 CAMs (K, H, W), uint8 labels, strided maps at the stride-4 grid of infer_size)
    /chunk_index/<name>  int64 (N, 4) in /ids order, one per 2-D uint8 map (the labels): the
                 file offset and byte count of the map's one deflated chunk and its (H, W),
                 -1 where an image has no such map; the training loaders read a label map with
                 one positioned read and an inflate instead of an HDF5 path lookup

Files are written to a temporary sibling and renamed on success (see :class:`H5Writer`).
Readers open the file lazily, so a reader object can be sent to DataLoader workers before use.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from wsss.errors import DataError
from wsss.io.atomic import atomic_path, disk_full_error, free_bytes, is_disk_full

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Free space kept beyond twice an image's raw size before writing it: HDF5 buffers writes and,
# when the disk fills, fails in its destructors and can crash the process (seen with h5py 3.16 on
# a full tmpfs), so the writer stops cleanly before that.
SPACE_RESERVE = 1 << 20


def _compressed(group: h5py.Group, name: str, data: np.ndarray, dtype: Any) -> h5py.Dataset:
    data = np.asarray(data, dtype=dtype)
    if data.size == 0:
        return group.create_dataset(name, data=data)
    return group.create_dataset(name, data=data, chunks=data.shape, compression="gzip",
                                compression_opts=4, shuffle=True)


# HDF5's metadata cache of an open store (group headers, link B-trees of /images); see
# cap_metadata_cache.
METADATA_CACHE_BYTES = 2 * 2**20


def cap_metadata_cache(f: h5py.File, max_bytes: int = METADATA_CACHE_BYTES) -> None:
    """Bound the HDF5 metadata cache of ``f`` to ``max_bytes`` (initial and minimum: the same
    or 1 MiB).

    HDF5's adaptive default lets a reader's cache grow to 32 MiB as it visits the groups of a
    store, and the process's resident memory grows about ten times as much: one reader of a
    50,000-image store reached 306 MB after one pass (58 MB with 2 MiB), two passes over 2,000
    demo seed images 188 MB (61 MB), so a stage's memory grew with the split. Capped, a full
    pass was no slower (158 s against 190 s on the 50,000 images).
    """
    cfg = f.id.get_mdc_config()
    cfg.set_initial_size = True
    cfg.initial_size = max_bytes
    cfg.min_size = min(max_bytes, 2**20)
    cfg.max_size = max_bytes
    f.id.set_mdc_config(cfg)


ChunkRow = tuple[int, int, int, int]


def chunk_row(ds: h5py.h5d.DatasetID) -> ChunkRow | None:
    """A ``/chunk_index`` row of a map written as ``_compressed`` writes it (one chunk of the
    map's shape, shuffle + deflate): (file offset, byte count, H, W) of its chunk when the map
    is a non-empty 2-D uint8 one stored as one unfiltered-mask chunk, else None."""
    shape = ds.shape
    if len(shape) != 2 or not all(shape) or ds.dtype != np.uint8 or ds.get_num_chunks() != 1:
        return None
    info = ds.get_chunk_info(0)
    if info.filter_mask != 0 or info.byte_offset is None:
        return None
    return (int(info.byte_offset), int(info.size), int(shape[0]), int(shape[1]))


def write_chunk_index(f: h5py.File, ids: Sequence[str],
                      rows: dict[str, dict[str, ChunkRow]]) -> None:
    """Write ``/chunk_index/<name>`` (the module's layout) into the open store ``f``: per map
    name of ``rows`` ({name: {image id: :func:`chunk_row`}}) one int64 (len(ids), 4) table in
    the order of ``ids``, -1 where an image has no row. Writers call it last, once every chunk
    has its place (HDF5 does not move an allocated chunk)."""
    if not any(rows.values()):
        return
    group = f.create_group("chunk_index")
    for name, by_id in sorted(rows.items()):
        table = np.full((len(ids), 4), -1, np.int64)
        for k, image_id in enumerate(ids):
            row = by_id.get(image_id)
            if row is not None:
                table[k] = row
        group.create_dataset(name, data=table)


class H5Writer:
    """Writes one store atomically: use as a context manager, call :meth:`add` per image.

    ``/ids`` is the order of :meth:`add`, or ``ids`` when given: then images may be added in
    any order (each written as soon as it is ready, none held back to keep the file in split
    order) and the store is committed only if exactly those images were added.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, classes: list[str],
                 meta: dict[str, Any], ids: Sequence[str] | None = None) -> None:
        self.path, self.kind, self.classes, self.meta = Path(path), kind, classes, meta
        self._ids: list[str] = []
        self._order = None if ids is None else [str(i) for i in ids]
        self._chunks: dict[str, dict[str, ChunkRow]] = {}  # /chunk_index rows, per map name

    def __enter__(self) -> H5Writer:
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        self._dir = tmp.parent
        try:
            self._file = h5py.File(tmp, "w")
            cap_metadata_cache(self._file)
        except BaseException as exc:
            # the atomic context removes the temporary file and names a full disk
            if not self._ctx.__exit__(type(exc), exc, exc.__traceback__):
                raise
        self._file.attrs.update({"kind": self.kind, "classes": json.dumps(self.classes),
                                 "meta": json.dumps(self.meta, sort_keys=True),
                                 "format_version": FORMAT_VERSION})
        self._images = self._file.create_group("images")
        return self

    def add(self, image_id: str, size: tuple[int, int], keys: np.ndarray,
            maps: dict[str, np.ndarray], dtypes: dict[str, Any] | None = None,
            infer_size: tuple[int, int] | None = None) -> None:
        """Store one image: its (H, W), class keys and named maps (float16 unless in ``dtypes``)
        and, when given, the (h, w) at which the network saw it (``infer_size`` attribute).

        Raises:
            DataError: "no space left on device while writing <store>" when the free space is
                below twice the image's raw size plus 1 MiB (checked before writing it).
        """
        dtypes = dtypes or {}
        for name, arr in maps.items():
            values = np.asarray(arr)
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise DataError(f"image {image_id!r}: its {name!r} map holds NaN or inf values; "
                                f"{self.path} is not written (an upstream network diverged?)")
        raw = sum(np.asarray(a).size * np.dtype(dtypes.get(n, np.float16)).itemsize
                  for n, a in maps.items())
        if free_bytes(self._dir) < 2 * raw + SPACE_RESERVE:
            raise disk_full_error(self.path)
        try:
            g = self._images.create_group(image_id)
            g.attrs["size"] = np.asarray(size, dtype=np.int32)
            if infer_size is not None:
                g.attrs["infer_size"] = np.asarray(infer_size, dtype=np.int32)
            g.create_dataset("keys", data=np.asarray(keys, dtype=np.int16))
            for name, arr in maps.items():
                ds = _compressed(g, name, arr, dtypes.get(name, np.float16))
                row = chunk_row(ds.id)
                if row is not None:
                    self._chunks.setdefault(name, {})[image_id] = row
        except (OSError, RuntimeError) as exc:
            if is_disk_full(exc, self._dir):
                raise disk_full_error(self.path) from exc
            raise
        self._ids.append(image_id)

    def _final_ids(self) -> list[str]:
        """``/ids``: the add order, or the ``ids`` given (ValueError unless exactly those)."""
        if self._order is None:
            return self._ids
        if sorted(self._ids) != sorted(self._order):
            missing = sorted(set(self._order) - set(self._ids))
            raise ValueError(f"{self.path}: {len(self._ids)} image(s) added, {len(self._order)} "
                             f"in its ids (e.g. missing {missing[:1]})")
        return self._order

    def __exit__(self, exc_type, exc, tb) -> bool | None:  # noqa: ANN001
        try:
            if exc_type is None:
                ids = self._final_ids()
                self._file.create_dataset("ids", data=np.array(ids, dtype=object),
                                          dtype=h5py.string_dtype())
                write_chunk_index(self._file, ids, self._chunks)
            self._file.close()
        except BaseException as failed:  # nothing is committed; the atomic path names a full disk
            with contextlib.suppress(Exception):
                self._file.close()
            if not self._ctx.__exit__(type(failed), failed, failed.__traceback__):
                raise
            return None
        return self._ctx.__exit__(exc_type, exc, tb)


class H5Reader:
    """Reads a store written by :class:`H5Writer`; opens the file lazily (per process)."""

    def __init__(self, path: str | os.PathLike[str], kind: str | None = None,
                 classes: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"map store not found: {self.path}")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise DataError(f"{self.path}: not a readable HDF5 store ({exc})") from None
        with f:
            if "kind" not in f.attrs or "classes" not in f.attrs or "ids" not in f:
                raise DataError(f"{self.path}: not a wsss map store (no kind, classes or ids)"
                                + (f", expected {kind}" if kind else ""))
            if kind is not None and f.attrs.get("kind") != kind:
                raise DataError(f"{self.path} holds {f.attrs.get('kind')!r}, expected {kind!r}")
            self.kind = str(f.attrs["kind"])
            self.classes: list[str] = json.loads(f.attrs["classes"])
            if classes is not None and self.classes != list(classes):
                raise DataError(f"{self.path} holds {self.kind} for classes {self.classes}, "
                                f"the config has {list(classes)}")
            self.meta: dict[str, Any] = json.loads(f.attrs["meta"])
            self.ids: list[str] = [s.decode() if isinstance(s, bytes) else s for s in f["ids"][()]]
        self._file: h5py.File | None = None
        self._pid = -1
        self._images: h5py.h5g.GroupID | None = None  # read_map: the open /images group
        # read_map's chunk index: per map name its /chunk_index rows (None: none to use), the
        # row of each id, and an unbuffered handle for positioned reads (safe to share with
        # forked workers: pread moves no file position)
        self._index: dict[str, np.ndarray | None] = {}
        self._rows: dict[str, int] = {}
        self._raw: Any = None
        self._lock = threading.Lock()  # loading an index (readers shared by threads)

    def _f(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            cap_metadata_cache(self._file)
            self._pid = os.getpid()
            self._images = None
        return self._file

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._f()["images"]

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, image_id: str, names: list[str] | None = None) -> dict[str, Any]:
        """Return {"size", "keys", <map name>: array} for one image (float maps as float32)."""
        f = self._f()
        if image_id not in f["images"]:
            raise DataError(f"{self.path} has no entry for image {image_id!r}")
        g = f["images"][image_id]
        out: dict[str, Any] = {"size": tuple(int(v) for v in g.attrs["size"]),
                               "keys": g["keys"][()].astype(np.int64)}
        for name in (names if names is not None else [k for k in g if k != "keys"]):
            arr = g[name][()]
            out[name] = arr.astype(np.float32) if arr.dtype == np.float16 else arr
        return out

    def read_map(self, image_id: str, name: str) -> np.ndarray:
        """One map of one image, as :meth:`get` returns it (float16 as float32), for readers of
        one map per item (the training loaders).

        A label map listed in ``/chunk_index`` is one positioned read of its deflated chunk
        and an inflate (~56 us per demo mask against ~177 us for a per-image PNG in
        bench/loader.py's labels-alone pass); other maps take one path lookup through h5py's
        low-level API instead of ``get``'s group, attribute and ``keys`` reads (~2.5x faster
        than ``get``).

        Raises:
            DataError: naming the store and image when the image or map is not in it, or when
                its chunk index entry does not hold the map (the file was changed after it was
                written).
        """
        index = self._chunk_index(name)
        row = self._rows.get(image_id) if index is not None else None
        if row is not None and index[row, 0] >= 0:
            offset, nbytes, h, w = (int(v) for v in index[row])
            data = os.pread(self._raw.fileno(), nbytes, offset)
            try:
                flat = zlib.decompress(data)
            except zlib.error:
                flat = b""
            if len(flat) != h * w:
                raise DataError(f"{self.path}: the chunk index entry of map {name!r} of image "
                                f"{image_id!r} does not hold it (the file was changed after it "
                                f"was written?); rerun the rule that writes it")
            # shuffle is the identity on 1-byte items: the chunk is plain deflate
            return np.frombuffer(bytearray(flat), np.uint8).reshape(h, w)
        return self._read_map_hdf5(image_id, name)

    def _read_map_hdf5(self, image_id: str, name: str) -> np.ndarray:
        """read_map through HDF5 (maps without a chunk index entry): one path lookup."""
        f = self._f()
        if self._images is None:
            self._images = h5py.h5g.open(f.id, b"images")
        try:
            ds = h5py.h5d.open(self._images, f"{image_id}/{name}".encode())
        except KeyError:
            if image_id not in f["images"]:
                raise DataError(f"{self.path} has no entry for image {image_id!r}") from None
            raise DataError(f"{self.path} has no map {name!r} for image {image_id!r}") from None
        arr = np.empty(ds.shape, ds.dtype)
        ds.read(h5py.h5s.ALL, h5py.h5s.ALL, arr)
        return arr.astype(np.float32) if arr.dtype == np.float16 else arr

    def _chunk_index(self, name: str) -> np.ndarray | None:
        """``/chunk_index/<name>`` (loaded once per open), or None when the store has none for
        the map or it does not match the file: its first, middle and last entries are checked
        against HDF5's own chunk table, and a mismatch (a store rewritten by another tool, e.g.
        h5repack) is logged once and the map read through HDF5 instead. Loading it opens the
        handle for positioned reads and checks that it is the file HDF5 has open (not one
        renamed over it since)."""
        if name in self._index:
            return self._index[name]
        with self._lock:
            if name in self._index:
                return self._index[name]
            f = self._f()
            rows = None
            if "chunk_index" in f and name in f["chunk_index"]:
                rows = f["chunk_index"][name][()]
                if rows.shape == (len(self.ids), 4) and self._index_matches(rows, name):
                    self._open_raw(f)
                    self._rows = self._rows or {i: k for k, i in enumerate(self.ids)}
                else:
                    log.warning("%s: /chunk_index/%s does not match the file (changed after it "
                                "was written?); its %r maps are read through HDF5", self.path,
                                name, name)
                    rows = None
            self._index[name] = rows
            return rows

    def _open_raw(self, f: h5py.File) -> None:
        """Open the unbuffered handle of read_map's positioned reads on the file that ``f``
        has open (DataError if the path now names another file)."""
        if self._raw is not None:
            return
        raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 (closed by close)
        same, held = os.fstat(raw.fileno()), os.fstat(f.id.get_vfd_handle())
        if (same.st_dev, same.st_ino) != (held.st_dev, held.st_ino):
            raw.close()
            raise DataError(f"{self.path} was replaced while it was being read; rerun the rule")
        self._raw = raw

    def _index_matches(self, rows: np.ndarray, name: str) -> bool:
        """Whether the first, middle and last rows of a chunk index agree with HDF5's chunk
        table (offset, byte count and shape)."""
        images = self._f()["images"]
        for i in sorted({0, len(rows) // 2, len(rows) - 1}) if len(rows) else []:
            if rows[i, 0] < 0:
                continue
            try:
                row = chunk_row(images[self.ids[i]][name].id)
            except KeyError:
                return False
            if row != tuple(int(v) for v in rows[i]):
                return False
        return True

    def infer_size(self, image_id: str) -> tuple[int, int]:
        """The (h, w) at which the network saw an image: its ``infer_size`` attribute, or its
        ``size`` when the store has none (the image was not resized)."""
        f = self._f()
        if image_id not in f["images"]:
            raise DataError(f"{self.path} has no entry for image {image_id!r}")
        attrs = f["images"][image_id].attrs
        value = attrs["infer_size"] if "infer_size" in attrs else attrs["size"]
        return int(value[0]), int(value[1])

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for image_id in self.ids:
            yield image_id, self.get(image_id)

    def close(self) -> None:
        """Close the underlying file if open (a later read reopens it and reloads its chunk
        index)."""
        self._images = None
        self._index, self._rows = {}, {}
        if self._raw is not None:
            self._raw.close()
            self._raw = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"], state["_images"], state["_raw"] = None, -1, None, None
        state["_index"], state["_rows"], state["_lock"] = {}, {}, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
