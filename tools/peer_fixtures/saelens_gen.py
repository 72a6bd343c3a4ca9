"""SAELens fixtures: run inside the sae-lens virtualenv (``tools/peer_fixtures.py`` does).

    python tools/peer_fixtures/saelens_gen.py <out folder> [<featcircuits-written folder>]

Every variant is an inference SAE class of sae-lens, saved with ``save_model`` and reloaded
with ``SAE.load_from_disk``; the reloaded object's ``encode`` / ``decode`` (transcoders:
``forward``, which adds the skip connection) are recorded. The Gemma Scope and Llama Scope
variants come from ``saelens_scope_gen.py`` (SAELens' converters, ``from_pretrained``).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import sae_lens
import torch
from sae_lens import SAE
from sae_lens.saes import (
    GatedSAE,
    GatedSAEConfig,
    JumpReLUSAE,
    JumpReLUSAEConfig,
    JumpReLUSkipTranscoder,
    JumpReLUSkipTranscoderConfig,
    JumpReLUTranscoder,
    JumpReLUTranscoderConfig,
    SkipTranscoder,
    SkipTranscoderConfig,
    StandardSAE,
    StandardSAEConfig,
    TopKSAE,
    TopKSAEConfig,
    Transcoder,
    TranscoderConfig,
)
from sae_lens.saes.sae import SAEMetadata

sys.path.insert(0, str(Path(__file__).parent))
from common import inputs, randomize, record, record_reverse, stable_rows, written_by_featcircuits
from saelens_scope_gen import build as build_scope_variants

D_IN, D_SAE = 32, 64
SAE_HOOK, SAE_SITE = "blocks.3.hook_resid_post", "resid_out.3"
TC_IN, TC_OUT = "blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out"
HEADS = 4  # hook_z: x is [rows, HEADS, D_IN // HEADS] in the peer, flattened in the record


def meta(hook: str, **extra) -> SAEMetadata:
    return SAEMetadata(hook_name=hook, model_name="gpt2", **extra)


def variants():
    """(name, class, config, expected site, expected input site, notes)."""
    yield ("standard", StandardSAE, StandardSAEConfig(D_IN, D_SAE, metadata=meta(SAE_HOOK)),
           SAE_SITE, None, "")
    yield ("standard_no_b_dec_input", StandardSAE,
           StandardSAEConfig(D_IN, D_SAE, apply_b_dec_to_input=False, metadata=meta(SAE_HOOK)),
           SAE_SITE, None, "apply_b_dec_to_input=False")
    yield ("topk", TopKSAE, TopKSAEConfig(D_IN, D_SAE, k=6, metadata=meta("blocks.2.hook_mlp_out")),
           "mlp_out.2", None, "k=6, rescale_acts_by_decoder_norm=False")
    yield ("topk_rescale", TopKSAE,
           TopKSAEConfig(D_IN, D_SAE, k=6, rescale_acts_by_decoder_norm=True,
                         metadata=meta("blocks.2.hook_mlp_out")),
           "mlp_out.2", None, "k=6, rescale_acts_by_decoder_norm=True")
    yield ("jumprelu", JumpReLUSAE, JumpReLUSAEConfig(D_IN, D_SAE,
                                                      metadata=meta("blocks.1.hook_attn_out")),
           "attn_out.1", None, "thresholds in [-1.5, 1.5], many negative")
    yield ("gated", GatedSAE, GatedSAEConfig(D_IN, D_SAE, metadata=meta(SAE_HOOK)),
           SAE_SITE, None, "")
    for norm in ("expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        yield (f"normalize_{norm}", StandardSAE,
               StandardSAEConfig(D_IN, D_SAE, normalize_activations=norm,
                                 metadata=meta(SAE_HOOK)),
               SAE_SITE, None, f"normalize_activations={norm}")
    for name, cls, cfg_cls in (("transcoder", Transcoder, TranscoderConfig),
                               ("skip_transcoder", SkipTranscoder, SkipTranscoderConfig),
                               ("jumprelu_transcoder", JumpReLUTranscoder,
                                JumpReLUTranscoderConfig),
                               ("jumprelu_skip_transcoder", JumpReLUSkipTranscoder,
                                JumpReLUSkipTranscoderConfig)):
        cfg = cfg_cls(D_IN, D_SAE, d_out=D_IN, apply_b_dec_to_input=False,
                      metadata=meta(TC_IN, hook_name_out=TC_OUT))
        yield name, cls, cfg, "mlp_out.1", "resid_mid.1", "d_out = d_in"
    yield ("hook_z", StandardSAE,
           StandardSAEConfig(D_IN, D_SAE, reshape_activations="hook_z",
                             metadata=meta("blocks.1.attn.hook_z")),
           "attn_z.1", None,
           "reshape_activations=hook_z: encode(z [.., 4 heads, 8]), z recorded flattened")


def heads_in(name: str, x: torch.Tensor) -> torch.Tensor:
    """What the peer is fed: ``x`` itself, or for ``hook_z`` ``[rows, heads, d_head]``."""
    return x.unflatten(-1, (HEADS, -1)) if name == "hook_z" else x


def flat(x: torch.Tensor) -> torch.Tensor:
    """A hook_z SAE decodes to ``[rows, heads, d_head]``: recorded as ``[rows, d_in]``."""
    return x.flatten(-2) if x.ndim == 3 else x


@torch.no_grad()
def main(out: Path, written: Path | None = None) -> None:
    version = sae_lens.__version__
    for folder, info, x in written_by_featcircuits(written):
        target = out / folder.name
        shutil.copytree(folder, target)
        loaded = SAE.load_from_disk(target)
        loaded.eval()
        name = "hook_z" if str(info["site"]).startswith("attn_z.") else folder.name
        features = loaded.encode(heads_in(name, x))
        extra = {"x_out": loaded(x)} if info["input_site"] is not None else {}
        record_reverse(target, info, "saelens", version, "SAE.load_from_disk", x=x,
                       features=features, reconstruction=flat(loaded.decode(features)),
                       **extra)
        print(folder.name, type(loaded).__name__)
    for seed, (name, cls, cfg, site, input_site, notes) in enumerate(variants()):
        folder = out / name
        sae = cls(cfg)
        randomize(sae, seed)
        sae.save_model(folder)
        loaded = SAE.load_from_disk(folder)
        loaded.eval()
        x = stable_rows(inputs(D_IN, seed),
                        lambda x, loaded=loaded, name=name: loaded.encode(heads_in(name, x)))
        features = loaded.encode(heads_in(name, x))
        reconstruction = flat(loaded.decode(features))
        extra = {}
        if input_site is not None:
            extra["x_out"] = loaded(x)
        record(folder, {"peer": "saelens", "version": version, "variant": name,
                        "class": type(loaded).__name__, "hook_name": cfg.metadata.hook_name,
                        "hook_name_out": cfg.metadata.get("hook_name_out"),
                        "site": site, "input_site": input_site, "notes": notes,
                        "saved_by": "SAE.save_model", "loaded_by": "SAE.load_from_disk"},
               x=x, features=features, reconstruction=reconstruction, **extra)
        print(name, type(loaded).__name__, "L0", float((features != 0).float().sum(-1).mean()))
    # Gemma Scope / Llama Scope: SAELens' own converters on files in the releases' layouts
    build_scope_variants(out, 100, inputs, stable_rows, record, version)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
