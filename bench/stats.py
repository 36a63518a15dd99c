"""Statistics for the benchmarks: percentiles, a bootstrap confidence interval of a ratio, and the
Mann-Whitney U test, in plain Python (no SciPy in the project's dependencies)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (fraction in [0, 1])."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def spread(values: Sequence[float]) -> str:
    """min / median / max, for a table cell."""
    return f"{min(values):.3g} / {statistics.median(values):.3g} / {max(values):.3g}"


def bootstrap_ci(
    values: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.median,
    confidence: float = 0.95,
    resamples: int = 5000,
    seed: int = 1,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of statistic(values)."""
    rng = random.Random(seed)
    estimates = sorted(statistic(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return estimates[int(tail * resamples)], estimates[int((1 - tail) * resamples) - 1]


def bootstrap_ratio_ci(
    first: Sequence[float],
    second: Sequence[float],
    statistic: Callable[[Sequence[float]], float] = statistics.median,
    confidence: float = 0.95,
    resamples: int = 5000,
    seed: int = 1,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of statistic(first) / statistic(second), each sample
    resampled independently with replacement."""
    rng = random.Random(seed)
    ratios = sorted(
        statistic(rng.choices(first, k=len(first))) / statistic(rng.choices(second, k=len(second)))
        for _ in range(resamples)
    )
    tail = (1 - confidence) / 2
    return ratios[int(tail * resamples)], ratios[int((1 - tail) * resamples) - 1]


@dataclass(frozen=True)
class MannWhitney:
    u: float  # U of the first sample: how many (first, second) pairs have first > second (ties count 1/2)
    p_value: float  # two-sided, normal approximation with tie and continuity corrections
    effect: float  # U / (n1 n2): the probability that a value of the first sample exceeds one of the second


def mann_whitney(first: Sequence[float], second: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test: could first and second come from the same distribution?"""
    n1, n2 = len(first), len(second)
    pooled = sorted([(value, 0) for value in first] + [(value, 1) for value in second])
    ranks = [0.0] * len(pooled)
    tie_term = 0.0
    start = 0
    while start < len(pooled):  # average ranks over runs of equal values
        end = start
        while end + 1 < len(pooled) and pooled[end + 1][0] == pooled[start][0]:
            end += 1
        for index in range(start, end + 1):
            ranks[index] = (start + end) / 2 + 1
        run = end - start + 1
        tie_term += run**3 - run
        start = end + 1
    rank_sum = sum(rank for rank, (_, side) in zip(ranks, pooled, strict=True) if side == 0)
    u = rank_sum - n1 * (n1 + 1) / 2
    n = n1 + n2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance == 0:
        return MannWhitney(u, 1.0, u / (n1 * n2))
    z = (abs(u - n1 * n2 / 2) - 0.5) / math.sqrt(variance)
    p_value = min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))
    return MannWhitney(u, p_value, u / (n1 * n2))
