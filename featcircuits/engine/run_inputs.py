"""What a circuit run is given: its inputs read into token ids (``read_inputs``) and the
check that a dictionary sits where the model does (``check_dictionary_placement``)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.errors import DictionaryError, PromptError
from featcircuits.model.loading import check_positions, model_device, model_dtype
from featcircuits.tasks.prompts import PromptPairs, tokenize_prompts

__all__ = ["check_dictionary_placement", "read_inputs"]


def read_inputs(model, inputs) -> tuple[torch.Tensor, torch.Tensor, PromptPairs | None]:
    """``(ids [n, T], lengths [n], pairs or None)`` from prompt pairs (DataFrame, rows,
    ``PromptPairs``), a ``[n, T]`` tensor of token ids, a list of strings or of id lists.
    Lists are right-padded with the tokenizer's pad id. ``PromptError`` for an input longer
    than the model's positions (``check_positions``), before anything runs."""
    ids, lengths, pairs = _read_inputs(model, inputs)
    texts = (pairs.frame["clean"].tolist() if pairs is not None
             else inputs if isinstance(inputs, (list, tuple)) and all(
                 isinstance(item, str) for item in inputs) else None)
    check_positions(model, lengths, what="input", texts=texts)
    return ids, lengths, pairs


def _read_inputs(model, inputs) -> tuple[torch.Tensor, torch.Tensor, PromptPairs | None]:
    import pandas as pd

    if isinstance(inputs, PromptPairs):
        return inputs.clean_ids, inputs.lengths, inputs
    if isinstance(inputs, pd.DataFrame) or (
            isinstance(inputs, list) and inputs and isinstance(inputs[0], Mapping)):
        pairs = tokenize_prompts(model.tokenizer, inputs)
        return pairs.clean_ids, pairs.lengths, pairs
    if isinstance(inputs, torch.Tensor):
        if inputs.ndim != 2 or inputs.dtype.is_floating_point or inputs.numel() == 0:
            raise PromptError(f"token ids must be a non-empty [n, T] integer tensor, got "
                              f"{tuple(inputs.shape)} {inputs.dtype}")
        ids = inputs.long()
        return ids, torch.full((ids.shape[0],), ids.shape[1], dtype=torch.long), None
    if isinstance(inputs, (list, tuple)) and inputs:
        tokenizer = getattr(model.tokenizer, "tokenizer", model.tokenizer)
        rows = []
        for index, item in enumerate(inputs):
            if isinstance(item, str):
                ids = tokenizer(item)["input_ids"]
            elif isinstance(item, (list, tuple, torch.Tensor)):
                ids = [int(i) for i in item]
            else:
                raise PromptError(f"input {index} is a {type(item).__name__}",
                                  hint="pass strings, lists of token ids, or a [n, T] tensor")
            if not ids:
                raise PromptError(f"input {index} is empty")
            rows.append(ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        lengths = torch.tensor([len(r) for r in rows])
        ids = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
        return ids, lengths, None
    raise PromptError("no inputs given", hint="pass prompt pairs, texts or token ids")


def check_dictionary_placement(dictionary: Dictionary, model, site: str) -> None:
    """Raise ``DictionaryError`` unless ``dictionary``'s weights sit on ``model``'s device
    in its dtype (the CLI casts them with ``featcircuits.model.loading.to_model``; Python callers
    must too)."""
    weights = [t for t in (*dictionary.parameters(), *dictionary.buffers())
               if t.is_floating_point()]
    if not weights:
        return
    device, dtype = model_device(model), model_dtype(model)
    if weights[0].device != device or weights[0].dtype != dtype:
        raise DictionaryError(
            f"the dictionary at {site} is on {weights[0].device} in {weights[0].dtype} but the "
            f"model is on {device} in {dtype}",
            hint="cast it first: featcircuits.model.loading.to_model(dictionary, model)")
