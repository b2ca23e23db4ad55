"""Deterministic train / held-out split that keeps every prompt on one side."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.records import group_by_prompt


def held_out_count(n: int, held_out: int | float) -> int:
    """`held_out` as a number of records: an int is a count, a float in [0, 1) a fraction."""
    if isinstance(held_out, bool):
        raise TypeError("held_out must be an int count or a float fraction")
    if isinstance(held_out, float):
        if not 0.0 <= held_out < 1.0:
            raise ValueError(f"held_out fraction {held_out} not in [0, 1)")
        return int(round(held_out * n))
    if held_out < 0:
        raise ValueError(f"held_out={held_out} must be >= 0")
    if held_out and held_out >= n:
        raise ValueError(f"held_out={held_out} would hold out all {n} records, leaving none to train on: "
                         f"pass a count below {n} or a fraction")
    return int(held_out)


def split_by_prompt(records: Sequence, held_out: int | float, seed: int = 0) -> tuple[list, list]:
    """Returns (train, held_out) lists of records; records sharing a prompt stay together.

    Prompt groups are visited in an order drawn from `seed` and moved to the held-out side while they
    fit, so the held-out side has at most (and, with many small groups, exactly) the requested number
    of records. Both sides keep the input order. Works for any record with a `.prompt`.
    """
    target = held_out_count(len(records), held_out)
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
