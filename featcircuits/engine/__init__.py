"""The one intervention engine: cached runs, batched traces over rows, edit primitives."""
