"""Train the bundled tiny GPT-NeoX language model on the synthetic corpus (CPU, seeded).

    python -m featcircuits.train.lm --out featcircuits/zoo/tiny

Writes the standard Hugging Face layout (config.json, model.safetensors, tokenizer files)
plus ``training.json`` (hyperparameters, seed, steps, final loss, wall time, behaviour
metrics). Documents come from ``tasks.corpus.iter_corpus`` (IOI train split only), one
document per row, BOS first, right-padded to the longest in the batch; padding is masked
out of the loss.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from featcircuits.errors import OutputError, ParameterError, TrainingError
from featcircuits.seeds import check_seed
from featcircuits.tasks.corpus import CorpusConfig, iter_corpus
from featcircuits.train.threads import torch_threads
from featcircuits.train.tokenizer import build_tokenizer
from featcircuits.writes import atomic_files


@dataclass(frozen=True)
class LMTrainConfig:
    """Everything that determines the trained model (with the corpus config)."""

    seed: int = 0
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    n_layers: int = 4
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int = 512
    context: int = 64
    threads: int = 2
    #: documents drawn at once and sorted by length into batches (less padding)
    bucket_batches: int = 8
    eval_every: int = 250

    def __post_init__(self) -> None:
        check_seed(self.seed)
        for name in ("steps", "batch_size", "n_layers", "d_model", "n_heads", "d_mlp",
                     "context", "threads"):
            if getattr(self, name) < 1:
                raise ParameterError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ParameterError(
                f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}"
            )
        if not self.lr > 0:
            raise ParameterError(f"lr must be > 0, got {self.lr}")


def make_model(config: LMTrainConfig, vocab_size: int, bos_id: int):
    """A freshly initialised ``GPTNeoXForCausalLM`` (Pythia layout, parallel residual)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model_config = GPTNeoXConfig(
        vocab_size=vocab_size,
        hidden_size=config.d_model,
        num_hidden_layers=config.n_layers,
        num_attention_heads=config.n_heads,
        intermediate_size=config.d_mlp,
        max_position_embeddings=config.context,
        hidden_act="gelu",
        use_parallel_residual=True,
        tie_word_embeddings=False,
        bos_token_id=bos_id,
        eos_token_id=bos_id,
        pad_token_id=bos_id,
        hidden_dropout=0.0,
        attention_dropout=0.0,
    )
    return GPTNeoXForCausalLM(model_config)


def _lr_at(step: int, config: LMTrainConfig) -> float:
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def train_lm(
    out: str | Path,
    config: LMTrainConfig | None = None,
    corpus: CorpusConfig | None = None,
    evaluate: bool = True,
    progress: bool = True,
    command: str | None = None,
) -> dict:
    """Train, save to ``out`` and return the training record written to training.json.

    Runs with ``config.threads`` torch CPU threads and restores the previous count after.
    """
    cfg = config or LMTrainConfig()
    corpus_cfg = corpus or CorpusConfig(max_tokens=cfg.context - 1)
    if corpus_cfg.max_tokens > cfg.context - 1:
        raise ParameterError(
            f"corpus max_tokens {corpus_cfg.max_tokens} does not fit context {cfg.context}"
            " with BOS",
            hint=f"use max_tokens <= {cfg.context - 1}",
        )
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {str(out)!r}: {exc}") from exc
    # cfg.threads CPU threads and torch's generator seeded with cfg.seed for this run only:
    # the caller's thread count and random state are restored afterwards
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return _train(out, cfg, corpus_cfg, evaluate, progress, command)


def _train(out: Path, cfg: LMTrainConfig, corpus_cfg: CorpusConfig, evaluate: bool,
           progress: bool, command: str | None) -> dict:
    tokenizer = build_tokenizer(model_max_length=cfg.context)
    model = make_model(cfg, len(tokenizer), tokenizer.bos_token_id)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8,
    )
    batches = _length_bucketed_batches(iter_corpus(cfg.seed, corpus_cfg), tokenizer, cfg)
    losses: list[float] = []
    history: list[dict] = []
    eval_seconds = 0.0
    started = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train lm", disable=not progress, mininterval=2.0)
    for step in bar:
        input_ids, attention_mask = next(batches)
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, cfg)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {step}", hint="lower --lr or raise --warmup"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        losses.append(loss.item())
        if step % 20 == 0 or step == cfg.steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.3f}")
        due = cfg.eval_every and (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps
        if evaluate and due:
            eval_started = time.perf_counter()
            history.append(_quick_eval(model, tokenizer, step + 1, losses))
            eval_seconds += time.perf_counter() - eval_started
            bar.write(json.dumps(history[-1]))
    wall = time.perf_counter() - started - eval_seconds

    model.eval()
    record = {
        "command": command or f"train_lm({str(out)!r}, ...)",
        "train_config": asdict(cfg),
        "corpus_config": corpus_cfg.to_dict(),
        "n_parameters": n_params,
        "vocab_size": len(tokenizer),
        "final_loss": sum(losses[-50:]) / len(losses[-50:]),
        "loss_curve": [round(sum(losses[i : i + 50]) / len(losses[i : i + 50]), 4)
                       for i in range(0, len(losses), 50)],
        "wall_time_s": round(wall, 1),
        "wall_time_note": "training loop only, periodic evaluations excluded; "
        "the machine's 2 cores were shared with other jobs",
        "eval_history": history,
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if evaluate:
        from featcircuits.tasks.evaluate import behaviour_metrics

        record["metrics"] = behaviour_metrics(model, tokenizer)
    save_checkpoint(model, tokenizer, out, record)
    return record


def _length_bucketed_batches(stream, tokenizer, cfg: LMTrainConfig):
    """Endless ``(input_ids, attention_mask)`` batches; documents of similar length together.

    Draws ``bucket_batches * batch_size`` documents, sorts them by token count, cuts them
    into batches and yields those in a seeded random order.
    """
    order_rng = torch.Generator().manual_seed(cfg.seed)
    while True:
        docs = [next(stream) for _ in range(cfg.batch_size * cfg.bucket_batches)]
        encoded = tokenizer(docs)["input_ids"]
        order = sorted(range(len(docs)), key=lambda i: (len(encoded[i]), i))
        chunks = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        for k in torch.randperm(len(chunks), generator=order_rng).tolist():
            rows = [encoded[i] for i in chunks[k]]
            width = max(len(r) for r in rows)
            if width > cfg.context:
                raise TrainingError(
                    f"a document has {width} tokens, more than context {cfg.context}",
                    hint="lower the corpus max_tokens",
                )
            ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), width), dtype=torch.long)
            for r, row in enumerate(rows):
                ids[r, : len(row)] = torch.tensor(row)
                mask[r, : len(row)] = 1
            yield ids, mask


def _quick_eval(model, tokenizer, step: int, losses: list[float]) -> dict:
    from featcircuits.tasks.evaluate import ioi_metrics, parens_metrics

    model.eval()
    ioi = ioi_metrics(model, tokenizer)
    par = parens_metrics(model, tokenizer, n_texts=60)
    model.train()
    return {
        "step": step,
        "loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "ioi_acc": round(ioi["accuracy"], 3),
        "ioi_ld": round(ioi["logit_diff"], 2),
        "abc_ld": round(ioi["corrupt"]["abc"]["logit_diff"], 2),
        "parens_acc": round(par["accuracy"], 3),
        "false_close": round(par["false_close_rate"], 3),
    }


def save_checkpoint(model, tokenizer, out: Path, record: dict) -> None:
    """Save weights (safetensors), config, tokenizer and training.json into ``out``, as one
    set (``writes.atomic_files``): a kill leaves the old checkpoint or the new one."""
    with atomic_files(out) as files:
        model.save_pretrained(files.staging)
        tokenizer.save_pretrained(files.staging)
        # transformers 5 writes its own backend class name; 4.x only knows
        # PreTrainedTokenizerFast
        config_path = files.path("tokenizer_config.json")
        tok_config = json.loads(config_path.read_text(encoding="utf-8"))
        tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
        files.path("training.json").write_text(json.dumps(record, indent=2) + "\n",
                                                encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> None:
    defaults = LMTrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="featcircuits/zoo/tiny")
    for field in ("seed", "steps", "batch_size", "warmup_steps", "n_layers", "d_model",
                  "n_heads", "d_mlp", "context", "threads", "bucket_batches", "eval_every"):
        parser.add_argument("--" + field.replace("_", "-"), type=int,
                            default=getattr(defaults, field))
    for field in ("lr", "min_lr_ratio", "weight_decay", "grad_clip"):
        parser.add_argument("--" + field.replace("_", "-"), type=float,
                            default=getattr(defaults, field))
    corpus_defaults = CorpusConfig()
    for field in ("ioi_weight", "parens_weight", "filler_weight", "ioi_continue_prob"):
        parser.add_argument("--" + field.replace("_", "-"), type=float,
                            default=getattr(corpus_defaults, field))
    parser.add_argument("--no-eval", action="store_true", help="skip the behaviour metrics")
    args = parser.parse_args(argv)
    corpus_fields = ("ioi_weight", "parens_weight", "filler_weight", "ioi_continue_prob")
    values = vars(args)
    config = LMTrainConfig(**{k: v for k, v in values.items()
                              if k not in ("out", "no_eval", *corpus_fields)})
    corpus = CorpusConfig(max_tokens=config.context - 1,
                          **{k: values[k] for k in corpus_fields})
    raw = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python -m featcircuits.train.lm", *raw])
    record = train_lm(args.out, config, corpus, evaluate=not args.no_eval, command=command)
    summary = {k: record[k] for k in ("final_loss", "wall_time_s", "n_parameters")}
    summary["metrics"] = record.get("metrics")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
