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
