"""The format contract: one class per dictionary architecture, turning files into dictionaries.

Reading and writing happen in two steps. A *layout* reads a folder's or file's bytes into a
``DictionaryState`` (tensors + config, validated against each other) and names the
architecture; the architecture's ``DictionaryFormat`` builds the dictionary from that state.
Writing runs backwards: ``to_state`` then the layout's ``write``. Layouts are SAELens'
(``cfg.json`` + ``sae_weights.safetensors``, ``featcircuits.dictionaries.saelens``),
dictionary_learning's (``ae.pt`` + ``config.json``) and circuit-tracer's (one
``.safetensors`` file per transcoder).

Which class serves which architecture is the constant table
``featcircuits.dictionaries.registry.FORMATS``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from featcircuits.dictionaries.base import Dictionary
from featcircuits.dictionaries.filechecks import read_config_text
from featcircuits.dictionaries.sae import SparseAutoencoder
from featcircuits.errors import DictionaryError, DictionaryLoadError


@dataclass
class DictionaryState:
    """A dictionary as its files hold it, between a layout and a format.

    Attributes:
        tensors: the stored tensors by name (float32 on the CPU after reading).
        config: the layout's configuration: ``cfg.json`` (SAELens), ``config.json``
            (dictionary_learning) or the safetensors header metadata (circuit-tracer).
        where: the folder or file read, for error messages (``None`` when writing).
    """

    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    where: Path | None = None


class DictionaryFormat(ABC):
    """One architecture's reader and writer.

    Subclasses set ``name`` (the registry key: the architecture as the files name it) and
    ``layout`` (``"saelens"``, ``"dictionary_learning"`` or ``"circuit_tracer"``), and
    implement ``from_state``, ``to_state`` and ``write``; the layout base classes implement
    ``write`` once for all their architectures.
    """

    name: ClassVar[str]
    layout: ClassVar[str]

    @classmethod
    @abstractmethod
    def from_state(cls, state: DictionaryState) -> Dictionary:
        """Build the dictionary from a validated ``state`` (raises ``DictionaryLoadError``)."""

    @classmethod
    @abstractmethod
    def to_state(cls, dictionary: Dictionary) -> DictionaryState:
        """The tensors and config that ``write`` stores for ``dictionary``."""

    @classmethod
    @abstractmethod
    def write(cls, state: DictionaryState, folder: Path) -> Path:
        """Write ``state`` into ``folder`` (atomically); return what ``load_dictionary`` reads."""

    @classmethod
    def save(cls, dictionary: Dictionary, folder: Path) -> Path:
        """``write(to_state(dictionary), folder)``."""
        return cls.write(cls.to_state(dictionary), Path(folder))

    @classmethod
    def check_writes(cls, dictionary: Dictionary, architectures: tuple[str, ...]) -> None:
        """Raise ``DictionaryError`` unless ``dictionary.architecture`` is one of
        ``architectures`` (the ones this format can store without loss)."""
        if dictionary.architecture not in architectures:
            raise DictionaryError(
                f"format {cls.name!r} cannot store {dictionary!r} (architecture "
                f"{dictionary.architecture!r})",
                hint=f"it stores architectures {', '.join(architectures)}; save the dictionary "
                "with save_dictionary, which picks its own format")


# ------------------------------------------------------------------- shared checks
def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``DictionaryLoadError`` when missing, not a bounded
    regular file, invalid or not an object."""
    try:
        cfg = json.loads(read_config_text(path))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise DictionaryLoadError(f"{str(path)!r} is not valid JSON: {exc}",
                                  hint="the file is corrupt; re-download or re-save it") from exc
    if not isinstance(cfg, dict):
        raise DictionaryLoadError(f"{str(path)!r} holds a {type(cfg).__name__}, not an object")
    return cfg


def json_bool(config: dict[str, Any], key: str, default: bool, where: Path | None) -> bool:
    """``config[key]`` as a real JSON boolean (``default`` when absent); a string such as
    ``"false"``, a number or ``null`` is a ``DictionaryLoadError``, never read as true."""
    if key not in config:
        return default
    value = config[key]
    if not isinstance(value, bool):
        raise DictionaryLoadError(
            f"{str(where)!r}: {key!r} must be true or false (a JSON boolean), got {value!r}",
            hint=f"write {key}: true or {key}: false without quotes")
    return value


def positive_int(value: Any, name: str, where: Path | None) -> int:
    """``value`` if it is a positive whole number (not a bool, a string or a float), else a
    ``DictionaryLoadError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise DictionaryLoadError(
            f"{str(where)!r}: {name} must be a positive integer, got {value!r}",
            hint="the config is corrupt or was edited; write it as a plain number such as 8")
    return value


def require_tensors(tensors: dict[str, torch.Tensor], names: list[str], where: Path) -> None:
    """``DictionaryLoadError`` naming the tensors of ``names`` missing from ``tensors``."""
    missing = [name for name in names if name not in tensors]
    if missing:
        raise DictionaryLoadError(
            f"{str(where)!r} lacks tensors {missing} (has {sorted(tensors)})",
            hint="the file is incomplete or from another library",
        )


def expect_shape(name: str, tensor: torch.Tensor, shape: tuple[int, ...], where: Path) -> None:
    """``DictionaryLoadError`` unless ``tensor`` has ``shape``."""
    if tuple(tensor.shape) != shape:
        raise DictionaryLoadError(
            f"tensor {name!r} in {str(where)!r} has shape {tuple(tensor.shape)}, expected {shape}",
            hint="the config and the weights disagree; the files may come from different "
            "dictionaries",
        )


@torch.no_grad()
def fill_sae(sae: SparseAutoencoder, W_enc: torch.Tensor, b_enc: torch.Tensor,
             W_dec: torch.Tensor, b_dec: torch.Tensor,
             threshold: torch.Tensor | None = None) -> None:
    """Copy SAELens-oriented weights into ``sae``: ``W_enc [d_in, d_sae]``, ``b_enc
    [d_sae]``, ``W_dec [d_sae, d_in]``, ``b_dec [d_in]``, ``threshold [d_sae]``."""
    sae.W_enc.copy_(W_enc)
    sae.b_enc.copy_(b_enc)
    sae.b_dec.copy_(b_dec)
    if sae.tied:
        if not torch.equal(W_dec, W_enc.T):
            raise DictionaryLoadError("config says the SAE is tied but W_dec != W_enc.T",
                                      hint="the file is corrupt or was edited")
    else:
        sae.W_dec_untied.copy_(W_dec)
    if threshold is not None:
        if sae.threshold is None:
            raise DictionaryLoadError("a threshold tensor was stored for a non-JumpReLU SAE")
        sae.threshold.copy_(threshold)


@torch.no_grad()
def fill_parameters(module: torch.nn.Module, tensors: dict[str, torch.Tensor],
                    names: tuple[str, ...]) -> None:
    """Copy ``tensors[name]`` into ``module.<name>`` for each of ``names`` (shapes checked by
    the layout reader)."""
    for name in names:
        getattr(module, name).copy_(tensors[name])


__all__ = [
    "DictionaryFormat",
    "DictionaryState",
    "expect_shape",
    "fill_parameters",
    "fill_sae",
    "json_bool",
    "positive_int",
    "read_json",
    "require_tensors",
]
