"""The class list (background first) of a configured data set; light enough for the Snakefile."""

from __future__ import annotations

from typing import Any

from wsss.data.classes import COCO_CLASSES, DEMO_CLASSES, IGNORE_INDEX, VOC_CLASSES
from wsss.errors import ConfigError


def classes_for(dataset: dict[str, Any]) -> list[str]:
    """Return the class names, background first, for the ``dataset`` config section."""
    name = dataset.get("name", "demo")
    if name not in ("demo", "voc12", "coco14", "folder"):
        raise ConfigError(f"config key dataset.name: unknown data set {name!r}")
    if name == "demo":
        return list(DEMO_CLASSES)
    if name == "voc12":
        return list(VOC_CLASSES)
    if name == "coco14":
        return list(COCO_CLASSES)
    classes = dataset.get("classes")
    if not classes:
        raise ConfigError("config key dataset.classes: a folder data set needs its class list "
                          "(background first)")
    if classes[0] != "background":
        raise ConfigError("config key dataset.classes: the first class must be 'background'")
    if len(set(classes)) != len(classes):
        raise ConfigError("config key dataset.classes: class names must be unique")
    if len(classes) > IGNORE_INDEX:
        raise ConfigError(f"config key dataset.classes: at most {IGNORE_INDEX} classes "
                          f"({IGNORE_INDEX} is the ignore value)")
    if any(not isinstance(c, str) or not c.strip() or ";" in c for c in classes):
        raise ConfigError("config key dataset.classes: names must be non-empty strings without ';'")
    return list(classes)
