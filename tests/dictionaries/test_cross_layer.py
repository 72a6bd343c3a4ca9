"""Cross-layer transcoders in circuit-tracer's layout: read exactly (the peer's recorded
outputs, and folders written here checked against a plain-torch reference), or refused with
an error that names what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from featcircuits.dictionaries import (
    CrossLayerTranscoder,
    load_cross_layer_transcoder,
    load_dictionaries,
    load_dictionary,
)
from featcircuits.errors import DictionaryError, DictionaryLoadError

FIXTURE = (Path(__file__).resolve().parents[1] / "fixtures" / "peers" / "circuit_tracer-0.5.0"
           / "cross_layer_transcoder")


def write_clt(folder: Path, n_layers: int = 3, n_features: int = 12, d_model: int = 8, *,
              thresholds: bool = True, seed: int = 0, config: str | None = None
              ) -> dict[str, torch.Tensor]:
    """Random weights written as circuit-tracer's files; returns them."""
    generator = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {}
    for layer in range(n_layers):
        enc = {f"W_enc_{layer}": torch.randn(n_features, d_model, generator=generator),
               f"b_enc_{layer}": torch.randn(n_features, generator=generator) * 0.3,
               f"b_dec_{layer}": torch.randn(d_model, generator=generator)}
        if thresholds:  # negative ones too: circuit-tracer's JumpReLU keeps the sign
            enc[f"threshold_{layer}"] = torch.rand(n_features, generator=generator) * 2 - 1
        dec = {f"W_dec_{layer}": torch.randn(n_features, n_layers - layer, d_model,
                                             generator=generator)}
        save_file(enc, str(folder / f"W_enc_{layer}.safetensors"))
        save_file(dec, str(folder / f"W_dec_{layer}.safetensors"))
        weights.update(enc)
        weights.update(dec)
    if config is not None:
        (folder / "config.yaml").write_text(config)
    return weights


def reference(weights: dict[str, torch.Tensor], x: torch.Tensor, n_layers: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain torch, as circuit-tracer computes: features ``[N, rows, F]`` and outputs
    ``[N, rows, d]`` from inputs ``x [N, rows, d]``."""
    features = []
    for layer in range(n_layers):
        pre = torch.einsum("bd,fd->bf", x[layer], weights[f"W_enc_{layer}"]) + \
            weights[f"b_enc_{layer}"]
        threshold = weights.get(f"threshold_{layer}")
        features.append(torch.relu(pre) if threshold is None else pre * (pre > threshold))
    features = torch.stack(features)
    out = torch.stack([weights[f"b_dec_{layer}"].expand(x.shape[1], -1).clone()
                       for layer in range(n_layers)])
    for read in range(n_layers):
        contribution = torch.einsum("bf,fod->obd", features[read], weights[f"W_dec_{read}"])
        out[read:] += contribution
    return features, out


def test_fixture_loads_one_dictionary_per_read_layer():
    expected = load_file(str(FIXTURE / "expected.safetensors"))
    loaded = load_dictionaries(FIXTURE)
    assert list(loaded) == ["mlp_out.0", "mlp_out.1"]
    assert [d.input_site for d in loaded.values()] == ["resid_mid.0", "resid_mid.1"]
    assert loaded["mlp_out.0"].output_sites == ["mlp_out.0", "mlp_out.1"]
    assert list(loaded["mlp_out.0"].later_writes) == ["mlp_out.1"]
    assert loaded["mlp_out.1"].later_writes == {}
    assert loaded["mlp_out.1"].meta["hook_name"] == "blocks.1.hook_resid_mid"
    clt = CrossLayerTranscoder(list(loaded.values()))
    with torch.no_grad():
        features = clt.encode(expected["x"])
        outputs = clt.reconstruct(features)
    for layer in range(2):  # float32 error relative to the values' scale (|x_out| ≈ 26)
        for ours, peer in ((features[layer], expected["features"][layer]),
                           (outputs[layer], expected["x_out"][layer])):
            assert (ours - peer).abs().max() / max(1.0, float(peer.abs().max())) < 1e-5
    # sharp: layer 0's features reach mlp_out.1, so decoding only layer 1 there misses
    own = loaded["mlp_out.1"].decode(features[1])
    assert (own - expected["x_out"][1]).abs().max() > 0.05
    assert (features[0] > 0).sum() > 10


def test_a_folder_of_the_same_layout_loads_exactly(tmp_path):
    """JumpReLU with negative thresholds, three layers, hooks from config.yaml."""
    weights = write_clt(tmp_path / "clt", config="feature_input_hook: mlp.hook_in\n"
                        "feature_output_hook: mlp.hook_out\nmodel_kind: cross_layer_transcoder\n")
    clt = load_cross_layer_transcoder(tmp_path / "clt")
    assert clt.input_sites == ["mlp_in.0", "mlp_in.1", "mlp_in.2"]
    assert clt.output_sites == ["mlp_out.0", "mlp_out.1", "mlp_out.2"]
    x = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(1))
    features, outputs = reference(weights, x, 3)
    with torch.no_grad():
        ours = clt.encode(x)
        reconstructed = clt.reconstruct(ours)
        errors = clt.error(outputs + 1.0, x)
    assert ((features < 0) & (features != 0)).any()  # the signed JumpReLU is exercised
    for layer in range(3):
        assert (ours[layer] - features[layer]).abs().max() < 1e-5
        assert (reconstructed[layer] - outputs[layer]).abs().max() < 1e-4
        assert (errors[layer] - 1.0).abs().max() < 1e-4
    # a feature subset computes the same columns
    view = clt.layers[1]
    ids = torch.tensor([3, 0, 7])
    assert torch.allclose(view.encode_features(x[1], ids), view.encode(x[1])[:, ids], atol=1e-5)


def test_default_hooks_without_config(tmp_path):
    write_clt(tmp_path / "clt", n_layers=2, thresholds=False)
    loaded = load_dictionaries(tmp_path / "clt")
    assert {site: d.input_site for site, d in loaded.items()} == {
        "mlp_out.0": "resid_mid.0", "mlp_out.1": "resid_mid.1"}
    assert loaded["mlp_out.0"].threshold is None


@pytest.mark.parametrize("name", ["", "W_enc_1.safetensors", "W_dec_0.safetensors"])
def test_load_dictionary_refuses_a_cross_layer_folder(name):
    with pytest.raises(DictionaryLoadError, match="(?s)cross-layer transcoder.*load_dictionaries"):
        load_dictionary(FIXTURE / name if name else FIXTURE)


def test_one_layers_error_is_refused():
    layer = load_dictionaries(FIXTURE)["mlp_out.1"]
    x = torch.zeros(2, 32)
    with pytest.raises(DictionaryError, match="every earlier layer"):
        layer.error(x, x)


@pytest.mark.parametrize("damage,message", [
    ("missing_decoder", r"W_dec \[0, 1\]"),
    ("threshold_on_layer_0_only", "lacks tensors.*threshold_1"),
    ("wrong_decoder_shape", "W_dec_1.*shape"),
    ("extra_tensor", "does not read"),
])
def test_damaged_folders_are_refused(tmp_path, damage, message):
    folder = tmp_path / "clt"
    write_clt(folder, thresholds=damage != "threshold_on_layer_0_only")
    if damage == "missing_decoder":
        (folder / "W_dec_2.safetensors").unlink()
    elif damage == "threshold_on_layer_0_only":
        enc = load_file(str(folder / "W_enc_0.safetensors"))
        enc["threshold_0"] = torch.zeros(12)
        save_file(enc, str(folder / "W_enc_0.safetensors"))
    elif damage == "wrong_decoder_shape":
        save_file({"W_dec_1": torch.zeros(12, 3, 8)}, str(folder / "W_dec_1.safetensors"))
    else:
        enc = load_file(str(folder / "W_enc_2.safetensors"))
        enc["W_skip_2"] = torch.zeros(8, 8)
        save_file(enc, str(folder / "W_enc_2.safetensors"))
    with pytest.raises(DictionaryLoadError, match=message):
        load_dictionaries(folder)


def test_fixture_copy_with_a_config_elsewhere(tmp_path):
    """A copy without config.yaml reads circuit-tracer's default hooks (the fixture's own)."""
    target = tmp_path / "copy"
    shutil.copytree(FIXTURE, target)
    (target / "config.yaml").unlink()
    loaded = load_dictionaries(target)
    assert list(loaded) == ["mlp_out.0", "mlp_out.1"]
