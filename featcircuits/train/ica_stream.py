"""Chunked reading for ``fit_ica`` (``featcircuits.train.ica``): the activation stream,
the reusable chunk workspace, where small ops run on fewer threads, and the moments pass
(mean and covariance in one streamed pass)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from tqdm.auto import tqdm

from featcircuits.errors import NonFiniteError, ParameterError, TrainingError, WidthMismatchError
from featcircuits.train.threads import torch_threads

_SMALL_OPS_MAX = 512
_PARALLEL_WORK = 1 << 24  # multiply-adds per chunk below which one thread is faster

ActivationData = torch.Tensor | Callable[[], Iterable[Any]] | Iterable[Any]


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


_PRODUCT_BLOCK = 1 << 20  # elements of one float64 block of the covariance product (8 MiB)


def _non_finite(index: int, row: int, rows: int, what: str) -> NonFiniteError:
    return NonFiniteError(
        f"activation chunk {index} (rows {row}..{row + rows - 1}) {what}",
        hint="drop or clip the NaN/inf activations before fitting ICA")


def _float64_products(centred: torch.Tensor) -> torch.Tensor:
    """``centredᵀ centred`` ``[d, d]`` computed in float64, in row blocks of at most
    ``_PRODUCT_BLOCK`` elements (a bounded float64 transient).

    The whitening divides by the square root of the covariance's eigenvalues, so an error
    of ``ε λ_max`` in the covariance (a float32 product: ε ≈ 1e-7) is a relative error of
    ``ε λ_max / λ_min`` in the weakest direction: with a mixing of condition number 1e3 it
    made the Amari distance 1.5× scikit-learn's, with 1e4 the fit did not converge
    (docs/ica.md). In float64 the covariance is exact up to the data's own rounding."""
    if centred.dtype == torch.float64:
        return centred.T @ centred
    rows = max(1, _PRODUCT_BLOCK // max(1, centred.shape[1]))
    total = torch.zeros(centred.shape[1], centred.shape[1], dtype=torch.float64,
                        device=centred.device)
    for start in range(0, centred.shape[0], rows):
        block = centred[start:start + rows].double()
        total.addmm_(block.T, block)
    return total


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
            chunk_sum = centred.sum(0)
            chunk_products = _float64_products(centred)
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
