"""Peak RSS of the IOI patching experiment as the number of prompt pairs grows.

    nice python benchmarks/memory.py [--prompts 100 1000 2000] [--max-memory 512MB]
                                     [--mmap-threshold BYTES]

Each size runs ``featcircuits ioi --method attribution --layers 2 --bases sae-sparse``'s
library call (``run_ioi_patching``) on ``ioi_prompt_pairs(n, corruptions=("abc",))`` in a
fresh child process and reads the child's own peak RSS (``getrusage``). Target: the peak at
the largest size within 10 % of the peak at the smallest, under the budget given.
``--mmap-threshold`` runs the children with glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at that
many bytes (default: glibc's dynamic threshold; docs/memory.md says why it matters).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, time
from featcircuits import load_model
from featcircuits.engine import RunSettings
from featcircuits.engine.memory import peak_rss
from featcircuits.experiments import run_ioi_patching
from featcircuits.tasks.ioi import ioi_prompt_pairs, write_prompts
n, budget, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
model = load_model("tiny")
write_prompts(ioi_prompt_pairs(n, corruptions=("abc",), tokenizer=model.tokenizer), path)
start = time.perf_counter()
run_ioi_patching(model, prompts=path, n_prompts=n, layers=[2], bases=["sae-sparse"],
                 settings=RunSettings(max_memory=budget, progress=False))
print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss": peak_rss()}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", nargs="+", type=int, default=[100, 1000, 2000])
    parser.add_argument("--max-memory", default="512MB")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="glibc MALLOC_MMAP_THRESHOLD_ for the children (bytes)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    allocator = ("glibc's dynamic mmap threshold" if args.mmap_threshold is None
                 else f"MALLOC_MMAP_THRESHOLD_={args.mmap_threshold}")
    print(f"load {os.getloadavg()}; budget {args.max_memory}; {allocator}")
    peaks = {}
    with tempfile.TemporaryDirectory() as folder:
        for n in args.prompts:
            process = subprocess.run(
                [sys.executable, "-c", CHILD, str(n), args.max_memory,
                 str(Path(folder) / f"ioi_{n}.jsonl")],
                capture_output=True, text=True, env=env, check=True)
            result = json.loads(process.stdout.strip().splitlines()[-1])
            peaks[n] = result["peak_rss"]
            print(f"{n:>6} prompt pairs: {result['seconds']:7.1f} s, peak RSS "
                  f"{result['peak_rss'] / 1024**2:7.1f} MiB", flush=True)
    low, high = min(args.prompts), max(args.prompts)
    growth = peaks[high] / peaks[low] - 1
    print(f"{'met ' if growth <= 0.10 else 'MISS'} peak RSS at {high} within 10 % of {low}: "
          f"{100 * growth:+.1f} %; load {os.getloadavg()}")


if __name__ == "__main__":
    main()
