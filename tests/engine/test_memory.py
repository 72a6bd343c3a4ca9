"""Memory bounds and load (issue #9): budgets, chunked == unchunked, peak RSS, no leaks.

The wide-dictionary case (32,768 features at 128 positions) runs in a child process,
started when this module starts so that it runs while the in-process tests do; its peak
RSS is read from the child's own ``getrusage``.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from featcircuits.dictionaries.bases import RandomBasis
from featcircuits.dictionaries.io import load_dictionary
from featcircuits.engine.memory import (
    DEFAULT_MAX_MEMORY,
    current_rss,
    default_max_memory,
    parse_memory,
    split_rows,
)
from featcircuits.engine.settings import RunSettings
from featcircuits.errors import ParameterError
from featcircuits.model.loading import load_model
from featcircuits.patching.experiment import PatchingExperiment
from featcircuits.patching.search import attribution_curve, attribution_scores, backward_elimination
from featcircuits.tasks.ioi import ioi_prompt_pairs

ROOT = Path(__file__).resolve().parents[2]
CHILD = ROOT / "tests" / "support" / "memory_child.py"
MIB = 1024**2

# The wide case: 32,768 features, 128 positions, one prompt pair, budget 128 MiB.
WIDE_FEATURES, WIDE_POSITIONS, WIDE_PROMPTS = 32768, 128, 1
WIDE_BUDGET = 128 * MIB
# On top of the budget: the cached clean run of the circuit case (features [n, T, F] at two
# sites, 2 × 16 MiB), blockwise scans, allocator slack. Measured growth with the 128 MiB
# budget: 176-193 MiB run alone, up to 260 MiB with the rest of the suite running beside it
# (docs/memory.md); without a budget 429 MiB.
WIDE_SLACK = 192 * MIB
# The child's attribution curve patches 7 feature sets (sizes 0 .. 32768).
WIDE_CURVE_SETS = 7


@pytest.fixture(scope="module", autouse=True)
def wide_child():
    """The wide-dictionary child process, started before the first test of this module."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    process = subprocess.Popen(
        [sys.executable, str(CHILD), "all", f"{WIDE_BUDGET // MIB}MB", str(WIDE_FEATURES),
         str(WIDE_POSITIONS), str(WIDE_PROMPTS)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    yield process
    if process.poll() is None:
        process.kill()
    process.communicate()


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny")


@pytest.fixture()
def one_thread():
    """One torch thread: on 2 shared, loaded cores it is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------- parsing
@pytest.mark.parametrize(("value", "expected"), [
    ("2GB", 2 * 1024**3), ("512 MiB", 512 * MIB), ("1.5g", int(1.5 * 1024**3)),
    ("64mb", 64 * MIB), (3_000_000, 3_000_000), (2e9, 2_000_000_000), ("1048576", MIB),
    ("1TB", 1024**4),
])
def test_parse_memory_reads_sizes(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["lots", "2XB", "-1GB", "GB", "", 0, -5, "0.5KB", True,
                                   float("nan"), float("inf"), [1]])
def test_parse_memory_rejects_bad_values(value):
    with pytest.raises(ParameterError, match="max_memory"):
        parse_memory(value)


def test_default_budget_is_4gb_or_a_quarter_of_ram():
    budget = default_max_memory()
    assert parse_memory(None) == parse_memory("auto") == budget
    with open("/proc/meminfo", encoding="ascii") as handle:
        total = int(next(line.split()[1] for line in handle
                         if line.startswith("MemTotal:"))) * 1024
    assert budget == min(DEFAULT_MAX_MEMORY, total // 4)


def test_split_rows():
    assert split_rows(10, 4, 16) == (4, 4)      # 4 sets of 4 prompts
    assert split_rows(10, 4, 3) == (1, 3)       # one set, prompts split 3 at a time
    assert split_rows(2, 4, 100) == (2, 4)      # never more sets than there are


def test_bad_budget_is_rejected_before_the_experiment_runs(tiny):
    sae = load_dictionary(ROOT / "featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2")
    prompts = ioi_prompt_pairs(2, corruptions=("abc",))
    with pytest.raises(ParameterError, match="max_memory"):
        PatchingExperiment(tiny, sae, prompts, settings=RunSettings(max_memory="much"))
    with pytest.raises(ParameterError, match="settings must be a RunSettings"):
        PatchingExperiment(tiny, sae, prompts, settings={"max_memory": "1GB"})


# ------------------------------------------------------- chunked == unchunked
def test_chunked_patch_search_equals_unchunked(tiny, one_thread):
    """1 MiB forces one sequence per forward, one prompt per block and feature blocks of
    ~4.4k; results equal the unchunked run (KL within 1e-6 nats, float32 rounding)."""
    dictionary = RandomBasis(128, n_features=8192, seed=3, site="resid_out.1")
    prompts = ioi_prompt_pairs(4, seed=1, corruptions=("abc",), tokenizer=tiny.tokenizer)
    runs = {}
    for budget in ("64GB", "1MB"):
        experiment = PatchingExperiment(tiny, dictionary, prompts,
                                        settings=RunSettings(max_memory=budget, progress=False))
        scores = attribution_scores(experiment)
        ranked = scores["feature"].tolist()
        sets = [[], ranked[:10], ranked[:500], list(range(8192))]
        runs[budget] = {
            "experiment": experiment, "active": experiment.active_features(), "ranked": ranked,
            "scores": scores.set_index("feature")["score"].sort_index(),
            "table": experiment.evaluate(sets),
            "elimination": backward_elimination(experiment, taus=[1e-4], features=ranked[:5],
                                                batch_size=3, progress=False),
            "blocks": list(experiment.feature_blocks("resid_out.1")),
        }
    big, small = runs["64GB"], runs["1MB"]
    # the budget really changed the chunking
    assert len(big["blocks"]) == 1 and big["blocks"][0][1] is None
    assert all(p.stop - p.start == 1 for p, _ in small["blocks"])
    assert all(ids is not None and len(ids) < 8192 for _, ids in small["blocks"])
    assert small["experiment"].forwards_run > big["experiment"].forwards_run
    # the whole basis patched once more (the experiments' public cost counters): one
    # sequence per forward at 1 MiB, every prompt in one forward at 64 GB
    for run, forwards in ((small, len(prompts)), (big, 1)):
        experiment = run["experiment"]
        rows_before, forwards_before = experiment.rows_run, experiment.forwards_run
        experiment.patched_logits([list(range(8192))])
        assert experiment.rows_run - rows_before == len(prompts)
        assert experiment.forwards_run - forwards_before == forwards
    assert big["active"] == small["active"] and len(big["active"]) == 8192
    torch.testing.assert_close(torch.tensor(small["scores"].values),
                               torch.tensor(big["scores"].values), rtol=1e-4, atol=1e-7)
    for column, atol in (("kl", 1e-6), ("logit_diff", 1e-4), ("answer_prob", 1e-6),
                         ("edit_magnitude", 1e-3)):
        torch.testing.assert_close(torch.tensor(small["table"][column].values),
                                   torch.tensor(big["table"][column].values),
                                   rtol=1e-4, atol=atol)
    # both eliminations start from each run's top 5; the cut is clear of rounding (the
    # scores agree to rtol 1e-4), so the starting sets, and the kept sets, are the same
    fifth, sixth = (abs(big["scores"][big["ranked"][i]]) for i in (4, 5))
    assert fifth - sixth > 1e-3 * fifth
    assert set(small["ranked"][:5]) == set(big["ranked"][:5])
    assert small["elimination"]["features"].tolist() == big["elimination"]["features"].tolist()
    # patching every feature of a complete basis restores the clean run
    assert big["table"]["kl"].iloc[-1] < 1e-6 < big["table"]["kl"].iloc[0]


def test_chunked_circuits_equal_unchunked(tiny, one_thread):
    from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, circuit_runs
    from featcircuits.engine.settings import RunSettings

    dictionaries = {"resid_out.1": RandomBasis(128, n_features=4096, seed=1),
                    "resid_out.2": RandomBasis(128, n_features=4096, seed=2)}
    prompts = ioi_prompt_pairs(3, seed=2, corruptions=("abc",), tokenizer=tiny.tokenizer)
    candidates = {site: list(range(0, 4096, 512)) for site in dictionaries}
    graphs = {}
    for budget in ("64GB", "1MB"):
        runs = circuit_runs(tiny, dictionaries, prompts, targets="logit_diff",
                            settings=RunSettings(max_memory=budget, progress=False))
        graphs[budget] = {
            "copies": runs.chunk_copies(),
            "attribution": attribution_circuit(runs, tau=1e-3, max_nodes=3),
            "acdc": acdc_circuit(runs, tau=1e-3, candidates=candidates),
        }
    assert graphs["64GB"]["copies"] > 8 and graphs["1MB"]["copies"] == 1
    for method in ("attribution", "acdc"):
        big = {(u, v): w for u, v, w in graphs["64GB"][method].edges(data="weight")}
        small = {(u, v): w for u, v, w in graphs["1MB"][method].edges(data="weight")}
        assert big and set(big) == set(small), method
        for edge, weight in big.items():
            assert small[edge] == pytest.approx(weight, rel=1e-4, abs=1e-6)


def test_run_cache_streams_prompts_in_chunks_with_unchunked_results(tiny, one_thread):
    """A 1 MiB budget runs the cached clean and corrupted forwards in several prompt chunks
    (counted), with the same activations and logits as one pass (within 1e-6), and the
    cache's bytes count against the experiment's working budget."""
    from featcircuits.engine.cache import RunCache
    from featcircuits.engine.memory import STREAM_SHARE, forward_bytes_per_row

    prompts = ioi_prompt_pairs(12, seed=4, corruptions=("abc",), tokenizer=tiny.tokenizer)
    whole = RunCache(tiny, prompts, ["resid_out.0", "resid_out.2"], max_memory="64GB")
    chunked = RunCache(tiny, prompts, ["resid_out.0", "resid_out.2"], max_memory="1MB")
    width = whole.prompts.clean_ids.shape[1]
    expected = max(1, (1024**2 // STREAM_SHARE) // forward_bytes_per_row(tiny, width,
                                                                          backward=False))
    assert chunked.chunk_prompts == expected < len(prompts)
    assert whole.chunks_run == 2
    assert chunked.chunks_run == 2 * -(-len(prompts) // expected) > 2
    for name in ("clean_logits", "corrupt_logits"):
        torch.testing.assert_close(getattr(chunked, name), getattr(whole, name),
                                   rtol=0, atol=1e-6)
    for name in ("clean_activations", "corrupt_activations"):
        for site, values in getattr(whole, name).items():
            torch.testing.assert_close(getattr(chunked, name)[site], values, rtol=0, atol=1e-6)
    # kept: both runs' answer logits and the clean run's activations at both sites (the
    # corrupted run's are read again where needed, test below)
    expected_bytes = (2 * 12 * 209 + 2 * 12 * width * 128) * 4
    assert whole.nbytes == chunked.nbytes == expected_bytes
    sae = RandomBasis(128, n_features=64, seed=1, site="resid_out.2")
    budget = 64 * MIB
    experiment = PatchingExperiment(tiny, sae, prompts, runs=whole,
                                    settings=RunSettings(max_memory=budget, progress=False))
    assert experiment.max_memory == budget - expected_bytes


def test_run_cache_streams_the_activations_it_does_not_keep(tiny, one_thread):
    """The corrupted run's activations are never kept, and the clean run's not when they
    exceed a quarter of the budget (40 prompts × 2 sites at 1 MiB): blocks, index lists
    with repeats and whole sites are read by forwards (counted; the last block read is
    reused) and equal the kept values within 1e-6; nothing but logits counts in ``nbytes``;
    a patching experiment on the streamed cache gives the kept cache's scores and table."""
    from featcircuits.engine.cache import RunCache

    sites = ["resid_out.0", "resid_out.2"]
    prompts = ioi_prompt_pairs(40, seed=5, corruptions=("abc",), tokenizer=tiny.tokenizer)
    kept = RunCache(tiny, prompts, sites, max_memory="64GB")
    streamed = RunCache(tiny, prompts, sites, max_memory="1MB")
    width = kept.prompts.clean_ids.shape[1]
    assert 40 * width * 128 * 4 * 2 > MIB // 4  # the clean activations exceed a quarter
    assert kept.clean_activations.kept and not streamed.clean_activations.kept
    assert not kept.corrupt_activations.kept and not streamed.corrupt_activations.kept
    logits_bytes = 2 * 40 * 209 * 4
    assert streamed.nbytes == logits_bytes
    assert kept.nbytes == logits_bytes + 2 * 40 * width * 128 * 4
    for run in ("clean", "corrupt"):
        ours, theirs = (getattr(cache, f"{run}_activations") for cache in (streamed, kept))
        assert list(ours) == sites
        before = streamed.chunks_run
        block = ours.select("resid_out.2", slice(3, 9))
        forwards = -(-6 // streamed.chunk_prompts)
        assert streamed.chunks_run - before == forwards
        same_block = ours.select("resid_out.0", slice(3, 9))  # the block just read: no forward
        assert streamed.chunks_run - before == forwards
        torch.testing.assert_close(block, theirs.select("resid_out.2", slice(3, 9)),
                                   rtol=0, atol=1e-6)
        torch.testing.assert_close(same_block, theirs["resid_out.0"][3:9], rtol=0, atol=1e-6)
        index = torch.tensor([5, 1, 5, 30])
        before = streamed.chunks_run
        torch.testing.assert_close(ours.select("resid_out.0", index),
                                   theirs["resid_out.0"][index], rtol=0, atol=1e-6)
        assert streamed.chunks_run - before == -(-3 // streamed.chunk_prompts)  # 3 distinct
        before = streamed.chunks_run
        torch.testing.assert_close(ours["resid_out.2"], theirs["resid_out.2"], rtol=0, atol=1e-6)
        assert streamed.chunks_run - before == -(-40 // streamed.chunk_prompts)
        assert ours.select("resid_out.2", torch.tensor([], dtype=torch.long)).shape == (
            0, width, 128)
    with pytest.raises(ParameterError, match="unknown run 'patched'"):
        streamed.activations("patched", slice(0, 2))
    sae = RandomBasis(128, n_features=256, seed=2, site="resid_out.2")
    results = {}
    for name, cache in (("kept", kept), ("streamed", streamed)):
        experiment = PatchingExperiment(tiny, sae, prompts, runs=cache,
                                        settings=RunSettings(max_memory="64GB", progress=False))
        scores = attribution_scores(experiment).set_index("feature")["score"].sort_index()
        ranked = attribution_scores(experiment)["feature"].tolist()
        results[name] = (experiment.active_features(), scores, ranked,
                         experiment.evaluate([[], ranked[:8], ranked[:64]]))
    (active, scores, ranked, table), (active2, scores2, ranked2, table2) = results.values()
    assert active == active2 and len(active) > 100
    torch.testing.assert_close(torch.tensor(scores2.values), torch.tensor(scores.values),
                               rtol=1e-4, atol=1e-7)
    assert ranked2[:8] == ranked[:8]
    for column in ("kl", "logit_diff", "edit_magnitude"):
        torch.testing.assert_close(torch.tensor(table2[column].values),
                                   torch.tensor(table[column].values), rtol=1e-4, atol=1e-5)
    assert table["kl"].iloc[2] < table["kl"].iloc[0]


def test_scans_over_many_prompts_keep_fixed_blocks_and_stream_metrics(tiny, one_thread):
    """More prompts than ``SCAN_ROWS``: even with a huge budget the run cache, the encoding
    blocks and the patched forwards' deduplication blocks hold at most ``SCAN_ROWS``
    prompts and a patched forward at most ``FORWARD_ROWS`` rows (counted), so a scan over 2,000 prompts runs the blocks one over 100 does; and
    ``evaluate`` / ``mean_kl``, which reduce each block to its metrics, equal the metrics of
    the full ``[sets, prompts, vocab]`` logits of ``patched_logits``."""
    from featcircuits.engine.cache import RunCache
    from featcircuits.engine.memory import FORWARD_ROWS, SCAN_ROWS
    from featcircuits.model.metrics import answer_prob, kl_divergence, logit_diff

    prompts = ioi_prompt_pairs(SCAN_ROWS + 6, seed=5, corruptions=("abc",),
                               tokenizer=tiny.tokenizer)
    n = len(prompts)
    dictionary = RandomBasis(128, n_features=128, seed=4, site="resid_out.1")
    runs = RunCache(tiny, prompts, ["resid_out.1"], max_memory="64GB")
    assert runs.chunk_prompts == SCAN_ROWS and runs.chunks_run == 2 * 2
    experiment = PatchingExperiment(tiny, dictionary, prompts, runs=runs,
                                    settings=RunSettings(max_memory="64GB", progress=False))
    blocks = list(experiment.feature_blocks("resid_out.1"))
    assert [(p.start, p.stop, ids) for p, ids in blocks] == [(0, SCAN_ROWS, None),
                                                              (SCAN_ROWS, n, None)]
    sets = [[], [3], list(range(0, 128, 2)), list(range(128))]
    before, rows_before = experiment.forwards_run, experiment.rows_run
    table = experiment.evaluate(sets, per_prompt=True)
    # every set of a block of prompts runs together, in forwards of at most FORWARD_ROWS
    # rows whatever the budget: the first block's 64 prompts x 3 patched sets (192 distinct
    # rows) in two forwards, the second block's 6 x 3 in one
    assert experiment.rows_run - rows_before == 3 * n
    assert experiment.forwards_run - before == sum(
        -(-3 * prompts // FORWARD_ROWS) for prompts in (SCAN_ROWS, n - SCAN_ROWS)) == 3
    # forwards of fewer rows (max_rows) patch the same rows: the same metrics
    smaller = PatchingExperiment(tiny, dictionary, prompts, runs=runs,
                                 settings=RunSettings(max_memory="64GB", max_rows=48,
                                                      progress=False))
    small_table = smaller.evaluate(sets, per_prompt=True)
    assert smaller.forwards_run == sum(-(-3 * prompts // 48)
                                       for prompts in (SCAN_ROWS, n - SCAN_ROWS))
    for column in ("kl", "logit_diff", "answer_prob", "edit_magnitude"):
        torch.testing.assert_close(torch.tensor(small_table[column].values),
                                   torch.tensor(table[column].values), rtol=1e-5, atol=1e-6)
    kl = experiment.mean_kl(sets)
    logits, norms = experiment.patched_logits(sets)
    pairs = experiment.prompts
    expected = {"kl": kl_divergence(experiment.clean_logits, logits),
                "logit_diff": logit_diff(logits, pairs.answer_ids, pairs.wrong_ids),
                "answer_prob": answer_prob(logits, pairs.answer_ids),
                "edit_magnitude": norms}
    for column, values in expected.items():
        torch.testing.assert_close(torch.tensor(table[column].values, dtype=torch.float32),
                                   values.flatten().float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(kl, expected["kl"].mean(-1), rtol=1e-5, atol=1e-7)
    # the sets really patch: nothing patched keeps the corrupted run, the complete basis
    # restores the clean one on every prompt, one feature moves the logits
    torch.testing.assert_close(logits[0], experiment.corrupt_logits)
    assert float(expected["kl"][3].max()) < 1e-6 < float(expected["kl"][0].min())
    assert float((logits[1] - experiment.corrupt_logits).abs().max()) > 1e-4


# ---------------------------------------------------------------------- load
@pytest.mark.slow
def test_1000_ioi_prompts_do_not_grow_memory(tiny, one_thread):
    """1,000 IOI prompts through the patch search (attribution curve and elimination) in
    batches of 50: RSS after the 1,000th prompt is within 10% of RSS after the 100th, and
    every experiment is freed (nothing keeps traces, experiments or their tensors)."""
    sae = load_dictionary(ROOT / "featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2")
    prompts = ioi_prompt_pairs(1000, seed=0, corruptions=("abc",), tokenizer=tiny.tokenizer)
    batch = 50
    alive, rss = [], {}
    for start in range(0, len(prompts), batch):
        experiment = PatchingExperiment(
            tiny, sae, prompts.iloc[start:start + batch],
            settings=RunSettings(max_memory="256MB", progress=False))
        curve = attribution_curve(experiment, sizes=[0, 64])
        assert curve["kl"].iloc[-1] < curve["kl"].iloc[0]
        backward_elimination(experiment, taus=[1e-2], features=curve["features"].iloc[1][:2],
                             batch_size=2, progress=False)
        alive.append(weakref.ref(experiment))
        del experiment, curve
        done = start + batch
        if done in (100, 1000):
            gc.collect()
            rss[done] = current_rss()
    print(f"RSS after 100 prompts {rss[100] / MIB:.1f} MiB, after 1000 {rss[1000] / MIB:.1f} MiB")
    gc.collect()
    assert sum(ref() is not None for ref in alive) == 0
    assert len(rss) == 2
    assert rss[1000] <= 1.10 * rss[100], (rss[100] / MIB, rss[1000] / MIB)


# -------------------------------------------------------------- wide dictionary
@pytest.mark.slow  # a 32,768-feature child process (~20 s): make test-slow, CI
def test_wide_dictionary_peak_rss_stays_under_bound(wide_child):
    """32,768 features × 128 positions: patch search (attribution curve, elimination) and
    circuit discovery (attribution, exact ACDC over a bounded candidate set) with a 128 MiB
    budget stay under budget + slack above the RSS after loading; the unchunked patch
    search alone would need more than that bound (measured: docs/memory.md)."""
    stdout, stderr = wide_child.communicate(timeout=300)
    assert wide_child.returncode == 0, stderr[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    bound = WIDE_BUDGET + WIDE_SLACK
    # what one forward of the unchunked path holds: every set × prompt in one pass, with
    # the encoded features, their gathered copy and the repeated source values, each
    # [sets × prompts, positions, features] float32
    unchunked = 3 * WIDE_CURVE_SETS * WIDE_PROMPTS * WIDE_POSITIONS * WIDE_FEATURES * 4
    assert unchunked > bound
    grown = result["peak_rss"] - result["loaded_rss"]
    assert grown < bound, f"peak grew {grown / MIB:.0f} MiB over loading, bound {bound / MIB}"
    # the runs did real work on the full width
    assert result["curve_sizes"][-1] == WIDE_FEATURES
    assert result["curve_kl"][-1] < 1e-6 < result["curve_kl"][0]
    assert result["acdc_edges"] and result["attribution_edges"]


def test_freed_memory_trims_only_past_its_slack(monkeypatch, tiny):
    """``FreedMemory`` trims when RSS exceeds the last trim's by more than its slack (not
    after every pass: that re-faults the pages the next pass reuses), and every traced pass
    of ``CircuitRuns`` asks it first."""
    from featcircuits.circuits.discovery import circuit_runs
    from featcircuits.engine import memory

    rss = iter([1000, 1005, 1011, 900, 950, 1500, 1200])
    trims = []
    monkeypatch.setattr(memory, "current_rss", lambda: next(rss))
    monkeypatch.setattr(memory, "_trim_heap", lambda: trims.append(1))
    freed = memory.FreedMemory(slack=10)            # settled at 1000
    freed.release()                                 # 1005: within the slack
    assert trims == []
    freed.release()                                 # 1011: trims; settles at 900
    assert trims == [1] and freed.settled == 900
    freed.release()                                 # 950 > 900 + 10: trims
    assert len(trims) == 2 and freed.settled == 1500
    freed.release()                                 # 1200: below the new settled RSS
    assert len(trims) == 2
    monkeypatch.undo()

    sae = load_dictionary(ROOT / "featcircuits/zoo/tiny/dictionaries/sae-sparse/resid_out.2")
    runs = circuit_runs(tiny, {"resid_out.2": sae}, ioi_prompt_pairs(
        2, seed=0, corruptions=("abc",), tokenizer=tiny.tokenizer), targets="logit_diff",
        settings=RunSettings(progress=False))
    calls, start = [], runs.rows_run
    monkeypatch.setattr(runs.freed, "release", lambda: calls.append(runs.rows_run - start))
    runs.trace({}, 2)
    runs.trace({}, 1)
    assert calls == [runs.n * 2, runs.n * 3]      # once per pass
