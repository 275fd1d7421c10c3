"""The package's import structure, checked over the sources' syntax trees (every import, including those
inside functions): the package imports as itself, never through the repository's folder names."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("exporter", "plugins", "runtime")  # the package's folders: nemotron_deploy.<folder>
SOURCES = [p for top in (*FOLDERS, "tests", "benchmarks", ".ci") for p in sorted((ROOT / top).rglob("*.py"))]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in `path`; a relative import is resolved
    against the file's own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            found += [(node.lineno, base)]
    return found


def module_name(path: Path) -> str:
    """The dotted name a source file imports as: nemotron_deploy.<folder>... for the package's files."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("nemotron_deploy", *parts) if parts[0] in FOLDERS else parts)


def test_the_sources_are_found():
    assert len(SOURCES) > 100
    assert module_name(ROOT / "runtime" / "artifact" / "manifest.py") == "nemotron_deploy.runtime.artifact.manifest"


def test_nothing_imports_a_folder_under_its_short_name():
    """`import runtime` from the repository root would load a second copy of the module (its error classes
    not the package's); the package's folders are importable only as nemotron_deploy.<folder>."""
    short = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in SOURCES
        for line, name in imported_modules(path)
        if name.split(".")[0] in FOLDERS
    ]
    assert short == []


def test_no_test_lives_in_the_package():
    """Tests live under tests/, so the installed package carries none and pytest never imports the
    package's folders by their short names."""
    assert [str(p.relative_to(ROOT)) for top in FOLDERS for p in (ROOT / top).rglob("test_*.py")] == []
    assert [str(p.relative_to(ROOT)) for top in FOLDERS for p in (ROOT / top).rglob("conftest.py")] == []


def ours(name: str) -> bool:
    return name == "nemotron_deploy" or name.startswith("nemotron_deploy.")


def test_the_artifact_format_imports_nothing_else_of_ours():
    """runtime/artifact/ is the bottom layer: the exporter writes it and the runtime reads it."""
    layer = "nemotron_deploy.runtime.artifact"
    climbing = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in (ROOT / "runtime" / "artifact").rglob("*.py")
        for line, name in imported_modules(path)
        if ours(name) and not (name == layer or name.startswith(layer + "."))
    ]
    assert climbing == []
