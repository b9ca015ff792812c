"""Stable serialisation and hashing of config sections (params, fingerprints, artifact attrs).

Kept apart from :mod:`wsss.config` so that stages depending on it do not rerun when the
config loader changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def as_params(section: Any) -> str:
    """Serialise a config section as sorted JSON, the form stages receive through ``params:``."""
    return json.dumps(section, sort_keys=True, separators=(",", ":"))


def config_hash(section: Any) -> str:
    """Return a short stable hash of a config section (stored in artifacts and resume state)."""
    return hashlib.sha256(as_params(section).encode()).hexdigest()[:16]


# Settings that change how a stage runs, never what it computes: they are passed to the stage
# outside the rerun-tracked params and left out of resume fingerprints, so moving a run to a
# node with other cores or editing the checkpoint frequency reruns and retrains nothing.
EXECUTION_KEYS: frozenset[str] = frozenset({"num_workers", "save_every_steps"})


def without_execution(section: Any) -> Any:
    """A config section (or any nesting of dicts) without its execution-only keys."""
    if isinstance(section, dict):
        return {k: without_execution(v) for k, v in section.items() if k not in EXECUTION_KEYS}
    return section


def only_execution(section: Any) -> Any:
    """The execution-only keys of a config section, keeping its nesting (empty dicts dropped)."""
    if not isinstance(section, dict):
        return None
    out = {}
    for key, value in section.items():
        if key in EXECUTION_KEYS:
            out[key] = value
        elif isinstance(value, dict):
            inner = only_execution(value)
            if inner:
                out[key] = inner
    return out


class Untracked:
    """A rule parameter Snakemake does not compare for reruns (not a builtin type, so its
    persistence layer cannot represent it and leaves it out of the params trigger); formats as
    its text in shell commands."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Untracked({self.text!r})"
