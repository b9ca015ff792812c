"""Checkpoint files: trained networks (``model.pt``) and resume states (``_state/last.pt``).

Both are ``torch.save`` dicts of tensors and builtins (str, int, float, list, dict), written
atomically (a kill mid-write leaves the previous file) and read with ``weights_only=True``, so
loading never runs pickled code.

A ``model.pt`` is ``{"state_dict": {name: tensor}, "meta": {...}}``; its meta records what it is:

* ``kind``: ``classifier`` | ``irn`` | ``segmenter`` (:data:`KINDS`), checked by every loader so
  that a model file given in the wrong place is named in one line;
* ``method``: the classifier method (``cam``, ``cobra``), ``edge`` for IRN's boundary branch, the
  segmenter model (``deeplabv3plus``, ``largefov``);
* ``classes``: the class names, background first;
* ``config_hash``: the fingerprint of the settings it was trained with;

plus whatever its loader needs to rebuild the network (config section, input normalisation).

A resume state is any dict carrying a ``fingerprint``; :func:`load_state` returns it only when
the fingerprint matches (:class:`wsss.train.loop.ResumableRun` defines its content).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from wsss.errors import DataError
from wsss.io.atomic import atomic_path

log = logging.getLogger(__name__)

KINDS = ("classifier", "irn", "segmenter")
REQUIRED_META = ("kind", "method", "classes", "config_hash")


def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def save_model(path: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor],
               meta: Mapping[str, Any]) -> None:
    """Write ``{"state_dict", "meta"}`` atomically, the tensors detached and on the CPU.

    Raises:
        ValueError: when ``meta`` lacks one of :data:`REQUIRED_META` or names an unknown kind
            (a programming error).
    """
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise ValueError(f"model meta lacks {missing}")
    if meta["kind"] not in KINDS:
        raise ValueError(f"model kind {meta['kind']!r} is not one of {KINDS}")
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        torch.save({"state_dict": tensors, "meta": dict(meta)}, tmp)


def load_model(path: str | os.PathLike[str], kind: str, classes: Sequence[str] | None = None,
               method: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a ``model.pt`` written by :func:`save_model` and check that it holds a ``kind`` (and,
    when given, one trained for ``classes`` with ``method``) with finite weights.

    Returns:
        ``(state_dict, meta)`` with the tensors on the CPU.

    Raises:
        DataError: naming the file when it is missing or unreadable, or when it holds another
            kind of network ("<file> holds a segmenter (deeplabv3plus), expected a classifier"),
            another method or other classes than the config, or non-finite weights.
    """
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r} is not one of {KINDS}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found (expected {_article(kind)})")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable model file ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("meta"), dict) \
            or not isinstance(ckpt.get("state_dict"), dict):
        raise DataError(f"{path}: not a wsss model file (no state_dict and meta), expected "
                        f"{_article(kind)}")
    meta = ckpt["meta"]
    found = meta.get("kind")
    if found is None:
        raise DataError(f"{path} records no kind of network (written by an older version?), "
                        f"expected {_article(kind)}: rerun the stage that makes it")
    if found != kind:
        raise DataError(f"{path} holds {_article(str(found))} ({meta.get('method', '?')}), "
                        f"expected {_article(kind)}")
    if method is not None and meta.get("method") != method:
        raise DataError(f"{path} holds a {meta.get('method')!r} {kind}, the config asks for "
                        f"{method!r}: rerun the stage that trains it")
    if classes is not None and list(meta.get("classes", [])) != list(classes):
        raise DataError(f"{path} holds {_article(kind)} for classes {meta.get('classes')}, the "
                        f"config has {list(classes)}")
    state = ckpt["state_dict"]
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"{path} holds non-finite weights ({len(bad)} tensor(s), e.g. "
                        f"{bad[0]!r}): it comes from a diverged run; rerun the stage that makes "
                        f"it with a smaller learning rate")
    return state, meta


def save_state(path: str | os.PathLike[str], state: Mapping[str, Any]) -> None:
    """Write a resume state atomically (a kill mid-write leaves the previous state)."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_state(path: str | os.PathLike[str], fingerprint: str) -> dict[str, Any] | None:
    """The resume state at ``path`` if it exists and carries ``fingerprint``, else None.

    An unreadable state is not an error (training starts over, with a warning); nor is a state
    made with other settings (an info line).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any corruption: start over, said in the log)
        log.warning("ignoring unreadable resume state %s (%s: %s); starting over", path,
                    type(exc).__name__, exc)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.info("resume state %s was made with other settings or code; starting over", path)
        return None
    return state
