"""Flags shared by the command-line subcommands, and their conversion to library keywords.

One helper per group of flags, so every subcommand spells them the same way:
``add_model_flags`` (``--model --device --dtype --remote``), ``add_run_flags``
(``--seed --batch-size``) and ``add_memory_flag`` (``--max-memory``). The conversions:
``model_keywords`` (the model flags as the experiments' ``model``, ``device``, ``dtype``,
``remote`` keywords), ``settings_from_args`` (one ``RunSettings`` from ``--max-memory
--batch-size --seed --quiet``), ``model_from_args`` (``load_model`` with the model flags)
and ``dictionary_for_model`` (a loaded dictionary cast to the model's dtype and device).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from featcircuits.engine.settings import MAX_SEED, RunSettings
from featcircuits.errors import FeatCircuitsError
from featcircuits.model.loading import DTYPE_NAMES, REMOTE_MODES, check_device

__all__ = [
    "add_memory_flag",
    "add_model_flags",
    "add_run_flags",
    "device_name",
    "dictionary_for_model",
    "finite_float",
    "model_from_args",
    "model_keywords",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "seed_int",
    "settings_from_args",
    "usage_problem",
]


def add_model_flags(parser: argparse.ArgumentParser, *, default_model: str = "tiny") -> None:
    """Add ``--model``, ``--device``, ``--dtype`` and ``--remote`` to ``parser``."""
    parser.add_argument("--model", default=default_model,
                        help=f"bundled name, local checkpoint folder or hub id "
                        f"(default: {default_model})")
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="where the model and dictionaries run: cpu, cuda, cuda:1 "
                        "(default: cpu)")
    parser.add_argument("--dtype", default=None, choices=DTYPE_NAMES, metavar="DTYPE",
                        help="model dtype: float32, bfloat16 (bf16), float16 (fp16) "
                        "(default: the checkpoint's); dictionaries are cast to it")
    parser.add_argument("--remote", nargs="?", const="ndif", default=None,
                        choices=REMOTE_MODES, metavar="local",
                        help="run every trace remotely on NDIF (needs NDIF_API_KEY); "
                        "'--remote local' simulates the remote round trip in-process")


def add_run_flags(parser: argparse.ArgumentParser, *, batch_size: int | None = None,
                  batch_help: str = "most sequences per forward pass") -> None:
    """Add ``--seed`` and (if ``batch_size`` is given) ``--batch-size`` to ``parser``."""
    parser.add_argument("--seed", type=seed_int, default=0,
                        help=f"random seed, 0 to {MAX_SEED} (default: 0)")
    if batch_size is not None:
        parser.add_argument("--batch-size", type=positive_int, default=batch_size,
                            help=f"{batch_help} (default: {batch_size})")


def add_memory_flag(parser: argparse.ArgumentParser) -> None:
    """Add ``--max-memory`` (``RunSettings.max_memory``) to ``parser``."""
    parser.add_argument("--max-memory", default=None,
                        help="memory budget for working tensors, e.g. 2GB or 512MB (default 4GB, "
                        "or 25%% of RAM if less); sets chunk sizes, see docs/memory.md")


def model_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of ``add_model_flags`` as ``model``, ``device``, ``dtype``, ``remote``
    keywords (those of ``load_model`` and of the ready-made experiments)."""
    return {"model": args.model, "device": getattr(args, "device", "cpu"),
            "dtype": getattr(args, "dtype", None), "remote": getattr(args, "remote", None) or False}


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    """One ``RunSettings`` from ``--max-memory``, ``--batch-size`` (sequences per forward
    pass), ``--seed`` and ``--quiet``; ``ParameterError`` for a bad budget or batch size."""
    return RunSettings(max_memory=getattr(args, "max_memory", None),
                       max_rows=getattr(args, "batch_size", None),
                       seed=getattr(args, "seed", 0),
                       progress=not getattr(args, "quiet", False))


def model_from_args(args: argparse.Namespace):
    """``load_model`` with the flags of ``add_model_flags``."""
    from featcircuits.model.loading import load_model

    keywords = model_keywords(args)
    return load_model(keywords.pop("model"), **keywords)


def dictionary_for_model(dictionary, model, args: argparse.Namespace | None = None):
    """Cast ``dictionary`` to ``model``'s dtype and device (``--device`` for remote models,
    whose local weights are meta tensors)."""
    from featcircuits.model.loading import remote_mode, to_model

    device = getattr(args, "device", None) if remote_mode(model) is True else None
    return to_model(dictionary, model, device=device)


# ------------------------------------------------------------------- argparse types
# Each raises argparse.ArgumentTypeError, which argparse turns into a usage error (exit 2)
# whose message starts "argument --FLAG:", so every bad value names its flag.
def _integer(text: str, low: int, high: int | None = None) -> int:
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(
            f"must be >= {low}, got {value}" if high is None else f"must be {wanted}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a usage error, exit 2, otherwise)."""
    return _integer(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (ids, layers, counts that may be zero)."""
    return _integer(text, 0)


def seed_int(text: str) -> int:
    """argparse type: a seed, an integer from 0 to ``MAX_SEED`` (2**32 - 1, numpy's range)."""
    return _integer(text, 0, MAX_SEED)


def device_name(text: str) -> str:
    """argparse type: a well-formed device name (``cpu``, ``cuda:1``, ...). Whether it exists
    here is checked after parsing (``usage_problem``): a remote model's ``--device`` names a
    device on the remote side."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, TypeError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (use cpu, cuda, cuda:1, "
                                         "...)") from None
    return text


def usage_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with flags that argparse types cannot judge alone, as an argparse error
    message (``"argument --device: ..."``), or ``None``. The CLI turns it into a usage error
    (exit 2): a local ``--device`` that does not exist here (``check_device``)."""
    device = getattr(args, "device", None)
    if device is not None and not getattr(args, "remote", None):
        try:
            check_device(device)
        except FeatCircuitsError as exc:
            return f"argument --device: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")
    return None


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (``nan``, ``inf``, 0 and negatives: exit 2)."""
    value = _number(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (thresholds; ``nan``, ``inf``, negatives: exit 2)."""
    value = _number(text)
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def finite_float(text: str) -> float:
    """argparse type: a finite number (``nan``/``inf``: exit 2)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
