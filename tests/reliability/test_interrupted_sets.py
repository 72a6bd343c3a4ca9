"""Nothing mixed: multi-file outputs (circuit tables, a dictionary folder, IOI results) are
written as sets (featcircuits.writes.atomic_files), so a kill at any moment leaves the old
complete set or the new complete set, read back with the toolkit's own readers.

The slow tests SIGKILL a forked writer (tests/support/kill_writer.py) at seeded random
moments, 24 times per writer; the fast ones stop a forked writer deterministically at
every fsync and rename of one write. After each kill the next write must leave no staging
folder behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from featcircuits import load_dictionary
from featcircuits.graph.io import read_tables
from featcircuits.writes import (
    JOURNAL,
    STAGING_RE,
    atomic_files,
    atomic_path,
    atomic_write_text,
    committed_path,
    recover_folder,
)
from tests.support.kill_writer import (
    WRITERS,
    expected_dictionary,
    run_forked,
)

KILLS = 24
SET_FILES = {"tables": ("", ("c_nodes.csv", "c_edges.csv", "c_graph.json")),
             "dictionary": ("sae", ("cfg.json", "sae_weights.safetensors")),
             "ioi": ("ioi", ("results.csv", "curves.png"))}


def _reference(writer: str, version: int, scratch: Path) -> Path:
    """The folder holding ``version``'s set as written without interruption (cached)."""
    folder = scratch / f"{writer}{version}"
    if not folder.exists():
        WRITERS[writer](folder, version)
    return folder / SET_FILES[writer][0]


def read_version(writer: str, out: Path, scratch: Path) -> int:
    """Read the set back with the toolkit's reader; return its version after checking that
    every file of the set is byte-identical to that version's file."""
    sub, names = SET_FILES[writer]
    if writer == "tables":
        version = read_tables(out / "c_").graph["version"]
    elif writer == "dictionary":
        dictionary = load_dictionary(out / "sae")
        version = dictionary.meta["version"]
        for name, tensor in expected_dictionary(version).state_dict().items():
            assert torch.equal(dictionary.state_dict()[name], tensor), name
    else:
        version = int(pd.read_csv(committed_path(out / "ioi" / "results.csv"))["version"][0])
    reference = _reference(writer, version, scratch)
    for name in names:
        assert committed_path(out / sub / name).read_bytes() == (
            reference / name).read_bytes(), f"{name} is not version {version}'s"
    return version


def staging_folders(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if STAGING_RE.match(p.name)]


def _modes(writer: str, out: Path) -> set[int]:
    sub, names = SET_FILES[writer]
    return {os.stat(out / sub / name).st_mode & 0o777 for name in names}


def _stand_in_plot(results: pd.DataFrame, *, path, **_kwargs) -> None:
    """A quick stand-in for plot_patching_curves (seconds per PNG): writes bytes that depend
    on the results through the same atomic_path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(b"\x89PNG stand-in\n" + results.to_csv().encode())


@pytest.mark.slow
@pytest.mark.parametrize("writer", ["tables", "dictionary", "ioi"])
def test_sigkill_during_set_writes(tmp_path, monkeypatch, writer):
    """SIGKILL of a process rewriting one multi-file set (circuit tables + manifest, a
    dictionary folder, IOI results.csv + curves.png with a quick stand-in for the plot) in a
    loop, 24 times per writer at seeded random moments → the toolkit's reader gets one
    complete version every time (every file byte-identical to that version's), every file of
    the set has one mode, and the next write leaves no staging folder."""
    from featcircuits.render import curves

    monkeypatch.setattr(curves, "plot_patching_curves", _stand_in_plot)  # 2-5 s per PNG
    rng = random.Random({"tables": 17, "dictionary": 1126, "ioi": 5}[writer])
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    start = time.perf_counter()
    _reference(writer, 0, scratch)
    span = 2.5 * (time.perf_counter() - start)  # kill within the first two or three versions
    interrupted, versions = 0, []
    for _ in range(KILLS):
        pid = run_forked(out, writer)
        time.sleep(rng.uniform(0.005, span))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        interrupted += bool(staging_folders(out))
        versions.append(read_version(writer, out, scratch))
        WRITERS[writer](out, 0)  # the next run: recovers, then writes version 0
        assert staging_folders(out) == [], "stale staging folders after the next write"
        assert read_version(writer, out, scratch) == 0
        assert len(_modes(writer, out)) == 1
    assert max(versions) > 0, f"the writer never got past version 0: {versions}"
    assert interrupted > 0, "no kill landed during a write"


def _stop_at(k: int, writer: str, out: Path, version: int) -> tuple[str, bool]:
    """Fork a writer of ``version`` that dies (``os._exit``) just before its ``k``-th rename
    (``os.replace``: inner single files, the commit record, each member); returns
    ``("killed", committed_before)`` or ``("done", True)``."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(read_end)
        try:
            calls = {"n": 0, "committed": False}
            real_replace = os.replace

            def crash_point(*args):
                calls["n"] += 1
                if calls["n"] == k:
                    os.write(write_end, b"killed" + (b"1" if calls["committed"] else b"0"))
                    os._exit(0)
                real_replace(*args)
                calls["committed"] |= Path(args[1]).name == JOURNAL

            os.replace = crash_point
            WRITERS[writer](out, version)
            os.write(write_end, b"done1")
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
            os.write(write_end, f"error {exc!r}0".encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        message = pipe.read()
    os.waitpid(pid, 0)
    assert message.startswith((b"killed", b"done")), message
    return message[:-1].decode(), message[-1:] == b"1"


@pytest.mark.parametrize("writer", ["tables", "dictionary", "ioi"])
def test_crash_at_every_step_of_a_set_write(tmp_path, monkeypatch, writer):
    """A writer of a multi-file set (tables, dictionary, IOI results) stopped before each of
    its renames in turn → before the commit record the reader gets the old version,
    from it on the new one (also between the renames, from the staging folder, and after
    recover_folder rolls the set forward into the plain files); the next write leaves no
    staging folder."""
    from featcircuits.render import curves

    monkeypatch.setattr(curves, "plot_patching_curves", _stand_in_plot)  # the set logic only
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    sub, names = SET_FILES[writer]
    WRITERS[writer](out, 1)
    seen, between = [], 0
    for k in range(1, 40):
        outcome, committed = _stop_at(k, writer, out, 2)
        version = read_version(writer, out, scratch)
        assert version == (2 if committed else 1), (k, outcome, version)
        seen.append(version)
        if outcome == "done":
            break
        if committed:
            restored = recover_folder(out / sub)  # [] when stopped after the last rename
            assert set(restored) <= set(names)
            between += bool(restored)
            reference = _reference(writer, 2, scratch)
            for name in names:  # the plain files now hold the new set
                assert (out / sub / name).read_bytes() == (reference / name).read_bytes()
        WRITERS[writer](out, 1)  # the next write cleans up and restores version 1
        assert staging_folders(out) == []
        assert read_version(writer, out, scratch) == 1
    assert seen[-1] == 2 and seen.count(1) >= 1, seen  # stopped before and after the commit
    assert between == len(names), f"not stopped before each rename after the commit: {seen}"


def test_stale_staging_folders_are_removed_but_live_ones_kept(tmp_path):
    """Staging folders beside a write: a dead writer's (this machine, dead pid), a live
    process's, this process's own, and two of another machine (touched now / 2 hours ago)
    → the next write removes the dead writer's and the 2-hour-old foreign one and keeps the
    others; once the live process ends, the write after removes its folder too."""
    from featcircuits.writes import _HOST

    sleeper = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        names = {"live": f".fc-{_HOST}-{sleeper.pid}-aa.tmp",
                 "dead": f".fc-{_HOST}-{dead.pid}-bb.tmp",
                 "own": f".fc-{_HOST}-{os.getpid()}-cc.tmp",
                 "foreign_new": ".fc-00000000-1-dd.tmp",
                 "foreign_old": ".fc-00000000-1-ee.tmp"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "x.csv").write_text("half")
        old = time.time() - 7200
        os.utime(tmp_path / names["foreign_old"], (old, old))
        atomic_write_text(tmp_path / "x.csv", "new")
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"x.csv", names["live"], names["own"], names["foreign_new"]}
        assert (tmp_path / "x.csv").read_text() == "new"
    finally:
        sleeper.kill()
        sleeper.wait()
    atomic_write_text(tmp_path / "x.csv", "newer")
    assert names["live"] not in {p.name for p in tmp_path.iterdir()}


def test_concurrent_threads_write_sets_into_one_folder(tmp_path):
    """Two threads of one process each writing 15 two-file sets into one folder → every
    write succeeds (neither removes the other's staging folder) and the folder ends with
    the files and no staging folder."""
    import threading

    errors = []

    def work(tag: str) -> None:
        try:
            for index in range(15):
                with atomic_files(tmp_path) as files:
                    files.path(f"{tag}_a.txt").write_text(f"{index}")
                    files.path(f"{tag}_b.txt").write_text(f"{index}")
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in ("p", "q")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p_a.txt", "p_b.txt", "q_a.txt",
                                                         "q_b.txt"]
    assert (tmp_path / "q_b.txt").read_text() == "14"
