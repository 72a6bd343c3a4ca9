"""The circuit-graph schema, graph operations and graph files."""
