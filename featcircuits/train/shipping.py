"""Train, evaluate and save the dictionaries shipped with a bundled model.

For every ``resid_out.L`` of the model this produces three sets, each saved with
``save_dictionary`` into ``<out>/<set>/<site>/``:

- ``sae-sparse``: ReLU SAE at a strong L1 point (target L0 ≈ 5–15);
- ``sae-dense``: ReLU SAE at a weaker L1 point (more features per token, better
  reconstruction);
- ``pca``: full-rank PCA basis of the same activations.

Activations for all sites are collected in one pass over the training texts and held in memory;
SAEs train on them through ``StepBatches`` (shuffled, a pure function of the step). Every
dictionary is then spliced into the model over held-out texts (``evaluate_dictionary``) and its
numbers go into its ``meta`` and into ``<out>/summary.md`` / ``summary.json``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from featcircuits.dictionaries.bases import PCABasis
from featcircuits.dictionaries.io import save_dictionary
from featcircuits.errors import ParameterError
from featcircuits.model.loading import model_name
from featcircuits.model.sites import Site, all_sites
from featcircuits.train.buffer import StepBatches, collect_activations
from featcircuits.train.evaluate import evaluate_dictionary
from featcircuits.train.sae import train_sae
from featcircuits.writes import atomic_write_text


@dataclass(frozen=True)
class SAESetSpec:
    """One shipped SAE set: its folder name and training settings.

    Attributes:
        l1_coefficient: λ; with ``relative_to`` a factor on that set's final λ at the same site.
        target_l0: ``(low, high)``: if the trained SAE's L0 falls outside, λ is rescaled
            (assuming L0 ∝ λ^-0.8, aiming at the range's geometric middle) and the SAE retrained,
            up to ``ShippingConfig.max_retries`` times.
        min_variance_explained: if the training variance explained is below this while L0 is
            in range, λ is lowered to aim at 1.5 × L0 (at most ``high``) and the SAE retrained.
        relative_to: name of an earlier set whose final λ this set's λ is relative to.
    """

    name: str
    l1_coefficient: float
    n_features: int = 512
    steps: int = 2000
    target_l0: tuple[float, float] | None = None
    min_variance_explained: float | None = None
    relative_to: str | None = None


@dataclass(frozen=True)
class ShippingConfig:
    """Sizes of the shipping run (defaults fit a few minutes on 2 CPU cores for a 4-layer,
    d_model-128 model)."""

    sae_sets: tuple[SAESetSpec, ...] = field(default_factory=lambda: (
        SAESetSpec("sae-sparse", l1_coefficient=2.5, target_l0=(5.0, 15.0),
                   min_variance_explained=0.9),
        SAESetSpec("sae-dense", l1_coefficient=0.25, relative_to="sae-sparse"),
    ))
    max_retries: int = 2
    pca: bool = True
    train_tokens: int = 200_000
    eval_texts: int = 256
    batch_size: int = 512
    lr: float = 1e-3
    n_ctx: int = 64
    seed: int = 0
    resample_dead_every: int = 500
    dead_window: int = 250


SUMMARY_COLUMNS = ["set", "site", "n_features", "l1_coefficient", "l0", "variance_explained",
                   "ce_loss_recovered", "kl_spliced", "dead_fraction", "train_seconds"]
TARGETS = {"sae-sparse": {"variance_explained": 0.90, "ce_loss_recovered": 0.90,
                          "l0_range": (5.0, 15.0)}}


def random_word_texts(model, n_texts: int, *, seed: int = 0, min_words: int = 8,
                      max_words: int = 48) -> list[str]:
    """Texts of random vocabulary words (a development fallback when no corpus exists)."""
    tokenizer = model.tokenizer
    special = set(getattr(tokenizer, "all_special_tokens", []))
    words = sorted(w for w in tokenizer.get_vocab() if w not in special and w.strip() == w and w)
    if not words:
        raise ParameterError("the tokenizer has no plain words to build texts from")
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words)))
            for _ in range(n_texts)]


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def ship_dictionaries(
    model,
    out: str | os.PathLike[str],
    train_texts: Iterable[str],
    eval_texts: Iterable[str],
    *,
    config: ShippingConfig | None = None,
    sites: list[str | Site] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Train, evaluate and save every dictionary set for every site; write the summary.

    Args:
        model: nnsight ``LanguageModel``.
        out: output folder (``<out>/<set>/<site>/`` and ``<out>/summary.md``).
        train_texts: training documents (only the first ``config.train_tokens`` tokens used).
        eval_texts: held-out documents (the first ``config.eval_texts`` are used).
        sites: default: every ``resid_out.L``.

    Returns:
        The summary table (one row per set and site; columns ``SUMMARY_COLUMNS``).
    """
    config = config or ShippingConfig()
    out = Path(out)
    parsed = [Site.parse(s) for s in sites] if sites else all_sites(model)
    eval_list = list(itertools.islice(iter(eval_texts), config.eval_texts))
    start = time.perf_counter()
    acts = collect_activations(model, parsed, train_texts, config.train_tokens,
                               n_ctx=config.n_ctx, progress=progress)
    log(f"collected {next(iter(acts.values())).shape[0]} activations at {len(parsed)} sites "
        f"in {time.perf_counter() - start:.1f}s")
    name = model_name(model)
    rows: list[dict[str, Any]] = []
    for site in parsed:
        x = acts[str(site)]
        width = site.width(model)
        jobs: list[tuple[str, Callable[[], tuple[Any, dict[str, Any]]]]] = []
        if config.pca:
            def fit_pca(x=x, site=site, width=width):
                return PCABasis.fit(x, site=str(site)), {"n_features": width}
            jobs.append(("pca", fit_pca))
        final_l1: dict[str, float] = {}
        for spec in config.sae_sets:
            def fit_sae(x=x, site=site, spec=spec, final_l1=final_l1, width=width):
                sae, l1 = _train_to_target(x, site, spec, config, width, final_l1, progress, log)
                final_l1[spec.name] = l1
                return sae, {"n_features": spec.n_features, "l1_coefficient": l1}
            jobs.append((spec.name, fit_sae))
        for set_name, fit in jobs:
            t0 = time.perf_counter()
            dictionary, info = fit()
            seconds = time.perf_counter() - t0
            stats = evaluate_dictionary(model, dictionary, site, eval_list, n_ctx=config.n_ctx,
                                        progress=progress)
            dictionary.meta.update({
                "model_name": name, "set": set_name, "seed": config.seed,
                "train_tokens": int(x.shape[0]), "eval_texts": len(eval_list),
                **{k: _finite(v) for k, v in stats.items()},
            })
            dictionary.meta.setdefault("training_steps", 0)  # PCA: no steps
            save_dictionary(dictionary, out / set_name / str(site))
            row = {"set": set_name, "site": str(site), "l1_coefficient": None, **info,
                   "l0": stats["l0"], "variance_explained": stats["variance_explained"],
                   "ce_loss_recovered": stats["ce_loss_recovered"],
                   "kl_spliced": stats["kl_spliced"], "dead_fraction": stats["dead_fraction"],
                   "train_seconds": seconds}
            rows.append(row)
            log(f"{set_name:>10} {site!s:<12} L0 {stats['l0']:7.2f}  VE "
                f"{stats['variance_explained']:.3f}  CE rec {stats['ce_loss_recovered']:.3f}  "
                f"dead {stats['dead_fraction']:.3f}  ({seconds:.1f}s)")
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    write_summary(out, summary, model_name=name, config=config,
                  seconds=time.perf_counter() - start)
    return summary


# L0 ∝ λ^-0.8 on the residual stream of an 800-step version of the bundled model (λ 1 → 4 took
# L0 16 → 5 at resid_out.0); used only to aim retries
L0_EXPONENT = 0.8


def next_l1_coefficient(l1: float, l0: float, variance_explained: float,
                        spec: SAESetSpec) -> float | None:
    """The λ to retry with after an SAE of ``spec`` reached ``l0`` and ``variance_explained``
    at ``l1``, or ``None`` when it met its targets (or cannot improve)."""
    if spec.target_l0 is None or not math.isfinite(l0):
        return None
    low, high = spec.target_l0
    if not low <= l0 <= high:
        aim = math.sqrt(low * high)
    elif (spec.min_variance_explained is not None and math.isfinite(variance_explained)
          and variance_explained < spec.min_variance_explained and l0 < high / 1.1):
        aim = min(1.5 * l0, high)
    else:
        return None
    factor = (max(l0, 0.1) / aim) ** (1 / L0_EXPONENT)
    return l1 * min(max(factor, 1 / 16), 16)


def _train_to_target(x: torch.Tensor, site: Site, spec: SAESetSpec, config: ShippingConfig,
                     width: int, final_l1: dict[str, float], progress: bool,
                     log: Callable[[str], None]):
    """Train one SAE of ``spec``; retrain with a rescaled λ while L0 misses ``target_l0``."""
    l1 = spec.l1_coefficient
    if spec.relative_to is not None:
        if spec.relative_to not in final_l1:
            raise ParameterError(f"SAE set {spec.name!r} is relative to {spec.relative_to!r}, "
                                 "which is not trained before it",
                                 hint="list the reference set first in sae_sets")
        l1 = final_l1[spec.relative_to] * spec.l1_coefficient
    attempts = []
    for attempt in range(config.max_retries + 1):
        sae, _ = train_sae(
            StepBatches(x, config.batch_size, seed=config.seed), width, spec.n_features,
            l1_coefficient=l1, lr=config.lr, steps=spec.steps,
            resample_dead_every=config.resample_dead_every, dead_window=config.dead_window,
            seed=config.seed, site=str(site), progress=progress)
        l0 = float(sae.meta["train_l0"])
        variance_explained = float(sae.meta["train_variance_explained"])
        attempts.append({"l1_coefficient": l1, "train_l0": l0,
                         "train_variance_explained": variance_explained})
        new_l1 = next_l1_coefficient(l1, l0, variance_explained, spec)
        if new_l1 is None or attempt == config.max_retries:
            break
        log(f"{spec.name:>10} {site!s:<12} L0 {l0:.1f}, variance explained "
            f"{variance_explained:.3f} at λ={l1:.4g}: retrying with λ={new_l1:.4g}")
        l1 = new_l1
    sae.meta["l1_attempts"] = attempts
    return sae, l1


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def write_summary(out: str | os.PathLike[str], summary: pd.DataFrame, *, model_name: str,
                  config: ShippingConfig, seconds: float) -> None:
    """``<out>/summary.md`` (one table per set) and ``<out>/summary.json``."""
    out = Path(out)
    lines = [f"# Dictionaries for `{model_name}`", "",
             (f"Trained on {config.train_tokens} tokens, evaluated on {config.eval_texts} held-out "
             f"texts; total time {seconds:.0f}s. CE loss recovered = (CE_zero − CE_spliced) / "
             "(CE_zero − CE_clean), with the site zero-ablated for CE_zero."), ""]
    for set_name, table in summary.groupby("set", sort=False):
        lines += [f"## {set_name}", ""]
        target = TARGETS.get(set_name)
        if target:
            lo, hi = target["l0_range"]
            lines += [(f"Targets: L0 in {lo:g}–{hi:g}, variance explained ≥ "
                      f"{target['variance_explained']:.2f}, CE loss recovered ≥ "
                      f"{target['ce_loss_recovered']:.2f}."), ""]
        lines.append("| site | features | L1 coeff | L0 | var. explained | CE loss recovered "
                     "| KL (nats/token) | dead fraction | train s |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for row in table.itertuples():
            lines.append(
                f"| {row.site} | {row.n_features} | {_fmt(row.l1_coefficient)} | {_fmt(row.l0)} "
                f"| {_fmt(row.variance_explained)} | {_fmt(row.ce_loss_recovered)} "
                f"| {_fmt(row.kl_spliced)} | {_fmt(row.dead_fraction)} "
                f"| {row.train_seconds:.1f} |")
        lines.append("")
    atomic_write_text(out / "summary.md", "\n".join(lines))
    payload = {"model_name": model_name, "config": asdict(config), "seconds": seconds,
               "rows": [{k: _finite(v) for k, v in row.items()}
                        for row in summary.to_dict(orient="records")]}
    atomic_write_text(out / "summary.json", json.dumps(payload, indent=2, default=str))
