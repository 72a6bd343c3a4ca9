"""The SAE trainer's configuration (compared on resume) and its small numerical parts:
the geometric-median initialisation of ``b_dec`` and the optimizer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from featcircuits.errors import ParameterError

__all__ = [
    "CHECKPOINT_FILE",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "DEFAULT_L1_COEFFICIENT",
    "LOG_COLUMNS",
    "SAETrainingConfig",
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
