"""Atomic file writing: an artifact exists whole or not at all.

Every artifact is written to a temporary sibling (``.<name>.<random>.tmp``) and renamed onto its
path only when complete. The temporary file gets the mode a plain ``open()`` would give (0666
minus the process umask; directories 0777 minus it), not ``mkstemp``'s private 0600, so a team
shares a results folder as its umask says. A full disk becomes one message naming the file
(:class:`wsss.errors.DataError` "no space left on device while writing <path>") and the
temporary file is removed; :func:`remove_stale_temps` clears what a killed process left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wsss.errors import DataError

# Below this many free bytes a failed write is taken for a full disk even when the library
# reports it otherwise (torch.save: "enforce fail at inline_container.cc ... unexpected pos").
_NEARLY_FULL = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Free bytes available to this user on the file system holding ``directory``."""
    return shutil.disk_usage(directory).free


def is_disk_full(exc: BaseException, directory: str | os.PathLike[str]) -> bool:
    """Whether ``exc`` (or an exception it was raised from) comes from a full disk: ENOSPC /
    EDQUOT, HDF5's "errno = 28" text, or any write error while less than 1 MiB is free."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(seen)
        if "No space left on device" in text or "errno = 28" in text:
            return True
        seen = seen.__cause__ or seen.__context__
    try:
        return isinstance(exc, OSError | RuntimeError) and free_bytes(directory) < _NEARLY_FULL
    except OSError:
        return False


def disk_full_error(path: str | os.PathLike[str], exc: BaseException | None = None) -> DataError:
    """The one-line error of a full disk while writing ``path``."""
    where = Path(path).parent
    try:
        free = f" ({free_bytes(where) / 2**20:.1f} MiB free on {where})"
    except OSError:
        free = ""
    return DataError(f"no space left on device while writing {path}{free}")


@contextlib.contextmanager
def _atomic(path: str | os.PathLike[str], folder: bool) -> Iterator[Path]:
    """The temporary sibling of ``path`` (a file or a folder), renamed onto ``path`` only if the
    block succeeds, removed otherwise; a full disk becomes its one-line DataError."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = {"prefix": f".{path.name}.", "suffix": ".tmp", "dir": path.parent}
    if folder:
        tmp = Path(tempfile.mkdtemp(**names))
    else:
        fd, name = tempfile.mkstemp(**names)
        os.close(fd)
        tmp = Path(name)
    try:
        os.chmod(tmp, (0o777 if folder else 0o666) & ~_umask())
        yield tmp
        if folder and path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException as exc:
        if folder:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, DataError) and is_disk_full(
                exc, path.parent):
            raise disk_full_error(path) from exc
        raise


def atomic_path(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    Raises:
        DataError: "no space left on device while writing <path>" when the disk is full (the
            temporary file is removed either way).
    """
    return _atomic(path, folder=False)


def atomic_dir(path: str | os.PathLike[str]) -> contextlib.AbstractContextManager[Path]:
    """Yield a temporary sibling directory; swap it in for ``path`` only if the block succeeds.

    Raises:
        DataError: "no space left on device while writing <path>" when the disk is full (the
            temporary directory is removed either way).
    """
    return _atomic(path, folder=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def remove_stale_temps(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and directories an atomic write of ``path`` left when its
    process was killed (``.<name>.*.tmp`` next to it); returns what was removed.

    Only call it where no other process writes ``path`` (a stage, for its own outputs).
    """
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    return removed
