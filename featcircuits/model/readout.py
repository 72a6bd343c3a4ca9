"""The model's readout (final norm + unembedding) and its one linearisation.

Every architecture featcircuits knows ends in ``logits = cap(W_U · norm(x) + b_U)`` where
``x`` is the last residual stream ``[..., d_model]`` and

* ``norm`` is a **LayerNorm** (``γ ⊙ (x − mean x) / σ(x) + β``, ``σ = sqrt(var + eps)``,
  with or without ``β``, with or without ``γ``) or an **RMSNorm** (``γ ⊙ x / rms(x)``,
  ``rms = sqrt(mean x² + eps)``; Llama's ``γ = weight``, Gemma's ``γ = 1 + weight``);
* ``cap`` is Gemma-2's logit soft-capping ``c · tanh(z / c)`` or the identity.

:func:`readout` does not trust class names or parameter names to tell these apart: it
probes the norm module (a constant shift of ``x`` leaves a LayerNorm unchanged; the norm of
zero is ``β``; a mean-zero probe gives ``γ``) and checks the result against the module on a
random input, so Gemma's ``1 + weight`` and a LayerNorm without bias come out right.

The linearisation (:meth:`Readout.direct_effect`, :meth:`Readout.residual_direction`)
freezes the norm's scale ``σ`` (``rms``): ``v ↦ W_U (γ ⊙ centre(v)) / σ``. At a clean point
``x`` with ``σ = σ(x)`` it reproduces the logits exactly
(``direct_effect(x, σ(x)) + W_U β + b_U`` = pre-cap logits) and it equals the true
Jacobian on every direction ``v`` orthogonal to the normalised ``x`` (the frozen scale drops
only the rank-one term ``x̂ (x̂·v) / d``). :meth:`Readout.gradient` is the exact gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from einops import einsum

from featcircuits.errors import ParameterError, SiteError
from featcircuits.model.loading import model_config, underlying_module
from featcircuits.model.sites import architecture

NORM_KINDS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class Readout:
    """Final norm + unembedding as plain tensors (float32, on the unembedding's device).

    Attributes:
        kind: ``"layernorm"`` (centres its input) or ``"rmsnorm"``.
        gain: ``γ`` ``[d_model]`` as the norm applies it (Gemma: ``1 + weight``; ones when the
            norm has no weight).
        bias: ``β`` ``[d_model]``, or None.
        eps: the norm's epsilon.
        unembed: ``W_U`` ``[vocab, d_model]``.
        unembed_bias: ``b_U`` ``[vocab]``, or None.
        softcap: the final logit soft-cap ``c`` (Gemma-2), or None.
    """

    kind: str
    gain: torch.Tensor
    bias: torch.Tensor | None
    eps: float
    unembed: torch.Tensor
    unembed_bias: torch.Tensor | None = None
    softcap: float | None = None

    @property
    def centred(self) -> bool:
        """True for a LayerNorm (the mean over ``d_model`` is subtracted)."""
        return self.kind == "layernorm"

    def _vector(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach().to(self.unembed.device, torch.float32)

    def _centre(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True) if self.centred else x

    # ---------------------------------------------------------------- exact readout
    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """The norm's divisor ``[...]`` at ``x`` ``[..., d_model]``: ``σ(x)`` or ``rms(x)``."""
        x = self._centre(self._vector(x))
        return (x.pow(2).mean(-1) + self.eps).sqrt()

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        """``x̂`` ``[..., d_model]``: the norm's output before gain and bias."""
        return self._centre(self._vector(x)) / self.scale(x)[..., None]

    def pre_cap_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``W_U · norm(x) + b_U`` ``[..., vocab]`` (the logits before any soft-cap)."""
        y = self.gain * self.normalized(x)
        if self.bias is not None:
            y = y + self.bias
        z = einsum(y, self.unembed.float(), "... d, v d -> ... v")
        return z if self.unembed_bias is None else z + self.unembed_bias

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The model's logits ``[..., vocab]`` from the last residual stream ``x``."""
        z = self.pre_cap_logits(x)
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def offset(self) -> torch.Tensor:
        """``W_U β + b_U`` ``[vocab]``: the part of the pre-cap logits the linear map omits."""
        out = torch.zeros(self.unembed.shape[0], device=self.unembed.device)
        if self.bias is not None:
            out = out + self.unembed.float() @ self.bias
        if self.unembed_bias is not None:
            out = out + self.unembed_bias
        return out

    # ----------------------------------------------------------------- linearisation
    def direct_effect(self, direction: torch.Tensor,
                      scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``W_U (γ ⊙ centre(direction)) / scale`` ``[..., vocab]`` for ``direction``
        ``[..., d_model]`` (centring for LayerNorm only; ``scale`` broadcasts over ``...``).

        With ``scale = 1`` this is the scale-free direct logit effect dashboards show; with
        ``scale = self.scale(x)[..., None]`` it is the readout linearised at ``x``.
        """
        vector = self.gain * self._centre(self._vector(direction))
        if isinstance(scale, torch.Tensor):
            scale = scale.to(vector)
        return einsum(vector, self.unembed.float(), "... d, v d -> ... v") / scale

    def residual_direction(self, logit_direction: torch.Tensor,
                           scale: float | torch.Tensor = 1.0) -> torch.Tensor:
        """``r`` ``[d_model]`` with ``r · v = logit_direction · direct_effect(v, scale)`` for
        every ``v``: the gradient of ``logit_direction · logits`` with the norm's scale
        frozen at ``scale``. ``logit_direction`` is ``[vocab]``
        (see :func:`logit_direction`)."""
        u = self._vector(logit_direction)
        if isinstance(scale, torch.Tensor):
            scale = scale.to(u)
        return self._centre(self.gain * (u @ self.unembed.float())) / scale

    def gradient(self, x: torch.Tensor, logit_direction: torch.Tensor) -> torch.Tensor:
        """Exact ``∂(logit_direction · logits(x)) / ∂x`` ``[..., d_model]`` at ``x``
        ``[..., d_model]`` (the scale's dependence on ``x`` and the soft-cap included)."""
        u = self._vector(logit_direction)
        if self.softcap is not None:
            u = u * (1 - torch.tanh(self.pre_cap_logits(x) / self.softcap).pow(2))
        g_hat = self.gain * (u @ self.unembed.float())  # ∂/∂x̂
        x_hat = self.normalized(x)
        d = x_hat.shape[-1]
        g = g_hat - x_hat * (x_hat * g_hat).sum(-1, keepdim=True) / d
        return self._centre(g / self.scale(x)[..., None])


def logit_direction(vocab: int, token: int, minus: int | None = None, *,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """``[vocab]`` weights of ``logit[token] − logit[minus]`` (``minus`` None: minus the
    mean logit over the vocabulary)."""
    for name, value in (("token", token), ("minus", minus)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value < vocab):
            raise ParameterError(f"{name} {value!r} is not a token id in 0..{vocab - 1}",
                                 hint="pass token ids, e.g. tokenizer.convert_tokens_to_ids(t)")
    u = torch.full((vocab,), -1.0 / vocab if minus is None else 0.0, device=device)
    u[token] += 1.0
    if minus is not None:
        u[minus] -= 1.0
    return u


# --------------------------------------------------------------------------- probing
def _probe_norm(norm: torch.nn.Module, width: int, device: torch.device
                ) -> tuple[str, torch.Tensor, torch.Tensor | None, float]:
    """Kind, gain, bias and eps of a final norm, read off its behaviour in float32."""
    eps = getattr(norm, "eps", None)
    if not isinstance(eps, (int, float)):
        eps = getattr(norm, "variance_epsilon", 1e-5)
    eps = float(eps)
    state = {name: value.detach().to(device, torch.float32)
             for name, value in [*norm.named_parameters(), *norm.named_buffers()]}

    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = torch.func.functional_call(norm, state, (x,))
        return (out[0] if isinstance(out, tuple) else out).float()

    # Mean-zero probe with no zero entry: x̂ = x / sqrt(mean x² + eps) for both kinds.
    probe = torch.arange(width, device=device, dtype=torch.float32) + 0.5 - width / 2
    probe = probe[None] * 4.0 / width
    zero = run(torch.zeros_like(probe))[0]
    bias = zero if bool(zero.abs().max() > 0) else None
    shifted = run(probe + 3.0)[0]
    plain = run(probe)[0]
    kind = "layernorm" if torch.allclose(shifted, plain, rtol=1e-4, atol=1e-5) else "rmsnorm"
    x_hat = probe[0] / (probe[0].pow(2).mean() + eps).sqrt()
    gain = (plain - (zero if bias is not None else 0.0)) / x_hat
    # Check the reading on a random input (not mean-zero, not the probe's pattern).
    generator = torch.Generator().manual_seed(0)
    check = (torch.randn(3, width, generator=generator) * 2.0 + 0.7).to(device)
    centred = check - check.mean(-1, keepdim=True) if kind == "layernorm" else check
    expect = gain * centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
    if bias is not None:
        expect = expect + bias
    if not torch.allclose(run(check), expect, rtol=1e-3, atol=1e-4):
        raise SiteError(
            f"the final norm {type(norm).__name__} is neither a LayerNorm nor an RMSNorm "
            "(its output is not gain ⊙ normalise(x) + bias)",
            hint="featcircuits linearises LayerNorm and RMSNorm readouts only")
    return kind, gain, bias, eps


def readout_of(norm: torch.nn.Module, unembed: torch.nn.Module, *,
               softcap: float | None = None) -> Readout:
    """The :class:`Readout` of a final ``norm`` module followed by an ``unembed`` linear
    module (``weight`` ``[vocab, d_model]``, optional ``bias``)."""
    weight = getattr(unembed, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise SiteError(f"the unembedding {type(unembed).__name__} has no 2-d weight",
                        hint="pass a torch.nn.Linear-like unembedding")
    if weight.is_meta:
        raise SiteError("the unembedding's weights are not loaded (meta device)",
                        hint="load the model locally (remote models keep weights elsewhere)")
    weight = weight.detach()
    device = weight.device
    kind, gain, bias, eps = _probe_norm(norm, weight.shape[1], device)
    unembed_bias = getattr(unembed, "bias", None)
    if isinstance(unembed_bias, torch.Tensor):
        unembed_bias = unembed_bias.detach().to(device, torch.float32)
    else:
        unembed_bias = None
    if softcap is not None and not (isinstance(softcap, (int, float)) and softcap > 0
                                    and math.isfinite(softcap)):
        raise ParameterError(f"softcap must be a positive number or None, got {softcap!r}")
    return Readout(kind, gain, bias, eps, weight, unembed_bias,
                   None if softcap is None else float(softcap))


def readout(model) -> Readout:
    """The :class:`Readout` of ``model`` (an nnsight ``LanguageModel`` or a plain
    transformers model): its final norm, unembedding and logit soft-cap."""
    root = underlying_module(model)
    arch = architecture(model)
    norm = root.get_submodule(arch.final_norm)
    getter = getattr(root, "get_output_embeddings", None)
    unembed = getter() if getter is not None else None
    if unembed is None:
        try:
            unembed = root.get_submodule(arch.unembed)
        except AttributeError as exc:
            raise SiteError(f"cannot find the unembedding of {type(root).__name__}",
                            hint="the model needs get_output_embeddings()") from exc
    softcap = getattr(model_config(model), "final_logit_softcapping", None)
    return readout_of(norm, unembed, softcap=softcap)


__all__ = ["NORM_KINDS", "Readout", "logit_direction", "readout", "readout_of"]
