"""The training corpus of the bundled model: IOI sentences, parenthesis text and filler.

Each item is one *document*, a string of at most ``max_tokens`` word tokens (the BOS token
the tokenizer prepends comes on top), so a document always fits the model's context:

* ``ioi`` documents start with one IOI sentence of the *train* split (answer included),
  optionally followed by filler sentences;
* ``parens`` documents are sentences with nested parentheticals (``parens.py``);
* ``filler`` documents are plain sentences, some with names, no parentheses.

Everything is drawn from ``random.Random(f"corpus/{seed}")``: the same seed and settings
give the same documents, in any process, and streams never share state.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from featcircuits.errors import ParameterError
from featcircuits.tasks.ioi import load_ioi_data, sample_ioi_example
from featcircuits.tasks.parens import MAX_DEPTH, parens_document, sentence
from featcircuits.tasks.text import count_words


@dataclass(frozen=True)
class CorpusConfig:
    """Mixture weights and sizes of the corpus (weights need not sum to one)."""

    ioi_weight: float = 0.7
    parens_weight: float = 0.2
    filler_weight: float = 0.1
    #: chance that an IOI document continues with filler sentences after the IOI sentence
    ioi_continue_prob: float = 0.0
    max_tokens: int = 63
    max_depth: int = MAX_DEPTH

    def __post_init__(self) -> None:
        weights = (self.ioi_weight, self.parens_weight, self.filler_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ParameterError(
                f"corpus weights must be >= 0 with a positive sum, got {weights}"
            )
        if self.max_tokens < 32:
            raise ParameterError(
                f"max_tokens must be >= 32 (an IOI sentence is up to ~25), got {self.max_tokens}"
            )

    def to_dict(self) -> dict:
        return asdict(self)


def _fill(rng: random.Random, parts: list[str], used: int, budget: int, names) -> str:
    while True:
        nxt = sentence(rng, paren_prob=0.0, names=names)
        n = count_words(nxt)
        if used + n > budget:
            return " ".join(parts)
        parts.append(nxt)
        used += n


def iter_corpus(
    seed: int = 0,
    config: CorpusConfig | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    with_kind: bool = False,
) -> Iterator[str] | Iterator[tuple[str, str]]:
    """Endless, seeded stream of training documents (strings).

    With ``with_kind=True`` yields ``(kind, document)`` with kind in
    ``{'ioi', 'parens', 'filler'}``. ``data_dir`` overrides the IOI data folder.
    """
    cfg = config or CorpusConfig()
    data = load_ioi_data(data_dir)
    pairs = data.pairs("train")
    rng = random.Random(f"corpus/{seed}")
    kinds = ("ioi", "parens", "filler")
    weights = (cfg.ioi_weight, cfg.parens_weight, cfg.filler_weight)
    while True:
        kind = rng.choices(kinds, weights)[0]
        if kind == "ioi":
            first = sample_ioi_example(rng, data, "train", pairs).sentence
            if rng.random() < cfg.ioi_continue_prob:
                doc = _fill(rng, [first], count_words(first), cfg.max_tokens, data.names)
            else:
                doc = first
        elif kind == "parens":
            doc = parens_document(rng, cfg.max_tokens, cfg.max_depth)
        else:
            doc = _fill(rng, [], 0, cfg.max_tokens, data.names)
            if not doc:
                continue
        yield (kind, doc) if with_kind else doc


def corpus_documents(
    n: int,
    seed: int = 0,
    config: CorpusConfig | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The first ``n`` documents of ``iter_corpus(seed, config, data_dir)``."""
    if n < 0:
        raise ParameterError(f"n must be >= 0, got {n}")
    stream = iter_corpus(seed, config, data_dir)
    return [next(stream) for _ in range(n)]
