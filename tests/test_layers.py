"""The package's import structure, checked over the sources' syntax trees (every import, including those
inside functions): the package imports as itself, never through the repository's folder names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("exporter", "plugins", "runtime")  # the package's folders: nemotron_deploy.<folder>
SOURCES = [p for top in (*FOLDERS, "tests", "benchmarks", ".ci") for p in sorted((ROOT / top).rglob("*.py"))]
PACKAGE = [p for top in FOLDERS for p in sorted((ROOT / top).rglob("*.py"))]


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in `path`: `from package import module`
    counts as importing that module; a relative import is resolved against the file's own package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module_name(path).split(".")[: -node.level]
                base = ".".join([*package, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base) for a in node.names]
    return found


def module_name(path: Path) -> str:
    """The dotted name a source file imports as: nemotron_deploy.<folder>... for the package's files."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("nemotron_deploy", *parts) if parts[0] in FOLDERS else parts)


MODULES = {module_name(p) for p in PACKAGE}


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


# Bottom to top. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    ("artifact", ("nemotron_deploy.runtime.artifact",)),  # the format: manifest, errors, dtypes, integrity
    ("plugins", ("nemotron_deploy.plugins",)),  # the plugins' contract and build, TensorRT's loading of them
    ("exporter", ("nemotron_deploy.exporter",)),  # checkpoint -> artifact
    ("runtime", ("nemotron_deploy.runtime",)),  # backends, decode loop, sampler, session, batcher
    ("serving", ("nemotron_deploy.runtime.serving",)),  # Triton models and server, the OpenAI endpoints
    ("cli", ("nemotron_deploy.runtime.cli",)),  # the only place that imports everything
]


def layer_of(module: str) -> int:
    """Index in LAYERS of the layer holding `module` (its longest matching prefix)."""
    best = max(
        (
            (len(prefix), i)
            for i, (_, prefixes) in enumerate(LAYERS)
            for prefix in prefixes
            if module == prefix or module.startswith(prefix + ".")
        ),
        default=None,
    )
    if best is None:
        raise AssertionError(f"{module}: in no layer of tests/test_layers.py")
    return best[1]


def test_imports_only_go_down():
    climbing = []
    for path in SOURCES:
        module = module_name(path)
        if not ours(module) or module == "nemotron_deploy":
            continue
        for line, name in imported_modules(path):
            if ours(name) and name != "nemotron_deploy" and layer_of(name) > layer_of(module):
                climbing.append(
                    f"{path.relative_to(ROOT)}:{line}: {LAYERS[layer_of(module)][0]} imports {name} ({LAYERS[layer_of(name)][0]})"
                )
    assert climbing == []


def test_the_exporter_imports_only_the_format_and_the_plugins():
    """The exporter writes artifacts; it runs none (no runtime, no serving), so it never imports them."""
    allowed = {"artifact", "plugins", "exporter"}
    outside = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in (ROOT / "exporter").rglob("*.py")
        for line, name in imported_modules(path)
        if ours(name) and name != "nemotron_deploy" and LAYERS[layer_of(name)][0] not in allowed
    ]
    assert outside == []


def test_no_import_cycles():
    """No module of the package reaches itself through imports, those inside functions included."""
    graph = {module_name(p): {name for _, name in imported_modules(p) if name in MODULES} - {module_name(p)} for p in PACKAGE}
    cycles = [sorted(component) for component in strongly_connected(graph) if len(component) > 1]
    assert cycles == []


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph, iteratively."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root), on_stack.add(root)
        while work:
            node, edges = work[-1]
            child = next(edges, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while not component or component[-1] != node:
                        component.append(stack.pop())
                        on_stack.discard(component[-1])
                    components.append(component)
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child), on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return components


def test_the_cycle_finder_finds_cycles():
    components = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(sorted(c) for c in components) == [["a", "b", "c"], ["d"]]


def test_opening_and_serving_import_neither_torch_nor_the_exporter():
    """A deployment box has no torch: the runtime, serving and the command line import the exporter only
    inside the backends and commands that need it (reference, torch, export, bench's parameter count)."""
    probe = (
        "import sys\n"
        "import nemotron_deploy.runtime.session, nemotron_deploy.runtime.cli, nemotron_deploy.runtime.bench\n"
        "import nemotron_deploy.runtime.backends.onnxruntime_backend, nemotron_deploy.runtime.serving.triton.repository\n"
        "print('torch' in sys.modules, sorted(m for m in sys.modules if m.startswith('nemotron_deploy.exporter')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False []"
