"""Rank comparisons that hold under ties and float rounding.

A library ranking and a reference computed separately (another batch shape, another
summation order) agree on every value to within rounding, but may order near-equal values
differently. ``assert_top_k`` accepts exactly the rankings that are correct up to ``tol``:
where the reference values are further apart than ``tol`` it is as strict as comparing the
indices; only among values within ``tol`` of each other is any order (and, at the cut,
any choice) accepted.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence


def assert_top_k(got: Sequence[Hashable], scores: Mapping[Hashable, float], k: int, *,
                 tol: float, largest: bool = True) -> None:
    """``got`` is a valid top-``k`` of ``scores`` (descending; ascending if not ``largest``),
    to within ``tol``: ``min(k, len(scores))`` distinct keys of ``scores``, in order up to
    ``tol``, and no key left out beats the last one kept by more than ``tol``."""
    sign = 1.0 if largest else -1.0
    value = {key: sign * float(score) for key, score in scores.items()}
    got = list(got)
    assert len(got) == min(k, len(value)), (got, k)
    assert len(set(got)) == len(got), f"repeated keys in {got}"
    assert set(got) <= set(value), f"unknown keys {set(got) - set(value)}"
    for before, after in itertools.pairwise(got):
        assert value[before] >= value[after] - tol, (
            f"{before!r} ({value[before]}) ranked before {after!r} ({value[after]})")
    last = min(value[key] for key in got)
    left_out = {key: v for key, v in value.items() if key not in set(got) and v > last + tol}
    assert not left_out, f"left out of the top {k}: {left_out} (last kept: {last})"
