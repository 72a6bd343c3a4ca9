"""circuit-tracer fixtures: run inside the circuit-tracer virtualenv.

    python tools/peer_fixtures/circuit_tracer_gen.py <out folder> [<featcircuits-written folder>]

Single-layer transcoders are saved with ``SingleLayerTranscoder.to_safetensors`` and reloaded
with ``load_relu_transcoder`` (circuit-tracer's loader for such files: ReLU, or JumpReLU when
``activation_function.threshold`` is stored). A transcoder set is saved with
``TranscoderSet.to_safetensors`` plus the ``config.yaml`` circuit-tracer's cache writes, and
reloaded with ``load_transcoder_set``; a cross-layer transcoder with
``CrossLayerTranscoder.to_safetensors`` and ``load_clt``. The reloaded objects' ``encode`` /
``decode`` / ``forward`` are recorded.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from circuit_tracer._version import __version__
from circuit_tracer.transcoder.activation_functions import JumpReLU, TopK
from circuit_tracer.transcoder.cross_layer_transcoder import CrossLayerTranscoder, load_clt
from circuit_tracer.transcoder.single_layer_transcoder import (
    SingleLayerTranscoder,
    TranscoderSet,
    load_relu_transcoder,
    load_transcoder_set,
)

sys.path.insert(0, str(Path(__file__).parent))
from common import inputs, randomize, record, record_reverse, stable_rows, written_by_featcircuits

D_MODEL, D_TC = 32, 64
META = {"peer": "circuit_tracer", "version": __version__, "hook_name": None,
        "hook_name_out": None}


def single(activation, layer: int, skip: bool, seed: int) -> SingleLayerTranscoder:
    tc = SingleLayerTranscoder(D_MODEL, D_TC, activation, layer, skip_connection=skip,
                               device=torch.device("cpu"), dtype=torch.float32)
    randomize(tc, seed)
    return tc


def reload(path: Path, layer: int) -> SingleLayerTranscoder:
    return load_relu_transcoder(str(path), layer, device=torch.device("cpu"),
                                dtype=torch.float32, lazy_encoder=False, lazy_decoder=False)


def outputs(tc, seed: int) -> dict[str, torch.Tensor]:
    x = stable_rows(inputs(D_MODEL, seed), tc.encode)
    features = tc.encode(x)
    return {"x": x, "features": features, "reconstruction": features @ tc.W_dec + tc.b_dec,
            "x_out": tc(x)}


@torch.no_grad()
def main(out: Path, written: Path | None = None) -> None:
    for folder, info, x in written_by_featcircuits(written):
        target = out / folder.name
        shutil.copytree(folder, target)
        loaded = reload(target / "transcoder.safetensors", 1)
        features = loaded.encode(x)
        record_reverse(target, info, "circuit_tracer", __version__, "load_relu_transcoder",
                       x=x, features=features,
                       reconstruction=features @ loaded.W_dec + loaded.b_dec, x_out=loaded(x))
        print(folder.name)
    cases = [("relu", F.relu, False, "ReLU"),
             ("jumprelu_skip", JumpReLU(torch.zeros(D_TC), 0.1), True,
              "JumpReLU (x * (x > threshold)), thresholds in [-1.5, 1.5], skip connection"),
             ("topk", TopK(6), False,
              ("built with TopK(6); to_safetensors stores no k, so circuit-tracer's own loader "
              "reads the file back as ReLU (recorded: what the loader returns)"))]
    for seed, (name, activation, skip, notes) in enumerate(cases, start=200):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "layer_1.safetensors"
        single(activation, 1, skip, seed).to_safetensors(str(path))
        loaded = reload(path, 1)
        record(folder, {**META, "variant": name, "class": "SingleLayerTranscoder",
                        "site": "mlp_out.1", "input_site": "resid_mid.1", "notes": notes,
                        "saved_by": "SingleLayerTranscoder.to_safetensors",
                        "loaded_by": "load_relu_transcoder"}, **outputs(loaded, seed))
        print(name)

    # a transcoder set: two layers, hooks from config.yaml
    folder = out / "transcoder_set"
    hooks = {"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"}
    members = {layer: single(F.relu, layer, True, 300 + layer) for layer in range(2)}
    TranscoderSet(members, scan="featcircuits-fixture", **hooks).to_safetensors(str(folder))
    (folder / "config.yaml").write_text(yaml.dump({"model_kind": "transcoder_set",
                                                   "scan": "featcircuits-fixture", **hooks}))
    loaded = load_transcoder_set({layer: str(folder / f"layer_{layer}.safetensors")
                                  for layer in range(2)}, scan="featcircuits-fixture",
                                 device=torch.device("cpu"), dtype=torch.float32,
                                 lazy_encoder=False, lazy_decoder=False, **hooks)
    tensors = {}
    for layer in range(2):
        for key, value in outputs(loaded[layer], 300 + layer).items():
            tensors[f"{key}.{layer}"] = value
    record(folder, {**META, "variant": "transcoder_set", "class": "TranscoderSet",
                    "kind": "set", "sites": {"mlp_out.0": "mlp_in.0", "mlp_out.1": "mlp_in.1"},
                    "site": None, "input_site": None,
                    "notes": "2 layers, skip connections, hooks mlp.hook_in -> mlp.hook_out "
                    "from config.yaml", "saved_by": "TranscoderSet.to_safetensors + config.yaml",
                    "loaded_by": "load_transcoder_set"}, **tensors)
    print("transcoder_set")

    # a cross-layer transcoder (every feature writes to its own and all later layers)
    folder = out / "cross_layer_transcoder"
    clt = CrossLayerTranscoder(2, D_TC, D_MODEL, lazy_decoder=False, device=torch.device("cpu"),
                               dtype=torch.float32)
    randomize(clt, 400)
    clt.to_safetensors(str(folder))
    (folder / "config.yaml").write_text(yaml.dump({"model_kind": "cross_layer_transcoder",
                                                   "feature_input_hook": "hook_resid_mid",
                                                   "feature_output_hook": "hook_mlp_out"}))
    loaded = load_clt(str(folder), device=torch.device("cpu"), dtype=torch.float32,
                      lazy_decoder=False)
    x = inputs(D_MODEL, 400, rows=16).reshape(2, 8, D_MODEL)
    record(folder, {**META, "variant": "cross_layer_transcoder", "class": "CrossLayerTranscoder",
                    "kind": "clt", "site": None, "input_site": None,
                    "sites": {"mlp_out.0": "resid_mid.0", "mlp_out.1": "resid_mid.1"},
                    "notes": "2 layers; x [layer, row, d_model]",
                    "saved_by": "CrossLayerTranscoder.to_safetensors", "loaded_by": "load_clt"},
           x=x, features=loaded.encode(x), x_out=loaded(x))
    print("cross_layer_transcoder")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
