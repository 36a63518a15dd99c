"""Statistical bounds for traffic splits: how far an observed count may stray from its expectation before a
test calls the split wrong. Bounds at 4 sigma: a correct split fails about once in 30,000 runs."""

from __future__ import annotations

import math
from collections.abc import Sequence

SIGMAS = 4.0


def binomial_within(successes: int, trials: int, p: float, sigmas: float = SIGMAS) -> bool:
    """Is successes out of trials consistent with probability p (normal approximation)?"""
    sd = math.sqrt(trials * p * (1 - p))
    return abs(successes - trials * p) <= sigmas * sd


def chi_square(counts: Sequence[int]) -> float:
    """Pearson's statistic of counts against a uniform split of their total."""
    expected = sum(counts) / len(counts)
    return sum((count - expected) ** 2 / expected for count in counts)


def chi_square_bound(degrees_of_freedom: int, sigmas: float = SIGMAS) -> float:
    """The chi-square quantile sigmas standard deviations up (Wilson-Hilferty: the cube root of a chi-square
    variable is nearly normal)."""
    k = degrees_of_freedom
    return k * (1 - 2 / (9 * k) + sigmas * math.sqrt(2 / (9 * k))) ** 3
