"""The model side: loading models (``loading``), naming sites (``sites``), metrics on
logits (``metrics``) and the one final-norm + unembedding linearisation (``readout``)."""

from featcircuits.model.loading import (
    load_model,
    model_device,
    model_dtype,
    remote_mode,
    to_model,
    trace,
    underlying_module,
    zoo_names,
    zoo_path,
)
from featcircuits.model.metrics import answer_prob, kl_divergence, logit_diff
from featcircuits.model.readout import Readout, logit_direction, readout, readout_of
from featcircuits.model.sites import (
    Architecture,
    Site,
    all_sites,
    architecture,
    d_model,
    num_layers,
)

__all__ = [
    "Architecture",
    "Readout",
    "Site",
    "all_sites",
    "answer_prob",
    "architecture",
    "d_model",
    "kl_divergence",
    "load_model",
    "logit_diff",
    "logit_direction",
    "model_device",
    "model_dtype",
    "num_layers",
    "readout",
    "readout_of",
    "remote_mode",
    "to_model",
    "trace",
    "underlying_module",
    "zoo_names",
    "zoo_path",
]
