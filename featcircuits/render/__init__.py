"""Rendering and export of circuit graphs: matplotlib diagrams, Graphviz DOT,
self-contained interactive HTML, and circuit-tracer / Neuronpedia JSON.

All of them read the circuit-graph schema of docs/graph-format.md and share one layered
layout and one colour convention (blue = positive, red = negative).
"""

from featcircuits.graph.schema import validate_circuit_graph
from featcircuits.render.curves import plot_patching_curves
from featcircuits.render.diagram import render_circuit, save_figure
from featcircuits.render.dot import to_dot, write_dot
from featcircuits.render.examples import example_circuit, random_layered_circuit
from featcircuits.render.html import to_html
from featcircuits.render.limits import check_render_size
from featcircuits.render.neuronpedia import to_neuronpedia_json, write_neuronpedia_json

__all__ = [
    "check_render_size",
    "example_circuit",
    "plot_patching_curves",
    "random_layered_circuit",
    "render_circuit",
    "save_figure",
    "to_dot",
    "to_html",
    "to_neuronpedia_json",
    "validate_circuit_graph",
    "write_dot",
    "write_neuronpedia_json",
]
