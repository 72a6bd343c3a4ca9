"""``torch_threads``: a CPU thread count for one block of work, restored afterwards.

torch's intra-op thread count is process-wide, so library code never sets it on its own:
functions that benefit from a particular count take it as an argument (``fit_ica``'s
``small_ops_threads``, ``LMTrainConfig.threads``) and apply it only around their own work
with this context manager, which restores the previous count in a ``finally`` (also on
errors and ``KeyboardInterrupt``). Setting the count costs under a microsecond.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator

import torch

from featcircuits.errors import ParameterError

__all__ = ["check_threads", "torch_threads"]


def check_threads(threads: int | None, name: str = "threads") -> int | None:
    """``threads`` as an int >= 1 (or ``None``); ``ParameterError`` naming ``name`` else."""
    if threads is None:
        return None
    try:
        value = operator.index(threads)
    except TypeError:
        value = 0
    if isinstance(threads, bool) or value < 1:
        raise ParameterError(f"{name} must be an integer >= 1 or None, got {threads!r}",
                             hint=f"e.g. {name}=1")
    return value


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch CPU threads (``None``: leave the count alone),
    then restore the previous count."""
    previous = torch.get_num_threads()
    if threads is None or threads == previous:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
