import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for hf_oracle

from hf_oracle import CONFIGS, make_checkpoint


@pytest.fixture(scope="session")
def hf_checkpoints(tmp_path_factory):
    """name -> (transformers model, checkpoint dir), one per config in hf_oracle.CONFIGS, made once."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = make_checkpoint(name, tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(params=sorted(CONFIGS))
def config_name(request):
    return request.param


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, hf_checkpoints):
    """(name, dtype, target, kv_in_place) -> (transformers model, checkpoint dir, exported artifact dir), each
    exported once."""
    from nemotron_deploy.exporter.onnx_export import export_artifact

    cache = {}

    def get(name: str, dtype: str = "float32", target: str = "onnxruntime", kv_in_place: bool = False):
        key = (name, dtype, target, kv_in_place)
        if key not in cache:
            ref, ckpt = hf_checkpoints(name)
            kind = "-kv-in-place" if kv_in_place else ""
            out = tmp_path_factory.mktemp(f"{name}-{dtype}-{target}{kind}-artifact") / "onnx"
            cache[key] = (ref, ckpt, export_artifact(ckpt, out, target=target, dtype=dtype, progress=False, kv_in_place=kv_in_place))
        return cache[key]

    return get
