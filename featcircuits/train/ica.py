"""FastICA in torch: in memory or streamed over chunks, on CPU or CUDA.

``fit_ica`` follows scikit-learn's ``FastICA`` (same contrasts, same fixed-point update,
same symmetric decorrelation, same convergence test) but

* computes in ``dtype`` (float32 by default) on ``device`` and accumulates every sum over
  samples in float64;
* never needs the data in one piece: one pass computes the mean and covariance (streamed
  moments), then every fixed-point iteration is one exact full-batch pass accumulating
  ``E[g(Wz) zᵀ]`` and ``E[g'(Wz)]`` over chunks;
* can warm-start on a prefix of the data and save/resume its state (``checkpoint_path``).

Notation: ``x [d_model]`` an activation, ``μ`` its mean, ``Σ`` its covariance with top-k
eigenpairs ``(λ, V)``; ``K = diag(λ^-1/2) Vᵀ`` ``[k, d_model]`` whitens: ``z = K (x - μ)``
has identity covariance. FastICA finds an orthogonal ``W [k, k]``; the sources are
``s = W z = (W K)(x - μ)``. See docs/ica.md.
"""

from __future__ import annotations

import contextlib
import math
import operator
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.bases import ICABasis
from featcircuits.errors import (
    NonFiniteError,
    ParameterError,
    TrainingError,
    WidthMismatchError,
)
from featcircuits.files import atomic_path
from featcircuits.train.threads import check_threads, torch_threads

CONTRASTS = ("logcosh", "exp", "cube")
ALGORITHMS = ("parallel", "deflation")
CHECKPOINT_VERSION = 1

# Eigenvalues of the covariance below this fraction of the largest are floored (whitening
# would divide by ~0); below _NEAR_DEGENERATE a warning says the component is mostly noise.
_EIGEN_FLOOR = 1e-12
_NEAR_DEGENERATE = 1e-8
_SMALL_OPS_MAX = 512
_PARALLEL_WORK = 1 << 24  # multiply-adds per chunk below which one thread is faster

ActivationData = torch.Tensor | Callable[[], Iterable[Any]] | Iterable[Any]


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


# ------------------------------------------------------------------------------- helpers
def amari_distance(unmixing: torch.Tensor, mixing: torch.Tensor) -> float:
    """Normalised Amari index of ``P = unmixing @ mixing``, a number in ``[0, 1]``.

    ``unmixing [k, d]`` estimates the inverse of ``mixing [d, k]`` up to the order and
    scale of the sources; the index is 0 exactly when ``P`` is a scaled permutation and
    grows towards 1 as ``P`` mixes sources::

        d(P) = (Σ_i (Σ_j |p_ij| / max_j |p_ij| − 1) + Σ_j (Σ_i |p_ij| / max_i |p_ij| − 1))
               / (2 k (k − 1))

    It is invariant to permuting and rescaling (including sign) the rows of ``unmixing``.
    """
    product = torch.as_tensor(unmixing, dtype=torch.float64) @ torch.as_tensor(
        mixing, dtype=torch.float64)
    if product.ndim != 2 or product.shape[0] != product.shape[1]:
        raise ParameterError(
            f"unmixing @ mixing must be square, got {tuple(product.shape)}",
            hint="pass unmixing [k, d] and mixing [d, k]",
        )
    magnitude = product.abs()
    if not torch.isfinite(magnitude).all():
        raise NonFiniteError("unmixing @ mixing has NaN/inf values")
    k = magnitude.shape[0]
    if k == 1:
        return 0.0
    row_max = magnitude.max(dim=1).values
    col_max = magnitude.max(dim=0).values
    if bool((row_max == 0).any()) or bool((col_max == 0).any()):
        raise ParameterError("unmixing @ mixing has an all-zero row or column",
                             hint="the unmixing matrix misses a source entirely")
    rows = (magnitude.sum(dim=1) / row_max - 1).sum()
    cols = (magnitude.sum(dim=0) / col_max - 1).sum()
    return float((rows + cols) / (2 * k * (k - 1)))


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    """``W ← (W Wᵀ)^{-1/2} W`` (float64), making the rows orthonormal."""
    eigenvalues, eigenvectors = torch.linalg.eigh(w @ w.T)
    eigenvalues = eigenvalues.clamp_min(torch.finfo(w.dtype).tiny)
    return (eigenvectors * eigenvalues.rsqrt()) @ eigenvectors.T @ w


class _ThreadPlan:
    """Where a fit runs small tensor ops with ``small_ops_threads`` CPU threads.

    Each multi-threaded BLAS/LAPACK/vector-math call pays a thread-team barrier; on a busy
    machine that costs 10-100 ms per call (measured on 2 loaded cores: ``eigh`` of a
    128 x 128 matrix took 80 ms with 2 threads and 8 ms with 1; a 6 x 2000 ``tanh`` 14 ms),
    more than the arithmetic itself. torch's thread count is process-wide, so it is only
    changed when the caller asks (``fit_ica(small_ops_threads=1)``), only around those
    blocks, and restored as soon as each ends (``torch_threads``).
    """

    def __init__(self, small_ops_threads: int | None) -> None:
        self.threads = small_ops_threads

    def small_ops(self, size: int) -> contextlib.AbstractContextManager[None]:
        """The ``[k, k]`` / ``[k, d]`` float64 algebra when ``k <= 512``."""
        return torch_threads(self.threads if size <= _SMALL_OPS_MAX else None)

    def small_chunk(self, rows: int, d_model: int, n_components: int
                    ) -> contextlib.AbstractContextManager[None]:
        """A chunk's products when they are too small to be worth several threads."""
        small = rows * d_model * n_components < _PARALLEL_WORK
        return torch_threads(self.threads if small else None)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}", hint="use 'cpu' or 'cuda'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ParameterError(f"device {device!r} was requested but CUDA is not available",
                             hint="pass device='cpu' (or None to pick automatically)")
    return resolved


# ------------------------------------------------------------------------ chunked data
def default_chunk_size(d_model: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk when ``chunk_size=None``: buffers of ~2²³ elements (32 MiB float32)
    on CPU, ~2²⁶ on CUDA, clamped to 1024..2²⁰ rows."""
    budget = 1 << 26 if torch.device(device).type == "cuda" else 1 << 23
    return int(min(max(budget // max(int(d_model), 1), 1024), 1 << 20))


class _ActivationStream:
    """Re-readable chunks ``[m, d_model]`` of ``data`` on ``device`` in ``dtype``.

    A tensor is sliced (views; no copy when it already has the device and dtype). Anything
    else must be readable several times: a zero-argument callable returning a fresh
    iterator of batches, or a re-iterable object (``iter(obj) is not obj``). Batches
    ``[..., d_model]`` larger than ``chunk_size`` rows are split. No reference to a batch
    is kept while the next one is produced, so a stream costs one batch of memory.
    """

    def __init__(self, data: ActivationData, chunk_size: int | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.chunk_size = chunk_size
        self.device = device
        self.dtype = dtype
        self.tensor: torch.Tensor | None = None
        self.factory: Callable[[], Iterable[Any]] | None = None
        self.width: int | None = None  # d_model, once known (checked on every batch)
        if not isinstance(data, torch.Tensor) and hasattr(data, "__array_interface__"):
            data = torch.as_tensor(data)
        if isinstance(data, torch.Tensor):
            if data.ndim < 2:
                raise ParameterError(
                    f"activations must be [n, d_model], got shape {tuple(data.shape)}",
                    hint="reshape to [n_samples, d_model]")
            self.tensor = data.reshape(-1, data.shape[-1])
        elif callable(data):
            self.factory = data
        elif hasattr(data, "__iter__"):
            if iter(data) is data:
                raise ParameterError(
                    f"data is a one-shot iterator ({type(data).__name__}); FastICA reads the "
                    "data once per iteration",
                    hint="pass a zero-argument callable returning a fresh iterator, e.g. "
                         "lambda: make_batches(), or a re-iterable object such as a list")
            self.factory = lambda: iter(data)
        else:
            raise ParameterError(
                f"cannot read activations from {type(data).__name__}",
                hint="pass a tensor [n, d_model], a re-iterable of batches, or a "
                     "zero-argument callable returning an iterator of batches")

    @property
    def in_memory(self) -> bool:
        return self.tensor is not None

    def chunks(self, limit: int | None = None
               ) -> Iterator[tuple[int, int, torch.Tensor, bool]]:
        """Yield ``(chunk_index, first_row, chunk [m, d_model], owned)``, at most ``limit``
        rows. ``owned``: the chunk is a private copy (converted to ``dtype`` or moved to
        ``device``), so it may be overwritten.

        Consumers must drop their reference to a chunk before asking for the next one.
        """
        index, row = 0, 0
        batches = self._batches()
        while limit is None or row < limit:
            batch = next(batches, None)
            if batch is None:
                return
            if self.width is None:
                self.width = batch.shape[1]
            elif batch.shape[1] != self.width:
                raise WidthMismatchError(
                    f"the activations have width {batch.shape[1]} but this fit has "
                    f"d_model={self.width}",
                    hint="resume a checkpoint only with data from the same site")
            if self.chunk_size is None:
                self.chunk_size = default_chunk_size(batch.shape[1], self.device)
            start, size = 0, batch.shape[0]
            while start < size and (limit is None or row < limit):
                stop = min(start + self.chunk_size, size)
                if limit is not None:
                    stop = min(stop, start + limit - row)
                view = batch[start:stop]
                piece = view.to(device=self.device, dtype=self.dtype)
                yield index, row, piece, piece.data_ptr() != view.data_ptr()
                del piece, view
                index += 1
                row += stop - start
                start = stop
            del batch

    def _batches(self) -> Iterator[torch.Tensor]:
        if self.tensor is not None:
            yield self.tensor
            return
        assert self.factory is not None
        iterator = self.factory()
        if iterator is None or not hasattr(iterator, "__iter__"):
            raise ParameterError(
                f"the data callable returned {type(iterator).__name__}, not an iterable",
                hint="the callable must return a fresh iterator of batches [.., d_model]")
        iterator = iter(iterator)
        width = None
        batch_index = 0
        while True:
            batch = next(iterator, None)
            if batch is None:
                return
            batch = torch.as_tensor(batch)
            if batch.ndim < 2:
                raise ParameterError(
                    f"batch {batch_index} has shape {tuple(batch.shape)}; batches must be "
                    "[..., d_model]", hint="yield 2-D (or higher) activation batches")
            if width is None:
                width = batch.shape[-1]
            elif batch.shape[-1] != width:
                raise WidthMismatchError(
                    f"batch {batch_index} has width {batch.shape[-1]} but earlier batches "
                    f"have {width}", hint="every batch must come from the same site")
            batch = batch.reshape(-1, width)
            yield batch
            del batch
            batch_index += 1


class _Workspace:
    """Reusable buffers for one fit: centred chunk ``[m, d]`` and projections ``[k, m]``."""

    def __init__(self, chunk_size: int, d_model: int, n_components: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.size, self.device, self.dtype = chunk_size * d_model, device, dtype
        self.centred: torch.Tensor | None = None  # only needed for chunks we do not own
        self.projected = torch.empty(chunk_size * n_components, device=device, dtype=dtype)

    def centre(self, chunk: torch.Tensor, mean: torch.Tensor | None,
               owned: bool) -> torch.Tensor:
        """``chunk - mean``: in place when the chunk is a private copy, else in the buffer."""
        if mean is None:
            return chunk
        if owned:
            return chunk.sub_(mean)
        if self.centred is None:
            self.centred = torch.empty(self.size, device=self.device, dtype=self.dtype)
        out = self.centred[: chunk.numel()].view(chunk.shape)
        return torch.sub(chunk, mean, out=out)

    def project(self, centred: torch.Tensor, unmixing: torch.Tensor) -> torch.Tensor:
        """``unmixing [k', d] @ centred.T`` → ``[k', m]`` into the reusable buffer."""
        rows, k = centred.shape[0], unmixing.shape[0]
        out = self.projected[: rows * k].view(k, rows)
        return torch.matmul(unmixing, centred.T, out=out)


def _non_finite(index: int, row: int, rows: int, what: str) -> NonFiniteError:
    return NonFiniteError(
        f"activation chunk {index} (rows {row}..{row + rows - 1}) {what}",
        hint="drop or clip the NaN/inf activations before fitting ICA")


def _moments(stream: _ActivationStream, n_components: int, progress: bool, plan: _ThreadPlan,
             limit: int | None = None) -> tuple[int, torch.Tensor, torch.Tensor]:
    """One pass: ``(n, mean [d] f64, covariance [d, d] f64)`` (population covariance).

    Sums are taken around the first chunk's mean (a shift), so the covariance does not
    lose precision when the mean is large compared to the spread.
    """
    n = 0
    shift = None
    first_moment = second_moment = buffer = None
    bar = tqdm(desc="ICA moments", unit="act", disable=not progress or stream.in_memory,
               leave=False)
    for index, row, chunk, owned in stream.chunks(limit):
        if not bool(torch.isfinite(chunk).all()):
            raise _non_finite(index, row, chunk.shape[0], "contains NaN/inf values")
        if shift is None:
            d_model = chunk.shape[1]
            if n_components > d_model:
                raise ParameterError(
                    f"n_components={n_components} exceeds d_model={d_model}",
                    hint=f"use 1 <= n_components <= {d_model}")
            shift = chunk.mean(0)
            first_moment = torch.zeros(d_model, dtype=torch.float64, device=chunk.device)
            second_moment = torch.zeros(d_model, d_model, dtype=torch.float64,
                                        device=chunk.device)
        if buffer is None and not owned:
            assert stream.chunk_size is not None
            buffer = torch.empty(stream.chunk_size * chunk.shape[1], dtype=chunk.dtype,
                                 device=chunk.device)
        with plan.small_chunk(*chunk.shape, chunk.shape[1]):
            centred = chunk.sub_(shift) if owned else torch.sub(
                chunk, shift, out=buffer[: chunk.numel()].view(chunk.shape))
            chunk_sum, chunk_products = centred.sum(0), centred.T @ centred
        with plan.small_ops(centred.shape[1]):
            first_moment += chunk_sum
            second_moment += chunk_products
        n += chunk.shape[0]
        bar.update(chunk.shape[0])
        del chunk, centred
    bar.close()
    if n == 0 or shift is None:
        raise TrainingError("no activations to fit ICA on (the data is empty)",
                            hint="pass a non-empty tensor or stream of batches")
    if n < 2:
        raise TrainingError(f"ICA needs at least 2 activations, got {n}",
                            hint="collect more activations")
    if not (torch.isfinite(first_moment).all() and torch.isfinite(second_moment).all()):
        raise NonFiniteError("activation moments overflowed (values too large)",
                             hint="rescale the activations")
    offset = first_moment / n
    covariance = second_moment / n - torch.outer(offset, offset)
    covariance = (covariance + covariance.T) / 2
    return n, (shift.double() + offset).cpu(), covariance.cpu()


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
        self.use_phase("full")
        k, d = self.whitening.shape
        if stream.width is None:
            stream.width = d
        if stream.chunk_size is None:  # resumed: the moments pass did not run
            stream.chunk_size = default_chunk_size(d, stream.device)
        self.workspace = _Workspace(stream.chunk_size, d, k, stream.device, stream.dtype)

    def use_phase(self, phase: str) -> None:
        """Select the whitening of the warm start (prefix) or of the full data."""
        device, dtype = self.stream.device, self.stream.dtype
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
        for index, row, chunk, owned in self.stream.chunks(limit):
            with self.plan.small_chunk(chunk.shape[0], d, k):
                centred = self.workspace.centre(chunk, self.mean, owned)
                projected = self.workspace.project(centred, unmixing)
                chunk_g_prime = self.contrast(projected)
                chunk_g_x = projected @ centred
            with self.plan.small_ops(k):
                finite.append(torch.isfinite(chunk_g_x).all())
                g_x += chunk_g_x
                g_prime += chunk_g_prime
            spans.append((index, row, chunk.shape[0]))
            rows += chunk.shape[0]
            del chunk, centred, projected, chunk_g_x
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
        for _, _, chunk, owned in self.stream.chunks():
            with self.plan.small_chunk(chunk.shape[0], chunk.shape[1], k):
                centred = self.workspace.centre(chunk, self.mean, owned)
                y = self.workspace.project(centred, unmixing)
                square = y * y
                sums[0] += y.sum(1).double()
                sums[1] += square.sum(1).double()
                sums[2] += y.mul_(square).sum(1).double()  # y now holds y³
                sums[3] += square.square_().sum(1).double()
            del chunk, centred, y, square
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
        while iteration < self.max_iter:
            g_z, g_prime = self.fixed_point_pass(w, limit)
            with self.plan.small_ops(w.shape[0]):
                w_new = _sym_decorrelation(g_z - g_prime[:, None] * w)
                change = float(((w_new * w).sum(1).abs() - 1).abs().max())
            w, iteration = w_new, iteration + 1
            converged = change < self.tol
            state.update({"W": w, f"{phase}_iteration": torch.tensor(iteration),
                          f"{phase}_change": torch.tensor(change, dtype=torch.float64),
                          f"{phase}_converged": torch.tensor(converged)})
            if converged or iteration >= self.max_iter:
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


def _integer(value: Any) -> int | None:
    """``value`` as an int if it is an integer (Python, numpy or 0-d tensor), else None."""
    if isinstance(value, bool | float):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _validate(n_components: Any, contrast: str, algorithm: str, tol: float, max_iter: Any,
              chunk_size: Any, warm_start: Any, dtype: torch.dtype) -> None:
    if _integer(n_components) is None or _integer(n_components) < 1:
        raise ParameterError(f"n_components must be a positive integer, got {n_components!r}",
                             hint="use 1 <= n_components <= d_model")
    if contrast not in CONTRASTS:
        raise ParameterError(f"unknown contrast {contrast!r}",
                             hint=f"choose one of {', '.join(CONTRASTS)}")
    if algorithm not in ALGORITHMS:
        raise ParameterError(f"unknown algorithm {algorithm!r}",
                             hint=f"choose one of {', '.join(ALGORITHMS)}")
    if not (isinstance(tol, int | float) and math.isfinite(tol) and tol > 0):
        raise ParameterError(f"tol must be a positive number, got {tol!r}", hint="e.g. 1e-4")
    if _integer(max_iter) is None or _integer(max_iter) < 1:
        raise ParameterError(f"max_iter must be a positive integer, got {max_iter!r}",
                             hint="e.g. 200")
    if chunk_size is not None and (_integer(chunk_size) is None or _integer(chunk_size) < 1):
        raise ParameterError(f"chunk_size must be None or a positive integer, got "
                             f"{chunk_size!r}", hint="e.g. 32768 (rows)")
    if warm_start is not None:
        if _integer(warm_start) is None or _integer(warm_start) < 2:
            raise ParameterError(f"warm_start must be None or an integer >= 2 (rows), got "
                                 f"{warm_start!r}", hint="e.g. warm_start=100_000")
        if algorithm != "parallel":
            raise ParameterError("warm_start needs algorithm='parallel'",
                                 hint="drop warm_start for deflation")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ParameterError(f"dtype must be a floating torch dtype, got {dtype!r}",
                             hint="use torch.float32 (or torch.float64)")


# ------------------------------------------------------------------------------ public
def fit_ica(
    data: ActivationData,
    n_components: int,
    *,
    contrast: str = "logcosh",
    algorithm: str = "parallel",
    tol: float = 1e-4,
    max_iter: int = 200,
    whiten: bool = True,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_size: int | None = None,
    warm_start: int | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    site: str | None = None,
    progress: bool = True,
    small_ops_threads: int | None = None,
) -> ICABasis:
    """Fit FastICA (scikit-learn semantics) in torch, in memory or streamed.

    Args:
        data: activations ``[n, d_model]`` (tensor or array, any leading shape), or a
            stream read once per pass: a zero-argument callable returning a fresh iterator
            of batches ``[..., d_model]`` (``lambda: buffer.batches()``), or a re-iterable
            object (a list of tensors, an object whose ``__iter__`` starts over). A one-shot
            iterator or generator is refused: ICA reads the data ``2 + n_iter`` times.
            Every read must yield the same activations.
        n_components: number of sources ``k`` (``1 <= k <= d_model``); the data is
            whitened onto its top-k principal components first.
        contrast: ``"logcosh"`` (g = tanh), ``"exp"`` (g = y·exp(-y²/2)) or ``"cube"``
            (g = y³), as in scikit-learn (alpha = 1).
        algorithm: ``"parallel"`` (all components at once, symmetric decorrelation) or
            ``"deflation"`` (one at a time, Gram-Schmidt; one pass per iteration per
            component).
        tol: stop when ``max_i | |⟨w_i^new, w_i⟩| - 1 | < tol`` (scikit-learn's test).
        max_iter: most fixed-point iterations (each is one pass over the data; per
            component for deflation, and separately for the warm start).
        whiten: centre and PCA-whiten (True). False: the data is taken as already centred
            and white, nothing is subtracted, and ``n_components`` must equal d_model.
        seed: seeds the random initial ``W`` (float64 normal draws on the CPU, so the
            result does not depend on the device's random generator).
        device: where to compute (``None``: CUDA if available, else CPU).
        dtype: compute dtype of the data-sized products (float32); all sums over samples
            and all small matrices are float64.
        chunk_size: rows per chunk; bounds the working memory (two buffers of
            ``chunk_size × d_model`` and ``chunk_size × k`` elements plus one transient of
            ``chunk_size × k``). ``None``: ``default_chunk_size(d_model, device)``. Results
            are bit-reproducible for the same chunk size; another chunk size changes the
            float32 rounding and can change the iteration path (not the fixed point).
        warm_start: if set, first iterate to convergence on the first ``warm_start`` rows
            only (cheap partial passes), then continue on all the data (parallel only).
        checkpoint_path: file holding the fit's state (moments, W, iteration counters),
            written atomically after the moments pass and every iteration. If it exists
            when the fit starts, the fit resumes from it (same settings required; raise
            ``max_iter`` to continue a fit that stopped at ``max_iter``).
        site: recorded on the returned basis.
        progress: show tqdm progress bars.
        small_ops_threads: CPU threads for the small ``[k, k]`` algebra (k <= 512) and for
            chunks too small to be worth several threads (e.g. 1 on a busy machine, where
            every multi-threaded BLAS call pays a 10-100 ms barrier); torch's thread count
            is set around those blocks only and restored after each. ``None`` (default):
            torch's thread count is never touched.

    Returns:
        ``ICABasis`` with ``unmixing [k, d_model]`` (centred x → unit-variance sources),
        ``mixing [d_model, k]`` and ``mean``; ``decode(encode(x))`` is the projection of
        ``x`` onto the top-k PCA subspace (exact when k = d_model). Components are
        ordered by decreasing |excess kurtosis| and signed so each source has positive
        skewness (or, when the skewness is not significant, so the largest-magnitude
        entry of its mixing column is positive). ``basis.meta`` holds ``n_iter``,
        ``converged``, ``contrast``, ``n_samples`` and further fit statistics.

    Raises:
        ParameterError: bad argument (unknown contrast/algorithm, n_components out of
            range, one-shot iterator, ...).
        NonFiniteError: NaN/inf in the data (the message names the chunk).
        TrainingError: empty data, a stream that changes between passes, an unreadable
            or mismatching checkpoint.
    """
    _validate(n_components, contrast, algorithm, tol, max_iter, chunk_size, warm_start, dtype)
    n_components, max_iter = operator.index(n_components), operator.index(max_iter)
    chunk_size = None if chunk_size is None else operator.index(chunk_size)
    warm_start = None if warm_start is None else operator.index(warm_start)
    if _integer(seed) is None:
        raise ParameterError(f"seed must be an integer, got {seed!r}", hint="e.g. seed=0")
    seed = operator.index(seed)
    plan = _ThreadPlan(check_threads(small_ops_threads, "small_ops_threads"))
    resolved = _resolve_device(device)
    stream = _ActivationStream(data, chunk_size, resolved, dtype)
    if stream.tensor is not None:
        if stream.tensor.shape[0] == 0:
            raise TrainingError("no activations to fit ICA on (the data is empty)",
                                hint="pass a non-empty tensor or stream of batches")
        if n_components > stream.tensor.shape[1]:
            raise ParameterError(
                f"n_components={n_components} exceeds d_model={stream.tensor.shape[1]}",
                hint=f"use 1 <= n_components <= {stream.tensor.shape[1]}")
    if not whiten and stream.tensor is not None and n_components != stream.tensor.shape[1]:
        raise ParameterError(
            f"whiten=False needs n_components == d_model ({stream.tensor.shape[1]}), got "
            f"{n_components}", hint="pass whiten=True to reduce the dimension")
    checkpoint = None if checkpoint_path is None else Path(checkpoint_path)

    state = _load_checkpoint(checkpoint)
    if state is None:
        n, mean, covariance = _moments(stream, n_components, progress, plan)
        d_model = mean.shape[0]
        if whiten:
            whitening, eigenvalues, fraction = _whitening(covariance, n_components)
        else:
            if n_components != d_model:
                raise ParameterError(
                    f"whiten=False needs n_components == d_model ({d_model}), got "
                    f"{n_components}", hint="pass whiten=True to reduce the dimension")
            whitening = torch.eye(d_model, dtype=torch.float64)
            eigenvalues = torch.ones(d_model, dtype=torch.float64)
            mean = torch.zeros(d_model, dtype=torch.float64)
            fraction = 1.0
        generator = torch.Generator().manual_seed(seed)
        w_init = torch.randn(n_components, n_components, generator=generator,
                             dtype=torch.float64)
        state = {
            "config": _config_tensor(d_model, n_components, contrast, algorithm, whiten,
                                     seed, warm_start),
            "n_samples": torch.tensor(n), "mean": mean, "whitening": whitening,
            "eigenvalues": eigenvalues,
            "variance_fraction": torch.tensor(fraction, dtype=torch.float64),
            "w_init": w_init,
            "W": _sym_decorrelation(w_init) if algorithm == "parallel"
            else torch.zeros(n_components, n_components, dtype=torch.float64),
        }
        for phase in ("warm", "full"):
            state.update({f"{phase}_iteration": torch.tensor(0),
                          f"{phase}_done": torch.tensor(phase == "warm" and warm_start is None),
                          f"{phase}_converged": torch.tensor(algorithm == "deflation"),
                          f"{phase}_change": torch.tensor(math.inf, dtype=torch.float64)})
        if warm_start is not None:
            state.update(_prefix_whitening(stream, whitening, n_components, warm_start,
                                           progress, plan))
        if algorithm == "deflation":
            state.update({"component": torch.tensor(0),
                          "worst_change": torch.tensor(0.0, dtype=torch.float64),
                          "w": w_init[0] / torch.linalg.vector_norm(w_init[0]),
                          "component_iterations": torch.zeros(n_components,
                                                              dtype=torch.int64)})
        _save_checkpoint(checkpoint, state)
    else:
        d_model = int(state["config"][1])
        config = _config_tensor(d_model, n_components, contrast, algorithm, whiten, seed,
                                warm_start)
        _check_resumable(state, config, checkpoint)  # type: ignore[arg-type]
        if algorithm == "parallel" and not bool(state["full_converged"]) \
                and bool(state["full_done"]) and int(state["full_iteration"]) < max_iter:
            state["full_done"] = torch.tensor(False)  # resume with a larger max_iter

    fit = _Fit(stream, state, contrast, float(tol), max_iter, whiten, checkpoint, progress,
               plan)
    if algorithm == "parallel":
        fit.run_parallel("warm", warm_start)
        fit.run_parallel("full", None)
        n_iter = int(state["full_iteration"])
        final_change = float(state["full_change"])
    else:
        fit.run_deflation()
        n_iter = int(state["component_iterations"].max())
        final_change = float(state["worst_change"])  # the least converged component's
    converged = bool(state["full_converged"])
    if not converged:
        warnings.warn(
            f"FastICA did not converge in max_iter={max_iter} iterations (last change "
            f"{final_change:.2e} >= tol={tol:g}); raise max_iter or tol",
            RuntimeWarning, stacklevel=2)
    return _to_basis(fit, state, contrast, algorithm, n_iter, converged,
                     {"final_change": final_change, "tol": float(tol), "max_iter": max_iter,
                      "seed": seed, "whiten": bool(whiten), "warm_start": warm_start}, site)


def _to_basis(fit: _Fit, state: dict[str, torch.Tensor], contrast: str, algorithm: str,
              n_iter: int, converged: bool, settings: dict[str, Any],
              site: str | None) -> ICABasis:
    """Order and sign the components, then build the ``ICABasis``."""
    w = state["W"]
    n = fit.n
    skewness, kurtosis = fit.source_moments(w)
    whitening, eigenvalues = state["whitening"], state["eigenvalues"]
    # K⁺ = V diag(√λ) ([d, k]) so mixing = K⁺ Wᵀ: the pseudo-inverse of W K for orthogonal W
    dewhitening = whitening.T * eigenvalues
    mixing = dewhitening @ w.T  # [d, k]
    order = sorted(range(w.shape[0]), key=lambda i: (-abs(float(kurtosis[i])), i))
    order_t = torch.tensor(order)
    significant = skewness.abs() > 3 * math.sqrt(6 / n)  # ~3 standard errors of skewness
    pivot = mixing.abs().argmax(dim=0)
    mixing_sign = torch.sign(mixing[pivot, torch.arange(mixing.shape[1])])
    signs = torch.where(significant, torch.sign(skewness), mixing_sign)
    signs[signs == 0] = 1
    w = (w * signs[:, None])[order_t]
    unmixing = w @ whitening
    mixing = (mixing * signs[None, :])[:, order_t]
    meta = {
        "fit": "featcircuits.train.ica.fit_ica",
        "contrast": contrast,
        "algorithm": algorithm,
        "n_iter": n_iter,
        "converged": converged,
        "n_samples": n,
        "n_iter_warm_start": int(state["warm_iteration"]),
        "pca_variance_fraction": float(state["variance_fraction"]),
        "skewness": [round(float(value), 6) for value in (skewness * signs)[order_t]],
        "excess_kurtosis": [round(float(value), 6) for value in kurtosis[order_t]],
        **settings,
    }
    mean = state["mean"]
    return ICABasis(unmixing.float(), mean.float(), mixing.float(), site=site, meta=meta)


__all__ = ["ALGORITHMS", "CONTRASTS", "amari_distance", "default_chunk_size", "fit_ica"]
