"""dictionary_learning fixtures: run inside the dictionary-learning virtualenv.

    python tools/peer_fixtures/dictionary_learning_gen.py <out folder> [<featcircuits-written folder>]

Each variant is one of dictionary_learning's classes with random weights, saved as its
training loop saves it (``torch.save(ae.state_dict(), "ae.pt")`` and ``config.json`` holding
``{"trainer": trainer.config}`` with the keys that trainer's ``config`` writes), then reloaded
with the peer's own ``dictionary_learning.utils.load_dictionary`` (which dispatches on
``dict_class`` and calls the class's ``from_pretrained``: for ``AutoEncoder`` that rescales
decoder columns to unit norm). The reloaded object's ``encode`` / ``decode`` are recorded.

dictionary-learning 0.1.0 is installed with ``--no-deps`` (it pins nnsight < 0.4). Its
package ``__init__`` and ``utils`` import ``nnsight``, ``datasets`` and ``zstandard`` only for
activation buffers and data streaming, which these fixtures never use; empty stand-in modules
are registered for those three names before the import, so nothing else is installed.
"""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import torch

for _name in ("nnsight", "datasets", "zstandard"):
    _stub = types.ModuleType(_name)
    _stub.LanguageModel = object  # type: ignore[attr-defined]
    _stub.load_dataset = None  # type: ignore[attr-defined]
    sys.modules.setdefault(_name, _stub)

import dictionary_learning
from dictionary_learning.dictionary import (
    AutoEncoder,
    AutoEncoderNew,
    GatedAutoEncoder,
    JumpReluAutoEncoder,
)
from dictionary_learning.trainers.batch_top_k import BatchTopKSAE
from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE
from dictionary_learning.trainers.top_k import AutoEncoderTopK
from dictionary_learning.utils import load_dictionary

sys.path.insert(0, str(Path(__file__).parent))
from common import inputs, randomize, record, record_reverse, stable_rows, written_by_featcircuits

D_IN, D_SAE = 32, 64
LAYER = 3


def variants():
    """(name, module, trainer class, trainer extras, notes)."""
    yield "AutoEncoder", AutoEncoder(D_IN, D_SAE), "StandardTrainer", {}, "unit-norm decoder"
    yield ("AutoEncoder_april_update", AutoEncoder(D_IN, D_SAE), "StandardTrainerAprilUpdate",
           {}, "decoder columns not unit norm; from_pretrained rescales them")
    yield "GatedAutoEncoder", GatedAutoEncoder(D_IN, D_SAE), "GatedSAETrainer", {}, ""
    yield "AutoEncoderNew", AutoEncoderNew(D_IN, D_SAE), "StandardTrainerNew", {}, ""
    yield ("JumpReluAutoEncoder", JumpReluAutoEncoder(D_IN, D_SAE), "JumpReluTrainer", {},
           "thresholds in [-1.5, 1.5], many negative")
    yield "AutoEncoderTopK", AutoEncoderTopK(D_IN, D_SAE, 6), "TopKTrainer", {"k": 6}, "k=6"
    yield ("BatchTopKSAE", BatchTopKSAE(D_IN, D_SAE, 6), "BatchTopKTrainer", {"k": 6},
           "k=6, learned threshold 0.45 (encode uses it)")
    yield ("MatryoshkaBatchTopKSAE", MatryoshkaBatchTopKSAE(D_IN, D_SAE, 6, [16, 48]),
           "MatryoshkaBatchTopKTrainer", {"k": 6, "group_sizes": [16, 48]},
           "k=6, group_sizes [16, 48], learned threshold 0.45")


@torch.no_grad()
def main(out: Path, written: Path | None = None) -> None:
    for folder, info, x in written_by_featcircuits(written):
        target = out / folder.name
        shutil.copytree(folder, target)
        loaded, _ = load_dictionary(str(target), device="cpu")
        loaded.eval()
        features = loaded.encode(x)
        record_reverse(target, info, "dictionary_learning", dictionary_learning.__version__,
                       "dictionary_learning.utils.load_dictionary", x=x, features=features,
                       reconstruction=loaded.decode(features))
        print(folder.name)
    for seed, (name, ae, trainer_class, extra, notes) in enumerate(variants(), start=100):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        randomize(ae, seed)
        if name == "AutoEncoder":
            ae.decoder.weight /= ae.decoder.weight.norm(dim=0, keepdim=True)
        if hasattr(ae, "threshold") and ae.threshold.ndim == 0:
            ae.threshold.fill_(0.45)
        torch.save(ae.state_dict(), folder / "ae.pt")
        trainer = {"dict_class": type(ae).__name__, "trainer_class": trainer_class,
                   "activation_dim": D_IN, "dict_size": D_SAE, "layer": LAYER,
                   "lm_name": "EleutherAI/pythia-70m-deduped",
                   "submodule_name": f"resid_post_layer{LAYER}", **extra}
        (folder / "config.json").write_text(json.dumps({"trainer": trainer}, indent=4))
        loaded, _ = load_dictionary(str(folder), device="cpu")
        loaded.eval()
        x = stable_rows(inputs(D_IN, seed), loaded.encode)
        features = loaded.encode(x)
        reconstruction = loaded.decode(features)
        record(folder, {"peer": "dictionary_learning", "version": dictionary_learning.__version__,
                        "variant": name, "class": type(loaded).__name__,
                        "hook_name": None, "hook_name_out": None,
                        "site": f"resid_out.{LAYER}", "input_site": None, "notes": notes,
                        "saved_by": "torch.save(ae.state_dict()) + config.json",
                        "loaded_by": "dictionary_learning.utils.load_dictionary"},
               x=x, features=features, reconstruction=reconstruction)
        print(name, "L0", float((features != 0).float().sum(-1).mean()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None)
