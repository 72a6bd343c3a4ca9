"""Nothing lost: outputs written with the toolkit's writers survive SIGKILL at any moment.

A child process (tests/support/kill_writer.py, forked so that it skips the imports)
rewrites a circuit JSON, a results CSV and a saved dictionary in a loop; it is killed with
SIGKILL at seeded random moments. Afterwards every
target file must be one complete version (byte-identical to what that version's writer
produces), and leftover temporary files must never be read as outputs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from featcircuits import DictionaryLoadError, load_dictionaries, load_dictionary
from featcircuits.graph.io import read_json, write_json
from tests.support.kill_writer import (
    expected_dictionary,
    expected_frame,
    expected_graph,
    run_forked,
    write_version,
)

ROOT = Path(__file__).resolve().parents[2]
KILLS = 12




def _check(out: Path, scratch: Path) -> dict[str, object]:
    """Every output is one complete version; returns what each holds."""
    graph = read_json(out / "circuit.json")
    version = graph.graph["version"]
    write_json(expected_graph(version), scratch / "circuit.json")
    assert (out / "circuit.json").read_bytes() == (scratch / "circuit.json").read_bytes()

    frame = pd.read_csv(out / "results.csv")
    csv_version = int(frame["version"].iloc[0])
    expected_frame(csv_version).to_csv(scratch / "results.csv", index=False)
    assert (out / "results.csv").read_bytes() == (scratch / "results.csv").read_bytes()

    folder = out / "sets" / "resid_out.1"
    dictionary = load_dictionary(folder)
    dictionary_version = dictionary.meta["version"]
    reference = expected_dictionary(dictionary_version)
    for name, tensor in reference.state_dict().items():
        assert torch.equal(dictionary.state_dict()[name], tensor), name
    weights = (folder / "sae_weights.safetensors").read_bytes()
    torn = load_dictionary_version_of(weights) != dictionary_version
    return {"graph": version, "csv": csv_version, "dictionary": dictionary_version,
            "between_renames": torn}


def load_dictionary_version_of(weights: bytes) -> int:
    """Which version's weights a safetensors file holds (compared with each candidate)."""
    from safetensors.torch import load

    tensors = load(weights)
    for version in range(1000):
        if torch.equal(tensors["b_dec"], expected_dictionary(version).b_dec):
            return version
    raise AssertionError("weights of no known version")


def test_sigkill_during_writes_leaves_complete_versions(tmp_path):
    """SIGKILL of a process rewriting a circuit JSON, a results CSV and a dictionary, 12 times
    at seeded random moments → each file is byte-identical to one complete version, stray
    temp files are ignored, and a dictionary killed between its two renames loads as the
    new version (its synced temp weights, proven by the checksum), never as a mix."""
    rng = random.Random(1126)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    seen = []
    for _ in range(KILLS):
        pid = run_forked(out)
        time.sleep(rng.uniform(0.02, 0.4))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        seen.append(_check(out, scratch))
        leftovers = [p for p in out.rglob("*") if p.is_file() and p.name.endswith(".tmp")]
        assert all(p.name.startswith(".") for p in leftovers), leftovers
        # a leftover temp file sits beside the outputs: readers must not pick it up
        (out / "sets" / ".resid_out.2.abc.tmp").write_bytes(b"\x00" * 10)
        assert list(load_dictionaries(out / "sets")) == ["resid_out.1"]
        write_version(out, 0)  # the next run starts from a consistent state
    versions = [s["graph"] for s in seen]
    assert max(versions) > 0, f"the writer was never interrupted mid-loop: {seen}"
    print(seen)


def test_dictionary_between_its_two_renames(tmp_path):
    """A save stopped between its renames (new cfg.json in place, old weights in place, the
    new weights still in the committed staging folder of a dead writer) → loads as the new
    version; with those staged weights damaged → DictionaryLoadError 'checksum mismatch',
    never a mix; the next save rolls the staged set forward and removes the folder."""
    import subprocess

    from featcircuits import save_dictionary
    from featcircuits.writes import _HOST, JOURNAL

    old, new = tmp_path / "old", tmp_path / "new"
    save_dictionary(expected_dictionary(1), old)
    save_dictionary(expected_dictionary(2), new)
    dead = subprocess.Popen(["true"])
    dead.wait()
    torn = tmp_path / "torn"
    staging = torn / f".fc-{_HOST}-{dead.pid}-k3jx.tmp"
    staging.mkdir(parents=True)
    (torn / "cfg.json").write_bytes((new / "cfg.json").read_bytes())
    (torn / "sae_weights.safetensors").write_bytes((old / "sae_weights.safetensors").read_bytes())
    weights = (new / "sae_weights.safetensors").read_bytes()
    (staging / "sae_weights.safetensors").write_bytes(weights)
    (staging / JOURNAL).write_text(json.dumps({"files": ["cfg.json", "sae_weights.safetensors"]}))
    loaded = load_dictionary(torn)
    assert loaded.meta["version"] == 2
    assert torch.equal(loaded.W_dec, expected_dictionary(2).W_dec)
    (staging / "sae_weights.safetensors").write_bytes(weights[:-4] + b"\0\0\0\0")
    with pytest.raises(DictionaryLoadError, match="checksum mismatch"):
        load_dictionary(torn)
    (staging / "sae_weights.safetensors").write_bytes(weights)
    save_dictionary(expected_dictionary(3), torn)
    assert sorted(p.name for p in torn.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    assert load_dictionary(torn).meta["version"] == 3
