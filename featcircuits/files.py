"""Atomic file writes: write to a temporary file beside the target, then rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from featcircuits.errors import OutputError


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
    return folder
