"""Scalar metrics from next-token logits at the answer position.

All functions take logits ``[..., vocab]`` at the answer position and return ``[...]``.
"""

from __future__ import annotations

import torch

METRICS = ("logit_diff", "kl", "answer_prob")


def logit_diff(logits: torch.Tensor, answer_ids: torch.Tensor,
               wrong_ids: torch.Tensor) -> torch.Tensor:
    """``logit[answer] - logit[wrong_answer]``; ``answer_ids``/``wrong_ids`` broadcast to
    ``logits.shape[:-1]``."""
    answer = torch.gather(logits, -1, answer_ids.expand(logits.shape[:-1]).unsqueeze(-1))
    wrong = torch.gather(logits, -1, wrong_ids.expand(logits.shape[:-1]).unsqueeze(-1))
    return (answer - wrong).squeeze(-1)


def kl_divergence(target_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``KL(target ‖ patched) = Σ p_target (log p_target − log p_patched)`` in nats."""
    target_logp = torch.log_softmax(target_logits.float(), dim=-1)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return (target_logp.exp() * (target_logp - logp)).sum(-1)


def answer_prob(logits: torch.Tensor, answer_ids: torch.Tensor) -> torch.Tensor:
    """Probability of the answer token."""
    probs = torch.softmax(logits.float(), dim=-1)
    return torch.gather(probs, -1, answer_ids.expand(logits.shape[:-1]).unsqueeze(-1)).squeeze(-1)
