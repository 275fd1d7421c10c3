"""From the repository root the package's folders are importable under their short names; they must
resolve to the package's own modules, not load second copies (whose error classes the CLI would not catch)."""

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import importlib, sys
for short, module in [("runtime", "errors"), ("exporter", "config"), ("plugins", "build"), ("runtime", "triton.interface")]:
    aliased = importlib.import_module(f"{short}.{module}")
    assert aliased is importlib.import_module(f"nemotron_deploy.{short}.{module}"), (short, module)
by_file = {}
for mod in list(sys.modules.values()):
    by_file.setdefault(getattr(mod, "__file__", None), set()).add(id(mod))
print(sum(len(ids) > 1 for file, ids in by_file.items() if file))  # source files loaded twice
print(sorted(m for m in sys.modules if m.split(".")[0] in ("runtime", "exporter", "plugins")))
import runtime.errors
from nemotron_deploy.runtime.manifest import read_manifest
try:
    read_manifest("/nonexistent")
except runtime.errors.NemotronDeployError:  # the class the package raises, under the short name
    print("caught")
"""


def test_short_names_are_the_package_not_a_second_copy():
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1] == "['exporter', 'exporter.config', 'plugins', 'plugins.build', 'runtime', 'runtime.errors', 'runtime.triton', 'runtime.triton.interface']"
    assert lines[-1] == "caught"


def test_without_the_alias_the_short_name_would_be_a_second_copy(tmp_path):
    """The failure the alias prevents, on a copy of runtime/ whose __init__ lacks it."""
    copy = tmp_path / "runtime"
    copy.mkdir()
    (copy / "__init__.py").write_text("")
    (copy / "errors.py").write_text((ROOT / "runtime" / "errors.py").read_text())
    probe = "import runtime.errors, nemotron_deploy.runtime.errors as e; print(runtime.errors.NemotronDeployError is e.NemotronDeployError)"
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
