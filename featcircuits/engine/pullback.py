"""Edge gradients by one forward pass and batched vector-Jacobian products.

Attribution edges into the nodes at one level need, for every downstream node ``d``, the
gradient of its value with respect to each upstream site (every dictionary site in between
detached). Running one copy of the data per downstream node repeats the same forward pass
``D`` times. Here the pass runs once on the ``n`` prompts (the direct upstream sites
detached, a zero delta added where gradients are read), the level's activation is saved with
its graph, each downstream node's gradient at the level (``∂d/∂x_level``, through the
level's dictionary alone) is computed on a detached copy, and those ``[D, n, T, d]``
cotangents are pulled back to the deltas at once with ``torch.autograd.grad(...,
is_grads_batched=True)`` (a ``vmap`` over the backward pass). The values are those of the
per-copy passes; what is saved is ``D − 1`` forward passes and, for a level whose direct
upstream sites reach it only through the residual additions (``resid_out``), the whole
transformer block: its backward is a sum.

Used for feature levels (output targets keep one copy per target) in runs without
cross-layer transcoders (whose node values subtract earlier layers' writes inside the
trace). ``pullback_possible`` says whether a level qualifies.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence

import torch

from featcircuits.engine.circuit_trace import NodeRead, SiteOps, _own_values, repeat_rows
from featcircuits.engine.runs import CircuitRuns

__all__ = ["PullbackUnsupported", "level_pullbacks", "pullback_possible"]


class PullbackUnsupported(RuntimeError):
    """``vmap`` cannot batch the backward pass of some operation of this model (the caller
    then runs one copy of the data per downstream node instead)."""


def pullback_possible(runs: CircuitRuns, level: str | None, grad_sites: Sequence[str]) -> bool:
    """Whether ``level_pullbacks`` computes the edges into ``level``: a dictionary site (not
    the output level) in a run without cross-layer transcoders."""
    if level is None or runs.earlier:
        return False
    return not any(runs.dictionaries[s].later_writes for s in [*grad_sites, level])


def level_pullbacks(runs: CircuitRuns, level: str, reachable: Sequence[str],
                    grad_sites: Sequence[str], chunks: int,
                    readout: Callable[[int], NodeRead]
                    ) -> Iterator[dict[str, torch.Tensor | None]]:
    """Per chunk ``k < chunks`` of downstream nodes, whose ``readout(k)`` has ``R = copies ·
    n`` rows each reading its own node (``NodeRead.own_feature``): ``{site: [copies, n, T, d] gradient of the
    copy's own node value w.r.t. the site}`` for ``grad_sites`` (``None`` where no path
    leads to the level), every site of ``reachable`` detached.

    Raises ``PullbackUnsupported`` before yielding anything when ``vmap`` cannot batch the
    backward pass (no partial result)."""
    n, width = runs.n, runs.width
    dictionary = runs.dictionaries[level]
    deltas = {s: torch.zeros(n, width, runs.dictionaries[s].d_model, device=runs.device,
                             requires_grad=True) for s in grad_sites}
    ops = {s: SiteOps(delta=deltas.get(s), detach=True) for s in reachable}
    ops[level] = SiteOps(save_activation=True)
    with torch.enable_grad():
        result = runs.trace(ops, 1, outputs=False)
    x = result.activations[level]                         # [n, T, d] with its graph
    x_in = result.inputs.get(level)                       # a transcoder's input, or None
    # the saved values the deltas reach (none: no upstream site has a path to the level)
    outputs = [value for value in ([x] if x_in is None else [x, x_in]) if value.requires_grad]
    if not outputs:
        for _ in range(chunks):
            yield dict.fromkeys(grad_sites)
        return
    for index in range(chunks):
        if index:
            runs.freed.release()   # the previous chunks' backward (docs/memory.md)
        read = readout(index)
        copies = read.own_feature.shape[0] // n
        leaf_x = repeat_rows(x.detach(), copies).requires_grad_(x.requires_grad)
        leaf_in = (leaf_x if x_in is None else
                   repeat_rows(x_in.detach(), copies).requires_grad_(x_in.requires_grad))
        leaves = [leaf for leaf, value in ((leaf_x, x), (leaf_in, x_in))
                  if value is not None and value.requires_grad]
        with torch.enable_grad():
            own = _own_values(read, leaf_x, leaf_in, dictionary, None, None)
            cotangents = (torch.autograd.grad(own.sum(), leaves, allow_unused=True)
                          if own.requires_grad else [None] * len(leaves))
            cotangents = [torch.zeros_like(leaf) if c is None else c
                          for leaf, c in zip(leaves, cotangents)]
            batched = [c.reshape(copies, *value.shape) for c, value in zip(cotangents, outputs)]
            grads = _batched_grad(outputs, [deltas[s] for s in grad_sites], batched,
                                  retain=index < chunks - 1, first=index == 0)
        yield {s: grad for s, grad in zip(grad_sites, grads)}


def _batched_grad(outputs, inputs, cotangents, *, retain: bool, first: bool):
    """``torch.autograd.grad`` with ``is_grads_batched``; a ``vmap`` failure on the first
    chunk becomes ``PullbackUnsupported`` (later chunks run the same operations)."""
    try:
        with warnings.catch_warnings():
            # ops without a batching rule fall back to a loop inside vmap: still exact
            warnings.filterwarnings("ignore", message=".*performance drop.*")
            return torch.autograd.grad(outputs, inputs, grad_outputs=cotangents,
                                       is_grads_batched=True, retain_graph=retain,
                                       allow_unused=True)
    except RuntimeError as error:
        if first and not isinstance(error, torch.OutOfMemoryError) and (
                "vmap" in str(error) or "batch" in str(error).lower()):
            raise PullbackUnsupported(str(error)) from error
        raise
