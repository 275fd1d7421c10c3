import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for hf_oracle

from hf_oracle import CONFIGS, make_checkpoint  # noqa: E402


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
