"""The SAE trainer's configuration and the check that a checkpoint was written by the same
run (``check_resumable``), plus its small numerical parts: the geometric-median
initialisation of ``b_dec`` and the optimizer."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from featcircuits.errors import ParameterError, TrainingError
from featcircuits.seeds import check_seed

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_L1_COEFFICIENT",
    "LOG_COLUMNS",
    "SAETrainingConfig",
    "check_resumable",
    "geometric_median",
    "make_optimizer",
]

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "featcircuits-sae-trainer"
CHECKPOINT_VERSION = 1
DEFAULT_L1_COEFFICIENT = 5.0
LOG_COLUMNS = ["step", "loss", "mse", "l1", "l0", "variance_explained", "dead_fraction",
               "resampled"]


@dataclass(frozen=True)
class SAETrainingConfig:
    """Everything that determines a training run's result (compared on resume)."""

    d_model: int
    n_features: int
    l1_coefficient: float = 5.0
    activation: str = "relu"
    k: int | None = None
    tied: bool = False
    lr: float = 1e-3
    steps: int = 2000
    resample_dead_every: int | None = 500
    dead_window: int = 250
    b_dec_init: str = "geometric_median"
    normalize_activations: bool = True
    seed: int = 0
    site: str | None = None

    def validate(self) -> None:
        check_seed(self.seed)
        for name in ("d_model", "n_features", "steps", "dead_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ParameterError(f"{name} must be a positive integer, got {value!r}")
        if self.resample_dead_every is not None and (
                not isinstance(self.resample_dead_every, int) or self.resample_dead_every <= 0):
            raise ParameterError(
                f"resample_dead_every must be a positive integer or None, got "
                f"{self.resample_dead_every!r}")
        if not (math.isfinite(self.l1_coefficient) and self.l1_coefficient >= 0):
            raise ParameterError(f"l1_coefficient must be finite and >= 0, got "
                                 f"{self.l1_coefficient!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ParameterError(f"lr must be positive, got {self.lr!r}")
        if self.activation not in ("relu", "topk"):
            raise ParameterError(f"activation must be 'relu' or 'topk', got {self.activation!r}",
                                 hint="JumpReLU SAEs can be loaded but not trained here")
        if self.activation == "topk" and (
                not isinstance(self.k, int) or not 0 < self.k <= self.n_features):
            raise ParameterError(f"activation='topk' needs 0 < k <= {self.n_features}, "
                                 f"got k={self.k!r}")
        if self.b_dec_init not in ("geometric_median", "mean", "zero"):
            raise ParameterError(f"b_dec_init must be 'geometric_median', 'mean' or 'zero', got "
                                 f"{self.b_dec_init!r}")


def geometric_median(points: torch.Tensor, iterations: int = 50, eps: float = 1e-8
                     ) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to ``points [n, d]``."""
    median = points.mean(0)
    for _ in range(iterations):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= eps * (1 + median.norm()):
            return new
        median = new
    return median


def make_optimizer(parameters: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam, fused into one kernel where this torch build supports it (CPU and CUDA in
    torch >= 2.4): it is the largest per-step cost after the matmuls for small SAEs."""
    try:
        return torch.optim.Adam(parameters, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=lr)


def check_resumable(state: Any, config: SAETrainingConfig, run_flags: dict[str, Any],
                    source: str) -> None:
    """``TrainingError`` unless ``state`` (a trainer checkpoint) was written by a run with the
    same ``config`` and ``run_flags``: a resume must never mix two runs."""
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{source} is not an SAE trainer checkpoint",
                            hint="delete it or point checkpoint_dir elsewhere")
    if state.get("version") != CHECKPOINT_VERSION:
        raise TrainingError(f"{source} has checkpoint version {state.get('version')!r}; "
                            f"this featcircuits reads {CHECKPOINT_VERSION}")
    if run_flags and "run_flags" not in state:
        raise TrainingError(
            f"cannot resume from {source}: it was written by an older featcircuits that did "
            f"not record the run's settings ({', '.join(sorted(run_flags))}), so a "
            "resume could silently mix two runs",
            hint="start over (without resuming, or in another output folder)")
    saved_flags = json.loads(state.get("run_flags") or "{}")
    changed = sorted(key for key in set(saved_flags) | set(run_flags)
                     if saved_flags.get(key) != run_flags.get(key))
    if changed:
        detail = "; ".join(f"{key}: {saved_flags.get(key)!r} then, "
                           f"{run_flags.get(key)!r} now" for key in changed)
        raise TrainingError(
            f"cannot resume from {source}: it was written by a run with other settings "
            f"({detail}); continuing would give a result that matches neither run",
            hint="resume with the same settings, or start a new run in another output "
            "folder / checkpoint_dir (or without resuming)")
    saved = json.loads(state["config"])
    ours = asdict(config)
    differing = sorted(key for key in set(saved) | set(ours) if saved.get(key) != ours.get(key))
    if differing:
        detail = ", ".join(f"{key}: checkpoint {saved.get(key)!r} vs now {ours.get(key)!r}"
                           for key in differing)
        raise TrainingError(
            f"{source} was written by a run with a different config ({detail})",
            hint="use the same settings to resume, or another checkpoint_dir for a new run")
