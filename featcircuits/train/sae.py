"""Training sparse autoencoders: a lean, resumable loop.

Objective (per token, averaged over the batch)::

    loss = ||x̂ - x||²  +  l1_coefficient * Σ_i |c_i|        with ||W_dec[i]|| = 1 for all i

computed on activations rescaled so that ``E||x||² = d_model`` (the scale is measured on the
first batch), which makes ``l1_coefficient`` comparable across sites and models. The unit-norm
decoder is enforced by projecting out the gradient component parallel to each decoder row
before the optimizer step and renormalising the rows after it. After training the scale is
folded back into the biases (``b_enc /= s``, ``b_dec /= s``), so the returned SAE takes raw
activations, returns raw reconstructions, and its feature activations are in raw units.

``activation="topk"`` keeps the ``k`` largest pre-activations (the L1 term is then usually set
to 0). Dead features (no activation in the last ``dead_window`` steps) are resampled every
``resample_dead_every`` steps, Anthropic-style: new decoder rows are drawn from the current
batch's inputs with probability ∝ squared reconstruction loss, encoder columns get the same
direction scaled to 0.2 × the mean norm of the live encoder columns, their encoder bias is
zeroed, and their Adam moments are reset.

Checkpoints hold everything the loop depends on (weights, Adam state, activation scale,
dead-feature counters, resampling RNG, log accumulators), so a run killed and resumed from its
last checkpoint ends with bit-identical weights, provided the data is a function of the step
(``StepBatches`` or any ``data(step)`` callable) or a deterministic iterable (skipped up to the
resumed step).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tqdm.auto import tqdm

from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import ParameterError, TrainingError
from featcircuits.train.sae_config import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    DEFAULT_L1_COEFFICIENT,
    LOG_COLUMNS,
    SAETrainingConfig,
    check_resumable,
    geometric_median,
    make_optimizer,
)
from featcircuits.writes import atomic_path


class SAETrainer:
    """Trains one ``SparseAutoencoder``; see the module docstring for the objective.

    Args:
        d_model: activation width.
        n_features: dictionary size.
        l1_coefficient: sparsity penalty λ on Σ|c_i| (activations normalised to
            ``E||x||² = d_model``); sweep it to trade L0 against reconstruction. Default
            ``DEFAULT_L1_COEFFICIENT`` for ReLU, 0 for TopK.
        activation: ``"relu"`` or ``"topk"`` (with ``k``).
        tied: decoder = encoder transpose.
        lr: Adam learning rate (constant).
        steps: total optimizer steps.
        resample_dead_every: resample dead features every this many steps (``None``: never).
            No resampling happens in the last ``dead_window`` steps.
        dead_window: a feature is dead if it did not fire in this many consecutive steps.
        b_dec_init: ``"geometric_median"``, ``"mean"`` or ``"zero"`` of the first batch.
        normalize_activations: rescale inputs so ``E||x||² = d_model`` while training.
        seed: seeds the initial weights and the resampling draws.
        site: recorded on the SAE (``sae.site``).
        device: where the SAE trains.
        run_flags: what else determines the result and the trainer does not see (how the
            data was made: texts, token count, batch size, ...), as JSON-able values keyed by
            the name the user knows them by (``"--batch-size"``). Saved in the checkpoint;
            a resume with different values is refused, naming each one.
    """

    def __init__(
        self,
        d_model: int,
        n_features: int,
        *,
        l1_coefficient: float | None = None,
        activation: str = "relu",
        k: int | None = None,
        tied: bool = False,
        lr: float = 1e-3,
        steps: int = 2000,
        resample_dead_every: int | None = 500,
        dead_window: int = 250,
        b_dec_init: str = "geometric_median",
        normalize_activations: bool = True,
        seed: int = 0,
        site: str | None = None,
        device: str | torch.device = "cpu",
        run_flags: dict[str, Any] | None = None,
    ) -> None:
        if l1_coefficient is None:
            l1_coefficient = 0.0 if activation == "topk" else DEFAULT_L1_COEFFICIENT
        self.config = SAETrainingConfig(
            d_model=d_model, n_features=n_features, l1_coefficient=float(l1_coefficient),
            activation=activation, k=None if k is None else k, tied=bool(tied), lr=float(lr),
            steps=steps, resample_dead_every=resample_dead_every, dead_window=dead_window,
            b_dec_init=b_dec_init, normalize_activations=bool(normalize_activations),
            seed=int(seed), site=None if site is None else str(site))
        self.config.validate()
        self.run_flags = json.loads(json.dumps(dict(run_flags or {}), sort_keys=True))
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.sae = SparseAutoencoder(d_model, n_features, activation=activation, k=k,
                                         tied=tied, site=self.config.site)
        self.sae.to(self.device)
        self.optimizer = make_optimizer(list(self.sae.parameters()), self.config.lr)
        self.step = 0
        self.initialized = False
        self.scale = torch.ones((), device=self.device)
        self.steps_since_fired = torch.zeros(n_features, dtype=torch.long, device=self.device)
        self.generator = torch.Generator().manual_seed(self.config.seed + 1)
        self.resampled = 0
        self.log_rows: list[dict[str, float]] = []
        # since the last log row: per-step (loss, mse, l1, Σ||x||²) rows, Σx, token count
        self._trace = torch.zeros(0, 4, device=self.device)
        self._pending = 0
        self._x_sum = torch.zeros(d_model, device=self.device)
        self._tokens = 0
        self._last_l0 = float("nan")

    # ---------------------------------------------------------------- state
    def _decoder(self) -> torch.Tensor:
        """The decoder parameter whose rows (untied) or columns (tied) carry unit norm."""
        return self.sae.W_enc if self.config.tied else self.sae.W_dec_untied

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: weights, Adam state, counters, RNG, log."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "config": json.dumps(asdict(self.config), sort_keys=True),
            "run_flags": json.dumps(self.run_flags, sort_keys=True),
            "step": self.step,
            "initialized": self.initialized,
            "sae": {k: v.detach().cpu().clone() for k, v in self.sae.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scale": self.scale.cpu(),
            "steps_since_fired": self.steps_since_fired.cpu(),
            "generator": self.generator.get_state(),
            "resampled": self.resampled,
            "log": json.dumps(self.log_rows),
            "trace": self._trace[:self._pending].cpu().clone(),
            "x_sum": self._x_sum.cpu().clone(),
            "tokens": self._tokens,
            "last_l0": self._last_l0,
        }

    def load_state_dict(self, state: dict[str, Any], *, source: str = "checkpoint") -> None:
        """Restore from ``state_dict()``; ``TrainingError`` if it came from another config."""
        check_resumable(state, self.config, self.run_flags, source)
        self.sae.load_state_dict(state["sae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.initialized = bool(state["initialized"])
        self.scale = state["scale"].to(self.device)
        self.steps_since_fired = state["steps_since_fired"].to(self.device)
        self.generator.set_state(state["generator"])
        self.resampled = int(state["resampled"])
        self.log_rows = json.loads(state["log"])
        self._trace = state["trace"].to(self.device)
        self._pending = self._trace.shape[0]
        self._x_sum = state["x_sum"].to(self.device)
        self._tokens = int(state["tokens"])
        self._last_l0 = float(state["last_l0"])

    def save_checkpoint(self, checkpoint_dir: str | os.PathLike[str]) -> Path:
        """Write ``checkpoint_dir/checkpoint.pt`` atomically (temp file, then rename)."""
        self._check_finite()
        path = Path(checkpoint_dir) / CHECKPOINT_FILE
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)
        return path

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike[str]) -> bool:
        """Resume from ``checkpoint_dir/checkpoint.pt`` if it exists; return whether it did."""
        path = Path(checkpoint_dir) / CHECKPOINT_FILE
        if not path.is_file():
            return False
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated/corrupt file: say which
            raise TrainingError(f"cannot read checkpoint {str(path)!r}: {exc}",
                                hint="delete it to start over") from exc
        self.load_state_dict(state, source=f"checkpoint {str(path)!r}")
        return True

    # ------------------------------------------------------------- training
    @torch.no_grad()
    def _initialize(self, batch: torch.Tensor) -> None:
        """Activation scale and ``b_dec`` from the first batch."""
        x = batch.to(self.device, torch.float32)
        if self.config.normalize_activations:
            mean_sq = x.pow(2).sum(-1).mean()
            if not torch.isfinite(mean_sq) or mean_sq <= 0:
                raise TrainingError(
                    f"the first batch at site {self.config.site} has mean squared norm "
                    f"{float(mean_sq)}; cannot normalise", hint="check the activations")
            self.scale = (self.config.d_model / mean_sq).sqrt()
        x = x * self.scale
        if self.config.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(x))
        elif self.config.b_dec_init == "mean":
            self.sae.b_dec.copy_(x.mean(0))
        self.initialized = True

    def _check_finite(self) -> None:
        """Raise ``TrainingError`` naming the first step since the last log with a NaN/inf
        loss (one host sync; called at log, resampling and checkpoint steps only)."""
        losses = self._trace[:self._pending, 0]
        bad = ~torch.isfinite(losses)
        if bool(bad.any()):
            step = self.step - self._pending + int(bad.nonzero()[0, 0])
            raise TrainingError(
                f"loss became NaN/inf at step {step} while training the SAE for site "
                f"{self.config.site}",
                hint="lower lr, check the activations for outliers, or lower l1_coefficient")

    def _log(self) -> dict[str, float]:
        count = max(self._pending, 1)
        loss, mse, l1, sq_norm = (self._trace[:self._pending].sum(0) / count).tolist()
        tokens = max(self._tokens, 1)
        # pooled variance of the interval's inputs: E||x||² - ||E x||²
        variance = sq_norm * count / tokens - float((self._x_sum / tokens).pow(2).sum())
        window = min(self.config.dead_window, self.step)
        dead = float((self.steps_since_fired >= max(window, 1)).float().mean())
        row = {"step": self.step, "loss": loss, "mse": mse, "l1": l1, "l0": self._last_l0,
               "variance_explained": 1.0 - mse / variance if variance > 0 else float("nan"),
               "dead_fraction": dead, "resampled": self.resampled}
        self.log_rows.append(row)
        self._pending, self._tokens = 0, 0
        self._x_sum.zero_()
        return row

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor) -> int:
        """Re-initialise dead features toward high-loss inputs of ``x`` (normalised units).

        Returns the number of features resampled.
        """
        dead = self.steps_since_fired >= self.config.dead_window
        n_dead = int(dead.sum())
        if n_dead == 0:
            return 0
        sae = self.sae
        x_hat = sae(x)
        weights = (x_hat - x).pow(2).sum(-1).pow(2).double().cpu()
        if not torch.isfinite(weights).all() or weights.sum() <= 0:
            weights = torch.ones_like(weights)
        picks = torch.multinomial(weights, n_dead, replacement=n_dead > weights.numel(),
                                  generator=self.generator).to(x.device)
        directions = x[picks] - sae.b_dec
        directions = directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-8)
        dead_ids = dead.nonzero().squeeze(1)
        if self.config.tied:
            sae.W_enc[:, dead_ids] = directions.T
        else:
            alive = ~dead
            enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else 1.0
            sae.W_dec_untied[dead_ids] = directions
            sae.W_enc[:, dead_ids] = directions.T * (0.2 * enc_norm)
        sae.b_enc[dead_ids] = 0.0
        for param in (sae.W_enc, sae.W_dec_untied, sae.b_enc):
            if param is None or param not in self.optimizer.state:
                continue
            for moment in ("exp_avg", "exp_avg_sq"):
                tensor = self.optimizer.state[param][moment]
                if param is sae.W_enc:
                    tensor[:, dead_ids] = 0.0
                else:
                    tensor[dead_ids] = 0.0
        self.steps_since_fired[dead_ids] = 0
        self.resampled += n_dead
        return n_dead

    def fit(
        self,
        data: Iterable[torch.Tensor] | Callable[[int], torch.Tensor],
        *,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        checkpoint_every: int = 500,
        log_every: int = 100,
        progress: bool = True,
    ) -> tuple[SparseAutoencoder, pd.DataFrame]:
        """Train until ``config.steps`` and return ``(sae, log)``.

        Args:
            data: batches ``[batch, d_model]``: an iterable (an ``ActivationBuffer``, a list,
                a generator) or a function of the step (``StepBatches``). On resume an
                iterable is advanced past the batches already consumed, so it must yield the
                same sequence each time for a bit-identical result.
            checkpoint_dir: if given, resume from ``checkpoint.pt`` there when present, and
                write it every ``checkpoint_every`` steps and at the end.
            log_every: one log row per this many steps (the only host syncs of the loop).

        Returns:
            The trained SAE (raw activation units, unit-norm decoder rows) with training
            stats in ``sae.meta``, and the log as a DataFrame with columns ``LOG_COLUMNS``.

        Raises:
            TrainingError: no data, NaN/inf loss (naming the step and the site), or a
                checkpoint from a different config.
        """
        cfg = self.config
        for name, value in (("checkpoint_every", checkpoint_every), ("log_every", log_every)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ParameterError(f"{name} must be a positive integer, got {value!r}")
        if checkpoint_dir is not None:
            self.load_checkpoint(checkpoint_dir)
        step_fn = data if callable(data) else None
        iterator = None
        if step_fn is None and self.step < cfg.steps:
            iterator = iter(data)
            for _ in range(self.step):  # replay the consumed batches
                if next(iterator, None) is None:
                    raise TrainingError(
                        f"the data ran out while skipping the {self.step} batches already "
                        "consumed by the checkpoint", hint="resume with the same data")

        sae, optimizer = self.sae, self.optimizer
        W_enc, b_enc, b_dec = sae.W_enc, sae.b_enc, sae.b_dec
        decoder = self._decoder()
        tied, topk, k = cfg.tied, cfg.activation == "topk", cfg.k
        l1_coefficient = cfg.l1_coefficient
        resample_every = cfg.resample_dead_every
        last_resample = cfg.steps - cfg.dead_window
        device = self.device
        if self._trace.shape[0] < self._pending + log_every:
            trace = torch.zeros(self._pending + log_every, 4, device=device)
            trace[:self._pending] = self._trace[:self._pending]
            self._trace = trace
        trace, x_sum = self._trace, self._x_sum

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress,
                   desc=f"SAE {cfg.site or ''}".strip(), unit="step", leave=False)
        try:
            while self.step < cfg.steps:
                step = self.step
                batch = step_fn(step) if step_fn is not None else next(iterator, None)
                if batch is None:
                    if step == 0:
                        raise TrainingError("no activations: the data iterable was empty",
                                            hint="pass a non-empty buffer or list of batches")
                    warnings.warn(f"data ran out after {step} of {cfg.steps} steps; "
                                  "stopping early", stacklevel=2)
                    break
                if not self.initialized:
                    if batch.ndim != 2 or batch.shape[1] != cfg.d_model:
                        raise TrainingError(
                            f"batches must be [batch, {cfg.d_model}], got {tuple(batch.shape)}")
                    self._initialize(batch)
                scale = self.scale
                x = batch.to(device, torch.float32, non_blocking=True) * scale

                # ---- forward
                W_dec = W_enc.T if tied else decoder
                pre = torch.addmm(b_enc, x - b_dec, W_enc)
                if topk:
                    top = torch.topk(pre, k, dim=-1)
                    codes = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
                else:
                    codes = torch.relu(pre)
                x_hat = torch.addmm(b_dec, codes, W_dec)
                mse = (x_hat - x).pow(2).sum(-1).mean()
                feature_sums = codes.sum(0)  # [n_features]; codes >= 0, so > 0 iff it fired
                l1 = feature_sums.sum() / x.shape[0]
                loss = mse + l1_coefficient * l1 if l1_coefficient else mse

                # ---- backward + constrained step
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                with torch.no_grad():
                    grad = decoder.grad
                    if tied:  # unit-norm columns of W_enc
                        grad.sub_((grad * decoder).sum(0, keepdim=True) * decoder)
                    else:
                        grad.sub_((grad * decoder).sum(1, keepdim=True) * decoder)
                    optimizer.step()
                    norms = decoder.norm(dim=0 if tied else 1, keepdim=True)
                    decoder.div_(norms.clamp_min(1e-8))

                    # ---- bookkeeping without host syncs
                    self.steps_since_fired.add_(1).masked_fill_(feature_sums > 0, 0)
                    flat = x.view(-1)
                    torch.stack([loss, mse, l1, torch.dot(flat, flat)], out=trace[self._pending])
                    x_sum.add_(x.sum(0))
                    self._pending += 1
                    self._tokens += x.shape[0]
                    if (step + 1) % log_every == 0 or step + 1 == cfg.steps:
                        # L0 costs a pass over [batch, n_features]: measured on log steps only
                        self._last_l0 = float((codes > 0).sum()) / x.shape[0]

                self.step = step + 1
                if self.step % 16 == 0:  # tqdm's per-call cost shows on small SAEs
                    bar.update(self.step - bar.n)
                if (resample_every and self.step % resample_every == 0
                        and self.step <= last_resample):
                    self._check_finite()
                    self.resample_dead(x)
                if self.step % log_every == 0 or self.step == cfg.steps:
                    self._check_finite()
                    row = self._log()
                    bar.update(self.step - bar.n)
                    bar.set_postfix(loss=f"{row['loss']:.4g}", l0=f"{row['l0']:.1f}",
                                    ve=f"{row['variance_explained']:.3f}",
                                    dead=f"{row['dead_fraction']:.2f}")
                if checkpoint_dir is not None and (
                        self.step % checkpoint_every == 0 or self.step == cfg.steps):
                    self.save_checkpoint(checkpoint_dir)
        finally:
            bar.close()
        self._check_finite()
        if self._pending:
            self._log()
        return self.export(), self.log_frame()

    def log_frame(self) -> pd.DataFrame:
        """The training log so far, one row per logging interval."""
        return pd.DataFrame(self.log_rows, columns=LOG_COLUMNS)

    @torch.no_grad()
    def export(self) -> SparseAutoencoder:
        """A copy of the SAE in raw activation units (the training scale folded into the
        biases), with training stats in ``meta``."""
        cfg = self.config
        sae = SparseAutoencoder(cfg.d_model, cfg.n_features, activation=cfg.activation, k=cfg.k,
                                tied=cfg.tied, site=cfg.site)
        sae.load_state_dict({k: v.detach().cpu() for k, v in self.sae.state_dict().items()})
        scale = float(self.scale)
        sae.b_enc.div_(scale)
        sae.b_dec.div_(scale)
        last = self.log_rows[-1] if self.log_rows else {}
        sae.meta.update({
            "trainer": "featcircuits.train.sae", "training_steps": self.step,
            "l1_coefficient": cfg.l1_coefficient, "seed": cfg.seed, "lr": cfg.lr,
            "activation_scale": scale, "resampled_features": self.resampled,
            "train_l0": last.get("l0"), "train_variance_explained": last.get("variance_explained"),
            "train_dead_fraction": last.get("dead_fraction"),
        })
        return sae


def train_sae(
    data: Iterable[torch.Tensor] | Callable[[int], torch.Tensor],
    d_model: int,
    n_features: int,
    *,
    l1_coefficient: float | None = None,
    activation: str = "relu",
    k: int | None = None,
    tied: bool = False,
    lr: float = 1e-3,
    steps: int = 2000,
    resample_dead_every: int | None = 500,
    dead_window: int = 250,
    b_dec_init: str = "geometric_median",
    normalize_activations: bool = True,
    seed: int = 0,
    site: str | None = None,
    device: str | torch.device = "cpu",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 500,
    log_every: int = 100,
    progress: bool = True,
    run_flags: dict[str, Any] | None = None,
) -> tuple[SparseAutoencoder, pd.DataFrame]:
    """Train a ``SparseAutoencoder`` on ``data``; see ``SAETrainer`` for the arguments.

    Returns ``(sae, log)``: the SAE in raw activation units and a DataFrame with one row per
    ``log_every`` steps (step, loss, mse, l1, l0, variance_explained, dead_fraction,
    resampled).
    """
    trainer = SAETrainer(
        d_model, n_features, l1_coefficient=l1_coefficient, activation=activation, k=k,
        tied=tied, lr=lr, steps=steps, resample_dead_every=resample_dead_every,
        dead_window=dead_window, b_dec_init=b_dec_init,
        normalize_activations=normalize_activations, seed=seed, site=site, device=device,
        run_flags=run_flags)
    return trainer.fit(data, checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every,
                       log_every=log_every, progress=progress)
