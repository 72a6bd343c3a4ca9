"""Plain torch forward hooks on a module's hidden state, whatever the module returns: decoder
layers return a tensor on transformers 5 and a tuple ``(hidden, ...)`` on 4.x. The reference
computations in the tests hook blocks through ``on_hidden`` so they run on both."""

from __future__ import annotations


def on_hidden(fn):
    """A forward hook calling ``fn(module, args, hidden)``; a returned tensor replaces the
    hidden state (the rest of a tuple output is kept), ``None`` leaves the output alone."""

    def hook(module, args, output):
        is_tuple = isinstance(output, tuple)
        new = fn(module, args, output[0] if is_tuple else output)
        if new is None:
            return None
        return (new, *output[1:]) if is_tuple else new

    return hook
