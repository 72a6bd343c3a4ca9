"""Tiling the prefix: run the layers before a site once per prompt, repeat rows there.

When every row of a batched pass is a copy of one of ``n`` prompts up to some site (the
copies differ only from that site on), the layers before it can run on the ``n`` prompts
alone and the activation be gathered into the rows at the site. That only works if the
model computes nothing batch-shaped before block 0 that later blocks use: a model that
materializes its attention mask (eager attention, which Gemma-2 always uses; or any model
loaded with ``attn_implementation="eager"``) builds it as ``[n, 1, T, T]`` before block 0,
and the blocks after the site then fail with a batch-size mismatch.

``PrefixTiling`` decides up front from the model's attention implementation, and if a
tiled pass still fails with exactly that mismatch it falls back to full batches for the
rest of the run. Nothing else is caught: ``torch.OutOfMemoryError`` (a ``RuntimeError``)
and every other error propagate, so an out-of-memory tiled pass is never retried on the
untiled path, which needs more memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import torch

__all__ = ["PrefixTiling", "is_tiling_mismatch", "tiling_possible"]

T = TypeVar("T")

#: Attention implementations that build a per-batch mask before the first block.
MASK_BUILDING_ATTENTION = ("eager",)

_MISMATCH = (
    re.compile(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) "
               r"at non-singleton dimension 0"),
    re.compile(r"expanded size of the tensor \((\d+)\) must match the existing size "
               r"\((\d+)\) at non-singleton dimension 0"),
)


def tiling_possible(model) -> bool:
    """Whether ``model`` can run a prefix on ``n`` prompts and tile it mid-forward.

    False for attention implementations that build a per-batch mask before block 0
    (``MASK_BUILDING_ATTENTION``); True otherwise (a tiled pass may still fall back, see
    ``PrefixTiling``).
    """
    module = getattr(model, "_module", model)
    config = getattr(module, "config", None)
    implementation = getattr(config, "_attn_implementation", None)
    return implementation not in MASK_BUILDING_ATTENTION


def is_tiling_mismatch(error: BaseException, *, rows: int, batch: int) -> bool:
    """True only for the error tiling causes: a ``RuntimeError`` (never an
    ``OutOfMemoryError``) reporting a dimension-0 size mismatch between ``rows`` (the tiled
    batch) and ``batch`` (the prompts the prefix ran on)."""
    if isinstance(error, torch.OutOfMemoryError) or not isinstance(error, RuntimeError):
        return False
    message = str(error)
    for pattern in _MISMATCH:
        match = pattern.search(message)
        if match is not None and {int(match.group(1)), int(match.group(2))} == {rows, batch}:
            return True
    return False


class PrefixTiling:
    """Whether a run tiles its prefix; falls back for good on the first tiling mismatch.

    Args:
        model: the nnsight ``LanguageModel``.
        enabled: the client's own condition (e.g. no transcoder output sites).

    Attributes:
        possible: tiled passes are tried (``enabled``, ``tiling_possible(model)``, and no
            mismatch seen yet).
    """

    def __init__(self, model, enabled: bool = True) -> None:
        self.possible = bool(enabled) and tiling_possible(model)

    def run(self, tiled: Callable[[], T], untiled: Callable[[], T], *, rows: int,
            batch: int) -> T:
        """``tiled()`` if tiling is possible, else (or after a tiling mismatch) ``untiled()``.

        Args:
            rows: sequences the tiled pass produces at the site.
            batch: sequences the tiled pass runs before the site.
        """
        if self.possible:
            try:
                return tiled()
            except RuntimeError as error:
                if not is_tiling_mismatch(error, rows=rows, batch=batch):
                    raise
                self.possible = False
        return untiled()
