"""Classifier methods (``classifier.method``): each bundles its network, objective and CAM
heads (:class:`~wsss.methods.base.ClassifierMethod`) and registers a builder in
:data:`METHODS`. Importing this package registers every method.
"""

from __future__ import annotations

from wsss.methods import cam, cobra, cosa
from wsss.methods.base import METHODS, ClassifierMethod

# The modules whose import registers a method (named so that code hashes reach them).
REGISTERED = (cam, cobra, cosa)

__all__ = ["METHODS", "REGISTERED", "ClassifierMethod"]
