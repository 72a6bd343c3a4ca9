"""Synthetic sentences with nested parentheses, and where ``)`` must come next.

Grammar (words from ``lexicon.py``)::

    sentence     := frame filled with noun phrases, names and verbs, ending in "."
    NP           := DET ADJ{0,2} NOUN [GROUP(1)]          (top level only)
    GROUP(d)     := "(" CONTENT(d) ")"                    d = depth of the group, 1..4
    CONTENT(d)   := DET ADJ{0,2} NOUN | PREP DET ADJ{0,1} NOUN
                  | PREP GROUP(d+1)                       (only while d < max depth)

Inside parentheses a noun always ends the group's content, and a group is always the last
thing in its parent's content. So, at any point where the depth (unclosed "(" so far) is
positive, ``)`` is the one grammatical next token after a noun and after a ``)``; at depth 0
it is never grammatical. ``closing_positions`` returns exactly those positions.

Example: "the dog ( with ( a red cat ) ) ran ." -> ")" is forced after "cat" and after the
first ")".
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd

from featcircuits.errors import ParameterError
from featcircuits.tasks.lexicon import (
    ADJECTIVES,
    DETERMINERS,
    INTRANSITIVE_VERBS,
    NOUNS,
    PREPOSITIONS,
    TRANSITIVE_VERBS,
)
from featcircuits.tasks.text import count_words, split_words

MAX_DEPTH = 4
_NOUN_SET = frozenset(NOUNS)


def _check_depth(max_depth: int) -> None:
    if not 1 <= max_depth <= 16:
        raise ParameterError(f"max_depth must be in 1..16, got {max_depth}")


def _leaf_phrase(rng: random.Random, max_adjectives: int = 2) -> list[str]:
    words = [rng.choice(DETERMINERS)]
    words += [rng.choice(ADJECTIVES) for _ in range(rng.randint(0, max_adjectives))]
    words.append(rng.choice(NOUNS))
    return words


def parenthetical(rng: random.Random, depth: int, target_depth: int) -> list[str]:
    """Words of one group "( ... )" at ``depth`` whose innermost group is at ``target_depth``."""
    if depth < target_depth:
        return ["(", rng.choice(PREPOSITIONS), *parenthetical(rng, depth + 1, target_depth), ")"]
    if rng.random() < 0.5:
        return ["(", *_leaf_phrase(rng), ")"]
    return ["(", rng.choice(PREPOSITIONS), *_leaf_phrase(rng, max_adjectives=1), ")"]


def noun_phrase(rng: random.Random, paren_prob: float, max_depth: int = MAX_DEPTH) -> list[str]:
    """A top-level noun phrase; with probability ``paren_prob`` it carries a parenthetical."""
    words = _leaf_phrase(rng)
    if rng.random() < paren_prob:
        words += parenthetical(rng, 1, rng.randint(1, max_depth))
    return words


def sentence(
    rng: random.Random,
    paren_prob: float = 0.5,
    max_depth: int = MAX_DEPTH,
    names: Sequence[str] = (),
) -> str:
    """One sentence of the grammar; ``paren_prob=0`` gives a plain filler sentence.

    ``names`` (optional) lets some frames use a person's name as subject or object.
    """
    _check_depth(max_depth)

    def np_() -> list[str]:
        return noun_phrase(rng, paren_prob, max_depth)

    frames = 6 if names else 4
    frame = rng.randrange(frames)
    if frame == 0:
        words = [*np_(), rng.choice(TRANSITIVE_VERBS), *np_()]
    elif frame == 1:
        words = [*np_(), rng.choice(INTRANSITIVE_VERBS), rng.choice(PREPOSITIONS), *np_()]
    elif frame == 2:
        words = [*np_(), "was", rng.choice(ADJECTIVES)]
    elif frame == 3:
        words = [*np_(), rng.choice(TRANSITIVE_VERBS), *np_(), "and", *np_(),
                 rng.choice(INTRANSITIVE_VERBS)]
    elif frame == 4:
        words = [rng.choice(names), rng.choice(TRANSITIVE_VERBS), *np_()]
    else:
        words = [*np_(), rng.choice(TRANSITIVE_VERBS), rng.choice(names)]
    words.append(".")
    return " ".join(words)


def parens_document(
    rng: random.Random, max_tokens: int = 63, max_depth: int = MAX_DEPTH, paren_prob: float = 0.6
) -> str:
    """Sentences of the grammar joined until the next would pass ``max_tokens`` words.

    Always has at least one parenthetical (the first sentence is redrawn until it has one).
    """
    while True:
        first = sentence(rng, paren_prob, max_depth)
        if "(" in first and count_words(first) <= max_tokens:
            break
    parts = [first]
    used = count_words(first)
    while True:
        nxt = sentence(rng, paren_prob, max_depth)
        n = count_words(nxt)
        if used + n > max_tokens:
            break
        parts.append(nxt)
        used += n
    return " ".join(parts)


def generate_parens_texts(
    n: int, seed: int = 0, max_depth: int = MAX_DEPTH, max_tokens: int = 63
) -> list[str]:
    """``n`` held-out evaluation documents with nested parentheses, deterministic from ``seed``.

    Drawn from a random stream named ``parens-eval/{seed}``, separate from the training
    corpus's streams (``corpus.py``), so these are fresh text, not training documents.
    """
    if n < 0:
        raise ParameterError(f"n must be >= 0, got {n}")
    _check_depth(max_depth)
    rng = random.Random(f"parens-eval/{seed}")
    return [parens_document(rng, max_tokens, max_depth) for _ in range(n)]


def _as_tokens(tokens: str | Sequence[str]) -> list[str]:
    return split_words(tokens) if isinstance(tokens, str) else list(tokens)


def paren_depths(tokens: str | Sequence[str]) -> list[int]:
    """Depth after each token: unclosed "(" among tokens[: i + 1]. A stray ")" at 0 stays 0."""
    depths = []
    depth = 0
    for token in _as_tokens(tokens):
        if token == "(":
            depth += 1
        elif token == ")" and depth > 0:
            depth -= 1
        depths.append(depth)
    return depths


def closing_positions(tokens: str | Sequence[str]) -> list[int]:
    """Indices ``i`` where ")" is the grammatical next token (predicted from position ``i``).

    That is where token ``i`` is a noun or ")" and the depth after it is positive.
    ``tokens`` is a list of token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)``,
    BOS included, so indices are model positions) or a plain string, split into words.
    """
    toks = _as_tokens(tokens)
    return [
        i
        for i, (token, depth) in enumerate(zip(toks, paren_depths(toks)))
        if depth > 0 and (token == ")" or token in _NOUN_SET)
    ]


def nonclosing_positions(tokens: str | Sequence[str]) -> list[int]:
    """Control positions: a noun or ")" at depth 0, where ")" is *not* grammatical next."""
    toks = _as_tokens(tokens)
    return [
        i
        for i, (token, depth) in enumerate(zip(toks, paren_depths(toks)))
        if depth == 0 and (token == ")" or token in _NOUN_SET)
    ]


def parens_prompt_pairs(n: int, seed: int = 0, max_depth: int = MAX_DEPTH) -> pd.DataFrame:
    """Clean/corrupt prompts for patching the closing-parenthesis behaviour.

    ``clean`` is a held-out document cut right after a position where ")" is forced;
    ``corrupt`` replaces every still-open "(" of the clean prompt by "," (same token count),
    so ")" is no longer grammatical. ``answer`` is ")" and ``wrong_answer`` ".".
    Columns: ``clean, corrupt, answer, wrong_answer, depth``.
    """
    if n < 1:
        raise ParameterError(f"n must be >= 1, got {n}")
    rng = random.Random(f"parens-pairs/{seed}")
    rows = []
    while len(rows) < n:
        toks = split_words(parens_document(rng, 63, max_depth))
        positions = closing_positions(toks)
        cut = rng.choice(positions)
        prefix = toks[: cut + 1]
        stack: list[int] = []
        for i, token in enumerate(prefix):
            if token == "(":
                stack.append(i)
            elif token == ")" and stack:
                stack.pop()
        corrupt = list(prefix)
        for i in stack:
            corrupt[i] = ","
        rows.append({
            "clean": " ".join(prefix),
            "corrupt": " ".join(corrupt),
            "answer": ")",
            "wrong_answer": ".",
            "depth": len(stack),
        })
    return pd.DataFrame(rows, columns=["clean", "corrupt", "answer", "wrong_answer", "depth"])
