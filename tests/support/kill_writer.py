"""Writer for tests/reliability/test_interrupted_*.py: rewrites outputs in a loop, forever.

``python tests/support/kill_writer.py OUT [WRITER]`` writes, for version 0, 1, 2, ...:
without ``WRITER``, ``OUT/circuit.json`` (write_json), ``OUT/results.csv`` (atomic_path +
DataFrame.to_csv, as the CLI does) and the dictionary folder ``OUT/sets/resid_out.1``
(save_dictionary); with ``WRITER`` one multi-file set of ``WRITERS``: ``tables``
(write_tables: ``OUT/c_nodes.csv``, ``c_edges.csv``, ``c_graph.json``), ``dictionary``
(save_dictionary: ``OUT/sae/cfg.json`` + weights) or ``ioi`` (IOIResult.write:
``OUT/ioi/results.csv`` + ``curves.png``). Each version's content is a pure function of its
number (``expected_*`` below), so a checker can tell which complete version a file holds.
Prints ``ready`` after the first full version. The tests fork it from the pytest process
(``run_forked``) to skip a fresh interpreter's imports on every kill.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import torch

from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.graph.io import write_json, write_tables
from featcircuits.render.examples import example_circuit
from featcircuits.writes import atomic_path


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


def expected_results(version: int) -> pd.DataFrame:
    """An IOI patching results frame (one site, two bases, six points each)."""
    rows = []
    for site in ("resid_out.1",):
        for basis in ("sae", "pca"):
            for point in range(6):
                rows.append({"site": site, "basis": basis, "n_features": 2 ** point,
                             "edit_magnitude": 0.5 * point + version,
                             "kl": (version + 1) / (point + 1.5),
                             "features": list(range(point)), "version": version})
    return pd.DataFrame(rows)


def write_tables_version(out: Path, version: int) -> None:
    write_tables(expected_graph(version), out / "c_")


def write_dictionary_version(out: Path, version: int) -> None:
    from featcircuits.dictionaries.io import save_dictionary

    save_dictionary(expected_dictionary(version), out / "sae")


def write_ioi_version(out: Path, version: int) -> None:
    from featcircuits.experiments.ioi import IOIResult

    IOIResult(expected_results(version), pd.DataFrame(), pd.DataFrame(),
              f"version {version}").write(out / "ioi")


#: the multi-file writers, each writing one set per version (see the module docstring)
WRITERS = {"tables": write_tables_version, "dictionary": write_dictionary_version,
           "ioi": write_ioi_version}


def write_version(out: Path, version: int) -> None:
    from featcircuits.dictionaries.io import save_dictionary

    write_json(expected_graph(version), out / "circuit.json")
    with atomic_path(out / "results.csv") as tmp:
        expected_frame(version).to_csv(tmp, index=False)
    save_dictionary(expected_dictionary(version), out / "sets" / "resid_out.1")


def main(out: Path, ready=None, writer: str | None = None) -> None:
    """Write versions 0, 1, 2, ... forever (all three outputs, or ``WRITERS[writer]``);
    call ``ready()`` after version 0."""
    write = write_version if writer is None else WRITERS[writer]
    version = 0
    while True:
        write(out, version)
        if version == 0:
            (ready or (lambda: print("ready", flush=True)))()
        version += 1


if __name__ == "__main__":
    main(Path(sys.argv[1]), writer=sys.argv[2] if len(sys.argv) > 2 else None)


def run_forked(out: Path, writer: str | None = None) -> int:
    """Fork a child running ``main(out, writer=writer)``; return its pid once version 0 is
    written."""
    import os

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns
        os.close(read_end)
        try:
            main(out, ready=lambda: os.write(write_end, b"ready"), writer=writer)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        if pipe.read(5) != b"ready":
            raise RuntimeError("the writer died before writing version 0")
    return pid
