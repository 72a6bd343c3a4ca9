"""``python -m featcircuits.train.dictionaries``: train the shipped dictionaries of a model.

Example::

    python -m featcircuits.train.dictionaries --model tiny --out featcircuits/zoo/tiny/dictionaries

Texts come from ``--texts FILE`` (one document per line; the last ``--eval-texts`` lines are held
out), else from the bundled corpus generator ``featcircuits.tasks.corpus.iter_corpus`` (train
seed ``--seed``, evaluation seed ``--seed + 1000``), else (development only) random vocabulary
words.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from pathlib import Path

from featcircuits.train.shipping import (
    SAESetSpec,
    ShippingConfig,
    random_word_texts,
    ship_dictionaries,
)
from featcircuits.train.threads import check_threads, torch_threads


def _texts(args, model):
    if args.texts:
        lines = [line.rstrip("\n") for line in Path(args.texts).read_text(encoding="utf-8")
                 .splitlines() if line.strip()]
        if len(lines) <= args.eval_texts:
            raise SystemExit(f"--texts {args.texts} has {len(lines)} lines; need more than "
                             f"--eval-texts ({args.eval_texts})")
        return lines[:-args.eval_texts], lines[-args.eval_texts:], f"file {args.texts}"
    try:
        from featcircuits.tasks.corpus import iter_corpus
    except ImportError:
        warnings.warn("featcircuits.tasks.corpus is not available: training on random "
                      "vocabulary words (development fallback)", stacklevel=2)
        train = random_word_texts(model, 20_000, seed=args.seed)
        held_out = random_word_texts(model, args.eval_texts, seed=args.seed + 1000)
        return train, held_out, "random vocabulary words"
    train = iter_corpus(seed=args.seed)
    held_out = list(itertools.islice(iter_corpus(seed=args.seed + 1000), args.eval_texts))
    return train, held_out, "featcircuits.tasks.corpus"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m featcircuits.train.dictionaries",
                                     description=__doc__.split("\n\n")[0])
    default = ShippingConfig()
    sparse, dense = default.sae_sets
    parser.add_argument("--model", default="tiny", help="bundled name or checkpoint folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--texts", help="text file, one document per line")
    parser.add_argument("--sites", help="comma-separated sites (default: every resid_out.L)")
    parser.add_argument("--n-features", type=int, default=sparse.n_features)
    parser.add_argument("--steps", type=int, default=sparse.steps)
    parser.add_argument("--sparse-l1", type=float, default=sparse.l1_coefficient,
                        help="starting λ of sae-sparse (retrained while L0 misses "
                        f"{sparse.target_l0[0]:g}–{sparse.target_l0[1]:g})")
    parser.add_argument("--sparse-l0", default="{:g}-{:g}".format(*sparse.target_l0),
                        help="target L0 range of sae-sparse, or 'none'")
    parser.add_argument("--sparse-min-ve", type=float, default=sparse.min_variance_explained,
                        help="retrain sae-sparse with a lower λ while its variance explained "
                        "is below this and L0 allows")
    parser.add_argument("--dense-l1", type=float, default=None,
                        help="λ of sae-dense (default: sae-sparse's final λ × "
                        f"{dense.l1_coefficient:g} per site)")
    parser.add_argument("--max-retries", type=int, default=default.max_retries)
    parser.add_argument("--no-pca", action="store_true")
    parser.add_argument("--train-tokens", type=int, default=default.train_tokens)
    parser.add_argument("--eval-texts", type=int, default=default.eval_texts)
    parser.add_argument("--batch-size", type=int, default=default.batch_size)
    parser.add_argument("--lr", type=float, default=default.lr)
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The script's entry point; ``--threads`` applies to this run only (restored after)."""
    args = build_parser().parse_args(argv)
    with torch_threads(check_threads(args.threads or None, "--threads")):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from featcircuits.model.loading import load_model

    model = load_model(args.model)
    train, held_out, source = _texts(args, model)
    print(f"model {args.model}; texts from {source}", flush=True)
    target = None if args.sparse_l0 == "none" else tuple(float(v) for v in args.sparse_l0.split("-"))
    default_dense = ShippingConfig().sae_sets[1]
    dense = (SAESetSpec("sae-dense", args.dense_l1, args.n_features, args.steps)
             if args.dense_l1 is not None else
             SAESetSpec("sae-dense", default_dense.l1_coefficient, args.n_features, args.steps,
                        relative_to="sae-sparse"))
    config = ShippingConfig(
        sae_sets=(SAESetSpec("sae-sparse", args.sparse_l1, args.n_features, args.steps,
                             target_l0=target, min_variance_explained=args.sparse_min_ve),
                  dense),
        max_retries=args.max_retries, pca=not args.no_pca, train_tokens=args.train_tokens, eval_texts=args.eval_texts,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    sites = args.sites.split(",") if args.sites else None
    ship_dictionaries(model, args.out, train, held_out, config=config, sites=sites,
                      progress=not args.quiet, log=lambda msg: print(msg, flush=True))
    print(f"wrote {Path(args.out) / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
