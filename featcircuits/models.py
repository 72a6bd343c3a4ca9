"""Loading language models as nnsight ``LanguageModel`` objects.

``load_model`` accepts a name from the bundled zoo (``"tiny"``), a local checkpoint folder in
the Hugging Face layout, or a hub id such as ``"EleutherAI/pythia-70m-deduped"``. Models come
back dispatched (real weights, not meta tensors) and in eval mode.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch

from featcircuits.errors import ModelLoadError, ParameterError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


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
    remote: bool = False,
    **from_pretrained_kwargs: Any,
):
    """Load a causal LM and wrap it in an nnsight ``LanguageModel``.

    Args:
        name_or_path: a bundled name (``"tiny"``), a local checkpoint folder, or a hub id.
        device: where the weights live (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        dtype: ``"float32"``, ``"bf16"``, ... or a ``torch.dtype``; default keeps the
            checkpoint's dtype.
        remote: build the model for nnsight remote execution (NDIF) instead of loading
            weights locally; traces then need ``remote=True``.

    Returns:
        ``nnsight.LanguageModel`` in eval mode with its tokenizer attached.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = resolve_dtype(dtype)
    checkpoint = resolve_checkpoint(name_or_path)
    is_local = Path(checkpoint).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nnsight import LanguageModel

        if remote:
            return LanguageModel(checkpoint, **from_pretrained_kwargs)
        try:
            tokenizer = AutoTokenizer.from_pretrained(checkpoint)
            kwargs = dict(from_pretrained_kwargs)
            if torch_dtype is not None:
                kwargs["dtype"] = torch_dtype
            hf_model = AutoModelForCausalLM.from_pretrained(checkpoint, **kwargs)
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
    return model


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


def model_name(model) -> str:
    """A short name for ``model``: its checkpoint path/hub id, or its class name."""
    config = model_config(model)
    return str(getattr(config, "_name_or_path", "") or type(underlying_module(model)).__name__)
