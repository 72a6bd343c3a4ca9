"""GPU checks and timings, side by side with the CPU in one run (prints numbers; not a test).

    python benchmarks/gpu.py [--part placement ica train toolkit scale] [--out DIR]

ica:     torch FastICA on CUDA vs the same fit on CPU (200k x 128 and 1M x 256, Laplace/uniform
         sources): wall time, Amari distance of each; then a fit streamed in chunks on CUDA.
train:   SAE trainer steps per second on CUDA vs CPU (d_model 512, 4096 features, batch 4096).
toolkit: the bundled model and dictionaries on CUDA: IOI patching results vs the CPU run
         (max abs difference of every numeric column), the same run twice (determinism),
         bf16, and an attribution circuit on CUDA vs CPU.
scale:   benchmarks/scale.py (Pythia-70M-shaped model, 18 SAEs of 32,768 features) on CUDA in
         float32 and bfloat16 and on the CPU, each in its own process; the steps' wall time
         and peak GPU memory side by side (``--scale-small``: the reduced --small run).
The machine has to have a CUDA device; nothing here downloads anything.
"""

from __future__ import annotations

import argparse
import math
import time
import traceback
import warnings

import torch

warnings.filterwarnings("ignore")


def _sources(n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    half = d // 2
    laplace = torch.distributions.Laplace(0.0, 1.0).sample((n, half))
    uniform = (torch.rand(n, d - half, generator=generator) - 0.5) * math.sqrt(12)
    sources = torch.cat([laplace, uniform], dim=1)
    mixing = torch.randn(d, d, generator=generator)
    return sources @ mixing.T, mixing


def part_ica() -> None:
    from featcircuits.train.ica import amari_distance, fit_ica

    torch.manual_seed(0)
    data, mixing = _sources(200_000, 128, 0)
    times = {}
    for device in ("cuda", "cpu"):
        fit_ica(data[:20_000], 8, device=device, progress=False, small_ops_threads=1)  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        basis = fit_ica(data, 128, device=device, progress=False, small_ops_threads=1)
        if device == "cuda":
            torch.cuda.synchronize()
        times[device] = time.perf_counter() - start
        amari = amari_distance(basis.unmixing, mixing)
        print(f"ica 200k x 128 on {device}: {times[device]:.2f} s, Amari {float(amari):.4f}")
    print(f"ica speed-up cuda vs cpu (same code): {times['cpu'] / times['cuda']:.1f}x")

    big, big_mixing = _sources(1_000_000, 256, 1)
    for device in ("cuda", "cpu"):
        start = time.perf_counter()
        basis = fit_ica(big, 256, device=device, max_iter=50, progress=False,
                        small_ops_threads=1)
        if device == "cuda":
            torch.cuda.synchronize()
        times[device] = time.perf_counter() - start
        print(f"ica 1M x 256 on {device}: {times[device]:.2f} s, "
              f"Amari {float(amari_distance(basis.unmixing, big_mixing)):.4f}")
    print(f"ica speed-up cuda vs cpu (same code): {times['cpu'] / times['cuda']:.1f}x")

    chunk = 250_000
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    basis = fit_ica(lambda: (big[i:i + chunk] for i in range(0, len(big), chunk)), 256,
                    device="cuda", chunk_size=chunk, max_iter=20, progress=False,
                    small_ops_threads=1)
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    print(f"ica streamed 1M x 256 in chunks of {chunk:,} on cuda (max_iter 20): {wall:.1f} s, "
          f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB, "
          f"Amari {float(amari_distance(basis.unmixing, big_mixing)):.4f}")


def part_train() -> None:
    from featcircuits.train.sae import SAETrainer

    d_model, n_features, batch = 512, 4096, 4096
    for device in ("cuda", "cpu"):
        steps = 200 if device == "cuda" else 10
        trainer = SAETrainer(d_model, n_features, l1_coefficient=1e-3, steps=steps,
                             resample_dead_every=None, device=device)
        data = torch.randn(batch, d_model)
        start = time.perf_counter()
        trainer.fit(lambda step, data=data: data, log_every=10_000, progress=False)
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
        print(f"sae trainer on {device}: {steps / wall:.1f} steps/s "
              f"(d_model {d_model}, {n_features} features, batch {batch})")


def part_placement() -> None:
    """Where the model's weights and activations land for device='cpu' and 'cuda'."""
    from transformers import AutoModelForCausalLM

    from featcircuits import load_model, zoo_path
    from featcircuits.model.loading import underlying_module

    plain = AutoModelForCausalLM.from_pretrained(str(zoo_path("tiny")))
    print("AutoModelForCausalLM.from_pretrained ->", next(plain.parameters()).device)
    for device in ("cpu", "cuda"):
        model = load_model("tiny", device=device)
        with model.trace(torch.tensor([[1, 2, 3]])):
            hidden = model.gpt_neox.layers[0].output.save()
        print(f"load_model(device={device!r}): weights on "
              f"{next(underlying_module(model).parameters()).device}, activations on "
              f"{hidden.device}")


def part_toolkit(out: str) -> None:
    """Every command runs as its own process, all at once (the machine has many cores)."""
    import subprocess
    import sys

    import pandas as pd

    ioi = ["ioi", "--n-prompts", "8", "--layers", "1"]
    commands = {
        "ioi cpu": [*ioi, "--device", "cpu", "--out", f"{out}/ioi_cpu"],
        "ioi cuda": [*ioi, "--device", "cuda", "--out", f"{out}/ioi_cuda"],
        "ioi cuda again": [*ioi, "--device", "cuda", "--out", f"{out}/ioi_cuda2"],
        "ioi cuda bf16": [*ioi, "--device", "cuda", "--dtype", "bfloat16",
                          "--out", f"{out}/ioi_bf16"],
        "circuit parens cuda": ["circuit", "parens", "--device", "cuda",
                                "--out", f"{out}/parens_cuda"],
        "circuit parens cuda bf16": ["circuit", "parens", "--device", "cuda", "--dtype",
                                     "bfloat16", "--out", f"{out}/parens_bf16"],
        "dashboard cuda": ["dashboard", "--site", "resid_out.2", "--feature", "27",
                           "--n-texts", "50", "--device", "cuda", "-o", f"{out}/f27.html"],
        "train-sae cuda": ["train-sae", "--site", "resid_out.1", "--steps", "300",
                           "--device", "cuda", "--out", f"{out}/sae1"],
        "fit-ica cuda": ["fit-ica", "--site", "resid_out.1", "--device", "cuda",
                         "--out", f"{out}/ica1"],
    }
    start = time.perf_counter()
    running = {name: subprocess.Popen([sys.executable, "-m", "featcircuits", args[0], "--quiet",
                                       *args[1:]], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, args in commands.items()}
    codes = {}
    for name, process in running.items():
        stdout, stderr = process.communicate()
        codes[name] = process.returncode
        print(f"== {name}: rc {process.returncode} ({time.perf_counter() - start:.0f} s "
              "since start)")
        print(stdout[-700:] if process.returncode == 0 else stderr[-2500:])

    def table(name: str) -> pd.DataFrame:
        folder = commands[name][commands[name].index("--out") + 1]
        return pd.read_csv(f"{folder}/results.csv") if codes[name] == 0 else pd.DataFrame()

    cpu, gpu, gpu2, bf16 = (table(n) for n in ("ioi cpu", "ioi cuda", "ioi cuda again",
                                                "ioi cuda bf16"))
    if len(cpu) and len(gpu):
        numeric = [c for c in cpu.columns if pd.api.types.is_float_dtype(cpu[c])]
        print("ioi max |cpu - cuda| per column:",
              (cpu[numeric] - gpu[numeric]).abs().max().round(6).to_dict())
    if len(gpu) and len(gpu2):
        print("ioi cuda twice: identical results.csv:", gpu.equals(gpu2))
    if len(bf16) and len(gpu):
        print("ioi bf16 vs fp32 on cuda: max |kl diff|",
              float((bf16["kl"] - gpu["kl"]).abs().max()), " max kl",
              float(gpu["kl"].max()))


def part_scale(small: bool) -> None:
    """benchmarks/scale.py on CUDA (float32, bfloat16) and on the CPU, side by side."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).with_name("scale.py")
    runs = {"cuda float32": ["--device", "cuda", "--dtype", "float32"],
            "cuda bfloat16": ["--device", "cuda", "--dtype", "bfloat16"],
            "cpu float32": ["--device", "cpu", "--dtype", "float32"]}
    line = re.compile(r"^  (?P<step>.+?)\s+(?P<seconds>[0-9.]+) s  cpu .*?peak RSS\s+"
                      r"(?P<rss>[0-9.]+) GiB(?:  GPU\s+(?P<gpu>[0-9.]+) GiB)?")
    steps: dict[str, dict[str, str]] = {}
    for name, flags in runs.items():
        command = [sys.executable, str(script), *flags, *(["--small"] if small else [])]
        process = subprocess.run(command, capture_output=True, text=True, check=False)
        print(f"== scale {name}: rc {process.returncode}")
        print(process.stdout[-3000:] if process.returncode == 0 else process.stderr[-2500:])
        for text in process.stdout.splitlines():
            match = line.match(text)
            if match:
                cell = f"{float(match['seconds']):8.1f} s"
                if match["gpu"]:
                    cell += f" {float(match['gpu']):5.2f} GiB"
                steps.setdefault(match["step"].strip(), {})[name] = cell
    print(f"{'step':<40}" + "".join(f"{name:>22}" for name in runs))
    for step, cells in steps.items():
        print(f"{step:<40}" + "".join(f"{cells.get(name, '-'):>22}" for name in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", nargs="+", default=["placement", "ica", "train", "toolkit"],
                        choices=["placement", "ica", "train", "toolkit", "scale"])
    parser.add_argument("--scale-small", action="store_true",
                        help="scale part: the reduced run of benchmarks/scale.py --small")
    parser.add_argument("--out", default="out/gpu")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    for part in args.part:
        start = time.perf_counter()
        try:
            {"placement": part_placement, "ica": part_ica, "train": part_train,
             "toolkit": lambda: part_toolkit(args.out),
             "scale": lambda: part_scale(args.scale_small)}[part]()
        except Exception:  # noqa: BLE001 -- report and go on to the next part
            traceback.print_exc()
        print(f"[{part} took {time.perf_counter() - start:.1f} s]", flush=True)


if __name__ == "__main__":
    main()
