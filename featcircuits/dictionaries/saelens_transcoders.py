"""SAELens' transcoders in its folder layout: ``transcoder``, ``skip_transcoder``,
``jumprelu_transcoder``, ``jumprelu_skip_transcoder`` (registry keys ``saelens_<name>``,
because ``transcoder`` names circuit-tracer's file).

``cfg.json`` holds ``d_in``, ``d_sae``, ``d_out`` and (SAELens 6) ``metadata.hook_name`` (the
input hook) and ``metadata.hook_name_out``; ``sae_weights.safetensors`` holds ``W_enc [d_in,
d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec [d_out]``, and ``W_skip [d_out, d_in]``
(skip variants, output ``+= x @ W_skip.T``) and ``threshold [d_sae]`` (JumpReLU:
``relu(pre) * (pre > threshold)``). There is no pre-encoder bias. They load as
``Transcoder``; featcircuits' transcoders read and write the same width, so ``d_out != d_in``
is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.formats import (
    DictionaryState,
    fill_parameters,
    positive_int,
)
from featcircuits.dictionaries.saelens import (
    CFG_FILE,
    SaelensFormat,
    check_inference_config,
    native_cfg,
    native_fields,
    saelens_field,
)
from featcircuits.dictionaries.transcoder import Transcoder
from featcircuits.errors import DictionaryError, DictionaryLoadError, SiteError
from featcircuits.model.sites import Site


def _site(hook_name: Any) -> str | None:
    if not isinstance(hook_name, str):
        return None
    try:
        return str(Site.from_hook_name(hook_name))
    except SiteError:
        return None


class SaelensTranscoder(SaelensFormat):
    """Base of SAELens' four transcoder architectures."""

    saelens_name: ClassVar[str]
    skip: ClassVar[bool] = False
    activation: ClassVar[str] = "relu"

    @classmethod
    def tensor_shapes(cls, cfg: dict[str, Any], d_in: int, d_sae: int, where: Path
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        d_out = positive_int(cfg.get("d_out"), "'d_out'", where / CFG_FILE)
        if d_out != d_in:
            raise DictionaryLoadError(
                f"{str(where)!r}: SAELens {cls.saelens_name} maps d_in={d_in} to "
                f"d_out={d_out}; featcircuits' transcoders read and write the same width",
                hint="only transcoders whose input and output sites have the same width load")
        required = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_out),
                    "b_dec": (d_out,)}
        if cls.skip:
            required["W_skip"] = (d_out, d_in)
        if cls.activation == "jumprelu":
            required["threshold"] = (d_sae,)
        return required, {}

    @classmethod
    def from_state(cls, state: DictionaryState) -> Transcoder:
        cfg, tensors, folder = state.config, state.tensors, state.where
        check_inference_config(cfg, folder)
        site, meta, config = native_fields(cfg)
        if config is not None:  # written by featcircuits
            input_site = config.get("input_site")
        else:
            input_site, site = site, _site(saelens_field(cfg, "hook_name_out"))
            hook_in = saelens_field(cfg, "hook_name", "hook_point")
            if hook_in is not None and input_site is None:  # never read the output instead
                raise DictionaryLoadError(
                    f"{str(folder)!r}: SAELens {cls.saelens_name} reads {hook_in!r}, which no "
                    "featcircuits site holds", hint="see Site.from_hook_name for the hooks "
                    "featcircuits maps; load the weights yourself into a Transcoder with "
                    "input_site= to choose one")
        transcoder = Transcoder(cfg["d_in"], cfg["d_sae"], activation=cls.activation,
                                skip=cls.skip, input_site=input_site, site=site, meta=meta)
        names = ["W_enc", "b_enc", "b_dec"] + (["W_skip"] if cls.skip else []) + (
            ["threshold"] if cls.activation == "jumprelu" else [])
        fill_parameters(transcoder, tensors, tuple(names))
        with torch.no_grad():
            transcoder.W_dec_untied.copy_(tensors["W_dec"])
        return transcoder

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        if not isinstance(dictionary, Transcoder):
            raise DictionaryError(f"SAELens' {cls.saelens_name} stores transcoders, not "
                                  f"{dictionary!r}", hint="save it with save_dictionary")
        activation = dictionary.activation
        threshold = dictionary.threshold
        if activation == "jumprelu_signed" and threshold is not None and bool(
                (threshold >= 0).all()):
            activation = "jumprelu"  # the same function when no threshold is negative
        if activation != cls.activation or (dictionary.W_skip is not None) != cls.skip:
            raise DictionaryError(
                f"SAELens' {cls.saelens_name} cannot store {dictionary!r} (activation "
                f"{dictionary.activation!r}, skip={dictionary.W_skip is not None})",
                hint="SAELens has ReLU and JumpReLU transcoders (with or without skip); a "
                "TopK transcoder, or circuit-tracer's signed JumpReLU with negative "
                "thresholds, has no SAELens form")
        tensors = {"W_enc": dictionary.W_enc, "b_enc": dictionary.b_enc,
                   "W_dec": dictionary.W_dec, "b_dec": dictionary.b_dec}
        if cls.skip:
            tensors["W_skip"] = dictionary.W_skip
        if cls.activation == "jumprelu":
            tensors["threshold"] = threshold
        cfg = native_cfg(dictionary, cls.saelens_name, False)
        cfg["d_out"] = dictionary.d_model
        hooks = {}
        for key, site in (("hook_name", dictionary.input_site), ("hook_name_out", dictionary.site)):
            try:
                hooks[key] = None if site is None else Site.parse(site).to_hook_name()
            except SiteError:
                hooks[key] = None
        cfg["hook_name"] = hooks["hook_name"]
        cfg["metadata"] = {**hooks, "model_name": dictionary.meta.get("model_name")}
        return DictionaryState(tensors, cfg)


class SaelensPlainTranscoder(SaelensTranscoder):
    """SAELens ``transcoder`` (ReLU)."""

    name = "saelens_transcoder"
    saelens_name = "transcoder"


class SaelensSkipTranscoder(SaelensTranscoder):
    """SAELens ``skip_transcoder`` (ReLU + ``W_skip``)."""

    name = "saelens_skip_transcoder"
    saelens_name = "skip_transcoder"
    skip = True


class SaelensJumpReluTranscoder(SaelensTranscoder):
    """SAELens ``jumprelu_transcoder``."""

    name = "saelens_jumprelu_transcoder"
    saelens_name = "jumprelu_transcoder"
    activation = "jumprelu"


class SaelensJumpReluSkipTranscoder(SaelensTranscoder):
    """SAELens ``jumprelu_skip_transcoder``."""

    name = "saelens_jumprelu_skip_transcoder"
    saelens_name = "jumprelu_skip_transcoder"
    activation = "jumprelu"
    skip = True


__all__ = [
    "SaelensJumpReluSkipTranscoder",
    "SaelensJumpReluTranscoder",
    "SaelensPlainTranscoder",
    "SaelensSkipTranscoder",
    "SaelensTranscoder",
]
