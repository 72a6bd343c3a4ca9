"""A dictionary whose features are vocabulary tokens, for the embedding site.

``TokenBasis`` has one feature per token: its direction is the token's embedding row, and
``encode`` is one-hot on the nearest row (so feature t is 1 exactly where token t sits).
The ``embed`` site is the bare token embedding on every supported architecture (GPT-2's
position embedding is the separate site ``pos_embed``), so the reconstruction is exact and
the error is zero. Used to make circuits reach back to input tokens: node
``"embed/<token id>"`` is "this token, wherever it occurs".
"""

from __future__ import annotations

from typing import Any

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import NonFiniteError, ParameterError


class TokenBasis(Dictionary):
    """One-hot token features over an embedding matrix ``[vocab, d_model]``."""

    kind = "tokens"

    def __init__(self, embedding: torch.Tensor, *, site: str | None = "embed",
                 token_strings: list[str] | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__(site=site, meta=meta)
        embedding = torch.as_tensor(embedding, dtype=torch.float32).detach()
        if embedding.ndim != 2:
            raise ParameterError(f"embedding must be [vocab, d_model], got "
                                 f"{tuple(embedding.shape)}")
        if not torch.isfinite(embedding).all():
            raise NonFiniteError("the embedding matrix has NaN/inf values")
        if token_strings is not None and len(token_strings) != embedding.shape[0]:
            raise ParameterError(f"{len(token_strings)} token strings for a vocabulary of "
                                 f"{embedding.shape[0]}")
        self.register_buffer("embedding", embedding.clone().contiguous())
        self.register_buffer("_half_norms", 0.5 * embedding.pow(2).sum(-1))
        self.token_strings = token_strings

    @classmethod
    def from_model(cls, model, site: str = "embed") -> TokenBasis:
        """The input-embedding matrix of ``model`` (an nnsight ``LanguageModel``), on the
        model's device and in its dtype (so ``decode`` returns activations the model takes;
        ``encode`` still scores in float32)."""
        from featcircuits.model.loading import underlying_module

        module = underlying_module(model)
        weight = module.get_input_embeddings().weight
        tokenizer = getattr(model, "tokenizer", None)
        strings = None
        if tokenizer is not None:
            strings = tokenizer.convert_ids_to_tokens(list(range(weight.shape[0])))
            strings = [str(s) if s is not None else f"<{i}>" for i, s in enumerate(strings)]
        basis = cls(weight, site=site, token_strings=strings)
        if weight.is_floating_point() and not weight.is_meta:
            basis = basis.to(device=weight.device, dtype=weight.dtype)
        return basis

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """One-hot of the nearest embedding row, ``[..., vocab]`` (piecewise constant)."""
        embedding = self.embedding.float()
        half_norms = (self._half_norms if self._half_norms.dtype == torch.float32
                      else 0.5 * embedding.pow(2).sum(-1))
        scores = x.detach().float() @ embedding.T - half_norms
        return torch.nn.functional.one_hot(scores.argmax(-1), self.embedding.shape[0]).to(x.dtype)

    @property
    def directions(self) -> torch.Tensor:
        return self.embedding

    @property
    def decoder_bias(self) -> torch.Tensor:
        return self.embedding.new_zeros(self.embedding.shape[1])

    def feature_label(self, feature: int) -> str:
        """The token string of feature ``feature`` (its id when strings are unknown)."""
        if self.token_strings is None:
            return f"token {feature}"
        return self.token_strings[feature]
