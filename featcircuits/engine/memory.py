"""Memory budgets: parsing ``max_memory``, sizing chunks, reading the process's RSS.

Patch search and circuit discovery hold tensors of shape ``[rows, positions, n_features]``
(feature activations of every sequence in a forward pass), which for a 32k-feature
dictionary at 128 positions is 16 MiB per row. A budget in bytes bounds those working
tensors: ``rows_per_chunk(budget, bytes_per_row)`` rows run per forward pass, and the
caller splits its work (prompts, feature sets, copies of the data, features) into chunks of
that size. The budget bounds the *working* tensors, not the whole process: the model, the
dictionaries and the interpreter come on top.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

from featcircuits.errors import ParameterError

#: Upper end of the default budget.
DEFAULT_MAX_MEMORY = 4 * 1024**3
#: Share of the machine's RAM the default budget may take.
DEFAULT_RAM_SHARE = 0.25
#: Bytes of a float32.
FLOAT_BYTES = 4
#: Scans over prompts (the run cache's forwards, attribution gradients, encoding blocks,
#: row deduplication) take at most ``budget // STREAM_SHARE`` each: the tables they fill,
#: the cache and the allocator's slack are alive beside them, and peak memory then stays
#: flat as the number of prompts grows (docs/memory.md).
STREAM_SHARE = 4
#: Most prompts one step of a scan over prompts holds at once (run cache forwards,
#: attribution gradients, encoding blocks, row deduplication), however large the budget
#: share: the scan over 2,000 prompts then runs the same blocks as one over 100, and its
#: working set does not grow with the number of prompts (docs/memory.md).
SCAN_ROWS = 64
#: Most rows (sequences after tiling) one patched forward of ``PatchingExperiment`` holds,
#: however large the budget: glibc fragments the heap more the larger a forward's tensors,
#: and 2,000 prompts run 25 times as many forwards as 100, so large forwards made the peak
#: grow with the number of prompts (docs/memory.md). ``RunSettings.max_rows`` caps it too.
FORWARD_ROWS = 128

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "kib": 1024, "m": 1024**2, "mb": 1024**2,
          "mib": 1024**2, "g": 1024**3, "gb": 1024**3, "gib": 1024**3, "t": 1024**4,
          "tb": 1024**4, "tib": 1024**4}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def total_memory() -> int | None:
    """``MemTotal`` from ``/proc/meminfo`` in bytes (``None`` where unreadable)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def default_max_memory() -> int:
    """The default budget: 4 GiB, or 25% of the machine's RAM where that is less.

    Based on total, not free, RAM so that chunk sizes (and so float rounding) do not
    change with the machine's load from one run to the next.
    """
    total = total_memory()
    if total is None:
        return DEFAULT_MAX_MEMORY
    return max(64 * 1024**2, min(DEFAULT_MAX_MEMORY, int(total * DEFAULT_RAM_SHARE)))


def parse_memory(value: float | str | None) -> int:
    """A memory budget in bytes from ``4_000_000_000``, ``"4GB"``, ``"512 MiB"``, ``"1.5g"``.

    Units are binary (``KB`` = ``KiB`` = 1024 bytes). ``None`` or ``"auto"`` gives
    ``default_max_memory()`` (4 GiB, less on machines with under 16 GiB of RAM). Raises
    ``ParameterError`` on anything else, zero or negative values, or budgets under 1 MiB.
    """
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return default_max_memory()
    if isinstance(value, bool):
        raise ParameterError(f"max_memory must be a size, got {value!r}",
                             hint="pass bytes (an int) or a string like '2GB' or '512MB'")
    if isinstance(value, (int, float)):
        number, unit = float(value), ""
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None or match.group(2).lower() not in _UNITS:
            raise ParameterError(f"cannot read max_memory {value!r}",
                                 hint="use bytes or a number with a unit: '2GB', '512MB', "
                                 "'64KiB'; or 'auto'")
        number, unit = float(match.group(1)), match.group(2).lower()
    else:
        raise ParameterError(f"max_memory must be a size, got {type(value).__name__} {value!r}",
                             hint="pass bytes (an int) or a string like '2GB'")
    if not math.isfinite(number):
        raise ParameterError(f"max_memory must be finite, got {value!r}")
    size = int(number * _UNITS[unit])
    if size < 1024**2:
        raise ParameterError(f"max_memory {value!r} is under 1 MiB",
                             hint="pass at least '1MB'; the default is 4GB (or 25% of RAM "
                             "if less)")
    return size


def rows_per_chunk(budget: int, bytes_per_row: int) -> int:
    """How many rows of ``bytes_per_row`` fit in ``budget`` (at least 1)."""
    return max(1, int(budget) // max(1, int(bytes_per_row)))


def scan_rows(budget: int, bytes_per_row: int) -> int:
    """Prompts per block of a scan over prompts: ``min(SCAN_ROWS, rows_per_chunk(budget //
    STREAM_SHARE, bytes_per_row))`` (at least 1). ``budget`` is the whole working budget."""
    return min(SCAN_ROWS, rows_per_chunk(int(budget) // STREAM_SHARE, bytes_per_row))


def bytes_per_row(positions: int, *, vocab: int, features: Iterable[tuple[int, int]],
                  d_models: Iterable[int]) -> int:
    """Estimated working memory of one sequence of ``positions`` tokens in a traced pass.

    ``FLOAT_BYTES · T · (vocab + 16 T + Σ columns · tensors + 24 Σ d_model)``: the
    full-sequence logits ``[T, vocab]``, attention scores and the model's activations (16
    ``[T, T]`` and 24 ``[T, d_model]`` float32 values per position, a generous allowance), and
    the feature tensors of the edits.

    Args:
        positions: tokens per sequence ``T``.
        vocab: the model's vocabulary size (0 where no logits are kept).
        features: ``(columns, tensors)`` pairs: ``tensors`` float32 ``[T, columns]`` tensors
            each (e.g. encoded features, source values, their difference, a mask).
        d_models: the residual widths counted for activations (one per patched site, or
            one for the widest).

    Both engines size their chunks with it (``PatchingExperiment.bytes_per_row``,
    ``CircuitRuns.bytes_per_row``); ``rows_per_chunk(budget, bytes_per_row(...))`` rows then
    run per forward pass.
    """
    values = int(vocab) + 16 * int(positions)
    values += sum(int(columns) * int(tensors) for columns, tensors in features)
    values += 24 * sum(int(width) for width in d_models)
    return FLOAT_BYTES * int(positions) * values


def model_shape(model) -> dict[str, int]:
    """``{layers, d_model, d_mlp, heads, vocab}`` read from a (nnsight-wrapped) transformers
    model's config, with generous fallbacks where an attribute is missing."""
    config = getattr(getattr(model, "_module", model), "config", None)

    def read(*names: str, default: int) -> int:
        for name in names:
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return default

    d_model = read("hidden_size", "n_embd", "d_model", default=1024)
    return {"layers": read("num_hidden_layers", "n_layer", default=12), "d_model": d_model,
            "d_mlp": read("intermediate_size", "n_inner", default=4 * d_model),
            "heads": read("num_attention_heads", "n_head", default=16),
            "vocab": read("vocab_size", default=0)}


def forward_bytes_per_row(model, positions: int, *, backward: bool) -> int:
    """Estimated memory of one sequence of ``positions`` tokens in a whole-model pass.

    Without ``backward`` (a ``no_grad`` forward) only a few layers' activations are alive
    at once: ``4 · T · (vocab + 8 d_mlp + 16 d_model + 4 heads · T)`` bytes. With
    ``backward`` autograd keeps every layer's activations until the backward pass:
    ``4 · T · (3 vocab + layers · (12 d_model + 4 d_mlp + 4 heads · T))``. Both are
    deliberately generous (float32 even for half-precision models); the run cache and the
    attribution gradients of patching size their prompt chunks with them.
    """
    shape = model_shape(model)
    t = int(positions)
    attention = 4 * shape["heads"] * t
    if backward:
        values = 3 * shape["vocab"] + shape["layers"] * (
            12 * shape["d_model"] + 4 * shape["d_mlp"] + attention)
    else:
        values = shape["vocab"] + 8 * shape["d_mlp"] + 16 * shape["d_model"] + attention
    return FLOAT_BYTES * t * values


def split_rows(n_items: int, rows_per_item: int, max_rows: int) -> tuple[int, int]:
    """``(items per chunk, rows of one item per chunk)`` for ``n_items`` items of
    ``rows_per_item`` rows each (e.g. feature sets × prompts) and at most ``max_rows`` rows
    per chunk: whole items when at least one fits, else one item split into row chunks."""
    max_rows = max(1, int(max_rows))
    if rows_per_item <= max_rows:
        return max(1, min(n_items, max_rows // max(1, rows_per_item))), rows_per_item
    return 1, max_rows


def release_freed_memory() -> None:
    """Hand the heap's freed pages back to the OS (glibc's ``malloc_trim(0)``; nothing where
    the C library has no such call), after collecting young reference cycles
    (``gc.collect(1)``: a trace's objects form cycles that hold its tensors).

    Scans over prompts call it after each block: glibc keeps what a block's tensors freed
    in the process, fragmented, so without it the resident set creeps up block after block
    (2,000 IOI prompt pairs: +150 MiB over 32 gradient blocks of 64 prompts, none with it;
    docs/memory.md) although the working set is the same.
    """
    import gc

    # a trace's objects form reference cycles: collect the young ones (cheap) so that the
    # block's tensors they hold are freed now, not at the next full collection
    gc.collect(1)
    _trim_heap()


def _trim_heap() -> None:
    """glibc's ``malloc_trim(0)``; nothing where the C library has no such call."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return
    trim(0)


class FreedMemory:
    """Hands freed memory back (``release_freed_memory``) between the passes of a long
    computation once the process has grown by more than ``slack`` bytes since it last did.

    Trimming after every pass keeps the resident set at what is alive, but the next pass
    then faults in again the pages it reuses: at Pythia scale (thousands of passes)
    that took the kernel time from 5 % to 9 % of the CPU time. With a slack, a pass reuses
    the pages the previous one freed, and only fragmentation that accumulates beyond the
    slack is trimmed (edge faithfulness crept 0.6 GiB above what was alive without any
    trimming; docs/memory.md).
    """

    def __init__(self, slack: int) -> None:
        self.slack = int(slack)
        self.settled = current_rss()

    def release(self) -> None:
        """Collect young reference cycles; trim when RSS exceeds the last trim's + slack."""
        import gc

        gc.collect(1)
        if current_rss() > self.settled + self.slack:
            _trim_heap()
            self.settled = current_rss()


def current_rss() -> int:
    """The resident set size of this process now, in bytes (from ``/proc/self/statm``)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    """The peak resident set size of this process so far, in bytes."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def format_bytes(size: float) -> str:
    """``1536`` → ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
