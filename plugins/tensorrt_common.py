"""What the TensorRT builder and the TensorRT runtime backend share: which package each engine kind
needs, TensorRT's logger, and loading the plugin library with a check of the manifest's plugin versions."""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from nemotron_deploy.runtime.artifact.errors import NemotronDeployError
from nemotron_deploy.runtime.artifact.manifest import MANIFEST_FILE, Manifest


class TensorRTError(NemotronDeployError):
    pass


@dataclass(frozen=True)
class EngineKind:
    module: str
    install: str
    targets: tuple[str, ...]  # artifact targets it builds


ENGINES = {
    "tensorrt": EngineKind(
        "tensorrt",
        "pip install tensorrt-cu13 (or tensorrt-cu12; from NVIDIA's index https://pypi.nvidia.com)",
        ("tensorrt", "tensorrt-rtx"),
    ),
    "tensorrt-rtx": EngineKind("tensorrt_rtx", "pip install tensorrt-rtx-cu13", ("tensorrt-rtx",)),
}
PLUGINS_ENV = "NEMOTRON_DEPLOY_PLUGINS"


def import_engine(engine: str):
    """The TensorRT module of `engine`, or a one-line error that names the package to install."""
    spec = ENGINES[engine]
    try:
        return importlib.import_module(spec.module)
    except ImportError:
        raise TensorRTError(f"--engine {engine} needs the Python package '{spec.module}', which is not installed: {spec.install}") from None


def make_logger(trt):
    """A TensorRT ILogger that keeps the errors, so our messages can quote the last one."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity <= trt.ILogger.Severity.ERROR:
                self.errors.append(msg)

        def last_error(self) -> str | None:
            return self.errors[-1] if self.errors else None

    return Logger()


def plugin_library_path(manifest: Manifest, given: str | Path | None, recorded: str | None = None) -> Path:
    """--plugins, else $NEMOTRON_DEPLOY_PLUGINS, else the library recorded at build time."""
    needed = ", ".join(f"{p.name} v{p.version}" for p in manifest.plugins)
    path = given or os.environ.get(PLUGINS_ENV) or recorded
    if not path:
        raise TensorRTError(
            f"{manifest.path}: its graphs use plugins ({needed}); pass --plugins PATH "
            f"(`nemotron-deploy plugins build` prints it) or set {PLUGINS_ENV}"
        )
    path = Path(path)
    if not path.is_file():
        raise TensorRTError(f"plugin library {path}: no such file (build it with `nemotron-deploy plugins build`)")
    return path


def load_plugins(trt, registry, manifest: Manifest, path: Path) -> None:
    """Load the library into TensorRT's plugin registry and check it against the manifest."""
    if registry.load_library(str(path)) is None:
        raise TensorRTError(f"plugin library {path}: TensorRT could not load it (not a plugin library, or built for another platform)")
    check_plugin_versions(manifest, path, lambda name, version, namespace: registry.get_creator(name, version, namespace))


def check_plugin_versions(manifest: Manifest, library: Path, find_creator) -> None:
    """Every plugin the manifest records must exist in the loaded library at that version and namespace."""
    for p in manifest.plugins:
        if find_creator(p.name, p.version, p.namespace) is None:
            raise TensorRTError(
                f"plugin library {library}: has no plugin {p.name} version {p.version} in namespace "
                f"'{p.namespace}', which {manifest.path / MANIFEST_FILE} records; build the library from the "
                "nemotron-deploy that exported the artifact (`nemotron-deploy plugins build`), or re-export"
            )
