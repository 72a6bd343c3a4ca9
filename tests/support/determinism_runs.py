"""Runs whose output files must be byte-identical from process to process (also imported
by the tests):

    python tests/support/determinism_runs.py OUT                  # the IOI + parens examples
    python tests/support/determinism_runs.py --dictionaries OUT   # an SAE, a transcoder, a PCA basis
    python tests/support/determinism_runs.py --train OUT          # TRAIN_SAE into OUT
    python tests/support/determinism_runs.py --train-killed OUT   # same, SIGKILLed after its
                                                                   # first checkpoint
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

COMMANDS = {
    "ioi": ["--quiet", "ioi", "--layers", "1", "--n-prompts", "2", "--bases", "pca",
            "--seed", "3"],
    "parens": ["--quiet", "circuit", "parens", "--n-texts", "1", "--n-targets", "1",
               "--method", "attribution", "--seed", "3"],
}
# a short train-sae run: 12 steps, a checkpoint every 4 (the killed run dies after step 4)
TRAIN_SAE = ["--quiet", "train-sae", "--site", "resid_out.1", "--steps", "12",
             "--n-tokens", "600", "--batch-size", "32", "--expansion", "2",
             "--checkpoint-every", "4", "--eval-texts", "0", "--seed", "0"]


def run_all(out: Path) -> None:
    from featcircuits.cli.main import main

    for name, argv in COMMANDS.items():
        code = main([*argv, "--out", str(out / name)])
        if code != 0:
            raise SystemExit(f"{name} exited with {code}")


def write_dictionaries(out: Path) -> None:
    """Save the same seeded SAE (with rich metadata), transcoder and PCA basis into ``out``."""
    import torch

    from featcircuits.dictionaries import PCABasis, save_dictionary
    from featcircuits.dictionaries.transcoder import Transcoder, save_transcoder
    from tests.support.factories import random_sae

    sae = random_sae(16, "resid_out.1", seed=5, n_features=24)
    sae.meta.update({f"key_{i}": i for i in range(12)})
    sae.meta.update({"model_name": "tiny", "zeta": [1.5, 2.5], "alpha": {"b": 1, "a": 2}})
    save_dictionary(sae, out / "sae")
    generator = torch.Generator().manual_seed(7)
    transcoder = Transcoder(16, 24, skip=True, input_site="mlp_in.1", site="mlp_out.1",
                            meta={"model_name": "tiny"})
    with torch.no_grad():
        for parameter in transcoder.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    save_transcoder(transcoder, out / "layer_1.safetensors")
    save_dictionary(transcoder, out / "transcoder")
    pca = PCABasis.fit(torch.randn(200, 16, generator=generator), 8, site="resid_out.1")
    save_dictionary(pca, out / "pca")


def train(out: Path, *, die_after_first_checkpoint: bool = False) -> int:
    """``featcircuits train-sae`` (``TRAIN_SAE``) into ``out``; optionally SIGKILL this
    process right after its first checkpoint is on disk (no cleanup, as a killed job)."""
    from featcircuits.cli.main import main

    if die_after_first_checkpoint:
        from featcircuits.train.sae import SAETrainer

        save = SAETrainer.save_checkpoint

        def save_then_die(self, checkpoint_dir):
            path = save(self, checkpoint_dir)
            os.kill(os.getpid(), signal.SIGKILL)
            return path

        SAETrainer.save_checkpoint = save_then_die  # type: ignore[method-assign]
    return main([*TRAIN_SAE, "--out", str(out)])


if __name__ == "__main__":
    if sys.argv[1] == "--dictionaries":
        write_dictionaries(Path(sys.argv[2]))
    elif sys.argv[1] in ("--train", "--train-killed"):
        sys.exit(train(Path(sys.argv[2]), die_after_first_checkpoint=sys.argv[1] != "--train"))
    else:
        run_all(Path(sys.argv[1]))
