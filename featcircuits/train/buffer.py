"""Streaming activations from a model for dictionary training.

``ActivationBuffer`` runs the model over batches of texts, keeps the activations of one site at
real (non-padding) tokens, shuffles them in a buffer and hands out ``[out_batch_size, d_model]``
batches. ``collect_activations`` gathers a fixed number of activations into one tensor (PCA,
evaluation, small jobs). ``StepBatches`` serves shuffled batches from such a tensor as a pure
function of the step number, which makes training runs resumable bit for bit.

Tokenization: texts are tokenized with ``model.tokenizer``, truncated to ``n_ctx`` tokens and
right-padded; the model sees the attention mask, and only positions where it is 1 are kept.
With ``drop_bos`` the first real token of a row is dropped when it is the BOS id (the
tokenizer's ``bos_token_id``, else the model config's): BOS activations are outliers that an
SAE should not spend capacity on.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence

import torch
from tqdm.auto import tqdm

from featcircuits.errors import NonFiniteError, ParameterError, TrainingError
from featcircuits.model.loading import max_positions, model_config, model_device, trace
from featcircuits.model.sites import Site


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ParameterError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_n_ctx(model, n_ctx: int, *, flag: str = "n_ctx") -> int:
    """``n_ctx`` if it is a positive integer within the model's positions, else
    ``ParameterError`` naming the limit (a longer text would index past the position
    embeddings, or run the model outside the lengths it was trained on)."""
    n_ctx = _positive_int(flag, n_ctx)
    limit = max_positions(model)
    if limit is not None and n_ctx > limit[0]:
        raise ParameterError(
            f"{flag} {n_ctx} exceeds the model's {limit[0]} positions "
            f"(config.{limit[1]})", hint=f"use {flag} {limit[0]} or less")
    return n_ctx


def _parse_sites(model, site) -> list[Site]:
    """Parse one site or a list of sites, check each exists in ``model``, sort by depth."""
    sites = [Site.parse(s) for s in (site if isinstance(site, (list, tuple)) else [site])]
    if not sites:
        raise ParameterError("no site given", hint="pass a site such as 'resid_out.0'")
    for parsed in sites:
        parsed.module(model)  # raises SiteError for a missing layer/module
    return sorted(set(sites), key=lambda s: s.depth)


def bos_token_id(model) -> int | None:
    """The BOS id of ``model``: the tokenizer's, else the model config's, else ``None``."""
    tokenizer = model.tokenizer
    if getattr(tokenizer, "bos_token_id", None) is not None:
        return int(tokenizer.bos_token_id)
    config_bos = getattr(model_config(model), "bos_token_id", None)
    return None if config_bos is None else int(config_bos)


def tokenize(model, texts: Sequence[str], n_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize ``texts`` right-padded and truncated to ``n_ctx``.

    Returns:
        ``(input_ids [batch, pos], attention_mask [batch, pos])`` on the model's device.
    """
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise TrainingError("the model has no tokenizer",
                            hint="load it with featcircuits.load_model(...)")
    encoded = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                        max_length=n_ctx, padding_side="right")
    device = model_device(model)
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device)


def keep_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor,
              bos_id: int | None, drop_bos: bool) -> torch.Tensor:
    """Positions to keep ``[batch, pos]`` (bool): real tokens, minus a leading BOS if asked.

    Works for left or right padding: the first real token is the first position whose mask is
    1.
    """
    keep = attention_mask.bool()
    if drop_bos and bos_id is not None and keep.shape[1] > 0:
        first = keep.int().argmax(dim=1)  # first real token per row
        rows = torch.arange(keep.shape[0], device=keep.device)
        is_bos = keep[rows, first] & (input_ids[rows, first] == bos_id)
        keep = keep.clone()
        keep[rows[is_bos], first[is_bos]] = False
    return keep


def read_sites(model, sites: list[Site], input_ids: torch.Tensor,
               attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """One forward pass that reads every site (``[batch, pos, d_model]`` each) and stops the
    model after the deepest one."""
    saved = []
    with torch.no_grad(), trace(model, input_ids, attention_mask=attention_mask) as tracer:
        for site in sites:
            saved.append(site.read(model).save())
        tracer.stop()
    return saved


def iter_site_activations(
    model, sites: list[Site], texts: Iterable[str], *, n_ctx: int, batch_size: int,
    drop_bos: bool, device: str | torch.device = "cpu",
) -> Iterator[list[torch.Tensor]]:
    """Yield, per forward pass, ``[n_kept_tokens, d_model]`` float32 activations per site.

    Raises ``NonFiniteError`` naming the site and the batch (its index and first text) when an
    activation is NaN/inf.
    """
    check_n_ctx(model, n_ctx)
    bos_id = bos_token_id(model)
    text_iter = iter(texts)
    for batch_index in itertools.count():
        batch = list(itertools.islice(text_iter, batch_size))
        if not batch:
            return
        for text in batch:
            if not isinstance(text, str):
                raise TrainingError(f"texts must be strings, got {type(text).__name__}: "
                                    f"{text!r:.60}", hint="pass an iterable of str")
        input_ids, attention_mask = tokenize(model, batch, n_ctx)
        if input_ids.shape[1] == 0 or not attention_mask.any():
            continue
        keep = keep_mask(input_ids, attention_mask, bos_id, drop_bos)
        outputs = read_sites(model, sites, input_ids, attention_mask)
        kept = []
        for site, acts in zip(sites, outputs):
            values = acts[keep].to(device=device, dtype=torch.float32)
            if not torch.isfinite(values).all():
                raise NonFiniteError(
                    f"NaN/inf activations at site {site} in text batch {batch_index} "
                    f"(first text: {batch[0]!r:.80})",
                    hint="check the model weights and dtype (try dtype='float32')")
            kept.append(values)
        yield kept


class ActivationBuffer:
    """Shuffled activations of one site, streamed from a model over texts.

    Iterating yields float32 tensors ``[out_batch_size, d_model]`` on ``device`` (the last one
    may be smaller when the texts run out). The buffer holds up to ``buffer_size`` activations
    and refills (new forwards, then a reshuffle of everything unread) when half has been read.
    Given the same texts and ``seed`` the sequence of batches is identical.

    Args:
        model: an nnsight ``LanguageModel`` with a tokenizer.
        site: where to read, e.g. ``"resid_out.2"``; checked at construction (``SiteError``).
        texts: any iterable of strings (consumed once; lists are not cycled).
        n_ctx: tokens per text (longer texts are truncated).
        batch_size: texts per forward pass.
        buffer_size: activations held at once (more = better shuffling, more memory).
        out_batch_size: activations per yielded batch.
        drop_bos: drop a leading BOS token's activation.
        shuffle: shuffle within the buffer (``False``: token order, for debugging).
        seed: seeds the shuffling generator.
        device: where yielded batches live.

    Raises:
        TrainingError: the text iterable produced no activations at all.
        NonFiniteError: a forward pass produced NaN/inf at the site.
    """

    def __init__(
        self,
        model,
        site: str | Site,
        texts: Iterable[str],
        *,
        n_ctx: int = 64,
        batch_size: int = 32,
        buffer_size: int = 16384,
        out_batch_size: int = 1024,
        drop_bos: bool = True,
        shuffle: bool = True,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        if isinstance(texts, str):
            raise TrainingError("texts is a single string",
                                hint="pass a list (or any iterable) of strings")
        self.model = model
        (self.site,) = _parse_sites(model, site)
        self.n_ctx = _positive_int("n_ctx", n_ctx)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.out_batch_size = _positive_int("out_batch_size", out_batch_size)
        self.buffer_size = _positive_int("buffer_size", buffer_size)
        if self.buffer_size < self.out_batch_size:
            raise ParameterError(
                f"buffer_size ({buffer_size}) must be at least out_batch_size ({out_batch_size})")
        self.drop_bos = bool(drop_bos)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.device = torch.device(device)
        self.d_model = self.site.width(model) if self.site.module_path is None else None
        self._generator = torch.Generator().manual_seed(self.seed)
        self._source = iter_site_activations(
            model, [self.site], texts, n_ctx=self.n_ctx, batch_size=self.batch_size,
            drop_bos=self.drop_bos, device=self.device)
        self._store: torch.Tensor | None = None  # [n_held, d_model]
        self._read = 0  # rows of _store already handed out
        self._exhausted = False
        self.tokens_seen = 0  # activations pulled from the model so far
        self.forwards = 0

    def __iter__(self) -> ActivationBuffer:
        return self

    @property
    def unread(self) -> int:
        return 0 if self._store is None else self._store.shape[0] - self._read

    def refill(self) -> None:
        """Run forwards until ``buffer_size`` activations are held, then reshuffle them."""
        if self._exhausted:
            return
        parts = [] if self._store is None else [self._store[self._read:]]
        held = self.unread
        while held < self.buffer_size:
            chunk = next(self._source, None)
            if chunk is None:
                self._exhausted = True
                break
            (values,) = chunk
            self.forwards += 1
            self.tokens_seen += values.shape[0]
            parts.append(values)
            held += values.shape[0]
        if held == 0:
            if self.tokens_seen == 0:
                raise TrainingError(
                    "no activations: the text iterator was empty",
                    hint="pass a non-empty iterable of non-empty strings")
            self._store, self._read = None, 0
            return
        store = torch.cat(parts) if len(parts) > 1 else parts[0]
        if self.shuffle:
            order = torch.randperm(store.shape[0], generator=self._generator)
            store = store[order.to(store.device)]
        self._store, self._read = store, 0

    def __next__(self) -> torch.Tensor:
        if self.unread < self.buffer_size // 2 or self.unread < self.out_batch_size:
            self.refill()
        if self.unread == 0:
            raise StopIteration
        batch = self._store[self._read:self._read + self.out_batch_size]
        self._read += batch.shape[0]
        return batch


def collect_activations(
    model,
    site: str | Site | Sequence[str | Site],
    texts: Iterable[str],
    max_tokens: int,
    *,
    n_ctx: int = 64,
    batch_size: int = 32,
    drop_bos: bool = True,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> torch.Tensor | dict[str, torch.Tensor]:
    """Activations of ``site`` at up to ``max_tokens`` real tokens, in text order.

    With a list of sites, all are read in the same forward passes and a dict
    ``{site name: [n_tokens, d_model]}`` is returned; otherwise one ``[n_tokens, d_model]``
    float32 tensor.

    Raises:
        SiteError: a site does not exist in the model.
        TrainingError: the texts produced no activations.
    """
    if isinstance(texts, str):
        raise TrainingError("texts is a single string", hint="pass a list of strings")
    max_tokens = _positive_int("max_tokens", max_tokens)
    sites = _parse_sites(model, site)
    parts: list[list[torch.Tensor]] = [[] for _ in sites]
    total = 0
    with tqdm(total=max_tokens, desc="collecting activations", unit="tok",
              disable=not progress, leave=False) as bar:
        for chunk in iter_site_activations(model, sites, texts, n_ctx=_positive_int("n_ctx", n_ctx),
                                           batch_size=_positive_int("batch_size", batch_size),
                                           drop_bos=drop_bos, device=device):
            take = min(chunk[0].shape[0], max_tokens - total)
            for store, values in zip(parts, chunk):
                store.append(values[:take])
            total += take
            bar.update(take)
            if total >= max_tokens:
                break
    if total == 0:
        raise TrainingError("no activations: the text iterator was empty",
                            hint="pass a non-empty iterable of non-empty strings")
    result = {str(s): torch.cat(p) for s, p in zip(sites, parts)}
    if isinstance(site, (list, tuple)):
        return result
    return next(iter(result.values()))


class StepBatches:
    """Shuffled batches from an activation tensor as a pure function of the step.

    ``batches(step)`` returns rows ``[batch_size, d_model]``: epoch ``e = step * batch_size //
    n`` uses a permutation drawn from ``seed`` and ``e``, so any step can be reproduced without
    replaying the earlier ones. This is what makes ``train_sae`` resume bit-identically.
    Batches never straddle epochs (the last partial slice of each permutation is skipped).
    """

    def __init__(self, activations: torch.Tensor, batch_size: int, *, seed: int = 0) -> None:
        if activations.ndim != 2:
            raise ParameterError(
                f"activations must be [n_tokens, d_model], got {tuple(activations.shape)}")
        self.activations = activations
        self.batch_size = _positive_int("batch_size", batch_size)
        if activations.shape[0] < self.batch_size:
            raise TrainingError(
                f"only {activations.shape[0]} activations for batch_size {batch_size}",
                hint="collect more tokens or lower the batch size")
        self.seed = int(seed)
        self.per_epoch = activations.shape[0] // self.batch_size
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, index = divmod(int(step), self.per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._order = torch.randperm(self.activations.shape[0], generator=generator).to(
                self.activations.device)
            self._epoch = epoch
        rows = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        return self.activations[rows]
