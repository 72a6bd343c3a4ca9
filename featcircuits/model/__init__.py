"""The model side: loading models, naming sites, reading logits (metrics, readout)."""
