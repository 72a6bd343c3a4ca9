"""Sites resolve on every architecture; reading and writing them inside traces is exact."""

from __future__ import annotations

import pytest
import torch

from featcircuits import Site, SiteError, load_model
from featcircuits.model import all_sites, d_model, num_layers
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import architecture, hidden_of, with_hidden

ARCHS = ["gpt_neox", "gpt2", "llama", "qwen2", "gemma2"]


def test_parse_and_format_round_trip():
    for text in ["embed", "resid_in.0", "resid_out.3", "mlp_out.11", "attn_out.2"]:
        assert str(Site.parse(text)) == text
    assert Site.parse("resid_out.3") == Site("resid_out", 3)
    assert Site.parse("module:transformer.h.1").module_path == "transformer.h.1"


@pytest.mark.parametrize(
    "hook, site",
    [("blocks.3.hook_resid_post", "resid_out.3"), ("blocks.0.hook_resid_pre", "resid_in.0"),
     ("blocks.5.hook_mlp_out", "mlp_out.5"), ("blocks.2.hook_attn_out", "attn_out.2"),
     ("hook_embed", "embed")],
)
def test_transformerlens_hook_names(hook, site):
    assert str(Site.from_hook_name(hook)) == site
    assert Site.parse(site).to_hook_name() == hook


@pytest.mark.parametrize("bad", ["resid_out", "resid.3", "resid_out.x", "embed.2", "", "3"])
def test_bad_site_names_raise_site_error(bad):
    with pytest.raises(SiteError):
        Site.parse(bad)


def test_unsupported_hook_lists_supported():
    with pytest.raises(SiteError, match="hook_resid_post"):
        Site.from_hook_name("blocks.1.attn.hook_q")


@pytest.mark.parametrize("arch", ARCHS)
def test_every_site_resolves_and_resid_out_matches_hidden_states(arch, tiny_models, input_ids):
    model = tiny_models[arch]
    plain = underlying_module(model)
    sites = all_sites(model, ("embed", "resid_in", "resid_out", "mlp_out", "attn_out"))
    assert len(sites) == 1 + 4 * num_layers(model)
    values = []  # containers made outside the trace and filled inside survive it
    with model.trace(input_ids):
        for site in sites:
            values.append(site.read(model).save())
    width = d_model(model)
    for site, value in zip(sites, values):
        assert value.shape == (*input_ids.shape, width), site
    with torch.no_grad():
        hidden = plain(input_ids, output_hidden_states=True).hidden_states
    by_name = {str(site): value for site, value in zip(sites, values)}
    n = num_layers(model)
    for layer in range(n - 1):  # transformers' last hidden state has the final norm applied
        torch.testing.assert_close(by_name[f"resid_out.{layer}"], hidden[layer + 1],
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(by_name[f"resid_in.{layer + 1}"], hidden[layer + 1],
                                   atol=1e-5, rtol=0)
    final_norm = plain.get_submodule(architecture(model).final_norm)
    torch.testing.assert_close(final_norm(by_name[f"resid_out.{n - 1}"]), hidden[n],
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(by_name["resid_in.0"], hidden[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_writing_unchanged_keeps_logits_and_zeros_change_them(arch, tiny_models, input_ids):
    model = tiny_models[arch]
    with torch.no_grad():
        reference = underlying_module(model)(input_ids).logits
    for site in all_sites(model, ("resid_in", "resid_out", "mlp_out", "attn_out"))[:4] + [
        Site("embed")
    ]:
        with model.trace(input_ids):
            site.write(model, site.read(model).clone())
            same = model.output.logits.save()
        assert (same - reference).abs().max() < 1e-5, site
        with model.trace(input_ids):
            site.write(model, torch.zeros_like(site.read(model)))
            zeroed = model.output.logits.save()
        assert (zeroed - reference).abs().max() > 1e-3, site


def test_module_path_site_reads_any_module(tiny_models, input_ids):
    model = tiny_models["gpt2"]
    site = Site.parse("module:transformer.h.0")
    with model.trace(input_ids):
        direct = site.read(model).save()
        named = Site.parse("resid_out.0").read(model).save()
    torch.testing.assert_close(direct, named)


def test_hidden_of_and_with_hidden_keep_the_output_structure():
    """Decoder layers return tuples on transformers 4.x and tensors on 5.x; both shapes of
    output are read and written through the same two helpers."""
    hidden, cache, weights = torch.randn(2, 3, 4), object(), torch.randn(2, 1, 3, 3)
    new = torch.randn(2, 3, 4)
    assert hidden_of((hidden, cache, weights)) is hidden and hidden_of(hidden) is hidden
    replaced = with_hidden((hidden, cache, weights), new)
    assert isinstance(replaced, tuple) and len(replaced) == 3
    assert replaced[0] is new and replaced[1] is cache and replaced[2] is weights
    assert with_hidden(hidden, new) is new


def test_module_path_site_writes_a_tuple_output_like_attn_out(tiny_models, input_ids):
    """An attention module returns a tuple on every transformers version: a module-path site
    on it writes the first element and keeps the rest, as ``attn_out`` does."""
    model = tiny_models["gpt2"]
    named, direct = Site.parse("attn_out.0"), Site.parse("module:transformer.h.0.attn")
    results = []
    for site in (named, direct):
        with model.trace(input_ids):
            site.write(model, 2.0 * site.read(model))
            results.append(model.output.logits.save())
    with torch.no_grad():
        reference = underlying_module(model)(input_ids).logits
    torch.testing.assert_close(results[0], results[1])
    assert (results[0] - reference).abs().max() > 1e-3


def test_layer_out_of_range(tiny_models):
    with pytest.raises(SiteError, match="out of range"):
        Site("resid_out", 7).module(tiny_models["gpt_neox"])


def test_unknown_architecture_lists_supported_and_module_path_hint():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                 intermediate_size=64, vocab_size=50))
    with pytest.raises(SiteError) as info:
        Site.parse("resid_out.0").module(model)
    text = str(info.value)
    assert "'bert'" in text and "gpt_neox" in text and "from_module_path" in text


def test_load_model_errors(tmp_path, monkeypatch):
    from featcircuits import ModelLoadError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match="tiny"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(tmp_path)
    with pytest.raises(ModelLoadError):
        load_model("definitely not a model")


def test_load_model_is_eval_and_dispatched(tiny_models):
    plain = underlying_module(tiny_models["gpt_neox"])
    assert not plain.training
    assert all(p.device.type != "meta" for p in plain.parameters())
