"""The FastICA passes of ``fit_ica`` (``featcircuits.train.ica``): contrasts, whitening,
the fixed-point iterations (parallel and deflation) and their checkpoint."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from featcircuits.errors import TrainingError
from featcircuits.train.ica_stream import (
    _ActivationStream,
    _moments,
    _non_finite,
    _ThreadPlan,
    _Workspace,
    default_chunk_size,
)
from featcircuits.writes import atomic_path

CONTRASTS = ("logcosh", "exp", "cube")
ALGORITHMS = ("parallel", "deflation")
CHECKPOINT_VERSION = 1

# Eigenvalues of the covariance below this fraction of the largest are floored (whitening
# would divide by ~0); below _NEAR_DEGENERATE a warning says the component is mostly noise.
_EIGEN_FLOOR = 1e-12
_NEAR_DEGENERATE = 1e-8
# The warm start only picks where the full-data iterations begin: it stops at ``tol`` or
# once its partial passes add up to this many full passes (at least 5 iterations), so a
# prefix too small to converge quickly (many sources, few rows) cannot cost more than it saves.
WARM_PASSES = 3


# ------------------------------------------------------------------------------ contrasts
# Each applies g in place to the projections ``y [k, m]`` (one row per component, so the
# reductions run over contiguous memory) and returns the row sums of g'(y) as float64
# ``[k]`` (scikit-learn's functions with alpha = 1). Row sums are reduced in the compute
# dtype (torch sums in cascaded blocks, accurate to ~1e-7 relative for a chunk); only the
# per-chunk totals are float64: reducing in float64 directly is several times slower.
def _row_sum_of_squares(y: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(y, dim=1).double().square()


def _logcosh_(y: torch.Tensor) -> torch.Tensor:
    # g = tanh(y) = 2σ(2y) - 1: torch's vectorised sigmoid makes this ~2x faster than
    # tanh_ on CPU (absolute error <= 2e-7); g' = 1 - tanh(y)²
    y.mul_(2).sigmoid_().mul_(2).sub_(1)
    return y.shape[1] - _row_sum_of_squares(y)


def _exp_(y: torch.Tensor) -> torch.Tensor:
    squares = y * y
    gauss = torch.exp(squares * -0.5)  # e = exp(-y²/2); g = y e; g' = (1 - y²) e
    derivative = squares.neg_().add_(1).mul_(gauss).sum(1).double()
    y.mul_(gauss)
    return derivative


def _cube_(y: torch.Tensor) -> torch.Tensor:
    derivative = 3 * _row_sum_of_squares(y)  # g' = 3y²
    y.pow_(3)  # g = y³
    return derivative


_CONTRAST_FUNCTIONS = {"logcosh": _logcosh_, "exp": _exp_, "cube": _cube_}


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    """``W ← (W Wᵀ)^{-1/2} W`` (float64), making the rows orthonormal."""
    eigenvalues, eigenvectors = torch.linalg.eigh(w @ w.T)
    eigenvalues = eigenvalues.clamp_min(torch.finfo(w.dtype).tiny)
    return (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T @ w


def _whitening(covariance: torch.Tensor, n_components: int
               ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Top-k PCA whitening: ``(K [k, d], λ [k], variance fraction)`` in float64."""
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    order = torch.argsort(eigenvalues, descending=True)[:n_components]
    values = eigenvalues[order]
    vectors = eigenvectors[:, order].T  # [k, d]
    pivot = vectors.abs().argmax(dim=1)
    vectors = vectors * torch.sign(vectors[torch.arange(n_components), pivot])[:, None]
    largest = float(eigenvalues.max().clamp_min(0))
    if largest <= 0:
        raise TrainingError("the activations have zero variance; ICA cannot whiten them",
                            hint="check that the activations are not constant")
    total = float(eigenvalues.clamp_min(0).sum())
    fraction = float(values.clamp_min(0).sum()) / total
    weak = int((values < largest * _NEAR_DEGENERATE).sum())
    if weak:
        warnings.warn(
            f"{weak} of the {n_components} whitened directions have variance below "
            f"{_NEAR_DEGENERATE:g} x the largest; those components are mostly rounding noise "
            f"(use fewer n_components)", RuntimeWarning, stacklevel=3)
    values = values.clamp_min(largest * _EIGEN_FLOOR)
    return vectors * values.rsqrt()[:, None], values, fraction


def _prefix_whitening(stream: _ActivationStream, whitening: torch.Tensor, n_components: int,
                      warm_start: int, progress: bool, plan: _ThreadPlan
                      ) -> dict[str, torch.Tensor]:
    """Moments of the first ``warm_start`` rows (a partial pass): the prefix mean and
    ``R = (K Σ_prefix Kᵀ)^-1/2`` ``[k, k]``, so that ``R K (x - μ_prefix)`` is exactly white
    on the prefix. (With the full-data whitening the prefix is only nearly white and the
    symmetric fixed-point iteration then wanders at the level of the mismatch instead of
    converging.)"""
    _, prefix_mean, prefix_covariance = _moments(stream, n_components, progress, plan,
                                                 warm_start)
    with plan.small_ops(n_components):
        covariance = whitening @ prefix_covariance @ whitening.T
        eigenvalues, eigenvectors = torch.linalg.eigh((covariance + covariance.T) / 2)
        eigenvalues = eigenvalues.clamp_min(float(eigenvalues.max()) * _EIGEN_FLOOR)
        rotation = (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T
    return {"warm_rotation": rotation, "warm_mean": prefix_mean}


# ----------------------------------------------------------------------- checkpointing
_CONFIG_FIELDS = ("version", "d_model", "n_components", "contrast", "algorithm", "whiten",
                  "seed", "warm_start")


def _config_tensor(d_model: int, n_components: int, contrast: str, algorithm: str,
                   whiten: bool, seed: int, warm_start: int | None) -> torch.Tensor:
    return torch.tensor([CHECKPOINT_VERSION, d_model, n_components, CONTRASTS.index(contrast),
                         ALGORITHMS.index(algorithm), int(whiten), seed,
                         -1 if warm_start is None else warm_start], dtype=torch.int64)


def _save_checkpoint(path: Path | None, state: dict[str, torch.Tensor]) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        torch.save({key: value.detach().cpu() for key, value in state.items()}, tmp)


def _load_checkpoint(path: Path | None) -> dict[str, torch.Tensor] | None:
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same problem for the user
        raise TrainingError(f"cannot read ICA checkpoint {str(path)!r}: {exc}",
                            hint="delete the file to start the fit from scratch") from exc
    if not isinstance(state, dict) or "config" not in state:
        raise TrainingError(f"{str(path)!r} is not an ICA checkpoint",
                            hint="delete it or pass another checkpoint_path")
    return state


def _check_resumable(state: dict[str, torch.Tensor], config: torch.Tensor, path: Path) -> None:
    saved = state["config"]
    if saved.shape != config.shape:
        raise TrainingError(f"ICA checkpoint {str(path)!r} has an unknown layout",
                            hint="delete it to start the fit from scratch")
    for name, old, new in zip(_CONFIG_FIELDS, saved.tolist(), config.tolist(), strict=True):
        if old != new:
            if name == "contrast":
                old, new = CONTRASTS[old], CONTRASTS[new]
            elif name == "algorithm":
                old, new = ALGORITHMS[old], ALGORITHMS[new]
            raise TrainingError(
                f"ICA checkpoint {str(path)!r} was written with {name}={old}, this fit "
                f"has {name}={new}",
                hint="resume with the same settings, or delete the checkpoint to start over")


# -------------------------------------------------------------------------- the passes
class _Fit:
    """Everything one ``fit_ica`` call needs; ``state`` is the (checkpointable) progress."""

    def __init__(self, stream: _ActivationStream, state: dict[str, torch.Tensor],
                 contrast: str, tol: float, max_iter: int, whiten: bool,
                 checkpoint: Path | None, progress: bool, plan: _ThreadPlan) -> None:
        self.stream = stream
        self.plan = plan
        self.state = state
        self.contrast = _CONTRAST_FUNCTIONS[contrast]
        self.tol = tol
        self.max_iter = max_iter
        self.checkpoint = checkpoint
        self.progress = progress
        self.n = int(state["n_samples"])
        self.whiten = whiten
        self.whitening = state["whitening"]  # K [k, d] float64, CPU
        self.mean: torch.Tensor | None = None
        self._phase_count = 0  # counts use_phase calls: the key of the centred-data cache
        self.use_phase("full")
        k, d = self.whitening.shape
        if stream.width is None:
            stream.width = d
        if stream.chunk_size is None:  # resumed: the moments pass did not run
            stream.chunk_size = default_chunk_size(d, stream.device)
        self.workspace = _Workspace(stream.chunk_size, d, k, stream.device, stream.dtype)
        # an in-memory tensor that fits in one chunk is converted and centred once per
        # phase and reused by every pass (the chunk-sized memory a pass needs anyway)
        self._centred: tuple[tuple, torch.Tensor] | None = None

    def use_phase(self, phase: str) -> None:
        """Select the whitening of the warm start (prefix) or of the full data."""
        device, dtype = self.stream.device, self.stream.dtype
        self._phase_count += 1
        if phase == "warm":
            # z' = R K (x - μ_prefix) is exactly white on the prefix (R = C_prefix^-1/2)
            self.whitening = self.state["warm_rotation"] @ self.state["whitening"]
            self.mean = self.state["warm_mean"].to(device, dtype)
        else:
            self.whitening = self.state["whitening"]
            self.mean = self.state["mean"].to(device, dtype) if self.whiten else None

    def _finish_phase(self, phase: str) -> None:
        self.state[f"{phase}_done"] = torch.tensor(True)
        if phase == "warm":  # the same unmixing W R K in full-data coordinates, W ← W R
            with self.plan.small_ops(self.state["W"].shape[0]):
                self.state["W"] = _sym_decorrelation(
                    self.state["W"] @ self.state["warm_rotation"])

    def _centred_chunks(self, limit: int | None):
        """Yield ``(index, first_row, centred chunk [m, d])`` for one pass (see
        ``_ActivationStream.chunks``); cached when the data is one in-memory chunk."""
        stream = self.stream
        single = (stream.tensor is not None and stream.chunk_size is not None
                  and min(self.n, limit or self.n) <= stream.chunk_size)
        if single and self._centred is not None and self._centred[0] == (limit, self._phase_count):
            yield 0, 0, self._centred[1]
            return
        for index, row, chunk, owned in stream.chunks(limit):
            centred = self.workspace.centre(chunk, self.mean, owned)
            if single:
                self._centred = ((limit, self._phase_count), centred)
            yield index, row, centred
            del chunk, centred

    def _unmixing(self, w: torch.Tensor) -> torch.Tensor:
        with self.plan.small_ops(self.whitening.shape[0]):
            return (w @ self.whitening).to(self.stream.device, self.stream.dtype)

    def fixed_point_pass(self, w: torch.Tensor, limit: int | None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: ``(E[g(Wz) zᵀ] [k', k], E[g'(Wz)] [k'])`` for ``w [k', k]`` (float64)."""
        unmixing = self._unmixing(w)
        k, d = unmixing.shape
        device = self.stream.device
        g_x = torch.zeros(k, d, dtype=torch.float64, device=device)
        g_prime = torch.zeros(k, dtype=torch.float64, device=device)
        rows = 0
        finite: list[torch.Tensor] = []  # per-chunk flags, read after the pass (no GPU sync)
        spans: list[tuple[int, int, int]] = []
        for index, row, centred in self._centred_chunks(limit):
            with self.plan.small_chunk(centred.shape[0], d, k):
                projected = self.workspace.project(centred, unmixing)
                chunk_g_prime = self.contrast(projected)
                chunk_g_x = projected @ centred
            with self.plan.small_ops(k):
                finite.append(torch.isfinite(chunk_g_x).all())
                g_x += chunk_g_x
                g_prime += chunk_g_prime
            spans.append((index, row, centred.shape[0]))
            rows += centred.shape[0]
            del centred, projected, chunk_g_x
        if finite and not bool(torch.stack(finite).all()):
            bad = int(torch.stack(finite).logical_not().nonzero()[0])
            raise _non_finite(*spans[bad], "produced NaN/inf (the data contains NaN/inf values)")
        expected = self.n if limit is None else min(limit, self.n)
        if rows != expected:
            raise TrainingError(
                f"the data yielded {rows} activations in this pass but {expected} were "
                f"expected (the first pass saw {self.n})",
                hint="the data callable must return the same batches every time it is called")
        with self.plan.small_ops(self.whitening.shape[0]):
            g_z = (g_x.cpu() / rows) @ self.whitening.T  # E[g(y) (x - μ)ᵀ] Kᵀ = E[g(y) zᵀ]
        return g_z, g_prime.cpu() / rows

    def source_moments(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One pass: each source's ``(skewness [k], excess kurtosis [k])``."""
        unmixing = self._unmixing(w)
        k = unmixing.shape[0]
        sums = torch.zeros(4, k, dtype=torch.float64, device=self.stream.device)
        for _, _, centred in self._centred_chunks(None):
            with self.plan.small_chunk(centred.shape[0], centred.shape[1], k):
                y = self.workspace.project(centred, unmixing)
                square = y * y
                sums[0] += y.sum(1).double()
                sums[1] += square.sum(1).double()
                sums[2] += y.mul_(square).sum(1).double()  # y now holds y³
                sums[3] += square.square_().sum(1).double()
            del centred, y, square
        m1, m2, m3, m4 = (sums.cpu() / self.n).unbind(0)
        variance = (m2 - m1 * m1).clamp_min(torch.finfo(torch.float64).tiny)
        third = m3 - 3 * m1 * m2 + 2 * m1**3
        fourth = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        return third / variance**1.5, fourth / variance**2 - 3

    def _iteration_bar(self, desc: str, start: int) -> tqdm:
        return tqdm(total=self.max_iter, initial=start, desc=desc, unit="it",
                    disable=not self.progress, leave=False)

    def run_parallel(self, phase: str, limit: int | None) -> None:
        """Symmetric FastICA; ``phase`` names the state keys (warm start or full data)."""
        state = self.state
        iteration = int(state[f"{phase}_iteration"])
        if bool(state[f"{phase}_done"]):
            return
        self.use_phase(phase)
        bar = self._iteration_bar("ICA warm start" if phase == "warm" else "ICA", iteration)
        w = state["W"]
        max_iter = self.max_iter
        if phase == "warm" and limit is not None:
            max_iter = min(max_iter, max(5, math.ceil(WARM_PASSES * self.n / limit)))
        while iteration < max_iter:
            g_z, g_prime = self.fixed_point_pass(w, limit)
            with self.plan.small_ops(w.shape[0]):
                w_new = _sym_decorrelation(g_z - g_prime[:, None] * w)
                change = float(((w_new * w).sum(1).abs() - 1).abs().max())
            w, iteration = w_new, iteration + 1
            converged = change < self.tol
            state.update({"W": w, f"{phase}_iteration": torch.tensor(iteration),
                          f"{phase}_change": torch.tensor(change, dtype=torch.float64),
                          f"{phase}_converged": torch.tensor(converged)})
            if converged or iteration >= max_iter:
                self._finish_phase(phase)
            _save_checkpoint(self.checkpoint, state)
            bar.update(1)
            bar.set_postfix(change=f"{change:.2e}")
            if converged:
                break
        if not bool(state[f"{phase}_done"]):
            self._finish_phase(phase)
            _save_checkpoint(self.checkpoint, state)
        bar.close()
        self.use_phase("full")

    def run_deflation(self) -> None:
        """One component at a time, Gram-Schmidt against the ones already found."""
        state = self.state
        k = state["W"].shape[0]
        bar = tqdm(total=k, initial=int(state["component"]), desc="ICA components",
                   unit="comp", disable=not self.progress, leave=False)
        while int(state["component"]) < k:
            j = int(state["component"])
            found = state["W"][:j]
            w = state["w"]
            iteration = int(state["full_iteration"])
            change = float(state["full_change"])
            while iteration < self.max_iter:
                g_z, g_prime = self.fixed_point_pass(w[None, :], None)
                with self.plan.small_ops(k):
                    w_new = g_z[0] - g_prime[0] * w
                    w_new = w_new - (w_new @ found.T) @ found
                    w_new = w_new / torch.linalg.vector_norm(w_new)
                    change = float(((w_new * w).sum().abs() - 1).abs())
                w, iteration = w_new, iteration + 1
                state.update({"w": w, "full_iteration": torch.tensor(iteration),
                              "full_change": torch.tensor(change, dtype=torch.float64)})
                if change < self.tol:
                    break
                if iteration < self.max_iter:
                    _save_checkpoint(self.checkpoint, state)
            converged_all = bool(state["full_converged"]) and change < self.tol
            state["worst_change"] = torch.maximum(
                state["worst_change"], torch.tensor(change, dtype=torch.float64))
            state["W"] = state["W"].clone()
            state["W"][j] = w
            state["component_iterations"] = state["component_iterations"].clone()
            state["component_iterations"][j] = iteration
            state["full_converged"] = torch.tensor(converged_all)
            state["component"] = torch.tensor(j + 1)
            if j + 1 < k:
                state["w"] = state["w_init"][j + 1] / torch.linalg.vector_norm(
                    state["w_init"][j + 1])
            state["full_iteration"] = torch.tensor(0)
            _save_checkpoint(self.checkpoint, state)
            bar.update(1)
        state["full_done"] = torch.tensor(True)
        bar.close()
