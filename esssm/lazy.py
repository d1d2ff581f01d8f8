"""Packages whose public names load from their modules on first use, so importing one stays cheap."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """A package's `__getattr__`, `__dir__` and `__all__` for `exports` (public name -> the module
    that defines it): `__getattr__, __dir__, __all__ = lazy_exports(__name__, {...})`."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(exports[name]), name)

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__, names
