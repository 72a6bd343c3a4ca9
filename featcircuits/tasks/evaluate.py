"""Behaviour metrics of a plain ``transformers`` causal LM on the IOI and parenthesis tasks.

All functions take a model (``AutoModelForCausalLM``) and its tokenizer, run batched
``torch.no_grad`` forwards with right padding, and need no nnsight.

* IOI: logit diff = logit(IO) - logit(S) at the final prompt position; accuracy = share of
  clean prompts with a positive logit diff.
* Parentheses: at every position where ")" is the grammatical next token
  (``parens.closing_positions``), is ")" the top-1 prediction? As a control, how often is
  ")" top-1 where it is ungrammatical (``parens.nonclosing_positions``)?
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from featcircuits.errors import PromptError
from featcircuits.tasks.ioi import check_prompt_pairs, load_prompts
from featcircuits.tasks.parens import (
    closing_positions,
    generate_parens_texts,
    nonclosing_positions,
    paren_depths,
)


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def batched_logits(model, tokenizer, texts: Sequence[str], batch_size: int = 128):
    """Yield ``(start, logits [b, pos, vocab], attention_mask [b, pos])`` per batch of texts."""
    device = _device(model)
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        enc = tokenizer(chunk, return_tensors="pt", padding=True)
        input_ids = enc["input_ids"].to(device)
        attention_mask = enc["attention_mask"].to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
        yield start, logits.float(), attention_mask, input_ids


def final_logits(model, tokenizer, prompts: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """Logits at each prompt's last token, ``[n_prompts, vocab]`` (right padding handled)."""
    if len(prompts) == 0:
        raise PromptError("no prompts given", hint="pass at least one prompt")
    if tokenizer.padding_side != "right":
        raise PromptError(
            f"tokenizer pads on the {tokenizer.padding_side!r}; final_logits expects 'right'",
            hint="set tokenizer.padding_side = 'right'",
        )
    out = []
    for _, logits, attention_mask, _ in batched_logits(model, tokenizer, prompts, batch_size):
        last = attention_mask.sum(dim=1) - 1
        out.append(logits[torch.arange(logits.shape[0], device=logits.device), last].cpu())
    return torch.cat(out)


def single_token_ids(tokenizer, words: Sequence[str]) -> torch.Tensor:
    """Token id of each word (``add_special_tokens=False``); ``PromptError`` if not 1 token."""
    ids = []
    for word in words:
        encoded = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(encoded) != 1:
            raise PromptError(
                f"answer {word!r} is {len(encoded)} tokens, not one",
                hint="use answers that are single tokens of this tokenizer",
            )
        ids.append(encoded[0])
    return torch.tensor(ids, dtype=torch.long)


def logit_diffs(
    model,
    tokenizer,
    prompts: Sequence[str],
    answers: Sequence[str],
    wrong_answers: Sequence[str],
    batch_size: int = 128,
) -> np.ndarray:
    """logit(answer) - logit(wrong_answer) at the last position of each prompt, ``[n]``."""
    if not len(prompts) == len(answers) == len(wrong_answers):
        raise PromptError(
            f"{len(prompts)} prompts, {len(answers)} answers, {len(wrong_answers)} wrong answers",
            hint="pass one answer and one wrong answer per prompt",
        )
    logits = final_logits(model, tokenizer, prompts, batch_size)
    rows = torch.arange(len(prompts))
    good = logits[rows, single_token_ids(tokenizer, answers)]
    bad = logits[rows, single_token_ids(tokenizer, wrong_answers)]
    return (good - bad).numpy()


def ioi_logit_diffs(
    model, tokenizer, prompts: pd.DataFrame | None = None, batch_size: int = 128
) -> pd.DataFrame:
    """``prompts`` (default: bundled prompts.jsonl) with ``clean_logit_diff`` and
    ``corrupt_logit_diff`` columns: logit(answer) - logit(wrong_answer) on each prompt."""
    frame = load_prompts() if prompts is None else prompts.copy()
    check_prompt_pairs(frame, tokenizer)
    answers = frame["answer"].tolist()
    wrong = frame["wrong_answer"].tolist()
    # each clean prompt usually appears once per corruption: run it once
    unique = frame.drop_duplicates(["clean", "answer", "wrong_answer"])
    unique_diffs = logit_diffs(
        model, tokenizer, unique["clean"].tolist(), unique["answer"].tolist(),
        unique["wrong_answer"].tolist(), batch_size,
    )
    lookup = {
        key: value
        for key, value in zip(
            zip(unique["clean"], unique["answer"], unique["wrong_answer"]), unique_diffs
        )
    }
    frame["clean_logit_diff"] = [
        lookup[key] for key in zip(frame["clean"], frame["answer"], frame["wrong_answer"])
    ]
    frame["corrupt_logit_diff"] = logit_diffs(
        model, tokenizer, frame["corrupt"].tolist(), answers, wrong, batch_size
    )
    return frame


def ioi_metrics(
    model, tokenizer, prompts: pd.DataFrame | None = None, batch_size: int = 128
) -> dict:
    """IOI behaviour summary.

    Returns ``{"n_clean", "accuracy", "logit_diff", "logit_diff_std", "corrupt": {corruption:
    {"n", "logit_diff", "accuracy"}}}`` where clean numbers are over distinct clean prompts
    and corrupt numbers measure the *clean* answer vs wrong answer on the corrupt prompt.
    """
    frame = ioi_logit_diffs(model, tokenizer, prompts, batch_size)
    clean = frame.drop_duplicates("clean")["clean_logit_diff"].to_numpy()
    result = {
        "n_clean": int(clean.size),
        "accuracy": float((clean > 0).mean()),
        "logit_diff": float(clean.mean()),
        "logit_diff_std": float(clean.std()),
        "corrupt": {},
    }
    if "corruption" in frame.columns:
        for corruption, group in frame.groupby("corruption", sort=True):
            values = group["corrupt_logit_diff"].to_numpy()
            result["corrupt"][str(corruption)] = {
                "n": int(values.size),
                "logit_diff": float(values.mean()),
                "accuracy": float((values > 0).mean()),
            }
    return result


def parens_metrics(
    model,
    tokenizer,
    texts: Sequence[str] | None = None,
    n_texts: int = 200,
    seed: int = 0,
    batch_size: int = 128,
) -> dict:
    """Closing-parenthesis behaviour on ``texts`` (default: ``n_texts`` fresh held-out ones).

    Returns ``{"n_positions", "accuracy", "by_depth": {depth: {"n", "accuracy"}},
    "n_control", "false_close_rate"}``: accuracy = share of closing positions where ")" is
    the top-1 prediction; false_close_rate = share of control positions (noun or ")" at
    depth 0) where ")" is top-1 although it is ungrammatical.
    """
    if texts is None:
        texts = generate_parens_texts(n_texts, seed=seed)
    if len(texts) == 0:
        raise PromptError("no parenthesis texts given", hint="pass at least one text")
    close_id = single_token_ids(tokenizer, [")"]).item()
    hits: list[tuple[int, bool]] = []
    control: list[bool] = []
    for start, logits, attention_mask, input_ids in batched_logits(
        model, tokenizer, texts, batch_size
    ):
        top1 = logits.argmax(dim=-1).cpu()
        for row in range(input_ids.shape[0]):
            length = int(attention_mask[row].sum())
            tokens = tokenizer.convert_ids_to_tokens(input_ids[row, :length].tolist())
            depths = paren_depths(tokens)
            for position in closing_positions(tokens):
                hits.append((depths[position], bool(top1[row, position] == close_id)))
            # the last token has no next token in the text but is still a valid query
            for position in nonclosing_positions(tokens):
                control.append(bool(top1[row, position] == close_id))
    if not hits:
        raise PromptError(
            "the texts have no position where ')' is the grammatical next token",
            hint="use texts with parentheticals (parens.generate_parens_texts)",
        )
    by_depth: dict[int, dict] = {}
    for depth in sorted({d for d, _ in hits}):
        flags = [ok for d, ok in hits if d == depth]
        by_depth[depth] = {"n": len(flags), "accuracy": float(np.mean(flags))}
    return {
        "n_positions": len(hits),
        "accuracy": float(np.mean([ok for _, ok in hits])),
        "by_depth": by_depth,
        "n_control": len(control),
        "false_close_rate": float(np.mean(control)) if control else float("nan"),
    }


def behaviour_metrics(model, tokenizer, batch_size: int = 128) -> dict:
    """IOI metrics on the bundled prompts.jsonl plus parenthesis metrics on 200 fresh texts."""
    was_training = model.training
    model.eval()
    try:
        return {
            "ioi": ioi_metrics(model, tokenizer, batch_size=batch_size),
            "parens": parens_metrics(model, tokenizer, batch_size=batch_size),
        }
    finally:
        model.train(was_training)
