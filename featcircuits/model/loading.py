"""Loading language models as nnsight ``LanguageModel`` objects.

``load_model`` accepts a name from the bundled zoo (``"tiny"``), a local checkpoint folder in
the Hugging Face layout, or a hub id such as ``"EleutherAI/pythia-70m-deduped"``. Models come
back dispatched (real weights, not meta tensors) and in eval mode.
"""

from __future__ import annotations

import inspect
import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from featcircuits.errors import ModelLoadError, ParameterError
from featcircuits.files import package_path

ZOO_DIR = package_path("zoo")  # the bundled models, from the installed package

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
DTYPE_NAMES = tuple(sorted(_DTYPES))  # the names resolve_dtype accepts


def zoo_names() -> list[str]:
    """Names of the models bundled with featcircuits (folders under ``featcircuits/zoo``)."""
    if not ZOO_DIR.is_dir():
        return []
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def zoo_path(name: str) -> Path:
    """Folder of the bundled model ``name``; ``ModelLoadError`` if there is none."""
    path = ZOO_DIR / name
    if not (path / "config.json").is_file():
        raise ModelLoadError(
            f"no bundled model named {name!r}",
            hint=f"bundled models: {', '.join(zoo_names()) or '(none)'}",
        )
    return path


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Turn ``"bf16"``/``"float32"``/... or a ``torch.dtype`` into a ``torch.dtype``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype in _DTYPES:
        return _DTYPES[dtype]
    raise ParameterError(
        f"unknown dtype {dtype!r}", hint=f"use one of {', '.join(sorted(_DTYPES))}"
    )


def _looks_like_hub_id(name: str) -> bool:
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not os.path.exists(name)


def resolve_checkpoint(name_or_path: str | os.PathLike[str]) -> str:
    """Map a zoo name or local folder to a path; leave hub ids unchanged.

    Raises ``ModelLoadError`` for a local path that does not hold a checkpoint.
    """
    text = str(name_or_path)
    if text in zoo_names():
        return str(zoo_path(text))
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{text!r} is a folder but holds no config.json",
                hint="pass a folder saved with save_pretrained(), or a bundled name: "
                + ", ".join(zoo_names()),
            )
        return str(path)
    if _looks_like_hub_id(text):
        return text
    raise ModelLoadError(
        f"no model folder or bundled model named {text!r}",
        hint="pass a local checkpoint folder, a hub id like 'EleutherAI/pythia-70m-deduped', "
        f"or a bundled name: {', '.join(zoo_names()) or '(none)'}",
    )


def load_model(
    name_or_path: str | os.PathLike[str] = "tiny",
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    remote: bool | str = False,
    **from_pretrained_kwargs: Any,
):
    """Load a causal LM and wrap it in an nnsight ``LanguageModel``.

    Args:
        name_or_path: a bundled name (``"tiny"``), a local checkpoint folder, or a hub id.
        device: where the weights live (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"``, ``"bf16"``, ... or a ``torch.dtype``; default keeps the
            checkpoint's dtype.
        remote: ``True`` (or ``"ndif"``): build the model for nnsight remote execution
            on NDIF instead of loading weights locally (needs an NDIF API key; nothing is
            downloaded but the config and tokenizer). ``"local"``: load the weights here but
            run every trace through nnsight's in-process simulation of the remote round
            trip (each trace is serialized and deserialized), which checks that trace
            bodies are remote-compatible without a network. The choice is recorded on the
            returned model (``remote_mode(model)``) and every trace the toolkit opens goes
            through ``featcircuits.model.loading.trace``, which passes it on.

    Returns:
        ``nnsight.LanguageModel`` in eval mode with its tokenizer attached.

    Raises:
        ModelLoadError: unreadable checkpoint, hub id unreachable, or ``remote=True``
            without an NDIF API key.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    mode = _remote_mode_value(remote)
    if mode is not True:
        check_device(device)
    checkpoint = resolve_checkpoint(name_or_path)
    is_local = Path(checkpoint).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nnsight import LanguageModel

        if mode is True:
            model = _remote_language_model(checkpoint, is_local, torch_dtype,
                                           from_pretrained_kwargs)
            setattr(model, REMOTE_ATTRIBUTE, True)
            return model
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            kwargs = dict(from_pretrained_kwargs)
            if torch_dtype is not None:
                kwargs["dtype"] = torch_dtype
            hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
        except pickle.UnpicklingError as exc:  # torch.load(weights_only=True) refused it
            raise ModelLoadError(
                f"the weights of {checkpoint!r} are a pickle holding more than tensors "
                f"(refused, nothing in it was run): {_unpickler_reason(exc)}",
                hint="use a checkpoint with model.safetensors; convert an old "
                "pytorch_model.bin only if you trust its source (in a separate environment)",
            ) from exc
        except (OSError, ValueError) as exc:
            if is_local:
                raise ModelLoadError(
                    f"could not read the checkpoint in {checkpoint!r}: {exc}",
                    hint="the folder must hold config.json, weights and tokenizer files "
                    "as written by save_pretrained()",
                ) from exc
            raise ModelLoadError(
                f"could not load {checkpoint!r} from the model hub: {str(exc).splitlines()[0]}",
                hint="without network, download it elsewhere (`hf download "
                f"{checkpoint} --local-dir DIR`), copy DIR here and pass its path, or use "
                "the bundled model: load_model('tiny')",
            ) from exc
        hf_model.eval()
        hf_model.to(device)
        if str(name_or_path) in zoo_names():  # report "tiny", not this machine's path
            hf_model.config._name_or_path = str(name_or_path)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = LanguageModel(hf_model, tokenizer=tokenizer)
    if mode:
        setattr(model, REMOTE_ATTRIBUTE, mode)
    return model


def _unpickler_reason(exc: Exception) -> str:
    """The part of torch's weights-only refusal that says what the pickle asked for."""
    text = " ".join(str(exc).split())
    for marker in ("unsupported GLOBAL", "Unsupported global", "WeightsUnpickler error"):
        if marker in text:
            return text[text.index(marker):].split(". ")[0][:160]
    return text[:160] or type(exc).__name__


def check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)``; ``ParameterError`` if it is malformed or does not exist here.

    Refused: ``meta`` (tensors without data: a model there cannot run), ``cuda`` / ``mps`` /
    any other accelerator whose backend is not available in this torch build or machine,
    and a device index beyond the devices present (``cuda:3`` on a one-GPU machine)."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ParameterError(f"unknown device {device!r}",
                             hint="use cpu, cuda, cuda:1, mps, ...") from exc
    fix = "use --device cpu (or device='cpu')"
    if resolved.type == "cpu":
        return resolved
    if resolved.type == "meta":
        raise ParameterError(f"device {device!r} holds no data: a model there cannot run",
                             hint=fix)
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ParameterError(f"device {device!r} requested but CUDA is not available here",
                                 hint=fix)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ParameterError(f"device {device!r} does not exist: this machine has "
                                 f"{torch.cuda.device_count()} CUDA device(s)",
                                 hint="use cuda:0 .. cuda:N-1")
        return resolved
    if resolved.type == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise ParameterError(f"device {device!r} requested but MPS (Apple GPU) is not "
                                 "available here", hint=fix)
        return resolved
    module = getattr(torch, resolved.type, None)  # torch.xpu, torch.mtia, ...
    is_available = getattr(module, "is_available", None)
    if not callable(is_available) or not is_available():
        raise ParameterError(f"device {device!r} is not available here (no {resolved.type!r} "
                             "backend in this torch build or machine)", hint=fix)
    return resolved


# ------------------------------------------------------------------ remote execution
REMOTE_ATTRIBUTE = "featcircuits_remote"
REMOTE_MODES = ("ndif", "local")


def _remote_mode_value(remote: bool | str | None) -> bool | str:
    """``False``, ``True`` (NDIF) or ``"local"`` from the ``remote`` argument."""
    if remote is None or remote is False:
        return False
    if remote is True or remote == "ndif":
        return True
    if remote == "local":
        return "local"
    raise ParameterError(f"unknown remote mode {remote!r}",
                         hint="use remote=True (NDIF), remote='local' (in-process simulation) "
                         "or remote=False")


def _remote_language_model(checkpoint: str, is_local: bool, torch_dtype, kwargs: dict):
    """An nnsight ``LanguageModel`` with meta weights, to be run on NDIF."""
    from nnsight import CONFIG, LanguageModel

    if not CONFIG.API.APIKEY:
        raise ModelLoadError(
            f"remote execution of {checkpoint!r} needs an NDIF API key, and none is set",
            hint="get one at https://login.ndif.us and export NDIF_API_KEY=..., or call "
            "nnsight.CONFIG.set_default_api_key(KEY); use remote='local' to test offline")
    kwargs = dict(kwargs)
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model = LanguageModel(checkpoint, tokenizer=tokenizer, **kwargs)
    except Exception as exc:  # hub, config and pipeline failures vary
        where = "folder" if is_local else "model hub"
        raise ModelLoadError(
            f"could not read the config/tokenizer of {checkpoint!r} from the {where}: "
            f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            hint="remote models still need their config and tokenizer here: check the "
            "network, or pass a local folder holding config.json and tokenizer files") from exc
    return model


def remote_mode(model) -> bool | str:
    """How ``model``'s traces run: ``False`` (here), ``True`` (NDIF) or ``"local"``
    (in-process simulation of the remote round trip); set by ``load_model(remote=...)``."""
    return getattr(model, REMOTE_ATTRIBUTE, False)


def trace(model, *inputs: Any, **kwargs: Any):
    """Open ``model.trace(*inputs, **kwargs)``, adding ``remote=`` when the model was loaded
    for remote execution. Use it as ``with trace(model, ids):`` exactly like
    ``model.trace``; the trace body must be remote-compatible (values leaving it are
    ``.save()``d, no hidden local state)."""
    mode = remote_mode(model)
    if mode and "remote" not in kwargs:
        kwargs["remote"] = mode
    if "use_cache" not in kwargs and forward_accepts(model, "use_cache"):
        # a trace never generates: building the key/value cache only copies every layer's
        # keys and values (and their backward, in gradient passes)
        kwargs["use_cache"] = False
    return model.trace(*inputs, **kwargs)


def forward_accepts(model, name: str) -> bool:
    """Whether the forward of ``model``'s module takes the keyword ``name`` (e.g.
    ``use_cache``, ``logits_to_keep``)."""
    forward = getattr(underlying_module(model), "forward", None)
    try:
        return name in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return False


def underlying_module(model) -> torch.nn.Module:
    """The plain ``torch.nn.Module`` behind an nnsight wrapper (or the module itself)."""
    return getattr(model, "_module", model)


def model_config(model):
    """The Hugging Face config of ``model`` (wrapped or plain)."""
    module = underlying_module(model)
    config = getattr(module, "config", None)
    if config is None:
        raise ModelLoadError(
            f"model of type {type(module).__name__} has no Hugging Face config",
            hint="load it with featcircuits.load_model(...) or wrap a transformers model",
        )
    return config


POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len")


def max_positions(model) -> tuple[int, str] | None:
    """``(limit, config key)`` of the model's most token positions, or ``None`` if its
    config names none."""
    try:
        config = model_config(model)
    except ModelLoadError:
        return None
    for key in POSITION_LIMIT_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, key
    return None


def check_positions(model, lengths, *, what: str = "prompt", texts=None) -> None:
    """``PromptError`` when any sequence is longer than ``model``'s positions, before it runs.

    ``lengths`` are token counts (a sequence or a 1-D tensor), one per sequence; the message
    names the first too-long one (``what`` and its index, its length, the limit and its
    config key, and the start of ``texts[i]`` when given). Beyond the limit a model with
    learned positions indexes past its table (an IndexError deep in a forward pass) or runs
    far outside the lengths it was trained on, with only a transformers warning."""
    from featcircuits.errors import PromptError

    limit = max_positions(model)
    if limit is None:
        return
    counts = [int(n) for n in (lengths.tolist() if hasattr(lengths, "tolist") else lengths)]
    for index, count in enumerate(counts):
        if count > limit[0]:
            shown = ""
            if texts is not None:
                text = str(texts[index])
                shown = f" ({text[:60]!r}{'...' if len(text) > 60 else ''})"
            raise PromptError(
                f"{what} {index}{shown} is {count} tokens, longer than the model's {limit[0]} "
                f"positions (config.{limit[1]})",
                hint=f"shorten it to at most {limit[0]} tokens, or use a model with more "
                "positions")


def model_name(model) -> str:
    """A short name for ``model``: its checkpoint path/hub id, or its class name."""
    config = model_config(model)
    return str(getattr(config, "_name_or_path", "") or type(underlying_module(model)).__name__)


def model_device(model) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a parameterless or meta module)."""
    parameter = next(underlying_module(model).parameters(), None)
    return torch.device("cpu") if parameter is None or parameter.is_meta else parameter.device


def model_dtype(model) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 if it has none)."""
    for parameter in underlying_module(model).parameters():
        if parameter.dtype.is_floating_point:
            return parameter.dtype
    return torch.float32


def to_model(module: torch.nn.Module, model, device: str | torch.device | None = None
             ) -> torch.nn.Module:
    """Cast ``module`` (a dictionary) to ``model``'s dtype and device, in place.

    ``device`` overrides the device (needed for remote models, whose local weights are
    meta tensors: then it defaults to the CPU).
    """
    if device is None:
        parameter = next(underlying_module(model).parameters(), None)
        device = "cpu" if parameter is None or parameter.is_meta else parameter.device
    return module.to(device=device, dtype=model_dtype(model))
