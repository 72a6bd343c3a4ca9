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

Layout: this module holds the public ``fit_ica`` and ``amari_distance``;
``ica_stream`` reads the data in chunks (and computes the moments), ``ica_fit`` holds the
contrasts, the whitening, the fixed-point passes and the checkpoint.
"""

from __future__ import annotations

import math
import operator
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from featcircuits.dictionaries.bases import ICABasis
from featcircuits.errors import NonFiniteError, ParameterError, TrainingError
from featcircuits.seeds import check_seed
from featcircuits.train.ica_fit import (
    ALGORITHMS,
    CONTRASTS,
    _check_resumable,
    _config_tensor,
    _Fit,
    _load_checkpoint,
    _prefix_whitening,
    _save_checkpoint,
    _sym_decorrelation,
    _whitening,
)
from featcircuits.train.ica_stream import (
    ActivationData,
    _ActivationStream,
    _moments,
    _resolve_device,
    _ThreadPlan,
    default_chunk_size,
)
from featcircuits.train.threads import check_threads

# warm_start="auto" never iterates on fewer rows than this (smaller data: no warm start)
AUTO_WARM_START_MIN_PREFIX = 10_000


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
    if warm_start is not None and not (isinstance(warm_start, str) and warm_start == "auto"):
        if _integer(warm_start) is None or _integer(warm_start) < 2:
            raise ParameterError(f"warm_start must be 'auto', None or an integer >= 2 (rows), "
                                 f"got {warm_start!r}", hint="e.g. warm_start=100_000")
        if algorithm != "parallel":
            raise ParameterError("warm_start needs algorithm='parallel'",
                                 hint="drop warm_start for deflation")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ParameterError(f"dtype must be a floating torch dtype, got {dtype!r}",
                             hint="use torch.float32 (or torch.float64)")


def auto_warm_start(n_samples: int, n_components: int, algorithm: str = "parallel"
                    ) -> int | None:
    """The prefix ``warm_start="auto"`` iterates on first: ``max(n / 10, 64 k, 10,000)``
    rows when that is at most half the data and the algorithm is parallel, else ``None``
    (the whole data from the start). The prefix only chooses the starting point of the
    full-data iterations, which run to the same ``tol`` either way."""
    if algorithm != "parallel":
        return None
    prefix = max(n_samples // 10, 64 * n_components, AUTO_WARM_START_MIN_PREFIX)
    return prefix if 2 * prefix <= n_samples else None


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
    warm_start: int | str | None = "auto",
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
            only (cheap partial passes), then continue on all the data (parallel only);
            the full-data iterations still run to ``tol``. ``"auto"`` (default): a prefix of
            ``auto_warm_start(n, k)`` rows (a tenth of the data, at least 10,000 and 64 per
            component) when the data has at least twice that many rows and the algorithm
            is parallel, else none. ``None``: iterate on all the data from the start (what
            scikit-learn does).
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
    check_seed(seed)
    n_components, max_iter = operator.index(n_components), operator.index(max_iter)
    chunk_size = None if chunk_size is None else operator.index(chunk_size)
    auto = isinstance(warm_start, str)
    warm_start = None if warm_start is None or auto else operator.index(warm_start)
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
        if auto:
            warm_start = auto_warm_start(n, n_components, algorithm)
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
        if auto:
            warm_start = auto_warm_start(int(state["n_samples"]), n_components, algorithm)
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

__all__ = ["ALGORITHMS", "AUTO_WARM_START_MIN_PREFIX", "CONTRASTS", "amari_distance",
           "auto_warm_start", "default_chunk_size", "fit_ica"]
