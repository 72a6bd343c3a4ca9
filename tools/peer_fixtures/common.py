"""Shared by the per-peer generators (runs inside each peer's virtualenv: torch, safetensors).

Each generator builds a variant with the peer's own classes and random weights, saves it with
the peer's own save code into ``<out>/<variant>/``, reloads it with the peer's own loader, and
records what that loaded object computes on random inputs in ``expected.safetensors``
(``x``, ``features``, ``reconstruction``; transcoders also ``x_out``, the output with the skip
connection) plus ``expected.json`` (peer, version, variant, class, hook names, the site
featcircuits should read, notes). Nothing here imports featcircuits.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

ROWS = 8


@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int, *, thresholds_negative: bool = True) -> None:
    """Random, non-trivial values for every floating parameter/buffer of ``module``: weights
    ~N(0, 0.3) with per-row norms spread over 0.4..2.5 (non-unit decoder norms), biases
    ~U(-0.3, 0.3), thresholds ~U(-1.5, 1.5) (many negative, wide enough that pre-activations
    fall between a negative threshold and 0) or U(0.05, 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        if not tensor.is_floating_point():
            continue
        short = name.rsplit(".", 1)[-1]
        if "threshold" in name:
            low, high = (-1.5, 1.5) if thresholds_negative else (0.05, 0.5)
            value = torch.rand(tensor.shape, generator=gen) * (high - low) + low
        elif tensor.ndim >= 2:
            value = torch.randn(tensor.shape, generator=gen) * 0.3
            scale = torch.rand(tensor.shape[:-1], generator=gen) * 2.1 + 0.4
            value = value * scale.unsqueeze(-1)
        elif short.startswith("r_mag"):
            value = torch.randn(tensor.shape, generator=gen) * 0.3
        else:
            value = (torch.rand(tensor.shape, generator=gen) - 0.5) * 0.6
        tensor.copy_(value.to(tensor.dtype))


def inputs(d_in: int, seed: int, rows: int = 64) -> torch.Tensor:
    """Candidate inputs ``[rows, d_in]``: N(0.2, 1.5²)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn(rows, d_in, generator=gen) * 1.5 + 0.2


@torch.no_grad()
def stable_rows(x: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor],
                rows: int = ROWS) -> torch.Tensor:
    """The first ``rows`` rows of ``x`` whose set of active features does not change when
    the input moves by 1e-3 relative: no row sits on a threshold or a top-k boundary, so
    float rounding in another implementation cannot flip a feature (no tie dependence)."""
    keep = []
    for i in range(x.shape[0]):
        row = x[i:i + 1]
        base = encode(row) != 0
        if all(torch.equal(base, encode(row * f) != 0) for f in (1 - 1e-3, 1 + 1e-3)):
            keep.append(i)
        if len(keep) == rows:
            break
    if len(keep) < rows:
        raise RuntimeError(f"only {len(keep)} stable rows")
    return x[keep].contiguous()


def record(folder: Path, meta: dict, **tensors: torch.Tensor) -> None:
    """Write ``expected.safetensors`` (float32) and ``expected.json`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()},
              str(folder / "expected.safetensors"))
    (folder / "expected.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


def written_by_featcircuits(root: Path | None) -> list[tuple[Path, dict, torch.Tensor]]:
    """``(folder, written.json, x)`` for each dictionary featcircuits wrote under ``root``
    (``featcircuits_writes.py``); ``[]`` when ``root`` is ``None``."""
    from safetensors.torch import load_file

    if root is None or not root.is_dir():
        return []
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        written = json.loads((folder / "written.json").read_text())
        found.append((folder, written, load_file(str(folder / "inputs.safetensors"))["x"]))
    return found


def record_reverse(folder: Path, written: dict, peer: str, version: str, loaded_by: str,
                   **tensors: torch.Tensor) -> None:
    """Record what the peer computed on a featcircuits-written dictionary, beside its files
    (``inputs.safetensors`` and ``written.json`` are folded into ``expected.*``)."""
    (folder / "inputs.safetensors").unlink()
    (folder / "written.json").unlink()
    record(folder, {"peer": peer, "version": version, "variant": written["variant"],
                    "class": written["class"], "direction": "featcircuits → peer",
                    "hook_name": None, "hook_name_out": None, "site": written["site"],
                    "input_site": written["input_site"], "notes": written["notes"],
                    "saved_by": f"featcircuits ({written['format']})", "loaded_by": loaded_by},
           **tensors)
