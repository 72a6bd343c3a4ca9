"""Shared fixtures: tiny random checkpoints of each supported architecture, built locally."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# under pytest-xdist (`make test` runs two workers on two cores) each worker takes one core
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
warnings.filterwarnings("ignore", category=DeprecationWarning)

VOCAB = 64


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 2)}
    vocab["<|endoftext|>"] = VOCAB - 2
    vocab["[UNK]"] = VOCAB - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]",
                                   eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def _configs():
    from transformers import Gemma2Config, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = {"vocab_size": VOCAB, "bos_token_id": VOCAB - 2, "eos_token_id": VOCAB - 2}
    return {
        "gpt_neox": GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64, **common),
        "gpt2": GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common),
        "llama": LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=64, **common),
        "qwen2": Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=64,
                             max_position_embeddings=64, **common),
        "gemma2": Gemma2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=64, head_dim=8,
                               max_position_embeddings=64, **common),
    }


@pytest.fixture(scope="session")
def checkpoint_dirs(tmp_path_factory) -> dict[str, str]:
    """Folders holding tiny random checkpoints (+ tokenizer) of every architecture."""
    from transformers import AutoModelForCausalLM

    tokenizer = _tokenizer()
    folders = {}
    for name, config in _configs().items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
        folder = tmp_path_factory.mktemp(f"ckpt_{name}")
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


@pytest.fixture(scope="session")
def tiny_models(checkpoint_dirs):
    """``{architecture: nnsight LanguageModel}`` loaded through featcircuits.load_model."""
    from featcircuits import load_model

    # Gemma-2 runs eager attention on transformers 5 by default but sdpa on 4.57: pinned, so
    # the tests see the same model at the lowest tested version (make test-lowest) and on 5.x
    return {name: load_model(path, **({"attn_implementation": "eager"} if name == "gemma2"
                                      else {}))
            for name, path in checkpoint_dirs.items()}


@pytest.fixture
def input_ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB - 2, (2, 6), generator=generator)
