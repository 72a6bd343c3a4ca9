"""Bad API arguments and inputs, clear error: the library refuses what the CLI flags refuse
(seeds, devices, thresholds), out-of-vocabulary answers, prompts that cannot be patched,
prompts longer than the model's positions, module paths outside the module tree, and graphs
too large to render — each a featcircuits error naming the value and the fix.

Each test's docstring is one line "tried → expected"; docs/reliability.md is built from them
(``python tests/support/reliability_report.py``).
"""

from __future__ import annotations

import math
import os
import time

import networkx as nx
import pandas as pd
import pytest
import torch

from featcircuits.engine.cache import RunCache
from featcircuits.engine.runs import read_inputs
from featcircuits.engine.settings import MAX_SEED, RunSettings, check_seed
from featcircuits.errors import FeatCircuitsError, ParameterError, PromptError, SiteError
from featcircuits.graph import check_tau
from featcircuits.graph.schema import MAX_POSITION
from featcircuits.model.loading import check_device
from featcircuits.model.sites import Site
from featcircuits.patching.search import default_taus
from featcircuits.render.diagram import render_circuit
from featcircuits.render.examples import example_circuit
from featcircuits.render.html import to_html
from featcircuits.render.limits import DIAGRAM_MAX_NODES, HTML_MAX_NODES
from featcircuits.tasks.ioi import load_prompts
from featcircuits.tasks.prompts import tokenize_prompts


@pytest.mark.parametrize("seed", [-1, 2**40, MAX_SEED + 1, 1.5, True])
def test_seed_out_of_range(seed):
    """RunSettings(seed=) of -1, 2**40, 2**32, 1.5 or True (numpy's seed range is 0..2**32-1)
    → ParameterError naming the seed and the range; 0 and 2**32-1 are accepted."""
    with pytest.raises(ParameterError, match="seed must be"):
        RunSettings(seed=seed)
    assert RunSettings(seed=MAX_SEED).seed == MAX_SEED == check_seed(2**32 - 1)


@pytest.mark.parametrize("call", ["ioi_prompt_pairs", "random_basis", "fit_ica", "train_sae",
                                  "train_lm"])
@pytest.mark.parametrize("seed", [-1, 2**40])
def test_library_seeds_out_of_range(call, seed):
    """The seeded library functions (IOI prompts, RandomBasis, fit_ica, SAE and LM training
    configs) refuse seed -1 and 2**40 with the same ParameterError as RunSettings, before
    any work; seed 0 and 2**32-1 pass the same check."""
    from featcircuits.dictionaries.bases import RandomBasis
    from featcircuits.tasks.ioi import ioi_prompt_pairs
    from featcircuits.train.ica import fit_ica
    from featcircuits.train.lm import LMTrainConfig
    from featcircuits.train.sae_config import SAETrainingConfig

    calls = {
        "ioi_prompt_pairs": lambda s: ioi_prompt_pairs(2, seed=s),
        "random_basis": lambda s: RandomBasis(8, seed=s),
        "fit_ica": lambda s: fit_ica(torch.randn(64, 4), 2, seed=s, progress=False),
        "train_sae": lambda s: SAETrainingConfig(d_model=8, n_features=16, seed=s).validate(),
        "train_lm": lambda s: LMTrainConfig(seed=s),
    }
    with pytest.raises(ParameterError, match="seed must be from 0 to"):
        calls[call](seed)
    calls[call](MAX_SEED)


@pytest.mark.parametrize("device", [
    "meta",
    pytest.param("mps", marks=pytest.mark.skipif(torch.backends.mps.is_available(),
                                                 reason="MPS exists here")),
    pytest.param("cuda", marks=pytest.mark.skipif(torch.cuda.is_available(),
                                                  reason="CUDA exists here")),
    "xpu:0",
    "cuda:99",
    "gpu",
])
def test_devices_that_do_not_exist(device):
    """check_device (load_model's device resolution) with meta, mps or cuda where absent, xpu,
    cuda:99 or a malformed name → ParameterError naming the device; cpu resolves."""
    if device == "xpu:0" and getattr(torch, "xpu", None) and torch.xpu.is_available():
        pytest.skip("XPU exists here")
    with pytest.raises(ParameterError, match=f"'{device}'"):
        check_device(device)
    assert check_device("cpu") == torch.device("cpu")


def test_thresholds_and_grids():
    """check_tau(inf) (discovery's threshold: an empty circuit after minutes of work) and
    default_taus(n) with n -3, 0 or 2.5 → ParameterError naming the value."""
    with pytest.raises(ParameterError, match="finite number >= 0, got inf"):
        check_tau(math.inf)
    for n in (-3, 0, 2.5):
        with pytest.raises(ParameterError, match="n_taus"):
            default_taus(n)
    assert len(default_taus(3)) == 3 and check_tau(0.0) == 0.0


def test_parens_circuit_checks_before_loading():
    """parens_circuit(tau=inf) and n_targets=-1 (it built a 719-node circuit) → ParameterError
    in well under a second: before the model and dictionaries are loaded."""
    from featcircuits.experiments import parens_circuit

    start = time.perf_counter()
    with pytest.raises(ParameterError, match="tau must be a finite"):
        parens_circuit("no-such-model", tau=math.inf)
    with pytest.raises(ParameterError, match="n_targets must be an integer >= 1, got -1"):
        parens_circuit("no-such-model", n_targets=-1)
    assert time.perf_counter() - start < 1.0


def _row(clean="w1 w2 w3", corrupt="w1 w4 w3", answer="w5", wrong="w6"):
    return {"clean": clean, "corrupt": corrupt, "answer": answer, "wrong_answer": wrong}


@pytest.mark.parametrize("column", ["answer", "wrong_answer"])
def test_out_of_vocabulary_answer(tiny_models, column):
    """An answer or wrong answer the tokenizer lacks ('Zebulon': it became [UNK], and with both
    unknown patch printed logit_diff 0) → PromptError naming the word, the tokenizer and
    [UNK]."""
    tokenizer = tiny_models["gpt2"].tokenizer
    row = _row(**{"answer" if column == "answer" else "wrong": "Zebulon"})
    with pytest.raises(PromptError, match=rf"row 0: {column} 'Zebulon' is not in the "
                       r"vocabulary of the tokenizer .*'\[UNK\]'"):
        tokenize_prompts(tokenizer, [row])
    assert int(tokenize_prompts(tokenizer, [_row()]).answer_ids[0]) == 5


def test_clean_and_corrupt_tokenize_identically(tiny_models):
    """Clean and corrupt prompts that differ only in unknown words ('w1 Alice w3' vs 'w1 Bob
    w3', both [UNK]; patch printed KL 0), or are the same text → PromptError naming both
    prompts and saying why."""
    tokenizer = tiny_models["gpt2"].tokenizer
    with pytest.raises(PromptError, match=r"(?s)tokenize identically.*words the tokenizer "
                       r"does not know.*KL 0"):
        tokenize_prompts(tokenizer, [_row(clean="w1 Alice w3", corrupt="w1 Bob w3")])
    with pytest.raises(PromptError, match="'w1 w2 w3' and corrupt 'w1 w2 w3' tokenize "
                       "identically"):
        tokenize_prompts(tokenizer, [_row(corrupt="w1 w2 w3")])


def test_prompts_longer_than_the_model_positions(tiny_models):
    """Prompt pairs of 75 tokens, and texts / token ids of 70 tokens, on a model with 64
    positions (they ran with only a transformers warning) → PromptError naming the length,
    the limit, the config key and the prompt, before any forward pass; 64 tokens run."""
    model = tiny_models["gpt2"]
    long = " ".join(f"w{i % 60}" for i in range(75))
    pair = _row(clean=long, corrupt="w61 " + long.split(" ", 1)[1])
    with pytest.raises(PromptError, match=r"prompt pair 0 \('w0 w1 .*is 75 tokens, longer than "
                       r"the model's 64 positions \(config\.(max_position_embeddings|n_positions)\)"):
        RunCache(model, [pair], ["resid_out.0"])
    text = " ".join(["w3"] * 70)
    with pytest.raises(PromptError, match="input 1 .* is 70 tokens"):
        read_inputs(model, ["w1 w2", text])
    with pytest.raises(PromptError, match="input 0 is 70 tokens"):
        read_inputs(model, torch.zeros(2, 70, dtype=torch.long))
    ids, lengths, _ = read_inputs(model, torch.zeros(2, 64, dtype=torch.long))
    assert ids.shape == (2, 64) and lengths.tolist() == [64, 64]


@pytest.mark.parametrize("path", ["__class__.__init__.__globals__", "config",
                                  "transformer.h.0.forward", "transformer.h.9", "lm_head.weight"])
def test_module_path_outside_the_module_tree(tiny_models, path):
    """A site `module:PATH` naming no submodule (`__class__.__init__.__globals__` used to reach
    a dict; `config`, a method, a layer that does not exist, a parameter) → SiteError from the
    parser or from named_modules(), never an attribute walk; a real submodule resolves."""
    model = tiny_models["gpt2"]
    with pytest.raises(SiteError, match="module path"):
        Site.parse(f"module:{path}").module(model)
    module = Site.parse("module:transformer.h.1.mlp").module(model)
    assert module._module is model.transformer.h[1].mlp._module


def _with_features(n_nodes: int) -> nx.DiGraph:
    """The example circuit grown to ``n_nodes`` nodes by extra features at resid_out.1."""
    graph = example_circuit()
    for feature in range(n_nodes - graph.number_of_nodes()):
        graph.add_node(f"resid_out.1/{1000 + feature}@9", kind="feature", site="resid_out.1",
                       layer=1, feature=1000 + feature, position=9, activation=1.0,
                       effect=0.01, label="")
    assert graph.number_of_nodes() == n_nodes
    return graph


def test_renderers_refuse_graphs_above_their_limits():
    """A 2,001-node graph to the diagram (a 100,000-node one took 856 s and 9 GB), a graph
    with 200,000 prompt tokens (a matplotlib traceback), and a 20,001-node graph to HTML →
    ParameterError naming the count, the limit and the keyword / flag that raises it, in
    well under a second each; raising the limit draws."""
    big = _with_features(DIAGRAM_MAX_NODES + 1)
    start = time.perf_counter()
    with pytest.raises(ParameterError, match=r"(?s)2001 nodes, more than the diagram limit of "
                       r"2000.*max_nodes=2001 \(--max-nodes 2001"):
        render_circuit(big)
    wide = example_circuit()
    wide.graph["prompt_tokens"] = ["w"] * 200_000
    for render in (render_circuit, to_html):
        with pytest.raises(ParameterError, match=r"(?s)200000 token positions \(200000 prompt "
                           r"tokens\).*max_positions=200000 \(--max-positions"):
            render(wide)
    huge = _with_features(HTML_MAX_NODES + 1)
    with pytest.raises(ParameterError, match="20001 nodes, more than the HTML viewer limit"):
        to_html(huge)
    assert time.perf_counter() - start < 5.0
    small = example_circuit()
    with pytest.raises(ParameterError, match="13 nodes, more than the diagram limit of 12"):
        render_circuit(small, max_nodes=12)
    assert "<svg" in to_html(small, max_nodes=13)


def test_render_node_at_position_2_62():
    """A node at position 2**62 (a MemoryError in the layout) → a featcircuits error (the
    schema's MAX_POSITION) from the diagram and the HTML viewer."""
    graph = example_circuit()
    node = next(iter(graph.nodes))
    graph.nodes[node]["position"] = 2**62
    assert 2**62 > MAX_POSITION
    for render in (render_circuit, to_html):
        with pytest.raises(FeatCircuitsError, match="position"):
            render(graph)


def test_ioi_prompt_file_reader_is_bounded(tmp_path):
    """tasks.ioi.load_prompts on a FIFO with no writer, /dev/zero, and a file over max_bytes
    (it read with pandas, unbounded) → PromptError at once, naming what it is or max_bytes;
    the bundled file still loads with every column."""
    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(PromptError, match="FIFO"):
        load_prompts(fifo)
    zero = tmp_path / "z.jsonl"
    zero.symlink_to("/dev/zero")
    with pytest.raises(PromptError, match="device"):
        load_prompts(zero)
    small = tmp_path / "s.jsonl"
    small.write_text('{"clean": "a", "corrupt": "b", "answer": "c", "wrong_answer": "d"}\n')
    with pytest.raises(PromptError, match="max_bytes"):
        load_prompts(small, max_bytes=10)
    frame = load_prompts()
    assert isinstance(frame, pd.DataFrame) and len(frame) == 500
    assert {"template", "corruption", "io"} <= set(frame.columns)
    assert frame["c"].isna().sum() == (frame["corruption"] == "flip").sum()
    assert nx is not None
