"""Re-exports loaded on first use (PEP 562), so that importing a package does not import JAX or SciPy."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]], namespace: dict
                 ) -> tuple[list[str], Callable[[str], object], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` for a package re-exporting ``exports`` (module -> names).

    Args:
        package: The package's name, for error messages.
        exports: Module name to the names it provides.
        namespace: The package's ``globals()``, where a name is cached once loaded.
    """
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return sorted(where), __getattr__, __dir__
