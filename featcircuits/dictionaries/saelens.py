"""SAELens' folder layout (featcircuits' native format) and the architectures stored in it.

A folder holds ``cfg.json`` and ``sae_weights.safetensors`` (``W_enc [d_in, d_sae]``,
``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]`` for
JumpReLU). Our own keys sit under ``cfg["featcircuits"]`` (kind, site, constructor config,
metadata, checksum). SAELens v6 (``hook_name``) and pre-6.0 (``hook_point``,
``activation_fn_str``) configs are read too.

The architecture of a folder is ``cfg["architecture"]`` (``standard``, ``topk``,
``jumprelu``; pre-6.0 ``activation_fn_str: topk`` means ``topk``), except for featcircuits'
linear bases, which SAELens would read as ``standard`` SAEs: their architecture is
``featcircuits-<kind>`` (``featcircuits-pca``, ...), from ``cfg["featcircuits"]["kind"]``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.centered import CenteredSparseAutoencoder, fold_centring
from featcircuits.dictionaries.filechecks import (
    SafetensorsHeader,
    check_declared,
    read_safetensors_header,
)
from featcircuits.dictionaries.formats import (
    DictionaryFormat,
    DictionaryState,
    fill_sae,
    json_bool,
    positive_int,
    read_json,
    require_tensors,
)
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.dictionaries.transcoder import Transcoder
from featcircuits.errors import DictionaryError, DictionaryLoadError, SiteError
from featcircuits.model.sites import Site
from featcircuits.writes import atomic_files, committed_path

FORMAT_VERSION = 1
CFG_FILE = "cfg.json"
TRANSCODER_ARCHITECTURES = ("transcoder", "skip_transcoder", "jumprelu_transcoder",
                            "jumprelu_skip_transcoder")
# SAELens' inference SAEs (SAE.load_from_disk) apply these normalisations to nothing: the
# factor or whitening is folded into the weights by from_pretrained / at the end of training
IDENTITY_NORMALIZATIONS = (None, "none", "expected_average_only_in", "covariance_whitening")
# ... and these per input, in encode, undone in decode (the decoder is then no longer affine)
PER_INPUT_NORMALIZATIONS = ("constant_norm_rescale", "layer_norm")
# SAELens 6's run-time normalisations: (the scale s(x) decode multiplies by, what it adds)
_PER_INPUT = {"constant_norm_rescale": ("‖x‖ / sqrt(d_in)", ""),
              "layer_norm": ("std(x) (unbiased; encode divides by std(x) + 1e-5)",
                             " + mean(x)")}
WEIGHTS_FILE = "sae_weights.safetensors"


# ----------------------------------------------------------------------------- reading
def read_saelens(folder: Path) -> tuple[Any, DictionaryState]:
    """Read and cross-check ``folder``'s config and weights; return its architecture name
    and the state (``config`` is the whole ``cfg.json``).

    The weights' safetensors header is checked against the config (tensor names, floating
    dtypes, shapes), the file's size and the machine's memory before the checksum is computed
    or any tensor is loaded.

    Raises ``DictionaryLoadError`` on missing, extra or non-float tensors, shapes that
    contradict ``d_in`` / ``d_sae``, a checksum mismatch or an unknown featcircuits
    ``format_version``.
    """
    from safetensors.torch import load_file

    from featcircuits.dictionaries.registry import dictionary_format

    cfg = read_json(committed_path(folder / CFG_FILE))
    d_in, d_sae = _int_field(cfg, "d_in", folder / CFG_FILE), _int_field(cfg, "d_sae",
                                                                        folder / CFG_FILE)
    architecture = saelens_architecture(cfg, folder)
    fmt = dictionary_format(architecture, folder)  # an unknown architecture is refused first
    required, optional = fmt.tensor_shapes(cfg, d_in, d_sae, folder)  # type: ignore[attr-defined]

    def checked(path: Path) -> SafetensorsHeader:
        header = read_safetensors_header(path)
        check_declared(path, {name: (info.dtype, info.shape)
                              for name, info in header.tensors.items()},
                       required=required, optional=optional)
        return header

    if not isinstance(cfg.get("featcircuits"), dict) and _written_by_us(
            committed_path(folder / WEIGHTS_FILE)):
        raise DictionaryLoadError(
            f"{str(folder)!r}: the weights were saved by featcircuits but {CFG_FILE} has no "
            "'featcircuits' section (corrupted or edited)",
            hint="re-save or re-download the dictionary")
    weights_path, _, verified = _weights(folder, cfg, checked)
    if verified is False:
        raise DictionaryLoadError(
            f"{str(folder)!r}: checksum mismatch — {WEIGHTS_FILE} or {CFG_FILE} changed "
            "since it was saved (corrupted or edited)",
            hint="re-save or re-download it; if you edited cfg.json on purpose, delete the "
            "'sha256' entry under 'featcircuits'")
    ours = cfg.get("featcircuits") if isinstance(cfg.get("featcircuits"), dict) else None
    if ours is not None and ours.get("format_version") != FORMAT_VERSION:
        raise DictionaryLoadError(
            f"{str(folder)!r} has featcircuits format_version {ours.get('format_version')!r}; "
            f"this version reads {FORMAT_VERSION}",
            hint="upgrade featcircuits or re-save the dictionary")
    tensors = {k: v.float() for k, v in load_file(str(weights_path)).items()}
    return architecture, DictionaryState(tensors, cfg, folder)


def _written_by_us(weights: Path) -> bool:
    """Whether the header metadata of ``weights`` says featcircuits wrote it."""
    try:
        return read_safetensors_header(weights).metadata.get("format") == "featcircuits"
    except DictionaryLoadError:
        return False


def saelens_architecture(cfg: dict[str, Any], folder: Path) -> Any:
    """The registry key of a SAELens-layout config (see the module docstring)."""
    ours = cfg.get("featcircuits")
    architecture = cfg.get("architecture", "standard")
    if architecture in TRANSCODER_ARCHITECTURES:  # "transcoder" is circuit-tracer's file
        return f"saelens_{architecture}"
    if isinstance(ours, dict) and ours.get("kind") != "sae":
        return f"featcircuits-{ours.get('kind')}"
    activation_fn = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    if activation_fn == "topk":  # pre-6.0 SAELens: a standard SAE with a TopK activation
        return "topk"
    if architecture == "standard" and activation_fn != "relu":
        raise DictionaryLoadError(
            f"{str(folder)!r}: unsupported SAE architecture {architecture!r} / activation "
            f"{activation_fn!r}", hint="featcircuits reads standard (ReLU), topk and jumprelu SAEs")
    return architecture


def native_fields(cfg: dict[str, Any]) -> tuple[str | None, dict[str, Any], dict[str, Any] | None]:
    """``(site, meta, constructor config)`` of a config; for a foreign SAELens config the
    site comes from its hook name and the config is ``None``."""
    ours = cfg.get("featcircuits")
    if isinstance(ours, dict):
        meta = ours.get("meta") if isinstance(ours.get("meta"), dict) else {}
        config = ours.get("config") if isinstance(ours.get("config"), dict) else {}
        return ours.get("site"), meta, config
    return _site_from_hook(saelens_field(cfg, "hook_name", "hook_point")), saelens_meta(cfg), None


def saelens_field(cfg: dict[str, Any], *keys: str) -> Any:
    """The first of ``keys`` set in ``cfg`` or (SAELens 6) ``cfg["metadata"]`` / ``cfg["meta"]``."""
    sections = [cfg] + [cfg[name] for name in ("metadata", "meta")
                        if isinstance(cfg.get(name), dict)]
    for section in sections:
        for key in keys:
            if section.get(key) is not None:
                return section[key]
    return None


def saelens_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """``meta`` of a foreign SAELens config: source, hook names, model name (v6 keeps them
    under ``metadata``; earlier versions at the top level) and the activation normalisation."""
    meta = {"source": "saelens",
            "hook_name": saelens_field(cfg, "hook_name", "hook_point"),
            "model_name": saelens_field(cfg, "model_name")}
    hook_out = saelens_field(cfg, "hook_name_out")
    if hook_out is not None:
        meta["hook_name_out"] = hook_out
    normalize = cfg.get("normalize_activations")
    if normalize not in (None, "none"):
        meta["normalize_activations"] = normalize
    return meta


def _site_from_hook(hook_name: str | None) -> str | None:
    if not hook_name:
        return None
    try:
        return str(Site.from_hook_name(hook_name))
    except SiteError:
        return None


def _int_field(cfg: dict[str, Any], key: str, where: Path) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DictionaryLoadError(f"{str(where)!r}: {key!r} must be a positive integer, "
                                  f"got {value!r}")
    return value


def checksum(weights: bytes, cfg: dict[str, Any]) -> str:
    """SHA-256 over the weights file and the config (without the checksum itself)."""
    ours = {key: value for key, value in cfg.get("featcircuits", {}).items() if key != "sha256"}
    canonical = json.dumps({**cfg, "featcircuits": ours}, sort_keys=True)
    return hashlib.sha256(weights + canonical.encode("utf-8")).hexdigest()


def checksum_file(path: Path, cfg: dict[str, Any]) -> str:
    """``checksum(path.read_bytes(), cfg)``, reading the file in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    ours = {key: value for key, value in cfg.get("featcircuits", {}).items() if key != "sha256"}
    digest.update(json.dumps({**cfg, "featcircuits": ours}, sort_keys=True).encode("utf-8"))
    return digest.hexdigest()


def _weights(folder: Path, cfg: dict[str, Any], checked: Callable[[Path], SafetensorsHeader]
             ) -> tuple[Path, SafetensorsHeader, bool | None]:
    """The weights file that belongs to ``cfg``, its checked header, and whether the config's
    checksum matched it (``None``: the config has none). The file is hashed only after
    ``checked`` accepted its header (so a huge or padded file is refused before it is read).

    ``write_saelens`` writes both files as one set (``featcircuits.writes.atomic_files``):
    ``committed_path`` finds the weights of the set ``cfg.json`` came from, also when the
    writer was killed between its renames.
    """
    main = committed_path(folder / WEIGHTS_FILE)
    ours = cfg.get("featcircuits")
    header = checked(main)
    if not (isinstance(ours, dict) and "sha256" in ours):
        return main, header, None
    return main, header, checksum_file(main, cfg) == ours["sha256"]


# ----------------------------------------------------------------------------- writing
def save_safetensors(tensors: dict[str, Any], path: Path, metadata: dict[str, str]) -> Path:
    """``safetensors.torch.save_file``, with a header that is the same bytes every time.

    safetensors keeps the header metadata in a Rust hash map, so its key order (and the
    file's bytes and checksum) changes from process to process. The header is rewritten
    in place with the metadata keys sorted (same members, same length, so the tensor data
    and offsets stay where they are); the tensor order is safetensors' own (by dtype
    alignment, then name), which is deterministic. Same tensors + metadata → same bytes.
    """
    from safetensors.torch import save_file

    path = Path(path)
    save_file(tensors, str(path), metadata=dict(metadata))
    with open(path, "r+b") as handle:
        length = int.from_bytes(handle.read(8), "little")
        raw = handle.read(length)
        header = json.loads(raw)
        meta = header.pop("__metadata__", None)
        ordered: dict[str, Any] = {}
        if meta is not None:
            ordered["__metadata__"] = dict(sorted(meta.items()))
        ordered.update(sorted(header.items(), key=lambda item: (item[1]["data_offsets"][0],
                                                                item[0])))
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= length:  # always, for serde_json's compact output
            handle.seek(8)
            handle.write(text.ljust(length, b" "))
            return path
        data = handle.read()
    text = text.ljust(-(-len(text) // 8) * 8, b" ")  # 8-byte aligned, as safetensors pads
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def write_saelens(state: DictionaryState, folder: Path) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` into ``folder`` as one set
    (``featcircuits.writes.atomic_files``): a kill at any moment leaves the old dictionary
    or the new one, both files with the same mode; a full disk leaves the old one and
    raises ``OutputError`` naming the bytes needed."""
    cfg = state.config
    tensors = {name: t.detach().cpu().contiguous() for name, t in state.tensors.items()}
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    with atomic_files(folder) as files:
        weights_tmp = files.path(WEIGHTS_FILE, size=size)
        save_safetensors(tensors, weights_tmp,
                         {"format": "featcircuits", "format_version": str(FORMAT_VERSION)})
        cfg["featcircuits"]["sha256"] = checksum_file(weights_tmp, cfg)
        files.path(CFG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True),
                                        encoding="utf-8")
    return folder


def native_cfg(dictionary: Dictionary, architecture: str, apply_b_dec: bool) -> dict[str, Any]:
    """The ``cfg.json`` of ``dictionary`` (without the checksum, which ``write_saelens`` adds)."""
    site = dictionary.site
    hook_name = None
    if site is not None:
        try:
            hook_name = Site.parse(site).to_hook_name()
        except SiteError:
            hook_name = None
    return {
        "architecture": architecture,
        "d_in": dictionary.d_model,
        "d_sae": dictionary.n_features,
        "dtype": "float32",
        "device": "cpu",
        "hook_name": hook_name,
        "apply_b_dec_to_input": apply_b_dec,
        "normalize_activations": "none",
        **({"reshape_activations": "hook_z"}
           if site is not None and Site.parse(site).kind == "attn_z" else {}),
        "model_name": dictionary.meta.get("model_name"),
        # SAELens 6 reads these under "metadata" (earlier versions at the top level)
        "metadata": {"hook_name": hook_name, "model_name": dictionary.meta.get("model_name")},
        "featcircuits": {
            "format_version": FORMAT_VERSION,
            "kind": dictionary.kind,
            "site": site,
            "config": dictionary.config(),
            "meta": dictionary.meta,
        },
    }


class SaelensFormat(DictionaryFormat):
    """Base of the architectures stored in SAELens' folder layout."""

    layout = "saelens"

    @classmethod
    def tensor_shapes(cls, cfg: dict[str, Any], d_in: int, d_sae: int, where: Path
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        """``(required, optional)`` tensor shapes of ``sae_weights.safetensors``."""
        return ({"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in),
                 "b_dec": (d_in,)}, {})

    @classmethod
    def write(cls, state: DictionaryState, folder: Path) -> Path:
        return write_saelens(state, folder)


def check_inference_config(cfg: dict[str, Any], folder: Path | None) -> None:
    """Refuse what featcircuits cannot compute exactly: per-input activation normalisation
    (``constant_norm_rescale``, ``layer_norm``), reshaping other than ``hook_z`` at an
    attention ``hook_z`` hook, unknown settings."""
    normalize = cfg.get("normalize_activations")
    if normalize in PER_INPUT_NORMALIZATIONS:
        scale, shift = _PER_INPUT[normalize]
        raise DictionaryLoadError(
            f"{str(folder)!r} (architecture {cfg.get('architecture', 'standard')!r}) uses "
            f"normalize_activations={normalize!r}: SAELens decodes x̂ = s(x)·(c @ W_dec + "
            f"b_dec){shift} with s(x) = {scale} of each input, so feature i writes "
            "s(x)·W_dec[i], a direction scaled per prompt and position; featcircuits' "
            "patching, ablation and circuit attribution add one fixed direction per feature "
            "(Dictionary.directions), so what is missing is a per-input decoder scale in the "
            "engine; loading it with fixed directions would patch every position off by s(x)",
            hint="use an SAE trained with normalize_activations none or "
            "expected_average_only_in (no exact conversion exists: s depends on the input)")
    if normalize not in IDENTITY_NORMALIZATIONS:
        raise DictionaryLoadError(f"{str(folder)!r}: unknown normalize_activations "
                                  f"{normalize!r}", hint="the config is corrupt or newer")
    reshape = cfg.get("reshape_activations")
    if reshape in (None, "none"):
        return
    hook = saelens_field(cfg, "hook_name", "hook_point")
    site = _site_from_hook(hook) if isinstance(hook, str) else None
    if reshape != "hook_z" or site is None or Site.parse(site).kind != "attn_z":
        raise DictionaryLoadError(
            f"{str(folder)!r} uses reshape_activations={reshape!r} with hook {hook!r}: "
            "featcircuits reads hook_z SAEs (reshape_activations 'hook_z' at a "
            "blocks.L.attn.hook_z / blocks.L.hook_z hook, site attn_z.L) and nothing else",
            hint="the config is corrupt or newer than featcircuits")
    # hook_z: SAELens flattens [.., n_heads, d_head] to [.., n_heads * d_head] head-major,
    # which is how site attn_z.L holds it, so the SAE reads it as it is


# ------------------------------------------------------------------------------- SAEs
class SaelensSae(SaelensFormat):
    """A SAELens SAE; subclasses fix the activation. ``center_input`` in featcircuits'
    config makes it a ``CenteredSparseAutoencoder``."""

    activation: ClassVar[str]

    @classmethod
    def k_from(cls, cfg: dict[str, Any], where: Path | None = None) -> int | None:
        """TopK's ``k`` from the config (``None`` for other activations)."""
        return None

    @classmethod
    def extra_cfg(cls, sae: SparseAutoencoder) -> dict[str, Any]:
        """Architecture-specific ``cfg.json`` keys."""
        return {}

    @classmethod
    def from_state(cls, state: DictionaryState) -> SparseAutoencoder:
        cfg, tensors, folder = state.config, state.tensors, state.where
        site, meta, config = native_fields(cfg)
        check_inference_config(cfg, folder)
        if cls.activation == "jumprelu":
            require_tensors(tensors, ["threshold"], folder / WEIGHTS_FILE)
        cfg_path = folder / CFG_FILE if folder is not None else None
        centered = json_bool(config or {}, "center_input", False, cfg_path)
        sae_class = CenteredSparseAutoencoder if centered else SparseAutoencoder
        sae = sae_class(cfg["d_in"], cfg["d_sae"], activation=cls.activation,
                        k=cls.k_from(cfg, cfg_path),
                        tied=json_bool(config or {}, "tied", False, cfg_path),
                        pre_encoder_bias=json_bool(cfg, "apply_b_dec_to_input", True, cfg_path),
                        site=site, meta=meta)
        fill_sae(sae, tensors["W_enc"], tensors["b_enc"], tensors["W_dec"], tensors["b_dec"],
                 tensors.get("threshold"))
        if json_bool(cfg, "rescale_acts_by_decoder_norm", False, cfg_path):
            # SAELens' TopK: encode scales pre-activations by the decoder row norms and
            # decode divides by them; folding the norms is the same function, exactly
            sae.normalize_decoder()
        return sae

    @classmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        cls.check_writes(dictionary, (cls.name,))
        if not isinstance(dictionary, SparseAutoencoder) or isinstance(dictionary, Transcoder):
            raise DictionaryError(f"format {cls.name!r} stores SparseAutoencoders, not "
                                  f"{type(dictionary).__name__}",
                                  hint="save it with save_dictionary")
        sae: SparseAutoencoder = dictionary  # type: ignore[assignment]
        tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
        if sae.threshold is not None:
            tensors["threshold"] = sae.threshold
        cfg = native_cfg(sae, cls.name, sae.pre_encoder_bias)
        if isinstance(sae, CenteredSparseAutoencoder):
            tensors.update(fold_centring(sae))
            cfg["featcircuits"]["config"]["tied"] = False  # the folded encoder is not W_dec.T
        cfg.update(cls.extra_cfg(sae))
        return DictionaryState(tensors, cfg)


class StandardSae(SaelensSae):
    """ReLU SAE (SAELens ``standard``)."""

    name = "standard"
    activation = "relu"


class TopKSae(SaelensSae):
    """TopK SAE: ``k`` in ``cfg["k"]`` or ``cfg["activation_fn_kwargs"]["k"]``."""

    name = "topk"
    activation = "topk"

    @classmethod
    def k_from(cls, cfg: dict[str, Any], where: Path | None = None) -> int | None:
        kwargs = cfg.get("activation_fn_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise DictionaryLoadError(f"{str(where)!r}: 'activation_fn_kwargs' must be an "
                                      f"object, got {kwargs!r}")
        values = [positive_int(source[key], f"'{key}'" if source is cfg else
                               f"'activation_fn_kwargs.{key}'", where)
                  for source, key in ((cfg, "k"), (kwargs, "k")) if key in source]
        if not values:
            raise DictionaryLoadError(f"{str(where)!r}: a topk SAE needs 'k'",
                                      hint="add \"k\": <active features> to the config")
        if len(set(values)) > 1:
            raise DictionaryLoadError(f"{str(where)!r}: 'k' is {values[0]} but "
                                      f"'activation_fn_kwargs.k' is {values[1]}",
                                      hint="the config was edited; make them agree")
        return values[0]

    @classmethod
    def extra_cfg(cls, sae: SparseAutoencoder) -> dict[str, Any]:
        return {"k": sae.k, "activation_fn_kwargs": {"k": sae.k},
                "rescale_acts_by_decoder_norm": False}


class JumpReluSae(SaelensSae):
    """JumpReLU SAE: ``threshold [d_sae]`` in the weights."""

    name = "jumprelu"
    activation = "jumprelu"

    @classmethod
    def tensor_shapes(cls, cfg: dict[str, Any], d_in: int, d_sae: int, where: Path
                      ) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
        required, optional = super().tensor_shapes(cfg, d_in, d_sae, where)
        return {**required, "threshold": (d_sae,)}, optional


__all__ = [
    "CFG_FILE",
    "FORMAT_VERSION",
    "IDENTITY_NORMALIZATIONS",
    "PER_INPUT_NORMALIZATIONS",
    "TRANSCODER_ARCHITECTURES",
    "WEIGHTS_FILE",
    "JumpReluSae",
    "SaelensFormat",
    "SaelensSae",
    "StandardSae",
    "TopKSae",
    "check_inference_config",
    "checksum",
    "checksum_file",
    "native_cfg",
    "native_fields",
    "read_saelens",
    "saelens_architecture",
    "saelens_field",
    "saelens_meta",
    "save_safetensors",
    "write_saelens",
]
