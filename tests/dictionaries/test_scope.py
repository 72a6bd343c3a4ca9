"""Gemma Scope and Llama Scope folders (featcircuits.dictionaries.scope) and their specs.

The exactness against SAELens' own converters is checked by the peer fixtures
(tests/fixtures/peers/saelens-6.54.0/gemma_scope_* and llama_scope_*, loaded by spec in
test_peer_fixtures.py); these tests show the fixtures are sharp, follow the documented formula
in plain torch, and cover the refusals and the spec plumbing.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from featcircuits.dictionaries import hub, load_dictionary
from featcircuits.dictionaries.scope import gemma_scope_hook, refold
from featcircuits.errors import DictionaryLoadError

PEERS = Path(__file__).resolve().parents[1] / "fixtures" / "peers" / "saelens-6.54.0"
LXR = PEERS / "llama_scope_lxr"
LXR_SAE = LXR / "Llama3_1-8B-Base-L3R-8x"
EMBEDDING = PEERS / "gemma_scope_embedding"
EMBEDDING_SAE = EMBEDDING / "embedding" / "width_4k" / "average_l0_6"


def _expected(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "expected.safetensors"))


def _jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return torch.relu(pre) * (pre > threshold)


def test_llama_scope_follows_saelens_formula_in_plain_torch():
    """threshold = jump_relu_threshold · sqrt(d)/avg_norm_in; weights folded with the release
    table's norm_scaling_factor F (W_enc·F, W_dec/F, b_dec/F): equal to SAELens' outputs."""
    hyper = json.loads((LXR_SAE / "hyperparams.json").read_text())
    raw = {k: v.float() for k, v in load_file(str(LXR_SAE / "checkpoints/final.safetensors")
                                              ).items()}
    table = hub.resolve_saelens("llama_scope_lxr_8x/l3r_8x").norm_scaling_factor
    own = math.sqrt(hyper["d_model"]) / hyper["dataset_average_activation_norm"]["in"]
    assert abs(table / own - 1.25) < 1e-6  # the fixture's two factors differ on purpose
    expected = _expected(LXR)
    x = expected["x"]
    pre = x @ (raw["encoder.weight"].T * table) + raw["encoder.bias"]
    features = _jumprelu(pre, torch.tensor(hyper["jump_relu_threshold"] * own))
    reconstruction = features @ (raw["decoder.weight"].T / table) + raw["decoder.bias"] / table
    assert torch.allclose(features, expected["features"], atol=1e-5)
    assert torch.allclose(reconstruction, expected["reconstruction"], atol=1e-5)
    assert features.ne(0).any(-1).all() and features.eq(0).any(-1).all()


def test_local_llama_scope_folder_uses_its_own_factor_and_refold_gives_the_tables():
    """A folder alone knows only its hyperparameters' factor; with the table's factor (what
    the spec applies) it equals SAELens. The fixture tells the two apart by far."""
    expected = _expected(LXR)
    sae = load_dictionary(LXR_SAE)
    assert sae.site == "resid_out.3" and sae.meta["hook_name"] == "blocks.3.hook_resid_post"
    assert sae.meta["layout"] == "llama_scope" and not sae.pre_encoder_bias
    with torch.no_grad():
        assert (sae.encode(expected["x"]) - expected["features"]).abs().max() > 0.05
        refold(sae, hub.resolve_saelens("llama_scope_lxr_8x/l3r_8x").norm_scaling_factor)
        features = sae.encode(expected["x"])
        assert torch.allclose(features, expected["features"], atol=1e-5)
        assert torch.allclose(sae.decode(features), expected["reconstruction"], atol=1e-5)


def test_gemma_scope_embedding_rescale_is_needed_and_read_from_the_path():
    """Under embedding/ SAELens divides W_enc by sqrt(d_in) and multiplies W_dec by it: a
    local folder in that layout is read so (no repo name in its path: no hook, no site),
    and skipping the rescale misses the fixture by far."""
    expected = _expected(EMBEDDING)
    sae = load_dictionary(EMBEDDING_SAE)
    assert sae.site is None and sae.meta["hook_name"] is None
    with torch.no_grad():
        features = sae.encode(expected["x"])
        assert torch.allclose(features, expected["features"], atol=1e-5)
        with np.load(EMBEDDING_SAE / "params.npz") as data:
            raw = {k: torch.from_numpy(data[k]) for k in data}
        wrong = _jumprelu(expected["x"] @ raw["w_enc"] + raw["b_enc"], raw["threshold"])
    assert (wrong - expected["features"]).abs().max() > 0.05


def test_gemma_scope_hook_names_follow_the_repo():
    assert gemma_scope_hook("google/gemma-scope-2b-pt-res", "layer_3/width_16k/a") == (
        "blocks.3.hook_resid_post", "gemma-2-2b")
    assert gemma_scope_hook("google--gemma-scope-9b-it-res", "layer_20/width_131k/a") == (
        "blocks.20.hook_resid_post", "gemma-2-9b-it")
    assert gemma_scope_hook("models--google--gemma-scope-27b-pt-mlp", "layer_1/w/a")[0] == (
        "blocks.1.hook_mlp_out")
    assert gemma_scope_hook("gemma-scope-2b-pt-res", "embedding/width_4k/a")[0] == "hook_embed"
    assert gemma_scope_hook("my-saes", "layer_1/w/a") == (None, None)


def test_a_gemma_scope_folder_in_a_repo_named_folder_gets_its_site(tmp_path):
    """``hf download google/gemma-scope-2b-pt-mlp --local-dir gemma-scope-2b-pt-mlp``: the
    repo name in the path gives the hook, as SAELens derives it from the repo id."""
    source = PEERS / "gemma_scope_mlp_canonical" / "layer_1/width_16k/average_l0_105"
    target = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_1/width_16k/average_l0_105"
    shutil.copytree(source, target)
    sae = load_dictionary(target)
    assert sae.site == "mlp_out.1" and sae.meta["model_name"] == "gemma-2-2b"


def _gemma_folder(tmp_path: Path, **arrays) -> Path:
    gen = np.random.default_rng(0)
    base = {"W_enc": gen.normal(size=(4, 6)), "W_dec": gen.normal(size=(6, 4)),
            "b_enc": np.zeros(6), "b_dec": np.zeros(4), "threshold": np.full(6, 0.1)}
    base = {k: v.astype(np.float32) for k, v in base.items()}
    base.update(arrays)
    folder = tmp_path / "layer_0" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v for k, v in base.items() if v is not None})
    return folder


@pytest.mark.parametrize("arrays,words", [
    ({"scaling_factor": np.full(6, 2.0, np.float32)}, "scaling_factor other than ones"),
    ({"extra": np.zeros(3, np.float32)}, "'extra'"),
    ({"threshold": None}, "lacks tensors ['threshold']"),
    ({"b_enc": np.zeros(5, np.float32)}, "'b_enc'"),
    ({"W_dec": np.zeros((6, 4), np.int32)}, "not a C-ordered float array"),
    ({"W_enc": np.zeros(4, np.float32)}, "lacks a 2-d 'W_enc'"),
])
def test_bad_gemma_scope_params_are_refused(tmp_path, arrays, words):
    folder = _gemma_folder(tmp_path, **arrays)
    with pytest.raises(DictionaryLoadError) as info:
        load_dictionary(folder)
    assert words in str(info.value)


def test_ones_scaling_factor_is_dropped_as_saelens_does(tmp_path):
    folder = _gemma_folder(tmp_path, scaling_factor=np.ones(6, np.float32))
    sae = load_dictionary(folder)
    assert sae.n_features == 6 and sae.d_model == 4 and sae.activation == "jumprelu"


@pytest.mark.parametrize("edit,words", [
    (lambda h: h.pop("jump_relu_threshold"), "jump_relu_threshold must be a finite number"),
    (lambda h: h.update(dataset_average_activation_norm={"in": 0}), "> 0"),
    (lambda h: h.update(d_sae=7), "shape"),
    (lambda h: h.update(hook_point_in=3), "hook_point_in"),
])
def test_bad_llama_scope_hyperparams_are_refused(tmp_path, edit, words):
    folder = tmp_path / "sae"
    shutil.copytree(LXR_SAE, folder)
    hyper = json.loads((folder / "hyperparams.json").read_text())
    edit(hyper)
    (folder / "hyperparams.json").write_text(json.dumps(hyper))
    with pytest.raises(DictionaryLoadError, match=words.replace("[", r"\[")):
        load_dictionary(folder)


def test_scope_specs_resolve_and_name_the_download(tmp_path, monkeypatch):
    """The specs ask for the files SAELens' converters download (mocked: no network), and
    offline the error gives the ``hf download`` command for the SAE's folder."""
    asked = []

    def offline(**kwargs):
        asked.append((kwargs["repo_id"], kwargs["filename"]))
        raise OSError("offline")

    monkeypatch.setattr(hub, "_hf_hub_download", offline)
    with pytest.raises(DictionaryLoadError) as info:
        load_dictionary("saelens:gemma-scope-2b-pt-res-canonical/layer_5/width_16k/canonical",
                        cache_dir=tmp_path)
    assert asked == [("google/gemma-scope-2b-pt-res",
                      "layer_5/width_16k/average_l0_68/params.npz")]
    assert "hf download google/gemma-scope-2b-pt-res --include " in info.value.hint
    asked.clear()
    with pytest.raises(DictionaryLoadError):
        load_dictionary("saelens:llama_scope_lxm_32x/l7m_32x", cache_dir=tmp_path)
    assert asked == [("fnlp/Llama3_1-8B-Base-LXM-32x", "Llama3_1-8B-Base-L7M-32x/hyperparams.json")]
    assert len(hub.expand("saelens:llama_scope_lxr_8x")) == 32


def test_other_conversions_stay_refused_naming_what_is_read(monkeypatch, tmp_path):
    table = {"g3": {"repo_id": "google/gemma-scope-2-1b-pt", "conversion_func": "gemma_3",
                    "saes": [{"id": "a", "path": "a"}]}}
    monkeypatch.setattr(hub, "saelens_releases", lambda: table)
    with pytest.raises(DictionaryLoadError, match="'gemma_3'") as info:
        load_dictionary("saelens:g3/a", cache_dir=tmp_path)
    assert "gemma_2, llama_scope, llama_scope_r1_distill" in info.value.hint


def test_local_r1_distill_folder_loads_unfolded_and_says_so():
    """A Llama Scope R1-Distill folder has no norm factor in its files: loaded alone it is
    SAELens' SAE without the table's folding (inputs expected scaled, meta says so); folded
    with the table's factor (what the spec does) it equals SAELens' from_pretrained."""
    folder = PEERS / "llama_scope_r1_distill"
    expected = _expected(folder)
    sae = load_dictionary(folder / "800M-Slimpajama-0-OpenR1-Math-220k" / "L3R")
    assert sae.meta["normalize_activations"] == "expected_average_only_in"
    assert sae.site == "resid_out.3"
    factor = hub.resolve_saelens("llama_scope_r1_distill/l3r_800m_slimpajama"
                                 ).norm_scaling_factor
    with torch.no_grad():
        assert torch.allclose(sae.encode(expected["x"] * factor), expected["features"],
                              atol=1e-5)
        assert (sae.encode(expected["x"]) - expected["features"]).abs().max() > 0.05
        refold(sae, factor)
        assert torch.allclose(sae.encode(expected["x"]), expected["features"], atol=1e-5)
    assert "normalize_activations" not in sae.meta
