"""Where nemotron-deploy keeps what it builds once per machine: the user's cache folder, and the
environment variable that moves (or, set to `none`, turns off) the caches that follow it.

Used by the onnxruntime pre-packed weights cache (runtime/onnx_prepacked.py), the trace cache
(exporter/trace_cache.py) and the plugin build's downloaded TensorRT headers (plugins/build.py).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "NEMOTRON_DEPLOY_CACHE"


def user_cache_folder() -> Path:
    """`$XDG_CACHE_HOME/nemotron-deploy`, else `~/.cache/nemotron-deploy`."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nemotron-deploy"
