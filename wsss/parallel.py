"""Ordered parallel map over images in worker processes, with errors that name the image.

Used by the CPU-bound per-image stages (IR-label CRFs, the final mask CRF, the test-time CRF).
Workers start with forkserver (spawn where unavailable): forking a parent that already runs
torch/BLAS threads can deadlock. Results come back in task order, so a parallel run writes
exactly what a serial one does, and the pool is always shut down.

Errors (serial or parallel alike): an expected failure (:class:`wsss.errors.WsssError`: a bad
file or value) is re-raised as the same one-line error with the image named in front; any other
exception is re-raised as it is, with a note naming the image (``while labelling image 'x'``),
so its traceback, and in the parent the worker's own traceback (``concurrent.futures`` chains it
as ``__cause__``), reaches the stage's log. A dead worker (killed, e.g. out of memory) becomes a
DataError naming the images it may have been working on.
"""

from __future__ import annotations

import itertools
import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Protocol, TypeVar

from wsss.errors import DataError, WsssError

T = TypeVar("T")
R = TypeVar("R")


class HasId(Protocol):
    """A task that names its image (for error messages)."""

    id: str


_WORKER: tuple[Callable[[Any], Any], str] | None = None


def task_id(task: Any) -> str:
    """The image a task names (its ``id``), or its repr."""
    return str(getattr(task, "id", repr(task)))


def apply_named(fn: Callable[[T], R], task: T, what: str) -> R:
    """``fn(task)``, with the task's image named in any error (see the module docstring).

    Raises:
        WsssError: the same class, message prefixed ``<what> image '<id>': ``.
        Exception: any other, unchanged but for a note ``while <what> image '<id>'``.
    """
    try:
        return fn(task)
    except WsssError as exc:
        raise type(exc)(f"{what} image {task_id(task)!r}: {exc}") from exc
    except Exception as exc:
        exc.add_note(f"while {what} image {task_id(task)!r}")
        raise


def _init_worker(fn: Callable[[Any], Any], what: str) -> None:
    """Pool initializer: keep the worker function and stop BLAS threads oversubscribing cores."""
    global _WORKER
    _WORKER = (fn, what)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover (a scikit-learn dependency)
        pass
    torch = sys.modules.get("torch")  # only if already imported (preloaded): no import cost
    if torch is not None:
        torch.set_num_threads(1)


def _run_chunk(tasks: list[Any]) -> list[Any]:
    """Worker entry point: apply the worker function to a chunk of tasks in order."""
    if _WORKER is None:
        raise RuntimeError("worker process not initialised (call ordered_map)")
    fn, what = _WORKER
    return [apply_named(fn, t, what) for t in tasks]


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """A start method that never forks a possibly multi-threaded parent (STEGO #16 hangs)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        # Import the heavy modules once in the server; workers fork from it already loaded.
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], workers: int = 1,
                chunk_size: int | None = None, preload: Sequence[str] = (),
                what: str = "processing") -> Iterator[R]:
    """Yield ``fn(task)`` for every task in order, computed in ``workers`` processes.

    ``fn`` must be picklable (a module-level function or an object with ``__call__``); if it
    has a ``close()`` method it is called before the pool starts, so that open files (HDF5
    handles) are never handed to another process. Tasks need an ``id`` attribute for error
    messages: errors name the image as the module docstring says (``what``: the verb, e.g.
    ``labelling``). At most ``4 * workers`` chunks are in flight (queued ahead, so a slow chunk
    at the head does not idle the other workers). On any error, or when the consumer stops early,
    pending chunks are cancelled and the pool is shut down. ``workers <= 1`` runs in-process.
    ``tasks`` may be a lazy iterator: it is consumed chunk by chunk as workers free up, so the
    parent can prepare the next tasks (e.g. GPU/torch work) while the workers run.
    """
    if isinstance(tasks, Sequence):
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                yield apply_named(fn, t, what)
            return
        workers = min(workers, len(tasks))
        size = chunk_size or max(1, min(4, len(tasks) // (workers * 8)))
    else:
        size = chunk_size or 4
        if workers <= 1:
            for t in tasks:
                yield apply_named(fn, t, what)
            return
    source = iter(tasks)
    todo = iter(lambda: list(itertools.islice(source, size)), [])
    close = getattr(fn, "close", None)
    if callable(close):
        close()
    pool = ProcessPoolExecutor(workers, mp_context=_context(preload), initializer=_init_worker,
                               initargs=(fn, what))
    pending: deque[tuple[list[T], Future[list[R]]]] = deque()
    try:
        for chunk in todo:
            pending.append((chunk, pool.submit(_run_chunk, chunk)))
            if len(pending) >= 4 * workers:
                break
        while pending:
            chunk, fut = pending.popleft()
            try:
                results = fut.result()
            except BrokenProcessPool as exc:  # killed (e.g. out of memory) or crashed
                busy = [task_id(t) for c in [chunk, *(c for c, _ in pending)] for t in c]
                more = f" (and {len(busy) - 8} more)" if len(busy) > 8 else ""
                raise DataError(f"a worker process died while {what} one of the images "
                                f"{', '.join(map(repr, busy[:8]))}{more}: {exc}") from exc
            nxt = next(todo, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(_run_chunk, nxt)))
            yield from results
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
