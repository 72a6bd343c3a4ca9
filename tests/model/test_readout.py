"""featcircuits.model.readout against each architecture's real final norm and unembedding
(the conftest checkpoints, with their final norms given random weights so that ``γ``,
``β`` and Gemma's ``1 + weight`` matter)."""

from __future__ import annotations

import pytest
import torch

from featcircuits.model.loading import load_model, trace, underlying_module
from featcircuits.model.readout import logit_direction, readout, readout_of
from featcircuits.model.sites import Site, architecture, num_layers

ARCHITECTURES = ["gpt_neox", "gpt2", "llama", "qwen2", "gemma2"]
EXPECTED_KIND = {"gpt_neox": "layernorm", "gpt2": "layernorm", "llama": "rmsnorm",
                 "qwen2": "rmsnorm", "gemma2": "rmsnorm"}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            offset = 1.0 if name.endswith("weight") else 0.0
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5 + offset)


@pytest.fixture(scope="module")
def models(checkpoint_dirs):
    """Fresh copies (the session's tiny_models stay untouched) with random final norms."""
    loaded = {}
    for seed, name in enumerate(ARCHITECTURES):
        model = load_model(checkpoint_dirs[name])
        norm = underlying_module(model).get_submodule(architecture(model).final_norm)
        _randomize(norm, seed)
        loaded[name] = model
    return loaded


def _reference(model, x: torch.Tensor) -> torch.Tensor:
    """Plain torch: the model's own final norm and unembedding (and Gemma's soft-cap)."""
    root = underlying_module(model)
    z = root.get_output_embeddings()(root.get_submodule(architecture(model).final_norm)(x))
    cap = getattr(root.config, "final_logit_softcapping", None)
    return z if cap is None else cap * torch.tanh(z / cap)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_readout_reproduces_the_models_logits(models, name, input_ids):
    model = models[name]
    ro = readout(model)
    assert ro.kind == EXPECTED_KIND[name]
    last = Site("resid_out", num_layers(model) - 1)
    with trace(model, input_ids):
        resid = last.read(model).save()
        logits = model.output.logits.save()
    assert torch.allclose(ro.logits(resid), logits.float(), atol=1e-4, rtol=1e-4)
    # linearised at the clean point (frozen scale), the readout gives the same pre-cap logits
    scale = ro.scale(resid)[..., None]
    pre_cap = ro.direct_effect(resid, scale) + ro.offset()
    assert torch.allclose(pre_cap, ro.pre_cap_logits(resid), atol=1e-4, rtol=1e-4)
    if ro.softcap is None:
        assert torch.allclose(pre_cap, logits.float(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gradient_and_linearisation_match_autograd(models, name):
    model = models[name]
    ro = readout(model)
    generator = torch.Generator().manual_seed(1)
    width = ro.unembed.shape[1]
    x = torch.randn(2, 3, width, generator=generator) * 1.5 + 0.3
    u = logit_direction(ro.unembed.shape[0], 5, 9)
    point = x.clone().requires_grad_(True)
    (_reference(model, point) * u).sum().backward()
    assert torch.allclose(ro.gradient(x, u), point.grad, atol=1e-5, rtol=1e-4)
    # the frozen-scale map is the true Jacobian on directions orthogonal to x̂ (and centred
    # for LayerNorm), and residual_direction is its adjoint
    v = torch.randn(2, 3, width, generator=generator)
    if ro.centred:
        v = v - v.mean(-1, keepdim=True)
    x_hat = ro.normalized(x)
    v = v - x_hat * (x_hat * v).sum(-1, keepdim=True) / (x_hat * x_hat).sum(-1, keepdim=True)
    _, jvp = torch.func.jvp(lambda t: _pre_cap(model, t), (x,), (v,))
    scale = ro.scale(x)[..., None]
    assert torch.allclose(ro.direct_effect(v, scale), jvp, atol=1e-5, rtol=1e-4)
    r = ro.residual_direction(u, scale)
    assert torch.allclose((r * v).sum(-1), (ro.direct_effect(v, scale) * u).sum(-1),
                          atol=1e-5, rtol=1e-4)


def _pre_cap(model, x: torch.Tensor) -> torch.Tensor:
    root = underlying_module(model)
    return root.get_output_embeddings()(root.get_submodule(architecture(model).final_norm)(x))


@pytest.mark.parametrize("norm", [
    torch.nn.LayerNorm(16),
    torch.nn.LayerNorm(16, bias=False),
    torch.nn.LayerNorm(16, elementwise_affine=False),
    torch.nn.RMSNorm(16, eps=1e-6),
])
def test_layernorm_with_and_without_bias_and_weight(norm):
    _randomize(norm, 3)
    unembed = torch.nn.Linear(16, 11, bias=True)
    ro = readout_of(norm, unembed)
    assert ro.kind == ("rmsnorm" if isinstance(norm, torch.nn.RMSNorm) else "layernorm")
    assert (ro.bias is not None) == (getattr(norm, "bias", None) is not None)
    x = torch.randn(4, 16) * 2 + 1
    with torch.no_grad():
        assert torch.allclose(ro.logits(x), unembed(norm(x)), atol=1e-5, rtol=1e-4)


def test_an_unknown_norm_is_refused():
    class Tanh(torch.nn.Module):
        eps = 1e-5

        def forward(self, x):
            return torch.tanh(x)

    from featcircuits.errors import SiteError

    with pytest.raises(SiteError, match="Tanh is neither a LayerNorm nor an RMSNorm"):
        readout_of(Tanh(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_dashboards_direct_logit_effect_is_the_readouts(models, name):
    """The dashboards' scale-free direct logit effect is the real readout's Jacobian times
    the norm's scale, on directions the scale does not see (Gemma: 1 + weight, not weight)."""
    from featcircuits.dashboards import direct_logit_effect

    model = models[name]
    ro = readout(model)
    generator = torch.Generator().manual_seed(2)
    width = ro.unembed.shape[1]
    x = torch.randn(width, generator=generator) + 0.5
    v = torch.randn(width, generator=generator)
    if ro.centred:
        v = v - v.mean()
    x_hat = ro.normalized(x)
    v = v - x_hat * (x_hat @ v) / (x_hat @ x_hat)
    _, jvp = torch.func.jvp(lambda t: _pre_cap(model, t), (x,), (v,))
    assert torch.allclose(direct_logit_effect(model, v), jvp * ro.scale(x), atol=1e-5,
                          rtol=1e-4)
