"""The package's folders under their short names (`runtime`, `exporter`, `plugins`) are the package itself.

The repository root holds the package's source folders, and a root on sys.path (`python -m` or pytest
run from a checkout) makes `import runtime.errors` load a second copy of a module: its classes are not
the package's, so e.g. an error raised through it escapes the CLI's handling. Each folder's `__init__`
calls `alias_package` when imported under its short name, so every short name resolves to the one
`nemotron_deploy.<name>` module instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds `short` and `short.*` and loads them as the already-importable `nemotron_deploy.*` modules."""

    def __init__(self, short: str):
        self.short = short

    def find_spec(self, fullname, path=None, target=None):
        if fullname == self.short or fullname.startswith(self.short + "."):
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(f"nemotron_deploy.{spec.name}")

    def exec_module(self, module) -> None:
        pass  # the package's module ran when it was first imported


def alias_package(short: str) -> None:
    """Make `short` (and its submodules, from now on) the package's `nemotron_deploy.<short>`."""
    if not any(isinstance(f, _Alias) and f.short == short for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias(short))
    sys.modules[short] = importlib.import_module(f"nemotron_deploy.{short}")
