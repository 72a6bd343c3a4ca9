"""Site ``attn_z.L``: the concatenated per-head attention outputs before the output projection
(TransformerLens' ``blocks.L.attn.hook_z``, flattened head-major as SAELens does), read and
written at the projection's input, checked against plain torch forward pre-hooks; patching
and circuits there against the same hooks."""

from __future__ import annotations

import einops
import pytest
import torch

from featcircuits.circuits import acdc_circuit, attribution_circuit
from featcircuits.circuits.targets import LogitTarget
from featcircuits.model.loading import model_config, underlying_module
from featcircuits.model.sites import Site, architecture
from featcircuits.patching.experiment import PatchingExperiment
from tests.support.factories import PROMPTS, QUIET, random_sae

LAYER = 1
TOKEN = 7


def _projection(model, layer=LAYER) -> torch.nn.Module:
    arch = architecture(model)
    return underlying_module(model).get_submodule(
        f"{arch.layers}.{layer}.{arch.attn}.{arch.attn_proj}")


def _attention(model, layer=LAYER) -> torch.nn.Module:
    arch = architecture(model)
    return underlying_module(model).get_submodule(f"{arch.layers}.{layer}.{arch.attn}")


def _run(model, ids, pre=None, post=None, grad_of=None):
    """Plain torch run; ``pre(z) -> z`` replaces the projection's input, ``post(out) -> out``
    the attention output's hidden state. Returns (captured z, attention output, logits)."""
    captured = {}

    def pre_hook(module, args):
        z = args[0] if pre is None else pre(args[0])
        if grad_of is not None:
            z.retain_grad()
        captured["z"] = z
        return (z, *args[1:])

    def post_hook(module, args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        if post is not None:
            hidden = post(hidden)
        captured["out"] = hidden
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handles = [_projection(model).register_forward_pre_hook(pre_hook),
               _attention(model).register_forward_hook(post_hook)]
    try:
        logits = underlying_module(model)(ids).logits
    finally:
        for handle in handles:
            handle.remove()
    return captured["z"], captured["out"], logits


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "gemma2"])
def test_attn_z_reads_the_projection_input(tiny_models, input_ids, arch):
    model = tiny_models[arch]
    site = Site.parse(f"attn_z.{LAYER}")
    config = model_config(model)
    heads = config.num_attention_heads if hasattr(config, "num_attention_heads") else config.n_head
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    assert site.width(model) == heads * head_dim
    with torch.no_grad():
        z, out, _ = _run(model, input_ids)
    with torch.no_grad(), model.trace(input_ids):
        got = site.read(model).save()
        attn_out = Site("attn_out", LAYER).read(model).save()
    assert got.shape == (*input_ids.shape, heads * head_dim)
    torch.testing.assert_close(got, z, atol=0, rtol=0)
    torch.testing.assert_close(attn_out, out, atol=1e-6, rtol=0)
    # a site after the projection (attn_out) is another tensor: the check above can fail
    assert float((got - attn_out).abs().max()) > 1e-2
    bias = getattr(_projection(model), "bias", None)
    through = site.to_residual(model, got) + (0.0 if bias is None else bias.detach())
    torch.testing.assert_close(through, attn_out, atol=1e-5, rtol=1e-5)


def test_gpt2_attn_z_is_transformerlens_z(tiny_models, input_ids):
    """TransformerLens' z = softmax(q kᵀ/√d_head, causal) v per head, ``[b, p, h, d]``,
    computed here from GPT-2's c_attn weights; attn_z holds it flattened ``(h d)``."""
    model = tiny_models["gpt2"]
    plain = underlying_module(model)
    block = plain.transformer.h[LAYER]
    heads = model_config(model).n_head
    captured = {}
    handle = block.ln_1.register_forward_hook(
        lambda module, args, out: captured.update(x=out.detach()))
    with torch.no_grad():
        plain(input_ids)
    handle.remove()
    q, k, v = block.attn.c_attn(captured["x"]).split(model_config(model).n_embd, dim=-1)
    q, k, v = (einops.rearrange(t, "b p (h d) -> b h p d", h=heads) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    positions = input_ids.shape[1]
    causal = torch.ones(positions, positions, dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
    z = einops.rearrange(pattern @ v, "b h p d -> b p h d")      # TransformerLens' hook_z
    with torch.no_grad(), model.trace(input_ids):
        got = Site.from_hook_name(f"blocks.{LAYER}.attn.hook_z").read(model).detach().save()
    expected = einops.rearrange(z, "b p h d -> b p (h d)")        # SAELens' flattening
    torch.testing.assert_close(got, expected.detach(), atol=1e-5, rtol=1e-5)
    wrong_order = einops.rearrange(z.detach(), "b p h d -> b p (d h)")
    assert float((got - wrong_order).abs().max()) > 1e-3


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_attn_z_write_flows_through_the_projection(tiny_models, input_ids, arch):
    model = tiny_models[arch]
    site = Site("attn_z", LAYER)
    delta = torch.randn(*input_ids.shape, site.width(model),
                        generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        _, _, expected = _run(model, input_ids, pre=lambda z: z + delta)
        _, _, after = _run(model, input_ids, post=lambda out: out + delta)  # the wrong site
        _, _, baseline = _run(model, input_ids)
    with torch.no_grad(), model.trace(input_ids):
        site.write(model, site.read(model) + delta)
        logits = model.output.logits.save()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert float((logits - baseline).abs().max()) > 1e-3
    assert float((logits - after).abs().max()) > 1e-3


def test_attn_z_orders_before_attn_out_and_names_its_hook():
    site = Site.parse("attn_z.3")
    assert Site.parse("resid_in.3").depth < site.depth < Site.parse("attn_out.3").depth
    assert site.to_hook_name() == "blocks.3.attn.hook_z"
    assert Site.from_hook_name("blocks.3.hook_z") == site
    assert Site.parse("blocks.3.attn.hook_z") == site


def test_patching_at_attn_z_matches_torch_pre_hooks(tiny_models):
    model = tiny_models["gpt2"]
    site = f"attn_z.{LAYER}"
    sae = random_sae(32, site, seed=2)
    experiment = PatchingExperiment(model, {site: sae}, PROMPTS, settings=QUIET)
    prompts = experiment.prompts
    active = experiment.active_features()
    feature_set = active[:5]
    mask = torch.zeros(sae.n_features)
    mask[feature_set] = 1
    with torch.no_grad():
        clean_z, _, _ = _run(model, prompts.clean_ids)
        clean_features = sae.encode(clean_z)
        token_mask = prompts.token_mask.float()[..., None]

        def patch(z):
            return z + ((clean_features - sae.encode(z)) * mask * token_mask) @ sae.directions

        _, _, logits = _run(model, prompts.corrupt_ids, pre=patch)
    final = prompts.final_positions
    expected = logits[torch.arange(len(final)), final]
    got, _ = experiment.patched_logits([feature_set])
    assert (got[0] - expected).abs().max() < 1e-5
    assert (got[0] - experiment.corrupt_logits).abs().max() > 1e-4


def test_circuits_at_attn_z_match_torch_pre_hooks(tiny_models):
    """ACDC edges attn_z.L/u → logit are exact zero-ablation effects, attribution edges the
    first-order ``(c_u f_u) · ∂logit/∂z`` — both against plain torch pre-hooks (Llama with
    grouped-query attention: z has the query heads' width)."""
    model = tiny_models["llama"]
    site = f"attn_z.{LAYER}"
    sae = random_sae(32, site, seed=5, n_features=12)
    ids = torch.randint(0, 60, (3, 6), generator=torch.Generator().manual_seed(8))
    target = [LogitTarget(TOKEN, positions="all")]
    acdc = acdc_circuit(model, {site: sae}, ids, targets=target, tau=0.0, ablation="zero",
                        settings=QUIET)
    attribution = attribution_circuit(model, {site: sae}, ids, targets=target, tau=0.0,
                                      ablation="zero", settings=QUIET)
    z, _, clean_logits = _run(model, ids, grad_of=True)
    clean_logits[..., TOKEN].sum().backward()
    gradient, z, clean_logits = z.grad.detach(), z.detach(), clean_logits.detach()
    features = sae.encode(z).detach()
    active = torch.nonzero(features.amax((0, 1)) > 0).flatten().tolist()
    checked = 0
    for u in active[:4]:
        with torch.no_grad():
            _, _, logits = _run(
                model, ids, pre=lambda x, u=u: x - sae.encode(x)[..., u:u + 1] * sae.directions[u])
        exact = float((clean_logits[..., TOKEN] - logits[..., TOKEN]).sum(1).mean())
        first_order = float(((features[..., u:u + 1] * sae.directions[u].detach()) * gradient)
                            .sum((1, 2)).mean())
        edge = (f"{site}/{u}", f"output/logit_{TOKEN}")
        if abs(exact) > 1e-4:
            assert acdc.edges[edge]["weight"] == pytest.approx(exact, abs=2e-5)
            assert attribution.edges[edge]["weight"] == pytest.approx(first_order, abs=2e-5)
            checked += 1
    assert checked >= 2
