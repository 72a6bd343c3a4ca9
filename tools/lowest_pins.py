"""Print pip constraints pinning the lowest versions pyproject.toml declares for the
libraries whose API featcircuits leans on (``make test-lowest`` installs with them).

    python tools/lowest_pins.py > constraints.txt   # transformers==4.57.3, nnsight==0.8.1, ...

Each pinned requirement must declare a lower bound as ``>=X``; a missing bound is an error
(an undeclared floor cannot be tested). torch is pinned to the CPU wheel the project tests.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PINNED = ("transformers", "nnsight", "tokenizers")
TORCH = "torch==2.13.0"  # the CPU wheel; a looser request pulls a multi-GB CUDA build


def lowest_pins(pyproject: Path) -> list[str]:
    """``name==lowest`` for each of ``PINNED``, read from ``[project] dependencies``."""
    dependencies = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = [TORCH]
    for name in PINNED:
        spec = next((d for d in dependencies if re.match(rf"{name}\s*[<>=!~]", d)), None)
        floor = re.search(r">=\s*([\w.]+)", spec or "")
        if floor is None:
            raise SystemExit(f"pyproject.toml declares no lower bound (>=) for {name}: {spec!r}")
        pins.append(f"{name}=={floor.group(1)}")
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    sys.stdout.write("\n".join(lowest_pins(root / "pyproject.toml")) + "\n")
