"""``RunSettings``: how a run is executed (memory budget, rows per pass, seed, progress).

One place for the knobs every engine client shares, so that patching experiments, circuit
runs, discovery, faithfulness and dashboards take one ``settings=`` argument instead of
repeating ``max_memory``, ``max_rows``, ``seed`` and ``progress`` in every signature.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from featcircuits.engine.memory import parse_memory
from featcircuits.errors import ParameterError
from featcircuits.seeds import MAX_SEED, check_seed

__all__ = ["MAX_SEED", "RunSettings", "check_seed"]

@dataclass(frozen=True)
class RunSettings:
    """Execution settings of one run; they change cost, never results (up to float rounding
    of differently sized batches, see ``docs/memory.md``), except ``seed``.

    Attributes:
        max_memory: budget in bytes for the working tensors of one forward pass (an int, a
            string such as ``"2GB"``, or ``None`` for ``memory.default_max_memory()``);
            stored parsed, in bytes.
        max_rows: most sequences per forward pass; ``None`` takes the client's default
            (``PatchingExperiment``: 1024, circuit runs: 256).
        seed: seeds random choices (``resample`` ablation, random bases); 0 to ``MAX_SEED``.
        progress: show tqdm progress bars.
    """

    max_memory: int | str | None = None
    max_rows: int | None = None
    seed: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_memory", parse_memory(self.max_memory))
        if self.max_rows is not None:
            if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, int):
                raise ParameterError(f"max_rows must be an integer, got {self.max_rows!r}")
            if self.max_rows < 1:
                raise ParameterError(f"max_rows must be >= 1, got {self.max_rows}")
        check_seed(self.seed)
        if not isinstance(self.progress, bool):
            raise ParameterError(f"progress must be True or False, got {self.progress!r}")

    def rows(self, default: int) -> int:
        """``max_rows``, or ``default`` where it is ``None``."""
        return default if self.max_rows is None else self.max_rows

    def with_(self, **changes) -> RunSettings:
        """A copy with some fields changed."""
        return replace(self, **changes)
