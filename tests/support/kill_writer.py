"""Writer for tests/reliability/test_interrupted_writes.py: rewrites three outputs in a
loop, forever.

``python tests/support/kill_writer.py OUT`` writes, for version 0, 1, 2, ...:
``OUT/circuit.json`` (write_json), ``OUT/results.csv`` (atomic_path + DataFrame.to_csv, as
the CLI does) and the dictionary folder ``OUT/sets/resid_out.1`` (save_dictionary). Each
version's content is a pure function of its number (``expected_*`` below), so a checker can
tell which complete version a file holds. Prints ``ready`` after the first full version.
The test forks it from the pytest process (``run_forked``) to skip a fresh interpreter's
imports on every kill.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.files import atomic_path
from featcircuits.graph.io import write_json
from featcircuits.render.examples import example_circuit


def expected_graph(version: int):
    graph = example_circuit()
    graph.graph["version"] = version
    for index, (_u, _v, data) in enumerate(graph.edges(data=True)):
        data["weight"] = float(version) + index / 8
    return graph


def expected_frame(version: int) -> pd.DataFrame:
    rows = 2000  # large enough that a write spans many syscalls
    return pd.DataFrame({"version": [version] * rows, "row": range(rows),
                         "value": [version * 0.5 + r for r in range(rows)]})


def expected_dictionary(version: int) -> SparseAutoencoder:
    generator = torch.Generator().manual_seed(version)
    sae = SparseAutoencoder(64, 256, site="resid_out.1", meta={"version": version})
    with torch.no_grad():
        for tensor in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec):
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    return sae


def write_version(out: Path, version: int) -> None:
    from featcircuits.dictionaries.io import save_dictionary

    write_json(expected_graph(version), out / "circuit.json")
    with atomic_path(out / "results.csv") as tmp:
        expected_frame(version).to_csv(tmp, index=False)
    save_dictionary(expected_dictionary(version), out / "sets" / "resid_out.1")


def main(out: Path, ready=None) -> None:
    """Write versions 0, 1, 2, ... forever; call ``ready()`` after version 0."""
    version = 0
    while True:
        write_version(out, version)
        if version == 0:
            (ready or (lambda: print("ready", flush=True)))()
        version += 1


if __name__ == "__main__":
    main(Path(sys.argv[1]))


def run_forked(out: Path) -> int:
    """Fork a child running ``main(out)``; return its pid once version 0 is written."""
    import os

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_end)
        try:
            main(out, ready=lambda: os.write(write_end, b"ready"))
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        if pipe.read(5) != b"ready":
            raise RuntimeError("the writer died before writing version 0")
    return pid
