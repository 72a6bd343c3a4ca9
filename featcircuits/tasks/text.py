"""Word splitting that matches the bundled word-level tokenizer's pre-tokenizer.

The tokenizer splits on whitespace, then isolates every punctuation character; for the
ASCII text of this project that is exactly the regex ``\\w+|[^\\w\\s]``.
"""

from __future__ import annotations

import re

_WORD_RE = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """The word/punctuation tokens of ``text`` ("to Mary." -> ["to", "Mary", "."])."""
    return _WORD_RE.findall(text)


def count_words(text: str) -> int:
    """Number of tokens ``text`` becomes (without the BOS token)."""
    return len(_WORD_RE.findall(text))
