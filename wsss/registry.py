"""Name -> builder registries for every pluggable choice (timm style).

Each registry lives next to what it registers (fusion variants in :mod:`wsss.cams.fuse`, mask
rules in :mod:`wsss.refine.mask_rules`, ...) and names the config key that selects from it, so an
unknown name fails with the key and the known names. The schema's enums are tested against the
registries: a name the code does not know is refused when the workflow is parsed.

    FUSIONS: Registry[Callable[..., np.ndarray]] = Registry("fusion variant", "fusion")

    @FUSIONS.register("avg")
    def _avg(cnn, tran): ...

    FUSIONS.get("avg")(cnn, tran)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from wsss.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind, selected by one config key."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind, self.config_key = kind, config_key
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; registering a name twice is a bug.

        Raises:
            ValueError: when ``name`` is already registered.
        """
        def add(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        """The entry registered under ``name``.

        Raises:
            ConfigError: naming the config key and the known names when ``name`` is unknown.
        """
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(f"config key {self.config_key}: unknown {self.kind} {name!r} "
                              f"(known: {', '.join(self.names())})") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
