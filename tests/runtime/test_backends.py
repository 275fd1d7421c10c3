"""The backend interface (runtime/backends/interface.py): every implementation is one, and the decode
loop asks each only what the interface names."""

import importlib
import inspect
from pathlib import Path

import numpy as np
import pytest

from nemotron_deploy.runtime import decode
from nemotron_deploy.runtime.artifact.manifest import ArtifactError
from nemotron_deploy.runtime.backends import BACKENDS, open_backend
from nemotron_deploy.runtime.backends.interface import Backend

FOLDER = Path(importlib.import_module("nemotron_deploy.runtime.backends").__file__).parent


def implementations() -> list[type]:
    """The backend classes defined in runtime/backends/*_backend.py."""
    found = []
    for path in sorted(FOLDER.glob("*_backend.py")):
        module = importlib.import_module(f"nemotron_deploy.runtime.backends.{path.stem}")
        found += [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__ and hasattr(c, "step")]
    return found


def test_every_backend_implements_the_interface():
    classes = implementations()
    assert {c.__name__ for c in classes} == {"OnnxRuntimeBackend", "TensorRTBackend", "PluginReferenceBackend", "TorchBackend"}
    for cls in classes:
        assert Backend in cls.__mro__, cls  # a subclass (issubclass refuses protocols with data members)
        for method in ("initial_state", "step"):  # no default: each backend's own
            assert getattr(cls, method) is not getattr(Backend, method), (cls, method)
        assert isinstance(cls.name, str)


class Fixed(Backend):
    """Logits that always pick token 3; counts the tokens of each call."""

    name = "fixed"

    def __init__(self, **limits):
        self.__dict__.update(limits)
        self.calls = []

    def initial_state(self, batch):
        return {}

    def step(self, graph, input_ids, attention_mask, state):
        self.calls.append((graph, input_ids.shape[1]))
        logits = np.zeros((input_ids.shape[0], 8), dtype=np.float32)
        logits[:, 3] = 1.0
        return logits, state


@pytest.mark.parametrize(
    "limits,chunk,pieces",
    [
        ({}, None, [10]),  # the defaults: no limit, no preference
        ({"max_prefill_tokens": 4}, None, [4, 4, 2]),
        ({"max_prefill_tokens": 4}, 3, [3, 3, 3, 1]),
        ({"max_prefill_tokens": 4, "one_token_is_decode": True}, 3, [3, 3, 2, 2]),
    ],
)
def test_the_decode_loop_splits_prefill_by_the_interface(limits, chunk, pieces):
    backend = Fixed(**limits)
    ids, mask = np.arange(10, dtype=np.int64)[None], np.ones((1, 10), dtype=np.int64)
    decode.prefill(backend, ids, mask, chunk_size=chunk)
    assert [n for graph, n in backend.calls if graph == "prefill"] == pieces


def test_an_unknown_backend_is_refused_with_the_names():
    with pytest.raises(ArtifactError, match=f"backend 'nope': expected one of {', '.join(BACKENDS)}"):
        open_backend(manifest=None, backend="nope")
