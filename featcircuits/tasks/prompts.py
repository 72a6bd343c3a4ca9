"""Clean/corrupt prompt pairs: reading files, validating, tokenizing.

A prompt pair is a row ``{clean, corrupt, answer, wrong_answer, ...}``. The answer is the
token the model should predict after ``clean``; ``wrong_answer`` the one it predicts after
``corrupt`` (for IOI: the indirect object vs the subject). Clean and corrupt prompts of one
pair must tokenize to the same length so positions line up. Pairs of different lengths are
right-padded; the answer position is each prompt's last real token.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from featcircuits.errors import PromptError
from featcircuits.files import PROMPT_FILE_LIMIT, parse_json, read_bytes_limited

REQUIRED_COLUMNS = ("clean", "corrupt", "answer", "wrong_answer")


def read_prompts(path: str | os.PathLike[str], *, max_bytes: int = PROMPT_FILE_LIMIT
                 ) -> pd.DataFrame:
    """Read prompt pairs from JSONL, CSV, or auto-circuit's prompt JSON.

    auto-circuit's format is ``{"prompts": [{"clean": str, "corrupt": str, "answers": [str],
    "wrong_answers": [str]}, ...]}``; its first answer and wrong answer are used
    (``answers`` must be a non-empty list of strings: a bare string is refused, not read
    letter by letter). Each JSONL line must be one JSON object. Only regular files of at
    most ``max_bytes`` (default 64 MiB) are read.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".json"):
        raise PromptError(f"unknown prompt file type {suffix!r} for {str(path)!r}",
                          hint="use .jsonl, .csv or .json (auto-circuit)")
    content = read_bytes_limited(path, max_bytes, "prompt file", error=PromptError,
                                 keyword="max_bytes")
    try:
        if suffix == ".csv":
            frame = pd.read_csv(io.BytesIO(content), dtype=str, keep_default_na=False)
        elif suffix == ".jsonl":
            text = content.decode("utf-8")
            rows = []
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                row = parse_json(line, f"{str(path)!r} line {number}", error=PromptError)
                if not isinstance(row, dict):
                    raise PromptError(
                        f"{str(path)!r} line {number} is a JSON {_json_kind(row)}, not an "
                        "object", hint='each line must be {"clean": ..., "corrupt": ..., '
                        '"answer": ..., "wrong_answer": ...}')
                rows.append(row)
            frame = pd.DataFrame(rows)
        else:
            frame = _from_auto_circuit(parse_json(content, repr(str(path)), error=PromptError),
                                       path)
    except PromptError:
        raise
    except (UnicodeDecodeError, pd.errors.ParserError, ValueError) as exc:
        raise PromptError(f"could not parse {str(path)!r}: {exc}",
                          hint="check the file is valid JSONL/CSV/JSON") from exc
    return validate_prompt_frame(frame, source=str(path))


def _json_kind(value: Any) -> str:
    return {list: "array", dict: "object", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), "number")


def _first_answer(item: dict, key: str, index: int, path) -> Any:
    answers = item.get(key)
    if not isinstance(answers, list) or not answers:
        raise PromptError(
            f"{str(path)!r}: prompt {index} has {key}={answers!r}; expected a non-empty list "
            "of strings", hint=f'write "{key}": ["Mary"] (a list, even for one answer)')
    return answers[0]


def _from_auto_circuit(data: Any, path) -> pd.DataFrame:
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        rows = []
        for index, item in enumerate(data["prompts"]):
            if not isinstance(item, dict):
                raise PromptError(f"{str(path)!r}: prompt {index} is not an object")
            rows.append({"clean": item.get("clean"), "corrupt": item.get("corrupt"),
                         "answer": _first_answer(item, "answers", index, path),
                         "wrong_answer": _first_answer(item, "wrong_answers", index, path)})
        return pd.DataFrame(rows)
    if isinstance(data, list):
        for index, item in enumerate(data):
            if not isinstance(item, dict):
                raise PromptError(f"{str(path)!r}: row {index} is a JSON {_json_kind(item)}, "
                                  "not an object", hint="a list of rows holds one object per "
                                  "prompt pair")
        return pd.DataFrame(data)
    raise PromptError(f"{str(path)!r} is neither auto-circuit prompt JSON nor a list of rows",
                      hint='use {"prompts": [{"clean": ..., "corrupt": ..., "answers": [...], '
                      '"wrong_answers": [...]}]} or a list of row objects')


def validate_prompt_frame(frame: pd.DataFrame | list[dict], *, source: str = "prompts"
                          ) -> pd.DataFrame:
    """Check the required columns exist and hold non-empty strings; return a clean copy."""
    frame = pd.DataFrame(frame)
    if frame.empty:
        raise PromptError(f"{source}: no prompt pairs", hint="pass at least one row")
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise PromptError(f"{source}: missing columns {missing} (have {list(frame.columns)})",
                          hint=f"every row needs {', '.join(REQUIRED_COLUMNS)}")
    for column in REQUIRED_COLUMNS:
        for index, value in frame[column].items():
            if not isinstance(value, str) or not value.strip():
                raise PromptError(f"{source}: row {index} has {column}={value!r}",
                                  hint="every field must be a non-empty string")
    return frame.reset_index(drop=True)


@dataclass
class PromptPairs:
    """Tokenized prompt pairs (right-padded).

    Attributes:
        clean_ids, corrupt_ids: ``[n, T]`` token ids, padded with ``pad_id``.
        lengths: ``[n]`` real length of each pair (both prompts share it).
        answer_ids, wrong_ids: ``[n]`` single-token answers.
        frame: the original rows.
    """

    clean_ids: torch.Tensor
    corrupt_ids: torch.Tensor
    lengths: torch.Tensor
    answer_ids: torch.Tensor
    wrong_ids: torch.Tensor
    frame: pd.DataFrame
    pad_id: int = 0

    def __len__(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def final_positions(self) -> torch.Tensor:
        """``[n]`` index of each prompt's last real token (where the answer is predicted)."""
        return self.lengths - 1

    @property
    def token_mask(self) -> torch.Tensor:
        """``[n, T]`` True on real tokens, False on padding."""
        positions = torch.arange(self.clean_ids.shape[1], device=self.lengths.device)
        return positions[None, :] < self.lengths[:, None]

    @property
    def device(self) -> torch.device:
        return self.clean_ids.device

    def to(self, device: str | torch.device) -> PromptPairs:
        """The same pairs with every tensor on ``device`` (itself if already there)."""
        device = torch.device(device)
        if self.clean_ids.device == device:
            return self
        return PromptPairs(self.clean_ids.to(device), self.corrupt_ids.to(device),
                           self.lengths.to(device), self.answer_ids.to(device),
                           self.wrong_ids.to(device), self.frame, self.pad_id)

    def subset(self, index) -> PromptPairs:
        """The pairs at ``index`` (a slice, list or tensor of row numbers)."""
        index = torch.as_tensor(range(len(self))[index] if isinstance(index, slice) else index,
                                device=self.lengths.device)
        width = int(self.lengths[index].max())
        return PromptPairs(self.clean_ids[index, :width], self.corrupt_ids[index, :width],
                           self.lengths[index], self.answer_ids[index], self.wrong_ids[index],
                           self.frame.iloc[index.tolist()].reset_index(drop=True), self.pad_id)


def tokenizer_name(tokenizer) -> str:
    """How a message names ``tokenizer``: its checkpoint (``name_or_path``) or its class."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    name = getattr(tokenizer, "name_or_path", None)
    return f"{type(tokenizer).__name__} of {name!r}" if name else type(tokenizer).__name__


def unknown_words(tokenizer, text: str, ids: list[int]) -> bool:
    """True when ``ids`` (the tokens of ``text``) hold the tokenizer's unknown token although
    ``text`` does not spell it: a word the vocabulary lacks was replaced by ``[UNK]``."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    unk = getattr(tokenizer, "unk_token", None)
    return unk_id is not None and int(unk_id) in [int(i) for i in ids] and not (
        unk and str(unk) in text)


def check_known_token(tokenizer, text: str, ids: list[int], *, what: str) -> None:
    """``PromptError`` when ``text`` (tokenized to ``ids``) contains a word the tokenizer
    does not know: its logit would be the unknown token's, shared by every unknown word,
    so a metric on it measures nothing (``logit_diff`` 0 when both answers are unknown)."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if unknown_words(tokenizer, text, ids):
        raise PromptError(
            f"{what} {text!r} is not in the vocabulary of the tokenizer "
            f"({tokenizer_name(tokenizer)}): it tokenizes to the unknown token "
            f"{tokenizer.unk_token!r}",
            hint="use a word the model knows (check with tokenizer.tokenize(word)), e.g. one "
            "of the names in its training data")


def answer_token(tokenizer, text: str, *, row: Any = "?", column: str = "answer") -> int:
    """The single token id of ``text``; tries a leading space (BPE convention) if needed.
    ``PromptError`` when it is several tokens or the tokenizer's unknown token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1 and not text.startswith(" "):
        spaced = tokenizer(" " + text, add_special_tokens=False)["input_ids"]
        if len(spaced) == 1:
            ids = spaced
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise PromptError(
            f"row {row}: {column} {text!r} is {len(ids)} tokens {pieces}, not one",
            hint="patching metrics compare single next-token logits; pick single-token answers",
        )
    check_known_token(tokenizer, text, ids, what=f"row {row}: {column}")
    return int(ids[0])


def tokenize_prompts(tokenizer, prompts: pd.DataFrame | list[dict] | PromptPairs) -> PromptPairs:
    """Tokenize and validate prompt pairs with ``tokenizer`` (or ``model.tokenizer``).

    Raises ``PromptError`` naming the row for: clean/corrupt of different token lengths
    (showing both tokenizations), clean/corrupt that tokenize identically (e.g. differing
    only in words read as the unknown token), answers that are not one token or are the
    unknown token, empty input.
    """
    if isinstance(prompts, PromptPairs):
        return prompts
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    frame = validate_prompt_frame(prompts)
    clean, corrupt, answers, wrongs = [], [], [], []
    for index, row in frame.iterrows():
        clean_ids = tokenizer(row["clean"])["input_ids"]
        corrupt_ids = tokenizer(row["corrupt"])["input_ids"]
        if len(clean_ids) != len(corrupt_ids):
            raise PromptError(
                f"row {index}: clean and corrupt prompts tokenize to different lengths "
                f"({len(clean_ids)} vs {len(corrupt_ids)}):\n"
                f"    clean:   {tokenizer.convert_ids_to_tokens(clean_ids)}\n"
                f"    corrupt: {tokenizer.convert_ids_to_tokens(corrupt_ids)}",
                hint="edit the corrupt prompt so positions line up (same number of tokens)",
            )
        if list(clean_ids) == list(corrupt_ids):
            unknown = " (their differences are words the tokenizer does not know, read as " \
                f"{tokenizer.unk_token!r})" if unknown_words(tokenizer, row["clean"], clean_ids) \
                and row["clean"] != row["corrupt"] else ""
            raise PromptError(
                f"row {index}: clean {row['clean']!r} and corrupt {row['corrupt']!r} tokenize "
                f"identically with {tokenizer_name(tokenizer)}{unknown}; patching one into "
                "the other changes nothing (KL 0, logit difference 0)",
                hint="make the corrupt prompt differ in a word the model's vocabulary has")
        clean.append(clean_ids)
        corrupt.append(corrupt_ids)
        answers.append(answer_token(tokenizer, row["answer"], row=index))
        wrongs.append(answer_token(tokenizer, row["wrong_answer"], row=index,
                                   column="wrong_answer"))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    lengths = torch.tensor([len(ids) for ids in clean], device="cpu")
    width = int(lengths.max())

    def padded(rows: list[list[int]]) -> torch.Tensor:
        out = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
        for i, ids in enumerate(rows):
            out[i, : len(ids)] = torch.tensor(ids, device="cpu")
        return out

    return PromptPairs(padded(clean), padded(corrupt), lengths,
                       torch.tensor(answers, device="cpu"), torch.tensor(wrongs, device="cpu"),
                       frame, int(pad_id))
