"""Atomic file writes (a temporary file beside the target, then rename) and bounded reads
(regular files only, a size limit, a JSON depth limit)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from featcircuits.errors import FeatCircuitsError, OutputError, ParameterError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, sync: bool = True) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it onto ``path`` on success.

    A crash or exception leaves ``path`` as it was (old content or absent), never torn.
    ``sync=False`` skips the fsync before the rename (for a caller that synced already).
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise OutputError(
            f"cannot write {str(target)!r}: {exc.strerror or exc}",
            hint="choose an output path in a folder you can write to (--out)",
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp
        try:
            if sync:
                with open(tmp, "rb") as handle:
                    os.fsync(handle.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            raise OutputError(
                f"cannot write {str(target)!r}: {exc.strerror or exc}",
                hint="the target may be a folder or on a read-only or full disk; choose "
                "another output path (--out)",
            ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing and rename it onto ``path`` when the block ends."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open only writes, got mode {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create folder ``path`` if needed and check it is writable, before any long work.

    Raises ``OutputError`` naming the path (e.g. it is below a regular file, or read-only).
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {str(folder)!r}: {exc.strerror or exc}",
                          hint="choose an output path in a folder you can write to (--out)"
                          ) from exc
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {str(folder)!r}: the folder is read-only",
                          hint="choose an output path in a folder you can write to (--out)")
    try:  # os.access says yes to root and on /proc; creating a file is the real test
        fd, probe = tempfile.mkstemp(prefix=".featcircuits-probe.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {str(folder)!r}: {exc.strerror or exc}",
                          hint="choose an output path in a folder you can write to (--out)"
                          ) from exc
    return folder


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """Check, before any long work, that file ``path`` can be written: its folder exists or
    can be made and takes new files (``ensure_writable_dir``), and ``path`` is not a folder.
    Raises ``OutputError`` naming the path."""
    target = Path(path)
    if target.is_dir():
        raise OutputError(f"cannot write {str(target)!r}: it is a folder",
                          hint="pass a file path (--out FILE)")
    ensure_writable_dir(target.parent)
    return target


# ------------------------------------------------------------------------ bounded reads
#: default size limits of the readers (bytes); each reader takes ``max_bytes=`` to raise it
GRAPH_FILE_LIMIT = 256 * 2**20
PROMPT_FILE_LIMIT = 64 * 2**20
#: deepest nesting of lists/objects a JSON input may have (circuit files need about 6)
MAX_JSON_DEPTH = 64


def read_bytes_limited(path: str | os.PathLike[str], limit: int, what: str = "file", *,
                       error: type[FeatCircuitsError] = FeatCircuitsError,
                       keyword: str = "max_bytes") -> bytes:
    """The bytes of regular file ``path``, refusing anything that could hang or blow memory.

    Raises ``error`` (naming ``what`` and the path) before reading when ``path`` is missing,
    a folder, or not a regular file (a FIFO, which would block, or a device such as
    ``/dev/zero``, which never ends): ``os.stat`` is checked before opening, and the file is
    opened non-blocking as a second guard. Files larger than ``limit`` bytes are refused
    (at most ``limit + 1`` bytes are ever read); the hint names ``keyword``, the reader's
    argument that raises the limit.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ParameterError(f"{keyword}={limit!r} is not a byte count",
                             hint=f"pass {keyword} as an int >= 0")
    name = str(path)
    try:
        info = os.stat(path)
    except FileNotFoundError as exc:
        raise error(f"{what} {name!r} does not exist",
                    hint="check the path (and the current folder)") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from exc
    _check_regular(info, name, what, error)
    _check_size(info.st_size, limit, name, what, error, keyword)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from exc
    try:
        _check_regular(os.fstat(fd), name, what, error)  # replaced since the stat
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 2**24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    data = b"".join(chunks)
    _check_size(len(data), limit, name, what, error, keyword)
    return data


def _check_regular(info: os.stat_result, name: str, what: str,
                   error: type[FeatCircuitsError]) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {name!r} is a folder, not a file", hint="pass the file's path")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise error(f"{what} {name!r} is {kind}, not a regular file",
                    hint="copy the data into a regular file and pass that")


def _check_size(size: int, limit: int, name: str, what: str,
                error: type[FeatCircuitsError], keyword: str) -> None:
    if size > limit:
        raise error(f"{what} {name!r} is larger than the limit of {limit} bytes"
                    f" ({size}{'+' if size == limit + 1 else ''} bytes)",
                    hint=f"if the file is genuine, raise the limit: {keyword}={max(size, limit) * 2}")


def parse_json(text: str | bytes, what: str = "JSON", *,
               error: type[FeatCircuitsError] = FeatCircuitsError,
               max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads(text)``, refusing invalid JSON and nesting deeper than ``max_depth``.

    Raises ``error`` naming ``what``: for bytes that are not UTF-8, malformed JSON, and
    lists/objects nested deeper than ``max_depth`` (a JSON bomb of 100 000 brackets is a
    ``RecursionError`` in ``json.loads``; shallower deep nesting is found by an iterative
    walk, so later recursive code never meets it)."""
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        data = json.loads(text)
    except RecursionError as exc:
        raise error(f"{what} is nested too deeply (more than {max_depth} levels of lists/"
                    "objects)", hint="the file is not what featcircuits writes") from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise error(f"{what} is not valid JSON: {type(exc).__name__}: {exc}",
                    hint="the file is truncated or of another kind; write it again") from exc
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, dict)):
            if depth > max_depth:
                raise error(f"{what} is nested too deeply (more than {max_depth} levels of "
                            "lists/objects)", hint="the file is not what featcircuits writes")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items
                         if isinstance(item, (list, dict)))
    return data
