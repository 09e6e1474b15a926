"""Seed noise: the mean of a metric over seeds with its Student t confidence interval, and the
difference between two methods paired by seed with its interval.

With n values x_i: mean m, sample standard deviation s (n - 1 in the denominator), and the interval
m +- t_{(1 + c) / 2, n - 1} s / sqrt(n). The paired difference is the same on d_s = a_s - b_s over
the seeds both have: pairing removes what a seed does to both methods alike (its initialisation and
data order), so it is narrower than comparing the two intervals. One value has no interval.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

from scipy import stats as scipy_stats

CONFIDENCE = 0.95


@dataclasses.dataclass
class Summary:
  n: int
  mean: Optional[float]
  std: Optional[float]  # sample standard deviation (ddof 1); None below 2 values
  low: Optional[float]  # the confidence interval; None below 2 values
  high: Optional[float]
  confidence: float = CONFIDENCE

  def excludes_zero(self) -> bool:
    return self.low is not None and (self.low > 0 or self.high < 0)

  def as_dict(self) -> dict:
    return {"n": self.n, "mean": self.mean, "std": self.std,
            "ci": None if self.low is None else [self.low, self.high],
            "confidence": self.confidence}


def t_interval(xs: Sequence[float], confidence: float = CONFIDENCE) -> Summary:
  """Mean, standard deviation and the Student t interval of the mean."""
  xs = [float(x) for x in xs]
  n = len(xs)
  if n == 0:
    return Summary(0, None, None, None, None, confidence)
  mean = math.fsum(xs) / n
  if n == 1:
    return Summary(1, mean, None, None, None, confidence)
  std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
  half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
  return Summary(n, mean, std, mean - half, mean + half, confidence)


def paired_difference(a: Mapping[int, float], b: Mapping[int, float],
                      confidence: float = CONFIDENCE) -> tuple[Summary, list[int]]:
  """a - b over the seeds (keys) both have: (its t_interval, those seeds)."""
  seeds = sorted(set(a) & set(b))
  return t_interval([a[s] - b[s] for s in seeds], confidence), seeds
