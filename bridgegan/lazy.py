"""PEP 562 lazy exports: a package names what it exports from which submodule, and the
submodule is imported on first use (so that importing the package imports no torch)."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence


def lazy_exports(package: str, exports: Mapping[str, Sequence[str]]
                 ) -> tuple[Callable[[str], object], list[str]]:
    """``__getattr__`` and ``__all__`` for ``package``; ``exports`` maps a submodule
    (".model") to the names it provides."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> object:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name], package), name)

    return __getattr__, list(where)
