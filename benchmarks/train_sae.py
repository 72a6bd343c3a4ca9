"""Benchmark: the SAE trainer vs a minimal hand-written loop, and the activation buffer.

    python benchmarks/train_sae.py [--d-model 128] [--n-features 1024] [--batch 1024]
                                   [--steps 200] [--repeats 3] [--threads N]

1. Step time of ``train_sae`` (everything on: dead-feature tracking, logging, NaN checks) vs a
   minimal torch loop of the same model, batch, optimizer and objective (MSE + L1, fused Adam,
   unit-norm decoder via gradient projection and renormalisation). Both read their batches
   from the same in-memory ``StepBatches``. Runs alternate and the best of ``--repeats`` is
   kept for each, to damp the noise of a shared machine. Target: ratio <= 1.15.
2. Activations/s of ``ActivationBuffer`` filling from a model (the bundled ``tiny`` model when
   present, else a tiny random GPT-NeoX built on the fly) vs the model's plain forward pass on
   the same token batches.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
import warnings

import torch

from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.train.buffer import ActivationBuffer, StepBatches, tokenize
from featcircuits.train.sae import make_optimizer, train_sae


def minimal_loop(data, d_model: int, n_features: int, steps: int, l1: float) -> None:
    """The reference: nothing but forward, loss, backward, constrained Adam step."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(d_model, n_features)
    optimizer = make_optimizer(list(sae.parameters()), 1e-3)
    W_enc, W_dec, b_enc, b_dec = sae.W_enc, sae.W_dec_untied, sae.b_enc, sae.b_dec
    for step in range(steps):
        x = data(step)
        codes = torch.relu((x - b_dec) @ W_enc + b_enc)
        x_hat = codes @ W_dec + b_dec
        loss = (x_hat - x).pow(2).sum(-1).mean() + l1 * codes.sum(-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            W_dec.grad.sub_((W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec)
            optimizer.step()
            W_dec.div_(W_dec.norm(dim=1, keepdim=True))


def bench_trainer(args) -> None:
    generator = torch.Generator().manual_seed(0)
    activations = torch.randn(args.batch * 64, args.d_model, generator=generator)
    data = StepBatches(activations, args.batch)
    l1 = 1.0

    def ours():
        train_sae(data, args.d_model, args.n_features, l1_coefficient=l1, steps=args.steps,
                  resample_dead_every=None, progress=False, log_every=100)

    def ours_with_bar_and_resampling():
        train_sae(data, args.d_model, args.n_features, l1_coefficient=l1, steps=args.steps,
                  resample_dead_every=max(args.steps // 2, 1), dead_window=args.steps // 4 or 1,
                  progress=True, log_every=100)

    def reference():
        minimal_loop(data, args.d_model, args.n_features, args.steps, l1)

    timings: dict[str, list[float]] = {"minimal loop": [], "train_sae": [],
                                       "train_sae (tqdm + resampling)": []}
    runs = {"minimal loop": reference, "train_sae": ours,
            "train_sae (tqdm + resampling)": ours_with_bar_and_resampling}
    minimal_loop(data, args.d_model, args.n_features, 5, l1)  # warm-up (allocator, kernels)
    train_sae(data, args.d_model, args.n_features, l1_coefficient=l1, steps=5, progress=False)
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fn()
            timings[name].append((time.perf_counter() - start) / args.steps)
    base = min(timings["minimal loop"])
    print(f"\nSAE step time: d_model={args.d_model} n_features={args.n_features} "
          f"batch={args.batch} steps={args.steps} threads={torch.get_num_threads()} "
          f"(best of {args.repeats})")
    print(f"{'loop':<32}{'ms/step':>10}{'steps/s':>10}{'ratio':>8}   all runs (ms/step)")
    for name, values in timings.items():
        best = min(values)
        print(f"{name:<32}{best * 1e3:>10.2f}{1 / best:>10.1f}{best / base:>8.3f}   "
              + " ".join(f"{v * 1e3:.2f}" for v in values))


def _model_for_buffer():
    from featcircuits.model.loading import load_model, zoo_names

    if "tiny" in zoo_names():
        return load_model("tiny"), "bundled tiny"
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, GPTNeoXConfig, PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(510)} | {"<|endoftext|>": 510, "[UNK]": 511}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]",
                                        eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = GPTNeoXConfig(vocab_size=512, hidden_size=128, num_hidden_layers=4,
                           num_attention_heads=4, intermediate_size=512,
                           max_position_embeddings=64, bos_token_id=510, eos_token_id=510)
    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="bench_tiny_")
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return load_model(folder), "random GPT-NeoX (4 layers, d_model 128)"


def bench_buffer(args) -> None:
    model, label = _model_for_buffer()
    rng = random.Random(0)
    try:
        from featcircuits.tasks.corpus import iter_corpus
        source = iter_corpus(seed=0)
        texts = [next(source) for _ in range(args.buffer_texts)]
    except ImportError:
        words = [w for w in model.tokenizer.get_vocab() if w.startswith("w")]
        texts = [" ".join(rng.choice(words) for _ in range(rng.randint(20, 63)))
                 for _ in range(args.buffer_texts)]
    layers = len(model._module.gpt_neox.layers) if hasattr(model._module, "gpt_neox") else 1
    site = f"resid_out.{layers // 2}"
    # plain forward over the same batches (full model, no nnsight)
    hf = model._module
    start = time.perf_counter()
    tokens = 0
    for i in range(0, len(texts), 32):
        ids, mask = tokenize(model, texts[i:i + 32], 64)
        with torch.no_grad():
            hf(ids, attention_mask=mask)
        tokens += int(mask.sum())
    plain = tokens / (time.perf_counter() - start)
    start = time.perf_counter()
    buffer = ActivationBuffer(model, site, texts, n_ctx=64, batch_size=32, buffer_size=16384,
                              out_batch_size=1024)
    n = sum(batch.shape[0] for batch in buffer)
    ours = n / (time.perf_counter() - start)
    print(f"\nActivation buffer on {label}, site {site}, {len(texts)} texts, 32 texts/forward:")
    print(f"{'plain HF forward (full model)':<40}{plain:>12.0f} tokens/s")
    print(f"{'ActivationBuffer (stops after site)':<40}{ours:>12.0f} activations/s"
          f"   ratio {ours / plain:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--n-features", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--buffer-texts", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-buffer", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_trainer(args)
    if not args.skip_buffer:
        bench_buffer(args)


if __name__ == "__main__":
    main()
