"""Bounded reads: regular files only, a size limit, a JSON depth limit. (Writes live in
``featcircuits.writes``.)"""

from __future__ import annotations

import json
import os
import stat
from importlib import resources
from pathlib import Path
from typing import Any

from featcircuits.errors import FeatCircuitsError, ParameterError

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


def file_kind(mode: int) -> str:
    """What a non-regular file is, for messages: ``"a FIFO (named pipe)"``, ``"a device"``,
    ``"a socket"`` or ``"not a regular file"`` (``mode`` from ``os.stat``)."""
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a regular file"


def _check_regular(info: os.stat_result, name: str, what: str,
                   error: type[FeatCircuitsError]) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{what} {name!r} is a folder, not a file", hint="pass the file's path")
    if not stat.S_ISREG(info.st_mode):
        kind = file_kind(info.st_mode)
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


# ----------------------------------------------------------------------- package data
def package_path(*parts: str) -> Path:
    """A file or folder shipped inside the installed ``featcircuits`` package
    (``importlib.resources``), e.g. ``package_path("data", "ioi")`` or ``package_path("zoo")``.

    Every bundled file (IOI data, the model zoo, the pretrained-SAE table, the viewer) is
    found this way, never relative to a checkout, so ``pip install .`` works from any folder
    (``tests/docs/test_packaging.py`` checks the wheel holds each one). A package imported
    from a zip archive has no folder to hand to Hugging Face loaders and is refused."""
    target = resources.files("featcircuits").joinpath(*parts)
    if not isinstance(target, Path):
        raise ParameterError(
            f"featcircuits is imported from {target!s}, not a folder on disk, so the bundled "
            f"{'/'.join(parts)} cannot be opened as a path",
            hint="install featcircuits as a regular (unzipped) package: pip install featcircuits")
    return target
