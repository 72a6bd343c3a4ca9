"""Task data: IOI templates and pairs, parenthesis grammar, corpus mixing (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featcircuits.errors import ParameterError, PromptError
from featcircuits.tasks import corpus, ioi, parens
from featcircuits.tasks.text import split_words
from featcircuits.train.tokenizer import build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_default_data_dir_is_repo_data_ioi():
    assert ioi.default_data_dir() == Path(__file__).resolve().parents[2] / "featcircuits" / "data" / "ioi"
    data = ioi.load_ioi_data()
    assert len(data.names) == 40 and len(data.templates) == 10


def test_abba_baba_fill_and_answers():
    df = ioi.ioi_prompt_pairs(40, seed=3, split="eval")
    for row in df.itertuples():
        words = split_words(row.clean)
        first_two = [w for w in words if w in (row.io, row.s)][:2]
        expected = [row.io, row.s] if row.order == "ABBA" else [row.s, row.io]
        assert first_two == expected
        # the subject is mentioned twice in the clean prompt, IO once
        assert words.count(row.s) == 2 and words.count(row.io) == 1
        assert row.answer == row.io and row.wrong_answer == row.s


def test_corruptions_are_what_the_docs_say():
    df = ioi.ioi_prompt_pairs(30, seed=1, split="eval")
    abc = df[df.corruption == "abc"]
    flip = df[df.corruption == "flip"]
    assert len(abc) == len(flip) == 30
    for row in abc.itertuples():
        assert row.c not in (row.io, row.s)
        assert split_words(row.corrupt).count(row.io) == 1
        assert split_words(row.corrupt).count(row.s) == 1
        assert split_words(row.corrupt).count(row.c) == 1
        a, b = (row.io, row.s) if row.order == "ABBA" else (row.s, row.io)
        template = ioi.load_ioi_data().template(row.template)
        assert row.corrupt == template.fill(a, b, row.c, row.place, row.object)
        assert row.clean == template.fill(a, b, row.s, row.place, row.object)
    for row in flip.itertuples():
        swapped = " ".join(
            {row.io: row.s, row.s: row.io}.get(w, w) for w in split_words(row.clean)
        )
        assert " ".join(split_words(row.corrupt)) == swapped
        assert row.corrupt_answer == row.s


def test_clean_and_corrupt_have_equal_token_counts(tokenizer):
    df = ioi.ioi_prompt_pairs(100, seed=7, split="eval", tokenizer=tokenizer)
    for row in df.itertuples():
        assert len(tokenizer(row.clean)["input_ids"]) == len(tokenizer(row.corrupt)["input_ids"])


def test_check_prompt_pairs_rejects_mismatch(tokenizer):
    import pandas as pd

    bad = pd.DataFrame([{"clean": "When Mary and John went", "corrupt": "When Mary went",
                         "answer": "Mary", "wrong_answer": "John"}])
    with pytest.raises(PromptError, match="tokens"):
        ioi.check_prompt_pairs(bad, tokenizer)
    two_tokens = bad.assign(corrupt="When Kate and John went", answer="Mary Ann")
    with pytest.raises(PromptError, match="not one"):
        ioi.check_prompt_pairs(two_tokens, tokenizer)


def test_split_is_deterministic_and_disjoint():
    data = ioi.load_ioi_data()
    train, held = data.pairs("train"), data.pairs("eval")
    assert len(train) + len(held) == 40 * 39 // 2
    assert not set(train) & set(held)
    assert 0.1 < len(held) / (len(train) + len(held)) < 0.3
    assert ioi.pair_split("Mary", "John") == ioi.pair_split("John", "Mary")
    for sentence in ioi.generate_ioi_sentences(300, seed=0, split="train"):
        names = [w for w in split_words(sentence) if w in data.names]
        assert ioi.pair_split(names[0], names[1]) == "train"


def test_prompt_generation_is_seeded():
    a = ioi.ioi_prompt_pairs(20, seed=5)
    b = ioi.ioi_prompt_pairs(20, seed=5)
    c = ioi.ioi_prompt_pairs(20, seed=6)
    assert a.equals(b)
    assert not a["clean"].equals(c["clean"])


def test_bundled_prompts_file_matches_generator():
    """prompts.jsonl is exactly what the documented command writes (not hand-edited)."""
    frame = ioi.load_prompts()
    regenerated = ioi.ioi_prompt_pairs(250, seed=0, split="eval")
    assert len(frame) == 500
    assert set(frame["corruption"]) == {"abc", "flip"}
    for column in ("clean", "corrupt", "answer", "wrong_answer", "template", "order"):
        assert frame[column].tolist() == regenerated[column].tolist()
    assert (frame["split"] == "eval").all()
    assert all(ioi.pair_split(r.io, r.s) == "eval" for r in frame.itertuples())


def test_load_ioi_data_errors(tmp_path):
    with pytest.raises(PromptError, match="templates"):
        ioi.load_ioi_data(tmp_path)
    (tmp_path / "templates.json").write_text(json.dumps([{"id": "x", "prompt": "{A} and {B}"}]))
    with pytest.raises(PromptError, match="slots"):
        ioi.load_ioi_data(tmp_path)
    with pytest.raises(PromptError, match="cannot read"):
        ioi.load_prompts(tmp_path / "missing.jsonl")
    with pytest.raises(ParameterError, match="corruption"):
        ioi.ioi_prompt_pairs(2, corruptions=("nope",))


def test_custom_data_dir(tmp_path):
    src = ioi.default_data_dir()
    for name in ("places.txt", "objects.txt"):
        (tmp_path / name).write_text((src / name).read_text())
    (tmp_path / "names.txt").write_text("Ann\nBen\nCal\nDee\n")
    (tmp_path / "templates.json").write_text(json.dumps(
        [{"id": "t", "prompt": "{A} and {B} saw the {PLACE}. {S} gave a {OBJECT} to"}]
    ))
    df = ioi.ioi_prompt_pairs(3, split="train", data_dir=tmp_path, corruptions=("abc",))
    assert set(df["template"]) == {"t"}
    assert set(df["io"]) | set(df["s"]) <= {"Ann", "Ben", "Cal", "Dee"}


# ---------------------------------------------------------------- parentheses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # after "cat" (depth 2) and after the first ")" (depth 1)
        ("the dog ( with ( a red cat ) ) ran .", [7, 8]),
        # a noun at depth 0 and a ")" that returns to depth 0 are not closing positions
        ("the dog ran .", []),
        ("a cat ( my box ) slept .", [4]),
        # depth 4
        ("a cup ( for ( with ( near ( the box ) ) ) ) .", [10, 11, 12, 13]),
        # two groups, depth back to 0 in between
        ("a cat ( the dog ) saw a box ( near ( my cup ) ) .", [4, 13, 14]),
        # an unfinished prompt: ")" is forced after "lamp" and would be after the next ")"
        ("the cat ( with ( his lamp", [6]),
    ],
)
def test_closing_positions_hand_written(text, expected):
    assert parens.closing_positions(text) == expected


def test_closing_positions_follow_bos_offset():
    tokens = ["<|endoftext|>", *split_words("a cat ( my box ) slept .")]
    assert parens.closing_positions(tokens) == [5]
    assert parens.nonclosing_positions(tokens) == [2, 6]


def test_depths_and_stray_close():
    assert parens.paren_depths("( a ( b ) ) ) c") == [1, 1, 2, 2, 1, 0, 0, 0]


def test_generated_parens_obey_the_grammar():
    texts = parens.generate_parens_texts(100, seed=0)
    max_seen = 0
    for text in texts:
        toks = split_words(text)
        depths = parens.paren_depths(toks)
        assert depths[-1] == 0 and len(toks) <= 63
        max_seen = max(max_seen, max(depths))
        closing = set(parens.closing_positions(toks))
        for i in range(len(toks) - 1):
            # ")" comes next exactly at the closing positions
            assert (toks[i + 1] == ")") == (i in closing), (text, i)
    assert max_seen == 4
    assert parens.generate_parens_texts(5, seed=1) == parens.generate_parens_texts(5, seed=1)
    assert parens.generate_parens_texts(5, seed=1) != parens.generate_parens_texts(5, seed=2)


def test_parens_prompt_pairs(tokenizer):
    df = parens.parens_prompt_pairs(30, seed=0)
    for row in df.itertuples():
        assert len(tokenizer(row.clean)["input_ids"]) == len(tokenizer(row.corrupt)["input_ids"])
        assert parens.closing_positions(row.clean)[-1] == len(split_words(row.clean)) - 1
        assert len(split_words(row.corrupt)) - 1 not in parens.closing_positions(row.corrupt)
        assert row.depth >= 1


# ---------------------------------------------------------------- corpus


def test_corpus_is_deterministic_from_seed():
    a = corpus.corpus_documents(50, seed=11)
    assert a == corpus.corpus_documents(50, seed=11)
    assert a != corpus.corpus_documents(50, seed=12)


def test_corpus_mix_and_lengths(tokenizer):
    stream = corpus.iter_corpus(seed=0, with_kind=True)
    kinds = {"ioi": 0, "parens": 0, "filler": 0}
    for _ in range(600):
        kind, doc = next(stream)
        kinds[kind] += 1
        ids = tokenizer(doc)["input_ids"]
        assert len(ids) <= 64
        assert tokenizer.unk_token_id not in ids
        if kind == "parens":
            assert "(" in doc and parens.paren_depths(doc)[-1] == 0
        else:
            assert "(" not in doc
    assert kinds["ioi"] > 350 and kinds["parens"] > 80 and kinds["filler"] > 30


def test_corpus_config_validation():
    with pytest.raises(ParameterError):
        corpus.CorpusConfig(ioi_weight=-1)
    with pytest.raises(ParameterError):
        corpus.CorpusConfig(max_tokens=10)
