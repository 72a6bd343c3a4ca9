"""Saving and loading circuit graphs: JSON node-link, GraphML, and pandas tables.

* JSON (``write_json`` / ``read_json``) is the lossless format: every node, edge and graph
  attribute comes back with its type (``None``, int, float, str, bool, lists). The file
  carries ``format_version``; another version raises ``GraphError``.
* GraphML (``write_graphml`` / ``read_graphml``) for Gephi, yEd, Cytoscape: ``None``
  attributes are left out (and restored as ``None`` on reading), lists are stored as JSON
  strings, numbers are coerced to the schema's types.
* ``nodes_frame`` / ``edges_frame`` give one row per node / edge; ``write_tables`` writes
  them as CSV (or Parquet when pyarrow is installed).

All writes are atomic.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import networkx as nx
import pandas as pd

from featcircuits._io import atomic_path, atomic_write_text
from featcircuits.errors import GraphError, NonFiniteError, OutputError
from featcircuits.graph import FORMAT_VERSION, NODE_ATTRIBUTES, check_graph

_INT_ATTRS = ("layer", "feature", "position")
_FLOAT_ATTRS = ("activation", "effect", "weight")
_JSON_MARK = "_json_attributes"


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
    check_graph(graph)
    attrs = {key: _plain(value, f"graph attribute {key!r}")
             for key, value in graph.graph.items() if key != "format_version"}
    return {
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


def from_json_data(data: Any, *, source: str = "circuit JSON") -> nx.DiGraph:
    """Rebuild a graph from ``to_json_data`` output (checks ``format_version``)."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise GraphError(f"{source} is not a circuit graph (no 'nodes' list)",
                         hint="write circuits with featcircuits.graphio.write_json")
    version = data.get("format_version", data.get("graph", {}).get("format_version"))
    if version != FORMAT_VERSION:
        raise GraphError(
            f"{source} has circuit format_version {version!r}; this featcircuits reads version "
            f"{FORMAT_VERSION}",
            hint="re-export the circuit with a featcircuits that writes version "
            f"{FORMAT_VERSION}, or read it with the featcircuits version that wrote it",
        )
    graph = nx.DiGraph()
    graph.graph["format_version"] = FORMAT_VERSION
    graph.graph.update(data.get("graph", {}))
    for index, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise GraphError(f"{source}: node {index} has no 'id'")
        attrs = dict(node)
        graph.add_node(attrs.pop("id"), **attrs)
    for index, link in enumerate(data.get("links", [])):
        if not isinstance(link, dict) or "source" not in link or "target" not in link:
            raise GraphError(f"{source}: link {index} lacks 'source'/'target'")
        attrs = dict(link)
        graph.add_edge(attrs.pop("source"), attrs.pop("target"), **attrs)
    return check_graph(graph)


def write_json(graph: nx.DiGraph, path: str | os.PathLike[str], *, indent: int | None = 1
               ) -> Path:
    """Write ``graph`` as node-link JSON (atomically); returns the path."""
    text = json.dumps(to_json_data(graph), indent=indent, ensure_ascii=False, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike[str]) -> nx.DiGraph:
    """Read a graph written by ``write_json``."""
    file = Path(path)
    if not file.is_file():
        raise GraphError(f"circuit file {str(path)!r} does not exist",
                         hint="pass the path of a .json file written by write_json")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GraphError(f"{str(path)!r} is not valid JSON: {exc}",
                         hint="the file is truncated or not a circuit; write it again") from exc
    return from_json_data(data, source=repr(str(path)))


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
    check_graph(graph)
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
    with atomic_path(path) as tmp:
        nx.write_graphml(out, tmp)
    return Path(path)


def read_graphml(path: str | os.PathLike[str]) -> nx.DiGraph:
    """Read a graph written by ``write_graphml`` (missing schema attributes become None)."""
    file = Path(path)
    if not file.is_file():
        raise GraphError(f"GraphML file {str(path)!r} does not exist")
    try:
        raw = nx.read_graphml(file)
    except Exception as exc:  # networkx raises several parser errors
        raise GraphError(f"cannot read GraphML {str(path)!r}: {exc}",
                         hint="the file is truncated or not GraphML") from exc
    graph = nx.DiGraph()
    encoded = set(json.loads(raw.graph.pop(_JSON_MARK, "[]")))
    for key in ("node_default", "edge_default"):
        raw.graph.pop(key, None)

    def decode(data: dict) -> dict:
        return {k: json.loads(v) if k in encoded and isinstance(v, str) else v
                for k, v in data.items()}

    graph.graph.update(decode(raw.graph))
    version = graph.graph.get("format_version")
    if version != FORMAT_VERSION:
        raise GraphError(f"{str(path)!r} has circuit format_version {version!r}; this "
                         f"featcircuits reads version {FORMAT_VERSION}",
                         hint="re-export the circuit with a matching featcircuits version")
    for node, data in raw.nodes(data=True):
        attrs = {key: None for key in NODE_ATTRIBUTES}
        attrs.update(decode(data))
        graph.add_node(node, **attrs)
    for u, v, data in raw.edges(data=True):
        graph.add_edge(u, v, **decode(data))
    return check_graph(graph)


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


def write_tables(graph: nx.DiGraph, prefix: str | os.PathLike[str], *, format: str = "csv"
                 ) -> tuple[Path, Path]:
    """Write ``<prefix>nodes.<ext>`` and ``<prefix>edges.<ext>`` (``format`` is ``csv`` or
    ``parquet``; Parquet needs pyarrow). ``prefix`` may be a folder (ending in ``/``)."""
    if format not in ("csv", "parquet"):
        raise OutputError(f"unknown table format {format!r}", hint="use 'csv' or 'parquet'")
    if format == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as exc:
            raise OutputError("writing Parquet needs pyarrow, which is not installed",
                              hint="pip install pyarrow, or use format='csv'") from exc
    text = str(prefix)
    base = Path(text) if text.endswith(("/", os.sep)) or Path(text).is_dir() else None
    paths = []
    for name, frame in (("nodes", nodes_frame(graph)), ("edges", edges_frame(graph))):
        target = (base / f"{name}.{format}") if base is not None else Path(
            f"{text}{name}.{format}")
        with atomic_path(target) as tmp:
            if format == "csv":
                frame.to_csv(tmp, index=False)
            else:
                frame.to_parquet(tmp, index=False)
        paths.append(target)
    return paths[0], paths[1]
