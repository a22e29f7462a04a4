"""The rank an amount keeps: ours, k = max(1, floor(rho * min(m, n))), computed exactly, and the authors' rule."""

from __future__ import annotations

import math
from fractions import Fraction

from ..errors import UserError


def rank_for(amount, shape) -> int:
    """k = max(1, floor(rho * min(m, n))), computed exactly (0.29 * 100 is 29, not 28); or k=K."""
    max_rank = min(shape)
    if isinstance(amount, str):  # "k=K"
        k = int(amount[2:])
        if k > max_rank:
            raise UserError(f"k={k} exceeds the maximum rank {max_rank} of a {shape[0]}x{shape[1]} matrix")
        return k
    return max(1, math.floor(Fraction(repr(float(amount))) * max_rank))


def authors_rank(amount, shape) -> int:
    """The authors' rank rule: `int(min(m, n) * (10 - rate) * 0.1)` in floating point with rate = 10 - 10 rho
    (src/laser/matrix_utils.py:43), no floor of 1: one less than ours whenever rho * min(m, n) is whole
    (rho = 0.01 of 1000 keeps 9, not 10). k=K is K."""
    if isinstance(amount, str):
        return rank_for(amount, shape)
    rate = float(f"{10 - 10 * float(amount):.10g}")  # the rate as their scripts write it: 9.9, 9.95, ...
    k = int(min(shape) * ((10 - rate) * 0.1))
    if k < 1:
        raise UserError(f"the authors' rank rule keeps 0 components of a {shape[0]}x{shape[1]} matrix at rho={amount:g} "
                        "(their code would fail there): use the exact SVD or a larger rho")
    return k
