"""Checks that run before a dictionary file is read: no memory a file only claims.

Every reader checks the bytes it is about to trust first: configs must be regular files of
bounded size (not a FIFO, ``/dev/zero`` or a gigabyte of JSON), YAML may not use anchors or
aliases (a "billion laughs" file), a safetensors header is parsed with a size bound and its
tensors' dtypes, shapes and byte ranges are checked against the config, the file's size and
the machine's memory before any tensor is loaded, and a ``torch.save`` archive's members are
checked (stored, bounded) before ``torch.load`` maps it. Whatever fails is a
``DictionaryLoadError`` naming the file, the value and the fix.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featcircuits.errors import DictionaryLoadError
from featcircuits.files import read_bytes_limited

MAX_CONFIG_BYTES = 16 * 2**20
"""Largest config file (``cfg.json``, ``config.json``, ``config.yaml``) read."""
MAX_HEADER_BYTES = 100 * 2**20
"""Largest safetensors JSON header read (safetensors' own limit)."""
MAX_PICKLE_BYTES = 64 * 2**20
"""Largest non-tensor member (the pickle) of a ``torch.save`` archive."""
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
"""safetensors dtypes a dictionary's weights may have (itemsize in bytes)."""
_OTHER_DTYPES = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
                 "BOOL": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
                 "C64": 8}


def memory_limit() -> int:
    """Bytes a dictionary's float32 tensors may take: this machine's physical memory, or
    the container's memory limit (cgroup v2 ``memory.max``) or the process's address-space
    limit (``RLIMIT_AS``) if lower."""
    limit = math.inf
    try:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            text = handle.read(64).strip()
        if text.isdigit():
            limit = min(limit, int(text))
    except (OSError, UnicodeDecodeError):
        pass
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY:
            limit = min(limit, soft)
    except (ImportError, ValueError, OSError):
        pass
    return int(limit) if limit != math.inf else 2**62


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def regular_file(path: Path, *, limit: int | None = None) -> int:
    """The size of ``path``; ``DictionaryLoadError`` if it is missing, not a regular file (a
    FIFO, a device such as ``/dev/zero``, a folder) or larger than ``limit`` bytes."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise DictionaryLoadError(f"{str(path)!r} is missing",
                                  hint=f"save the dictionary again; {path.name} is part of it"
                                  ) from None
    except OSError as exc:
        raise DictionaryLoadError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise DictionaryLoadError(
            f"{str(path)!r} is not a regular file (a FIFO, device, socket or folder)",
            hint=f"replace it with the real {path.name}")
    if limit is not None and info.st_size > limit:
        raise DictionaryLoadError(
            f"{str(path)!r} is {info.st_size} bytes; a {path.name} holds at most {limit}",
            hint="the file is not a dictionary config; re-download or re-save the dictionary")
    return info.st_size


def read_config_text(path: Path) -> str:
    """The UTF-8 text of config file ``path`` (a bounded regular file, read with the
    toolkit's one bounded reader, ``files.read_bytes_limited``)."""
    data = read_bytes_limited(path, MAX_CONFIG_BYTES, "dictionary config",
                              error=DictionaryLoadError)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not UTF-8 text: {exc}",
                                  hint="the file is corrupt; re-download or re-save it") from exc


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path`` (safe loader; anchors and aliases refused)."""
    import yaml

    class _NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"alias *{event.anchor} at {event.start_mark} (anchors and "
                                     "aliases are not read)")
            event = self.peek_event()
            if getattr(event, "anchor", None) is not None:
                raise yaml.YAMLError(f"anchor &{event.anchor} at {event.start_mark} (anchors "
                                     "and aliases are not read)")
            return super().compose_node(parent, index)

    text = read_config_text(path)
    try:
        return yaml.load(text, Loader=_NoAliases)
    except yaml.YAMLError as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not valid YAML for featcircuits: {exc}",
                                  hint="write the config as plain YAML without anchors") from exc


# ------------------------------------------------------------------------ safetensors
@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a safetensors header declares it."""

    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class SafetensorsHeader:
    """A checked safetensors header: tensors by name and the ``__metadata__`` strings."""

    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse and check ``path``'s header without reading any tensor.

    Checks: a regular file; the header length is bounded and fits the file; the header is a
    JSON object of ``{dtype, shape, data_offsets}`` entries whose byte ranges match dtype and
    shape, tile the data without gaps or overlaps, and end exactly at the end of the file.
    """
    size = regular_file(path)
    bad = f"{str(path)!r} is not a valid safetensors file"
    fix = "the file is truncated, padded or corrupt; re-download or re-save it"
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise DictionaryLoadError(f"{bad}: {size} bytes, shorter than its header",
                                          hint=fix)
            (length,) = struct.unpack("<Q", prefix)
            if length > min(MAX_HEADER_BYTES, size - 8):
                raise DictionaryLoadError(
                    f"{bad}: its header claims {length} bytes, the file has {size - 8} after "
                    f"the length (at most {MAX_HEADER_BYTES} are read)", hint=fix)
            raw = handle.read(length)
    except OSError as exc:
        raise DictionaryLoadError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise DictionaryLoadError(f"{bad}: header is not JSON ({exc!r:.200})", hint=fix) from exc
    if not isinstance(header, dict):
        raise DictionaryLoadError(f"{bad}: header is not an object", hint=fix)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise DictionaryLoadError(f"{bad}: __metadata__ is not a string mapping", hint=fix)
    tensors: dict[str, TensorInfo] = {}
    ranges = []
    for name, entry in header.items():
        info, begin, end = _entry(name, entry, bad, fix)
        tensors[name] = info
        ranges.append((begin, end, name))
    position = 0
    for begin, end, name in sorted(ranges):
        if begin != position:
            raise DictionaryLoadError(f"{bad}: tensor {name!r} starts at byte {begin}, expected "
                                      f"{position} (gap or overlap)", hint=fix)
        position = end
    if 8 + length + position != size:
        raise DictionaryLoadError(
            f"{bad}: the header declares {8 + length + position} bytes, the file has {size}",
            hint=fix)
    return SafetensorsHeader(tensors, dict(metadata))


def _entry(name: str, entry: Any, bad: str, fix: str) -> tuple[TensorInfo, int, int]:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise DictionaryLoadError(f"{bad}: entry {name!r} is not {{dtype, shape, data_offsets}}",
                                  hint=fix)
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    itemsize = FLOAT_DTYPES.get(dtype, _OTHER_DTYPES.get(dtype))
    if itemsize is None:
        raise DictionaryLoadError(f"{bad}: tensor {name!r} has unknown dtype {dtype!r}", hint=fix)
    if not isinstance(shape, list) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise DictionaryLoadError(f"{bad}: tensor {name!r} has shape {shape!r}", hint=fix)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in offsets)):
        raise DictionaryLoadError(f"{bad}: tensor {name!r} has data_offsets {offsets!r}",
                                  hint=fix)
    begin, end = offsets
    if end - begin != math.prod(shape) * itemsize:
        raise DictionaryLoadError(
            f"{bad}: tensor {name!r} ({dtype} {shape}) needs {math.prod(shape) * itemsize} "
            f"bytes, its data_offsets span {end - begin}", hint=fix)
    return TensorInfo(dtype, tuple(shape)), begin, end


# ------------------------------------------------------------------ declared tensors
def check_declared(where: Path, declared: dict[str, tuple[str, tuple[int, ...]]], *,
                   required: dict[str, tuple[int, ...]],
                   optional: dict[str, tuple[int, ...]] | None = None,
                   integer: Iterable[str] = ()) -> None:
    """Check tensors ``{name: (dtype, shape)}`` as a file declares them, before loading.

    ``required`` and ``optional`` give each allowed name's shape; any other name is refused
    (a tensor the format does not read would be silently dropped). Dtypes must be floating
    (``FLOAT_DTYPES``) except for the names in ``integer``. The float32 size of all tensors
    must fit :func:`memory_limit`.
    """
    allowed = {**required, **(optional or {})}
    missing = [name for name in required if name not in declared]
    if missing:
        raise DictionaryLoadError(f"{str(where)!r} lacks tensors {missing} (has "
                                  f"{sorted(declared)})",
                                  hint="the file is incomplete or from another library")
    unknown = sorted(name for name in declared if name not in allowed)
    if unknown:
        raise DictionaryLoadError(
            f"{str(where)!r} holds tensors {unknown} that this format does not read "
            f"(it reads {sorted(allowed)})",
            hint="loading would silently drop them; the file is of another architecture or "
            "was edited")
    integer = set(integer)
    for name, (dtype, shape) in declared.items():
        floating = dtype in FLOAT_DTYPES or dtype in {"float64", "float32", "float16",
                                                      "bfloat16"}
        if not floating and name not in integer:
            raise DictionaryLoadError(
                f"tensor {name!r} in {str(where)!r} has dtype {dtype}, not a floating type",
                hint="dictionary weights are float32/float16/bfloat16/float64; the file is "
                "corrupt or was written by other code")
        if tuple(shape) != tuple(allowed[name]):
            raise DictionaryLoadError(
                f"tensor {name!r} in {str(where)!r} has shape {tuple(shape)}, expected "
                f"{tuple(allowed[name])}",
                hint="the config and the weights disagree; the files may come from "
                "different dictionaries")
    check_memory(where, sum(math.prod(shape) for _, shape in declared.values()))


def check_memory(where: Path, n_values: int) -> None:
    """``DictionaryLoadError`` if ``n_values`` float32 numbers exceed :func:`memory_limit`."""
    need, limit = 4 * n_values, memory_limit()
    if need > limit:
        raise DictionaryLoadError(
            f"{str(where)!r} declares {n_values} weights ({_gib(need)} as float32), more than "
            f"the {_gib(limit)} of memory this process may use",
            hint="load it on a machine with more memory; if the dictionary is not that large, "
            "the file is corrupt")


# ---------------------------------------------------------------------- torch archives
def check_torch_archive(path: Path) -> None:
    """Check a ``torch.save`` zip archive before ``torch.load(..., mmap=True)``: a regular
    file, a zip archive, every member stored uncompressed (``torch.save`` never compresses:
    a compressed member is a zip bomb), the pickle bounded and the tensors within memory."""
    size = regular_file(path)
    fix = "save it again with torch.save (or re-download it)"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not a torch.save archive: {exc}",
                                  hint=fix) from exc
    total = 0
    for member in members:
        if member.compress_type != zipfile.ZIP_STORED:
            raise DictionaryLoadError(
                f"{str(path)!r}: member {member.filename!r} is compressed ({member.file_size} "
                f"bytes unpacked from {member.compress_size}); torch.save stores members "
                "uncompressed", hint=fix)
        if member.file_size > size:
            raise DictionaryLoadError(f"{str(path)!r}: member {member.filename!r} claims "
                                      f"{member.file_size} bytes, the file has {size}", hint=fix)
        if "/data/" not in member.filename and member.file_size > MAX_PICKLE_BYTES:
            raise DictionaryLoadError(f"{str(path)!r}: member {member.filename!r} is "
                                      f"{member.file_size} bytes (at most {MAX_PICKLE_BYTES})",
                                      hint=fix)
        total += member.file_size
    check_memory(path, total // 4)


__all__ = [
    "FLOAT_DTYPES",
    "MAX_CONFIG_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_PICKLE_BYTES",
    "SafetensorsHeader",
    "TensorInfo",
    "check_declared",
    "check_memory",
    "check_torch_archive",
    "memory_limit",
    "read_config_text",
    "read_safetensors_header",
    "read_yaml",
]
