"""Sites: named places in a model where activations are read or written.

A site is written ``"resid_out.3"`` (kind, dot, layer) or ``"embed"``. Each kind resolves to an
nnsight module per architecture:

=============  ===========================================================
kind           what it holds (``[batch, pos, d_model]``)
=============  ===========================================================
``embed``      output of the token-embedding module: the token embedding alone, without
               positions (GPT-2 ``wte``; TransformerLens' ``hook_embed``)
``pos_embed``  the position embedding ``W_pos[position]`` (GPT-2 ``wpe``, TransformerLens'
               ``hook_pos_embed``); read-only; models with rotary positions have none
``resid_in``   input hidden state of block L
``resid_out``  output hidden state of block L (before the final norm)
``mlp_out``    output of block L's MLP
``attn_z``     the concatenated per-head attention outputs before the output projection,
               ``[batch, pos, n_heads · d_head]`` (head-major, as TransformerLens'
               ``hook_z`` ``[batch, pos, n_heads, d_head]`` flattened by SAELens): the input
               of GPT-2 ``attn.c_proj``, GPT-NeoX ``attention.dense``, Llama ``self_attn.o_proj``
``attn_out``   output of block L's attention (first element of its tuple)
``resid_mid``  residual stream entering block L's MLP (the input of its pre-MLP norm;
               equals ``resid_in`` in parallel-attention blocks such as Pythia's); read-only
``mlp_in``     input of block L's MLP module (after the pre-MLP norm, its weight and bias)
``mlp_normed`` ``resid_mid`` normalised by the pre-MLP norm *before* its weight and bias:
               ``(x − mean) / sqrt(var + eps)`` (LayerNorm) or ``x / sqrt(mean(x²) + eps)``
               (RMSNorm); TransformerLens' ``ln2.hook_normalized``; read-only
=============  ===========================================================

A module that returns a tuple (attention; decoder layers in transformers 4.x) is read and
written through its first element (``hidden_of``, ``with_hidden``), so transformers 4.57 and
5.x give the same sites.

``resid_mid``, ``mlp_normed`` and ``mlp_in`` are where transcoders read (TransformerLens'
``hook_resid_mid`` = ``hook_mlp_in``, ``ln2.hook_normalized``, and circuit-tracer's
``mlp.hook_in``).

Widths: every kind holds ``d_model`` values per position except ``attn_z``, which holds the
output projection's input width (``n_heads · d_head``; ``Site.width``).

``Site.from_module_path("transformer.blocks.3")`` names any module directly, for
architectures featcircuits does not know.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from torch.nn import LayerNorm, Linear

from featcircuits.errors import SiteError
from featcircuits.model.loading import model_config, underlying_module

SITE_KINDS = ("embed", "pos_embed", "resid_in", "resid_out", "mlp_out", "attn_z", "attn_out",
              "resid_mid", "mlp_in", "mlp_normed")
_LAYER_KINDS = ("resid_in", "resid_out", "mlp_out", "attn_z", "attn_out", "resid_mid", "mlp_in",
                "mlp_normed")
_INPUT_KINDS = ("embed", "pos_embed")  # no layer
_READ_ONLY = ("resid_mid", "mlp_normed", "pos_embed")


@dataclass(frozen=True)
class Architecture:
    """Where the parts of one model family live, as attribute paths from the top module."""

    layers: str
    embed: str
    mlp: str
    attn: str
    final_norm: str
    unembed: str
    mlp_norm: str | None = None  # the norm feeding the MLP, relative to a block (resid_mid)
    attn_proj: str | None = None  # the attention output projection, relative to ``attn``
    pos_embed: str | None = None  # the learned position embedding (None: rotary positions)


ARCHITECTURES: dict[str, Architecture] = {
    "gpt_neox": Architecture(
        "gpt_neox.layers", "gpt_neox.embed_in", "mlp", "attention", "gpt_neox.final_layer_norm",
        "embed_out", "post_attention_layernorm", attn_proj="dense",
    ),
    "gpt2": Architecture("transformer.h", "transformer.wte", "mlp", "attn", "transformer.ln_f",
                         "lm_head", "ln_2", attn_proj="c_proj", pos_embed="transformer.wpe"),
    "llama": Architecture("model.layers", "model.embed_tokens", "mlp", "self_attn", "model.norm",
                          "lm_head", "post_attention_layernorm", attn_proj="o_proj"),
}
# Llama-family models share Llama's module names.
for _family in ("qwen2", "qwen3", "mistral", "gemma", "olmo"):
    ARCHITECTURES[_family] = ARCHITECTURES["llama"]
# Gemma-2 norms the MLP input with pre_feedforward_layernorm; OLMo-2 has no pre-MLP norm.
ARCHITECTURES["gemma2"] = Architecture("model.layers", "model.embed_tokens", "mlp", "self_attn",
                                       "model.norm", "lm_head", "pre_feedforward_layernorm",
                                       attn_proj="o_proj")
ARCHITECTURES["olmo2"] = Architecture("model.layers", "model.embed_tokens", "mlp", "self_attn",
                                      "model.norm", "lm_head", None, attn_proj="o_proj")

_TL_HOOKS = {
    "hook_resid_post": "resid_out",
    "hook_resid_pre": "resid_in",
    "hook_mlp_out": "mlp_out",
    "hook_attn_out": "attn_out",
    "attn.hook_z": "attn_z",  # [batch, pos, n_heads, d_head] in TransformerLens, flattened here
    "hook_z": "attn_z",  # SAELens' name for the same hook (e.g. gpt2-small-hook-z-kk)
    "hook_resid_mid": "resid_mid",
    "ln2.hook_normalized": "mlp_normed",  # before ln2's weight and bias
    "hook_mlp_in": "resid_mid",  # TransformerLens: the residual stream entering the MLP block
    "mlp.hook_in": "mlp_in",
    "mlp.hook_out": "mlp_out",
}
_INPUT_HOOKS = {"hook_embed": "embed", "embed.hook_embed": "embed",
                "hook_pos_embed": "pos_embed"}
_SITE_RE = re.compile(r"^(?P<kind>[a-z_]+)(?:\.(?P<layer>-?\d+))?$")


@dataclass(frozen=True, order=True)
class Site:
    """A named activation site: ``Site("resid_out", 3)`` is written ``"resid_out.3"``.

    ``module_path`` (set by ``from_module_path``) overrides the per-architecture resolution.
    """

    kind: str
    layer: int | None = None
    module_path: str | None = None

    def __post_init__(self) -> None:
        if self.module_path is not None:
            return
        if self.kind not in SITE_KINDS:
            raise SiteError(
                f"unknown site kind {self.kind!r}",
                hint=f"use one of {', '.join(SITE_KINDS)} (e.g. 'resid_out.3'), or "
                "Site.from_module_path('path.to.module')",
            )
        if self.kind in _INPUT_KINDS and self.layer is not None:
            raise SiteError(f"site {self.kind!r} takes no layer, got layer {self.layer}",
                            hint=f"write {self.kind!r}")
        if self.kind in _LAYER_KINDS and (not isinstance(self.layer, int) or self.layer < 0):
            raise SiteError(
                f"site kind {self.kind!r} needs a layer >= 0, got {self.layer!r}",
                hint=f"write e.g. '{self.kind}.0'",
            )

    # ------------------------------------------------------------------ names
    @classmethod
    def parse(cls, text: str | Site) -> Site:
        """Parse ``"resid_out.3"``, ``"embed"``, ``"module:path.to.mod"`` or a TL hook name."""
        if isinstance(text, Site):
            return text
        if not isinstance(text, str):
            raise SiteError(f"a site must be a string like 'resid_out.3', got {text!r}",
                            hint="write KIND.LAYER such as 'resid_out.3', or 'embed'")
        text = text.strip()
        if text.startswith("module:"):
            return cls.from_module_path(text[len("module:"):])
        if text.startswith(("blocks.", "hook_")):
            return cls.from_hook_name(text)
        match = _SITE_RE.match(text)
        if match is None:
            raise SiteError(
                f"cannot parse site {text!r}",
                hint="write KIND.LAYER such as 'resid_out.3', or 'embed'",
            )
        layer = match.group("layer")
        try:
            return cls(match.group("kind"), None if layer is None else int(layer))
        except SiteError as exc:  # name the whole text, not only its kind or layer
            raise SiteError(f"site {text!r}: {exc.message}", hint=exc.hint) from None

    @classmethod
    def from_module_path(cls, path: str) -> Site:
        """A site at any module, e.g. ``"transformer.blocks.3"`` (its output is read)."""
        if not path or not re.fullmatch(r"[A-Za-z_][\w]*(\.\w+)*", path) or any(
                part.startswith("__") for part in path.split(".")):
            raise SiteError(f"invalid module path {path!r}",
                            hint="name a submodule as print(model) shows it, e.g. "
                            "'model.layers.3'")
        return cls("module", None, path)

    @classmethod
    def from_hook_name(cls, hook_name: str) -> Site:
        """Map a TransformerLens hook name (``blocks.3.hook_resid_post``) to a site."""
        if hook_name in _INPUT_HOOKS:
            return cls(_INPUT_HOOKS[hook_name])
        match = re.fullmatch(r"blocks\.(\d+)\.([\w.]+)", hook_name)
        if match is None or match.group(2) not in _TL_HOOKS:
            raise SiteError(
                f"unsupported TransformerLens hook {hook_name!r}",
                hint="supported: hook_embed, hook_pos_embed and blocks.L."
                + ", blocks.L.".join(_TL_HOOKS),
            )
        return cls(_TL_HOOKS[match.group(2)], int(match.group(1)))

    def to_hook_name(self) -> str:
        """The TransformerLens hook name of this site (``blocks.3.hook_resid_post``)."""
        if self.kind in _INPUT_KINDS:
            return f"hook_{self.kind}"
        reverse = {}
        for hook, kind in _TL_HOOKS.items():
            reverse.setdefault(kind, hook)
        if self.kind not in reverse:
            raise SiteError(f"site {self} has no TransformerLens hook name")
        return f"blocks.{self.layer}.{reverse[self.kind]}"

    def __str__(self) -> str:
        if self.module_path is not None:
            return f"module:{self.module_path}"
        return self.kind if self.layer is None else f"{self.kind}.{self.layer}"

    @property
    def name(self) -> str:
        return str(self)

    @property
    def depth(self) -> float:
        """Order of sites in the forward pass: embed < pos_embed < resid_in.L < attn_z.L <
        attn_out.L < resid_mid.L < mlp_normed.L < mlp_in.L < mlp_out.L < resid_out.L <
        resid_in.L+1. Used to sort sites and to place them in diagrams."""
        if self.module_path is not None:
            return float("inf")
        if self.kind in _INPUT_KINDS:
            return -1.0 if self.kind == "embed" else -0.5
        offset = {"resid_in": 0.0, "attn_z": 0.2, "attn_out": 0.25, "resid_mid": 0.35,
                  "mlp_normed": 0.375, "mlp_in": 0.4, "mlp_out": 0.5,
                  "resid_out": 0.75}[self.kind]
        return self.layer + offset

    # ------------------------------------------------------------- resolution
    def module(self, model) -> Any:
        """The nnsight envoy (or plain module) that holds this site in ``model``."""
        if self.module_path is not None:
            return _walk(model, _named_submodule(model, self.module_path))
        arch = architecture(model)
        if self.kind in _INPUT_KINDS:  # pos_embed is read at the token embedding's output
            if self.kind == "pos_embed":
                _position_embedding(model, arch)  # SiteError for rotary models
            return _walk(model, arch.embed)
        n_layers = num_layers(model)
        if self.layer >= n_layers:
            raise SiteError(
                f"site {self} is out of range: the model has {n_layers} layers",
                hint=f"use a layer from 0 to {n_layers - 1}",
            )
        block = _walk(model, f"{arch.layers}.{self.layer}")
        if self.kind in ("resid_in", "resid_out"):
            return block
        if self.kind in _READ_ONLY:
            if arch.mlp_norm is None:
                raise SiteError(
                    f"site {self}: {model_config(model).model_type!r} blocks have no pre-MLP "
                    "norm to read the residual entering the MLP from",
                    hint="read 'mlp_in' (the MLP's input) instead")
            return _walk(block, arch.mlp_norm)
        if self.kind == "attn_z":
            if arch.attn_proj is None:
                raise SiteError(f"site {self}: no attention output projection is known for "
                                f"{model_config(model).model_type!r}",
                                hint="name it with Site.from_module_path('...o_proj') and read "
                                "its input")
            return _walk(block, f"{arch.attn}.{arch.attn_proj}")
        return _walk(block, arch.attn if self.kind == "attn_out" else arch.mlp)

    def width(self, model) -> int:
        """Values per position at this site: ``d_model``, except ``attn_z`` (the attention
        output projection's input width, ``n_heads · d_head``)."""
        if self.kind != "attn_z" or self.module_path is not None:
            return d_model(model)
        projection = underlying_module(self.module(model))
        width = getattr(projection, "in_features", None) or getattr(projection, "nx", None)
        if not isinstance(width, int):
            raise SiteError(f"cannot tell the input width of {type(projection).__name__} at "
                            f"site {self}", hint="expected a Linear (in_features) or GPT-2 "
                            "Conv1D (nx) output projection")
        return width

    def to_residual(self, model, vectors):
        """``vectors`` ``[..., width]`` at this site as residual-stream vectors ``[...,
        d_model]``: through the output projection's weight (no bias) for ``attn_z``,
        unchanged elsewhere. Used for the direct logit effect of an ``attn_z`` feature."""
        if self.kind != "attn_z" or self.module_path is not None:
            return vectors
        projection = underlying_module(self.module(model))
        weight = projection.weight.detach()
        if isinstance(projection, Linear):
            return vectors.to(weight.dtype) @ weight.T          # [out, in]
        return vectors.to(weight.dtype) @ weight                # GPT-2 Conv1D: [in, out]

    def read(self, model):
        """Inside a trace: the activation at this site, ``[batch, pos, d_model]``."""
        module = self.module(model)
        if self.kind == "mlp_normed":
            return normalized(module.input, underlying_module(module))
        if self.kind == "pos_embed":
            return _position_values(model, module.output)
        if self.kind in ("resid_in", "resid_mid", "mlp_in", "attn_z"):
            return module.input
        return hidden_of(module.output)

    def write(self, model, value) -> None:
        """Inside a trace: replace the activation at this site with ``value``."""
        if self.kind == "pos_embed":
            raise SiteError(
                f"site {self} can be read but not written: GPT-2 adds the position embedding "
                "to the token embedding inside its forward, at no hook point that holds the "
                "batch, so a written value could not be read back",
                hint="write 'embed' (the token embedding) or 'resid_in.0' (their sum)")
        if self.kind in _READ_ONLY:
            raise SiteError(
                f"site {self} can be read but not written: the block keeps its own copy of the "
                "residual, so writing the norm's input (or its normalised form) would change "
                "only the MLP's input",
                hint=f"write 'mlp_in.{self.layer}' (the MLP's input) or 'resid_out.{self.layer}'")
        module = self.module(model)
        if self.kind in ("resid_in", "mlp_in", "attn_z"):
            module.input = value
            return
        module.output = with_hidden(module.output, value)


def _position_embedding(model, arch: Architecture):
    """The position-embedding module of ``model`` (an envoy), or ``SiteError``."""
    if arch.pos_embed is None:
        raise SiteError(
            f"site pos_embed: {model_config(model).model_type!r} models have no learned "
            "position embedding (their positions are rotary, applied inside attention)",
            hint="use 'embed' (the token embedding, all the residual stream starts from)")
    return _walk(model, arch.pos_embed)


def _position_values(model, token_embedding) -> Any:
    """``W_pos[position]`` ``[batch, pos, d_model]`` for the batch of ``token_embedding``
    ``[batch, pos, d_model]`` (TransformerLens' ``hook_pos_embed``): positions 0..pos-1, as
    GPT-2 numbers them without a cache (featcircuits right-pads, so padding never shifts a
    real token's position). Computed from the weights at the token embedding's output,
    where the batch is known (GPT-2's position module sees positions ``[1, pos]`` only)."""
    weight = underlying_module(_position_embedding(model, architecture(model))).weight
    batch, positions = token_embedding.shape[0], token_embedding.shape[1]
    values = weight[:positions].to(token_embedding.dtype)
    return values[None].expand(batch, -1, -1)


def hidden_of(output: Any) -> Any:
    """The hidden state ``[batch, pos, d_model]`` in a module's output: the output itself, or
    the first element where the module returns a tuple (attention modules; decoder layers in
    transformers 4.x, which return ``(hidden, ...)`` where 5.x returns the tensor). Every read
    of a module's output in featcircuits goes through here."""
    return output[0] if isinstance(output, tuple) else output


def with_hidden(output: Any, value: Any) -> Any:
    """``output`` with its hidden state replaced by ``value``, keeping its structure: a tuple
    stays a tuple with the other elements untouched (see ``hidden_of``)."""
    return (value, *output[1:]) if isinstance(output, tuple) else value


def normalized(x, norm) -> Any:
    """``x`` normalised as ``norm`` normalises it, before its weight and bias:
    ``(x − mean) / sqrt(var + eps)`` for LayerNorm, ``x / sqrt(mean(x²) + eps)`` for RMSNorm
    (TransformerLens' ``hook_normalized``), ``[..., d_model]``."""
    eps = getattr(norm, "eps", None)
    if eps is None:
        eps = getattr(norm, "variance_epsilon", None)
    if eps is None or not isinstance(eps, float | int):
        raise SiteError(f"cannot tell the epsilon of norm {type(norm).__name__}",
                        hint="read 'resid_mid' or 'mlp_in' instead")
    if isinstance(norm, LayerNorm):
        centred = x - x.mean(dim=-1, keepdim=True)
        return centred / (centred.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    if "RMSNorm" in type(norm).__name__:
        return x / (x.pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
    raise SiteError(f"norm {type(norm).__name__} is neither LayerNorm nor RMSNorm",
                    hint="read 'resid_mid' or 'mlp_in' instead")


def architecture(model) -> Architecture:
    """The ``Architecture`` of ``model`` from its config's ``model_type``."""
    model_type = getattr(model_config(model), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise SiteError(
            f"unsupported architecture {model_type!r}",
            hint=f"supported: {', '.join(sorted(ARCHITECTURES))}; for others name modules "
            "directly with Site.from_module_path('path.to.block') or 'module:path.to.block'",
        )
    return ARCHITECTURES[model_type]


def num_layers(model) -> int:
    """Number of transformer blocks in ``model``."""
    return len(_walk(underlying_module(model), architecture(model).layers))


def d_model(model) -> int:
    """Width of the residual stream of ``model``."""
    config = model_config(model)
    width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if width is None:
        raise SiteError(f"cannot find the hidden size in the config of {type(config).__name__}")
    return int(width)


def all_sites(model, kinds: tuple[str, ...] = ("resid_out",)) -> list[Site]:
    """Every site of the given kinds in forward order, e.g. all ``resid_out.L``."""
    sites = []
    for kind in kinds:
        if kind in _INPUT_KINDS:
            sites.append(Site(kind))
        else:
            sites.extend(Site(kind, layer) for layer in range(num_layers(model)))
    return sorted(sites, key=lambda site: site.depth)


def _named_submodule(model, path: str) -> str:
    """``path`` if it names one of ``model``'s submodules (``named_modules()``), else
    ``SiteError``: a ``module:`` site never walks arbitrary attributes (``__class__``,
    ``config``, methods), only the module tree."""
    names = dict(underlying_module(model).named_modules())
    if path not in names:
        close = [name for name in names if name and name.endswith(path.rsplit(".", 1)[-1])]
        raise SiteError(
            f"module path {path!r} is not a submodule of "
            f"{type(underlying_module(model)).__name__}",
            hint="print(model) or dict(model.named_modules()) lists them"
            + (f"; similar: {', '.join(close[:3])}" if close else ""))
    return path


def _walk(root, path: str):
    node = root
    for part in path.split("."):
        try:
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        except (AttributeError, IndexError, KeyError, TypeError) as exc:
            raise SiteError(
                f"module path {path!r} does not exist in {type(underlying_module(root)).__name__}"
                f" (failed at {part!r})",
                hint="print(model) shows the module tree",
            ) from exc
    return node
