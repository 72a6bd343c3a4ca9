"""TransformerLens hook names map to sites holding the tensor TransformerLens gives, built
here in plain torch from the Hugging Face modules (no TransformerLens at test time):

- ``blocks.L.ln2.hook_normalized``: the residual entering the MLP normalised by ln2 *before*
  its weight and bias, recovered as ``(ln2(x) − bias) / weight`` from the module's own output;
- ``blocks.L.hook_mlp_in``: the residual stream entering the MLP block (ln2's input);
- ``hook_embed`` / ``hook_pos_embed`` (GPT-2): ``W_E[token]`` and ``W_pos[position]``, apart;
- every hook name of SAELens' pretrained-SAE table parses (``attn.hook_z`` included).
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


def _embedding_runs(model, input_ids):
    """Plain torch: the outputs of the token- and position-embedding modules."""
    plain = underlying_module(model)
    captured = {}
    handles = [plain.transformer.wte.register_forward_hook(
                   lambda module, args, out: captured.update(token=out.detach())),
               plain.transformer.wpe.register_forward_hook(
                   lambda module, args, out: captured.update(position=out.detach()))]
    with torch.no_grad():
        plain(input_ids)
    for handle in handles:
        handle.remove()
    return captured


def test_gpt2_hook_embed_and_hook_pos_embed(tiny_models, input_ids):
    """TransformerLens' GPT-2 ``hook_embed`` is ``W_E[token]`` (no positions) and
    ``hook_pos_embed`` is ``W_pos[position]`` repeated over the batch; their sum is
    ``blocks.0.hook_resid_pre``. Built here from the Hugging Face weights."""
    model = tiny_models["gpt2"]
    plain = underlying_module(model)
    w_e, w_pos = plain.transformer.wte.weight.detach(), plain.transformer.wpe.weight.detach()
    positions = input_ids.shape[1]
    tl_embed = w_e[input_ids]
    tl_pos = w_pos[:positions][None].expand(input_ids.shape[0], -1, -1)
    embed, pos = Site.from_hook_name("hook_embed"), Site.from_hook_name("hook_pos_embed")
    assert (str(embed), str(pos)) == ("embed", "pos_embed")
    assert (embed.to_hook_name(), pos.to_hook_name()) == ("hook_embed", "hook_pos_embed")
    assert embed.depth < pos.depth < Site("resid_in", 0).depth
    with torch.no_grad(), model.trace(input_ids):
        got_embed = embed.read(model).save()
        got_pos = pos.read(model).save()
        resid_pre = Site("resid_in", 0).read(model).save()
    torch.testing.assert_close(got_embed, tl_embed, atol=0, rtol=0)
    torch.testing.assert_close(got_pos, tl_pos, atol=0, rtol=0)
    torch.testing.assert_close(got_embed + got_pos, resid_pre, atol=1e-6, rtol=0)
    # the model's own position module computes the same values
    torch.testing.assert_close(got_pos[:1], _embedding_runs(model, input_ids)["position"],
                               atol=0, rtol=0)
    assert float((got_embed - resid_pre).abs().max()) > 1e-2  # positions are not in embed


def test_gpt2_embed_write_replaces_the_token_embedding_only(tiny_models, input_ids):
    """Writing ``embed`` replaces ``W_E[token]`` and GPT-2 still adds positions, as
    ``inputs_embeds=`` does; writing the sum (``resid_in.0``) would drop them."""
    model = tiny_models["gpt2"]
    plain = underlying_module(model)
    replacement = torch.randn(*input_ids.shape, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = plain(inputs_embeds=replacement).logits
        without_positions = plain.lm_head(plain.transformer.ln_f(
            plain.transformer.h[1](plain.transformer.h[0](replacement))))
    with torch.no_grad(), model.trace(input_ids):
        Site("embed").write(model, replacement)
        logits = model.output.logits.save()
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert float((logits - without_positions).abs().max()) > 1e-3


@pytest.mark.parametrize("arch", ["gpt_neox", "llama"])
def test_hook_embed_is_the_token_embedding_and_rotary_models_have_no_pos_embed(
        tiny_models, input_ids, arch):
    model = tiny_models[arch]
    weight = underlying_module(model).get_input_embeddings().weight.detach()
    with torch.no_grad(), model.trace(input_ids):
        got = Site.from_hook_name("hook_embed").read(model).save()
    torch.testing.assert_close(got, weight[input_ids], atol=0, rtol=0)
    with pytest.raises(SiteError, match="rotary"):
        Site("pos_embed").module(model)


def test_pos_embed_is_read_only(tiny_models):
    with pytest.raises(SiteError, match="read but not written"):
        Site("pos_embed").write(tiny_models["gpt2"], None)


def test_gpt2_hook_embed_dictionary_fits_embed(tiny_models):
    """A dictionary trained at TransformerLens' ``hook_embed`` reads the same tensor at
    ``embed`` on GPT-2 as on Llama (it was refused while GPT-2's embed held the sum)."""
    from featcircuits.dictionaries import SparseAutoencoder, check_dictionary_fits

    sae = SparseAutoencoder(32, 16, site="embed", meta={"hook_name": "hook_embed"})
    check_dictionary_fits(sae, tiny_models["gpt2"], "embed")
    check_dictionary_fits(sae, tiny_models["llama"], "embed")


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


# Every form of hook name SAELens 6.54 uses: the ids of pretrained_saes.yaml that are hook
# names (103 distinct names in 300 entries, of these six forms) and the hooks its loaders
# build for converted releases (Gemma Scope, Llama Scope, transcoders): see
# sae_lens/loading/pretrained_sae_loaders.py.
SAELENS_HOOK_FORMS = {
    "blocks.L.hook_resid_pre": "resid_in.L", "blocks.L.hook_resid_post": "resid_out.L",
    "blocks.L.hook_resid_mid": "resid_mid.L", "blocks.L.hook_mlp_out": "mlp_out.L",
    "blocks.L.hook_attn_out": "attn_out.L", "blocks.L.hook_z": "attn_z.L",
    "blocks.L.attn.hook_z": "attn_z.L", "blocks.L.hook_mlp_in": "resid_mid.L",
    "blocks.L.ln2.hook_normalized": "mlp_normed.L", "blocks.L.mlp.hook_in": "mlp_in.L",
    "hook_embed": "embed",
}


@pytest.mark.parametrize("layer", [0, 11])
def test_every_saelens_hook_form_parses(layer):
    for hook, site in SAELENS_HOOK_FORMS.items():
        assert str(Site.from_hook_name(hook.replace("L", str(layer)))) == site.replace(
            "L", str(layer)), hook


def test_every_hook_name_of_the_release_table_parses():
    """Every SAE id of the release table that is a TransformerLens hook name (the bundled
    curated table; SAELens' whole table where sae_lens is installed) maps to a site."""
    import re

    from featcircuits.dictionaries.hub import saelens_releases

    hook = re.compile(r"(blocks\.\d+\.)?[\w.]*hook_[a-z_]+")
    names = {entry["id"] for release in saelens_releases().values()
             for entry in release["saes"] if hook.fullmatch(str(entry["id"]))}
    assert len(names) >= 31  # the bundled table alone: 31 distinct names in 32 entries
    for name in sorted(names):
        Site.from_hook_name(name)
