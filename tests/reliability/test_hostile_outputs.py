"""Hostile output places: a full disk (a real 2 MiB tmpfs where the test may mount one,
and always writers made to fail with ENOSPC / EDQUOT), output paths that are symbolic links
or FIFOs, and the modes of the files of one set.

Every failure must be an ``OutputError`` naming the path (for a full disk: the space the
output needed), leave the old output readable and no staging folder behind; the CLI exits 1
with the message and no traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch

from featcircuits import OutputError, load_dictionary, save_dictionary
from featcircuits.graph.io import read_json, read_tables, write_json, write_tables
from featcircuits.render.examples import example_circuit
from featcircuits.writes import STAGING_RE, atomic_path, atomic_write_text
from tests.support.kill_writer import expected_dictionary, expected_graph


def _no_staging(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if STAGING_RE.match(p.name)]


def _big_graph(version: int):
    graph = expected_graph(version)
    graph.graph["padding"] = "x" * 3_000_000  # 3 MB of manifest: more than the disk holds
    return graph


# ------------------------------------------------------------------------ full disk: simulated
def _fail_safetensors(monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    def save_file(tensors, path, metadata=None):
        Path(path).write_bytes(b"\0" * 1000)  # part of the file, as a real full disk leaves
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)


def _fail_torch(monkeypatch):
    import featcircuits.writes

    def save(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"PK" + b"\0" * 500)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 "
                           "vs 534")  # what torch.save says on a full disk: no errno
    monkeypatch.setattr(torch, "save", save)
    monkeypatch.setattr(featcircuits.writes, "_free_bytes", lambda folder: 0)


def _fail_errno(code):
    """Make ``cls.name`` write 700 bytes of its file, then fail with ``code``."""
    def install(monkeypatch, cls, name):
        def fail(self, *args, **kwargs):
            target = self if isinstance(self, Path) else args[0]
            with open(target, "wb") as handle:
                handle.write(b"\0" * 700)
            raise OSError(code, os.strerror(code))
        monkeypatch.setattr(cls, name, fail)
    return install


CASES = {  # writer family -> (make it fail, write the old version, write the new, read back)
    "safetensors": (_fail_safetensors, lambda d, v: save_dictionary(expected_dictionary(v),
                                                                     d / "sae"),
                    lambda d: load_dictionary(d / "sae").meta["version"]),
    "torch.save": (_fail_torch, lambda d, v: _torch_file(d, v),
                   lambda d: int(torch.load(d / "state.pt")["version"])),
    "savefig": (lambda mp: _fail_errno(errno.ENOSPC)(
        mp, __import__("matplotlib").figure.Figure, "savefig"),
        lambda d, v: _png(d, v), lambda d: int((d / "v.txt").read_text())),
    "to_csv": (lambda mp: _fail_errno(errno.ENOSPC)(mp, pd.DataFrame, "to_csv"),
               lambda d, v: write_tables(expected_graph(v), d / "c_"),
               lambda d: read_tables(d / "c_").graph["version"]),
    "text (EDQUOT)": (lambda mp: _fail_errno(errno.EDQUOT)(mp, Path, "write_text"),
                      lambda d, v: write_json(expected_graph(v), d / "c.json"),
                      lambda d: read_json(d / "c.json").graph["version"]),
}


def _torch_file(folder: Path, version: int) -> None:
    with atomic_path(folder / "state.pt", size=4 * 1000) as tmp:
        torch.save({"version": torch.tensor(version), "w": torch.zeros(1000)}, tmp)


def _png(folder: Path, version: int) -> None:
    """A small matplotlib PNG and a text file as one set (the text records the version)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from featcircuits.writes import atomic_files

    figure = Figure(figsize=(1, 1))
    FigureCanvasAgg(figure)
    figure.subplots().plot([0, version])
    with atomic_files(folder) as files:
        files.path("v.txt").write_text(str(version))
        figure.savefig(files.path("c.png"), format="png")


@pytest.mark.parametrize("family", list(CASES))
def test_disk_full_while_writing_is_an_output_error(tmp_path, monkeypatch, family):
    """A writer failing with a full disk or quota (safetensors' SafetensorError 'os error 28',
    torch.save's errno-less 'unexpected pos' on a full disk, matplotlib savefig / pandas
    to_csv raising ENOSPC, a text write raising EDQUOT) → OutputError naming the path, the
    reason and the bytes needed; the old output still reads back; no staging folder left."""
    make_fail, write, read = CASES[family]
    write(tmp_path, 1)
    make_fail(monkeypatch)
    with pytest.raises(OutputError) as error:
        write(tmp_path, 2)
    message = str(error.value)
    reason = "disk quota exceeded" if "EDQUOT" in family else "no space left on the disk"
    assert reason in message and "the old files are unchanged" in message, message
    assert str(tmp_path) in message
    assert "needs " in message and "bytes" in message, message
    assert isinstance(error.value, OSError)
    monkeypatch.undo()
    assert read(tmp_path) == 1
    assert _no_staging(tmp_path)


def test_declared_size_is_quoted(tmp_path, monkeypatch):
    """save_dictionary on a full disk → the message quotes the weights' size
    (64×256×2 + 256 + 64 floats = 132 352 bytes) as the space needed."""
    save_dictionary(expected_dictionary(1), tmp_path / "sae")
    _fail_safetensors(monkeypatch)
    with pytest.raises(OutputError, match=r"needs about 129\.2 KiB \(132352 bytes\)"):
        save_dictionary(expected_dictionary(2), tmp_path / "sae")


def test_cli_full_disk_exits_1_without_traceback(tmp_path, monkeypatch, capsys):
    """`featcircuits render c.json -o c.dot` with the text write failing ENOSPC → exit code
    1, one 'error: cannot write … no space left' line and a hint, no traceback; the old
    file stays. (A real full disk under `render -o c.png`: test_full_tmpfs.)"""
    from featcircuits.cli.main import main

    graph = write_json(example_circuit(), tmp_path / "c.json")
    (tmp_path / "c.dot").write_bytes(b"old dot")
    _fail_errno(errno.ENOSPC)(monkeypatch, Path, "write_text")
    code = main(["render", str(graph), "-o", str(tmp_path / "c.dot")])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and "no space left on the disk" in lines[0] and "c.dot" in lines[0]
    assert "Traceback" not in err and "hint:" in err
    assert (tmp_path / "c.dot").read_bytes() == b"old dot"
    assert _no_staging(tmp_path)


# ------------------------------------------------------------------------ full disk: tmpfs
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (skips where mounting is not permitted)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)],
                             check=False, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False, capture_output=True)


@pytest.mark.slow
def test_full_tmpfs(small_disk, capsys):
    """On a real 2 MiB tmpfs: a 4 MiB dictionary (safetensors), a torch.save of 4 MB, 3 MB
    circuit tables and JSON, and (disk filled up) a PNG and `featcircuits render` → each an
    OutputError / exit 1 saying 'no space left' with the bytes needed, the old files read
    back, no staging folder left."""
    from featcircuits.cli.main import main
    from featcircuits.dictionaries.sae import SparseAutoencoder

    save_dictionary(expected_dictionary(1), small_disk / "sae")
    write_tables(expected_graph(1), small_disk / "c_")
    write_json(expected_graph(1), small_disk / "c.json")
    _torch_file(small_disk, 1)
    big = SparseAutoencoder(512, 1024, site="resid_out.1", meta={"version": 2})
    with pytest.raises(OutputError, match=r"no space left on the disk \(the output needs "
                       r"about 4\.0 MiB"):
        save_dictionary(big, small_disk / "sae")
    with pytest.raises(OutputError, match="no space left"), \
            atomic_path(small_disk / "state.pt") as tmp:
        torch.save({"version": torch.tensor(2), "w": torch.zeros(10**6)}, tmp)
    with pytest.raises(OutputError, match="no space left"):
        write_tables(_big_graph(2), small_disk / "c_")
    with pytest.raises(OutputError, match=r"no space left.*needs about 2\.9 MiB"):
        write_json(_big_graph(2), small_disk / "c.json")
    assert load_dictionary(small_disk / "sae").meta["version"] == 1
    assert int(torch.load(small_disk / "state.pt")["version"]) == 1
    assert read_tables(small_disk / "c_").graph["version"] == 1
    assert read_json(small_disk / "c.json").graph["version"] == 1
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as handle:  # fill what is left, then draw
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    code = main(["render", str(small_disk / "c.json"), "-o", str(small_disk / "c.png")])
    err = capsys.readouterr().err
    assert code == 1 and "no space left" in err and "Traceback" not in err, err
    assert not (small_disk / "c.png").exists()
    assert _no_staging(small_disk)


# ------------------------------------------------------------------------ links and FIFOs
def test_output_symlink_is_refused(tmp_path):
    """Writing onto a symbolic link (a JSON file, one table of a set) → OutputError
    'symbolic link' naming the link and its target; the link and its target are unchanged
    and nothing of the set is written. A linked *folder* is written through normally."""
    target = tmp_path / "real.json"
    target.write_text("keep")
    (tmp_path / "link.json").symlink_to(target)
    with pytest.raises(OutputError, match="link.json.*symbolic link.*real.json"):
        write_json(example_circuit(), tmp_path / "link.json")
    assert (tmp_path / "link.json").is_symlink() and target.read_text() == "keep"
    write_tables(expected_graph(1), tmp_path / "c_")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("c_*")}
    (tmp_path / "c_edges.csv").unlink()
    (tmp_path / "c_edges.csv").symlink_to(target)
    with pytest.raises(OutputError, match="c_edges.csv.*symbolic link"):
        write_tables(expected_graph(2), tmp_path / "c_")
    assert (tmp_path / "c_nodes.csv").read_bytes() == before["c_nodes.csv"]
    assert (tmp_path / "c_graph.json").read_bytes() == before["c_graph.json"]
    assert _no_staging(tmp_path)
    (tmp_path / "real_folder").mkdir()
    (tmp_path / "linked_folder").symlink_to(tmp_path / "real_folder")
    write_json(example_circuit(), tmp_path / "linked_folder" / "c.json")
    assert read_json(tmp_path / "real_folder" / "c.json").number_of_nodes() > 0


def test_output_fifo_is_refused_without_hanging(tmp_path, capsys):
    """Writing onto a FIFO (a text file, a dictionary's cfg.json, `featcircuits render -o
    FIFO`) → OutputError 'a FIFO (named pipe), not a regular file' at once (no hang; the
    FIFO stays a FIFO) and exit code 1 from the CLI."""
    import stat

    from featcircuits.cli.main import main
    from tests.support.deadline import deadline

    fifo = tmp_path / "out.txt"
    os.mkfifo(fifo)
    with deadline(20), pytest.raises(OutputError, match="out.txt.*FIFO"):
        atomic_write_text(fifo, "x")
    (tmp_path / "sae").mkdir()
    os.mkfifo(tmp_path / "sae" / "cfg.json")
    with deadline(20), pytest.raises(OutputError, match="cfg.json.*FIFO"):
        save_dictionary(expected_dictionary(1), tmp_path / "sae")
    graph = write_json(example_circuit(), tmp_path / "c.json")
    os.mkfifo(tmp_path / "c.dot")
    with deadline(60):
        code = main(["render", str(graph), "-o", str(tmp_path / "c.dot")])
    err = capsys.readouterr().err
    assert code == 1 and "FIFO" in err and "Traceback" not in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert _no_staging(tmp_path)


# ------------------------------------------------------------------------ modes
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_file_of_a_set_gets_the_umask_mode(tmp_path, umask):
    """Files written under umask 022 / 077 / 002 (a dictionary's weights and cfg.json,
    circuit tables + manifest, a JSON file) → every one has mode 0o666 & ~umask, the mode a
    plain open() gives; the umask itself is never changed by the writers."""
    previous = os.umask(umask)
    try:
        save_dictionary(expected_dictionary(1), tmp_path / "sae")
        write_tables(expected_graph(1), tmp_path / "c_")
        write_json(expected_graph(1), tmp_path / "c.json")
        with open(tmp_path / "plain", "w"):
            pass
        assert os.umask(umask) == umask  # the writers left it alone
    finally:
        os.umask(previous)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 7
    assert {p.name: os.stat(p).st_mode & 0o777 for p in files} == {
        p.name: 0o666 & ~umask for p in files}


def test_writes_never_touch_the_umask(tmp_path, monkeypatch):
    """atomic writes from 4 threads, 20 files each, with os.umask watched → os.umask is
    never called (the kernel applies the umask when a file is created), every file written."""
    calls = []
    real = os.umask
    monkeypatch.setattr(os, "umask", lambda mask: calls.append(mask) or real(mask))

    def work(tag: str) -> None:
        for index in range(20):
            atomic_write_text(tmp_path / f"{tag}{index}.txt", tag)

    threads = [threading.Thread(target=work, args=(tag,)) for tag in "abcd"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == []
    assert len(list(tmp_path.glob("*.txt"))) == 80
