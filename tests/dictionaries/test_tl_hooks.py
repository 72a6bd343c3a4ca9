"""TransformerLens hook names map to sites holding the tensor TransformerLens gives, built
here in plain torch from the Hugging Face modules (no TransformerLens at test time):

- ``blocks.L.ln2.hook_normalized``: the residual entering the MLP normalised by ln2 *before*
  its weight and bias, recovered as ``(ln2(x) − bias) / weight`` from the module's own output;
- ``blocks.L.hook_mlp_in``: the residual stream entering the MLP block (ln2's input).
"""

from __future__ import annotations

import pytest
import torch

from featcircuits.errors import SiteError
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site, architecture

LAYER = 1


def _norm(model):
    plain = underlying_module(model)
    arch = architecture(model)
    block = plain.get_submodule(f"{arch.layers}.{LAYER}")
    return block.get_submodule(arch.mlp_norm)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama"])
def test_ln2_hook_normalized_and_hook_mlp_in(tiny_models, input_ids, arch):
    model = tiny_models[arch]
    norm = _norm(model)
    saved = {name: p.detach().clone() for name, p in norm.named_parameters()}
    try:
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():  # a non-trivial weight and bias, so "before them" matters
            for param in norm.parameters():
                param.copy_(torch.rand(param.shape, generator=generator) + 0.5)
        captured = {}
        hook = norm.register_forward_hook(
            lambda module, args, out: captured.update(x=args[0].detach(), y=out.detach()))
        with torch.no_grad():
            underlying_module(model)(input_ids)
        hook.remove()
        bias = norm.bias.detach() if getattr(norm, "bias", None) is not None else 0.0
        expected = (captured["y"] - bias) / norm.weight.detach()  # TL's hook_normalized

        normed = Site.from_hook_name(f"blocks.{LAYER}.ln2.hook_normalized")
        mlp_in = Site.from_hook_name(f"blocks.{LAYER}.hook_mlp_in")
        assert (str(normed), str(mlp_in)) == (f"mlp_normed.{LAYER}", f"resid_mid.{LAYER}")
        with model.trace(input_ids):
            got_normed = normed.read(model).save()
            got_mlp_in = mlp_in.read(model).save()
            got_after = Site("mlp_in", LAYER).read(model).save()
        torch.testing.assert_close(got_normed, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_mlp_in, captured["x"], atol=0, rtol=0)
        # the weight and bias make the MLP's input a different tensor
        assert float((got_after - got_normed).detach().abs().max()) > 0.1
    finally:
        with torch.no_grad():
            for name, param in norm.named_parameters():
                param.copy_(saved[name])


def test_mlp_normed_is_read_only_and_ordered(tiny_models):
    site = Site.parse("mlp_normed.0")
    assert Site.parse("resid_mid.0").depth < site.depth < Site.parse("mlp_in.0").depth
    assert site.to_hook_name() == "blocks.0.ln2.hook_normalized"
    with pytest.raises(SiteError, match="read but not written"):
        site.write(tiny_models["gpt2"], None)


def test_gpt2_hook_embed_dictionary_is_refused_at_embed(tiny_models):
    """TransformerLens' GPT-2 hook_embed is the token embedding without positions; featcircuits'
    embed site there holds token + position embeddings, so such a dictionary is refused on
    GPT-2 (and accepted where embed is the token embedding alone, e.g. Llama)."""
    from featcircuits.dictionaries import SparseAutoencoder, check_dictionary_fits

    sae = SparseAutoencoder(32, 16, site="embed", meta={"hook_name": "hook_embed"})
    with pytest.raises(SiteError, match="token-embedding-only site"):
        check_dictionary_fits(sae, tiny_models["gpt2"], "embed")
    check_dictionary_fits(sae, tiny_models["llama"], "embed")
    sae.meta["hook_name"] = "blocks.0.hook_resid_pre"
    check_dictionary_fits(sae, tiny_models["gpt2"], "embed")


def test_gemma_hook_embed_dictionary_needs_the_scaled_embedding(tiny_models, monkeypatch):
    """TransformerLens' Gemma hook_embed is embed_tokens' weight times sqrt(d_model) (its W_E
    is scaled). On transformers 5 Gemma-2's embedding module scales, so featcircuits' embed
    site holds that tensor and a hook_embed dictionary (a Gemma Scope embedding SAE) fits;
    an unscaled embedding module (transformers 4) is refused."""
    from featcircuits import trace
    from featcircuits.dictionaries import SparseAutoencoder, check_dictionary_fits
    from featcircuits.model.loading import underlying_module

    model = tiny_models["gemma2"]
    plain = underlying_module(model)
    ids = torch.tensor([[3, 9, 4, 17]])
    with trace(model, ids):
        embed = Site.parse("embed").read(model).save()
    weight = plain.get_input_embeddings().weight
    sae = SparseAutoencoder(weight.shape[1], 16, site="embed", meta={"hook_name": "hook_embed"})
    if getattr(plain.get_input_embeddings(), "embed_scale", None) is not None:  # transformers 5
        assert torch.allclose(embed, weight[ids] * weight.shape[1] ** 0.5, atol=1e-5)
        check_dictionary_fits(sae, model, "embed")
    else:  # transformers 4: the module returns the unscaled embedding
        assert torch.allclose(embed, weight[ids], atol=1e-6)
    unscaled = torch.nn.Embedding.from_pretrained(weight.detach())
    monkeypatch.setattr(plain, "get_input_embeddings", lambda: unscaled)
    with pytest.raises(SiteError, match="sqrt\\(d_model\\) times smaller"):
        check_dictionary_fits(sae, model, "embed")
