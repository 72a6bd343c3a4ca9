"""Transcoders: dictionaries that read at one site and write at another.

A (per-layer) transcoder approximates an MLP: features are encoded from the MLP's input and
decoded into its output::

    c = act(x_in @ W_enc + b_enc)            # x_in: activation at ``input_site``
    ŷ = c @ W_dec + b_dec (+ x_in @ W_skip.T)  # ≈ activation at ``site`` (the output)

Feature patching through a transcoder encodes c (clean) and c̄ (the run being patched) from the
INPUT site and adds ``Σ_{i∈F}(cᵢ − c̄ᵢ) fᵢ`` at the OUTPUT site (``patching.patch_site``).
Circuits read a transcoder the same way; its error node is ``x_out − decode(encode(x_in))``
(:meth:`Transcoder.error` with both activations; the skip connection is part of it).

File format: circuit-tracer's per-layer files (``layer_L.safetensors``, repos such as
``mntss/transcoder-Llama-3.2-1B``): ``W_enc [d_transcoder, d_model]`` — transposed with respect
to SAELens' ``W_enc [d_in, d_sae]`` — ``W_dec [d_transcoder, d_model]``, ``b_enc
[d_transcoder]``, ``b_dec [d_model]``, optional ``W_skip [d_model, d_model]`` and optional
``threshold`` / ``activation_function.threshold [d_transcoder]`` (JumpReLU as circuit-tracer
computes it, ``pre * (pre > threshold)``: activation ``jumprelu_signed``; ReLU without it).
A file featcircuits wrote names its activation in the header metadata. Older circuit-tracer files store ``W_dec`` as ``[d_model, d_transcoder]``; those are
transposed on load when the shape says so unambiguously. The sites come from the file's
``featcircuits`` metadata, else from a ``config.yaml`` beside it (circuit-tracer's
``feature_input_hook`` / ``feature_output_hook``), else ``hook_resid_mid`` → ``hook_mlp_out``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.filechecks import (
    check_declared,
    read_safetensors_header,
    read_yaml,
)
from featcircuits.dictionaries.formats import DictionaryFormat, DictionaryState
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryError, DictionaryLoadError, FeatCircuitsError, SiteError
from featcircuits.model.sites import Site
from featcircuits.writes import atomic_path

DEFAULT_INPUT_HOOK = "hook_resid_mid"
DEFAULT_OUTPUT_HOOK = "hook_mlp_out"
_LAYER_IN_NAME = re.compile(r"layer_?(\d+)")


class Transcoder(SparseAutoencoder):
    """A sparse dictionary that reads ``input_site`` and writes ``site``.

    Internally ``W_enc`` is ``[d_model, n_features]`` like every ``SparseAutoencoder``; the
    circuit-tracer file layout stores its transpose. There is no pre-encoder bias: ``b_dec``
    is the output bias.

    Args:
        d_model: width of the input and the output site.
        n_features: number of transcoder features.
        activation: ``"relu"``, ``"jumprelu"`` or ``"topk"``.
        skip: with a linear skip connection ``W_skip [d_model, d_model]`` (output += x @ W_skip.T).
        input_site: where features are encoded from (e.g. ``"resid_mid.3"``).
        site: where features are decoded into (e.g. ``"mlp_out.3"``).
    """

    kind = "transcoder"

    def __init__(self, d_model: int, n_features: int, *, activation: str = "relu",
                 k: int | None = None, skip: bool = False, input_site: str | Site | None = None,
                 site: str | Site | None = None, meta: dict[str, Any] | None = None) -> None:
        super().__init__(d_model, n_features, activation=activation, k=k, tied=False,
                         pre_encoder_bias=False, site=None if site is None else str(site),
                         meta=meta)
        self.input_site = input_site
        if site is not None:
            self.site = str(Site.parse(site))
        self.W_skip = nn.Parameter(torch.zeros(d_model, d_model)) if skip else None

    @property
    def input_site(self) -> str | None:
        """Where features are encoded from (``None``: unknown, taken to be ``site``)."""
        return self._input_site

    @input_site.setter
    def input_site(self, value: str | Site | None) -> None:
        self._input_site = None if value is None else str(Site.parse(value))

    @property
    def architecture(self) -> str:
        """``"transcoder"``: circuit-tracer's per-layer file."""
        return "transcoder"

    def skip(self, x_in: torch.Tensor) -> torch.Tensor:
        """The skip connection's contribution ``x_in @ W_skip.T`` (zeros without one)."""
        if self.W_skip is None:
            return torch.zeros_like(x_in)
        return x_in @ self.W_skip.T

    def transcode(self, x_in: torch.Tensor) -> torch.Tensor:
        """Predicted output ``[..., d_model]`` from the input-site activation ``x_in``."""
        return self.decode(self.encode(x_in)) + self.skip(x_in)

    def output_error(self, x_in: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the transcoder misses: ``y - transcode(x_in)``, ``[..., d_model]``."""
        return y - self.transcode(x_in)

    def error(self, x: torch.Tensor, x_in: torch.Tensor | None = None) -> torch.Tensor:
        """The error node of circuits: ``x − decode(encode(x_in))``, ``[..., d_model]``.

        ``x`` is the activation at ``site`` (the output) and ``x_in`` the one at
        ``input_site``, as circuit runs read them (``featcircuits.engine.circuit_trace``):
        the skip connection's contribution belongs to this error, while
        :meth:`output_error` subtracts it too. ``x_in`` may be left out only when the
        transcoder reads where it writes (``input_site`` unknown or equal to ``site``).

        Raises:
            DictionaryError: no ``x_in`` although ``input_site`` differs from ``site``.
        """
        if x_in is None:
            if self.input_site is not None and self.input_site != self.site:
                raise DictionaryError(
                    f"{self!r} reads {self.input_site} and writes {self.site}, so its error "
                    "needs both activations; got only x",
                    hint=f"pass the {self.input_site} activation too: transcoder.error(x, x_in) "
                    "(the error node of circuits), or transcoder.output_error(x_in, x), which "
                    "also subtracts the skip connection")
            x_in = x
        return x - self.decode(self.encode(x_in))

    def config(self) -> dict[str, Any]:
        return {"activation": self.activation, "k": self.k, "skip": self.W_skip is not None,
                "input_site": self.input_site}

    def __repr__(self) -> str:
        return (f"Transcoder(d_model={self.d_model}, n_features={self.n_features}, "
                f"{self.input_site} -> {self.site})")


# ----------------------------------------------------------------------------- files
class TranscoderFormat(DictionaryFormat):
    """circuit-tracer's per-layer transcoder file (see the module docstring)."""

    name = "transcoder"
    layout = "circuit_tracer"
    FILE = "transcoder.safetensors"  # the file's name inside a folder written by ``write``

    @classmethod
    def from_state(cls, state: DictionaryState) -> Transcoder:
        return transcoder_from_state(state)

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_writes(dictionary, (cls.name,))
        transcoder: Transcoder = dictionary  # type: ignore[assignment]
        if transcoder.activation == "topk":
            raise DictionaryError(
                f"cannot write {transcoder!r} (TopK, k={transcoder.k}) as a circuit-tracer "
                "transcoder file: those files store no k, and circuit-tracer's loader reads "
                "them as ReLU, so it would compute other features",
                hint="save its tensors yourself, or use a ReLU / JumpReLU transcoder")
        tensors = {"W_enc": transcoder.W_enc.T, "W_dec": transcoder.W_dec,
                   "b_enc": transcoder.b_enc, "b_dec": transcoder.b_dec}
        if transcoder.threshold is not None:
            # circuit-tracer's JumpReLU keeps the sign (``pre * (pre > t)``); featcircuits'
            # ``jumprelu`` is ``relu(pre) * (pre > t)``, the same function as the signed one
            # with ``max(t, 0)``: stored so, circuit-tracer computes exactly these features
            threshold = transcoder.threshold
            tensors["activation_function.threshold"] = (
                threshold.clamp_min(0) if transcoder.activation == "jumprelu" else threshold)
        if transcoder.W_skip is not None:
            tensors["W_skip"] = transcoder.W_skip
        metadata = {"format": "featcircuits-transcoder", "activation": transcoder.activation}
        for key, value in (("input_site", transcoder.input_site), ("site", transcoder.site),
                           ("k", transcoder.k)):
            if value is not None:
                metadata[key] = str(value)
        return DictionaryState(tensors, metadata)

    @classmethod
    def write(cls, state: DictionaryState, folder: Path) -> Path:
        write_transcoder_file(state, Path(folder) / cls.FILE)
        return Path(folder)


def write_transcoder_file(state: DictionaryState, path: Path) -> Path:
    """Write ``state`` as one safetensors file (atomically), its config as header metadata."""
    from featcircuits.dictionaries.saelens import save_safetensors

    with atomic_path(path) as tmp:
        save_safetensors({name: t.detach().cpu().float().contiguous()
                          for name, t in state.tensors.items()}, tmp, state.config)
    return path


def save_transcoder(transcoder: Transcoder, path: str | os.PathLike[str]) -> Path:
    """Write ``transcoder`` as one circuit-tracer-layout safetensors file (atomically).

    ``path`` is the file (``.../layer_3.safetensors``); the sites go in its metadata.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise DictionaryError(f"transcoder file {str(path)!r} must end in .safetensors",
                              hint="e.g. save_transcoder(t, 'out/layer_3.safetensors')")
    return write_transcoder_file(TranscoderFormat.to_state(transcoder), path)


def read_transcoder_file(path: str | os.PathLike[str]) -> DictionaryState:
    """The tensors (float32) and header metadata of a transcoder file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not os.path.lexists(path):
        raise DictionaryLoadError(f"transcoder file {str(path)!r} does not exist",
                                  hint="pass a circuit-tracer layer_L.safetensors file")
    header = read_safetensors_header(path)
    declared = {name: (info.dtype, info.shape) for name, info in header.tensors.items()}
    check_declared(path, declared, **_expected_shapes(declared, path))
    try:
        tensors = {name: t.float() for name, t in load_file(str(path)).items()}
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as exc:  # corrupt bytes surface as many exception types
        raise DictionaryLoadError(f"could not read transcoder {str(path)!r}: "
                                  f"{type(exc).__name__}: {exc}",
                                  hint="the file may be truncated; re-download it") from exc
    return DictionaryState(tensors, metadata, path)


def _expected_shapes(declared: dict[str, tuple[str, tuple[int, ...]]], path: Path
                     ) -> dict[str, dict[str, tuple[int, ...]]]:
    """``required`` / ``optional`` shapes of a transcoder file's tensors, the widths taken
    from the declared ``b_enc [d_transcoder]`` and ``b_dec [d_model]``."""
    biases = {name: declared[name][1] for name in ("b_enc", "b_dec") if name in declared}
    if len(biases) < 2 or any(len(shape) != 1 for shape in biases.values()):
        raise DictionaryLoadError(
            f"{str(path)!r}: b_enc and b_dec must be vectors, got {biases} (has "
            f"{sorted(declared)})", hint="a circuit-tracer transcoder holds W_enc, W_dec, "
            "b_enc, b_dec (+ W_skip, threshold)")
    (n_features,), (d_model,) = biases["b_enc"], biases["b_dec"]
    w_dec = (n_features, d_model)
    if "W_dec" in declared and tuple(declared["W_dec"][1]) == (d_model, n_features):
        w_dec = (d_model, n_features)  # older circuit-tracer files, transposed on load
    for name in ("W_enc", "W_dec"):
        shape = tuple(declared[name][1]) if name in declared else None
        if shape is not None and shape not in ((n_features, d_model), w_dec):
            raise _orientation_error(name, shape, n_features, d_model, path)
    if "threshold" in declared and "activation_function.threshold" in declared:
        raise DictionaryLoadError(f"{str(path)!r} holds both 'threshold' and "
                                  "'activation_function.threshold'", hint="keep one of them")
    return {"required": {"W_enc": (n_features, d_model), "W_dec": w_dec,
                         "b_enc": (n_features,), "b_dec": (d_model,)},
            "optional": {"W_skip": (d_model, d_model), "threshold": (n_features,),
                         "activation_function.threshold": (n_features,),
                         "log_thresholds": (n_features,)}}


def read_circuit_tracer(path: Path) -> tuple[str, DictionaryState]:
    """The layout reader for ``load_dictionary``: ``("transcoder", state)``."""
    return TranscoderFormat.name, read_transcoder_file(path)


def load_transcoder(path: str | os.PathLike[str], *, layer: int | None = None,
                    input_site: str | Site | None = None, site: str | Site | None = None,
                    config: dict[str, Any] | None = None) -> Transcoder:
    """Load a per-layer transcoder in circuit-tracer's layout.

    Args:
        path: the ``.safetensors`` file.
        layer: block index; default: from the metadata or the file name (``layer_3``).
        input_site, site: override where it reads / writes.
        config: circuit-tracer settings (``feature_input_hook``, ``feature_output_hook``);
            default: ``config.yaml`` beside the file or one folder up, if any.

    Raises:
        DictionaryLoadError: missing tensors, inconsistent shapes, unreadable file.
    """
    return transcoder_from_state(read_transcoder_file(path), layer=layer,
                                 input_site=input_site, site=site, config=config)


def transcoder_from_state(state: DictionaryState, *, layer: int | None = None,
                          input_site: str | Site | None = None, site: str | Site | None = None,
                          config: dict[str, Any] | None = None) -> Transcoder:
    """Build a transcoder from a file's tensors and metadata (``load_transcoder``'s options)."""
    tensors, metadata, path = state.tensors, state.config, state.where
    missing = [name for name in ("W_enc", "W_dec", "b_enc", "b_dec") if name not in tensors]
    if missing:
        raise DictionaryLoadError(
            f"{str(path)!r} lacks tensors {missing} (has {sorted(tensors)})",
            hint="a circuit-tracer transcoder holds W_enc, W_dec, b_enc, b_dec "
            "(+ W_skip, threshold)")
    if "log_thresholds" in tensors:
        raise DictionaryLoadError(f"{str(path)!r} stores log_thresholds, which circuit-tracer "
                                  "does not read either", hint="convert it to 'threshold'")
    b_enc, b_dec = tensors["b_enc"], tensors["b_dec"]
    if b_enc.ndim != 1 or b_dec.ndim != 1:
        raise DictionaryLoadError(f"{str(path)!r}: b_enc and b_dec must be vectors, got shapes "
                                  f"{tuple(b_enc.shape)} and {tuple(b_dec.shape)}")
    n_features, d_model = b_enc.shape[0], b_dec.shape[0]
    W_enc = _oriented("W_enc", tensors["W_enc"], n_features, d_model, path, legacy_ok=False)
    W_dec = _oriented("W_dec", tensors["W_dec"], n_features, d_model, path, legacy_ok=True)
    threshold = tensors.get("threshold", tensors.get("activation_function.threshold"))
    # without featcircuits' metadata a threshold means circuit-tracer's signed JumpReLU
    activation = metadata.get("activation") or (
        "jumprelu_signed" if threshold is not None else "relu")
    k = metadata.get("k")
    if k is not None:
        if not (isinstance(k, str) and k.isascii() and k.isdigit() and int(k) > 0):
            raise DictionaryLoadError(f"{str(path)!r}: metadata 'k' must be a positive "
                                      f"integer, got {k!r}",
                                      hint="the file's header was edited; re-save it")
        k = int(k)
    skip = tensors.get("W_skip")
    if skip is not None and tuple(skip.shape) != (d_model, d_model):
        raise DictionaryLoadError(f"{str(path)!r}: W_skip has shape {tuple(skip.shape)}, "
                                  f"expected {(d_model, d_model)}")
    in_site, out_site = _sites(path, metadata, layer, input_site, site, config)
    meta = {"source": "circuit_tracer", "file": path.name}
    try:
        transcoder = Transcoder(d_model, n_features, activation=activation, k=k,
                                skip=skip is not None, input_site=in_site, site=out_site,
                                meta=meta)
    except FeatCircuitsError as exc:
        raise DictionaryLoadError(f"{str(path)!r}: {exc.message}", hint=exc.hint) from exc
    with torch.no_grad():
        transcoder.W_enc.copy_(W_enc.T)
        transcoder.W_dec_untied.copy_(W_dec)
        transcoder.b_enc.copy_(b_enc)
        transcoder.b_dec.copy_(b_dec)
        if activation in ("jumprelu", "jumprelu_signed"):
            if threshold is None or tuple(threshold.shape) != (n_features,):
                raise DictionaryLoadError(f"{str(path)!r}: a JumpReLU transcoder needs a "
                                          f"threshold of shape {(n_features,)}")
            transcoder.threshold.copy_(threshold)
        if skip is not None:
            transcoder.W_skip.copy_(skip)
    transcoder.check_finite()
    return transcoder


def _oriented(name: str, weight: torch.Tensor, n_features: int, d_model: int, path: Path,
              *, legacy_ok: bool) -> torch.Tensor:
    """``weight`` as ``[n_features, d_model]``; ``legacy_ok`` accepts the transpose."""
    shape = tuple(weight.shape)
    if shape == (n_features, d_model):
        return weight
    if legacy_ok and shape == (d_model, n_features):
        return weight.T
    raise _orientation_error(name, shape, n_features, d_model, path)


def _orientation_error(name: str, shape: tuple[int, ...], n_features: int, d_model: int,
                       path: Path) -> DictionaryLoadError:
    return DictionaryLoadError(
        f"tensor {name!r} in {str(path)!r} has shape {shape}, expected "
        f"[d_transcoder, d_model] = {(n_features, d_model)} (from b_enc and b_dec)",
        hint="circuit-tracer stores W_enc as [d_transcoder, d_model], the transpose of "
        "SAELens' W_enc; a SAELens-layout file belongs in a folder with cfg.json")


def _sites(path: Path, metadata: dict[str, str], layer: int | None, input_site, site,
           config: dict[str, Any] | None) -> tuple[str, str]:
    if input_site is not None and site is not None:
        return str(Site.parse(input_site)), str(Site.parse(site))
    if metadata.get("input_site") and metadata.get("site"):
        return (str(Site.parse(input_site or metadata["input_site"])),
                str(Site.parse(site or metadata["site"])))
    if layer is None:
        match = _LAYER_IN_NAME.search(path.stem)
        if match is None:
            raise DictionaryLoadError(
                f"cannot tell the layer of transcoder {str(path)!r}",
                hint="name the file layer_L.safetensors or pass layer=L")
        layer = int(match.group(1))
    if config is None:
        config = read_circuit_tracer_config(path)
    hooks = (config.get("feature_input_hook", DEFAULT_INPUT_HOOK),
             config.get("feature_output_hook", DEFAULT_OUTPUT_HOOK))
    try:
        resolved = [str(Site.from_hook_name(f"blocks.{layer}.{hook}")) for hook in hooks]
    except SiteError as exc:
        raise DictionaryLoadError(f"transcoder {str(path)!r}: {exc.message}",
                                  hint="pass input_site= and site= explicitly") from exc
    return (str(Site.parse(input_site)) if input_site else resolved[0],
            str(Site.parse(site)) if site else resolved[1])


def read_circuit_tracer_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """circuit-tracer's ``config.yaml`` beside ``path`` or one folder up (``{}`` if none)."""
    path = Path(path)
    for folder in (path.parent, path.parent.parent):
        candidate = folder / "config.yaml"
        if os.path.lexists(candidate):  # a FIFO, a link to a device: refused by read_yaml
            config = read_yaml(candidate)
            if not isinstance(config, dict):
                raise DictionaryLoadError(f"{str(candidate)!r} does not hold a mapping")
            return config
    return {}


def transcoder_set_files(folder: Path) -> list[Path]:
    """The per-layer files of a circuit-tracer transcoder set in ``folder``
    (``layer_<L>.safetensors``, sorted by layer); ``[]`` when there are none."""
    files = [p for p in Path(folder).glob("layer_*.safetensors")
             if re.fullmatch(r"layer_\d+", p.stem)]
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))
