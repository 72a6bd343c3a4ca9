"""The LM training script: seeded and bit-reproducible, saves a loadable HF checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from featcircuits.errors import ParameterError
from featcircuits.train.lm import LMTrainConfig, main, train_lm
from featcircuits.train.tokenizer import build_tokenizer, build_vocabulary


def _tiny(seed: int = 0) -> LMTrainConfig:
    return LMTrainConfig(seed=seed, steps=3, batch_size=8, warmup_steps=1, n_layers=1,
                         d_model=32, n_heads=2, d_mlp=64, threads=1, bucket_batches=2,
                         eval_every=0)


def test_training_is_reproducible_and_seeded(tmp_path):
    from safetensors.torch import load_file

    a = train_lm(tmp_path / "a", _tiny(0), evaluate=False, progress=False)
    b = train_lm(tmp_path / "b", _tiny(0), evaluate=False, progress=False)
    c = train_lm(tmp_path / "c", _tiny(1), evaluate=False, progress=False)
    wa = load_file(tmp_path / "a" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "model.safetensors")
    wc = load_file(tmp_path / "c" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert a["final_loss"] == b["final_loss"] != c["final_loss"]


def test_training_uses_its_threads_and_restores_the_callers(tmp_path, monkeypatch):
    """``config.threads`` applies during training only; the caller's thread count and
    torch's random state are as before afterwards."""
    import dataclasses

    from featcircuits.train import lm

    before = torch.get_num_threads()
    wanted = before + 1
    seen: list[int] = []
    real = lm.make_model  # called inside the training run

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(lm, "make_model", spy)
    state = torch.get_rng_state()
    train_lm(tmp_path / "a", dataclasses.replace(_tiny(0), threads=wanted), evaluate=False,
             progress=False)
    assert seen == [wanted]
    assert torch.get_num_threads() == before
    assert torch.equal(torch.get_rng_state(), state)


def test_cli_writes_hf_layout(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "m"
    main(["--out", str(out), "--steps", "2", "--batch-size", "4", "--n-layers", "1",
          "--d-model", "32", "--n-heads", "2", "--d-mlp", "64", "--threads", "1",
          "--warmup-steps", "1", "--no-eval"])
    record = json.loads((out / "training.json").read_text())
    assert record["train_config"]["steps"] == 2
    assert record["command"].startswith("python -m featcircuits.train.lm --out")
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "gpt_neox"
    ids = tokenizer("When Mary and John", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, 5, len(tokenizer))


def test_config_validation():
    with pytest.raises(ParameterError, match="divisible"):
        LMTrainConfig(d_model=130, n_heads=4)
    with pytest.raises(ParameterError, match="steps"):
        LMTrainConfig(steps=0)


def test_vocabulary_is_fixed_and_tokenizer_splits_punctuation():
    vocab = build_vocabulary()
    assert vocab["<|endoftext|>"] == 0 and vocab["[UNK]"] == 1
    assert vocab == build_vocabulary()
    tokenizer = build_tokenizer()
    tokens = tokenizer.convert_ids_to_tokens(tokenizer("to Mary.))")["input_ids"])
    assert tokens == ["<|endoftext|>", "to", "Mary", ".", ")", ")"]
