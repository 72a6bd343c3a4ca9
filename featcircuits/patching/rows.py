"""Row bookkeeping of ``PatchingExperiment``'s patched forwards: which (feature set, prompt)
cells run together (``row_blocks``) and which of them are distinct rows (``unique_rows``).

A cell is one feature set patched on one prompt. Cells whose effective masks (the features
that actually change something on that prompt) are equal run once; cells that change
nothing keep the corrupted run and do not run at all.
"""

from __future__ import annotations

from collections.abc import Callable

import einops
import torch

from featcircuits.engine.memory import SCAN_ROWS, STREAM_SHARE, rows_per_chunk, split_rows

__all__ = ["row_blocks", "unique_rows"]


def row_blocks(masks: dict[str, torch.Tensor], n_prompts: int, max_memory: int
               ) -> list[tuple[slice, torch.Tensor]]:
    """``(set slice, prompt ids)`` blocks of every set on at most ``SCAN_ROWS`` prompts
    whose (set, prompt) masks over the used features (bool masks, int64 keys and the sort
    that deduplicates them, ~32 bytes per cell) fit in ``max_memory // STREAM_SHARE``
    (sets are split only when one prompt's do not fit). ``masks``: ``{site: [k, F]}``.
    Rows are deduplicated within a block; identical rows share their prompt, so blocks of
    whole prompts lose none."""
    k = next(iter(masks.values())).shape[0]
    used = sum(int(mask.any(0).sum()) for mask in masks.values())
    rows = rows_per_chunk(max_memory // STREAM_SHARE, 32 * max(1, used))
    per_prompts, per_sets = split_rows(n_prompts, k, rows)
    per_prompts = min(per_prompts, SCAN_ROWS)
    return [(slice(s, s + per_sets),
             torch.arange(p, min(p + per_prompts, n_prompts), device="cpu"))
            for p in range(0, n_prompts, per_prompts) for s in range(0, k, per_sets)]


def unique_rows(masks: dict[str, torch.Tensor], prompts: torch.Tensor, first_site: str,
                changes: Callable[[str], torch.Tensor]):
    """Distinct (prompt, effective feature mask) rows of ``k`` sets × ``n`` prompts.

    ``masks``: ``{site: [k, F]}``; only the prompts ``prompts [n]`` (ids) are considered.
    ``changes(first_site)`` is the ``[n_prompts, F]`` table of features whose source differs
    from the corrupted value (at the first site, upstream of everything, live activations
    are the corrupted ones, so other features are no-ops there). Returns ``None`` when
    nothing is patched, else ``prompt_index [R]``, ``{site: [R, u_site]}`` masks over the
    ``used`` feature ids ``{site: [u_site]}``, and ``inverse [k * n]`` mapping each (set,
    prompt) row to its unique row (``-1``: no-op).
    """
    k = next(iter(masks.values())).shape[0]
    n = len(prompts)
    used = {site: torch.nonzero(mask.any(0)).flatten() for site, mask in masks.items()}
    parts, kept = [], {}
    for site, ids in used.items():
        part = einops.repeat(masks[site][:, ids].bool(), "k f -> k n f", n=n)
        if site == first_site:
            part = part & changes(site)[prompts][:, ids][None]
            # features no-op on every prompt of the block leave the forward's columns,
            # so its width follows the block's prompts, not every prompt's (docs/memory.md)
            live = part.any(dim=(0, 1))
            ids, part = ids[live], part[..., live]
        if ids.numel() > 0:
            parts.append(part)
            kept[site] = ids
    used = kept
    if not used:
        return None
    effective = einops.rearrange(torch.cat(parts, dim=-1), "k n f -> (k n) f")
    prompt_of_row = einops.repeat(prompts, "n -> (k n)", k=k)
    nonempty = effective.any(-1)
    inverse = torch.full((k * n,), -1, dtype=torch.long, device="cpu")
    if not bool(nonempty.any()):
        return None
    keys = torch.cat([prompt_of_row[nonempty, None], effective[nonempty].long()], dim=-1)
    unique, unique_inverse = torch.unique(keys, dim=0, return_inverse=True)
    inverse[nonempty] = unique_inverse
    prompt_index = unique[:, 0]
    row_masks, offset = {}, 1
    for site, ids in used.items():
        row_masks[site] = unique[:, offset:offset + len(ids)].float()
        offset += len(ids)
    return prompt_index, row_masks, used, inverse
