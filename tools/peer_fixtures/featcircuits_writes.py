"""The other direction: dictionaries featcircuits writes in the peers' layouts.

    python tools/peer_fixtures/featcircuits_writes.py <out folder>

Runs in featcircuits' own environment (``tools/peer_fixtures.py`` does, before the peer
generators). Writes ``<out>/<peer>/featcircuits_<variant>/``: the files ``save_dictionary``
(or the named format) writes, plus ``inputs.safetensors`` (``x``) and ``written.json``. Each
peer's generator then loads those files with the peer's own loader and records what the peer
computes, beside featcircuits' files, so the fixture test compares the two.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from featcircuits.dictionaries import (
    FORMATS,
    CenteredSparseAutoencoder,
    GatedSparseAutoencoder,
    SparseAutoencoder,
    Transcoder,
    save_dictionary,
)

D, N = 32, 64
sys.path.insert(0, str(Path(__file__).parent))
from common import stable_rows  # the generators' shared helper


@torch.no_grad()
def _random(dictionary, seed: int):
    """Random weights (non-unit decoder rows, biases, thresholds of both signs)."""
    gen = torch.Generator().manual_seed(seed)
    for name, param in dictionary.named_parameters():
        if "threshold" in name:
            param.copy_(torch.rand(param.shape, generator=gen) * 3 - 1.5)
        elif param.ndim == 2:
            param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
        else:
            param.copy_((torch.rand(param.shape, generator=gen) - 0.5) * 0.6)
    return dictionary


def variants():
    """(peer, variant, dictionary, format name or None for save_dictionary, notes)."""
    yield ("saelens", "standard", _random(SparseAutoencoder(D, N, site="resid_out.3"), 500),
           None, "")
    yield ("saelens", "topk", _random(SparseAutoencoder(D, N, activation="topk", k=6,
                                                       site="mlp_out.2"), 501), None, "k=6")
    yield ("saelens", "jumprelu", _random(SparseAutoencoder(D, N, activation="jumprelu",
                                                           site="attn_out.1"), 502), None,
           "thresholds in [-1.5, 1.5]")
    yield ("saelens", "gated", _random(GatedSparseAutoencoder(D, N, site="resid_out.3"), 503),
           None, "")
    yield ("saelens", "centered", _random(CenteredSparseAutoencoder(D, N, site="resid_in.8"),
                                          504), None,
           "input centring folded into W_enc / b_enc at save time")
    yield ("saelens", "hook_z", _random(SparseAutoencoder(D, N, site="attn_z.1"), 505), None,
           "written with reshape_activations=hook_z; the peer is fed z as [rows, 4 heads, 8]")
    for seed, (fmt, activation, skip) in enumerate(
            [("saelens_transcoder", "relu", False), ("saelens_skip_transcoder", "relu", True),
             ("saelens_jumprelu_skip_transcoder", "jumprelu", True)], start=510):
        yield ("saelens", fmt.removeprefix("saelens_"),
               _random(Transcoder(D, N, activation=activation, skip=skip,
                                  input_site="resid_mid.1", site="mlp_out.1"), seed), fmt, "")
    def dl_sae(seed: int, **kwargs):
        sae = _random(SparseAutoencoder(D, N, site="resid_out.3", **kwargs), seed)
        if kwargs.get("activation") == "jumprelu" and "pre_encoder_bias" not in kwargs:
            with torch.no_grad():  # one shared threshold (BatchTopK, Matryoshka)
                sae.threshold.fill_(0.45)
            sae.meta.update(k=6)
        return sae

    unit = dl_sae(530)
    unit.normalize_decoder()
    yield "dictionary_learning", "AutoEncoder", unit, "AutoEncoder", "unit-norm decoder rows"
    yield ("dictionary_learning", "AutoEncoderTopK", dl_sae(531, activation="topk", k=6),
           "AutoEncoderTopK", "k=6")
    yield ("dictionary_learning", "AutoEncoderNew", dl_sae(532, pre_encoder_bias=False),
           "AutoEncoderNew", "")
    yield ("dictionary_learning", "JumpReluAutoEncoder",
           dl_sae(533, activation="jumprelu", pre_encoder_bias=True), "JumpReluAutoEncoder",
           "pre_encoder_bias=True, thresholds in [-1.5, 1.5]")
    yield ("dictionary_learning", "GatedAutoEncoder",
           _random(GatedSparseAutoencoder(D, N, site="resid_out.3"), 534), "GatedAutoEncoder", "")
    yield ("dictionary_learning", "BatchTopKSAE", dl_sae(535, activation="jumprelu"),
           "BatchTopKSAE", "shared threshold 0.45")
    matryoshka = dl_sae(536, activation="jumprelu")
    matryoshka.meta["group_sizes"] = [16, 48]
    yield ("dictionary_learning", "MatryoshkaBatchTopKSAE", matryoshka, "MatryoshkaBatchTopKSAE",
           "shared threshold 0.45, group_sizes [16, 48]")
    for seed, (name, activation, skip) in enumerate(
            [("relu", "relu", False), ("jumprelu_skip", "jumprelu", True),
             ("jumprelu_signed", "jumprelu_signed", False)], start=520):
        yield ("circuit_tracer", name, _random(Transcoder(D, N, activation=activation, skip=skip,
                                                          input_site="resid_mid.1",
                                                          site="mlp_out.1"), seed), None,
               "written as max(threshold, 0)" if activation == "jumprelu" else "")


def main(out: Path) -> None:
    torch.manual_seed(0)
    for peer, variant, dictionary, fmt, notes in variants():
        folder = out / peer / f"featcircuits_{variant}"
        folder.mkdir(parents=True)
        (FORMATS[fmt].save(dictionary, folder) if fmt else save_dictionary(dictionary, folder))
        gen = torch.Generator().manual_seed(600)
        candidates = torch.randn(64, D, generator=gen) * 1.5 + 0.2
        save_file({"x": stable_rows(candidates, dictionary.encode)},
                  str(folder / "inputs.safetensors"))
        (folder / "written.json").write_text(json.dumps({
            "variant": f"featcircuits_{variant}", "class": type(dictionary).__name__,
            "site": dictionary.site, "notes": notes, "format": fmt or dictionary.architecture,
            "input_site": (dictionary.input_site if isinstance(dictionary, Transcoder)
                           else None)}, indent=2))
        print(peer, variant)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
