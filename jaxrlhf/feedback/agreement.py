"""Agreement between annotators and the win rate of an A/B test, with the definitions written out.

- Kendall's tau of two rankings of the same K responses: (concordant - discordant) / (K choose 2) over the
  response pairs. The annotation page only takes strict orders, so tau-a and tau-b coincide.
- Item agreement: the mean tau over every two annotators of an item, reported as (1 + tau) / 2, the share
  of (annotator pair, response pair) cases ordered alike: in [0, 1], as `train_rm`'s `data.min_agreement`
  reads it. One annotator gives no agreement (None).
- A/B verdicts score B's side: 1 (B better), 0.5 (tie), 0 (A better). The win rate of B is the mean over
  items of each item's mean verdict, so an item judged by several people counts once; its 95% interval is
  the normal one over items (mean +- 1.96 s / sqrt(n), s the sample std), clipped to [0, 1].
- Agreement on A/B verdicts: Krippendorff's alpha with the interval metric on those scores, over the items
  with at least two verdicts: 1 - D_o / D_e, observed disagreement within items over the disagreement
  expected from all pairable values (Krippendorff 2011, "Computing Krippendorff's Alpha-Reliability").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

VERDICT_SCORE = {"b": 1.0, "tie": 0.5, "a": 0.0}


def kendall_tau(ranks_a: Sequence[int], ranks_b: Sequence[int]) -> float:
    """tau-a of two rank vectors over the same responses (lower rank = better)."""
    if len(ranks_a) != len(ranks_b) or len(ranks_a) < 2:
        raise ValueError(f"need two rank vectors of one length >= 2, got {len(ranks_a)} and {len(ranks_b)}")
    total = 0
    for i, j in itertools.combinations(range(len(ranks_a)), 2):
        total += _sign(ranks_a[i] - ranks_a[j]) * _sign(ranks_b[i] - ranks_b[j])
    return total / math.comb(len(ranks_a), 2)


def _sign(x: float) -> int:
    return (x > 0) - (x < 0)


def item_agreement(rankings: Sequence[Sequence[int]]) -> tuple[float | None, float | None]:
    """(mean pairwise Kendall's tau, (1 + tau) / 2) of one item's rankings; (None, None) below two."""
    if len(rankings) < 2:
        return None, None
    taus = [kendall_tau(a, b) for a, b in itertools.combinations(rankings, 2)]
    tau = sum(taus) / len(taus)
    return tau, (1.0 + tau) / 2.0


def consensus_ranks(rankings: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Dense 0-based ranks of the responses by their mean rank over annotators (Borda); equal means tie."""
    k = len(rankings[0])
    means = [sum(r[i] for r in rankings) / len(rankings) for i in range(k)]
    order = sorted(set(means))
    return tuple(order.index(m) for m in means)


def win_rate(item_scores: Sequence[float]) -> dict:
    """B's win rate over items (each item's mean verdict score) with its 95% normal interval."""
    n = len(item_scores)
    if n == 0:
        return {"items": 0, "win_rate_b": None, "ci95": None}
    mean = sum(item_scores) / n
    if n == 1:
        return {"items": 1, "win_rate_b": mean, "ci95": None}
    std = math.sqrt(sum((s - mean) ** 2 for s in item_scores) / (n - 1))
    half = 1.96 * std / math.sqrt(n)
    return {"items": n, "win_rate_b": mean, "ci95": [max(0.0, mean - half), min(1.0, mean + half)]}


def krippendorff_alpha_interval(units: Sequence[Sequence[float]]) -> float | None:
    """Krippendorff's alpha (interval metric) of the values each unit (item) got; units with fewer than two
    values are not pairable and drop out. None when nothing is pairable or every value is the same."""
    units = [list(u) for u in units if len(u) >= 2]
    values = [v for u in units for v in u]
    n = len(values)
    if n < 2:
        return None
    observed = sum(_ordered_pair_sq_diffs(u) / (len(u) - 1) for u in units) / n
    expected = _ordered_pair_sq_diffs(values) / (n * (n - 1))
    if expected == 0:
        return None
    return 1.0 - observed / expected


def _ordered_pair_sq_diffs(values: Sequence[float]) -> float:
    """sum over ordered pairs i != j of (v_i - v_j)^2, as 2 n sum(v^2) - 2 (sum v)^2."""
    return 2.0 * len(values) * sum(v * v for v in values) - 2.0 * sum(values) ** 2
