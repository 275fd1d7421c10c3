"""The plugin ops' torch references (exporter/plugin_ops.py) against transformers' own layers.

Each reference is fed exactly what the plugin node will get in the exported graph (in_proj's split
for Mamba2Core; router logits and the latent input for MoeDispatch), and the surrounding layer is
completed with transformers' own modules, so the comparison is of one layer's output.
"""

import pytest
import torch
from hf_oracle import hf_model

from nemotron_deploy.exporter.config import ModelConfig
from nemotron_deploy.exporter.modeling.mamba import mamba2_core_attributes
from nemotron_deploy.exporter.modeling.mlp import moe_dispatch_attributes
from nemotron_deploy.exporter.plugin_ops import MAMBA2_CORE, MOE_DISPATCH, run_reference


def _layers(model, kind_class: str):
    return [layer.mixer for layer in model.model.layers if type(layer.mixer).__name__ == kind_class]


def _config(model) -> ModelConfig:
    return ModelConfig.from_hf(model.config.to_dict())


@pytest.mark.parametrize("name", ["hybrid_moe_groups", "latent_moe_tied_odd", "dense_mlp_biases"])
def test_mamba2_core_reference_equals_transformers_mixer(name):
    model = hf_model(name)
    cfg = _config(model)
    torch.manual_seed(1)
    for mixer in _layers(model, "NemotronHMamba2Mixer"):
        hidden = torch.randn(2, 13, cfg.hidden_size)  # 13: several chunks, not a multiple of any chunk size
        mask = torch.ones(2, 13, dtype=torch.long)
        mask[1, :4] = 0  # left padding: the padded row must equal its sequence run alone
        with torch.no_grad():
            # alone, not batched: transformers' own padded batch lets in_proj's bias of padded positions
            # into the conv window, so its padded rows differ from the sequence alone when use_bias
            expected = [mixer(hidden[0:1]), mixer(hidden[1:2, 4:])]
            z, xbc, dt = mixer.in_proj(hidden * mask[..., None]).split([cfg.mamba_intermediate, cfg.conv_dim, cfg.mamba_num_heads], -1)
            conv_state = torch.zeros(2, cfg.conv_dim, cfg.conv_kernel - 1)
            ssm_state = torch.zeros(2, cfg.mamba_num_heads, cfg.mamba_head_dim, cfg.ssm_state_size)
            inputs = [
                xbc,
                dt,
                mask.float(),
                conv_state,
                ssm_state,
                mixer.conv1d.weight[:, 0],
                mixer.conv1d.bias,
                mixer.dt_bias,
                mixer.A_log,
                mixer.D,
            ]
            y, _, _ = run_reference(MAMBA2_CORE, inputs, mamba2_core_attributes(cfg, decode=False))
            got = mixer.out_proj(mixer.norm(y, z))
        for row, (want, have) in enumerate(zip(expected, [got[0:1], got[1:2, 4:]])):
            err = (have - want).abs().max() / want.abs().max()
            assert err < 1e-5, f"{name} row {row}: rel err {err:.2e}"


@pytest.mark.parametrize("name", ["hybrid_moe_groups", "latent_moe_tied_odd"])
@pytest.mark.parametrize("tokens", [1, 29])
def test_moe_dispatch_reference_equals_transformers_moe(name, tokens):
    model = hf_model(name)
    cfg = _config(model)
    torch.manual_seed(2)
    for moe in _layers(model, "NemotronHMoE"):
        hidden = torch.randn(tokens, 1, cfg.hidden_size) * 3
        with torch.no_grad():
            expected = moe(hidden)
            flat = hidden.flatten(0, 1)
            logits = torch.nn.functional.linear(flat.float(), moe.gate.weight.float())
            inputs = [moe.fc1_latent_proj(flat), logits, moe.gate.e_score_correction_bias, moe.experts.up_proj, moe.experts.down_proj]
            (routed,) = run_reference(MOE_DISPATCH, inputs, moe_dispatch_attributes(cfg))
            got = (moe.fc2_latent_proj(routed) + moe.shared_experts(flat)).view_as(hidden)
        err = (got - expected).abs().max() / expected.abs().max()
        assert err < 1e-5, f"{name}: rel err {err:.2e}"
