"""Cross-layer transcoders (circuit-tracer's ``CrossLayerTranscoder``): a feature reads one
layer and writes to that layer's output and to every later layer's.

With ``N`` layers, the features of layer ``L`` are encoded from the activation at layer ``L``'s
input site (``feature_input_hook``, default ``hook_resid_mid`` → ``resid_mid.L``)::

    c_L = act(x_in_L @ W_enc_L.T + b_enc_L)                          # [..., F]

and the reconstruction at output site ``L'`` (``feature_output_hook``, default
``hook_mlp_out`` → ``mlp_out.L'``) sums every layer at or before it::

    ŷ_L' = Σ_{L ≤ L'} c_L @ W_dec_L[:, L' − L] + b_dec_L'               # [..., d_model]

``act`` is ReLU, or circuit-tracer's signed JumpReLU ``pre * (pre > threshold)`` when the
files store ``threshold_L``. circuit-tracer's files hold no skip connection.

**Object model.** ``CrossLayerTranscoder`` is a container of ``N`` dictionaries, one
``CrossLayerFeatures`` per read layer: layer ``L``'s features live at node site
``mlp_out.L`` (the first site they write, the site a per-layer transcoder of layer ``L``
would have), read ``input_site`` = ``resid_mid.L``, decode into that site with
``directions`` = ``W_dec_L[:, 0]`` and ``decoder_bias`` = ``b_dec_L``, and also write
``later_writes`` = ``{mlp_out.L': W_dec_L[:, L' − L]}`` for every ``L' > L``.
``load_dictionaries(folder)`` returns these as ``{mlp_out.L: CrossLayerFeatures}``.
Patching a feature of layer ``L`` adds ``Δc · W_dec_L[:, L' − L]`` at every output site
``L' ≥ L`` (``featcircuits.engine.edits.patch_site`` with ``carry``); what the CLT misses
at each output site (``CrossLayerTranscoder.error``) is kept.

Files (``CrossLayerTranscoder.to_safetensors``): ``W_enc_L.safetensors`` holding ``W_enc_L
[F, d_model]``, ``b_enc_L [F]``, ``b_dec_L [d_model]`` (+ ``threshold_L [F]``), and
``W_dec_L.safetensors`` holding ``W_dec_L [F, N − L, d_model]``, for ``L = 0..N−1``; the
hooks from ``config.yaml`` beside them (else circuit-tracer's defaults).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.filechecks import (
    check_declared,
    check_memory,
    read_safetensors_header,
)
from featcircuits.dictionaries.transcoder import (
    DEFAULT_INPUT_HOOK,
    DEFAULT_OUTPUT_HOOK,
    read_circuit_tracer_config,
)
from featcircuits.errors import DictionaryError, DictionaryLoadError, SiteError
from featcircuits.model.sites import Site

__all__ = [
    "CrossLayerFeatures",
    "CrossLayerTranscoder",
    "is_cross_layer_folder",
    "load_cross_layer_transcoder",
]

ACTIVATIONS = ("relu", "jumprelu_signed")
_FILE = re.compile(r"W_(enc|dec)_(\d+)")


class CrossLayerFeatures(Dictionary):
    """The features of one read layer of a cross-layer transcoder (see the module docstring).

    Args:
        d_model: width of the input and output sites.
        n_features: features of this layer (circuit-tracer's ``d_transcoder``).
        n_outputs: how many output sites its decoder writes (``N − layer``).
        layer: the layer it reads.
        activation: ``"relu"`` or ``"jumprelu_signed"`` (``pre * (pre > threshold)``).
        input_site: where its features are encoded from (``resid_mid.L``).
        output_sites: the ``n_outputs`` sites it writes, in forward order; the first is its
            ``site`` (its node site in circuits).

    Tensors: ``W_enc [F, d_model]``, ``b_enc [F]``, ``W_dec [F, n_outputs, d_model]``,
    ``b_dec [d_model]`` (the bias of its first output site), ``threshold [F]`` for JumpReLU.
    """

    kind = "cross_layer_transcoder"

    def __init__(self, d_model: int, n_features: int, n_outputs: int, *, layer: int,
                 activation: str = "relu", input_site: str | Site,
                 output_sites: Sequence[str | Site],
                 meta: dict[str, Any] | None = None) -> None:
        if activation not in ACTIVATIONS:
            raise DictionaryError(f"cross-layer transcoder activation {activation!r} is not "
                                  f"one of {ACTIVATIONS}", hint="circuit-tracer uses ReLU or "
                                  "JumpReLU (pre * (pre > threshold))")
        sites = [str(Site.parse(site)) for site in output_sites]
        if len(sites) != n_outputs or n_outputs < 1:
            raise DictionaryError(f"layer {layer} writes {n_outputs} sites but "
                                  f"{len(sites)} output sites were given: {sites}",
                                  hint="one output site per decoder slice")
        super().__init__(site=sites[0], meta=meta)
        self.layer = int(layer)
        self.activation = activation
        self.output_sites = sites
        self._input_site = str(Site.parse(input_site))
        self.W_enc = nn.Parameter(torch.zeros(n_features, d_model))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec = nn.Parameter(torch.zeros(n_features, n_outputs, d_model))
        self.b_dec = nn.Parameter(torch.zeros(d_model))
        self.threshold = (nn.Parameter(torch.zeros(n_features))
                          if activation == "jumprelu_signed" else None)

    @property
    def input_site(self) -> str:
        """Where its features are encoded from."""
        return self._input_site

    @property
    def directions(self) -> torch.Tensor:
        """``[F, d_model]`` the decoder into its own site (``W_dec[:, 0]``)."""
        return self.W_dec[:, 0]

    @property
    def decoder_bias(self) -> torch.Tensor:
        """``[d_model]`` the bias of its own output site (``b_dec_L``)."""
        return self.b_dec

    @property
    def later_writes(self) -> dict[str, torch.Tensor]:
        """``{site: directions [F, d_model]}`` for every later site its features write."""
        return {site: self.W_dec[:, index]
                for index, site in enumerate(self.output_sites) if index}

    @property
    def separable(self) -> bool:
        return True

    def pre_activations(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        """``x [..., d_model] @ W_enc.T + b_enc`` → ``[..., F]`` (only ``feature_ids``)."""
        if feature_ids is None:
            return x @ self.W_enc.T.to(x.dtype) + self.b_enc.to(x.dtype)
        return x @ self.W_enc[feature_ids].T.to(x.dtype) + self.b_enc[feature_ids].to(x.dtype)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Input-site activation ``x [..., d_model]`` → features ``[..., F]``."""
        return self.encode_features(x)

    def encode_features(self, x: torch.Tensor, feature_ids: torch.Tensor | None = None
                        ) -> torch.Tensor:
        pre = self.pre_activations(x, feature_ids)
        if self.threshold is None:
            return torch.relu(pre)
        threshold = self.threshold if feature_ids is None else self.threshold[feature_ids]
        return pre * (pre > threshold.to(pre.dtype))

    def decode_at(self, features: torch.Tensor, site: str | Site) -> torch.Tensor:
        """Its features' contribution ``features [..., F] @ W_dec[:, i]`` to output ``site``
        (``[..., d_model]``, no bias: a site's bias belongs to the layer that reads there)."""
        name = str(Site.parse(site))
        if name not in self.output_sites:
            raise DictionaryError(f"layer {self.layer}'s features do not write {name}",
                                  hint=f"they write {self.output_sites}")
        return features @ self.W_dec[:, self.output_sites.index(name)].to(features.dtype)

    def error(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """Refused: at an output site every earlier layer's features contribute too, so one
        layer's features cannot tell what the cross-layer transcoder misses there."""
        raise DictionaryError(
            f"the error of cross-layer transcoder layer {self.layer} at {self.site} depends on "
            "the features of every earlier layer as well",
            hint="use CrossLayerTranscoder.error(outputs, inputs) for every output site at once")

    def __repr__(self) -> str:
        return (f"CrossLayerFeatures(layer={self.layer}, d_model={self.d_model}, "
                f"n_features={self.n_features}, {self.input_site} -> "
                f"{', '.join(self.output_sites)})")


class CrossLayerTranscoder(nn.Module):
    """A cross-layer transcoder: its ``N`` layers' ``CrossLayerFeatures`` (which share these
    parameters) and the computations over all layers at once.

    Args:
        layers: the ``CrossLayerFeatures`` of layers ``0..N−1`` in order; layer ``L`` must
            write ``N − L`` sites, the last ``N − L`` of layer 0's.
    """

    def __init__(self, layers: Sequence[CrossLayerFeatures]) -> None:
        super().__init__()
        layers = list(layers)
        if not layers:
            raise DictionaryError("a cross-layer transcoder needs at least one layer")
        outputs = layers[0].output_sites
        for index, layer in enumerate(layers):
            if not isinstance(layer, CrossLayerFeatures) or layer.layer != index:
                raise DictionaryError(f"layer {index} of a cross-layer transcoder is {layer!r}",
                                      hint="pass CrossLayerFeatures of layers 0..N-1 in order")
            if layer.output_sites != outputs[index:] or layer.d_model != layers[0].d_model:
                raise DictionaryError(
                    f"{layer!r} does not write the last {len(outputs) - index} of {outputs} "
                    f"with width {layers[0].d_model}",
                    hint="every layer writes its own and each later layer's output site")
        self.layers = nn.ModuleList(layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def d_model(self) -> int:
        return self.layers[0].d_model

    @property
    def input_sites(self) -> list[str]:
        """Layer ``L``'s input site at index ``L``."""
        return [layer.input_site for layer in self.layers]

    @property
    def output_sites(self) -> list[str]:
        """Layer ``L``'s output site at index ``L``."""
        return list(self.layers[0].output_sites)

    def dictionaries(self) -> dict[str, CrossLayerFeatures]:
        """``{node site mlp_out.L: layer L's features}`` (what ``load_dictionaries`` returns)."""
        return {layer.site: layer for layer in self.layers}

    def encode(self, x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Input-site activations (``[N, ..., d_model]`` or one tensor per layer) → the
        features of every layer, ``[..., F_L]`` each."""
        self._check_layers(x, "inputs")
        return [layer.encode(x[index]) for index, layer in enumerate(self.layers)]

    def reconstruct(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every layer's features → the reconstruction at every output site, ``[..., d]``
        each: ``Σ_{L ≤ L'} c_L @ W_dec_L[:, L' − L] + b_dec_L'``."""
        self._check_layers(features, "feature tensors")
        outputs = []
        for out, site in enumerate(self.output_sites):
            total = self.layers[out].b_dec.to(features[out].dtype)
            for read in range(out + 1):
                total = total + self.layers[read].decode_at(features[read], site)
            outputs.append(total)
        return outputs

    def transcode(self, x: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``reconstruct(encode(x))``: circuit-tracer's ``forward`` (no skip connection)."""
        return self.reconstruct(self.encode(x))

    def error(self, outputs: torch.Tensor | Sequence[torch.Tensor],
              inputs: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """What it misses at each output site: ``outputs[L'] − transcode(inputs)[L']``."""
        self._check_layers(outputs, "outputs")
        return [y - y_hat for y, y_hat in zip(outputs, self.transcode(inputs), strict=True)]

    def _check_layers(self, values, what: str) -> None:
        if len(values) != self.n_layers:
            raise DictionaryError(f"{len(values)} {what} given for a cross-layer transcoder "
                                  f"of {self.n_layers} layers",
                                  hint="pass one per layer, in layer order")

    def __repr__(self) -> str:
        return (f"CrossLayerTranscoder(n_layers={self.n_layers}, d_model={self.d_model}, "
                f"{self.input_sites[0]}.. -> {self.output_sites[0]}..)")


# ----------------------------------------------------------------------------- files
def is_cross_layer_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` holds a circuit-tracer cross-layer transcoder (``W_enc_0``)."""
    return (Path(folder) / "W_enc_0.safetensors").is_file()


def load_cross_layer_transcoder(folder: str | os.PathLike[str], *,
                                config: dict[str, Any] | None = None) -> CrossLayerTranscoder:
    """Load a cross-layer transcoder from circuit-tracer's files (module docstring).

    Args:
        folder: holds ``W_enc_L.safetensors`` and ``W_dec_L.safetensors``, ``L = 0..N−1``.
        config: circuit-tracer settings (``feature_input_hook``, ``feature_output_hook``);
            default: ``config.yaml`` in the folder or one up, else ``hook_resid_mid`` →
            ``hook_mlp_out``.

    Raises:
        DictionaryLoadError: missing or extra layer files, shapes that disagree, a threshold
            on some layers only, weights larger than this process may hold, bad hooks.
    """
    folder = Path(folder)
    n_layers, n_features, d_model, jump = _check_files(folder)
    if config is None:
        config = read_circuit_tracer_config(folder / "W_enc_0.safetensors")
    hooks = (config.get("feature_input_hook", DEFAULT_INPUT_HOOK),
             config.get("feature_output_hook", DEFAULT_OUTPUT_HOOK))
    try:
        inputs, outputs = ([str(Site.from_hook_name(f"blocks.{layer}.{hook}"))
                            for layer in range(n_layers)] for hook in hooks)
    except SiteError as exc:
        raise DictionaryLoadError(f"cross-layer transcoder {str(folder)!r}: {exc.message}",
                                  hint="fix feature_input_hook / feature_output_hook in "
                                  "config.yaml, or pass config=") from exc
    layers = []
    for layer in range(n_layers):
        meta = {"source": "circuit_tracer", "folder": folder.name,
                "hook_name": f"blocks.{layer}.{hooks[0]}",
                "hook_name_out": f"blocks.{layer}.{hooks[1]}"}
        enc = _tensors(folder / f"W_enc_{layer}.safetensors")
        dec = _tensors(folder / f"W_dec_{layer}.safetensors")
        features = CrossLayerFeatures(d_model, n_features, n_layers - layer, layer=layer,
                                      activation="jumprelu_signed" if jump else "relu",
                                      input_site=inputs[layer], output_sites=outputs[layer:],
                                      meta=meta)
        with torch.no_grad():
            features.W_enc.copy_(enc[f"W_enc_{layer}"])
            features.b_enc.copy_(enc[f"b_enc_{layer}"])
            features.b_dec.copy_(enc[f"b_dec_{layer}"])
            features.W_dec.copy_(dec[f"W_dec_{layer}"])
            if jump:
                features.threshold.copy_(enc[f"threshold_{layer}"])
        features.check_finite()
        layers.append(features)
    return CrossLayerTranscoder(layers)


def _check_files(folder: Path) -> tuple[int, int, int, bool]:
    """``(n_layers, n_features, d_model, has thresholds)`` from the headers, every file's
    tensors checked before any is read."""
    found: dict[str, set[int]] = {"enc": set(), "dec": set()}
    for path in folder.glob("W_*_*.safetensors"):
        match = _FILE.fullmatch(path.stem)
        if match:
            found[match.group(1)].add(int(match.group(2)))
    n_layers = len(found["enc"])
    expected = set(range(n_layers))
    if found["enc"] != expected or found["dec"] != expected:
        raise DictionaryLoadError(
            f"{str(folder)!r}: a cross-layer transcoder needs W_enc_L and W_dec_L for "
            f"L = 0..N-1; found W_enc {sorted(found['enc'])}, W_dec {sorted(found['dec'])}",
            hint="the folder is incomplete: download every layer's files")
    headers = {name: read_safetensors_header(folder / f"{name}.safetensors")
               for layer in range(n_layers) for name in (f"W_enc_{layer}", f"W_dec_{layer}")}
    first = headers["W_enc_0"].tensors.get("W_enc_0")
    if first is None or len(first.shape) != 2:
        raise DictionaryLoadError(f"{str(folder)!r}: W_enc_0.safetensors has no 2-D W_enc_0",
                                  hint="W_enc_L is [d_transcoder, d_model]")
    n_features, d_model = first.shape
    jump = "threshold_0" in headers["W_enc_0"].tensors
    total = 0
    for layer in range(n_layers):
        enc = {f"W_enc_{layer}": (n_features, d_model), f"b_enc_{layer}": (n_features,),
               f"b_dec_{layer}": (d_model,)}
        if jump:  # circuit-tracer decides from layer 0: every layer needs one
            enc[f"threshold_{layer}"] = (n_features,)
        dec = {f"W_dec_{layer}": (n_features, n_layers - layer, d_model)}
        for name, required in ((f"W_enc_{layer}", enc), (f"W_dec_{layer}", dec)):
            declared = {key: (info.dtype, info.shape)
                        for key, info in headers[name].tensors.items()}
            check_declared(folder / f"{name}.safetensors", declared, required=required)
            total += sum(math.prod(shape) for shape in required.values())
    check_memory(folder, total)
    return n_layers, n_features, d_model, jump


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return {name: t.float() for name, t in load_file(str(path)).items()}
    except Exception as exc:  # corrupt bytes surface as many exception types
        raise DictionaryLoadError(f"could not read {str(path)!r}: {type(exc).__name__}: {exc}",
                                  hint="the file may be truncated; re-download it") from exc
