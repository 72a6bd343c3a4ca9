"""Circuits at Pythia-70M scale: time and peak memory of every step beside the bare-pass floor.

    nice python benchmarks/scale.py [--small] [--dtype float32|bfloat16] [--device cpu|cuda]

A GPT-NeoX shaped like Pythia-70M (d_model 512, 6 layers, 8 heads, d_mlp 2048, vocab 50,304;
random weights from the config, nothing downloaded) with random 32,768-feature ReLU SAEs at
``attn_out``, ``mlp_out`` and ``resid_out`` of every layer (18 dictionaries, 2.4 GB in
float32), 32 prompts x 16 random tokens, target: the logit difference of two tokens at the
last position. Printed side by side, each with wall time, CPU time, sys time and the peak
RSS while it ran (sampled every 20 ms; CUDA: peak allocated GPU memory):

* ``circuit_runs`` (clean forward + backward, features, errors);
* node attributions, ``attribution`` and ``ig`` (``--ig-steps`` points);
* attribution edges (``attribution_circuit``) with 50 and 200 nodes per site;
* the hybrid's verification (``hybrid_circuit``, ``--max-verify`` edges verified exactly);
* node and edge faithfulness of the 50-node circuit;
* the floor: the bare forward + backward passes the attribution circuit needs (same rows,
  same layers, plain torch on the transformers modules, the dictionaries' kept directions
  only);
* a per-downstream-node loop in plain torch, as feature-circuits computes edges (one
  forward with the dictionaries' features as leaves, one ``torch.autograd.grad`` per
  downstream node; ``tests/support/edge_loop.py``) against the batched ``gradient_edges``
  on a subset of one level's nodes: speed-up and max abs difference.

Then each target with its measured ratio. ``--small`` runs a reduced model (2 layers, 4,096
features, 8 prompts) in about a minute. docs/performance.md ("Scale") has the figures.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import einops
import torch

from featcircuits.circuits.attribution import (
    gradient_edges,
    keep_nodes,
    node_attributions,
)
from featcircuits.circuits.discovery import attribution_circuit, circuit_runs, hybrid_circuit
from featcircuits.circuits.faithfulness import faithfulness
from featcircuits.circuits.targets import LogitTarget
from featcircuits.dictionaries import SparseAutoencoder
from featcircuits.engine.memory import current_rss, release_freed_memory
from featcircuits.engine.runs import direct_sites
from featcircuits.engine.settings import RunSettings
from featcircuits.model.sites import Site

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.edge_loop import per_node_edges

GIB = 1024**3
KINDS = ("attn_out", "mlp_out", "resid_out")


def build_model(layers: int, *, dtype: torch.dtype, device: str, seed: int = 0):
    """A random Pythia-70M-shaped GPT-NeoX (``layers`` blocks) as an nnsight model, with the
    bundled model's tokenizer (token ids below 209 are used; the vocabulary is 50,304)."""
    from nnsight import LanguageModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, GPTNeoXConfig

    from featcircuits.model.loading import resolve_checkpoint

    config = GPTNeoXConfig(hidden_size=512, num_hidden_layers=layers, num_attention_heads=8,
                           intermediate_size=2048, vocab_size=50304,
                           max_position_embeddings=2048, rotary_pct=0.25,
                           use_parallel_residual=True, tie_word_embeddings=False)
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(config).to(device=device, dtype=dtype).eval()
    hf.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(resolve_checkpoint("tiny"))
    return LanguageModel(hf, tokenizer=tokenizer)


def build_saes(layers: int, n_features: int, *, dtype: torch.dtype, device: str, seed: int = 1
               ) -> dict[str, SparseAutoencoder]:
    """Random ReLU SAEs (512 → ``n_features``) at attn_out, mlp_out, resid_out of every layer;
    encoder biases put about 5 % of features above zero on typical activations."""
    saes = {}
    generator = torch.Generator().manual_seed(seed)
    for layer in range(layers):
        for kind in KINDS:
            site = f"{kind}.{layer}"
            sae = SparseAutoencoder(512, n_features, site=site)
            with torch.no_grad():
                directions = torch.randn(n_features, 512, generator=generator)
                directions /= directions.norm(dim=-1, keepdim=True)
                sae.W_enc.copy_(directions.T)              # [d_model, n_features]
                sae.W_dec_untied.copy_(directions)         # [n_features, d_model]
                sae.b_enc.fill_(-0.05)
                sae.b_dec.zero_()
            saes[site] = sae.to(device=device, dtype=dtype)
    return saes


class Meter:
    """Wall, CPU (user + sys) and sys seconds and the peak RSS (or CUDA memory) of a step."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    @contextmanager
    def step(self, name: str):
        # what earlier steps dropped goes first: a networkx graph is freed only by a full
        # collection (its cached views form reference cycles), as Python would eventually
        gc.collect()
        release_freed_memory()
        peak = [current_rss()]
        done = threading.Event()

        def sample():
            while not done.wait(0.02):
                peak[0] = max(peak[0], current_rss())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        start = time.perf_counter()
        row = {"step": name}
        try:
            yield row
        finally:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            after = resource.getrusage(resource.RUSAGE_SELF)
            done.set()
            thread.join()
            peak[0] = max(peak[0], current_rss())
            row.update(seconds=wall, cpu=(after.ru_utime - usage.ru_utime)
                       + (after.ru_stime - usage.ru_stime), sys=after.ru_stime - usage.ru_stime,
                       peak_rss=peak[0])
            if torch.cuda.is_available():
                row["peak_gpu"] = torch.cuda.max_memory_allocated()
            self.rows.append(row)
            release_freed_memory()   # what the step freed goes back to the OS
            print(f"  {name:<38} {wall:8.1f} s  cpu {row['cpu']:7.1f} s  sys "
                  f"{row['sys']:6.1f} s  peak RSS {peak[0] / GIB:5.2f} GiB"
                  + (f"  GPU {row['peak_gpu'] / GIB:5.2f} GiB" if "peak_gpu" in row else "")
                  + ("  " + row["note"] if "note" in row else ""), flush=True)


# ---------------------------------------------------------------------------- the floor
def _levels_rows(graph, runs) -> dict:
    """``{level: (downstream nodes, of which error nodes)}`` of an attribution circuit: the
    targets (output level) and every graph node with an outgoing edge (its in-edges were
    computed at its level)."""
    from featcircuits.graph.schema import parse_node_id

    levels: dict = {None: (sum(1 for t in runs.targets if t.is_output), 0)}
    for node in graph.nodes:
        if graph.out_degree(node) == 0:
            continue
        parsed = parse_node_id(node)
        if parsed.site is None:
            continue
        count, errors = levels.get(parsed.site, (0, 0))
        levels[parsed.site] = (count + 1, errors + (parsed.kind == "error"))
    return levels


def floor_passes(runs, graph, kept: dict, rows_per_pass: int) -> float:
    """Seconds of the bare passes the attribution edges of ``graph`` need, in plain torch on
    the transformers modules, as the method runs them: per level, one forward from the
    last residual site on the prompts with the direct upstream sites detached (a zero delta
    added to each), one vector-Jacobian product per downstream node (batched with
    ``is_grads_batched``; its cotangent is the node's encoder row where the feature fires,
    weighted by the node weights), projected on the kept upstream directions. The output
    level backpropagates the logit difference through the final norm and unembedding."""
    from transformers.masking_utils import create_causal_mask

    module = runs.model._module
    neox = module.gpt_neox
    n = runs.n
    weights = runs.node_weights                                   # [n, T]
    start = time.perf_counter()
    for level, (count, errors) in _levels_rows(graph, runs).items():
        if count == 0:
            continue
        ups = [s for s in direct_sites(runs.sites, runs.read_depth(level)) if kept.get(s)]
        directions = {s: runs.dictionaries[s].directions[[f for _, f, _ in kept[s]
                                                          if f >= 0]] for s in ups}
        with torch.enable_grad():
            if level is None:
                x = runs.activations[runs.sites[-1]].detach().requires_grad_(True)
                out = module.get_output_embeddings()(neox.final_layer_norm(x[:, -1:]))
                (grad,) = torch.autograd.grad((out[..., 0] - out[..., 1]).sum(), [x])
                grads = {runs.sites[-1]: grad[None]}
                _project(grads, ups, directions)
                continue
            for grads in _level_vjps(runs, module, neox, create_causal_mask, level, count,
                                     errors, kept, weights, rows_per_pass // n):
                _project(grads, ups, directions)
    return time.perf_counter() - start


def _project(grads, ups, directions) -> None:
    """The kept upstream directions read off the gradients (``[copies, n, T, k]``)."""
    with torch.no_grad():
        for s in ups:
            if grads.get(s) is not None:
                grads[s] @ directions[s].to(grads[s].dtype).T


def _level_vjps(runs, module, neox, create_causal_mask, level, count, errors, kept, weights,
                copies_per_pass):
    """Per pass: ``{upstream site: [copies, n, T, d]}``; one forward of the level's block,
    ``count`` batched vector-Jacobian products in all (see ``floor_passes``)."""
    site = Site.parse(level)
    layer = site.layer
    first = (runs.activations[f"resid_out.{layer - 1}"] if layer > 0
             else neox.embed_in(runs.ids)).detach()
    block = neox.layers[layer]
    names = {"resid": f"resid_out.{layer - 1}" if layer > 0 else None,
             "attn": f"attn_out.{layer}", "mlp": f"mlp_out.{layer}"}
    deltas = {key: torch.zeros_like(first, requires_grad=True) for key in names}
    x = first + deltas["resid"]
    positions = torch.arange(x.shape[1], device=x.device)[None]
    mask = create_causal_mask(config=module.config, inputs_embeds=x, attention_mask=None,
                              cache=None, position_ids=positions)
    attn = block.attention(block.input_layernorm(x), attention_mask=mask,
                           position_embeddings=neox.rotary_emb(x, positions))
    attn = attn[0] if isinstance(attn, tuple) else attn
    if site.kind == "attn_out":
        y = attn
    else:
        mlp = block.mlp(block.post_attention_layernorm(x))
        if site.kind == "mlp_out":
            y = mlp
        else:   # resid_out: the sublayers' outputs are held (detached) direct sites
            y = x + (attn.detach() + deltas["attn"]) + (mlp.detach() + deltas["mlp"])
    sae = runs.dictionaries[level]
    features = count - errors
    ids = [f for _, f, _ in kept.get(level, []) if f >= 0] or [0]
    ids = (ids * (features // len(ids) + 1))[:features]
    encoder = sae.W_enc[:, ids]                                   # [d, features]
    fires = (y.detach() @ encoder + sae.b_enc[ids]) > 0           # [n, T, features]
    cotangent = einops.einsum(fires * weights[..., None], encoder,
                              "n t k, d k -> k n t d")
    if errors:
        # an error node's value Σ_t w_t (e_t · g_t), e = y − decode(encode(y)): its gradient
        # g − W_enc (active ⊙ (g W_decᵀ)), three [n T, d] × [d, F] products
        g = runs.gradients[level]
        active = (y.detach() @ sae.W_enc + sae.b_enc) > 0
        error_cotangent = weights[..., None] * (g - ((g @ sae.W_dec.T) * active) @ sae.W_enc.T)
        cotangent = torch.cat([cotangent, error_cotangent[None].expand(errors, -1, -1, -1)])
    wanted = [key for key in names if names[key] in runs.sites]
    step = max(1, copies_per_pass)
    for done in range(0, count, step):
        got = torch.autograd.grad(y, [deltas[key] for key in wanted],
                                  grad_outputs=cotangent[done:done + step],
                                  is_grads_batched=True, retain_graph=True, allow_unused=True)
        yield {names[key]: grad for key, grad in zip(wanted, got)}


def clean_floor(runs) -> float:
    """Seconds of one plain forward + backward of the prompts through the whole model."""
    module = runs.model._module
    start = time.perf_counter()
    with torch.enable_grad():
        embeds = module.gpt_neox.embed_in(runs.ids).detach().requires_grad_(True)
        logits = module(inputs_embeds=embeds).logits[:, -1]
        torch.autograd.grad((logits[:, 0] - logits[:, 1]).sum(), [embeds])
    return time.perf_counter() - start


# ------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="2 layers, 4096 features, 8 "
                        "prompts: a quick check of the script")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16",
                                                               "float16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--ig-steps", type=int, default=4)
    parser.add_argument("--max-verify", type=int, default=50)
    parser.add_argument("--max-memory", default="1GB")
    parser.add_argument("--loop-nodes", type=int, default=8)
    parser.add_argument("--floor200", action="store_true",
                        help="also time the floor of the 200-node circuit")
    parser.add_argument("--skip", nargs="*", default=[],
                        help="steps to leave out: ig, edges200, hybrid, faithfulness")
    args = parser.parse_args()
    layers, features, prompts, tokens = (2, 4096, 8, 16) if args.small else (6, 32768, 32, 16)
    dtype = getattr(torch, args.dtype)
    torch.set_grad_enabled(False)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    print(f"load: {os.getloadavg()}; torch threads {torch.get_num_threads()}; "
          f"{layers} layers, {3 * layers} SAEs x {features} features, {prompts} prompts x "
          f"{tokens} tokens, {args.dtype} on {args.device}")
    model = build_model(layers, dtype=dtype, device=args.device)
    saes = build_saes(layers, features, dtype=dtype, device=args.device)
    weights = sum(t.numel() * t.element_size() for sae in saes.values()
                  for t in sae.parameters())
    print(f"dictionary weights {weights / GIB:.2f} GiB; RSS after loading "
          f"{current_rss() / GIB:.2f} GiB")
    ids = torch.randint(2, 209, (prompts, tokens), generator=torch.Generator().manual_seed(2))
    target = LogitTarget(0, minus=1, positions="final")
    settings = RunSettings(max_memory=args.max_memory, progress=False)
    meter = Meter()
    tau = 1e-3
    with meter.step("circuit_runs"):
        runs = circuit_runs(model, saes, ids.to(args.device), targets=target,
                            settings=settings)
    with meter.step("floor: clean forward+backward"):
        clean_floor(runs)
    with meter.step("node attributions (attribution)"):
        effects = node_attributions(runs, ablation="zero")
    if "ig" not in args.skip:
        with meter.step(f"node attributions (ig, {args.ig_steps} steps)"):
            node_attributions(runs, ablation="zero", method="ig", steps=args.ig_steps)
    graphs, kept_sets = {}, {}
    for nodes in (50, 200):
        if nodes == 200 and "edges200" in args.skip:
            continue
        kept_sets[nodes] = keep_nodes(effects, tau, nodes)
        with meter.step(f"attribution circuit ({nodes} nodes/site)") as row:
            graphs[nodes] = attribution_circuit(runs, tau=tau, max_nodes=nodes)
            row["note"] = (f"{graphs[nodes].number_of_nodes()} nodes, "
                           f"{graphs[nodes].number_of_edges()} edges")
        if nodes == 200 and not args.floor200:
            del graphs[200]   # ~10⁶ edges in networkx; nothing later reads it
        if nodes == 50 or args.floor200:
            with meter.step(f"floor: edge passes ({nodes} nodes/site)"):
                floor_passes(runs, graphs[nodes], kept_sets[nodes], runs.max_rows)
    if "hybrid" not in args.skip:
        with meter.step(f"hybrid (50 nodes/site, verify {args.max_verify})") as row:
            hybrid = hybrid_circuit(runs, tau=tau, max_nodes=50, max_verify=args.max_verify)
            row["note"] = f"{hybrid.graph['verified_edges']} edges verified"
    if "faithfulness" not in args.skip:
        with meter.step("faithfulness (nodes, 50-node circuit)") as row:
            row["note"] = f"{faithfulness(runs, graphs[50])['faithfulness']:.3f}"
        with meter.step("faithfulness (edges, 50-node circuit)") as row:
            row["note"] = f"{faithfulness(runs, graphs[50], edges=True)['faithfulness']:.3f}"
    loop = per_node_loop(runs, kept_sets[50], args.loop_nodes, meter)
    report(meter, weights, loop, time.perf_counter() - started, _cpu_seconds() - cpu_started)


def per_node_loop(runs, kept: dict, count: int, meter: Meter) -> dict:
    """The edges into ``count`` feature nodes of the deepest resid_out level (from every
    kept upstream node), batched (``gradient_edges``, one copy of the data per node) and
    by a plain-torch loop as feature-circuits computes them (one forward with the
    dictionaries' features as leaves, then one ``torch.autograd.grad`` per node,
    ``tests/support/edge_loop.py``)."""
    level = [s for s in runs.sites if s.startswith("resid_out")][-1]
    nodes = [node for node in kept.get(level, []) if node[1] >= 0][:count]
    upstream = {s: v for s, v in kept.items()
                if Site.parse(s).depth < runs.read_depth(level)}
    with meter.step(f"batched edges into {len(nodes)} nodes of {level}") as row:
        batched = gradient_edges(runs, level, nodes, upstream, ablation="zero",
                                 positional=False)
    with meter.step(f"per-node loop, {len(nodes)} backwards") as row:
        looped = per_node_edges(runs, level, nodes, upstream)
    error = max(abs(batched[k] - looped[k]) for k in batched) if batched else float("nan")
    row["note"] = f"max abs difference {error:.2e} over {len(batched)} edges"
    return {"batched": meter.rows[-2]["seconds"], "loop": meter.rows[-1]["seconds"],
            "batched_cpu": meter.rows[-2]["cpu"], "loop_cpu": meter.rows[-1]["cpu"],
            "error": error}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reference(step: str) -> bool:
    """Steps that run plain-torch references, not featcircuits (the floors, the loop)."""
    return step.startswith(("floor", "per-node loop"))


def report(meter: Meter, weights: int, loop: dict, wall: float, cpu_total: float) -> None:
    rows = {row["step"]: row for row in meter.rows}
    circuit = rows.get("attribution circuit (50 nodes/site)")
    floor = rows.get("floor: edge passes (50 nodes/site)")
    # the toolkit's steps; the references' peaks are printed beside
    peak = max(row["peak_rss"] for row in meter.rows if not _reference(row["step"]))
    reference_peak = max((row["peak_rss"] for row in meter.rows if _reference(row["step"])),
                         default=0)
    cpu = sum(row["cpu"] for row in meter.rows)
    sys_time = sum(row["sys"] for row in meter.rows)
    print("\ntargets:")
    checks = [
        ("attribution circuit <= 2x the bare-pass floor (CPU time)",
         circuit["cpu"] / floor["cpu"],
         f"x floor (wall {circuit['seconds'] / floor['seconds']:.3g}x)", lambda v: v <= 2),
        (">= 10x faster than the per-node loop", loop["loop"] / loop["batched"],
         f"x (CPU time {loop['loop_cpu'] / max(loop['batched_cpu'], 1e-9):.3g}x)",
         lambda v: v >= 10),
        ("batched and per-node edges agree (max abs < 1e-4)", loop["error"], "",
         lambda v: v < 1e-4),
        ("peak RSS <= dictionary weights + 1.5 GiB (featcircuits' steps)",
         (peak - weights) / GIB, ("GiB over the weights (plain-torch references: "
                                  f"{(reference_peak - weights) / GIB:.2f})"),
         lambda v: v <= 1.5),
        ("sys time <= 10 % of CPU time", 100 * sys_time / max(cpu, 1e-9), "%",
         lambda v: v <= 10),
    ]
    checks.append(("the whole benchmark in under 15 minutes", wall / 60,
                   f"minutes (CPU {cpu_total / 60:.1f} min)", lambda v: v < 15))
    for name, value, unit, ok in checks:
        print(f"  {'met ' if ok(value) else 'MISS'} {name}: {value:.3g} {unit}")
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
