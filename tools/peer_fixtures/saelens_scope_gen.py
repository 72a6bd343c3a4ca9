"""Gemma Scope and Llama Scope (also R1-Distill) fixtures (run by ``saelens_gen.py`` inside the sae-lens venv).

Each variant writes small random weights in the release's own file layout (Gemma Scope
``params.npz``; Llama Scope ``hyperparams.json`` + ``checkpoints/final.safetensors``; R1-Distill
``config.json`` + ``sae_weights.safetensors``) under
``<out>/<variant>/<path inside the repo>``, then loads them with SAELens' own
``SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id)`` for a real release and SAE id
of its ``pretrained_saes.yaml``: SAELens' own converter (``gemma_2``, ``llama_scope``,
``llama_scope_r1_distill``) and its
folding of the table's ``norm_scaling_factor`` run unchanged; only ``hf_hub_download`` is
replaced by a lookup in the variant's folder (recorded: ``expected.json`` ``downloads`` lists
the repo and files SAELens asked for) and the Gemma widths, which SAELens takes from the repo
name (2304 for gemma-2-2b), are overridden to the small test width.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from sae_lens import SAE
from sae_lens.loading import pretrained_sae_loaders as loaders
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from safetensors.torch import save_file

D_IN, D_SAE = 24, 48


def _weights(seed: int, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.rand(d_sae, 1, generator=gen) * 2.1 + 0.4  # non-unit decoder norms
    return {"W_enc": torch.randn(d_in, d_sae, generator=gen) * 0.3,
            "W_dec": torch.randn(d_sae, d_in, generator=gen) * 0.3 * scale,
            "b_enc": (torch.rand(d_sae, generator=gen) - 0.5) * 0.6,
            "b_dec": (torch.rand(d_in, generator=gen) - 0.5) * 0.6,
            "threshold": torch.rand(d_sae, generator=gen) * 0.45 + 0.05}


def _first(release: str, prefix: str) -> tuple[str, str]:
    """``(sae_id, path)`` of the first SAE of ``release`` whose id starts with ``prefix``."""
    info = get_pretrained_saes_directory()[release]
    sae_id = next(i for i in info.saes_map if i.startswith(prefix))
    return sae_id, info.saes_map[sae_id]


def variants():
    """(name, kind, release, id prefix, expected site, notes)."""
    yield ("gemma_scope_res", "gemma", "gemma-scope-2b-pt-res", "layer_3/", "resid_out.3",
           "params.npz, gemma_2 converter")
    yield ("gemma_scope_embedding", "gemma", "gemma-scope-2b-pt-res", "embedding/", "embed",
           "params.npz under embedding/: W_enc / sqrt(d_in), W_dec * sqrt(d_in)")
    yield ("gemma_scope_mlp_canonical", "gemma", "gemma-scope-2b-pt-mlp-canonical",
           "layer_1/width_16k/canonical", "mlp_out.1", "canonical id → average_l0 folder")
    yield ("gemma_scope_att", "gemma", "gemma-scope-2b-pt-att-canonical",
           "layer_1/width_16k/canonical", "attn_z.1",
           "attn.hook_z; x = the heads' outputs concatenated (SAELens' hook_z reshape off)")
    yield ("llama_scope_lxr", "llama", "llama_scope_lxr_8x", "l3r_8x", "resid_out.3",
           "hyperparams.json + bf16 checkpoint; table factor ≠ hyperparams factor")
    yield ("llama_scope_lxa", "llama", "llama_scope_lxa_32x", "l1a_32x", "attn_out.1",
           "hyperparams.json + bf16 checkpoint; table factor ≠ hyperparams factor")
    yield ("llama_scope_r1_distill", "r1", "llama_scope_r1_distill", "l3r_800m_slimpajama",
           "resid_out.3", "config.json + sae_weights.safetensors, log_jumprelu_threshold")


def _write_gemma(root: Path, path: str, seed: int) -> None:
    folder = root / path
    folder.mkdir(parents=True)
    weights = _weights(seed, D_IN, D_SAE)
    arrays = {("w_enc" if name == "W_enc" else name): t.numpy() for name, t in weights.items()}
    arrays["scaling_factor"] = np.ones(D_SAE, dtype=np.float32)  # dropped: all ones
    np.savez(folder / "params.npz", **arrays)


def _write_llama(root: Path, path: str, seed: int, factor: float) -> float:
    """Write the folder; return the raw-activation scale 1/F of the inputs."""
    folder = root / path
    (folder / "checkpoints").mkdir(parents=True)
    weights = _weights(seed, D_IN, D_SAE)
    own = factor / 1.25  # the hyperparameters' factor differs from the table's on purpose
    hyper = {"d_model": D_IN, "d_sae": D_SAE, "expansion_factor": D_SAE // D_IN,
             "act_fn": "jumprelu", "jump_relu_threshold": 0.6 / own, "top_k": 50,
             "norm_activation": "dataset-wise", "hook_point_in": "",
             "dataset_average_activation_norm": {"in": math.sqrt(D_IN) / own,
                                                 "out": math.sqrt(D_IN) / own}}
    layer, kind = path.split("-L")[1].split("-")[0][:-1], path.split("-L")[1].split("-")[0][-1]
    hook = {"R": "hook_resid_post", "A": "hook_attn_out", "M": "hook_mlp_out"}[kind]
    hyper["hook_point_in"] = hyper["hook_point_out"] = f"blocks.{layer}.{hook}"
    (folder / "hyperparams.json").write_text(json.dumps(hyper, indent=2))
    save_file({"encoder.weight": weights["W_enc"].T.contiguous().bfloat16(),
               "encoder.bias": weights["b_enc"].bfloat16(),
               "decoder.weight": weights["W_dec"].T.contiguous().bfloat16(),
               "decoder.bias": weights["b_dec"].bfloat16()},
              str(folder / "checkpoints" / "final.safetensors"))
    return 1.0 / factor


def _write_r1(root: Path, path: str, seed: int, factor: float) -> float:
    """Write a Llama Scope R1-Distill folder; return the raw-activation scale 1/F."""
    folder = root / path
    folder.mkdir(parents=True)
    weights = _weights(seed, D_IN, D_SAE)
    layer = path.rsplit("/L", 1)[1].rstrip("R")
    config = {"d_model": D_IN, "expansion_factor": D_SAE // D_IN, "act_fn": "jumprelu",
              "hook_point_in": f"blocks.{layer}.hook_resid_post",
              "hook_point_out": f"blocks.{layer}.hook_resid_post"}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_file({"encoder.weight": weights["W_enc"].T.contiguous(),
               "encoder.bias": weights["b_enc"],
               "decoder.weight": weights["W_dec"].T.contiguous(),
               "decoder.bias": weights["b_dec"],
               "log_jumprelu_threshold": weights["threshold"].log()},
              str(folder / "sae_weights.safetensors"))
    return 1.0 / factor


@torch.no_grad()
def build(out: Path, first_seed: int, inputs, stable_rows, record, version: str) -> None:
    """Write every variant into ``out`` (seeds from ``first_seed``)."""
    for offset, (name, kind, release, prefix, site, notes) in enumerate(variants()):
        seed = first_seed + offset
        root = out / name
        sae_id, path = _first(release, prefix)
        info = get_pretrained_saes_directory()[release]
        downloads: list[list[str]] = []

        def fake_download(repo_id, filename=None, subfolder=None, root=root, downloads=downloads,
                          **_):
            rel = f"{subfolder}/{filename}" if subfolder else filename
            downloads.append([repo_id, rel])
            return str(root / rel)

        loaders.hf_hub_download = fake_download
        if kind == "gemma":
            _write_gemma(root, path, seed)
            scale = 1.0
            real = loaders.gemma_2_sae_huggingface_loader
            sizes = {"d_in": D_IN, "d_sae": D_SAE}
        elif kind == "llama":
            scale = _write_llama(root, path, seed, info.norm_scaling_factor[sae_id])
            real = loaders.llama_scope_sae_huggingface_loader
            sizes = {}
        else:
            scale = _write_r1(root, path, seed, info.norm_scaling_factor[sae_id])
            real = loaders.llama_scope_r1_distill_sae_huggingface_loader
            sizes = {}

        def converter(repo_id, folder_name, device="cpu", force_download=False,
                      cfg_overrides=None, real=real, sizes=sizes):
            return real(repo_id, folder_name, device, force_download,
                        {**(cfg_overrides or {}), **sizes})

        sae, _, _ = SAE.from_pretrained_with_cfg_and_sparsity(release, sae_id,
                                                              converter=converter)
        sae.eval()
        if sae.cfg.reshape_activations == "hook_z":  # x: the heads' outputs, concatenated
            sae.turn_off_forward_pass_hook_z_reshaping()
        x = stable_rows(inputs(D_IN, seed) * scale, sae.encode)
        features = sae.encode(x)
        record(root, {"peer": "saelens", "version": version, "variant": name,
                      "class": type(sae).__name__, "hook_name": sae.cfg.metadata.hook_name,
                      "hook_name_out": None, "site": site, "input_site": None,
                      "notes": notes, "saved_by": f"random weights in {release}'s layout",
                      "loaded_by": "SAE.from_pretrained_with_cfg_and_sparsity",
                      "spec": f"saelens:{release}/{sae_id}", "downloads": downloads},
               x=x, features=features, reconstruction=sae.decode(features))
        print(name, type(sae).__name__, sae_id, "→", path, "L0",
              float((features != 0).float().sum(-1).mean()))
