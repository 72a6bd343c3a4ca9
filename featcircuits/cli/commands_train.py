"""``featcircuits train-sae`` and ``featcircuits fit-ica``: one dictionary at one site.

Both collect activations of ``--site`` over training texts (``--texts FILE``, one document
per line, its last ``--eval-texts`` lines held out; else the bundled corpus generator
``featcircuits.tasks.corpus`` with seed ``--seed``, held out: seed ``--seed + 1000``), fit
the dictionary, splice it into the model over the held-out texts
(``featcircuits.train.evaluate.evaluate_dictionary``), record those numbers in its ``meta``
and save it in the native SAELens layout (``cfg.json`` + ``sae_weights.safetensors``) to
``--out``. The evaluation is printed on stdout; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import math
import sys
import time
from pathlib import Path

from featcircuits.cli.flags import (
    add_model_flags,
    add_run_flags,
    finite_float,
    non_negative_int,
    positive_float,
    positive_int,
)

EVAL_KEYS = ("l0", "variance_explained", "ce_loss_recovered", "kl_spliced", "dead_fraction")


# ----------------------------------------------------------------------- shared parts
def _data_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="where to train, e.g. resid_out.2")
    parser.add_argument("--out", required=True,
                        help="output folder (cfg.json + sae_weights.safetensors)")
    add_model_flags(parser)
    parser.add_argument("--texts", default=None,
                        help="text file, one document per line (default: the bundled corpus "
                        "generator)")
    parser.add_argument("--n-tokens", type=positive_int, default=20_000,
                        help="activations to collect (default: 20000)")
    parser.add_argument("--n-ctx", type=positive_int, default=64, help="tokens per document (default 64)")
    parser.add_argument("--eval-texts", type=non_negative_int, default=64,
                        help="held-out documents for the evaluation; 0 skips it (default 64)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the checkpoint in --out if there is one "
                        "(default: start over)")


def _read_texts(args: argparse.Namespace):
    """``(train texts, held-out texts, description)`` per ``--texts`` / the corpus."""
    from featcircuits.errors import ParameterError

    for name in ("n_tokens", "n_ctx"):
        if getattr(args, name) < 1:
            raise ParameterError(f"--{name.replace('_', '-')} must be >= 1, got "
                                 f"{getattr(args, name)}")
    if args.eval_texts < 0:
        raise ParameterError(f"--eval-texts must be >= 0, got {args.eval_texts}")
    if args.texts:
        path = Path(args.texts)
        try:
            lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise ParameterError(f"cannot read --texts {args.texts!r}: {exc}",
                                 hint="pass a UTF-8 text file, one document per line") from exc
        if len(lines) <= args.eval_texts:
            raise ParameterError(f"--texts {args.texts!r} has {len(lines)} documents; need more "
                                 f"than --eval-texts ({args.eval_texts})",
                                 hint="add documents or lower --eval-texts")
        cut = len(lines) - args.eval_texts
        return lines[:cut], lines[cut:], f"{args.texts} ({cut} training documents)"
    from featcircuits.tasks.corpus import iter_corpus

    held_out = list(itertools.islice(iter_corpus(seed=args.seed + 1000), args.eval_texts))
    return iter_corpus(seed=args.seed), held_out, "the bundled corpus generator"


def _check_n_ctx(model, args: argparse.Namespace) -> None:
    """``ParameterError`` when ``--n-ctx`` exceeds the model's positions (before collecting)."""
    from featcircuits.train.buffer import check_n_ctx

    check_n_ctx(model, args.n_ctx, flag="--n-ctx")


def _texts_identity(args: argparse.Namespace) -> str:
    """What ``--texts`` was, for the checkpoint: the file's SHA-256 (its path may move), or
    the bundled corpus generator."""
    if not args.texts:
        return "bundled corpus generator"
    return "sha256:" + hashlib.sha256(Path(args.texts).read_bytes()).hexdigest()


def _prepare_out(args: argparse.Namespace, checkpoint: Path) -> None:
    """Without ``--resume`` an old checkpoint is removed so training starts over."""
    if checkpoint.exists() and not args.resume:
        checkpoint.unlink()


def _collect(model, args: argparse.Namespace, train_texts):
    from featcircuits.train.buffer import collect_activations

    start = time.perf_counter()
    activations = collect_activations(model, args.site, train_texts, args.n_tokens,
                                      n_ctx=args.n_ctx, device=args.device,
                                      progress=not args.quiet)
    _progress(args, f"collected {activations.shape[0]} activations at {args.site} "
              f"in {time.perf_counter() - start:.1f}s")
    return activations


def _progress(args: argparse.Namespace, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


def finish_training(model, dictionary, args: argparse.Namespace, held_out: list[str],
            extra: dict) -> dict:
    """Evaluate (unless ``--eval-texts 0``), record, save and print the dictionary."""
    from featcircuits.cli.flags import dictionary_for_model
    from featcircuits.dictionaries.io import save_dictionary
    from featcircuits.model.loading import model_name

    stats: dict = {}
    if held_out:
        from featcircuits.train.evaluate import evaluate_dictionary

        # a copy in the model's dtype and device: the saved weights stay the trained float32
        evaluated = dictionary_for_model(copy.deepcopy(dictionary), model, args)
        stats = evaluate_dictionary(model, evaluated, args.site, held_out, n_ctx=args.n_ctx,
                                    progress=not args.quiet)
        del evaluated
    dictionary.meta.update({"model_name": model_name(model), "seed": args.seed, **extra,
                            **{k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                               for k, v in stats.items()}})
    path = save_dictionary(dictionary.cpu(), args.out)
    rows = [("site", args.site), ("n_features", dictionary.n_features), *extra.items()]
    rows += [(key, stats[key]) for key in EVAL_KEYS if key in stats]
    for key, value in rows:
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:>20}: {shown}")
    if not stats:
        print(f"{'evaluation':>20}: skipped (--eval-texts 0)")
    print(f"wrote {path}", file=sys.stderr)
    return stats


# -------------------------------------------------------------------------- train-sae
def add_train_sae_arguments(parser: argparse.ArgumentParser) -> None:
    from featcircuits.train.sae import DEFAULT_L1_COEFFICIENT

    _data_flags(parser)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--n-features", type=positive_int, default=None, help="dictionary size")
    size.add_argument("--expansion", type=positive_float, default=4.0,
                      help="dictionary size as a multiple of the site's width (default 4)")
    sparsity = parser.add_mutually_exclusive_group()
    sparsity.add_argument("--l1", type=finite_float, default=None,
                          help=f"L1 coefficient of a ReLU SAE (default {DEFAULT_L1_COEFFICIENT:g};"
                          " activations are normalised to E||x||^2 = d_model)")
    sparsity.add_argument("--k", type=positive_int, default=None,
                          help="train a TopK SAE keeping the k largest features instead")
    parser.add_argument("--steps", type=positive_int, default=2000, help="optimizer steps (default 2000)")
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    add_run_flags(parser, batch_size=512, batch_help="activations per optimizer step")
    parser.add_argument("--checkpoint-every", type=positive_int, default=500,
                        help="steps between checkpoints (default 500)")


def run_train_sae(args: argparse.Namespace) -> int:
    from featcircuits.errors import ParameterError
    from featcircuits.model.sites import Site
    from featcircuits.train.buffer import StepBatches
    from featcircuits.train.sae import train_sae

    args.site = str(Site.parse(args.site))
    if args.steps < 1:
        raise ParameterError(f"--steps must be >= 1, got {args.steps}")
    if args.k is not None and args.k < 1:
        raise ParameterError(f"--k must be >= 1, got {args.k}",
                             hint="pass --k N (N >= 1) for a TopK SAE, or leave --k out for a "
                             "ReLU SAE with an L1 penalty (--l1)")
    if args.n_features is not None and args.n_features < 1:
        raise ParameterError(f"--n-features must be >= 1, got {args.n_features}")
    if args.n_features is None and not (math.isfinite(args.expansion) and args.expansion > 0):
        raise ParameterError(f"--expansion must be a finite number > 0, got {args.expansion}",
                             hint="e.g. --expansion 4 (4 x the site's width), or --n-features N")
    for name in ("l1", "lr"):
        value = getattr(args, name)
        if value is not None and not math.isfinite(value):
            raise ParameterError(f"--{name} must be a finite number, got {value}")
    if args.checkpoint_every < 1:
        raise ParameterError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    train_texts, held_out, source = _read_texts(args)
    from featcircuits.cli.flags import model_from_args

    model = model_from_args(args)
    Site.parse(args.site).module(model)  # SiteError before collecting
    _check_n_ctx(model, args)
    width = Site.parse(args.site).width(model)
    n_features = args.n_features or round(args.expansion * width)
    if n_features < 1:
        raise ParameterError(f"the dictionary would have {n_features} features",
                             hint="pass --n-features N or a larger --expansion")
    if args.k is not None and args.k > n_features:
        raise ParameterError(f"--k {args.k} exceeds the dictionary's {n_features} features",
                             hint=f"use --k {n_features} or less, or more features")
    _progress(args, f"model {args.model}; texts from {source}")
    activations = _collect(model, args, train_texts)
    checkpoint_dir = Path(args.out) / "checkpoint"
    _prepare_out(args, checkpoint_dir / "checkpoint.pt")
    start = time.perf_counter()
    sae, log = train_sae(
        StepBatches(activations, args.batch_size, seed=args.seed), width, n_features,
        l1_coefficient=args.l1, activation="topk" if args.k else "relu", k=args.k,
        lr=args.lr, steps=args.steps, seed=args.seed, site=args.site, device=args.device,
        checkpoint_dir=checkpoint_dir, checkpoint_every=args.checkpoint_every,
        log_every=max(1, min(100, args.steps)), progress=not args.quiet,
        run_flags=_train_sae_flags(args, n_features))
    _progress(args, f"trained in {time.perf_counter() - start:.1f}s")
    from featcircuits.writes import atomic_path

    with atomic_path(Path(args.out) / "training_log.csv") as tmp:
        log.to_csv(tmp, index=False)
    # no timings in the saved files: the same flags write the same bytes (docs/training.md)
    extra = {"activation": "topk" if args.k else "relu",
             ("k" if args.k else "l1_coefficient"): args.k or sae.meta.get(
                 "l1_coefficient", args.l1),
             "steps": args.steps, "train_tokens": int(activations.shape[0]),
             "train_l0": float(sae.meta.get("train_l0", float("nan")))}
    finish_training(model, sae, args, held_out, extra)
    return 0


def _train_sae_flags(args: argparse.Namespace, n_features: int) -> dict:
    """Every flag that determines ``train-sae``'s weights, as recorded in the checkpoint (a
    resume with any of them changed is refused, naming it)."""
    return {"--model": args.model, "--dtype": args.dtype, "--site": args.site,
            "--texts": _texts_identity(args), "--n-tokens": args.n_tokens,
            "--n-ctx": args.n_ctx, "--batch-size": args.batch_size, "--seed": args.seed,
            "--n-features/--expansion": n_features, "--l1": args.l1, "--k": args.k,
            "--steps": args.steps, "--lr": args.lr}


# ---------------------------------------------------------------------------- fit-ica
def add_fit_ica_arguments(parser: argparse.ArgumentParser) -> None:
    from featcircuits.train.ica import CONTRASTS

    _data_flags(parser)
    parser.add_argument("--method", choices=["ica", "pca"], default="ica",
                        help="FastICA (default) or a PCA basis of the same activations")
    parser.add_argument("--n-components", type=positive_int, default=None,
                        help="components (default: the site's width)")
    parser.add_argument("--contrast", choices=CONTRASTS, default="logcosh",
                        help="ICA contrast function (default logcosh)")
    parser.add_argument("--max-iter", type=positive_int, default=200,
                        help="most ICA fixed-point iterations (default 200)")
    parser.add_argument("--tol", type=positive_float, default=1e-4, help="ICA convergence tolerance")
    add_run_flags(parser, batch_size=None)


def run_fit_ica(args: argparse.Namespace) -> int:
    from featcircuits.cli.flags import model_from_args
    from featcircuits.dictionaries.bases import PCABasis
    from featcircuits.errors import ParameterError
    from featcircuits.model.sites import Site
    from featcircuits.train.ica import fit_ica

    args.site = str(Site.parse(args.site))
    if args.n_components is not None and args.n_components < 1:
        raise ParameterError(f"--n-components must be >= 1, got {args.n_components}",
                             hint="leave it out for the site's full width")
    if args.max_iter < 1:
        raise ParameterError(f"--max-iter must be >= 1, got {args.max_iter}")
    if not (math.isfinite(args.tol) and args.tol > 0):
        raise ParameterError(f"--tol must be a finite number > 0, got {args.tol}")
    train_texts, held_out, source = _read_texts(args)
    model = model_from_args(args)
    Site.parse(args.site).module(model)
    _check_n_ctx(model, args)
    _progress(args, f"model {args.model}; texts from {source}")
    activations = _collect(model, args, train_texts)
    start = time.perf_counter()
    if args.method == "pca":
        basis = PCABasis.fit(activations, args.n_components, site=args.site)
        extra = {"method": "pca"}
    else:
        checkpoint = Path(args.out) / "ica_checkpoint.pt"
        _prepare_out(args, checkpoint)
        basis = fit_ica(activations, args.n_components or activations.shape[1],
                        contrast=args.contrast, max_iter=args.max_iter, tol=args.tol,
                        seed=args.seed, device=args.device, checkpoint_path=checkpoint,
                        site=args.site, progress=not args.quiet,
                        small_ops_threads=1)  # one thread for the small algebra (docs/ica.md)
        extra = {"method": "ica", "contrast": args.contrast,
                 "n_iter": int(basis.meta.get("n_iter", -1)),
                 "converged": bool(basis.meta.get("converged", False))}
        if not extra["converged"]:  # said even where Python's warnings are filtered out
            print(f"warning: FastICA stopped at --max-iter {args.max_iter} without converging "
                  f"(last change {basis.meta.get('final_change', float('nan')):.2e} >= --tol "
                  f"{args.tol:g}); the components are not a fixed point and can change with "
                  "the thread count. Raise --max-iter (with --resume it continues) or --tol.",
                  file=sys.stderr)
    extra["train_tokens"] = int(activations.shape[0])
    _progress(args, f"fitted in {time.perf_counter() - start:.1f}s")
    finish_training(model, basis, args, held_out, extra)
    return 0
