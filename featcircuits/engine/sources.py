"""Where patched or ablated values come from: one vocabulary for every engine client.

A *source* names the values put into a run in place of the ones it computes:

========================  =================================================================
``clean``                 the clean run of the same prompt (patching)
``zero``                  zeros
``mean``                  the mean over every real token of the clean prompts
                          (position-independent, since prompts differ in length)
``position_mean``         the mean over the clean prompts at each position (for templated
                          prompts whose positions line up; the overall mean where no
                          prompt is that long)
``resample``              the clean run of another prompt of the same token length (a
                          seeded derangement within each length group, ``resample_index``)
``corrupt``               the corrupted prompt of each pair (prompt pairs only)
========================  =================================================================

``PatchingExperiment`` takes ``PATCHING_SOURCES`` (patching the corrupted run with its own
values would be a no-op); circuit runs take ``ABLATIONS`` (the clean run is what they
ablate). ``check_source`` validates either, with one message.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from featcircuits.errors import ParameterError
from featcircuits.tasks.prompts import PromptPairs

__all__ = [
    "ABLATIONS",
    "PATCHING_SOURCES",
    "SOURCES",
    "check_source",
    "position_mask",
    "resample_index",
]

#: Every source any engine client accepts (see the module docstring for their meanings).
SOURCES = ("clean", "zero", "mean", "position_mean", "resample", "corrupt")
#: Sources of ``PatchingExperiment`` (which patches the corrupted run).
PATCHING_SOURCES = ("clean", "zero", "mean", "resample")
#: Sources of circuit runs (which ablate the clean run).
ABLATIONS = ("zero", "mean", "position_mean", "resample", "corrupt")


def check_source(source: str, allowed: Sequence[str] = SOURCES, *, kind: str = "source",
                 where: str = "this run", extra: str = "") -> str:
    """Return ``source`` if it is one of ``allowed``; else raise ``ParameterError``.

    Args:
        source: the name given.
        allowed: the names this client accepts (a subset of ``SOURCES``).
        kind: what the caller calls it in messages (``"source"``, ``"ablation"``).
        where: the client, for names of ``SOURCES`` it does not take.
        extra: appended to the hint, e.g. ``" or a tensor [n_features]"``.
    """
    if isinstance(source, str) and source in allowed:
        return source
    if isinstance(source, str) and source in SOURCES:
        problem = f"{kind} {source!r} does not apply to {where}"
    else:
        problem = f"unknown {kind} {source!r}"
    raise ParameterError(problem, hint=f"use one of {', '.join(allowed)}{extra}")


def position_mask(prompts: PromptPairs, positions: str | Sequence[int]) -> torch.Tensor:
    """``[n, pos]`` float mask of the token positions to patch in each prompt.

    ``positions``: ``"all"`` (every real token), ``"final"`` (each prompt's answer
    position), or token indices (negative ones count from each prompt's end).
    """
    mask = prompts.token_mask.float()
    if isinstance(positions, str) and positions == "all":
        return mask
    if isinstance(positions, str) and positions == "final":
        out = torch.zeros_like(mask)
        out[torch.arange(len(prompts), device=mask.device), prompts.final_positions] = 1.0
        return out
    if isinstance(positions, str):
        raise ParameterError(f"unknown positions {positions!r}",
                             hint="use 'all', 'final' or a list of token indices")
    out = torch.zeros_like(mask)
    for row, length in enumerate(prompts.lengths.tolist()):
        for position in positions:
            index = position + length if position < 0 else position
            if not 0 <= index < length:
                raise ParameterError(f"position {position} is outside prompt {row} "
                                     f"(length {length})",
                                     hint="use indices within the shortest prompt")
            out[row, index] = 1.0
    return out


def resample_index(lengths: torch.Tensor, seed: int) -> torch.Tensor:
    """``[n]``: for each prompt, another prompt of the same length (itself if it has no peer).

    A seeded derangement within each group of equal ``lengths [n]``, drawn on the CPU so a
    seed gives the same choice on every device; returned on ``lengths``' device.
    """
    device, lengths = lengths.device, lengths.cpu()
    generator = torch.Generator().manual_seed(int(seed))
    index = torch.arange(len(lengths), device="cpu")
    for length in torch.unique(lengths):
        members = torch.nonzero(lengths == length).flatten()
        if len(members) > 1:
            shift = int(torch.randint(1, len(members), (1,), generator=generator, device="cpu"))
            order = members[torch.randperm(len(members), generator=generator, device="cpu")]
            index[order] = order.roll(shift)
    return index.to(device)
