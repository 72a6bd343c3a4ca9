"""Training, lean: activation buffer (``buffer``), SAE trainer (``sae``), PCA and torch
FastICA (``ica``), dictionary evaluation (``evaluate``); the bundled model's own training
scripts (``lm``, ``dictionaries``, ``shipping``) are entry points run with ``python -m``."""

from featcircuits.train.buffer import ActivationBuffer, StepBatches, collect_activations
from featcircuits.train.evaluate import evaluate_dictionary
from featcircuits.train.ica import amari_distance, fit_ica
from featcircuits.train.sae import SAETrainer, train_sae
from featcircuits.train.sae_config import SAETrainingConfig

__all__ = [
    "ActivationBuffer",
    "SAETrainer",
    "SAETrainingConfig",
    "StepBatches",
    "amari_distance",
    "collect_activations",
    "evaluate_dictionary",
    "fit_ica",
    "train_sae",
]
