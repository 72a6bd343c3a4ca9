"""Atomic writes: single files and multi-file sets, staged beside their targets and renamed
into place after a commit record, so a kill at any moment leaves the old output or the new
one (docs/reliability.md, "Writes"); refusals of outputs that are links, FIFOs or folders;
a full disk as an ``OutputError`` naming the space needed."""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from featcircuits.errors import FeatCircuitsError, OutputError
from featcircuits.files import file_kind

#: how a set's staging folder is named: ``.fc-<host>-<pid>-<token>.tmp`` (host: a tag of
#: this machine and boot, pid: the writing process; see docs/reliability.md "Writes")
STAGING_RE = re.compile(r"^\.fc-(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[A-Za-z0-9_]+\.tmp$")
#: the commit record inside a staging folder: once it exists, the set is the new version
JOURNAL = ".fc-commit"
#: a staging folder written on another machine (or before a reboot) counts as abandoned
#: once it has not changed for this long (its writer's pid cannot be checked)
FOREIGN_STALE_SECONDS = 3600
_DISK_FULL = {errno.ENOSPC: "no space left on the disk", errno.EDQUOT: "disk quota exceeded"}
_DISK_FULL_TEXT = ("no space left on device", "os error 28", "disk quota exceeded",
                   "os error 122", "storagefull", "quotaexceeded")
#: how torch.save reports any failed write (no errno): "unexpected pos", "iostream error"
_WRITE_FAILED_TEXT = ("unexpected pos", "iostream error", "failed writing")
_OUT_HINT = "choose an output path in a folder you can write to (--out)"


def _host_tag() -> str:
    """8 hex digits naming this machine and boot: a pid is only meaningful under both."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = ""
    return hashlib.sha256(f"{socket.gethostname()}/{boot}".encode()).hexdigest()[:8]


_HOST = _host_tag()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError, OverflowError) as exc:  # another user's process is alive
        return isinstance(exc, PermissionError)
    return True


def _abandoned(entry: os.DirEntry) -> bool:
    """Whether staging folder ``entry`` belongs to a writer that is gone: one of this machine
    and boot whose pid is dead, or (another machine's) one untouched for an hour. This
    process's own staging folders (other threads) are never abandoned."""
    match = STAGING_RE.match(entry.name)
    if match is None:
        return False
    pid = int(match["pid"])
    if match["host"] == _HOST:
        return pid != os.getpid() and not _pid_alive(pid)
    try:
        age = time.time() - entry.stat(follow_symlinks=False).st_mtime
    except OSError:
        return False
    return age > FOREIGN_STALE_SECONDS


def _journal_names(staging: Path) -> list[str] | None:
    """The member names of a committed set (``None``: not committed, or unreadable)."""
    try:
        with open(staging / JOURNAL, "rb") as handle:
            data = json.loads(handle.read(2**22))
    except (OSError, ValueError):
        return None
    names = data.get("files") if isinstance(data, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, str) and "/" not in n
                                              and n not in ("", ".", "..") for n in names):
        return None
    return names


def _staging_folders(folder: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(folder) as entries:
            return [e for e in entries if STAGING_RE.match(e.name)
                    and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def recover_folder(folder: str | os.PathLike[str]) -> list[str]:
    """Finish or remove what killed writers left in ``folder``; return the names restored.

    A staging folder of a writer that is gone (see :func:`_abandoned`) whose commit record
    exists is rolled forward (its remaining files renamed into place: the set was complete);
    one without a record is deleted (the old set is still in place). Live writers' staging
    folders are left alone. Every toolkit write into ``folder`` calls this first.
    """
    restored = []
    for entry in _staging_folders(Path(folder)):
        if not _abandoned(entry):
            continue
        staging = Path(entry.path)
        for name in _journal_names(staging) or []:
            with contextlib.suppress(OSError):  # gone already, or its target is now a folder
                os.replace(staging / name, Path(folder) / name)
                restored.append(name)
        shutil.rmtree(staging, ignore_errors=True)
    return restored


def committed_path(path: str | os.PathLike[str]) -> Path:
    """Where the current version of ``path`` is: ``path`` itself, or, when a writer of the
    set holding ``path`` was stopped (or is) between its commit and its last rename, the
    new file still in that set's staging folder. Readers of multi-file outputs call this
    for every member so that they see the old set or the new one, never a mix; nothing is
    written (a read-only folder is fine)."""
    target = Path(path)
    best: tuple[int, Path] | None = None
    for entry in _staging_folders(target.parent):
        staging = Path(entry.path)
        names = _journal_names(staging)
        if names is None or target.name not in names:
            continue
        candidate = staging / target.name
        try:
            stamp = os.stat(staging / JOURNAL).st_mtime_ns
            if not candidate.is_file():
                continue
        except OSError:
            continue
        if best is None or stamp > best[0]:
            best = (stamp, candidate)
    return target if best is None else best[1]


def check_output_file(path: str | os.PathLike[str], *, folder: bool = False) -> Path:
    """Refuse an output path that must not be replaced by a regular file: a symbolic link
    (the link would silently become a file; pass the link's target to write there), a FIFO,
    device or socket (not a file at all), or a folder. A missing path is fine.
    ``folder=True`` also checks, before any long work, that the path's folder exists or can
    be made and takes new files (``ensure_writable_dir``).

    Raises ``OutputError`` naming the path and what it is."""
    target = Path(path)
    if folder:
        ensure_writable_dir(target.parent)
    try:
        info = os.lstat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputError(f"cannot write {str(target)!r}: {exc.strerror or exc}",
                          hint=_OUT_HINT) from exc
    if stat.S_ISLNK(info.st_mode):
        raise OutputError(f"cannot write {str(target)!r}: it is a symbolic link (to "
                          f"{os.readlink(target)!r}); featcircuits does not replace links",
                          hint="pass the link's target as the output path to write there, or "
                          "remove the link")
    if stat.S_ISDIR(info.st_mode):
        raise OutputError(f"cannot write {str(target)!r}: it is a folder",
                          hint="pass a file path (inside the folder) as the output")
    if not stat.S_ISREG(info.st_mode):
        raise OutputError(f"cannot write {str(target)!r}: it is "
                          f"{file_kind(info.st_mode)}, not a regular file",
                          hint="choose an output path that is a regular file (or new)")
    return target


class FileSet:
    """The files of one atomic set being written (see :func:`atomic_files`).

    ``path(name)`` is where to write member ``name``: a file of that name in the set's
    staging folder (the suffix is kept, so writers that pick a format by extension work).
    """

    def __init__(self, folder: Path, staging: Path, mode: int) -> None:
        self.folder = folder
        self.staging = staging
        self.mode = mode
        self.declared: dict[str, int | None] = {}
        self.committed = False

    def path(self, name: str | os.PathLike[str], *, size: int | None = None) -> Path:
        """The staged path for ``folder/name`` (``name`` may also be that whole path).
        ``size``: the bytes it will take, if known (quoted when the disk is full).
        Raises ``OutputError`` if the target is a link, FIFO, device or folder."""
        name = Path(name)
        if name.parent != Path(".") and name.parent != self.folder:
            raise ValueError(f"{str(name)!r} is not in this set's folder {str(self.folder)!r}")
        check_output_file(self.folder / name.name)
        self.declared[name.name] = size
        return self.staging / name.name

    def members(self) -> list[str]:
        """The files written into the staging folder so far (sorted)."""
        return sorted(p.name for p in self.staging.iterdir()
                      if p.is_file() and not p.name.startswith(".fc-"))

    def written_bytes(self) -> int:
        """Bytes in the staging folder now (what was written before a failure)."""
        try:
            return sum(p.stat().st_size for p in self.staging.rglob("*") if p.is_file())
        except OSError:
            return 0


@contextlib.contextmanager
def atomic_files(folder: str | os.PathLike[str], *, sync: bool = True,
                 describe: str | os.PathLike[str] | None = None) -> Iterator[FileSet]:
    """Write several files into ``folder`` as one set: a kill at any moment leaves the old
    set or the new set, never a mix.

    Members are written into a staging folder ``folder/.fc-<host>-<pid>-<token>.tmp/`` (ask
    ``files.path(name)`` for each); when the block ends every member is synced, the list of
    members is written to the staging folder's commit record (synced; the commit point),
    then each member is renamed onto ``folder/name`` and the staging folder removed.
    :func:`committed_path` resolves a member to its staged copy between the commit and its
    rename; :func:`recover_folder` (run first by every write into ``folder``) finishes a
    killed writer's committed set and deletes uncommitted leftovers. Files get the mode a
    plain ``open`` gives (``0o666 & ~umask``), all alike.

    Raises ``OutputError`` when ``folder`` cannot be written, a target is a link, FIFO,
    device or folder, or the disk is full (naming the space needed; the old files stay).
    ``describe`` is the path named when ``folder`` cannot be made (default ``folder``).
    """
    target_folder = Path(folder)
    try:
        target_folder.mkdir(parents=True, exist_ok=True)
        recover_folder(target_folder)
        staging = target_folder / f".fc-{_HOST}-{os.getpid()}-{secrets.token_hex(6)}.tmp"
        os.mkdir(staging)
        mode = _creation_mode(staging)
    except OSError as exc:
        raise _output_error(exc, target_folder, [], None, None) or OutputError(
            f"cannot write {str(describe or target_folder)!r}: {exc.strerror or exc}",
            hint=_OUT_HINT) from exc
    files = FileSet(target_folder, staging, mode)
    try:
        yield files
        _commit(files, sync)
    except BaseException as exc:
        error = None
        if isinstance(exc, OutputError) and str(staging) in exc.message:  # an inner set's
            error = OutputError(exc.message.replace(str(staging), str(target_folder)),
                                hint=exc.hint)
        elif isinstance(exc, Exception) and not isinstance(exc, FeatCircuitsError):
            declared = list(files.declared.values())
            need = sum(declared) if declared and None not in declared else None
            error = _output_error(exc, target_folder, sorted(files.declared),
                                  files.written_bytes(), need)
        if not files.committed:  # after the commit, the staged files are the new version
            shutil.rmtree(staging, ignore_errors=True)
        if error is not None:
            for item in _chain(exc):  # a failed writer's finished frames may hold its
                traceback.clear_frames(item.__traceback__)  # (deleted) file open (torch's
            gc.collect()  # writer, in a cycle): free that space now, not at some later gc
            raise error from exc
        raise


def _commit(files: FileSet, sync: bool) -> None:
    members = files.members()
    for name in members:
        check_output_file(files.folder / name)  # again: it may have changed meanwhile
        if os.stat(files.staging / name).st_mode & 0o7777 != files.mode:
            os.chmod(files.staging / name, files.mode)  # safetensors creates files 0o600
        if sync:
            _fsync_file(files.staging / name)
    if len(members) > 1:
        part = files.staging / f"{JOURNAL}.part"
        with open(part, "w", encoding="utf-8") as handle:
            json.dump({"files": members}, handle)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(part, files.staging / JOURNAL)
        if sync:
            _fsync_dir(files.staging)
        files.committed = True  # from here on, the new set is the current one
    for name in members:
        os.replace(files.staging / name, files.folder / name)
    if sync:
        _fsync_dir(files.folder)
    shutil.rmtree(files.staging, ignore_errors=True)


def _creation_mode(staging: Path) -> int:
    """The mode a new file gets here (``0o666`` less the umask and any default ACL): a probe
    file created in ``staging`` by the kernel. Reading the umask with ``os.umask`` would
    change it for every thread meanwhile."""
    fd = os.open(staging / ".fc-mode", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o7777
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform/file system syncs folders
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = 0
    while exc is not None and seen < 8:
        yield exc
        exc = exc.__cause__ or exc.__context__
        seen += 1


def _free_bytes(folder: Path) -> int | None:
    try:
        info = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return info.f_bavail * info.f_frsize


def _size(count: int) -> str:
    value, unit = float(count), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({count} bytes)"


def _output_error(exc: BaseException, folder: Path, names: list[str], written: int | None,
                  need: int | None) -> OutputError | None:
    """The project error for a failed write (``None``: not a write failure; re-raise it).

    A full disk or quota (``ENOSPC``/``EDQUOT`` anywhere in the exception chain, or their
    text in a library's message: safetensors, torch) names the space needed; torch.save's
    errno-less "unexpected pos" counts as a full disk when the disk has under 1 MiB free."""
    free = _free_bytes(folder)
    reason = None
    for item in _chain(exc):
        if isinstance(item, OSError) and item.errno in _DISK_FULL:
            reason = _DISK_FULL[item.errno]
            break
        text = str(item).lower()
        if any(mark in text for mark in _DISK_FULL_TEXT):
            reason = "disk quota exceeded" if "quota" in text or "122" in text else \
                "no space left on the disk"
            break
        if any(mark in text for mark in _WRITE_FAILED_TEXT):
            reason = ("no space left on the disk" if free is not None and free < 2**20
                      else f"the write failed ({type(item).__name__}: {item})")
            break
    what = ", ".join(repr(str(folder / n)) for n in names) or repr(str(folder))
    if reason is None:
        for item in _chain(exc):
            if isinstance(item, OSError) and item.errno in (errno.EACCES, errno.EROFS,
                                                             errno.EIO, errno.EFBIG):
                return OutputError(f"cannot write {what}: {item.strerror or item}; the old "
                                   "files are unchanged", hint=_OUT_HINT)
        return None
    if not reason.startswith(("no space", "disk quota")):
        return OutputError(f"cannot write {what}: {reason}; the old files are unchanged",
                           hint=_OUT_HINT)
    needed = (f"the output needs about {_size(need)}" if need is not None
              else f"the output needs at least {_size(written)} (written before the disk "
              "filled)" if written else "the output's size is not known")
    free_text = f"; {_size(free)} free" if free is not None else ""
    return OutputError(f"cannot write {what}: {reason} ({needed}{free_text}); the old files "
                       "are unchanged",
                       hint="free some space, or choose an output folder on another disk "
                       "(--out)")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, sync: bool = True,
                size: int | None = None) -> Iterator[Path]:
    """Yield a temporary path for ``path``; rename it onto ``path`` on success.

    A set of one (:func:`atomic_files`): a crash or exception leaves ``path`` as it was (old
    content or absent), never torn; a full disk raises ``OutputError`` naming the space
    needed (``size``, when the caller knows it). ``sync=False`` skips the fsync before the
    rename (for a caller that synced already). Links, FIFOs and folders are refused.
    """
    target = Path(path)
    with atomic_files(target.parent, sync=sync, describe=target) as files:
        yield files.path(target.name, size=size)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file for writing and rename it onto ``path`` when the block ends."""
    if not mode.startswith("w"):
        raise ValueError(f"atomic_open only writes, got mode {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as handle:
        yield handle


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path, size=len(text.encode("utf-8"))) as tmp:
        tmp.write_text(text, encoding="utf-8")
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
        fd, probe = tempfile.mkstemp(prefix=".fc-probe-", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write in {str(folder)!r}: {exc.strerror or exc}",
                          hint="choose an output path in a folder you can write to (--out)"
                          ) from exc
    return folder
