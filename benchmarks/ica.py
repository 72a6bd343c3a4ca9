"""Benchmark featcircuits' torch FastICA (featcircuits.train.ica.fit_ica).

(a) in memory: 200k x 128 mixtures of Laplace and uniform sources, featcircuits vs
    scikit-learn's FastICA with the same contrast, tol and max_iter, timed side by side in
    this process. scikit-learn runs three times: its defaults on float64 input (what a
    float64 array gets), its defaults on float32 input (it then computes in float32, but
    whitens by SVD of the data), and its fastest settings (float32, whiten_solver="eigh").
(b) streaming: 5M x 256 activations synthesised chunk by chunk by a generator (the full
    data never exists), on CPU: wall time, throughput and peak resident memory (VmHWM,
    reset before the fit, as a delta over the resident memory at that point) against the
    size of one streamed batch.
(c) source families: 24 sources x 100k samples, float64 data, each family (Laplace,
    uniform, Student-t with 5 degrees of freedom, all three mixed, and the mix under an
    ill-conditioned mixing of condition number 3e3), featcircuits (its defaults: float32
    compute) against scikit-learn's FastICA as normally called (float64 input,
    whiten="unit-variance", logcosh, tol 1e-4): Amari distance to the true mixing side by
    side, the difference (target <= +0.002) and the speed ratio (target >= 5x).

Usage: python benchmarks/ica.py [--quick] [--part a|b|c|all] [--no-sklearn] [--threads N]
       [--sources 24 256]
Timings are wall-clock on whatever machine runs this; the load average is printed with
them because other processes change them a lot.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import time
import warnings

import torch

from featcircuits.train.ica import amari_distance, fit_ica

# the small [k, k] algebra and small chunks on one thread, as when the numbers in docs/ica.md
# were measured (fit_ica's default leaves torch's thread count alone)
SMALL_OPS_THREADS = 1


def _load() -> str:
    return "load avg {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())


def _sources_(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill ``out [m, k]`` in place: first half Laplace, second half uniform (unit var)."""
    half = out.shape[1] // 2
    laplace, uniform = out[:, :half], out[:, half:]
    laplace.uniform_(-0.5, 0.5, generator=generator)
    sign = laplace.sign()
    # |u| = 0.5 would give log(0): keep |u| below it
    laplace.abs_().clamp_(max=0.5 - 2.0**-24).mul_(-2).log1p_().mul_(sign)
    laplace.mul_(-1 / math.sqrt(2))
    uniform.uniform_(-math.sqrt(3), math.sqrt(3), generator=generator)
    return out


def _warm_up() -> None:
    """Load torch's kernels and thread pools before anything is timed."""
    sources = _sources_(torch.empty(4096, 8), torch.Generator().manual_seed(0))
    fit_ica(sources, 8, device="cpu", progress=False, small_ops_threads=SMALL_OPS_THREADS)
    fit_ica(lambda: iter([sources]), 8, device="cpu", progress=False,
            small_ops_threads=SMALL_OPS_THREADS)


def _problem(d_model: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(d_model, d_model, generator=generator)
    offset = torch.randn(d_model, generator=generator)
    return mixing, offset


# ----------------------------------------------------------------------- (a) in memory
def bench_in_memory(n: int, d_model: int, max_iter: int, sklearn: bool) -> None:
    print(f"\n(a) in memory: {n:,} x {d_model}, contrast=logcosh, tol=1e-4, "
          f"max_iter={max_iter}, {torch.get_num_threads()} torch threads")
    mixing, offset = _problem(d_model, seed=1)
    sources = _sources_(torch.empty(n, d_model), torch.Generator().manual_seed(2))
    data = sources @ mixing.T + offset
    del sources
    _warm_up()

    rows = []
    print(f"  featcircuits warm_start=None (float32) ... {_load()}", flush=True)
    start = time.perf_counter()
    ours = fit_ica(data, d_model, contrast="logcosh", tol=1e-4, max_iter=max_iter,
                   device="cpu", warm_start=None, progress=False,
                   small_ops_threads=SMALL_OPS_THREADS)
    ours_time = time.perf_counter() - start
    ours_amari = amari_distance(ours.unmixing, mixing)
    rows.append(("featcircuits fit_ica(warm_start=None)", ours_time, ours.meta["n_iter"],
                 ours_amari))

    print(f"  featcircuits defaults (warm_start='auto') ... {_load()}", flush=True)
    start = time.perf_counter()
    warm = fit_ica(data, d_model, contrast="logcosh", tol=1e-4, max_iter=max_iter,
                   device="cpu", progress=False, small_ops_threads=SMALL_OPS_THREADS)
    warm_time = time.perf_counter() - start
    label = (f"featcircuits defaults: warm_start={warm.meta['warm_start']} "
             f"(+{warm.meta['n_iter_warm_start']} prefix its)")
    rows.append((label, warm_time, warm.meta["n_iter"],
                 amari_distance(warm.unmixing, mixing)))

    if sklearn:
        import numpy as np
        from sklearn.decomposition import FastICA

        for label, dtype, solver in (
                ("scikit-learn defaults, float64 input (svd)", np.float64, "svd"),
                ("scikit-learn defaults, float32 input (svd)", np.float32, "svd"),
                ("scikit-learn float32 input, whiten_solver=eigh", np.float32, "eigh")):
            array = data.numpy().astype(dtype)
            print(f"  {label} ... {_load()}", flush=True)
            model = FastICA(d_model, fun="logcosh", tol=1e-4, max_iter=max_iter,
                            whiten="unit-variance", whiten_solver=solver, random_state=0)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(array)
            elapsed = time.perf_counter() - start
            rows.append((label, elapsed, model.n_iter_,
                         amari_distance(torch.from_numpy(model.components_), mixing)))
            del array

    print(f"\n  {'method':<50} {'wall s':>8} {'iters':>6} {'Amari':>8} "
          f"{'sklearn/ours (defaults)':>24}")
    for label, elapsed, n_iter, amari in rows:
        print(f"  {label:<50} {elapsed:8.2f} {n_iter:6d} {amari:8.4f}", end="")
        print(f" {elapsed / warm_time:12.2f}x" if "scikit" in label else "")
    if sklearn:
        sk_default = rows[2]
        warm_amari = rows[1][3]
        print(f"\n  speed ratio (sklearn defaults, float64 / ours, defaults): "
              f"{sk_default[1] / warm_time:.1f}x (target >= 5x); with warm_start=None: "
              f"{sk_default[1] / ours_time:.1f}x")
        print(f"  Amari ours (defaults) - sklearn defaults: {warm_amari - sk_default[3]:+.4f} "
              f"(target <= +0.01)")


# ------------------------------------------------------------------------ (b) streaming
class SyntheticActivations:
    """A re-readable stream of ``n`` synthetic activations ``[batch_rows, d_model]``.

    Each call returns a fresh iterator; batch ``i`` is rebuilt from seed ``(seed, i)`` in
    blocks of ``block_rows`` (sources, then mixing into the batch in place), so every pass
    sees the same data and only one batch plus one block exists at a time.
    """

    def __init__(self, n: int, d_model: int, batch_rows: int, block_rows: int, seed: int):
        self.n, self.d_model = n, d_model
        self.batch_rows, self.block_rows, self.seed = batch_rows, block_rows, seed
        self.mixing, self.offset = _problem(d_model, seed)

    def __call__(self):
        for index, start in enumerate(range(0, self.n, self.batch_rows)):
            rows = min(self.batch_rows, self.n - start)
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
            batch = torch.empty(rows, self.d_model)
            block = torch.empty(min(self.block_rows, rows), self.d_model)
            for offset in range(0, rows, self.block_rows):
                size = min(self.block_rows, rows - offset)
                sources = _sources_(block[:size], generator)
                torch.matmul(sources, self.mixing.T, out=batch[offset:offset + size])
            del block, sources
            batch += self.offset
            yield batch
            del batch


def _memory_kib() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as handle:
        status = handle.read()
    return {key: int(re.search(rf"{key}:\s+(\d+)", status).group(1))
            for key in ("VmRSS", "VmHWM")}


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def bench_streaming(n: int, d_model: int, batch_rows: int, chunk_size: int, max_iter: int,
                    warm_start: int | None) -> None:
    stream = SyntheticActivations(n, d_model, batch_rows, block_rows=chunk_size, seed=3)
    batch_mib = batch_rows * d_model * 4 / 2**20
    print(f"\n(b) streaming: {n:,} x {d_model} synthesised in batches of {batch_rows:,} rows "
          f"({batch_mib:.0f} MiB), chunk_size={chunk_size:,}, warm_start={warm_start}, "
          f"max_iter={max_iter}, CPU")
    _warm_up()

    exact = _reset_peak()
    baseline = _memory_kib()["VmRSS"]
    print(f"  fit_ica ... {_load()}", flush=True)
    start = time.perf_counter()
    basis = fit_ica(stream, d_model, contrast="logcosh", tol=1e-4, max_iter=max_iter,
                    device="cpu", chunk_size=chunk_size, warm_start=warm_start, progress=True,
                    small_ops_threads=SMALL_OPS_THREADS)
    elapsed = time.perf_counter() - start
    peak_mib = (_memory_kib()["VmHWM"] - baseline) / 1024
    # timed after the fit so that its freed batches cannot inflate the RSS baseline
    print(f"  generator alone, one pass ... {_load()}", flush=True)
    start = time.perf_counter()
    for batch in stream():
        del batch
    generate_time = time.perf_counter() - start
    print(f"  done ... {_load()}")

    k = d_model
    state_mib = (3 * k * d_model + 4 * k * k) * 8 / 2**20  # K, W, g accumulators (float64)
    workspace_mib = chunk_size * (d_model + k) * 4 / 2**20
    warm_rows = basis.meta["n_iter_warm_start"] * min(warm_start or 0, n)
    full_passes = 1 + basis.meta["n_iter"] + 1  # moments + iterations + source statistics
    processed = full_passes * n + warm_rows
    ica_time = elapsed - generate_time * processed / n
    print(f"  iterations: {basis.meta['n_iter']} full passes + "
          f"{basis.meta['n_iter_warm_start']} warm-start passes over {warm_start or 0:,} "
          f"rows; converged={basis.meta['converged']} (final change "
          f"{basis.meta['final_change']:.1e})")
    print(f"  data passes: {full_passes} full (+{warm_rows / n:.2f} in prefixes) = "
          f"{processed:,} activations read")
    print(f"  wall: {elapsed:.1f} s total; generator alone {generate_time:.1f} s per pass")
    print(f"  throughput incl. synthesis: {processed / elapsed:,.0f} activations/s")
    print(f"  throughput of ICA alone (synthesis time subtracted): "
          f"{processed / max(ica_time, 1e-9):,.0f} activations/s")
    print(f"  Amari distance to the true mixing: {amari_distance(basis.unmixing, stream.mixing):.4f}")
    print(f"  peak RSS delta: {peak_mib:.0f} MiB{'' if exact else ' (VmHWM not reset: upper bound)'}"
          f" = {peak_mib / batch_mib:.2f} x one batch ({batch_mib:.0f} MiB); "
          f"workspace {workspace_mib:.0f} MiB, model state {state_mib:.1f} MiB")
    print(f"  target peak <= 1.5 x batch + state = {1.5 * batch_mib + state_mib:.0f} MiB: "
          f"{'met' if peak_mib <= 1.5 * batch_mib + state_mib else 'NOT met'}")


# ------------------------------------------------------------------ (c) source families
def _family_sources(kind: str, n: int, k: int, generator):
    """``[n, k]`` unit-variance sources of one family (a float64 numpy array)."""
    import numpy as np

    if kind == "laplace":
        return generator.laplace(size=(n, k)) / math.sqrt(2)
    if kind == "uniform":
        return generator.uniform(-math.sqrt(3), math.sqrt(3), size=(n, k))
    if kind == "student-t5":
        return generator.standard_t(5, size=(n, k)) / math.sqrt(5 / 3)
    kinds = ("laplace", "uniform", "student-t5")
    return np.concatenate([_family_sources(kinds[i % 3], n, 1, generator) for i in range(k)],
                          axis=1)


def bench_families(n: int, k: int, sklearn: bool) -> None:
    import numpy as np

    print(f"\n(c) source families: {n:,} x {k}, float64 data, logcosh, tol 1e-4; "
          f"{torch.get_num_threads()} torch threads")
    _warm_up()
    cases = [("laplace", None), ("uniform", None), ("student-t5", None), ("mixed", None),
             ("mixed", 3e3)]
    # wall time swings with the machine's load; CPU time (time.process_time) far less
    # ours: fit_ica's defaults (warm_start="auto": "it" is full-data + prefix iterations)
    header = (f"  {'family':<22} {'ours s':>7} {'cpu s':>6} {'it':>5} {'ours Amari':>10} "
              f"{'sk s':>7} {'cpu s':>6} {'it':>3} {'sk Amari':>9} {'Δ Amari':>8} "
              f"{'wall x':>6} {'cpu x':>6}")
    print(header)
    for seed, (kind, condition) in enumerate(cases):
        generator = np.random.default_rng(seed)
        sources = _family_sources(kind, n, k, generator)
        if condition is None:
            mixing = generator.standard_normal((k, k))
        else:
            left, _ = np.linalg.qr(generator.standard_normal((k, k)))
            right, _ = np.linalg.qr(generator.standard_normal((k, k)))
            mixing = left * np.logspace(0, -math.log10(condition), k) @ right
        data = sources @ mixing.T + 3 * generator.standard_normal(k)
        truth = torch.from_numpy(mixing)
        label = kind if condition is None else f"{kind}, condition {condition:g}"
        start, cpu = time.perf_counter(), time.process_time()
        ours = fit_ica(torch.from_numpy(data), k, tol=1e-4, max_iter=200, device="cpu",
                       progress=False, small_ops_threads=SMALL_OPS_THREADS)
        ours_time, ours_cpu = time.perf_counter() - start, time.process_time() - cpu
        ours_amari = amari_distance(ours.unmixing, truth)
        iterations = f"{ours.meta['n_iter']}+{ours.meta['n_iter_warm_start']}"
        line = (f"  {label:<22} {ours_time:7.2f} {ours_cpu:6.2f} {iterations:>5} "
                f"{ours_amari:10.4f}")
        if sklearn:
            from sklearn.decomposition import FastICA

            model = FastICA(k, whiten="unit-variance", tol=1e-4, max_iter=200, random_state=0)
            start, cpu = time.perf_counter(), time.process_time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(data)
            sk_time, sk_cpu = time.perf_counter() - start, time.process_time() - cpu
            sk_amari = amari_distance(torch.from_numpy(model.components_), truth)
            line += (f" {sk_time:7.2f} {sk_cpu:6.2f} {model.n_iter_:3d} {sk_amari:9.4f} "
                     f"{ours_amari - sk_amari:+8.4f} {sk_time / ours_time:5.1f}x "
                     f"{sk_cpu / ours_cpu:5.1f}x"
                     f"  Amari {'met' if ours_amari <= sk_amari + 0.002 else 'NOT met'}, "
                     f"speed (cpu) {'met' if sk_cpu >= 5 * ours_cpu else 'NOT met'}")
        print(line + f"   [{_load()}]", flush=True)


def _limit_threads(threads: int | None):
    """Set torch's threads and (for scikit-learn) the BLAS/OpenMP pools' to ``threads``."""
    import contextlib

    if threads is None:
        return contextlib.nullcontext()
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--part", choices=("a", "b", "c", "both", "all"), default="all",
                        help="both = a and b; all = a, b and c")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn in (a)")
    parser.add_argument("--max-iter", type=int, default=200, help="(a) max_iter")
    parser.add_argument("--stream-max-iter", type=int, default=50, help="(b) max_iter")
    parser.add_argument("--no-warm-start", action="store_true", help="(b) without warm start")
    parser.add_argument("--sources", type=int, nargs="+", default=[24],
                        help="(c) numbers of sources, e.g. --sources 24 256 (default 24)")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and scikit-learn's BLAS (default: torch's)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = _limit_threads(args.threads)
    if not args.child:
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, "
              f"{torch.get_num_threads()} torch threads, python {sys.version.split()[0]}")
    if args.part in ("c", "all"):
        with limits:
            for k in args.sources:
                bench_families(20_000 if args.quick else 100_000, k,
                               sklearn=not args.no_sklearn)
    if args.part in ("a", "both", "all"):
        n, d = (50_000, 64) if args.quick else (200_000, 128)
        with limits:
            bench_in_memory(n, d, args.max_iter, sklearn=not args.no_sklearn)
    if args.part in ("b", "both", "all") and not args.child:
        # a fresh process, so that (a)'s freed memory cannot hide in the RSS baseline
        import subprocess

        command = [sys.executable, os.path.abspath(__file__), "--part", "b", "--child",
                   "--stream-max-iter", str(args.stream_max_iter)]
        command += ["--quick"] * args.quick + ["--no-warm-start"] * args.no_warm_start
        command += [] if args.threads is None else ["--threads", str(args.threads)]
        sys.stdout.flush()
        subprocess.run(command, check=True)
    elif args.part == "b":
        if args.quick:
            n, d, batch, chunk, warm = 500_000, 64, 262_144, 16_384, 50_000
        else:
            n, d, batch, chunk, warm = 5_000_000, 256, 262_144, 16_384, 200_000
        bench_streaming(n, d, batch, chunk, args.stream_max_iter,
                        None if args.no_warm_start else warm)


if __name__ == "__main__":
    main()
