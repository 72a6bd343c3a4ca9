"""FastICA in torch (featcircuits.train.ica): accuracy vs scikit-learn, streaming, errors."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from featcircuits.dictionaries import ICABasis, PCABasis, load_dictionary, save_dictionary
from featcircuits.errors import (
    NonFiniteError,
    ParameterError,
    TrainingError,
    WidthMismatchError,
)
from featcircuits.train.ica import amari_distance, auto_warm_start, fit_ica

sklearn_decomposition = pytest.importorskip("sklearn.decomposition")


def _sources(n: int, kinds: list[str], seed: int) -> torch.Tensor:
    """``[n, len(kinds)]`` independent unit-variance sources of the named kinds."""
    generator = torch.Generator().manual_seed(seed)
    columns = []
    for kind in kinds:
        uniform = torch.rand(n, generator=generator, dtype=torch.float64)
        if kind == "laplace":  # super-Gaussian, symmetric
            column = -torch.sign(uniform - 0.5) * torch.log1p(-2 * (uniform - 0.5).abs())
        elif kind == "uniform":  # sub-Gaussian
            column = uniform
        elif kind == "exponential":  # super-Gaussian, skewed
            column = -torch.log1p(-uniform)
        elif kind == "bimodal":  # strongly sub-Gaussian
            column = torch.sign(uniform - 0.5) + 0.3 * torch.randn(
                n, generator=generator, dtype=torch.float64)
        elif kind == "student":  # heavy tails (t with 5 degrees of freedom)
            normal = torch.randn(n, generator=generator, dtype=torch.float64)
            chi2 = torch.randn(n, 5, generator=generator, dtype=torch.float64).square().sum(1)
            column = normal / (chi2 / 5).sqrt()
        else:
            raise AssertionError(kind)
        columns.append((column - column.mean()) / column.std())
    return torch.stack(columns, 1)


def _mixture(n: int, kinds: list[str], d_model: int | None = None, seed: int = 0):
    """Return ``(x [n, d] float32, mixing [d, k] float64)`` with ``x = s Aᵀ + offset``."""
    sources = _sources(n, kinds, seed)
    k = len(kinds)
    generator = torch.Generator().manual_seed(seed + 1000)
    mixing = torch.randn(d_model or k, k, generator=generator, dtype=torch.float64)
    offset = 3 * torch.randn(d_model or k, generator=generator, dtype=torch.float64)
    return (sources @ mixing.T + offset).float(), mixing


def _sklearn_amari(x: torch.Tensor, mixing: torch.Tensor, n_components: int, **kwargs) -> float:
    # whiten_solver="eigh": same whitening as ours (covariance eigh), and much faster than
    # the default SVD of the [d, n] data on a busy 2-core machine
    model = sklearn_decomposition.FastICA(n_components, whiten="unit-variance", random_state=0,
                                          whiten_solver="eigh", **kwargs)
    from threadpoolctl import threadpool_limits  # installed with scikit-learn

    # one BLAS thread: tiny problems run faster (and steadier on a busy machine)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        model.fit(x.double().numpy())
    return amari_distance(torch.from_numpy(model.components_), mixing)


MIXED = ["laplace", "uniform", "exponential", "bimodal", "laplace", "uniform"]


@pytest.mark.parametrize("contrast", ["logcosh", "exp", "cube"])
@pytest.mark.parametrize("algorithm", ["parallel", "deflation"])
def test_matches_sklearn_fastica(contrast, algorithm):
    x, mixing = _mixture(12_000, MIXED, seed=3)
    basis = fit_ica(x, 6, contrast=contrast, algorithm=algorithm, device="cpu", progress=False)
    ours = amari_distance(basis.unmixing, mixing)
    theirs = _sklearn_amari(x, mixing, 6, fun=contrast, algorithm=algorithm, tol=1e-4,
                            max_iter=200)
    assert basis.meta["converged"], basis.meta
    assert ours <= theirs + 0.02, (ours, theirs)
    assert ours < 0.05
    assert basis.meta["contrast"] == contrast and basis.meta["algorithm"] == algorithm
    assert 1 <= basis.meta["n_iter"] <= 200 and basis.meta["n_samples"] == 12_000


def test_sixteen_sources_sub_and_super_gaussian():
    kinds = ["laplace", "uniform", "exponential", "bimodal", "student", "laplace", "uniform",
             "bimodal"] * 2
    x, mixing = _mixture(30_000, kinds, seed=5)
    basis = fit_ica(x, 16, device="cpu", progress=False)
    ours = amari_distance(basis.unmixing, mixing)
    theirs = _sklearn_amari(x, mixing, 16, fun="logcosh", tol=1e-4, max_iter=200)
    assert ours < 0.05, ours
    assert ours <= theirs + 0.02, (ours, theirs)
    # unmixing maps centred x to unit-variance, uncorrelated sources
    sources = basis.encode(x).double()
    covariance = torch.cov(sources.T, correction=0)
    assert torch.allclose(covariance, torch.eye(16, dtype=torch.float64), atol=1e-3)


FAMILIES = ["laplace", "uniform", "student"]  # super-Gaussian, sub-Gaussian, heavy-tailed


def _conditioned_mixing(k: int, condition: float, seed: int) -> torch.Tensor:
    """``[k, k]`` random orthogonal × singular values from 1 down to ``1/condition`` ×
    random orthogonal."""
    generator = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    right, _ = torch.linalg.qr(torch.randn(k, k, generator=generator, dtype=torch.float64))
    singular = torch.logspace(0, -math.log10(condition), k, dtype=torch.float64)
    return left * singular @ right


@pytest.mark.parametrize(("k", "n", "condition"), [(24, 20_000, 3e3), (24, 20_000, 1e4),
                                                    (64, 8_000, None)])
def test_separates_source_families_as_well_as_sklearn(k, n, condition):
    """Laplace, uniform and Student-t (5 dof) sources in equal numbers, float64 data with an
    offset, a Gaussian (condition ~1e2) or deliberately ill-conditioned mixing: within
    +0.002 of scikit-learn's Amari distance (logcosh, tol 1e-4). A float32 covariance lost
    the weak directions here: Amari 0.013 against scikit-learn's 0.0067 for condition 3e3,
    and no convergence in 200 iterations for 1e4."""
    kinds = (FAMILIES * k)[:k]
    sources = _sources(n, kinds, seed=11)
    generator = torch.Generator().manual_seed(12)
    mixing = (torch.randn(k, k, generator=generator, dtype=torch.float64) if condition is None
              else _conditioned_mixing(k, condition, seed=13))
    x = sources @ mixing.T + 3 * torch.randn(k, generator=generator, dtype=torch.float64)
    basis = fit_ica(x, k, tol=1e-4, device="cpu", progress=False)
    ours = amari_distance(basis.unmixing, mixing)
    theirs = _sklearn_amari(x, mixing, k, fun="logcosh", tol=1e-4, max_iter=200)
    assert basis.meta["converged"], basis.meta
    assert theirs < 0.02  # a well-posed problem: scikit-learn separates it
    assert ours <= theirs + 0.002, (ours, theirs)


def test_reconstruction_is_pca_projection_and_exact_at_full_rank():
    kinds = ["laplace", "uniform", "exponential", "bimodal"]
    sources = _sources(8_000, kinds, seed=7)
    generator = torch.Generator().manual_seed(8)
    mixing = torch.randn(10, 4, generator=generator, dtype=torch.float64)
    noise = 0.05 * torch.randn(8_000, 10, generator=generator, dtype=torch.float64)
    x = (sources @ mixing.T + noise + 1.5).float()

    # rows sorted so the first chunk's mean is far from the global mean: the streamed
    # moments must still give the exact mean and covariance
    x = x[torch.argsort(x[:, 0], stable=True)]  # ties keep their order on every machine
    reduced = fit_ica(x, 4, device="cpu", chunk_size=1_000, progress=False)
    assert torch.allclose(reduced.mean.double(), x.double().mean(0), atol=1e-5)
    assert reduced.unmixing.shape == (4, 10) and reduced.mixing.shape == (10, 4)
    assert amari_distance(reduced.unmixing, mixing) < 0.05
    pca = PCABasis.fit(x, 4)
    assert torch.allclose(reduced.decode(reduced.encode(x)), pca.decode(pca.encode(x)),
                          atol=1e-4)
    assert reduced.meta["pca_variance_fraction"] > 0.99

    # 6 of the 10 directions are Gaussian noise, so ICA cannot converge there; the
    # reconstruction is exact whatever the rotation
    with pytest.warns(RuntimeWarning, match="did not converge"):
        full = fit_ica(x, 10, device="cpu", max_iter=20, progress=False)
    assert full.error(x).abs().max() < 1e-4 * x.abs().max()


def _batches(x: torch.Tensor, size: int):
    return lambda: iter(torch.split(x, size))


def test_streaming_matches_in_memory():
    x, mixing = _mixture(12_000, MIXED, seed=11)
    in_memory = fit_ica(x, 6, device="cpu", chunk_size=2_000, progress=False)
    # batches of another size than the chunks: same fixed point, different rounding
    streamed = fit_ica(_batches(x, 1_500), 6, device="cpu", chunk_size=2_000, progress=False)
    assert amari_distance(streamed.unmixing, in_memory.mixing) < 0.02
    assert amari_distance(streamed.unmixing, mixing) < 0.05
    assert streamed.meta["n_samples"] == 12_000
    # same chunk boundaries: the same arithmetic, so the same basis
    reiterable = list(torch.split(x, 2_000))
    same = fit_ica(reiterable, 6, device="cpu", chunk_size=2_000, progress=False)
    assert torch.allclose(same.unmixing, in_memory.unmixing, atol=1e-6)
    assert same.meta["n_iter"] == in_memory.meta["n_iter"]
    # batches [..., d] with leading dims are flattened
    stacked = fit_ica(lambda: iter([x.reshape(6, 2_000, 6)]), 6, device="cpu",
                      chunk_size=2_000, progress=False)
    assert torch.allclose(stacked.unmixing, in_memory.unmixing, atol=1e-6)


def test_warm_start_reaches_the_same_fixed_point():
    x, mixing = _mixture(20_000, MIXED, seed=13)
    plain = fit_ica(x, 6, device="cpu", warm_start=None, progress=False)
    warm = fit_ica(x, 6, device="cpu", warm_start=4_000, progress=False)
    assert plain.meta["n_iter_warm_start"] == 0
    assert warm.meta["n_iter_warm_start"] >= 1
    assert warm.meta["converged"]
    assert warm.meta["n_iter"] <= plain.meta["n_iter"]
    assert amari_distance(warm.unmixing, plain.mixing) < 0.02
    assert amari_distance(warm.unmixing, mixing) < 0.05


def test_auto_warm_start_is_a_tenth_of_large_data_and_none_for_small():
    """The default ``warm_start="auto"``: 20,000 rows get a 10,000-row prefix (the floor),
    19,999 rows and deflation none; the full-data iterations still converge to ``tol``
    and reach the plain fit's fixed point."""
    assert auto_warm_start(1_000_000, 24) == 100_000
    assert auto_warm_start(200_000, 512) == 64 * 512
    assert auto_warm_start(20_000, 6) == 10_000
    assert auto_warm_start(19_999, 6) is None
    assert auto_warm_start(1_000_000, 24, "deflation") is None
    x, mixing = _mixture(20_000, MIXED, seed=13)
    auto = fit_ica(x, 6, device="cpu", progress=False)
    plain = fit_ica(x, 6, device="cpu", warm_start=None, progress=False)
    assert auto.meta["warm_start"] == 10_000 and auto.meta["n_iter_warm_start"] >= 1
    assert auto.meta["converged"]
    assert amari_distance(auto.unmixing, plain.mixing) < 0.02
    assert amari_distance(auto.unmixing, mixing) < 0.05
    small = fit_ica(x[:19_999], 6, device="cpu", progress=False)
    assert small.meta["warm_start"] is None and small.meta["n_iter_warm_start"] == 0


def test_deterministic_under_seed():
    x, _ = _mixture(6_000, MIXED, seed=17)
    first = fit_ica(x, 6, seed=4, device="cpu", progress=False)
    second = fit_ica(x, 6, seed=4, device="cpu", progress=False)
    assert torch.equal(first.unmixing, second.unmixing)
    assert torch.equal(first.mixing, second.mixing)
    assert first.meta == second.meta
    # float64 input is converted chunk by chunk (and centred in place): same arithmetic;
    # numpy arrays and numpy integers are accepted
    import numpy as np

    converted = fit_ica(x.double().numpy(), np.int64(6), seed=np.int64(4), device="cpu",
                        progress=False)
    assert torch.equal(converted.unmixing, first.unmixing)


def test_thread_count_is_an_argument_and_restored(monkeypatch):
    """fit_ica never changes torch's process-wide thread count unless asked
    (``small_ops_threads``), and then only around its small blocks, restoring it."""
    x, _ = _mixture(3_000, MIXED, seed=23)
    before = torch.get_num_threads()
    calls: list[int] = []
    real = torch.set_num_threads

    def spy(n: int) -> None:
        calls.append(n)
        real(n)

    monkeypatch.setattr(torch, "set_num_threads", spy)
    untouched = fit_ica(x, 6, seed=1, device="cpu", progress=False)
    assert calls == [] and torch.get_num_threads() == before
    other = 2 if before == 1 else 1
    asked = fit_ica(x, 6, seed=1, device="cpu", progress=False, small_ops_threads=other)
    assert other in calls and calls[-1] == before and torch.get_num_threads() == before
    assert amari_distance(asked.unmixing, untouched.mixing) < 1e-3  # same fixed point
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ParameterError, match="small_ops_threads"):
            fit_ica(x, 6, device="cpu", progress=False, small_ops_threads=bad)


def test_components_ordered_by_kurtosis_and_signed_by_skewness():
    kinds = ["exponential", "uniform", "laplace", "bimodal", "exponential"]
    x, _ = _mixture(20_000, kinds, seed=19)
    basis = fit_ica(x, 5, device="cpu", progress=False)
    sources = basis.encode(x).double()
    centred = sources - sources.mean(0)
    skew = (centred**3).mean(0) / centred.var(0, unbiased=False) ** 1.5
    kurt = (centred**4).mean(0) / centred.var(0, unbiased=False) ** 2 - 3
    assert torch.allclose(kurt, torch.tensor(basis.meta["excess_kurtosis"],
                                             dtype=torch.float64), atol=1e-3)
    assert (kurt.abs()[:-1] >= kurt.abs()[1:] - 1e-9).all()
    # both exponential sources (skewness 2) come out with positive skewness
    assert int((skew > 1.5).sum()) == 2 and int((skew < -1.5).sum()) == 0


def test_whiten_false_on_white_data():
    x, mixing = _mixture(10_000, MIXED, seed=23)
    pca = PCABasis.fit(x)
    white = pca.encode(x) / pca.explained_variance.sqrt()
    # the true mixing of the whitened data: diag(λ^-1/2) Vᵀ A
    white_mixing = (pca.encoder.double() / pca.explained_variance.double().sqrt()[:, None]) \
        @ mixing
    basis = fit_ica(white, 6, whiten=False, device="cpu", progress=False)
    assert torch.equal(basis.mean, torch.zeros(6))
    assert amari_distance(basis.unmixing, white_mixing) < 0.05
    with pytest.raises(ParameterError, match="whiten=False"):
        fit_ica(white, 3, whiten=False, device="cpu", progress=False)


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    x, _ = _mixture(8_000, MIXED, seed=29)
    reference = fit_ica(x, 6, device="cpu", progress=False)
    assert reference.meta["n_iter"] > 3
    path = tmp_path / "ica.pt"
    with pytest.warns(RuntimeWarning, match="did not converge"):
        partial = fit_ica(x, 6, device="cpu", max_iter=3, checkpoint_path=path, progress=False)
    assert not partial.meta["converged"] and partial.meta["n_iter"] == 3
    state = torch.load(path, weights_only=True)
    assert int(state["full_iteration"]) == 3
    assert all(isinstance(value, torch.Tensor) for value in state.values())
    resumed = fit_ica(x, 6, device="cpu", checkpoint_path=path, progress=False)
    assert resumed.meta["converged"]
    assert resumed.meta["n_iter"] == reference.meta["n_iter"]
    assert torch.allclose(resumed.unmixing, reference.unmixing, atol=1e-6)
    assert torch.allclose(resumed.mixing, reference.mixing, atol=1e-6)
    with pytest.raises(TrainingError, match="contrast=logcosh"):
        fit_ica(x, 6, contrast="cube", device="cpu", checkpoint_path=path, progress=False)
    with pytest.raises(WidthMismatchError, match="width 5 but this fit has d_model=6"):
        fit_ica(_batches(x[:, :5], 1_000), 6, device="cpu", checkpoint_path=path,
                progress=False)


class _Crash(Exception):
    pass


def _crashing_stream(x: torch.Tensor, size: int, crash_at_call: int):
    """A stream whose ``crash_at_call``-th read raises (a killed process, in effect)."""
    calls = []

    def read():
        calls.append(1)
        if len(calls) == crash_at_call:
            raise _Crash
        return iter(torch.split(x, size))

    return read


@pytest.mark.parametrize(("settings", "crash_at_call"), [
    ({"algorithm": "deflation"}, 5),  # moments, 3 iterations of component 0, crash
    ({"warm_start": 2_000}, 5),  # moments, prefix moments, 2 warm-start iterations, crash
    ({"warm_start": 2_000}, 7),  # ... 3 warm-start and 1 full-data iteration, crash
])
def test_checkpoint_resume_after_a_crash(tmp_path, settings, crash_at_call):
    x, _ = _mixture(6_000, MIXED[:4], seed=31)
    options = dict(device="cpu", chunk_size=1_000, progress=False, **settings)
    reference = fit_ica(_batches(x, 1_000), 4, **options)
    path = tmp_path / "ica.pt"
    with pytest.raises(_Crash):
        fit_ica(_crashing_stream(x, 1_000, crash_at_call), 4, checkpoint_path=path, **options)
    state = torch.load(path, weights_only=True)
    if "component" in state:
        done = int(state["component_iterations"].sum()) + int(state["full_iteration"])
        assert done == crash_at_call - 2 and int(state["component"]) < 4
    else:
        done = int(state["warm_iteration"]) + int(state["full_iteration"])
        assert done == crash_at_call - 3
    resumed = fit_ica(_batches(x, 1_000), 4, checkpoint_path=path, **options)
    assert torch.allclose(resumed.unmixing, reference.unmixing, atol=1e-6)
    assert resumed.meta["n_iter"] == reference.meta["n_iter"]
    assert resumed.meta["n_iter_warm_start"] == reference.meta["n_iter_warm_start"]


def test_basis_is_a_dictionary_that_round_trips(tmp_path):
    x, _ = _mixture(5_000, MIXED, seed=37)
    basis = fit_ica(x, 6, device="cpu", site="resid_out.1", progress=False)
    assert isinstance(basis, ICABasis)
    assert basis.site == "resid_out.1" and basis.n_features == 6 and basis.d_model == 6
    loaded = load_dictionary(save_dictionary(basis, tmp_path / "ica"))
    assert isinstance(loaded, ICABasis)
    assert torch.allclose(loaded.encode(x), basis.encode(x))
    assert torch.allclose(loaded.decode(basis.encode(x)), basis.decode(basis.encode(x)))
    for key in ("n_iter", "converged", "contrast", "n_samples"):
        assert loaded.meta[key] == basis.meta[key]


def test_non_finite_data_names_the_chunk():
    x, _ = _mixture(5_000, MIXED, seed=41)
    x[2_500, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="chunk 2 .rows 2000..2999"):
        fit_ica(x, 6, device="cpu", chunk_size=1_000, progress=False)
    x[2_500, 3] = float("inf")
    with pytest.raises(NonFiniteError, match="chunk 2 "):
        fit_ica(_batches(x, 1_000), 6, device="cpu", chunk_size=1_000, progress=False)


def test_non_finite_in_a_later_pass_names_the_chunk():
    x, _ = _mixture(4_000, MIXED, seed=43)
    bad = x.clone()
    bad[3_100, 0] = float("inf")
    calls = []

    def changing():
        calls.append(1)
        return iter(torch.split(x if len(calls) == 1 else bad, 1_000))

    with pytest.raises(NonFiniteError, match="chunk 3 "):
        fit_ica(changing, 6, device="cpu", chunk_size=1_000, progress=False)


def test_bad_inputs_raise_clear_errors():
    x, _ = _mixture(2_000, MIXED, seed=47)
    with pytest.raises(TrainingError, match="empty"):
        fit_ica(torch.zeros(0, 6), 2, device="cpu", progress=False)
    with pytest.raises(TrainingError, match="empty"):
        fit_ica(lambda: iter([]), 2, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="n_components=7 exceeds d_model=6"):
        fit_ica(x, 7, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="n_components=7 exceeds d_model=6"):
        fit_ica(_batches(x, 500), 7, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="positive integer"):
        fit_ica(x, 0, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="logcosh, exp, cube"):
        fit_ica(x, 3, contrast="tanh", device="cpu", progress=False)
    with pytest.raises(ParameterError, match="parallel, deflation"):
        fit_ica(x, 3, algorithm="symmetric", device="cpu", progress=False)
    with pytest.raises(ParameterError, match="one-shot iterator"):
        fit_ica(iter(torch.split(x, 500)), 3, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="tol"):
        fit_ica(x, 3, tol=0, device="cpu", progress=False)
    with pytest.raises(ParameterError, match="warm_start needs algorithm='parallel'"):
        fit_ica(x, 3, algorithm="deflation", warm_start=100, device="cpu", progress=False)
    changing = iter([[x], [x[:1_000]]])
    with pytest.raises(TrainingError, match="same batches"):
        fit_ica(lambda: iter(next(changing)), 3, device="cpu", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ParameterError, match="CUDA is not available"):
            fit_ica(x, 3, device="cuda", progress=False)


def test_amari_distance():
    mixing = torch.randn(5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    inverse = torch.linalg.inv(mixing)
    permuted = torch.diag(torch.tensor([2.0, -1, 0.5, 3, -4], dtype=torch.float64)) \
        @ inverse[[3, 1, 4, 0, 2]]
    assert amari_distance(inverse, mixing) < 1e-12
    assert amari_distance(permuted, mixing) < 1e-12
    assert amari_distance(torch.ones(5, 5), torch.eye(5)) == pytest.approx(1.0)
    noisy = inverse + 0.1 * torch.randn(5, 5, generator=torch.Generator().manual_seed(1),
                                        dtype=torch.float64)
    assert 0.0 < amari_distance(noisy, mixing) < 1.0
    with pytest.raises(ParameterError, match="square"):
        amari_distance(torch.ones(3, 5), torch.ones(5, 2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():  # pragma: no cover - runs only where a GPU exists
    x, mixing = _mixture(20_000, MIXED, seed=53)
    cpu = fit_ica(x, 6, device="cpu", progress=False)
    gpu = fit_ica(x, 6, device="cuda", progress=False)
    assert gpu.unmixing.device.type == "cpu"
    assert amari_distance(gpu.unmixing, cpu.mixing) < 0.02
    assert amari_distance(gpu.unmixing, mixing) < 0.05


def test_non_convergence_warns_and_reports_the_change():
    x, _ = _mixture(4_000, MIXED, seed=59)
    for algorithm in ("parallel", "deflation"):
        with pytest.warns(RuntimeWarning, match="did not converge in max_iter=1"):
            basis = fit_ica(x, 6, algorithm=algorithm, max_iter=1, device="cpu",
                            progress=False)
        assert not basis.meta["converged"] and basis.meta["n_iter"] == 1
        assert basis.meta["final_change"] >= 1e-4


def test_hitting_max_iter_warns_and_is_recorded(tmp_path):
    """A fit stopped at max_iter says so (warning naming max_iter and the last change vs tol)
    and its saved basis records converged=False; a converging fit records converged=True."""
    x, _ = _mixture(4_000, MIXED, seed=31)
    with pytest.warns(RuntimeWarning, match=r"max_iter=2 .*last change .* >= tol=0.0001"):
        stopped = fit_ica(x, 6, device="cpu", max_iter=2, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning when it converges
        converged = fit_ica(x, 6, device="cpu", progress=False)
    for name, basis, expected in (("stopped", stopped, False), ("converged", converged, True)):
        save_dictionary(basis, tmp_path / name)
        meta = load_dictionary(tmp_path / name).meta
        assert meta["converged"] is expected, meta
        assert meta["n_iter"] == basis.meta["n_iter"] and meta["max_iter"] == basis.meta["max_iter"]
        assert meta["final_change"] < meta["tol"] if expected else meta["final_change"] >= meta["tol"]
    assert stopped.meta["n_iter"] == 2 and 2 < converged.meta["n_iter"] <= 200


def test_fit_ica_cli_prints_and_saves_non_convergence(tmp_path, capsys):
    """`featcircuits fit-ica --max-iter 1` prints converged: False and a warning naming
    --max-iter and --tol, and its cfg.json records converged=false."""
    from featcircuits.cli.main import main

    with pytest.warns(RuntimeWarning, match="did not converge"):
        code = main(["--quiet", "fit-ica", "--site", "resid_out.1", "--n-tokens", "400",
                     "--n-components", "8", "--max-iter", "1", "--eval-texts", "0",
                     "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "converged: False" in captured.out
    assert "stopped at --max-iter 1 without converging" in captured.err
    assert "--tol" in captured.err
    meta = load_dictionary(tmp_path).meta
    assert meta["converged"] is False and meta["n_iter"] == 1
