"""Published dictionaries by spec (offline), transcoders, and patching through them.

Nothing here touches the network: hub downloads are either forbidden (cache hits) or made
to fail the way huggingface_hub fails offline.
"""

from __future__ import annotations

import json
import os
import zipfile

import huggingface_hub
import pytest
import torch
from safetensors.torch import save_file

from featcircuits import load_model, read_prompts
from featcircuits.dictionaries import hub, load_dictionary, save_dictionary
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.dictionaries.transcoder import Transcoder, load_transcoder
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import DictionaryError, DictionaryLoadError, ModelLoadError, SiteError
from featcircuits.model.loading import underlying_module
from featcircuits.model.sites import Site
from featcircuits.patching.experiment import PatchingExperiment

D, N = 16, 40


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails the test."""
    def forbidden(**kwargs):
        raise AssertionError(f"unexpected download {kwargs}")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", forbidden)


def _random_sae(seed: int = 0, **kwargs) -> SparseAutoencoder:
    torch.manual_seed(seed)
    sae = SparseAutoencoder(D, N, **kwargs)
    with torch.no_grad():
        sae.b_enc.uniform_(-0.1, 0.3)
        sae.b_dec.normal_(0, 0.3)
    return sae


def _write_saelens_folder(folder, sae: SparseAutoencoder, hook: str) -> None:
    """A folder as SAELens releases store it (pre-6.0 config keys, as in jbloom's repos)."""
    folder.mkdir(parents=True)
    save_file({"W_enc": sae.W_enc.detach().clone(), "b_enc": sae.b_enc.detach().clone(),
               "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_dec.detach().clone()},
              str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "d_in": D, "d_sae": N, "hook_point": hook, "hook_point_layer": 8,
        "activation_fn_str": "relu", "apply_b_dec_to_input": True, "model_name": "gpt2-small"}))


def _dictionary_learning_state(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    """dictionary_learning's AutoEncoder state dict: weights transposed w.r.t. SAELens."""
    return {"bias": sae.b_dec.detach().clone(), "encoder.weight": sae.W_enc.detach().T.clone(),
            "encoder.bias": sae.b_enc.detach().clone(),
            "decoder.weight": sae.W_dec.detach().T.clone()}


# ------------------------------------------------------------------------- resolution
def test_saelens_release_and_id_resolve_to_repo_and_folder():
    entry = hub.resolve_saelens("gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert (entry.repo_id, entry.path) == ("jbloom/GPT2-Small-SAEs-Reformatted",
                                           "blocks.8.hook_resid_pre")
    # an id whose folder has another name
    entry = hub.resolve_saelens("pythia-70m-deduped-res-sm/blocks.0.hook_resid_pre")
    assert (entry.repo_id, entry.path) == ("ctigges/pythia-70m-deduped__res-sm_processed",
                                           "e-res-sm")
    entry = hub.resolve_saelens("pythia-70m-deduped-mlp-sm/blocks.4.hook_mlp_out")
    assert entry.path == "4-mlp-sm"


def test_saelens_id_with_slashes_splits_release_at_first_slash(monkeypatch):
    table = {"gemma-scope-2b-pt-res": {"repo_id": "google/gemma-scope-2b-pt-res", "saes": [
        {"id": "layer_3/width_16k/average_l0_59", "path": "layer_3/width_16k/average_l0_59"}]}}
    monkeypatch.setattr(hub, "saelens_releases", lambda: table)
    entry = hub.resolve_saelens("gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_59")
    assert entry.release == "gemma-scope-2b-pt-res"
    assert entry.sae_id == "layer_3/width_16k/average_l0_59"


def test_unknown_release_or_id_lists_close_matches():
    with pytest.raises(DictionaryLoadError, match="gpt2-small-res-jb") as info:
        hub.resolve_saelens("gpt2-small-res-j/blocks.8.hook_resid_pre")
    assert "unknown SAELens release 'gpt2-small-res-j'" in str(info.value)
    with pytest.raises(DictionaryLoadError, match="blocks.8.hook_resid_pre") as info:
        hub.resolve_saelens("gpt2-small-res-jb/blocks.8.hook_resid_pr")
    assert "has no SAE 'blocks.8.hook_resid_pr'" in str(info.value)
    with pytest.raises(DictionaryLoadError, match="names no SAE"):
        hub.resolve_saelens("gpt2-small-res-jb")


def test_dictionary_learning_specs_in_both_site_spellings():
    ours = hub.resolve_dictionary_learning("pythia-70m-deduped/resid_out.3")
    theirs = hub.resolve_dictionary_learning("pythia-70m-deduped/resid_out_layer3/10_32768")
    assert ours == theirs
    assert ours.member == "pythia-70m-deduped/resid_out_layer3/10_32768/ae.pt"
    assert ours.site == "resid_out.3"
    assert ours.repo_id == "saprmarks/pythia-70m-deduped-saes"
    assert ours.archive == "dictionaries_pythia-70m-deduped_10.zip"
    embed = hub.resolve_dictionary_learning("dictionaries/pythia-70m-deduped/embed/10_32768/ae.pt")
    assert (embed.dl_site, embed.site) == ("embed", "embed")
    assert hub.resolve_dictionary_learning("pythia-70m-deduped/attn_out.5").site == "attn_out.5"


@pytest.mark.parametrize("rest, message", [
    ("pythia-70m-deduped/resid_out.6", "out of range"),
    ("pythia-70m-deduped/resid_in.3", "no dictionary_learning SAE at site"),
    ("pythia-70m-deduped/resid_out_layer3/5_32768", "not published"),
    ("pythia-70m/resid_out.3", "pythia-70m-deduped"),
    ("pythia-70m-deduped", "cannot parse"),
])
def test_bad_dictionary_learning_specs(rest, message):
    with pytest.raises(DictionaryLoadError, match=message):
        hub.resolve_dictionary_learning(rest)


def test_circuit_tracer_spec_and_spec_detection(tmp_path):
    entry = hub.resolve_circuit_tracer("mntss/transcoder-Llama-3.2-1B/layer_3")
    assert (entry.repo_id, entry.filename) == ("mntss/transcoder-Llama-3.2-1B",
                                               "layer_3.safetensors")
    with pytest.raises(DictionaryLoadError, match="cannot parse"):
        hub.resolve_circuit_tracer("mntss/layer_3")
    assert hub.is_spec("saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre")
    assert not hub.is_spec("huggingface:foo/bar") and not hub.is_spec(tmp_path)
    with pytest.raises(DictionaryLoadError, match="does not exist"):
        load_dictionary("huggingface:foo/bar")


# ------------------------------------------------------------------------- cache hits
def test_saelens_cache_hit_loads_without_network_and_centres_gpt2_res_jb(tmp_path, no_network):
    sae = _random_sae()
    folder = tmp_path / "saelens" / "jbloom--GPT2-Small-SAEs-Reformatted" / "blocks.8.hook_resid_pre"
    _write_saelens_folder(folder, sae, "blocks.8.hook_resid_pre")
    loaded = load_dictionary("saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre",
                             cache_dir=tmp_path)
    assert isinstance(loaded, CenteredSparseAutoencoder)  # release overrides: centred weights
    assert loaded.site == "resid_in.8"
    assert loaded.meta["release"] == "gpt2-small-res-jb"
    x = torch.randn(5, D) + 3.0  # a large mean, which the SAE must not see
    centred = x - x.mean(-1, keepdim=True)
    expected = torch.relu((centred - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(loaded.encode(x), expected.detach(), atol=1e-5, rtol=0)
    assert (loaded.encode(x) - sae.encode(x)).abs().max() > 1e-2  # centring matters
    torch.testing.assert_close(loaded.decode(loaded.encode(x)) + loaded.error(x), x)
    # the centring survives a save/load round trip (folded into W_enc / b_enc, so SAELens,
    # which does not centre, computes the same features: docs/ecosystem.md)
    save_dictionary(loaded, tmp_path / "saved")
    again = load_dictionary(tmp_path / "saved")
    assert isinstance(again, CenteredSparseAutoencoder)
    torch.testing.assert_close(again.encode(x), loaded.encode(x), atol=1e-5, rtol=0)


def test_saelens_cache_from_environment_variable(tmp_path, monkeypatch, no_network):
    sae = _random_sae(seed=1)
    folder = tmp_path / "saelens" / "ctigges--pythia-70m-deduped__res-sm_processed" / "2-res-sm"
    _write_saelens_folder(folder, sae, "blocks.2.hook_resid_post")
    monkeypatch.setenv("FEATCIRCUITS_CACHE", str(tmp_path))
    loaded = load_dictionary("saelens:pythia-70m-deduped-res-sm/blocks.2.hook_resid_post")
    assert type(loaded) is SparseAutoencoder and loaded.site == "resid_out.2"
    x = torch.randn(5, D)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-6, rtol=0)


def test_dictionary_learning_cache_hit(tmp_path, no_network):
    sae = _random_sae(seed=2)
    folder = (tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
              / "pythia-70m-deduped" / "mlp_out_layer4" / "10_32768")
    folder.mkdir(parents=True)
    torch.save(_dictionary_learning_state(sae), folder / "ae.pt")
    loaded = load_dictionary("dictionary_learning:pythia-70m-deduped/mlp_out.4",
                             cache_dir=tmp_path)
    assert loaded.site == "mlp_out.4" and loaded.meta["repo_id"] == (
        "saprmarks/pythia-70m-deduped-saes")
    x = torch.randn(5, D)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-6, rtol=0)


def test_dictionary_learning_zip_in_cache_extracts_only_the_requested_member(tmp_path,
                                                                              no_network):
    wanted, other = _random_sae(seed=3), _random_sae(seed=4)
    root = tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
    root.mkdir(parents=True)
    staging = tmp_path / "staging"
    staging.mkdir()
    torch.save(_dictionary_learning_state(wanted), staging / "a.pt")
    torch.save(_dictionary_learning_state(other), staging / "b.pt")
    with zipfile.ZipFile(root / "dictionaries_pythia-70m-deduped_10.zip", "w") as archive:
        archive.write(staging / "a.pt",
                      "dictionaries/pythia-70m-deduped/attn_out_layer2/10_32768/ae.pt")
        archive.write(staging / "b.pt",
                      "dictionaries/pythia-70m-deduped/attn_out_layer1/10_32768/ae.pt")
    loaded = load_dictionary("dictionary_learning:pythia-70m-deduped/attn_out_layer2",
                             cache_dir=tmp_path)
    assert loaded.site == "attn_out.2"
    x = torch.randn(5, D)
    torch.testing.assert_close(loaded.encode(x), wanted.encode(x), atol=1e-6, rtol=0)
    extracted = sorted(p.relative_to(root).as_posix() for p in root.rglob("ae.pt"))
    assert extracted == ["dictionaries/pythia-70m-deduped/attn_out_layer2/10_32768/ae.pt"]
    # second load: straight from the extracted file, even with the zip gone
    (root / "dictionaries_pythia-70m-deduped_10.zip").unlink()
    again = load_dictionary("dictionary_learning:pythia-70m-deduped/attn_out.2",
                            cache_dir=tmp_path)
    torch.testing.assert_close(again.encode(x), loaded.encode(x), atol=0, rtol=0)


def test_dictionary_learning_unzip_progress_switch(tmp_path, no_network, capfd):
    root = tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
    root.mkdir(parents=True)
    torch.save(_dictionary_learning_state(_random_sae(seed=5)), tmp_path / "ae.pt")
    with zipfile.ZipFile(root / "dictionaries_pythia-70m-deduped_10.zip", "w") as archive:
        for layer in (0, 1):
            archive.write(tmp_path / "ae.pt",
                          f"dictionaries/pythia-70m-deduped/resid_out_layer{layer}/10_32768/ae.pt")
    capfd.readouterr()
    load_dictionary("dictionary_learning:pythia-70m-deduped/resid_out.0", cache_dir=tmp_path,
                    progress=False)
    assert "unzip" not in capfd.readouterr().err  # progress=False: no bar
    load_dictionary("dictionary_learning:pythia-70m-deduped/resid_out.1", cache_dir=tmp_path)
    if not os.environ.get("TQDM_DISABLE"):
        assert "unzip" in capfd.readouterr().err  # the default shows it


def test_truncated_zip_says_download_again(tmp_path, no_network):
    root = tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
    root.mkdir(parents=True)
    (root / "dictionaries_pythia-70m-deduped_10.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DictionaryLoadError, match="not a valid zip"):
        load_dictionary("dictionary_learning:pythia-70m-deduped/embed", cache_dir=tmp_path)


# --------------------------------------------------------------------- offline failure
def _offline(**kwargs):
    from huggingface_hub.errors import LocalEntryNotFoundError

    raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and "
                                  "outgoing traffic has been disabled.")


def test_offline_saelens_error_gives_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _offline)
    with pytest.raises(DictionaryLoadError) as info:
        load_dictionary("saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre", cache_dir=tmp_path)
    message = str(info.value)
    local_dir = tmp_path / "saelens" / "jbloom--GPT2-Small-SAEs-Reformatted"
    assert (f"hf download jbloom/GPT2-Small-SAEs-Reformatted --include "
            f"'blocks.8.hook_resid_pre/*' --local-dir {local_dir}") in message
    assert "LocalEntryNotFoundError" in message


def test_offline_with_hf_hub_offline_env(tmp_path, monkeypatch):
    """The real hf_hub_download, in offline mode: no network, the same helpful error."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DictionaryLoadError) as info:
        load_dictionary("dictionary_learning:pythia-70m-deduped/resid_out.3", cache_dir=tmp_path)
    local_dir = tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
    message = str(info.value)
    assert (f"hf download saprmarks/pythia-70m-deduped-saes "
            f"dictionaries_pythia-70m-deduped_10.zip --local-dir {local_dir}") in message
    assert f"{local_dir}/pythia-70m-deduped/resid_out_layer3/10_32768/ae.pt" in message
    with pytest.raises(DictionaryLoadError, match="hf download mntss/transcoder-Llama-3.2-1B "
                       "layer_3.safetensors config.yaml --local-dir"):
        load_dictionary("circuit_tracer:mntss/transcoder-Llama-3.2-1B/layer_3",
                        cache_dir=tmp_path)


def test_offline_model_error_names_the_download_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelLoadError, match="hf download EleutherAI/pythia-70m-deduped "
                       "--local-dir"):
        load_model("EleutherAI/pythia-70m-deduped")


def test_release_in_another_format_is_refused(monkeypatch, tmp_path):
    table = {"odd": {"repo_id": "someone/odd", "conversion_func": "connor_rob_hook_z",
                     "saes": [{"id": "blocks.0.hook_z", "path": "x.pt"}]}}
    monkeypatch.setattr(hub, "saelens_releases", lambda: table)
    with pytest.raises(DictionaryLoadError, match="another format"):
        load_dictionary("saelens:odd/blocks.0.hook_z", cache_dir=tmp_path)


# -------------------------------------------------------------------------- transcoders
def _circuit_tracer_tensors(seed: int, d_model: int, n: int, *, jumprelu: bool) -> dict:
    generator = torch.Generator().manual_seed(seed)
    tensors = {"W_enc": torch.randn(n, d_model, generator=generator) / d_model ** 0.5,
               "W_dec": torch.randn(n, d_model, generator=generator) * 0.1,
               "b_enc": torch.randn(n, generator=generator) * 0.1,
               "b_dec": torch.randn(d_model, generator=generator) * 0.1,
               "W_skip": torch.randn(d_model, d_model, generator=generator) * 0.01}
    if jumprelu:
        tensors["threshold"] = torch.rand(n, generator=generator) * 0.2
    return tensors


def test_circuit_tracer_file_loads_with_right_orientation(tmp_path):
    tensors = _circuit_tracer_tensors(0, D, N, jumprelu=True)
    save_file(tensors, str(tmp_path / "layer_2.safetensors"))
    (tmp_path / "config.yaml").write_text(
        "model_name: some/model\nfeature_input_hook: hook_resid_mid\n"
        "feature_output_hook: hook_mlp_out\ntranscoders: []\n")
    loaded = load_dictionary(tmp_path / "layer_2.safetensors")
    assert isinstance(loaded, Transcoder)
    assert (loaded.input_site, loaded.site) == ("resid_mid.2", "mlp_out.2")
    # circuit-tracer's JumpReLU keeps the sign: pre * (pre > threshold)
    assert loaded.activation == "jumprelu_signed"
    assert (loaded.d_model, loaded.n_features) == (D, N)
    assert tuple(loaded.W_enc.shape) == (D, N) and tuple(loaded.directions.shape) == (N, D)
    x = torch.randn(7, D)
    pre = x @ tensors["W_enc"].T + tensors["b_enc"]  # circuit-tracer: F.linear(x, W_enc, b_enc)
    features = pre * (pre > tensors["threshold"])
    assert (features > 0).any()
    torch.testing.assert_close(loaded.encode(x), features, atol=1e-6, rtol=0)
    expected = features @ tensors["W_dec"] + tensors["b_dec"] + x @ tensors["W_skip"].T
    torch.testing.assert_close(loaded.transcode(x), expected, atol=1e-5, rtol=0)
    # the other hooks of circuit-tracer configs map to our sites
    (tmp_path / "config.yaml").write_text(
        "feature_input_hook: ln2.hook_normalized\nfeature_output_hook: mlp.hook_out\n")
    # ln2.hook_normalized is before the norm's weight and bias: mlp_normed, not mlp_in
    assert load_transcoder(tmp_path / "layer_2.safetensors").input_site == "mlp_normed.2"


def test_saelens_oriented_encoder_is_rejected_and_legacy_decoder_transposed(tmp_path):
    tensors = _circuit_tracer_tensors(1, D, N, jumprelu=False)
    wrong = dict(tensors, W_enc=tensors["W_enc"].T.contiguous())  # SAELens' [d_in, d_sae]
    save_file(wrong, str(tmp_path / "layer_0.safetensors"))
    with pytest.raises(DictionaryLoadError, match=r"W_enc.*expected \[d_transcoder, d_model\]"):
        load_dictionary(tmp_path / "layer_0.safetensors")
    legacy = dict(tensors, W_dec=tensors["W_dec"].T.contiguous())  # 2025 files: [d_model, d_t]
    save_file(legacy, str(tmp_path / "layer_1.safetensors"))
    loaded = load_transcoder(tmp_path / "layer_1.safetensors")
    assert loaded.activation == "relu" and (loaded.input_site, loaded.site) == (
        "resid_mid.1", "mlp_out.1")  # no config.yaml: circuit-tracer's usual hooks
    torch.testing.assert_close(loaded.directions, tensors["W_dec"], atol=0, rtol=0)
    with pytest.raises(DictionaryError, match="output_error"):
        loaded.error(torch.randn(2, D))
    # with both activations: the error node of circuits, x_out − decode(encode(x_in))
    x_in, x_out = torch.randn(2, D), torch.randn(2, D)
    torch.testing.assert_close(loaded.error(x_out, x_in),
                               x_out - loaded.decode(loaded.encode(x_in)), atol=0, rtol=0)
    same_site = Transcoder(D, N, input_site="mlp_out.1", site="mlp_out.1")
    torch.testing.assert_close(same_site.error(x_out, x_out), same_site.error(x_out))


def test_transcoder_save_load_round_trip(tmp_path):
    transcoder = Transcoder(D, N, activation="jumprelu", skip=True, input_site="mlp_in.1",
                            site="mlp_out.1")
    with torch.no_grad():
        for parameter in transcoder.parameters():
            parameter.normal_(0, 0.2)
    save_dictionary(transcoder, tmp_path / "tc")
    loaded = load_dictionary(tmp_path / "tc")
    assert isinstance(loaded, Transcoder)
    assert (loaded.input_site, loaded.site) == ("mlp_in.1", "mlp_out.1")
    x = torch.randn(6, D)
    torch.testing.assert_close(loaded.transcode(x), transcoder.transcode(x), atol=0, rtol=0)


def test_circuit_tracer_cache_hit(tmp_path, no_network):
    local = tmp_path / "circuit_tracer" / "someone--tc-repo"
    local.mkdir(parents=True)
    save_file(_circuit_tracer_tensors(2, D, N, jumprelu=False), str(local / "layer_3.safetensors"))
    (local / "config.yaml").write_text("feature_input_hook: hook_resid_mid\n"
                                       "feature_output_hook: hook_mlp_out\n")
    loaded = load_dictionary("circuit_tracer:someone/tc-repo/layer_3", cache_dir=tmp_path)
    assert (loaded.input_site, loaded.site) == ("resid_mid.3", "mlp_out.3")
    assert loaded.meta["repo_id"] == "someone/tc-repo"


# ---------------------------------------------------------------- sites and patching
def test_resid_mid_is_the_residual_entering_the_mlp(tiny_models):
    gpt2, neox = tiny_models["gpt2"], tiny_models["gpt_neox"]
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with gpt2.trace(ids):  # sequential block: resid_mid = resid_in + attn_out
        resid_in = Site.parse("resid_in.1").read(gpt2).save()
        attn_out = Site.parse("attn_out.1").read(gpt2).save()
        resid_mid = Site.parse("resid_mid.1").read(gpt2).save()
        mlp_in = Site.parse("mlp_in.1").read(gpt2).save()
    torch.testing.assert_close(resid_mid, resid_in + attn_out, atol=1e-5, rtol=0)
    assert (mlp_in - resid_mid).abs().max() > 1e-2  # the MLP's input is normed
    with neox.trace(ids):  # parallel block: the MLP reads the block's input
        resid_in = Site.parse("resid_in.1").read(neox).save()
        resid_mid = Site.parse("resid_mid.1").read(neox).save()
    torch.testing.assert_close(resid_mid, resid_in, atol=0, rtol=0)
    assert Site.from_hook_name("blocks.4.hook_resid_mid") == Site("resid_mid", 4)
    assert Site("resid_mid", 2).to_hook_name() == "blocks.2.hook_resid_mid"
    assert Site("attn_out", 1).depth < Site("resid_mid", 1).depth < Site("mlp_out", 1).depth
    with pytest.raises(SiteError, match="read but not written"), gpt2.trace(ids):
        Site.parse("resid_mid.1").write(gpt2, resid_mid)


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


def _tiny_transcoder(model, layer: int) -> Transcoder:
    width = 128
    torch.manual_seed(5)
    transcoder = Transcoder(width, 96, input_site=f"resid_mid.{layer}", site=f"mlp_out.{layer}")
    with torch.no_grad():
        transcoder.W_enc.normal_(0, 1 / width ** 0.5)
        transcoder.b_enc.uniform_(-0.2, 0.2)
        transcoder.W_dec_untied.normal_(0, 2.0 / 96 ** 0.5)
        transcoder.b_dec.normal_(0, 0.1)
    return transcoder


def test_patching_through_a_transcoder_matches_manual_hooks(tiny):
    layer = 1
    transcoder = _tiny_transcoder(tiny, layer)
    prompts = read_prompts("featcircuits/data/ioi/prompts.jsonl").query("corruption == 'abc'").head(4)
    experiment = PatchingExperiment(tiny, transcoder, prompts,
                                    settings=RunSettings(progress=False))
    active = experiment.active_features()
    assert len(active) > 10
    feature_sets = [[], active[: len(active) // 2], active]
    logits, _ = experiment.patched_logits(feature_sets)

    plain = underlying_module(tiny)
    block = plain.gpt_neox.layers[layer]
    captured = {}
    grab = block.post_attention_layernorm.register_forward_pre_hook(
        lambda module, args: captured.__setitem__("x_in", args[0].detach()))
    with torch.no_grad():
        plain(experiment.prompts.clean_ids)
    grab.remove()
    clean_features = transcoder.encode(captured["x_in"])
    mask = experiment.prompts.token_mask.float()[..., None]
    rows = torch.arange(len(prompts))
    final = experiment.prompts.final_positions
    for index, feature_set in enumerate(feature_sets):
        chosen = torch.zeros(transcoder.n_features)
        chosen[feature_set] = 1.0

        def add_delta(module, args, output, chosen=chosen):
            corrupt_features = transcoder.encode(captured["x_in_corrupt"])
            delta = ((clean_features - corrupt_features) * chosen * mask) @ transcoder.W_dec
            return output + delta

        hooks = [block.post_attention_layernorm.register_forward_pre_hook(
                     lambda module, args: captured.__setitem__("x_in_corrupt", args[0])),
                 block.mlp.register_forward_hook(add_delta)]
        with torch.no_grad():
            manual = plain(experiment.prompts.corrupt_ids).logits[rows, final]
        for hook in hooks:
            hook.remove()
        assert (logits[index] - manual).abs().max() < 1e-5
    assert (logits[0] - experiment.corrupt_logits).abs().max() < 1e-5
    assert (logits[2] - experiment.corrupt_logits).abs().max() > 1e-3  # the patch does something


def test_cli_patches_through_a_cached_transcoder_spec(tiny, tmp_path, monkeypatch, capsys):
    from featcircuits.cli.main import main

    transcoder = _tiny_transcoder(tiny, 2)
    local = tmp_path / "cache" / "circuit_tracer" / "someone--tiny-transcoders"
    local.mkdir(parents=True)
    save_file({"W_enc": transcoder.W_enc.detach().T.contiguous(),
               "W_dec": transcoder.W_dec.detach().clone(), "b_enc": transcoder.b_enc.detach(),
               "b_dec": transcoder.b_dec.detach()}, str(local / "layer_2.safetensors"))
    (local / "config.yaml").write_text("feature_input_hook: hook_resid_mid\n"
                                       "feature_output_hook: hook_mlp_out\n")
    monkeypatch.setenv("FEATCIRCUITS_CACHE", str(tmp_path / "cache"))
    rows = read_prompts("featcircuits/data/ioi/prompts.jsonl").query("corruption == 'abc'").head(4)
    prompts = tmp_path / "p.csv"
    rows[["clean", "corrupt", "answer", "wrong_answer"]].to_csv(prompts, index=False)
    out = tmp_path / "patch.csv"
    code = main(["patch", "--prompts", str(prompts), "--dictionaries",
                 "circuit_tracer:someone/tiny-transcoders/layer_2", "--features", "0", "1", "2",
                 "3", "4", "5", "6", "7", "--out", str(out), "--quiet"])
    assert code == 0
    import pandas as pd

    expected = PatchingExperiment(tiny, transcoder, rows,
                                  settings=RunSettings(progress=False)).evaluate(
        [list(range(8))])
    assert expected.loc[0, "kl"] > 1e-6  # the features do something
    assert abs(pd.read_csv(out).loc[0, "kl"] - expected.loc[0, "kl"]) < 1e-5
    capsys.readouterr()
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", _offline)
    code = main(["patch", "--prompts", str(prompts), "--dictionaries",
                 "saelens:gpt2-small-res-jb/blocks.8.hook_resid_pre", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1 and "hf download jbloom/GPT2-Small-SAEs-Reformatted" in err


def test_dashboard_refuses_a_transcoder(tiny):
    from featcircuits.dashboards import feature_dashboard_data
    from featcircuits.errors import ParameterError

    with pytest.raises(ParameterError, match="reads resid_mid.1 and writes mlp_out.1"):
        feature_dashboard_data(tiny, _tiny_transcoder(tiny, 1), "mlp_out.1", 0, texts=["w1"])


def test_installed_sae_lens_table_is_read_too(tmp_path, monkeypatch):
    package = tmp_path / "sae_lens"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (package / "pretrained_saes.yaml").write_text(
        "SAE_LOOKUP:\n"
        "  extra-release:\n"
        "    repo_id: someone/extra-saes\n"
        "    model: gpt2-small\n"
        "    conversion_func:\n"
        "    saes:\n"
        "      - id: blocks.3.hook_resid_post\n"
        "        path: layer_3/folder\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hub.saelens_releases.cache_clear()
    try:
        entry = hub.resolve_saelens("extra-release/blocks.3.hook_resid_post")
        assert (entry.repo_id, entry.path) == ("someone/extra-saes", "layer_3/folder")
        assert hub.resolve_saelens("gpt2-small-res-jb/blocks.0.hook_resid_pre").path == (
            "blocks.0.hook_resid_pre")  # the curated copy stays
    finally:
        hub.saelens_releases.cache_clear()


def test_whole_sets_by_spec(tmp_path, no_network):
    from featcircuits.dictionaries import load_dictionaries

    specs = hub.expand("dictionary_learning:pythia-70m-deduped")
    assert len(specs) == 19 and specs[0] == "dictionary_learning:pythia-70m-deduped/embed"
    assert len(hub.expand("saelens:gpt2-small-res-jb")) == 13
    assert hub.expand("saelens:gpt2-small-res-jb/blocks.1.hook_resid_pre") == [
        "saelens:gpt2-small-res-jb/blocks.1.hook_resid_pre"]
    with pytest.raises(DictionaryLoadError, match="pythia-70m-deduped-res-sm"):
        hub.expand("saelens:pythia-70m-deduped-res")
    root = tmp_path / "dictionary_learning" / "saprmarks--pythia-70m-deduped-saes"
    root.mkdir(parents=True)
    saes = {}
    with zipfile.ZipFile(root / "dictionaries_pythia-70m-deduped_10.zip", "w") as archive:
        for index, spec in enumerate(specs):
            dl_site = spec.split("/")[-1]
            saes[dl_site] = _random_sae(seed=index)
            staging = tmp_path / f"{index}.pt"
            torch.save(_dictionary_learning_state(saes[dl_site]), staging)
            archive.write(staging, f"pythia-70m-deduped/{dl_site}/10_32768/ae.pt")
    loaded = load_dictionaries("dictionary_learning:pythia-70m-deduped", cache_dir=tmp_path)
    assert list(loaded)[:4] == ["embed", "attn_out.0", "mlp_out.0", "resid_out.0"]
    assert len(loaded) == 19
    x = torch.randn(3, D)
    torch.testing.assert_close(loaded["mlp_out.4"].encode(x), saes["mlp_out_layer4"].encode(x),
                               atol=1e-6, rtol=0)
