"""Parsed records (one comparison, ranked list or rated response) and conversions between them.

Texts are final strings: for chat data they are already rendered with the tokenizer's chat template.
`row` is the 1-based row of the source the record came from (for messages and debugging).
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
from collections.abc import Iterable, Sequence

from jaxrlhf.data.errors import DataReport


@dataclasses.dataclass(frozen=True)
class Pair:
    """`chosen` is preferred over `rejected` as a response to `prompt`."""

    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0
    agreement: float | None = None
    row: int = 0


@dataclasses.dataclass(frozen=True)
class RankedList:
    """K responses to one prompt; `ranks[k]` is the dense 0-based rank of response k (0 = best)."""

    prompt: str
    responses: tuple[str, ...]
    ranks: tuple[int, ...]
    row: int = 0
    agreement: float | None = None


@dataclasses.dataclass(frozen=True)
class Rated:
    """One response with a scalar rating (higher is better)."""

    prompt: str
    response: str
    rating: float
    row: int = 0


def dense_ranks(values: Sequence[float], higher_is_better: bool) -> tuple[int, ...]:
    """Dense 0-based ranks, 0 = best; equal values share a rank."""
    order = sorted(set(values), reverse=higher_is_better)
    index = {v: i for i, v in enumerate(order)}
    return tuple(index[v] for v in values)


def ranked_to_pairs(lists: Iterable[RankedList], report: DataReport | None = None) -> list[Pair]:
    """Every (better, worse) pair of each list; equal ranks give no pair (counted as `tie`)."""
    pairs = []
    for lst in lists:
        for i, j in itertools.combinations(range(len(lst.responses)), 2):
            ri, rj = lst.ranks[i], lst.ranks[j]
            if ri == rj:
                if report is not None:
                    report.filtered["tie"] += 1
                continue
            win, lose = (i, j) if ri < rj else (j, i)
            pairs.append(Pair(lst.prompt, lst.responses[win], lst.responses[lose], agreement=lst.agreement,
                              row=lst.row))
    return pairs


def group_by_prompt(records: Iterable) -> dict[str, list]:
    """Records grouped by prompt text, groups and members in first-seen order."""
    groups: dict[str, list] = collections.defaultdict(list)
    for rec in records:
        groups[rec.prompt].append(rec)
    return dict(groups)


def ratings_to_pairs(
    rated: Iterable[Rated],
    report: DataReport | None = None,
    margin_scale: float = 0.0,
) -> list[Pair]:
    """Pairs every two responses to the same prompt; the higher rating is chosen, ties are dropped.

    margin = margin_scale * (rating difference); 0 (the default) trains plain Bradley-Terry.
    Identical response texts to one prompt are not paired with each other.
    """
    pairs = []
    for prompt, group in group_by_prompt(rated).items():
        for a, b in itertools.combinations(group, 2):
            if a.rating == b.rating:
                if report is not None:
                    report.filtered["tie"] += 1
                continue
            if a.response == b.response:
                if report is not None:
                    report.filtered["identical"] += 1
                continue
            win, lose = (a, b) if a.rating > b.rating else (b, a)
            margin = float(margin_scale * (win.rating - lose.rating))
            pairs.append(Pair(prompt, win.response, lose.response, margin=margin, row=win.row))
    return pairs


def filter_agreement(pairs: Iterable[Pair], min_agreement: float | None,
                     report: DataReport | None = None) -> list[Pair]:
    """Drops pairs whose annotator agreement is below `min_agreement` (counted `low_agreement`)."""
    if min_agreement is None:
        return list(pairs)
    kept = []
    for p in pairs:
        if p.agreement is not None and p.agreement < min_agreement:
            if report is not None:
                report.filtered["low_agreement"] += 1
            continue
        kept.append(p)
    return kept
