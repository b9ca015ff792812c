"""The class list (background first) of a configured data set; light enough for the Snakefile."""

from __future__ import annotations

from typing import Any

from wsss.data.classes import DEMO_CLASSES, VOC_CLASSES
from wsss.errors import ConfigError


def classes_for(dataset: dict[str, Any]) -> list[str]:
    """Return the class names, background first, for the ``dataset`` config section."""
    name = dataset["name"]
    if name == "demo":
        return list(DEMO_CLASSES)
    if name == "voc12":
        return list(VOC_CLASSES)
    classes = dataset.get("classes")
    if not classes:
        raise ConfigError("config key dataset.classes: a folder data set needs its class list "
                          "(background first)")
    if classes[0] != "background":
        raise ConfigError("config key dataset.classes: the first class must be 'background'")
    if len(set(classes)) != len(classes):
        raise ConfigError("config key dataset.classes: class names must be unique")
    return list(classes)
