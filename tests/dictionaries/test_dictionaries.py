"""Every dictionary kind: reconstruction identity, save/load, foreign formats, bad files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from featcircuits import (
    DictionaryLoadError,
    FeatureIdError,
    NonFiniteError,
    WidthMismatchError,
    load_dictionaries,
    load_dictionary,
    save_dictionary,
)
from featcircuits.dictionaries import (
    ICABasis,
    NeuronBasis,
    PCABasis,
    RandomBasis,
    SparseAutoencoder,
)

D, N = 16, 48


def _sae(**kwargs) -> SparseAutoencoder:
    torch.manual_seed(0)
    sae = SparseAutoencoder(D, N, site="resid_out.1", **kwargs)
    with torch.no_grad():
        for param in sae.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return sae


def _all_kinds():
    data = torch.randn(500, D) @ torch.randn(D, D)
    return {
        "sae_relu": _sae(),
        "sae_tied": _sae(tied=True),
        "sae_topk": _sae(activation="topk", k=5),
        "sae_jumprelu": _sae(activation="jumprelu"),
        "sae_no_pre_bias": _sae(pre_encoder_bias=False),
        "neuron": NeuronBasis(D, site="resid_out.0"),
        "pca": PCABasis.fit(data, 10, site="resid_out.0"),
        "pca_full": PCABasis.fit(data, site="resid_out.0"),
        "ica": ICABasis(torch.randn(D, D), torch.randn(D), site="resid_out.0"),
        "random": RandomBasis(D, seed=3, site="resid_out.0"),
    }


@pytest.mark.parametrize("name", list(_all_kinds()))
def test_decode_encode_plus_error_is_identity(name):
    dictionary = _all_kinds()[name]
    x = torch.randn(3, 5, D)
    c = dictionary.encode(x)
    assert c.shape == (3, 5, dictionary.n_features)
    assert dictionary.directions.shape == (dictionary.n_features, D)
    torch.testing.assert_close(dictionary.decode(c) + dictionary.error(x), x, atol=1e-5, rtol=0)
    x_hat, features = dictionary(x, output_features=True)
    torch.testing.assert_close(features, c)
    torch.testing.assert_close(x_hat, dictionary.decode(c))


@pytest.mark.parametrize("name", ["neuron", "pca_full", "ica", "random"])
def test_full_rank_bases_reconstruct_exactly(name):
    dictionary = _all_kinds()[name]
    x = torch.randn(7, D)
    assert dictionary.error(x).abs().max() < 1e-4


def test_encode_formulas_match_manual_computation():
    sae = _sae()
    x = torch.randn(4, D)
    manual = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
    torch.testing.assert_close(sae.encode(x), manual)
    topk = _sae(activation="topk", k=3)
    features = topk.encode(x)
    assert ((features > 0).sum(-1) <= 3).all()
    pre = topk.pre_activations(x)
    # the 3 largest pre-activations are kept, rectified (values: no index, so ties are moot)
    torch.testing.assert_close(features.topk(3, dim=-1).values,
                               torch.relu(pre.topk(3, dim=-1).values))
    jump = _sae(activation="jumprelu")
    with torch.no_grad():
        jump.threshold.fill_(0.3)
    pre = jump.pre_activations(x)
    torch.testing.assert_close(jump.encode(x), torch.where(pre > 0.3, pre, torch.zeros_like(pre)))


def test_tied_sae_shares_weights():
    sae = _sae(tied=True)
    assert sae.W_dec.data_ptr() == sae.W_enc.data_ptr()
    assert len(list(sae.parameters())) == 3  # W_enc, b_enc, b_dec
    with torch.no_grad():
        sae.W_enc[0, 0] += 1.0
    assert sae.W_dec[0, 0] == sae.W_enc[0, 0]


def test_pca_components_orthonormal_and_sorted():
    data = torch.randn(2000, D) * torch.linspace(0.1, 3, D)
    pca = PCABasis.fit(data)
    gram = pca.directions @ pca.directions.T
    torch.testing.assert_close(gram, torch.eye(D), atol=1e-5, rtol=0)
    assert (pca.explained_variance[:-1] >= pca.explained_variance[1:]).all()
    torch.testing.assert_close(pca.explained_variance[0], data.var(0).max(), rtol=0.1, atol=0)


@pytest.mark.parametrize("name", list(_all_kinds()))
def test_save_load_round_trip_is_bit_exact(name, tmp_path):
    dictionary = _all_kinds()[name]
    save_dictionary(dictionary, tmp_path / name)
    loaded = load_dictionary(tmp_path / name)
    assert type(loaded) is type(dictionary)
    assert loaded.site == dictionary.site
    for key, value in dictionary.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(6, D)
    assert torch.equal(loaded.encode(x), dictionary.encode(x))
    cfg = json.loads((tmp_path / name / "cfg.json").read_text())
    assert cfg["d_in"] == D and cfg["d_sae"] == dictionary.n_features
    if name == "sae_tied":
        assert loaded.tied and loaded.W_dec.data_ptr() == loaded.W_enc.data_ptr()


def _write_saelens(folder, sae: SparseAutoencoder, *, legacy: bool) -> None:
    folder.mkdir()
    tensors = {"W_enc": sae.W_enc.detach(), "b_enc": sae.b_enc.detach(),
               "W_dec": sae.W_dec.detach().clone(), "b_dec": sae.b_dec.detach()}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach()
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    if legacy:  # pre-6.0 SAELens config keys
        cfg = {"d_in": D, "d_sae": N, "hook_point": "blocks.1.hook_resid_post",
               "hook_point_layer": 1, "activation_fn_str": sae.activation if sae.activation
               != "jumprelu" else "relu", "apply_b_dec_to_input": sae.pre_encoder_bias,
               "activation_fn_kwargs": {"k": sae.k} if sae.k else {}}
        if sae.activation == "jumprelu":
            cfg["architecture"] = "jumprelu"
    else:
        cfg = {"architecture": {"relu": "standard", "topk": "topk",
                                "jumprelu": "jumprelu"}[sae.activation],
               "d_in": D, "d_sae": N, "hook_name": "blocks.1.hook_resid_post",
               "apply_b_dec_to_input": sae.pre_encoder_bias, "normalize_activations": "none"}
        if sae.k:
            cfg["k"] = sae.k
    (folder / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize("kwargs", [{}, {"activation": "topk", "k": 4},
                                    {"activation": "jumprelu"}, {"pre_encoder_bias": False}])
def test_saelens_folders_load_with_same_encodings(tmp_path, legacy, kwargs):
    sae = _sae(**kwargs)
    if sae.threshold is not None:
        with torch.no_grad():
            sae.threshold.fill_(0.2)
    _write_saelens(tmp_path / "sae", sae, legacy=legacy)
    loaded = load_dictionary(tmp_path / "sae")
    assert loaded.site == "resid_out.1"
    x = torch.randn(10, D)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=0, rtol=0)
    torch.testing.assert_close(loaded.decode(sae.encode(x)), sae.decode(sae.encode(x)))


def test_dictionary_learning_autoencoder_loads_transposed(tmp_path):
    sae = _sae()
    folder = tmp_path / "resid_out_layer3" / "10_32768"
    folder.mkdir(parents=True)
    torch.save({"bias": sae.b_dec.detach().clone(), "encoder.weight": sae.W_enc.detach().T.clone(),
                "encoder.bias": sae.b_enc.detach().clone(),
                "decoder.weight": sae.W_dec.detach().T.clone()}, folder / "ae.pt")
    loaded = load_dictionary(folder)
    assert loaded.site == "resid_out.3"
    x = torch.randn(10, D)
    # dictionary_learning's own loader (AutoEncoder.from_pretrained) rescales decoder columns
    # to unit norm; features come back in those units, reconstructions unchanged
    unit = _sae()
    unit.normalize_decoder()
    assert float((sae.W_dec.detach().norm(dim=1) - 1).abs().max()) > 0.01
    torch.testing.assert_close(loaded.encode(x), unit.encode(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.decode(loaded.encode(x)), sae.decode(sae.encode(x)),
                               atol=1e-5, rtol=0)


def test_dictionary_learning_topk_with_config(tmp_path):
    sae = _sae(activation="topk", k=6)
    folder = tmp_path / "ae"
    folder.mkdir()
    torch.save({"b_dec": sae.b_dec.detach().clone(), "encoder.weight": sae.W_enc.detach().T.clone(),
                "encoder.bias": sae.b_enc.detach().clone(),
                "decoder.weight": sae.W_dec.detach().T.clone(), "k": torch.tensor(6)},
               folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "dict_class": "AutoEncoderTopK", "activation_dim": D, "dict_size": N, "k": 6, "layer": 2,
        "lm_name": "EleutherAI/pythia-70m-deduped", "submodule_name": "resid_post_layer_2"}}))
    loaded = load_dictionary(folder / "ae.pt")
    assert loaded.site == "resid_out.2" and loaded.activation == "topk" and loaded.k == 6
    x = torch.randn(10, D)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), atol=1e-6, rtol=0)


def test_corrupt_and_truncated_files_raise_project_errors(tmp_path):
    sae = _sae()
    save_dictionary(sae, tmp_path / "ok")
    weights = (tmp_path / "ok" / "sae_weights.safetensors").read_bytes()
    cases = {
        "truncated": lambda f: (f / "sae_weights.safetensors").write_bytes(weights[: len(weights) // 2]),
        "garbage": lambda f: (f / "sae_weights.safetensors").write_bytes(b"\x00\x01garbage" * 10),
        "bad_json": lambda f: (f / "cfg.json").write_text("{not json"),
        "no_cfg": lambda f: (f / "cfg.json").unlink(),
        "wrong_width": lambda f: (f / "cfg.json").write_text(
            (tmp_path / "ok" / "cfg.json").read_text().replace(f'"d_in": {D}', '"d_in": 99')),
    }
    for name, damage in cases.items():
        folder = tmp_path / name
        save_dictionary(sae, folder)
        damage(folder)
        with pytest.raises(DictionaryLoadError) as info:
            load_dictionary(folder)
        assert str(folder) in str(info.value) or name == "no_cfg", name
    missing = tmp_path / "missing_key"
    missing.mkdir()
    save_file({"W_enc": torch.zeros(D, N)}, str(missing / "sae_weights.safetensors"))
    (missing / "cfg.json").write_text(json.dumps({"d_in": D, "d_sae": N}))
    with pytest.raises(DictionaryLoadError, match="b_enc"):
        load_dictionary(missing)
    with pytest.raises(DictionaryLoadError, match="does not exist"):
        load_dictionary(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryLoadError, match="no dictionary files"):
        load_dictionary(tmp_path / "empty")


def test_nan_weights_rejected_at_load(tmp_path):
    sae = _sae()
    with torch.no_grad():
        sae.W_enc[2, 3] = float("nan")
    save_dictionary(sae, tmp_path / "nan")
    with pytest.raises(NonFiniteError, match="W_enc"):
        load_dictionary(tmp_path / "nan")


def test_width_mismatch_names_both_widths(tmp_path, tiny_models):
    save_dictionary(_sae(), tmp_path / "sae")  # d_in 16; tiny models have width 32
    with pytest.raises(WidthMismatchError, match="16.*32"):
        load_dictionary(tmp_path / "sae", model=tiny_models["gpt_neox"])


def test_feature_id_checks():
    sae = _sae()
    assert sae.check_feature_ids([0, 5, N - 1]).tolist() == [0, 5, N - 1]
    with pytest.raises(FeatureIdError, match=str(N)):
        sae.check_feature_ids([1, N])
    with pytest.raises(FeatureIdError, match="-1"):
        sae.check_feature_ids([-1])
    with pytest.raises(FeatureIdError, match="more than once"):
        sae.check_feature_ids([3, 3])


def test_load_dictionaries_keys_by_site(tmp_path):
    for layer in (1, 0):
        sae = _sae()
        sae.site = f"resid_out.{layer}"
        save_dictionary(sae, tmp_path / f"resid_out.{layer}")
    loaded = load_dictionaries(tmp_path)
    assert list(loaded) == ["resid_out.0", "resid_out.1"]


# ------------------------------------------------------------------- the contract
def test_dictionary_is_abstract():
    from featcircuits.dictionaries import Dictionary

    with pytest.raises(TypeError, match="abstract"):
        Dictionary()

    class NoBias(Dictionary):  # decoder_bias missing
        def encode(self, x):
            return x

        @property
        def directions(self):
            return torch.eye(D)

    with pytest.raises(TypeError, match="decoder_bias"):
        NoBias()

    class Identity(NoBias):
        @property
        def decoder_bias(self):
            return torch.zeros(D)

    identity = Identity(site="resid_out.2")
    x = torch.randn(3, D)
    assert torch.equal(identity.decode(identity.encode(x)), x)
    assert (identity.n_features, identity.d_model) == (D, D)
    assert identity.input_site == "resid_out.2" and identity.feature_label(3) == ""
    assert identity.architecture is None


def test_input_site_and_feature_label_defaults():
    from featcircuits.dictionaries import TokenBasis, Transcoder

    sae = _sae()
    assert sae.input_site == sae.site == "resid_out.1"
    assert sae.feature_label(7) == ""
    transcoder = Transcoder(D, N, input_site="resid_mid.1", site="mlp_out.1")
    assert (transcoder.input_site, transcoder.site) == ("resid_mid.1", "mlp_out.1")
    transcoder.input_site = "mlp_in.1"
    assert transcoder.input_site == "mlp_in.1"
    tokens = TokenBasis(torch.randn(3, D), token_strings=["a", "b", "c"])
    assert tokens.feature_label(1) == "b"
    assert TokenBasis(torch.randn(3, D)).feature_label(2) == "token 2"


# ------------------------------------------------------------------- the registry
def _randomized(dictionary):
    torch.manual_seed(1)
    with torch.no_grad():
        for param in dictionary.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return dictionary


def _one_per_architecture() -> dict:
    from featcircuits.dictionaries import LinearBasis, Transcoder

    def jumprelu(**kwargs):
        sae = _sae(activation="jumprelu", **kwargs)
        with torch.no_grad():
            sae.threshold.uniform_(0.0, 0.3)
        return sae

    def unit_decoder():
        sae = _sae()
        sae.normalize_decoder()
        return sae

    def gated():
        from featcircuits.dictionaries import GatedSparseAutoencoder

        return _randomized(GatedSparseAutoencoder(D, N, site="resid_out.1"))

    def shared_threshold(**meta):
        sae = _sae(activation="jumprelu", pre_encoder_bias=True)
        sae.meta.update(k=4, **meta)
        with torch.no_grad():
            sae.threshold.fill_(0.15)
        return sae

    data = torch.randn(200, D) @ torch.randn(D, D)
    return {
        "standard": _sae(),
        "topk": _sae(activation="topk", k=5),
        "jumprelu": jumprelu(),
        "featcircuits-linear": LinearBasis(torch.randn(10, D), None, torch.randn(D),
                                           site="resid_out.0"),
        "featcircuits-neuron": NeuronBasis(D, site="resid_out.0"),
        "featcircuits-random": RandomBasis(D, seed=3, n_features=40, site="resid_out.0"),
        "featcircuits-pca": PCABasis.fit(data, 10, site="resid_out.0"),
        "featcircuits-ica": ICABasis(torch.randn(D, D), torch.randn(D), torch.randn(D, D)),
        "AutoEncoder": unit_decoder(),
        "AutoEncoderTopK": _sae(activation="topk", k=5),
        # (with the pre-encoder bias the writer folds b_dec into b_enc, as dictionary_learning
        # never subtracts it: the same function up to rounding, tested in test_peer_fixtures)
        "JumpReluAutoEncoder": jumprelu(pre_encoder_bias=False),
        "transcoder": _randomized(Transcoder(D, N, activation="jumprelu", skip=True,
                                             input_site="resid_mid.1", site="mlp_out.1")),
        "gated": gated(),
        "GatedAutoEncoder": gated(),
        "AutoEncoderNew": _sae(pre_encoder_bias=False),
        "BatchTopKSAE": shared_threshold(),
        "MatryoshkaBatchTopKSAE": shared_threshold(group_sizes=[10, N - 10]),
        **{f"saelens_{name}": _randomized(Transcoder(
            D, N, activation=activation, skip=skip, input_site="resid_mid.1", site="mlp_out.1"))
           for name, activation, skip in [("transcoder", "relu", False),
                                          ("skip_transcoder", "relu", True),
                                          ("jumprelu_transcoder", "jumprelu", False),
                                          ("jumprelu_skip_transcoder", "jumprelu", True)]},
    }


def test_every_registered_architecture_has_a_round_trip_case():
    from featcircuits.dictionaries import FORMATS

    assert set(_one_per_architecture()) == set(FORMATS)


@pytest.mark.parametrize("architecture", [name for name in _one_per_architecture()
                                          if name.startswith("featcircuits-")])
def test_linear_bases_name_their_own_architecture_in_cfg_json(architecture, tmp_path):
    """A linear basis is written under its own architecture name, which SAELens refuses by
    name (checked by hand with sae-lens 6.54: ``KeyError: 'featcircuits-pca'``). Written as
    ``standard`` (before), SAELens read a neuron or random basis as a ReLU SAE — negative
    codes clipped, a silent wrong result — and failed on PCA's extra tensor."""
    import json

    from featcircuits.dictionaries import FORMATS

    FORMATS[architecture].save(_one_per_architecture()[architecture], tmp_path / "d")
    assert json.loads((tmp_path / "d" / "cfg.json").read_text())["architecture"] == architecture


@pytest.mark.parametrize("architecture", list(_one_per_architecture()))
def test_every_architecture_round_trips_with_identical_encodings(architecture, tmp_path):
    from featcircuits.dictionaries import FORMATS, format_of

    dictionary = _one_per_architecture()[architecture]
    fmt = FORMATS[architecture]
    assert fmt.name == architecture
    fmt.save(dictionary, tmp_path / "d")
    loaded = load_dictionary(tmp_path / "d")
    assert loaded.architecture == dictionary.architecture
    assert (loaded.input_site, loaded.site) == (dictionary.input_site, dictionary.site)
    x = torch.randn(64, D)
    with torch.no_grad():
        assert (loaded.encode(x) - dictionary.encode(x)).abs().max() == 0
        features = dictionary.encode(x)
        assert (loaded.decode(features) - dictionary.decode(features)).abs().max() == 0
    if fmt.layout != "dictionary_learning" and not architecture.startswith("saelens_"):
        # save_dictionary picks the same class (a Transcoder: circuit-tracer's file)
        assert format_of(dictionary) is fmt


def test_unknown_architectures_are_refused_naming_the_known_ones(tmp_path):
    from featcircuits.dictionaries import FORMATS, TokenBasis, dictionary_format

    with pytest.raises(DictionaryLoadError,
                       match="unknown dictionary architecture 'matching_pursuit'") as info:
        dictionary_format("matching_pursuit")
    assert all(name in str(info.value) for name in FORMATS)
    sae = _sae()
    _write_saelens(tmp_path / "mp", sae, legacy=False)
    cfg = json.loads((tmp_path / "mp" / "cfg.json").read_text())
    (tmp_path / "mp" / "cfg.json").write_text(json.dumps({**cfg,
                                                          "architecture": "matching_pursuit"}))
    with pytest.raises(DictionaryLoadError,
                       match="'matching_pursuit'.*\n.*standard, topk, jumprelu"):
        load_dictionary(tmp_path / "mp")
    save_dictionary(NeuronBasis(D), tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd" / "cfg.json").read_text())
    cfg["featcircuits"]["kind"] = "odd"
    del cfg["featcircuits"]["sha256"]
    (tmp_path / "odd" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryLoadError, match="'featcircuits-odd'"):
        load_dictionary(tmp_path / "odd")
    with pytest.raises(DictionaryLoadError, match="cannot save a TokenBasis"):
        save_dictionary(TokenBasis(torch.randn(5, D)), tmp_path / "tokens")
    assert not (tmp_path / "tokens").exists()


def test_registry_is_a_read_only_constant():
    from featcircuits.dictionaries import FORMATS, registry

    with pytest.raises(TypeError):
        FORMATS["mine"] = FORMATS["standard"]  # type: ignore[index]
    assert registry.FORMATS is FORMATS and len(FORMATS) == 21


def test_formats_refuse_dictionaries_they_cannot_store(tmp_path):
    from featcircuits import DictionaryError
    from featcircuits.dictionaries import FORMATS, CenteredSparseAutoencoder

    for architecture, dictionary in [("AutoEncoder", _sae(pre_encoder_bias=False)),
                                     ("AutoEncoder", _sae(activation="topk", k=5)),
                                     ("AutoEncoder", CenteredSparseAutoencoder(D, N)),
                                     ("topk", _sae()),
                                     ("featcircuits-pca", NeuronBasis(D))]:
        with pytest.raises(DictionaryError, match=f"format '{architecture}' cannot store|"
                           f"{architecture} cannot store"):
            FORMATS[architecture].save(dictionary, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
