"""A prompt for a policy to answer: one type for PPO's rollouts, `compare` and the reward-model scorer.

Each prompt keeps two forms: `text`, the prompt as the data gives it (what a reward model trained on
that data expects to see before the response; ends with "\\n\\nAssistant:" for HH dialogues), and
`messages`, the same conversation as chat messages, which a chat template renders. Rows:

- HH-RLHF dialogues (`chosen`, optionally `rejected`): the prompt is everything up to the last
  "\\n\\nAssistant:" (the shared prefix when both are given), its Human/Assistant turns the messages.
- a `prompt` column: a string (one user message; an HH-style string is split into turns) or a message list.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxrlhf.data.chat import as_messages
from jaxrlhf.data.errors import RowInvalid
from jaxrlhf.data.formats import HH_ASSISTANT, HH_TURN, hh_messages, split_hh


@dataclasses.dataclass(frozen=True)
class Prompt:
    text: str  # as in the data; ends with "\n\nAssistant:" for HH dialogues
    messages: tuple[tuple[str, str], ...]  # (role, content), ending with a user turn


def hh_prompt(chosen: str, rejected: str | None = None) -> str:
    """The HH transcript before the final assistant turn: the prefix both dialogues share when `rejected`
    is given (and differs), else `chosen` up to its last "\\n\\nAssistant:"."""
    if rejected is not None and rejected != chosen:
        return split_hh(chosen, rejected)[0]
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RowInvalid("chosen", "bad_structure", f"no {HH_ASSISTANT!r} turn")
    return chosen[:cut + len(HH_ASSISTANT)]


def prompt_of_text(value: str) -> Prompt:
    """A prompt string: HH turns when it has them, else one user message."""
    if not value.strip():
        raise RowInvalid("prompt", "empty")
    messages = hh_messages(value) if HH_TURN.search(value) else [("user", value.strip())]
    return Prompt(value, tuple(messages))


def prompt_of_row(row: dict[str, Any]) -> Prompt:
    """The prompt of a `prompt` row or of an HH `chosen` (/ `rejected`) row; raises `RowInvalid`."""
    if "prompt" in row:
        value = row["prompt"]
        if isinstance(value, str):
            return prompt_of_text(value)
        messages = as_messages(value, "prompt")
        return Prompt("\n\n".join(f"{r}: {c}" for r, c in messages), tuple(messages))
    chosen = row.get("chosen")
    if not isinstance(chosen, str):
        raise RowInvalid("chosen", "missing" if chosen is None else "not_string")
    rejected = row.get("rejected")
    text = hh_prompt(chosen, rejected if isinstance(rejected, str) else None)
    messages = hh_messages(text)
    if not messages or messages[-1][0] != "user":
        raise RowInvalid("chosen", "bad_structure", "the prompt does not end with a Human turn")
    return Prompt(text, tuple(messages))
