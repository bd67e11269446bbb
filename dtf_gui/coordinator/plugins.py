"""User code loaded by import path ("package.module:attribute"): strategies, result processors.

One loader, so every plugin key fails the same way: a ValueError naming the config key, the path
and what is wrong, never an ImportError traceback from deep inside the coordinator.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["load_callable", "load_object"]


def load_object(path: str, key: str) -> Any:
    """``package.module:attr.sub`` -> that object. Raises ValueError naming ``key`` (the setting
    that named the path) when the path is malformed, the module cannot be imported or lacks the
    attribute."""
    if not isinstance(path, str) or ":" not in path:
        raise ValueError(f"{key}: {path!r} is not an import path like package.module:name")
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{key}: {path!r} is not an import path like package.module:name")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{key}: cannot load {path!r}: cannot import module {module_name!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"{key}: cannot load {path!r}: module {module_name!r} has no {attr!r}") from None
    return obj


def load_callable(path: str, key: str) -> Callable[..., Any]:
    """:func:`load_object`, and the object must be callable."""
    obj = load_object(path, key)
    if not callable(obj):
        raise ValueError(f"{key}: {path!r} is not callable")
    return obj
