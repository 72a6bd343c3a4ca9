"""Ready-made circuit experiments on the bundled model: the closing-parenthesis circuit and
the IOI logit-difference circuit. The example scripts and the benchmark are thin wrappers.

Closing parentheses. Held-out documents of the parenthesis grammar
(``featcircuits.tasks.parens``) give the positions where ")" is the one grammatical next
token. The last-layer features that drive ")" are ranked two ways: by their decoder
direction read through the final layer norm and the unembedding (logit of ")" minus "."
per unit of activation, with the layer norm's scale taken at those positions), and by their
activation on those positions versus the control positions (nouns and ")" at depth 0). The
features that score highest on ``activation × logit per unit`` become the targets, and the
circuit is built back to the input tokens (a ``TokenBasis`` at the embedding) over every
")"-predicting position of the data.

IOI. Prompt pairs from ``data/ioi/prompts.jsonl`` (one template, so positions line up); the
target is the logit difference IO − S at the final position.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import pandas as pd
import torch

from featcircuits.files import atomic_write_text
from featcircuits.engine.runs import CircuitRuns
from featcircuits.engine.settings import RunSettings
from featcircuits.circuits.discovery import acdc_circuit, attribution_circuit, hybrid_circuit
from featcircuits.cli.flags import model_from_args
from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.tokens import TokenBasis
from featcircuits.errors import DictionaryLoadError, ParameterError
from featcircuits.circuits.faithfulness import faithfulness, faithfulness_curve
from featcircuits.graph.io import edges_frame, write_json, write_tables
from featcircuits.engine.memory import parse_memory
from featcircuits.model.loading import (
    load_model,
    model_device,
    resolve_checkpoint,
    to_model,
    trace,
    underlying_module,
)
from featcircuits.model.sites import Site, architecture, num_layers
from featcircuits.circuits.targets import FeatureTarget

METHODS = ("acdc", "attribution", "hybrid")


# -------------------------------------------------------------------------- inputs
def default_dictionaries(model_name: str, model, set_name: str | None = None,
                         folder: str | os.PathLike[str] | None = None
                         ) -> tuple[str, dict[str, Dictionary]]:
    """``(set name, {site: Dictionary})`` from ``<checkpoint>/dictionaries/<set>/`` (or
    ``folder``); unless ``set_name`` is given: ``sae-sparse``, else the first SAE set."""
    from featcircuits.dictionaries.hub import is_spec
    from featcircuits.dictionaries.io import load_dictionaries
    from featcircuits.experiments.ioi import dictionary_sets

    if is_spec(folder):  # e.g. dictionary_learning:pythia-70m-deduped (docs/real-models.md)
        return str(folder), load_dictionaries(folder, model=model)
    if folder is None:
        checkpoint = Path(resolve_checkpoint(model_name))
        folder = checkpoint / "dictionaries"
    root = Path(folder)
    if not root.is_dir():
        raise DictionaryLoadError(f"no dictionary folder {str(root)!r}",
                                  hint="pass --dictionaries FOLDER holding <set>/<site>/")
    sets = dictionary_sets(root, model, names=[set_name] if set_name else None)
    if not sets:
        raise DictionaryLoadError(f"no dictionary sets in {str(root)!r}")
    name = set_name or _preferred_set(sets)
    return name, {str(Site.parse(site)): to_model(d, model) for site, d in sets[name].items()}


def _preferred_set(sets) -> str:
    """``sae-sparse`` if present, else the first SAE set, else the first set (sorted)."""
    names = sorted(sets)
    if "sae-sparse" in names:
        return "sae-sparse"
    return next((name for name in names if name.startswith("sae")), names[0])


@dataclass
class ParensData:
    """Parenthesis documents as token ids with the positions that matter.

    Attributes:
        texts: the documents; ids ``[n, T]`` (BOS first, right-padded); lengths ``[n]``;
        closing ``[n, T]``: 1 where ")" is the grammatical next token;
        control ``[n, T]``: 1 at nouns and ")" at depth 0 (")" not grammatical).
    """

    texts: list[str]
    ids: torch.Tensor
    lengths: torch.Tensor
    closing: torch.Tensor
    control: torch.Tensor


def parens_data(model, n_texts: int = 12, *, seed: int = 0, min_closing: int = 1
                ) -> ParensData:
    """``n_texts`` held-out documents with at least ``min_closing`` ")"-predicting
    positions, tokenized for ``model``."""
    from featcircuits.tasks.parens import (
        closing_positions,
        generate_parens_texts,
        nonclosing_positions,
    )

    if n_texts < 1:
        raise ParameterError(f"n_texts must be >= 1, got {n_texts}")
    tokenizer = getattr(model.tokenizer, "tokenizer", model.tokenizer)
    texts, rows, closing, control = [], [], [], []
    drawn = generate_parens_texts(4 * n_texts + 8, seed=seed)
    for text in drawn:
        ids = tokenizer(text)["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        where = closing_positions(tokens)
        if len(where) < min_closing:
            continue
        texts.append(text)
        rows.append(ids)
        closing.append(where)
        control.append(nonclosing_positions(tokens))
        if len(texts) == n_texts:
            break
    lengths = torch.tensor([len(r) for r in rows])
    width = int(lengths.max())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    closing_mask = torch.zeros(len(rows), width)
    control_mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        closing_mask[i, closing[i]] = 1.0
        control_mask[i, control[i]] = 1.0
    return ParensData(texts, ids, lengths, closing_mask, control_mask)


# ------------------------------------------------------------------ feature ranking
def unembedding_readout(model, activations: torch.Tensor, mask: torch.Tensor,
                        token: int, minus: int | None = None) -> torch.Tensor:
    """``[d_model]`` vector ``r`` such that adding ``a·v`` to the last residual stream at the
    masked positions raises ``logit[token] − logit[minus]`` by about ``a·(r·v)``.

    The final norm is linearised at those positions: for LayerNorm, ``v`` is centred and
    divided by the mean standard deviation of the residual there (RMS for RMSNorm), then
    scaled by the norm's weight; ``r`` is that composed with the unembedding rows.
    Computed in float32 on the activations' device.
    """
    plain = underlying_module(model)
    arch = architecture(model)
    norm = plain.get_submodule(arch.final_norm)
    device = activations.device
    unembed = plain.get_output_embeddings().weight.detach()
    rows = [unembed[token], unembed[minus] if minus is not None else unembed.mean(0)]
    direction = (rows[0].float() - rows[1].float()).to(device)
    weight = getattr(norm, "weight", None)
    weight = (torch.ones_like(direction) if weight is None
              else weight.detach().float().to(device))
    eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-5)))
    x = activations[mask.to(device).bool()].float()
    centred = hasattr(norm, "bias") and norm.bias is not None
    if centred:
        scale = (x.var(-1, unbiased=False) + eps).sqrt().mean()
    else:
        scale = (x.pow(2).mean(-1) + eps).sqrt().mean()
    readout = weight * direction / scale
    if centred:
        readout = readout - readout.mean()  # r·v = r·(v − mean(v)) for the centred r
    return readout


def rank_parens_features(model, dictionary: Dictionary, activations: torch.Tensor,
                         data: ParensData, *, token: str = ")", minus: str = ".") -> pd.DataFrame:
    """Rank the features of ``dictionary`` (at the last layer) as drivers of ``token``.

    Columns: ``feature``, ``act_closing`` / ``act_control`` (mean activation at ")"
    positions / control positions), ``selectivity`` (their difference), ``logit_per_unit``
    (decoder direction through the final norm and unembedding: ``logit[token] −
    logit[minus]`` per unit of activation), ``contribution`` (``act_closing ×
    logit_per_unit``), sorted by contribution.
    """
    tokenizer = getattr(model.tokenizer, "tokenizer", model.tokenizer)
    token_id = tokenizer.convert_tokens_to_ids(token)
    minus_id = tokenizer.convert_tokens_to_ids(minus) if minus is not None else None
    with torch.no_grad():
        features = dictionary.encode(activations).float()  # float32 sums, on its device
        closing_mask = data.closing.to(features.device)
        control_mask = data.control.to(features.device)
        closing = (features * closing_mask[..., None]).sum((0, 1)) / closing_mask.sum()
        control = (features * control_mask[..., None]).sum((0, 1)) / control_mask.sum().clamp(
            min=1)
        readout = unembedding_readout(model, activations, data.closing, token_id, minus_id)
        per_unit = dictionary.directions.float() @ readout.to(dictionary.directions.device)
        closing, control, per_unit = closing.cpu(), control.cpu(), per_unit.cpu()
    frame = pd.DataFrame({
        "feature": range(dictionary.n_features), "act_closing": closing.numpy(),
        "act_control": control.numpy(), "selectivity": (closing - control).numpy(),
        "logit_per_unit": per_unit.numpy(), "contribution": (closing * per_unit).numpy()})
    return frame.sort_values("contribution", ascending=False, kind="stable").reset_index(
        drop=True)


# ------------------------------------------------------------------------ outputs
def circuit_table(graph: nx.DiGraph, max_rows: int | None = 40) -> pd.DataFrame:
    """Edges of a circuit as a readable table: source and target (with labels), weight;
    largest ``|weight|`` first."""
    edges = edges_frame(graph)
    labels = {node: graph.nodes[node].get("label") or "" for node in graph.nodes}
    table = pd.DataFrame({
        "source": edges["source"],
        "source_label": edges["source"].map(labels),
        "target": edges["target"],
        "target_label": edges["target"].map(labels),
        "weight": edges["weight"],
    })
    return table if max_rows is None else table.head(max_rows)


def save_circuit(graph: nx.DiGraph, out: str | os.PathLike[str], name: str = "circuit", *,
                 curve: pd.DataFrame | None = None, title: str | None = None) -> dict[str, Path]:
    """Write ``<name>.json``, ``<name>_nodes.csv``/``_edges.csv``, ``<name>.png`` (diagram)
    and, if given, the faithfulness curve as CSV, under ``out``."""
    folder = Path(out)
    paths = {"json": write_json(graph, folder / f"{name}.json")}
    paths["nodes"], paths["edges"] = write_tables(graph, folder / f"{name}_")
    paths["png"] = draw_circuit(graph, folder / f"{name}.png", title=title)
    if curve is not None:
        from featcircuits.files import atomic_path

        with atomic_path(folder / f"{name}_faithfulness.csv") as tmp:
            curve.to_csv(tmp, index=False, float_format="%.6g")
        paths["curve"] = folder / f"{name}_faithfulness.csv"
    return paths


def draw_circuit(graph: nx.DiGraph, path: str | os.PathLike[str], *, title: str | None = None
                 ) -> Path:
    """A diagram of the circuit: ``featcircuits.render.render_circuit`` when available, else
    a plain layered matplotlib drawing."""
    try:
        from featcircuits.render import render_circuit
    except ImportError:
        render_circuit = None
    if render_circuit is not None:
        render_circuit(graph, path=path, title=title)
        return Path(path)
    return _plain_diagram(graph, path, title=title)


def _plain_diagram(graph: nx.DiGraph, path, *, title: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from featcircuits.files import atomic_path

    rows: dict[int, list[str]] = {}
    for node, layer in graph.nodes(data="layer"):
        rows.setdefault(int(layer), []).append(node)
    position = {}
    for layer, nodes in rows.items():
        for i, node in enumerate(sorted(nodes)):
            position[node] = (i - (len(nodes) - 1) / 2, layer)
    width = max(len(nodes) for nodes in rows.values())
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * width), 1.4 * len(rows) + 1))
    weights = [abs(w) for _, _, w in graph.edges(data="weight")] or [1.0]
    top = max(weights)
    for u, v, w in graph.edges(data="weight"):
        (x0, y0), (x1, y1) = position[u], position[v]
        ax.plot([x0, x1], [y0, y1], color="tab:blue" if w > 0 else "tab:red",
                lw=0.5 + 3 * abs(w) / top, alpha=0.7, zorder=1)
    for node, (x, y) in position.items():
        ax.scatter([x], [y], s=120, color="white", edgecolor="black", zorder=2)
        ax.annotate(graph.nodes[node].get("label") or node.split("/")[-1], (x, y),
                    textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax.set_yticks(sorted(rows))
    ax.set_title(title or f"Circuit for {graph.graph.get('target', '')}")
    ax.set_xticks([])
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or "png", dpi=130,
                    bbox_inches="tight")
    plt.close(fig)
    return Path(path)


# -------------------------------------------------------------------- experiments
@dataclass
class CircuitReport:
    """What the circuit experiments return (and print)."""

    graph: nx.DiGraph
    faithfulness: dict
    edge_faithfulness: dict
    curve: pd.DataFrame
    features: pd.DataFrame | None = None
    paths: dict = field(default_factory=dict)
    seconds: float = 0.0


def build_circuit(runs: CircuitRuns, method: str, *, tau: float, ablation: str,
                  positional: bool = False, relative_tau: bool = True,
                  max_nodes: int | None = None, max_verify: int | None = None) -> nx.DiGraph:
    """One circuit by ``method`` (``acdc``, ``attribution`` or ``hybrid``) on cached runs
    (``max_nodes`` per site applies to the attribution-based methods)."""
    common = {"tau": tau, "ablation": ablation, "positional": positional,
              "relative_tau": relative_tau}
    if method == "acdc":
        return acdc_circuit(runs, **common)
    if method == "attribution":
        return attribution_circuit(runs, max_nodes=max_nodes, **common)
    if method == "hybrid":
        return hybrid_circuit(runs, max_nodes=max_nodes, max_verify=max_verify, **common)
    raise ParameterError(f"unknown method {method!r}", hint=f"use one of {METHODS}")


def parens_setup(model_name: str = "tiny", *, set_name: str | None = None,
                 dictionaries_folder=None, n_texts: int = 12, n_targets: int = 2,
                 seed: int = 0, max_rows: int = 256, progress: bool = True,
                 model=None, max_memory: int | str | None = None
                 ) -> tuple[CircuitRuns, pd.DataFrame, ParensData]:
    """Load the model and dictionaries, rank the last-layer ")" features, and cache the
    runs with the top ``n_targets`` as targets (mean activation over ")" positions)."""
    model = model if model is not None else load_model(model_name)
    _, dictionaries = default_dictionaries(model_name, model, set_name, dictionaries_folder)
    last = f"resid_out.{num_layers(model) - 1}"
    if last not in dictionaries:
        raise DictionaryLoadError(f"the dictionary set has no {last}",
                                  hint=f"it has {sorted(dictionaries)}")
    data = parens_data(model, n_texts, seed=seed)
    with torch.no_grad(), trace(model, data.ids.to(model_device(model))):
        last_activation = Site.parse(last).read(model).save()
    ranking = rank_parens_features(model, dictionaries[last], last_activation, data)
    chosen = ranking["feature"].head(n_targets).tolist()
    sites = {"embed": TokenBasis.from_model(model)}
    sites.update({site: d for site, d in dictionaries.items()
                  if Site.parse(site).depth <= Site.parse(last).depth})
    targets = [FeatureTarget(last, int(f), positions=data.closing, reduce="mean")
               for f in chosen]
    runs = CircuitRuns(model, sites, _rows(data), targets=targets,
                       settings=RunSettings(max_memory=max_memory, max_rows=max_rows, seed=seed,
                                            progress=progress))
    return runs, ranking, data


def _rows(data: ParensData) -> list[list[int]]:
    return [data.ids[i, :int(length)].tolist() for i, length in enumerate(data.lengths)]


def run_parens_circuit(args: argparse.Namespace) -> CircuitReport:
    """The closing-parenthesis circuit; prints tables and writes under ``args.out``."""
    start, progress, max_memory = _start_run(args, PARENS_DEFAULTS)
    runs, ranking, data = parens_setup(args.model, set_name=args.set,
                                       dictionaries_folder=args.dictionaries,
                                       n_texts=args.n_texts, n_targets=args.n_targets,
                                       seed=args.seed, max_rows=args.batch_size,
                                       progress=progress, model=model_from_args(args),
                                       max_memory=max_memory)
    print(f"{len(data.texts)} documents, {int(data.closing.sum())} positions where ')' is "
          f"forced, {int(data.control.sum())} control positions")
    print("\nlast-layer features that drive ')' (top 8 by activation at ')' positions × "
          "logit(')') − logit('.') per unit):")
    print(ranking.head(8).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    by_direction = ranking.sort_values("logit_per_unit", ascending=False)["feature"].head(8)
    by_activation = ranking.sort_values("selectivity", ascending=False)["feature"].head(8)
    print(f"top by decoder direction: {by_direction.tolist()}; top by selectivity: "
          f"{by_activation.tolist()}")
    args.ablation = args.ablation or "mean"
    graph = build_circuit(runs, args.method, tau=args.tau, ablation=args.ablation,
                          relative_tau=not args.absolute, max_nodes=args.max_nodes)
    return _report(runs, graph, args, start, ranking, "parens",
                   "Circuit for the ')' features (mean over ')'-predicting positions)")


def run_ioi_circuit(args: argparse.Namespace) -> CircuitReport:
    """The IOI logit-difference circuit; prints tables and writes under ``args.out``."""
    from featcircuits.experiments.ioi import load_ioi_prompts

    start, progress, max_memory = _start_run(args, IOI_DEFAULTS)
    model = model_from_args(args)
    _, dictionaries = default_dictionaries(args.model, model, args.set, args.dictionaries)
    prompts = load_ioi_prompts(args.prompts, args.corruption, 10**9, args.seed)
    if args.template != "all" and "template" in prompts.columns:
        template = args.template
        if template == "largest":
            template = prompts["template"].value_counts().index[0]
        prompts = prompts[prompts["template"] == template].reset_index(drop=True)
        if prompts.empty:
            raise ParameterError(f"no prompts with template {template!r}")
    prompts = prompts.head(args.n_prompts)
    sites = {"embed": TokenBasis.from_model(model), **dictionaries}
    runs = CircuitRuns(model, sites, prompts, targets="logit_diff",
                       settings=RunSettings(max_memory=max_memory, max_rows=args.batch_size,
                                            seed=args.seed, progress=progress))
    lengths = set(runs.lengths.tolist())
    positional = args.positional and len(lengths) == 1
    print(f"{len(prompts)} prompt pairs; logit diff clean {runs.metric_value:.3f}")
    args.ablation = args.ablation or ("position_mean" if positional else "mean")
    graph = build_circuit(runs, args.method, tau=args.tau, ablation=args.ablation,
                          positional=positional, relative_tau=not args.absolute,
                          max_nodes=args.max_nodes)
    return _report(runs, graph, args, start, None, "ioi",
                   "IOI circuit (logit difference IO − S)")


def _start_run(args: argparse.Namespace, defaults: dict) -> tuple[float, bool, int]:
    """Checks and settings both circuit examples start with, before any long work: the
    output folder is writable and the memory budget parses; task defaults fill unset flags;
    torch is seeded. Returns ``(start time, progress, max_memory in bytes)``."""
    from featcircuits.files import ensure_writable_dir

    ensure_writable_dir(args.out)
    start = time.perf_counter()
    _fill_defaults(args, defaults)
    max_memory = parse_memory(getattr(args, "max_memory", None))
    torch.manual_seed(args.seed)
    return start, not args.quiet, max_memory


def _fill_defaults(args: argparse.Namespace, defaults: dict) -> None:
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _report(runs: CircuitRuns, graph: nx.DiGraph, args, start: float,
            ranking: pd.DataFrame | None, name: str, title: str) -> CircuitReport:
    kind = "relative" if graph.graph.get("relative_tau") else "absolute"
    print(f"\n{args.method} circuit ({kind} tau = {graph.graph['tau']:.4g}, ablation "
          f"{args.ablation}): {graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges")
    print(circuit_table(graph, 25).to_string(index=False, float_format=lambda v: f"{v:+.4f}"))
    ablation = args.ablation
    scores = faithfulness(runs, graph, ablation=ablation)
    edge_scores = faithfulness(runs, graph, ablation=ablation, edges=True) if args.edges else {}
    curve = faithfulness_curve(runs, graph, by="nodes", ablation=ablation)
    print(f"\nnode set, {ablation} ablation outside it: faithfulness "
          f"{scores['faithfulness']:.3f}, "
          f"completeness {scores['completeness']:.3f}  (m(M) = {scores['m_full']:.4f}, "
          f"m(∅) = {scores['m_empty']:.4f}, m(C) = {scores['m_circuit']:.4f}, m(M∖C) = "
          f"{scores['m_complement']:.4f})")
    if edge_scores:
        print(f"edge set (path patching): faithfulness {edge_scores['faithfulness']:.3f}, "
              f"completeness {edge_scores['completeness']:.3f}  (m(C) = "
              f"{edge_scores['m_circuit']:.4f}, m(M∖C) = {edge_scores['m_complement']:.4f})")
    print("\nfaithfulness of the top-k nodes (by |effect|), every edge between them kept:")
    print(curve.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    graph.graph["faithfulness_nodes"] = float(scores["faithfulness"])
    graph.graph["completeness_nodes"] = float(scores["completeness"])
    if edge_scores:
        graph.graph["faithfulness_edges"] = float(edge_scores["faithfulness"])
        graph.graph["completeness_edges"] = float(edge_scores["completeness"])
    paths = save_circuit(graph, args.out, name, curve=curve, title=title)
    if ranking is not None:
        from featcircuits.files import atomic_path

        with atomic_path(Path(args.out) / f"{name}_features.csv") as tmp:
            ranking.to_csv(tmp, index=False, float_format="%.6g")
        paths["features"] = Path(args.out) / f"{name}_features.csv"
    seconds = time.perf_counter() - start
    summary = "\n".join(f"{key}: {Path(path).name}" for key, path in paths.items())
    edge_line = (f"edges: faithfulness {edge_scores['faithfulness']:.6f}, completeness "
                 f"{edge_scores['completeness']:.6f}\n" if edge_scores else "")
    atomic_write_text(Path(args.out) / f"{name}_summary.txt",
                      f"{title}\nmethod {args.method}, tau {graph.graph['tau']:.6g}\n"
                      f"nodes: faithfulness {scores['faithfulness']:.6f}, completeness "
                      f"{scores['completeness']:.6f}\n{edge_line}"
                      f"{graph.number_of_nodes()} nodes, {graph.number_of_edges()} edges\n"
                      f"{summary}\n")  # no timings or absolute paths: same seed, same bytes
    print(f"\nwrote {', '.join(str(p) for p in paths.values())} ({seconds:.1f} s)")
    return CircuitReport(graph, scores, edge_scores, curve, ranking, paths, seconds)


PARENS_DEFAULTS = {"method": "acdc", "tau": 0.03}
IOI_DEFAULTS = {"method": "hybrid", "tau": 0.01}


def add_circuit_arguments(parser: argparse.ArgumentParser, *, out: str,
                          method: str | None = None, tau: float | None = None,
                          max_nodes: int | None = None) -> None:
    """Flags shared by the circuit examples."""
    from featcircuits.cli.flags import add_model_flags

    add_model_flags(parser)
    parser.add_argument("--dictionaries", default=None,
                        help="folder of dictionary sets <set>/<site>/ (default: the model's)")
    parser.add_argument("--set", default=None, help="dictionary set (default: first found)")
    parser.add_argument("--method", choices=METHODS, default=method,
                        help="circuit discovery method (default: acdc for parens, hybrid for "
                        "ioi)" if method is None else f"circuit discovery method (default "
                        f"{method})")
    parser.add_argument("--tau", type=float, default=tau,
                        help="edge threshold, as a fraction of the downstream node's typical "
                        "magnitude (default: 0.03 for parens, 0.01 for ioi)" if tau is None
                        else f"edge threshold, relative (default {tau})")
    parser.add_argument("--absolute", action="store_true",
                        help="--tau is an absolute threshold in the downstream node's units")
    parser.add_argument("--ablation", choices=["zero", "mean", "position_mean", "resample"],
                        default=None, help="ablation for discovery and faithfulness (default: "
                        "position_mean for positional circuits, else mean)")
    parser.add_argument("--max-nodes", type=int, default=max_nodes,
                        help="attribution/hybrid: most nodes kept per site (default: no cap)")
    parser.add_argument("--out", default=out, help=f"output folder (default {out})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256,
                        help="most sequences per forward pass (default 256)")
    parser.add_argument("--edges", action="store_true",
                        help="also measure the edge set's faithfulness (path patching; slower)")
    if "--quiet" not in parser._option_string_actions:  # the CLI adds its own
        parser.add_argument("--quiet", action="store_true", help="no progress bars")


# ---------------------------------------------------------------------- benchmark
def candidate_set(runs: CircuitRuns, per_site: int, *, ablation: str = "mean") -> dict:
    """``{site: feature ids}``: at each upstream site the ``per_site`` active features with
    the largest attributed ``|effect|`` (one backward pass; error nodes always included)."""
    from featcircuits.circuits import ERROR, node_attributions

    effects = node_attributions(runs, ablation=ablation)
    chosen: dict[str, list[int]] = {}
    for (site, feature, _), value in sorted(effects.items(), key=lambda item: -abs(item[1])):
        if feature == ERROR:
            continue
        if len(chosen.setdefault(site, [])) < per_site:
            chosen[site].append(int(feature))
    return chosen


def compare_methods(runs: CircuitRuns, *, tau: float, candidates: dict | None,
                    ablation: str = "mean",
                    relative_tau: bool = True, max_nodes: int | None = None, top: int = 50,
                    hybrid_screen: float | None = None, hybrid_node_tau: float | None = None,
                    repeats: int = 1) -> dict:
    """Exact ACDC, attribution and hybrid on the same cached runs and candidate set.

    Returns wall times (best of ``repeats``, cached clean run excluded), graph sizes, the
    Spearman correlation of edge weights (exact vs attribution) over every candidate pair
    and over the exact circuit's edges, and the overlap of the hybrid's and the exact
    circuit's top-``top`` edges.
    """
    from featcircuits.circuits.compare import all_edge_weights
    from featcircuits.graph.ops import edge_list

    rows: dict[str, int] = {}

    def timed(function, name):
        best, result = float("inf"), None
        for _ in range(repeats):
            before = runs.rows_run
            start = time.perf_counter()
            result = function()
            best = min(best, time.perf_counter() - start)
            rows[name] = runs.rows_run - before
        return best, result

    common = {"tau": tau, "ablation": ablation, "candidates": candidates,
              "relative_tau": relative_tau}
    t_exact, exact = timed(lambda: acdc_circuit(runs, node_effects=False, **common), "exact")
    t_attr, attr = timed(lambda: attribution_circuit(runs, max_nodes=max_nodes, **common),
                         "attribution")
    screen = {} if hybrid_screen is None else {"screen": hybrid_screen}  # None: the default
    t_hybrid, hybrid = timed(lambda: hybrid_circuit(runs, max_nodes=max_nodes,
                                                    node_tau=hybrid_node_tau, **screen,
                                                    **common),
                             "hybrid")
    weights = all_edge_weights(runs, ablation=ablation, candidates=candidates)
    pairs = pd.DataFrame({"exact": pd.Series(weights["exact"]),
                          "attribution": pd.Series(weights["attribution"])}).dropna()
    in_circuit = [(u, v) for u, v in exact.edges]
    keyed = {(_node_text(u), _node_text(v)): (u, v) for u, v in weights["exact"]}
    circuit_pairs = pairs.loc[[keyed[e] for e in in_circuit if e in keyed]] if in_circuit \
        else pairs.iloc[:0]
    k = min(top, exact.number_of_edges())
    exact_top = {(u, v) for u, v, _ in edge_list(exact)[:k]}
    hybrid_top = {(u, v) for u, v, _ in edge_list(hybrid)[:k]}
    return {
        "seconds_exact": t_exact, "seconds_attribution": t_attr, "seconds_hybrid": t_hybrid,
        "rows_exact": rows["exact"], "rows_attribution": rows["attribution"],
        "rows_hybrid": rows["hybrid"],
        "speedup_attribution": t_exact / t_attr, "speedup_hybrid": t_exact / t_hybrid,
        "edges_exact": exact.number_of_edges(), "edges_attribution": attr.number_of_edges(),
        "edges_hybrid": hybrid.number_of_edges(),
        "spearman_all_pairs": float(pairs["exact"].corr(pairs["attribution"],
                                                        method="spearman")),
        "n_pairs": len(pairs),
        "spearman_exact_edges": float(circuit_pairs["exact"].corr(
            circuit_pairs["attribution"], method="spearman")) if len(circuit_pairs) > 2
        else float("nan"),
        "top_k": k, "hybrid_top_agreement": len(exact_top & hybrid_top) / k if k else
        float("nan"),
        "hybrid_verified": hybrid.graph["verified_edges"],
        "hybrid_wrong_sign": hybrid.graph["attribution_wrong_sign"],
        "hybrid_wrong_threshold": hybrid.graph["attribution_wrong_threshold"],
        "exact_graph": exact, "attribution_graph": attr, "hybrid_graph": hybrid,
    }


def _node_text(node) -> str:
    from featcircuits.circuits.nodes import node_id

    return node if isinstance(node, str) else node_id(node)
