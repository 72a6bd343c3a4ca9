"""How good is a dictionary inside the model: splice its reconstruction in and measure.

For each batch of texts, three forward passes run: clean; with the site's activation replaced by
``dictionary(x)`` (spliced); and with the site zeroed (zero-ablated). From them:

- ``ce_clean``, ``ce_spliced``, ``ce_zero``: mean next-token cross-entropy over real tokens;
- ``ce_loss_recovered = (ce_zero - ce_spliced) / (ce_zero - ce_clean)`` (1 = perfect);
- ``kl_spliced`` / ``kl_zero``: mean per-token KL(clean ‖ spliced / zero-ablated);
- ``l0``: mean number of non-zero features per token; ``variance_explained``
  ``= 1 - Σ||x - x̂||² / Σ||x - mean(x)||²``; ``dead_fraction``: share of features that never
  fire on the evaluation tokens.

Padding is masked everywhere. With ``skip_bos`` a leading BOS token keeps its clean activation in
both edited runs and is left out of the dictionary statistics, mirroring how dictionaries are
trained (``ActivationBuffer(drop_bos=True)``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.io import check_dictionary_fits
from featcircuits.errors import NonFiniteError, ParameterError, TrainingError
from featcircuits.model.loading import trace
from featcircuits.model.sites import Site
from featcircuits.train.buffer import bos_token_id, keep_mask, tokenize


def _run(model, site: Site, input_ids, attention_mask, edit=None) -> torch.Tensor:
    """Logits ``[batch, pos, vocab]`` (float32); ``edit(x) -> x'`` replaces the site if given."""
    with torch.no_grad(), trace(model, input_ids, attention_mask=attention_mask):
        if edit is not None:
            site.write(model, edit(site.read(model)))
        logits = model.output.logits.save()
    return logits.float()


def _read_clean(model, site: Site, input_ids, attention_mask):
    with torch.no_grad(), trace(model, input_ids, attention_mask=attention_mask):
        x = site.read(model).save()
        logits = model.output.logits.save()
    return x, logits.float()


def evaluate_dictionary(
    model,
    dictionary: Dictionary,
    site: str | Site,
    texts: Iterable[str],
    *,
    n_ctx: int = 64,
    batch_size: int = 32,
    max_texts: int | None = None,
    skip_bos: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Splice ``dictionary`` into ``model`` at ``site`` over ``texts`` and measure it.

    Returns:
        ``{"ce_clean", "ce_spliced", "ce_zero", "ce_loss_recovered", "kl_spliced", "kl_zero",
        "l0", "variance_explained", "dead_fraction", "n_tokens", "n_predictions"}``.

    Raises:
        SiteError: the site does not exist; WidthMismatchError: the dictionary's width differs
        from the site's; TrainingError: no tokens to evaluate; NonFiniteError: NaN logits.
    """
    if isinstance(texts, str):
        raise TrainingError("texts is a single string", hint="pass a list of strings")
    site = Site.parse(site)
    site.module(model)
    if site.module_path is None:
        check_dictionary_fits(dictionary, model, site)
    if max_texts is not None and (not isinstance(max_texts, int) or max_texts <= 0):
        raise ParameterError(f"max_texts must be a positive integer or None, got {max_texts!r}")
    text_iter = iter(texts) if max_texts is None else itertools.islice(texts, max_texts)
    bos_id = bos_token_id(model)
    # the dictionary computes where it lives; activations travel there and back
    dict_dtype, dict_device = dictionary.directions.dtype, dictionary.directions.device

    sums = dict.fromkeys(("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero", "l0",
                          "sq_error", "sq_norm"), 0.0)
    n_pred = n_tok = n_dict = 0
    x_sum = None
    fired = torch.zeros(dictionary.n_features, dtype=torch.bool)

    bar = tqdm(desc=f"evaluating {site}", unit="text", disable=not progress, leave=False)
    try:
        while True:
            batch = list(itertools.islice(text_iter, batch_size))
            if not batch:
                break
            input_ids, attention_mask = tokenize(model, batch, n_ctx)
            if input_ids.shape[1] == 0 or not attention_mask.any():
                continue
            real = attention_mask.bool()
            edit_here = keep_mask(input_ids, attention_mask, bos_id, skip_bos)  # [b, p]
            keep = edit_here[..., None]

            def splice(x, keep=keep):
                recon = dictionary(x.to(device=dict_device, dtype=dict_dtype)).to(x)
                return torch.where(keep, recon, x)

            def zero(x, keep=keep):
                return torch.where(keep, torch.zeros_like(x), x)

            x, logits_clean = _read_clean(model, site, input_ids, attention_mask)
            logits_spliced = _run(model, site, input_ids, attention_mask, splice)
            logits_zero = _run(model, site, input_ids, attention_mask, zero)
            for name, logits in (("clean", logits_clean), ("spliced", logits_spliced),
                                 ("zero", logits_zero)):
                if not torch.isfinite(logits[real]).all():
                    raise NonFiniteError(
                        f"NaN/inf logits in the {name} run at site {site} (first text: "
                        f"{batch[0]!r:.80})", hint="check the dictionary and the model weights")

            # next-token cross-entropy where both the token and its successor are real
            predict = real[:, :-1] & real[:, 1:]
            targets = input_ids[:, 1:][predict]
            n_pred += int(predict.sum())
            for name, logits in (("clean", logits_clean), ("spliced", logits_spliced),
                                 ("zero", logits_zero)):
                sums[f"ce_{name}"] += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1][predict], targets, reduction="sum"))
            # KL(clean || edited) per real token
            log_p = torch.log_softmax(logits_clean[real], dim=-1)
            n_tok += int(real.sum())
            for name, logits in (("spliced", logits_spliced), ("zero", logits_zero)):
                log_q = torch.log_softmax(logits[real], dim=-1)
                sums[f"kl_{name}"] += float((log_p.exp() * (log_p - log_q)).sum())

            # dictionary statistics on the edited tokens
            acts = x[edit_here].to(device=dict_device, dtype=dict_dtype)
            with torch.no_grad():
                recon, codes = dictionary(acts, output_features=True)
            active = codes != 0
            fired |= active.any(0).cpu()
            sums["l0"] += float(active.sum())
            sums["sq_error"] += float((acts - recon).double().pow(2).sum())
            sums["sq_norm"] += float(acts.double().pow(2).sum())
            batch_sum = acts.double().sum(0)
            x_sum = batch_sum if x_sum is None else x_sum + batch_sum
            n_dict += acts.shape[0]
            bar.update(len(batch))
    finally:
        bar.close()

    if n_pred == 0 or n_dict == 0:
        raise TrainingError("no tokens to evaluate: the texts were empty or one token long",
                            hint="pass texts of at least two tokens")
    ce_clean, ce_spliced, ce_zero = (sums[f"ce_{k}"] / n_pred for k in ("clean", "spliced", "zero"))
    gap = ce_zero - ce_clean
    total_variance = sums["sq_norm"] - float(x_sum.pow(2).sum()) / n_dict
    return {
        "ce_clean": ce_clean,
        "ce_spliced": ce_spliced,
        "ce_zero": ce_zero,
        "ce_loss_recovered": (ce_zero - ce_spliced) / gap + 0.0 if gap != 0 else float("nan"),
        "kl_spliced": sums["kl_spliced"] / n_tok,
        "kl_zero": sums["kl_zero"] / n_tok,
        "l0": sums["l0"] / n_dict,
        "variance_explained": (1.0 - sums["sq_error"] / total_variance
                               if total_variance > 0 else float("nan")),
        "dead_fraction": float((~fired).float().mean()),
        "n_tokens": n_dict,
        "n_predictions": n_pred,
    }
