"""The bundled model's word-level tokenizer (``tokenizers`` WordLevel model).

* pre-tokenizer: split on whitespace, then isolate every punctuation character, so
  "to Mary." -> ["to", "Mary", "."] and "))" -> [")", ")"];
* vocabulary: the special tokens, punctuation, then every word of the IOI data and the
  filler/parenthesis lexicon, in a fixed order (ids are reproducible);
* ``<|endoftext|>`` (id 0) is BOS, EOS and PAD; ``[UNK]`` (id 1) stands for unknown words;
* a TemplateProcessing post-processor prepends BOS: ``tokenizer("When Mary ...")`` starts
  with ``<|endoftext|>``; ``add_special_tokens=False`` gives the bare words, so an answer
  such as "Mary" (or " Mary") is exactly one token.
"""

from __future__ import annotations

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from featcircuits.tasks.ioi import load_ioi_data
from featcircuits.tasks.lexicon import PUNCTUATION, all_lexicon_words

BOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "[UNK]"
SPECIAL_TOKENS = (BOS_TOKEN, UNK_TOKEN)


def build_vocabulary(data_dir: str | os.PathLike[str] | None = None) -> dict[str, int]:
    """Token -> id: special tokens, punctuation, IOI words, lexicon words (first seen wins)."""
    ordered: dict[str, None] = {}
    for token in (*SPECIAL_TOKENS, *PUNCTUATION, *load_ioi_data(data_dir).vocabulary(),
                  *all_lexicon_words()):
        ordered.setdefault(token, None)
    return {token: index for index, token in enumerate(ordered)}


def build_tokenizer(data_dir: str | os.PathLike[str] | None = None, model_max_length: int = 64):
    """A ``transformers.PreTrainedTokenizerFast`` over the word-level vocabulary."""
    from transformers import PreTrainedTokenizerFast

    vocab = build_vocabulary(data_dir)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")]
    )
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=BOS_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=True,
    )
    return tokenizer
