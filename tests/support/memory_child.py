"""Child process of tests/engine/test_memory.py: one wide-dictionary case, its peak RSS as JSON.

Usage: ``python tests/support/memory_child.py CASES MAX_MEMORY [N_FEATURES] [WIDTH] [N_PROMPTS]``
with CASES ``patch`` (attribution curve + backward elimination from the top features),
``circuit`` (attribution circuit + exact ACDC over a bounded candidate set) or ``all``
(both). Prints one JSON line: peak RSS (bytes), RSS after loading the model and the
dictionaries, and the results, so the parent can compare runs under different budgets.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd
import torch

torch.set_num_threads(1)

from featcircuits.dictionaries.bases import RandomBasis
from featcircuits.engine.memory import current_rss, peak_rss
from featcircuits.model.loading import load_model
from featcircuits.tasks.prompts import PromptPairs

SITE = "resid_out.1"
LATER = "resid_out.2"


def wide_pairs(n_prompts: int, width: int, vocab: int) -> PromptPairs:
    """``n_prompts`` random prompt pairs of ``width`` tokens; corrupt differs at 8 tokens."""
    generator = torch.Generator().manual_seed(0)
    clean = torch.randint(1, vocab, (n_prompts, width), generator=generator)
    corrupt = clean.clone()
    positions = torch.randperm(width - 1, generator=generator)[:8]
    corrupt[:, positions] = torch.randint(1, vocab, (n_prompts, len(positions)),
                                          generator=generator)
    answers = torch.randint(1, vocab, (n_prompts,), generator=generator)
    wrong = (answers + 1) % vocab
    frame = pd.DataFrame({"clean": ["?"] * n_prompts})
    return PromptPairs(clean, corrupt, torch.full((n_prompts,), width), answers, wrong, frame)


def run_patch(model, pairs, dictionaries, max_memory) -> dict:
    from featcircuits.engine.settings import RunSettings
    from featcircuits.patching.experiment import PatchingExperiment
    from featcircuits.patching.search import (
        attribution_curve,
        attribution_scores,
        backward_elimination,
    )

    dictionary = dictionaries[SITE]
    n_features = dictionary.n_features
    experiment = PatchingExperiment(model, dictionary, pairs,
                                    settings=RunSettings(max_memory=max_memory, progress=False))
    n = n_features
    sizes = sorted({0, 16, 1024, n // 4, n // 2, 3 * n // 4, n})
    curve = attribution_curve(experiment, sizes=sizes)
    top = attribution_scores(experiment)["feature"].head(6).tolist()
    elimination = backward_elimination(experiment, taus=[1e-4, 1e-2], features=top,
                                       batch_size=6, progress=False)
    return {"curve_kl": curve["kl"].tolist(),
            "curve_sizes": curve["n_features"].tolist(),
            "elimination_kl": elimination["kl"].tolist(),
            "elimination_features": [list(map(int, f)) for f in elimination["features"]]}


def run_circuit(model, pairs, dictionaries, max_memory) -> dict:
    from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, circuit_runs
    from featcircuits.engine.settings import RunSettings

    n_features = dictionaries[SITE].n_features
    runs = circuit_runs(model, dictionaries, pairs, targets="logit_diff",
                        settings=RunSettings(max_memory=max_memory, progress=False))
    attribution = attribution_circuit(runs, tau=1e-4, max_nodes=4, ablation="zero")
    candidates = {SITE: list(range(0, n_features, n_features // 8)),
                  LATER: list(range(1, n_features, n_features // 8))}
    acdc = acdc_circuit(runs, tau=1e-4, ablation="zero", candidates=candidates)

    def edges(graph):
        return sorted((u, v, round(d["weight"], 5)) for u, v, d in graph.edges(data=True))

    return {"attribution_edges": edges(attribution),
            "acdc_edges": edges(acdc)}


def main(argv: list[str]) -> None:
    case, max_memory = argv[0], argv[1]
    n_features = int(argv[2]) if len(argv) > 2 else 32768
    width = int(argv[3]) if len(argv) > 3 else 128
    n_prompts = int(argv[4]) if len(argv) > 4 else 1
    model = load_model("tiny")
    # The bundled GPT-NeoX has rotary positions (no position table), configured for 64; the
    # wide case measures memory at 128 positions, so it raises the configured limit that
    # check_positions enforces. The numbers it checks are memory, not model quality.
    model.config.max_position_embeddings = max(width, model.config.max_position_embeddings)
    pairs = wide_pairs(n_prompts, width, 200)
    dictionaries = {SITE: RandomBasis(128, n_features=n_features, seed=0, site=SITE),
                    LATER: RandomBasis(128, n_features=n_features, seed=1, site=LATER)}
    budget = None if max_memory == "default" else max_memory
    result = {"loaded_rss": current_rss()}
    for name in (["patch", "circuit"] if case == "all" else [case]):
        result.update({"patch": run_patch, "circuit": run_circuit}[name](
            model, pairs, dictionaries, budget))
    result["peak_rss"] = peak_rss()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
