"""Saving and loading circuit graphs: JSON node-link, GraphML, and pandas tables.

* JSON (``write_json`` / ``read_json``) is the lossless format: every node, edge and graph
  attribute comes back with its type (``None``, int, float, str, bool, lists). The file
  carries ``format_version``; another version raises ``GraphError``.
* GraphML (``write_graphml`` / ``read_graphml``) for Gephi, yEd, Cytoscape: ``None``
  attributes are left out (and restored as ``None`` on reading), lists are stored as JSON
  strings, numbers are coerced to the schema's types.
* ``read_graph(path)`` reads any of these files (by extension and content; the
  ``<prefix>graph.json`` manifest of a table pair, too), checking its checksum.
* ``nodes_frame`` / ``edges_frame`` give one row per node / edge; ``write_tables`` writes
  them as CSV (or Parquet when pyarrow is installed) plus a small ``graph.json`` manifest
  (graph attributes and the tables' SHA-256); ``read_tables`` reads them back (extra
  attributes come back as strings).

Every file carries a SHA-256 of its content (JSON: the top-level ``sha256``; GraphML: the
graph attribute ``_sha256``; tables: the manifest), so a damaged file raises ``GraphError``
instead of loading as a different circuit. All writes are atomic.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import networkx as nx
import pandas as pd

from featcircuits.errors import GraphError, NonFiniteError, OutputError
from featcircuits.files import GRAPH_FILE_LIMIT, parse_json, read_bytes_limited
from featcircuits.graph.schema import (
    FLOAT_ATTRIBUTES,
    FORMAT_VERSION,
    INT_ATTRIBUTES,
    NODE_ATTRIBUTES,
    check_format_version,
    validate_circuit_graph,
)
from featcircuits.writes import atomic_files, atomic_path, atomic_write_text, committed_path

_INT_ATTRS = INT_ATTRIBUTES
_FLOAT_ATTRS = FLOAT_ATTRIBUTES
_JSON_MARK = "_json_attributes"
_SHA_MARK = "_sha256"
_DAMAGED = ("the file was damaged or edited after it was written; write it again (or, for a "
            "hand-edited file, skip the check: from_json_data(json.load(f)) / "
            "read_graphml(path, verify=False))")


def _digest(payload: Any) -> str:
    """SHA-256 of ``payload``'s canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, allow_nan=True,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _verify(payload: dict, stored: Any, source: str) -> None:
    if not isinstance(stored, str):
        raise GraphError(f"{source} has no valid checksum (sha256 is {stored!r})",
                         hint=_DAMAGED)
    actual = _digest(payload)
    if actual != stored:
        raise GraphError(f"{source} does not match its checksum (stored {stored[:12]}…, "
                         f"content {actual[:12]}…)", hint=_DAMAGED)


def _file_version(data: dict, graph_attrs: dict, source: str) -> Any:
    """A file's ``format_version``: the top-level key (where the writers put it) or, for
    hand-written node-link JSON, the graph attribute; ``None`` when neither is there.

    Both present and different → ``GraphError`` (the file would read as two versions)."""
    missing = object()
    top = data.get("format_version", missing)
    inner = graph_attrs.get("format_version", missing)
    if top is not missing and inner is not missing and (
            type(top) is not type(inner) or top != inner):
        raise GraphError(f"{source} states two format versions: {top!r} at the top level and "
                         f"{inner!r} in 'graph'",
                         hint="keep one format_version (the top-level key write_json writes)")
    version = top if top is not missing else inner
    return None if version is missing else version


# ---------------------------------------------------------------------------- JSON
def _plain(value: Any, where: str) -> Any:
    """A JSON-safe copy of ``value`` (tuples → lists); NaN/inf raise ``NonFiniteError``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NonFiniteError(f"{where} is {value!r}",
                                 hint="JSON has no NaN/inf; drop or replace the value")
        return float(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _plain(value.item(), where)
    if isinstance(value, (list, tuple)):
        return [_plain(item, where) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item, where) for key, item in value.items()}
    raise GraphError(f"{where} has a value of type {type(value).__name__} ({value!r})",
                     hint="store plain numbers, strings, lists or None in circuit graphs")


def to_json_data(graph: nx.DiGraph) -> dict[str, Any]:
    """The node-link dictionary written by ``write_json``."""
    validate_circuit_graph(graph)
    attrs = {key: _plain(value, f"graph attribute {key!r}")
             for key, value in graph.graph.items() if key != "format_version"}
    data = {
        "format_version": FORMAT_VERSION,
        "directed": True,
        "graph": attrs,
        "nodes": [{"id": node, **{key: _plain(value, f"attribute {key!r} of node {node!r}")
                                  for key, value in data.items()}}
                  for node, data in graph.nodes(data=True)],
        "links": [{"source": u, "target": v,
                   **{key: _plain(value, f"attribute {key!r} of edge {u!r} -> {v!r}")
                      for key, value in data.items()}}
                  for u, v, data in graph.edges(data=True)],
    }
    return {**data, "sha256": _digest(data)}


def from_json_data(data: Any, *, source: str = "circuit JSON",
                   require_checksum: bool = False) -> nx.DiGraph:
    """Rebuild a graph from ``to_json_data`` output (checks ``format_version``, and the
    ``sha256`` checksum when present or ``require_checksum``)."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise GraphError(f"{source} is not a circuit graph (no 'nodes' list)",
                         hint="write circuits with featcircuits.graph.io.write_json")
    graph_attrs = data.get("graph", {})
    if not isinstance(graph_attrs, dict):
        raise GraphError(f"{source}: 'graph' is a {type(graph_attrs).__name__}, not an object")
    if data.get("multigraph"):
        raise GraphError(f"{source} holds a multigraph; circuits are simple directed graphs",
                         hint="merge parallel edges (sum their weights) before saving")
    check_format_version(_file_version(data, graph_attrs, source), source)
    if require_checksum or "sha256" in data:
        _verify({k: v for k, v in data.items() if k != "sha256"}, data.get("sha256"), source)
    graph = nx.DiGraph()
    graph.graph["format_version"] = FORMAT_VERSION
    graph.graph.update(graph_attrs)
    graph.graph["format_version"] = FORMAT_VERSION
    links = data.get("links", data.get("edges", []))  # networkx writes either key
    if not isinstance(links, list):
        raise GraphError(f"{source}: 'links' is a {type(links).__name__}, not a list")
    for index, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or not isinstance(node.get("id"), str):
            raise GraphError(f"{source}: node {index} has no string 'id'")
        attrs = dict(node)
        graph.add_node(attrs.pop("id"), **attrs)
    for index, link in enumerate(links):
        if not isinstance(link, dict) or not all(
                isinstance(link.get(key), str) and link[key] in graph
                for key in ("source", "target")):
            raise GraphError(f"{source}: link {index} lacks a 'source'/'target' naming a node")
        attrs = dict(link)
        graph.add_edge(attrs.pop("source"), attrs.pop("target"), **attrs)
    return validate_circuit_graph(graph)


def write_json(graph: nx.DiGraph, path: str | os.PathLike[str], *, indent: int | None = 1
               ) -> Path:
    """Write ``graph`` as node-link JSON (atomically); returns the path."""
    text = json.dumps(to_json_data(graph), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def _read_file(path: str | os.PathLike[str], max_bytes: int, what: str = "circuit file"
               ) -> bytes:
    """The bytes of a graph file: regular files of at most ``max_bytes`` only. A file of a
    set whose writer stopped between its commit and its renames is read from the set's
    staging folder (``committed_path``), so a circuit's files are all of one version."""
    return read_bytes_limited(committed_path(path), max_bytes, what, error=GraphError,
                              keyword="max_bytes")


def _read_json_file(path: str | os.PathLike[str], max_bytes: int,
                    what: str = "circuit file") -> Any:
    return parse_json(_read_file(path, max_bytes, what), f"{what} {str(path)!r}",
                      error=GraphError)


def read_json(path: str | os.PathLike[str], *, max_bytes: int = GRAPH_FILE_LIMIT
              ) -> nx.DiGraph:
    """Read a graph written by ``write_json`` (its checksum must match).

    Only regular files of at most ``max_bytes`` (default 256 MiB) are read."""
    data = _read_json_file(path, max_bytes)
    return from_json_data(data, source=repr(str(path)), require_checksum=True)


# ------------------------------------------------------------------------- GraphML
def _graphml_value(key: str, value: Any, where: str, encoded: set[str]) -> Any:
    value = _plain(value, where)
    if isinstance(value, (list, dict)):
        encoded.add(key)
        return json.dumps(value, ensure_ascii=False)
    if key in _INT_ATTRS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if key in _FLOAT_ATTRS and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def write_graphml(graph: nx.DiGraph, path: str | os.PathLike[str]) -> Path:
    """Write ``graph`` as GraphML (atomically). ``None`` attributes are omitted, lists and
    dicts become JSON strings (their keys are listed in the graph attribute
    ``_json_attributes``)."""
    validate_circuit_graph(graph)
    encoded: set[str] = set()
    out = nx.DiGraph()
    for node, data in graph.nodes(data=True):
        out.add_node(node, **{k: _graphml_value(k, v, f"attribute {k!r} of node {node!r}",
                                                encoded)
                              for k, v in data.items() if v is not None})
    for u, v, data in graph.edges(data=True):
        out.add_edge(u, v, **{k: _graphml_value(k, x, f"attribute {k!r} of edge {u!r}->{v!r}",
                                                encoded)
                              for k, x in data.items() if x is not None})
    out.graph.update({k: _graphml_value(k, v, f"graph attribute {k!r}", encoded)
                      for k, v in graph.graph.items() if v is not None})
    out.graph["format_version"] = FORMAT_VERSION
    if encoded:
        out.graph[_JSON_MARK] = json.dumps(sorted(encoded))
    out.graph[_SHA_MARK] = _digest(_canonical(out))
    with atomic_path(path) as tmp:
        nx.write_graphml(out, tmp)
    return Path(path)


def _canonical(graph: nx.DiGraph) -> dict[str, Any]:
    """What a GraphML checksum covers: graph, node and edge attributes (sorted)."""
    return {"graph": {k: v for k, v in graph.graph.items() if k != _SHA_MARK},
            "nodes": sorted([str(node), data] for node, data in graph.nodes(data=True)),
            "edges": sorted([str(u), str(v), data] for u, v, data in graph.edges(data=True))}


def read_graphml(path: str | os.PathLike[str], *, verify: bool = True,
                 max_bytes: int = GRAPH_FILE_LIMIT) -> nx.DiGraph:
    """Read a graph written by ``write_graphml`` (missing schema attributes become None).

    With ``verify`` (default) the ``_sha256`` checksum must match: pass ``verify=False`` to
    read a file edited in another tool. Only regular files of at most ``max_bytes``
    (default 256 MiB) are read."""
    content = _read_file(path, max_bytes, "GraphML file")
    try:
        with warnings.catch_warnings():  # damaged key types: the checksum reports them
            warnings.simplefilter("ignore", UserWarning)
            raw = nx.read_graphml(io.BytesIO(content))
    except Exception as exc:  # networkx raises several parser errors
        raise GraphError(f"cannot read GraphML {str(path)!r}: {type(exc).__name__}: {exc}",
                         hint="the file is truncated or not GraphML") from exc
    if not isinstance(raw, nx.DiGraph) or raw.is_multigraph():
        raise GraphError(f"GraphML {str(path)!r} is not a directed simple graph")
    for key in ("node_default", "edge_default"):
        raw.graph.pop(key, None)
    stored = raw.graph.pop(_SHA_MARK, None)
    if verify:
        try:
            payload = _canonical(raw)
        except TypeError as exc:  # unsortable (mixed-type) ids or attributes
            raise GraphError(f"GraphML {str(path)!r} has mixed-type data: {exc}",
                             hint=_DAMAGED) from exc
        _verify(payload, stored, f"GraphML {str(path)!r}")
    marks = raw.graph.pop(_JSON_MARK, "[]")
    encoded = parse_json(marks, f"GraphML {str(path)!r}: {_JSON_MARK}", error=GraphError
                         ) if isinstance(marks, str) else None
    if not isinstance(encoded, list) or not all(isinstance(key, str) for key in encoded):
        raise GraphError(f"GraphML {str(path)!r}: {_JSON_MARK} is not a JSON list of names",
                         hint=_DAMAGED)
    encoded = set(encoded)
    graph = nx.DiGraph()

    def decode(data: dict) -> dict:
        return {k: parse_json(v, f"GraphML {str(path)!r}: JSON-encoded attribute {k!r}",
                              error=GraphError)
                if k in encoded and isinstance(v, str) else v for k, v in data.items()}

    graph.graph.update(decode(raw.graph))
    check_format_version(graph.graph.get("format_version"), repr(str(path)))
    for node, data in raw.nodes(data=True):
        attrs = {key: None for key in NODE_ATTRIBUTES}
        attrs.update(decode(data))
        graph.add_node(node, **attrs)
    for u, v, data in raw.edges(data=True):
        graph.add_edge(u, v, **decode(data))
    return validate_circuit_graph(graph)


# -------------------------------------------------------------------------- tables
def nodes_frame(graph: nx.DiGraph) -> pd.DataFrame:
    """One row per node: ``id`` then the schema attributes, then any extra attributes."""
    rows = [{"id": node, **data} for node, data in graph.nodes(data=True)]
    columns = ["id", *NODE_ATTRIBUTES]
    extra = sorted({key for row in rows for key in row} - set(columns))
    frame = pd.DataFrame(rows, columns=columns + extra)
    for key in _INT_ATTRS:
        frame[key] = frame[key].astype("Int64")
    for key in ("activation", "effect"):
        frame[key] = pd.to_numeric(frame[key], errors="coerce").astype(float)
    return frame


def edges_frame(graph: nx.DiGraph) -> pd.DataFrame:
    """One row per edge: ``source, target, weight, method`` (+ extras), largest ``|weight|``
    first."""
    rows = [{"source": u, "target": v, **data} for u, v, data in graph.edges(data=True)]
    columns = ["source", "target", "weight", "method"]
    extra = sorted({key for row in rows for key in row} - set(columns))
    frame = pd.DataFrame(rows, columns=columns + extra)
    frame["weight"] = frame["weight"].astype(float)
    order = frame["weight"].abs().sort_values(ascending=False, kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def _table_paths(prefix: str | os.PathLike[str], format: str) -> dict[str, Path]:
    text = str(prefix)
    base = Path(text) if text.endswith(("/", os.sep)) or Path(text).is_dir() else None
    names = {"nodes": f"nodes.{format}", "edges": f"edges.{format}", "graph": "graph.json"}
    return {key: (base / name) if base is not None else Path(f"{text}{name}")
            for key, name in names.items()}


def _check_format(format: str) -> None:
    if format not in ("csv", "parquet"):
        raise OutputError(f"unknown table format {format!r}", hint="use 'csv' or 'parquet'")
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise OutputError("Parquet tables need pyarrow, which is not installed",
                              hint="pip install pyarrow, or use format='csv'") from exc


def write_tables(graph: nx.DiGraph, prefix: str | os.PathLike[str], *, format: str = "csv"
                 ) -> tuple[Path, Path]:
    """Write ``<prefix>nodes.<ext>`` and ``<prefix>edges.<ext>`` (``format`` is ``csv`` or
    ``parquet``; Parquet needs pyarrow), and the manifest ``<prefix>graph.json`` (graph
    attributes, the tables' SHA-256). ``prefix`` may be a folder (ending in ``/``).
    Returns the nodes and edges paths."""
    _check_format(format)
    validate_circuit_graph(graph)
    paths = _table_paths(prefix, format)
    digests = {}
    with atomic_files(paths["graph"].parent) as files:  # the three files are one set
        for name, frame in (("nodes", nodes_frame(graph)), ("edges", edges_frame(graph))):
            tmp = files.path(paths[name].name)
            if format == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
            digests[f"{name}_sha256"] = hashlib.sha256(tmp.read_bytes()).hexdigest()
        manifest = {"format_version": FORMAT_VERSION, "table_format": format,
                    "graph": {key: _plain(value, f"graph attribute {key!r}")
                              for key, value in graph.graph.items() if key != "format_version"},
                    **digests}
        manifest["sha256"] = _digest(manifest)
        files.path(paths["graph"].name).write_text(
            json.dumps(manifest, indent=1, ensure_ascii=False, allow_nan=False) + "\n",
            encoding="utf-8")
    return paths["nodes"], paths["edges"]


def _cell(value: str, key: str, where: str) -> Any:
    """A table cell (read as text) back in its schema type; ``""`` is ``None``."""
    if value == "":
        return None
    try:
        if key in _INT_ATTRS:
            return int(value)
        if key in _FLOAT_ATTRS:
            number = float(value)
            if not math.isfinite(number):
                raise NonFiniteError(f"{where}: {key} is {value!r}",
                                     hint="circuit tables hold finite numbers")
            return number
    except ValueError as exc:
        raise GraphError(f"{where}: {key} is {value!r}, not a number", hint=_DAMAGED) from exc
    return value


def read_tables(prefix: str | os.PathLike[str], *, format: str = "csv",
                max_bytes: int = GRAPH_FILE_LIMIT) -> nx.DiGraph:
    """Read a graph written by ``write_tables`` (the same ``prefix`` and ``format``).

    The manifest's checksums must match the tables. Schema attributes come back typed;
    extra node/edge attributes come back as strings (use JSON for a lossless copy). Only
    regular files of at most ``max_bytes`` (default 256 MiB) each are read."""
    _check_format(format)
    paths = _table_paths(prefix, format)
    for name, path in paths.items():
        if not committed_path(path).exists():
            raise GraphError(f"circuit table {str(path)!r} does not exist",
                             hint="pass the prefix given to write_tables")
    manifest = _read_json_file(paths["graph"], max_bytes, "circuit table manifest")
    where = repr(str(paths["graph"]))
    if not isinstance(manifest, dict):
        raise GraphError(f"{where} is not a circuit table manifest", hint=_DAMAGED)
    _verify({k: v for k, v in manifest.items() if k != "sha256"}, manifest.get("sha256"),
            where)
    graph_attrs = manifest.get("graph", {})
    if not isinstance(graph_attrs, dict):
        raise GraphError(f"{where}: 'graph' is a {type(graph_attrs).__name__}, not an object",
                         hint=_DAMAGED)
    check_format_version(_file_version(manifest, graph_attrs, where), where)
    frames = {}
    for name in ("nodes", "edges"):
        content = _read_file(paths[name], max_bytes, "circuit table")
        if hashlib.sha256(content).hexdigest() != manifest.get(f"{name}_sha256"):
            raise GraphError(f"{str(paths[name])!r} does not match the checksum in {where}",
                             hint=_DAMAGED)
        try:
            if format == "csv":
                frames[name] = pd.read_csv(io.BytesIO(content), dtype=str,
                                           keep_default_na=False)
            else:
                frames[name] = pd.read_parquet(io.BytesIO(content)).astype(str)
        except Exception as exc:  # the checksum matched: a file we cannot parse back
            raise GraphError(f"cannot parse {str(paths[name])!r}: {exc}") from exc
    graph = nx.DiGraph()
    graph.graph.update(graph_attrs)
    graph.graph["format_version"] = FORMAT_VERSION
    nodes, edges = frames["nodes"], frames["edges"]
    for column in ("id", *NODE_ATTRIBUTES):
        if column not in nodes.columns:
            raise GraphError(f"{str(paths['nodes'])!r} lacks column {column!r}")
    for column in ("source", "target", "weight"):
        if column not in edges.columns:
            raise GraphError(f"{str(paths['edges'])!r} lacks column {column!r}")
    for index, row in enumerate(nodes.to_dict("records")):
        node = row.pop("id")
        graph.add_node(node, **{key: _cell(value, key, f"node row {index}")
                                for key, value in row.items()})
    for index, row in enumerate(edges.to_dict("records")):
        u, v = row.pop("source"), row.pop("target")
        if u not in graph or v not in graph:
            raise GraphError(f"edge row {index} ({u!r} -> {v!r}) names an unknown node")
        graph.add_edge(u, v, **{key: _cell(value, key, f"edge row {index}")
                                for key, value in row.items()})
    return validate_circuit_graph(graph)


# --------------------------------------------------------------------------- any file
def _table_prefix(path: Path) -> tuple[str, str] | None:
    """``(prefix, format)`` when ``path`` is a table file or manifest of ``write_tables``."""
    name = path.name
    for format in ("csv", "parquet"):
        for stem in (f"nodes.{format}", f"edges.{format}"):
            if name.endswith(stem):
                return str(path)[: len(str(path)) - len(stem)], format
    return None


def read_graph(path: str | os.PathLike[str], *, max_bytes: int = GRAPH_FILE_LIMIT
               ) -> nx.DiGraph:
    """Read a circuit graph from any file the toolkit writes, verifying its checksum.

    * ``.graphml``: ``read_graphml``;
    * a folder, or a ``nodes.<ext>`` / ``edges.<ext>`` table, or a table manifest
      (``<prefix>graph.json``, e.g. the ``<name>_graph.json`` the ``circuit`` command
      writes): ``read_tables`` with that prefix and the manifest's table format;
    * any other JSON: node-link JSON (``read_json``). A file with a ``sha256`` key must
      match it; a file without one (e.g. ``json.dump(nx.node_link_data(graph), f)``) is
      read as written by hand: ``"links"`` or ``"edges"``, a missing ``format_version``
      read as 1.

    Only regular files of at most ``max_bytes`` (default 256 MiB) are read; ``GraphError``
    names the file and what is wrong with it.
    """
    file = Path(path)
    if file.is_dir():
        manifests = sorted(file.glob("*graph.json"))
        if (file / "graph.json").is_file():
            manifests = [file / "graph.json"]
        if len(manifests) != 1:
            raise GraphError(f"folder {str(path)!r} holds {len(manifests)} circuit table "
                             "manifests (*graph.json); expected one",
                             hint="pass the manifest file itself, or a folder written by "
                             "write_tables(graph, 'folder/')")
        file = manifests[0]
    if not committed_path(file).exists():
        raise GraphError(f"circuit file {str(path)!r} does not exist",
                         hint="pass a .json, .graphml or table file written by "
                         "featcircuits.graph.io")
    if file.suffix.lower() == ".graphml":
        return read_graphml(file, max_bytes=max_bytes)
    tables = _table_prefix(file)
    if tables is not None:
        return read_tables(tables[0], format=tables[1], max_bytes=max_bytes)
    data = _read_json_file(file, max_bytes)
    if isinstance(data, dict) and "table_format" in data and "nodes" not in data:
        name = file.name
        prefix = str(file)[: len(str(file)) - len("graph.json")] if name.endswith(
            "graph.json") else None
        if prefix is None:
            raise GraphError(f"{str(path)!r} is a table manifest but is not named "
                             "<prefix>graph.json, so its tables cannot be found",
                             hint="keep the names write_tables gave the files")
        return read_tables(prefix, format=str(data["table_format"]), max_bytes=max_bytes)
    if isinstance(data, dict) and "sha256" not in data:
        graph_attrs = data.get("graph", {})
        if isinstance(graph_attrs, dict) and _file_version(
                data, graph_attrs, repr(str(path))) is None:
            data = {**data, "format_version": FORMAT_VERSION}  # docs: missing is read as 1
    return from_json_data(data, source=repr(str(path)))
