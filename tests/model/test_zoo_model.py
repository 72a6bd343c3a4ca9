"""The committed tiny model (featcircuits/zoo/tiny) loads with plain transformers and really
does IOI and closing parentheses on held-out data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featcircuits.tasks import evaluate, ioi
from featcircuits.tasks.parens import parens_prompt_pairs

ZOO = Path(__file__).resolve().parents[2] / "featcircuits" / "zoo" / "tiny"


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(ZOO)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(ZOO)
    loaded.eval()
    return loaded


@pytest.fixture(scope="module")
def ioi_result(model, tokenizer):
    return evaluate.ioi_metrics(model, tokenizer)


def test_checkpoint_layout_and_size():
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "training.json"):
        assert (ZOO / name).is_file(), name
    assert (ZOO / "model.safetensors").stat().st_size <= 5 * 2**20
    config = json.loads((ZOO / "config.json").read_text())
    assert config["model_type"] == "gpt_neox"
    record = json.loads((ZOO / "training.json").read_text())
    assert record["train_config"]["seed"] == 0
    assert record["wall_time_s"] > 0 and record["final_loss"] > 0


def test_model_is_gpt_neox(model, tokenizer):
    from transformers import GPTNeoXForCausalLM

    assert isinstance(model, GPTNeoXForCausalLM)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.num_hidden_layers == 4


def test_tokenizer_loads_and_prepends_bos(tokenizer):
    ids = tokenizer("When Mary and John went to the store, John gave a drink to")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id
    assert tokenizer.convert_ids_to_tokens(ids[:3]) == ["<|endoftext|>", "When", "Mary"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.convert_ids_to_tokens(tokenizer("a ((b))")["input_ids"]) == [
        "<|endoftext|>", "a", "(", "(", "[UNK]", ")", ")"
    ]


def test_every_name_is_one_token(tokenizer):
    for name in ioi.load_ioi_data().names:
        for text in (name, " " + name):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id, name


def test_bundled_pairs_have_equal_lengths(tokenizer):
    prompts = ioi.load_prompts()
    ioi.check_prompt_pairs(prompts, tokenizer)
    lengths = [(len(tokenizer(r.clean)["input_ids"]), len(tokenizer(r.corrupt)["input_ids"]))
               for r in prompts.itertuples()]
    assert all(a == b for a, b in lengths)


def test_ioi_accuracy_and_logit_diff(ioi_result):
    assert ioi_result["n_clean"] == 250
    assert ioi_result["accuracy"] >= 0.95
    assert ioi_result["logit_diff"] >= 3.0


def test_ioi_corruptions_remove_or_flip_the_preference(ioi_result):
    clean = ioi_result["logit_diff"]
    abc = ioi_result["corrupt"]["abc"]["logit_diff"]
    flip = ioi_result["corrupt"]["flip"]["logit_diff"]
    # ABC: both intro names appear once -> far less preference than on clean prompts
    assert abc < clean / 2
    # flip: the other name is now correct -> the clean answer loses
    assert flip < -clean / 2


def test_parens_closing_accuracy(model, tokenizer):
    result = evaluate.parens_metrics(model, tokenizer, n_texts=80, seed=1)
    assert result["n_positions"] > 400
    assert result["accuracy"] >= 0.90
    assert set(result["by_depth"]) == {1, 2, 3, 4}
    # ")" must not be predicted where it is ungrammatical (depth 0): depth is really tracked
    assert result["false_close_rate"] <= 0.10


def test_closing_prediction_depends_on_unclosed_parens(model, tokenizer):
    close_id = tokenizer.convert_tokens_to_ids(")")
    prompts = [
        "a dog ( with ( the cat",  # depth 2 -> ")"
        "a dog , with , the cat",  # no open paren -> not ")"
        "a dog ( with ( the cat )",  # depth 1 -> ")"
        "a dog ( with the cat )",  # depth 0 -> not ")"
    ]
    top1 = evaluate.final_logits(model, tokenizer, prompts).argmax(dim=-1).tolist()
    assert [t == close_id for t in top1] == [True, False, True, False]


def test_parens_prompt_pairs_clean_vs_corrupt(model, tokenizer):
    pairs = parens_prompt_pairs(50, seed=0)
    clean = evaluate.logit_diffs(model, tokenizer, pairs["clean"].tolist(),
                                 pairs["answer"].tolist(), pairs["wrong_answer"].tolist())
    corrupt = evaluate.logit_diffs(model, tokenizer, pairs["corrupt"].tolist(),
                                   pairs["answer"].tolist(), pairs["wrong_answer"].tolist())
    assert (clean > 0).mean() >= 0.9
    # the corrupt prompts ("(" -> ",") are off-distribution: the model still closes on some,
    # but the mean preference for ")" collapses
    assert corrupt.mean() < clean.mean() - 5
