"""What a circuit explains: a downstream feature, a logit, or a task metric.

A target turns one run into one number per prompt. Three kinds:

* ``FeatureTarget("resid_out.3", 117, positions=...)`` — feature 117 of the dictionary at
  ``resid_out.3``, summed (or averaged) over the chosen token positions.
* ``LogitTarget(")", minus=".", positions=...)`` — the logit of a token (minus another's),
  summed or averaged over positions; tokens are ids or single-token strings.
* ``MetricTarget("logit_diff")`` — a prompt-pair metric at each prompt's answer position
  (``logit_diff``: answer − wrong answer, ``answer_logit``, ``answer_prob``; from
  ``featcircuits.model.metrics``). Needs prompt pairs.

Positions are ``"all"`` (every real token), ``"final"`` (each prompt's last token), an int or
list of ints (negative counts from each prompt's end), a list of per-prompt lists, or a
``[n, T]`` 0/1 mask. ``reduce="mean"`` divides by the number of chosen positions per prompt.

``parse_target`` reads the string forms ``"logit_diff"``, ``"resid_out.3/117"``,
``"logit:)"`` and ``"logit:)-."``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from featcircuits.errors import GraphError, ParameterError, PromptError
from featcircuits.graph.schema import make_node_id, parse_node_id
from featcircuits.model.metrics import answer_prob, logit_diff
from featcircuits.model.sites import Site
from featcircuits.tasks.prompts import answer_token

Positions = str | int | Sequence[int] | Sequence[Sequence[int]] | torch.Tensor
METRIC_TARGETS = ("logit_diff", "answer_logit", "answer_prob")
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class FeatureTarget:
    """Feature ``feature`` of the dictionary at ``site``, reduced over ``positions``."""

    site: str
    feature: int
    positions: Positions = "all"
    reduce: str = "sum"


@dataclass(frozen=True)
class LogitTarget:
    """The logit of ``token`` (minus the logit of ``minus``), reduced over ``positions``."""

    token: int | str
    minus: int | str | None = None
    positions: Positions = "final"
    reduce: str = "sum"


@dataclass(frozen=True)
class MetricTarget:
    """A prompt-pair metric at each prompt's answer position (needs prompt pairs)."""

    metric: str = "logit_diff"


Target = FeatureTarget | LogitTarget | MetricTarget


@dataclass
class ResolvedTarget:
    """A target bound to concrete data.

    Attributes:
        node_id: its node in the circuit graph (``"resid_out.3/117"``, ``"output/logit_diff"``).
        weights: ``[n, T]`` how each position counts (0 elsewhere; 1/count for ``mean``).
        site, feature: for feature targets; ``None`` for outputs.
        token_ids, minus_ids: ``[n]`` for logit/metric targets (``minus_ids`` may be None).
        transform: ``"feature"``, ``"logit"`` or ``"prob"``.
    """

    node_id: str
    label: str
    spec: str
    weights: torch.Tensor
    site: str | None = None
    feature: int | None = None
    token_ids: torch.Tensor | None = None
    minus_ids: torch.Tensor | None = None
    transform: str = "logit"

    @property
    def is_output(self) -> bool:
        return self.site is None

    def output_values(self, logits: torch.Tensor, rows_per_prompt: int,
                      positions: Sequence[int] | None = None) -> torch.Tensor:
        """``[R]`` values from logits ``[R, T, vocab]`` of ``rows_per_prompt`` copies of the
        data (row ``r`` is prompt ``r % n``); or ``[R, len(positions), vocab]`` holding only
        the sorted ``positions`` (which include every position this target reads)."""
        weights = self.weights.repeat(rows_per_prompt, 1)
        used = torch.nonzero(weights.any(0)).flatten()
        columns = used
        if positions is not None:
            column_of = {int(p): i for i, p in enumerate(positions)}
            columns = torch.tensor([column_of[int(p)] for p in used.tolist()],
                                   dtype=torch.long, device=logits.device)
        logits = logits[:, columns].float()  # bf16 logit differences lose their low digits
        weights = weights[:, used]
        tokens = self.token_ids.repeat(rows_per_prompt)[:, None].expand(-1, len(used))
        if self.transform == "prob":
            values = answer_prob(logits, tokens)
        elif self.minus_ids is not None:
            minus = self.minus_ids.repeat(rows_per_prompt)[:, None].expand(-1, len(used))
            values = logit_diff(logits, tokens, minus)
        else:
            values = torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1)
        return (values * weights).sum(-1)


def parse_target(target: Target | str | int) -> Target:
    """Turn ``"logit_diff"``, ``"resid_out.3/117"``, ``"logit:)"``, ``"logit:)-."`` or a token
    id into a target object (target objects pass through)."""
    if isinstance(target, (FeatureTarget, LogitTarget, MetricTarget)):
        return target
    if isinstance(target, int) and not isinstance(target, bool):
        return LogitTarget(target)
    if not isinstance(target, str):
        raise ParameterError(f"cannot read target {target!r}",
                             hint="pass 'logit_diff', 'resid_out.3/117', 'logit:TOKEN', a token "
                             "id, or a FeatureTarget / LogitTarget / MetricTarget")
    if target in METRIC_TARGETS:
        return MetricTarget(target)
    if target.startswith("logit:"):
        body = target[len("logit:"):]
        if len(body) > 2 and "-" in body[1:-1]:
            cut = body.index("-", 1)
            return LogitTarget(body[:cut], minus=body[cut + 1:])
        if not body:
            raise ParameterError("target 'logit:' names no token", hint="write e.g. 'logit:)'")
        return LogitTarget(body)
    if "/" in target:
        try:
            key = parse_node_id(target)
        except GraphError:
            key = None
        if key is not None and key.feature is not None and key.position is None:
            return FeatureTarget(str(Site.parse(key.site)), key.feature)
    raise ParameterError(f"cannot read target {target!r}",
                         hint=f"use one of {METRIC_TARGETS}, 'resid_out.3/117' or 'logit:TOKEN'")


def position_weights(positions: Positions, lengths: torch.Tensor, width: int,
                     reduce: str = "sum") -> torch.Tensor:
    """``[n, T]`` weights of the chosen positions of ``n`` prompts of the given lengths
    (on ``lengths.device``)."""
    if reduce not in REDUCTIONS:
        raise ParameterError(f"unknown reduce {reduce!r}", hint=f"use one of {REDUCTIONS}")
    n = len(lengths)
    device = lengths.device
    real = torch.arange(width, device=device)[None, :] < lengths[:, None]
    if isinstance(positions, torch.Tensor) and positions.ndim == 2:
        if tuple(positions.shape) != (n, width):
            raise ParameterError(f"position mask has shape {tuple(positions.shape)}, expected "
                                 f"{(n, width)}", hint="one row per prompt, one column per token")
        mask = positions.to(device).float() * real
    elif positions == "all":
        mask = real.float()
    elif positions == "final":
        mask = torch.zeros(n, width, device=device)
        mask[torch.arange(n, device=device), lengths - 1] = 1.0
    elif isinstance(positions, str):
        raise ParameterError(f"unknown positions {positions!r}",
                             hint="use 'all', 'final', token indices or a [n, T] mask")
    else:
        mask = torch.zeros(n, width, device=device)
        items = [positions] if isinstance(positions, int) else list(positions)
        per_prompt = bool(items) and not isinstance(items[0], int)
        if per_prompt and len(items) != n:
            raise ParameterError(f"got position lists for {len(items)} prompts, expected {n}",
                                 hint="pass one list of positions per prompt")
        for row, length in enumerate(lengths.tolist()):
            for position in (items[row] if per_prompt else items):
                index = int(position) + length if int(position) < 0 else int(position)
                if not 0 <= index < length:
                    raise ParameterError(f"position {position} is outside prompt {row} "
                                         f"(length {length})",
                                         hint="use indices within each prompt")
                mask[row, index] = 1.0
    counts = mask.sum(1)
    if (counts == 0).any():
        row = int(torch.nonzero(counts == 0)[0])
        raise ParameterError(f"prompt {row} has no target positions",
                             hint="choose positions present in every prompt, or drop the prompt")
    if reduce == "mean":
        mask = mask / counts[:, None]
    return mask


def _token_id(tokenizer, token: int | str, what: str) -> int:
    if isinstance(token, int) and not isinstance(token, bool):
        return token
    try:
        return answer_token(tokenizer, token, row="target", column=what)
    except PromptError as exc:
        raise ParameterError(exc.message, hint="a logit target needs a single-token string or "
                             "a token id") from exc


def resolve_target(target: Target | str | int, *, tokenizer, lengths: torch.Tensor, width: int,
                   pairs=None, sites: Sequence[str] = (), dictionaries=None) -> ResolvedTarget:
    """Bind a target to data of ``len(lengths)`` prompts padded to ``width`` tokens."""
    target = parse_target(target)
    n = len(lengths)
    if isinstance(target, FeatureTarget):
        site = str(Site.parse(target.site))
        if site not in sites:
            raise ParameterError(f"feature target {site}/{target.feature} needs a dictionary at "
                                 f"{site}", hint=f"add one to dictionaries (sites: {list(sites)})")
        if dictionaries is not None:
            dictionaries[site].check_feature_ids([target.feature])
        weights = position_weights(target.positions, lengths, width, target.reduce)
        return ResolvedTarget(make_node_id(site, int(target.feature)), f"{site}/{target.feature}",
                              f"{site}/{target.feature}", weights, site=site,
                              feature=int(target.feature), transform="feature")
    if isinstance(target, MetricTarget):
        if target.metric not in METRIC_TARGETS:
            raise ParameterError(f"unknown metric target {target.metric!r}",
                                 hint=f"use one of {METRIC_TARGETS}")
        if pairs is None:
            raise ParameterError(f"metric target {target.metric!r} needs prompt pairs with "
                                 "answers", hint="pass prompt pairs (clean, corrupt, answer, "
                                 "wrong_answer) or use a LogitTarget")
        weights = position_weights("final", lengths, width)
        minus = pairs.wrong_ids if target.metric == "logit_diff" else None
        return ResolvedTarget(make_node_id(kind="output", name=target.metric),
                              target.metric.replace("_", " "), target.metric, weights,
                              token_ids=pairs.answer_ids, minus_ids=minus,
                              transform="prob" if target.metric == "answer_prob" else "logit")
    token = _token_id(tokenizer, target.token, "token")
    minus = None if target.minus is None else _token_id(tokenizer, target.minus, "minus")
    pieces = tokenizer.convert_ids_to_tokens([token] + ([] if minus is None else [minus]))
    name = f"logit_{token}" if minus is None else f"logit_{token}-{minus}"
    label = f"logit {pieces[0]!r}" + ("" if minus is None else f" − {pieces[1]!r}")
    weights = position_weights(target.positions, lengths, width, target.reduce)
    return ResolvedTarget(make_node_id(kind="output", name=name), label,
                          f"logit:{target.token}" + ("" if minus is None else f"-{target.minus}"),
                          weights, token_ids=torch.full((n,), token, dtype=torch.long,
                                                        device=lengths.device),
                          minus_ids=None if minus is None else torch.full(
                              (n,), minus, dtype=torch.long, device=lengths.device))
