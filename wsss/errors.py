"""User-facing errors: one clear message naming the file, row or config key."""

from __future__ import annotations


class WsssError(Exception):
    """An error caused by the user's data or config; printed as one line without a traceback."""


class ConfigError(WsssError):
    """A config value is missing, of the wrong type or out of range; names the key path."""


class DataError(WsssError):
    """An input file, CSV row or image is missing, corrupt or inconsistent; the message names it."""
