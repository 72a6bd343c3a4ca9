"""The one seed range every seeded function of the toolkit accepts: integers 0..2**32-1.

It is numpy's ``default_rng`` / ``RandomState`` range (and fits ``torch.Generator``
with room for the ``seed + k`` offsets some functions derive), so a seed valid here is
valid for every generator the toolkit or a user's numpy code seeds from it. Out-of-range,
non-integer and boolean seeds are refused with ``ParameterError`` naming the argument.
"""

from __future__ import annotations

import operator

from featcircuits.errors import ParameterError

__all__ = ["MAX_SEED", "check_seed"]

#: largest seed accepted anywhere (numpy's ``default_rng``/``RandomState`` range is 0..2**32-1)
MAX_SEED = 2**32 - 1


def check_seed(seed, name: str = "seed") -> int:
    """``seed`` if it is an integer from 0 to ``MAX_SEED``, else ``ParameterError``."""
    try:  # Python and numpy integers; not floats, strings or booleans
        if isinstance(seed, bool) or type(seed).__name__ == "bool_":
            raise TypeError
        seed = operator.index(seed)
    except TypeError:
        raise ParameterError(f"{name} must be an integer, got {seed!r}",
                             hint=f"pass an integer from 0 to {MAX_SEED}") from None
    if not 0 <= seed <= MAX_SEED:
        raise ParameterError(f"{name} must be from 0 to {MAX_SEED} (2**32 - 1), got {seed}",
                             hint=f"pass an integer from 0 to {MAX_SEED}, e.g. {name}=0")
    return seed
