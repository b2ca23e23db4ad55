"""Deterministic train / held-out split that keeps every prompt on one side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.records import group_by_prompt


def held_out_count(n: int, held_out: int | float, name: str = "held_out") -> int:
    """`held_out` (an int count or a float fraction in [0, 1)) as a number of the `n` records; checks range.
    `name` is how the caller's config calls it, for the messages."""
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise TypeError(f"{name} must be an int count or a float fraction, got {held_out!r}")
    if isinstance(held_out, float):
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"{name}={held_out}: a held-out fraction must be in [0, 1)")
        return int(round(held_out * n))
    if held_out < 0:
        raise ValueError(f"{name}={held_out} must be >= 0")
    return int(held_out)


def split_by_prompt(records: Sequence, held_out: int | float, seed: int = 0) -> tuple[list, list]:
    """Returns (train, held_out) lists of records; records sharing a prompt stay together.

    Prompt groups are visited in an order drawn from `seed` and moved to the held-out side while they
    fit, so the held-out side has at most (and, with many small groups, exactly) the requested number
    of records. Both sides keep the input order. Works for any record with a `.prompt`.
    """
    n = len(records)
    target = held_out_count(n, held_out)
    if target and target >= n:
        raise ValueError(f"held_out={held_out} would hold out all {n} records, leaving none to train on: "
                         f"pass a count below {n} or a fraction")
    groups = list(group_by_prompt(_Indexed.wrap(records)).values())
    rng = np.random.default_rng(seed)
    taken: list[int] = []
    for g in rng.permutation(len(groups)):
        if len(taken) == target:
            break
        if len(taken) + len(groups[g]) <= target:
            taken.extend(item.index for item in groups[g])
    held = set(taken)
    train = [r for i, r in enumerate(records) if i not in held]
    return train, [records[i] for i in sorted(held)]


class _Indexed:
    __slots__ = ("prompt", "index")

    def __init__(self, prompt: str, index: int):
        self.prompt, self.index = prompt, index

    @staticmethod
    def wrap(records: Sequence) -> list[_Indexed]:
        return [_Indexed(r.prompt, i) for i, r in enumerate(records)]
