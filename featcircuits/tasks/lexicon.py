"""Word lists of the synthetic filler and parenthesis grammar (shared by parens.py and corpus.py).

Every word here is one token of the bundled word-level tokenizer. Nouns never take a
parenthetical *inside* a parenthetical, so inside parentheses a noun always ends a phrase;
that is what makes ``)`` the only grammatical next token there (see ``parens.py``).
Adjectives and nouns start with a consonant so "a {ADJ} {NOUN}" reads naturally.
"""

from __future__ import annotations

DETERMINERS: tuple[str, ...] = (
    "the", "a", "my", "his", "her", "their", "this", "that", "one", "every",
)

ADJECTIVES: tuple[str, ...] = (
    "big", "small", "red", "green", "blue", "tall", "short", "happy", "sad", "quiet",
    "loud", "warm", "cold", "dark", "bright", "young", "new", "soft", "heavy", "strange",
)

NOUNS: tuple[str, ...] = (
    "dog", "cat", "bird", "car", "tree", "man", "woman", "child", "boat", "chair",
    "table", "window", "door", "river", "road", "horse", "teacher", "doctor", "farmer",
    "baker", "box", "lamp", "cup", "coat", "song", "game", "town", "city", "hill", "field",
)

TRANSITIVE_VERBS: tuple[str, ...] = (
    "saw", "liked", "found", "took", "chased", "painted", "watched", "helped", "moved",
    "carried", "followed", "bought", "cleaned", "fixed", "visited",
)

INTRANSITIVE_VERBS: tuple[str, ...] = (
    "slept", "laughed", "waited", "smiled", "ran", "sang", "left", "stayed",
)

PREPOSITIONS: tuple[str, ...] = (
    "with", "near", "under", "behind", "beside", "without", "for", "from", "like", "about",
)

#: Words of the filler sentence frames that are not in the lists above.
FRAME_WORDS: tuple[str, ...] = ("was", "and", "but")

#: Punctuation tokens of the tokenizer (each one character, each its own token).
PUNCTUATION: tuple[str, ...] = (".", ",", "(", ")", "!", "?", ":", ";", "'", "-")


def all_lexicon_words() -> list[str]:
    """Every word of the filler/parenthesis grammar, without duplicates, in a fixed order."""
    seen: dict[str, None] = {}
    for group in (
        DETERMINERS, ADJECTIVES, NOUNS, TRANSITIVE_VERBS, INTRANSITIVE_VERBS, PREPOSITIONS,
        FRAME_WORDS,
    ):
        for word in group:
            seen.setdefault(word, None)
    return list(seen)
