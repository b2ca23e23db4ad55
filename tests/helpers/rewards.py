"""Reward functions for the train_grpo tests, importable as `tests.helpers.rewards:NAME`."""

from __future__ import annotations


def yes_fraction(prompt: str, response: str, row: dict) -> float:
    """The share of the response's words that are "yes": a reward the tiny model can learn in a few steps."""
    words = response.split()
    return sum(w == "yes" for w in words) / max(len(words), 1)


def fails_on_hello(prompt: str, response: str, row: dict) -> float:
    if "hello" in prompt:
        raise RuntimeError("no greeting allowed")
    return 0.0


NOT_A_FUNCTION = 3
