"""Flags shared by the command-line subcommands and the example scripts.

One helper per group of flags, so every subcommand spells them the same way:
``add_model_flags`` (``--model --device --dtype --remote``) and ``add_run_flags``
(``--seed --batch-size``). ``model_from_args`` loads the model those flags name and
``dictionary_for_model`` casts a loaded dictionary to the model's dtype and device.
"""

from __future__ import annotations

import argparse

from featcircuits.model.loading import _DTYPES, REMOTE_MODES


def add_model_flags(parser: argparse.ArgumentParser, *, default_model: str = "tiny") -> None:
    """Add ``--model``, ``--device``, ``--dtype`` and ``--remote`` to ``parser``."""
    parser.add_argument("--model", default=default_model,
                        help=f"bundled name, local checkpoint folder or hub id "
                        f"(default: {default_model})")
    parser.add_argument("--device", default="cpu",
                        help="where the model and dictionaries run: cpu, cuda, cuda:1 "
                        "(default: cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(_DTYPES), metavar="DTYPE",
                        help="model dtype: float32, bfloat16 (bf16), float16 (fp16) "
                        "(default: the checkpoint's); dictionaries are cast to it")
    parser.add_argument("--remote", nargs="?", const="ndif", default=None,
                        choices=REMOTE_MODES, metavar="local",
                        help="run every trace remotely on NDIF (needs NDIF_API_KEY); "
                        "'--remote local' simulates the remote round trip in-process")


def add_run_flags(parser: argparse.ArgumentParser, *, batch_size: int | None = None,
                  batch_help: str = "most sequences per forward pass") -> None:
    """Add ``--seed`` and (if ``batch_size`` is given) ``--batch-size`` to ``parser``."""
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    if batch_size is not None:
        parser.add_argument("--batch-size", type=int, default=batch_size,
                            help=f"{batch_help} (default: {batch_size})")


def model_from_args(args: argparse.Namespace):
    """``load_model`` with the flags of ``add_model_flags``."""
    from featcircuits.model.loading import load_model

    return load_model(args.model, device=getattr(args, "device", "cpu"),
                      dtype=getattr(args, "dtype", None),
                      remote=getattr(args, "remote", None) or False)


def dictionary_for_model(dictionary, model, args: argparse.Namespace | None = None):
    """Cast ``dictionary`` to ``model``'s dtype and device (``--device`` for remote models,
    whose local weights are meta tensors)."""
    from featcircuits.model.loading import remote_mode, to_model

    device = getattr(args, "device", None) if remote_mode(model) is True else None
    return to_model(dictionary, model, device=device)
