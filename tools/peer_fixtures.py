"""Rebuild the peer fixtures: files written by SAELens, dictionary_learning and circuit-tracer
themselves, with what their own code computes on them.

    make fixtures                      # venvs under .peers/, created when missing
    make fixtures PEERS=/work/peers    # reuse existing venvs
    python tools/peer_fixtures.py [--venvs DIR] [--only saelens,dl,ct]

For each peer: a virtualenv ``<venvs>/<name>`` (created when missing: ``torch==2.13.0``
first, so pip never pulls a CUDA build; then the peer at its pinned version; dictionary-learning
with ``--no-deps`` because it pins nnsight < 0.4, plus the few packages its modules import),
then ``tools/peer_fixtures/<peer>_gen.py`` run INSIDE that venv writes one folder per variant.
First ``tools/peer_fixtures/featcircuits_writes.py`` (this environment, with featcircuits)
saves featcircuits dictionaries in SAELens' and circuit-tracer's layouts; each generator
also loads those with the peer's own loader and records what the peer computes
(``featcircuits_<variant>`` folders: the other direction).
The result replaces ``tests/fixtures/peers/<peer>-<version>/``. ``make test`` checks every
fixture without any peer installed (tests/dictionaries/test_peer_fixtures.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "peers"
TORCH = "torch==2.13.0"

# name: (generator, fixture folder prefix, pip steps after torch); the prefix is also the
# folder featcircuits_writes.py fills for the other direction (none for dictionary_learning)
PEERS: dict[str, tuple[str, str, list[list[str]]]] = {
    "saelens": ("saelens_gen.py", "saelens", [["sae-lens==6.54.0"]]),
    "dl": ("dictionary_learning_gen.py", "dictionary_learning",
           [["--no-deps", "dictionary-learning==0.1.0"],
            ["einops", "safetensors", "numpy", "tqdm", "pyyaml"]]),
    "ct": ("circuit_tracer_gen.py", "circuit_tracer", [["circuit-tracer==0.5.0"]]),
}


def ensure_venv(venv: Path, steps: list[list[str]]) -> Path:
    """``venv``'s python, creating and filling the venv when it does not exist."""
    python = venv / "bin" / "python"
    if python.exists():
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q"]
    subprocess.run(pip + ["--upgrade", "pip"], check=True)
    subprocess.run(pip + [TORCH], check=True)
    for step in steps:  # torch stays pinned: every later step sees it as satisfied
        subprocess.run(pip + step + [TORCH], check=True)
    return python


def build(name: str, venvs: Path, written: Path) -> Path:
    """Generate ``name``'s fixtures (and check ``written``'s featcircuits files in the peer);
    return the folder they now live in."""
    generator, prefix, steps = PEERS[name]
    python = ensure_venv(venvs / name, steps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
        subprocess.run([str(python), str(ROOT / "tools" / "peer_fixtures" / generator),
                        str(out), str(written / prefix)], check=True, env=env)
        version = json.loads(next(out.glob("*/expected.json")).read_text())["version"]
        target = FIXTURES / f"{prefix}-{version}"
        for old in FIXTURES.glob(f"{prefix}-*"):
            shutil.rmtree(old)
        shutil.copytree(out, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venvs", type=Path, default=ROOT / ".peers",
                        help="folder of the per-peer virtualenvs (default .peers/)")
    parser.add_argument("--only", default=",".join(PEERS),
                        help=f"comma-separated peers among {', '.join(PEERS)}")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        written = Path(tmp) / "written"  # what featcircuits writes in the peers' layouts
        subprocess.run([sys.executable, str(ROOT / "tools" / "peer_fixtures" /
                                            "featcircuits_writes.py"), str(written)],
                       check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                        "PYTHONPATH": str(ROOT)})
        for name in args.only.split(","):
            if name not in PEERS:
                parser.error(f"unknown peer {name!r}; choose from {', '.join(PEERS)}")
            print(f"{name}: {build(name, args.venvs.resolve(), written).relative_to(ROOT)}")


if __name__ == "__main__":
    main()
