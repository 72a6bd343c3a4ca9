"""Indirect object identification (IOI): templates, names, sentences and clean/corrupt pairs.

A template has the slots ``{A}`` and ``{B}`` (the two names introduced first), ``{S}`` (the
subject, who repeats), ``{PLACE}`` and ``{OBJECT}``, and ends just before the indirect object:
"When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to" -> answer IO.

* order ``ABBA``: A = IO, B = S ("When Mary and John ..., John gave ... to" -> Mary)
* order ``BABA``: A = S, B = IO ("When John and Mary ..., John gave ... to" -> Mary)

Corruptions (the corrupt prompt always has the clean prompt's token count, because every
name is a single token and only names are substituted):

* ``abc``: S2 replaced by a third name C ("When Mary and John ..., Kate gave ... to"); both
  intro names occur once, so the IO-vs-S preference should vanish.
* ``flip``: IO and S exchanged everywhere ("When John and Mary ..., Mary gave ... to"); the
  correct answer becomes the clean prompt's S, so the clean logit diff changes sign.

Held-out split: every unordered name pair {X, Y} is ``eval`` when
``sha256("X|Y") % 5 == 0`` (names sorted), else ``train``. Training sentences only use train
pairs as (IO, S); eval prompts only eval pairs, so no eval prompt is a training sentence.
The third name C of an ABC corruption may be any other name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import combinations
from pathlib import Path

import pandas as pd

from featcircuits.errors import ParameterError, PromptError
from featcircuits.files import PROMPT_FILE_LIMIT, package_path, parse_json, read_bytes_limited
from featcircuits.seeds import check_seed
from featcircuits.tasks.prompts import read_prompts, tokenize_prompts
from featcircuits.tasks.text import split_words
from featcircuits.writes import atomic_open

ORDERS: tuple[str, ...] = ("ABBA", "BABA")
CORRUPTIONS: tuple[str, ...] = ("abc", "flip")
SPLITS: tuple[str, ...] = ("train", "eval")
#: One in ``HELDOUT_MODULUS`` name pairs is reserved for evaluation.
HELDOUT_MODULUS = 5

_SLOTS = ("{A}", "{B}", "{S}", "{PLACE}", "{OBJECT}")


def default_data_dir() -> Path:
    """The bundled IOI data folder, ``featcircuits/data/ioi`` in the installed package."""
    return package_path("data", "ioi")


def default_prompts_path() -> Path:
    """The bundled held-out prompt pairs, ``featcircuits/data/ioi/prompts.jsonl``."""
    return default_data_dir() / "prompts.jsonl"


@dataclass(frozen=True)
class Template:
    """One IOI template: an id and a prompt with the slots {A} {B} {S} {PLACE} {OBJECT}."""

    id: str
    prompt: str

    def fill(self, a: str, b: str, s: str, place: str, obj: str) -> str:
        """The prompt with every slot filled."""
        return (
            self.prompt.replace("{A}", a)
            .replace("{B}", b)
            .replace("{S}", s)
            .replace("{PLACE}", place)
            .replace("{OBJECT}", obj)
        )


@dataclass(frozen=True)
class IOIData:
    """Templates and word lists of the IOI task, as read from a data folder."""

    templates: tuple[Template, ...]
    names: tuple[str, ...]
    places: tuple[str, ...]
    objects: tuple[str, ...]

    def template(self, template_id: str) -> Template:
        for template in self.templates:
            if template.id == template_id:
                return template
        raise ParameterError(
            f"unknown IOI template {template_id!r}",
            hint=f"use one of {[t.id for t in self.templates]}",
        )

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """Unordered name pairs of ``split`` ('train' or 'eval'), in a fixed order."""
        _check_split(split)
        return [
            (x, y) for x, y in combinations(self.names, 2) if pair_split(x, y) == split
        ]

    def vocabulary(self) -> list[str]:
        """Every word and punctuation mark the templates and lists use, in a fixed order."""
        seen: dict[str, None] = {}
        for template in self.templates:
            text = template.prompt
            for slot in _SLOTS:
                text = text.replace(slot, " ")
            for word in split_words(text):
                seen.setdefault(word, None)
        for word in (*self.names, *self.places, *self.objects):
            seen.setdefault(word, None)
        return list(seen)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ParameterError(f"unknown split {split!r}", hint="use 'train' or 'eval'")


def pair_split(name_x: str, name_y: str) -> str:
    """'eval' or 'train' for the unordered name pair {name_x, name_y} (see module doc)."""
    low, high = sorted((name_x, name_y))
    digest = hashlib.sha256(f"{low}|{high}".encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") % HELDOUT_MODULUS == 0 else "train"


_DATA_HINT = ("pass data_dir= pointing at a folder laid out like featcircuits/data/ioi "
              "(see its README)")


def _read_text(path: Path, what: str) -> str:
    """The UTF-8 text of an IOI data file, through the one bounded reader (regular files of
    at most ``PROMPT_FILE_LIMIT`` bytes: no FIFO hang, no endless /dev/zero)."""
    try:
        content = read_bytes_limited(path, PROMPT_FILE_LIMIT, what, error=PromptError)
        return content.decode("utf-8")
    except PromptError as exc:
        raise PromptError(f"cannot read {exc.message}", hint=exc.hint or _DATA_HINT) from exc
    except UnicodeDecodeError as exc:
        raise PromptError(f"{what} {str(path)!r} is not UTF-8 text: {exc}") from exc


def _read_list(path: Path) -> tuple[str, ...]:
    lines = _read_text(path, "IOI word list").splitlines()
    items = tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))
    if not items:
        raise PromptError(f"IOI word list {str(path)!r} is empty", hint="one entry per line")
    bad = [item for item in items if not item.isalpha()]
    if bad:
        raise PromptError(
            f"IOI word list {str(path)!r} has entries that are not single words: {bad[:5]}",
            hint="every name, place and object must be one word (one token)",
        )
    if len(set(items)) != len(items):
        raise PromptError(f"IOI word list {str(path)!r} has duplicates", hint="remove them")
    return items


def load_ioi_data(data_dir: str | os.PathLike[str] | None = None) -> IOIData:
    """Read templates.json, names.txt, places.txt and objects.txt from ``data_dir``.

    ``data_dir`` defaults to the bundled ``featcircuits/data/ioi`` folder.
    """
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    return _load_cached(folder.resolve())


@lru_cache(maxsize=8)
def _load_cached(folder: Path) -> IOIData:
    templates_path = folder / "templates.json"
    raw = parse_json(_read_text(templates_path, "IOI templates"),
                     f"IOI templates {str(templates_path)!r}", error=PromptError)
    if not isinstance(raw, list):
        raise PromptError(f"IOI templates {str(templates_path)!r} are not a JSON list",
                          hint='write [{"id": ..., "prompt": ...}, ...]')
    templates = []
    for entry in raw:
        prompt = entry.get("prompt", "") if isinstance(entry, dict) else ""
        missing = [slot for slot in _SLOTS if slot not in prompt]
        if missing or not isinstance(entry.get("id"), str):
            raise PromptError(
                f"IOI template {entry!r} lacks an id or the slots {missing}",
                hint='each template is {"id": str, "prompt": str} and the prompt has the '
                "slots {A} {B} {S} {PLACE} {OBJECT}",
            )
        templates.append(Template(id=entry["id"], prompt=prompt))
    names = _read_list(folder / "names.txt")
    if len(names) < 3:
        raise PromptError("IOI needs at least 3 names", hint="add names to names.txt")
    return IOIData(
        templates=tuple(templates),
        names=names,
        places=_read_list(folder / "places.txt"),
        objects=_read_list(folder / "objects.txt"),
    )


@dataclass(frozen=True)
class IOIExample:
    """One IOI instance: the filled prompt and its slots."""

    template: str
    order: str
    io: str
    s: str
    place: str
    object: str
    prompt: str

    @property
    def sentence(self) -> str:
        """The full sentence, answer included: "... gave a drink to Mary."."""
        return f"{self.prompt} {self.io}."


def sample_ioi_example(
    rng: random.Random,
    data: IOIData,
    split: str = "train",
    pairs: Sequence[tuple[str, str]] | None = None,
) -> IOIExample:
    """Draw one IOI example of ``split`` with ``rng`` (template, order, names, place, object)."""
    _check_split(split)
    pool = pairs if pairs is not None else data.pairs(split)
    template = rng.choice(data.templates)
    order = rng.choice(ORDERS)
    io, s = rng.choice(pool)
    if rng.random() < 0.5:
        io, s = s, io
    place = rng.choice(data.places)
    obj = rng.choice(data.objects)
    a, b = (io, s) if order == "ABBA" else (s, io)
    return IOIExample(
        template=template.id, order=order, io=io, s=s, place=place, object=obj,
        prompt=template.fill(a, b, s, place, obj),
    )


def iter_ioi_sentences(
    seed: int = 0, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> Iterator[str]:
    """Endless, seeded stream of full IOI sentences (answer included) of ``split``."""
    data = load_ioi_data(data_dir)
    pairs = data.pairs(split)
    rng = random.Random(f"ioi-sentences/{split}/{seed}")
    while True:
        yield sample_ioi_example(rng, data, split, pairs).sentence


def generate_ioi_sentences(
    n: int, seed: int = 0, split: str = "train", data_dir: str | os.PathLike[str] | None = None
) -> list[str]:
    """``n`` full IOI sentences of ``split``, deterministic from ``seed``."""
    if n < 0:
        raise ParameterError(f"n must be >= 0, got {n}")
    stream = iter_ioi_sentences(seed, split, data_dir)
    return [next(stream) for _ in range(n)]


def _corrupt(example: IOIExample, data: IOIData, corruption: str, rng: random.Random) -> dict:
    template = data.template(example.template)
    a, b = (example.io, example.s) if example.order == "ABBA" else (example.s, example.io)
    if corruption == "abc":
        others = [name for name in data.names if name not in (example.io, example.s)]
        c = rng.choice(others)
        corrupt = template.fill(a, b, c, example.place, example.object)
        return {"corrupt": corrupt, "c": c, "corrupt_answer": None}
    if corruption == "flip":
        corrupt = template.fill(b, a, example.io, example.place, example.object)
        return {"corrupt": corrupt, "c": None, "corrupt_answer": example.s}
    raise ParameterError(f"unknown IOI corruption {corruption!r}", hint=f"use one of {CORRUPTIONS}")


def ioi_prompt_pairs(
    n: int,
    seed: int = 0,
    split: str = "eval",
    corruptions: Sequence[str] = CORRUPTIONS,
    data_dir: str | os.PathLike[str] | None = None,
    tokenizer=None,
) -> pd.DataFrame:
    """``n`` clean prompts of ``split``, each paired with every corruption in ``corruptions``.

    Returns one row per (clean prompt, corruption), ``n * len(corruptions)`` rows, columns:
    ``pair_id, clean, corrupt, answer, wrong_answer, corrupt_answer, template, order,
    corruption, io, s, c, place, object, split``. ``answer`` is IO and ``wrong_answer`` S,
    both bare names (one token each, with or without a leading space). ``corrupt_answer`` is
    the correct answer of the corrupt prompt (S for ``flip``; None for ``abc``).
    Deterministic from ``seed``. With ``tokenizer`` given, checks that clean and corrupt
    prompts have equal token counts and answers are single tokens (else ``PromptError``).
    """
    if n < 1:
        raise ParameterError(f"n must be >= 1, got {n}", hint="ask for at least one prompt")
    check_seed(seed)
    corruptions = tuple(corruptions)
    for corruption in corruptions:
        if corruption not in CORRUPTIONS:
            raise ParameterError(
                f"unknown IOI corruption {corruption!r}", hint=f"use some of {CORRUPTIONS}"
            )
    if not corruptions:
        raise ParameterError("corruptions is empty", hint=f"use some of {CORRUPTIONS}")
    data = load_ioi_data(data_dir)
    pairs = data.pairs(split)
    rng = random.Random(f"ioi-pairs/{split}/{seed}")
    rows = []
    seen: set[str] = set()
    pair_id = 0
    attempts = 0
    while pair_id < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ParameterError(
                f"cannot draw {n} distinct {split} IOI prompts", hint="ask for fewer prompts"
            )
        example = sample_ioi_example(rng, data, split, pairs)
        if example.prompt in seen:
            continue
        seen.add(example.prompt)
        for corruption in corruptions:
            row = {
                "pair_id": pair_id,
                "clean": example.prompt,
                **_corrupt(example, data, corruption, rng),
                "answer": example.io,
                "wrong_answer": example.s,
                "template": example.template,
                "order": example.order,
                "corruption": corruption,
                "io": example.io,
                "s": example.s,
                "place": example.place,
                "object": example.object,
                "split": split,
            }
            rows.append(row)
        pair_id += 1
    columns = [
        "pair_id", "clean", "corrupt", "answer", "wrong_answer", "corrupt_answer", "template",
        "order", "corruption", "io", "s", "c", "place", "object", "split",
    ]
    frame = pd.DataFrame(rows, columns=columns)
    if tokenizer is not None:
        check_prompt_pairs(frame, tokenizer)
    return frame


def check_prompt_pairs(prompts: pd.DataFrame, tokenizer) -> None:
    """Raise ``PromptError`` unless every pair tokenizes as patching needs: the checks of
    ``tokenize_prompts`` (equal token counts, different tokens, single known-token answers)."""
    tokenize_prompts(tokenizer, prompts)


def load_prompts(path: str | os.PathLike[str] | None = None, *,
                 max_bytes: int = PROMPT_FILE_LIMIT) -> pd.DataFrame:
    """Read a prompt-pair JSONL (default: the bundled ``featcircuits/data/ioi/prompts.jsonl``) with
    ``read_prompts`` (the bounded reader: a regular file of at most ``max_bytes``), keeping
    every column; missing values are ``None``."""
    target = Path(path) if path is not None else default_prompts_path()
    try:
        frame = read_prompts(target, max_bytes=max_bytes)
    except PromptError as exc:
        raise PromptError(f"cannot read prompt pairs: {exc.message}", hint=exc.hint or
                          "regenerate with `python -m featcircuits.tasks.ioi --out "
                          "featcircuits/data/ioi/prompts.jsonl`") from exc
    return frame.astype(object).where(frame.notna(), None)


def write_prompts(prompts: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``prompts`` as JSONL (one object per row), atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for record in prompts.to_dict(orient="records"):
            row = {k: (None if isinstance(v, float) and math.isnan(v) else v)
                   for k, v in record.items()}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write held-out IOI prompt pairs as JSONL.")
    parser.add_argument("--out", default=str(default_prompts_path()))
    parser.add_argument("--n", type=int, default=250, help="clean prompts (rows = n * 2)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    frame = ioi_prompt_pairs(args.n, seed=args.seed, split="eval")
    write_prompts(frame, args.out)
    print(f"wrote {len(frame)} rows to {args.out}")


if __name__ == "__main__":
    main()
