"""Chat-message comparisons rendered with the tokenizer's chat template.

A row holds `chosen` and `rejected` as lists of `{"role", "content"}` messages and optionally a `prompt`
(a message list, or a string meaning one user message). The prompt is the messages both sides share
(after prepending `prompt` where a side does not already start with it); each side must then end in
exactly one assistant message, its response. The prompt renders with `add_generation_prompt=True`; the
response is the text the full conversation adds after it (content plus the template's end-of-turn
marker), with trailing whitespace removed.
"""

from __future__ import annotations

from typing import Any

from jaxrlhf.data.errors import RowInvalid

Message = tuple[str, str]  # (role, content)


def as_messages(value: Any, field: str) -> list[Message]:
    """Validates a message list; raises `RowInvalid` naming `field`."""
    if value is None:
        raise RowInvalid(field, "missing")
    if isinstance(value, str):
        raise RowInvalid(field, "bad_structure", "expected a list of {role, content} messages")
    if not isinstance(value, (list, tuple)) or not value:
        raise RowInvalid(field, "bad_structure", "expected a non-empty list of messages")
    out = []
    for k, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RowInvalid(f"{field}[{k}]", "bad_structure", "a message must be a dict")
        role, content = msg.get("role"), msg.get("content")
        if role is None or content is None:
            raise RowInvalid(f"{field}[{k}]", "missing", "a message needs 'role' and 'content'")
        if not isinstance(role, str) or not isinstance(content, str):
            raise RowInvalid(f"{field}[{k}]", "not_string")
        out.append((role, content))
    return out


def split_conversations(
    prompt: Any, chosen: Any, rejected: Any
) -> tuple[list[Message], Message, Message]:
    """Returns (shared prompt messages, chosen final message, rejected final message)."""
    c = as_messages(chosen, "chosen")
    r = as_messages(rejected, "rejected")
    if prompt is not None:
        if isinstance(prompt, str):
            if not prompt.strip():
                raise RowInvalid("prompt", "empty")
            p = [("user", prompt)]
        else:
            p = as_messages(prompt, "prompt")
        c = c if c[: len(p)] == p else p + c
        r = r if r[: len(p)] == p else p + r
    if c == r:
        raise RowInvalid("rejected", "identical", "chosen and rejected are the same conversation")
    n = 0
    while n < min(len(c), len(r)) and c[n] == r[n]:
        n += 1
    for field, side in (("chosen", c), ("rejected", r)):
        if len(side) != n + 1 or side[-1][0] != "assistant":
            raise RowInvalid(field, "bad_structure",
                             "must end in one assistant message after the shared prompt messages")
        if not side[-1][1].strip():
            raise RowInvalid(field, "empty", "the final assistant message is empty")
    if n == 0:
        raise RowInvalid("chosen", "no_shared_prompt", "no prompt messages")
    return c[:n], c[-1], r[-1]


class ChatRenderer:
    """Renders prompt and response text with a tokenizer's chat template (prompts cached)."""

    def __init__(self, tokenizer):
        if tokenizer is None:
            raise ValueError("chat-format data needs the model's tokenizer to render its template")
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no chat_template; "
                             "chat-format data cannot be rendered")
        self.tokenizer = tokenizer
        self._prompts: dict[tuple[Message, ...], str] = {}

    def _render(self, messages: list[Message], generation_prompt: bool) -> str:
        dicts = [{"role": role, "content": content} for role, content in messages]
        text = self.tokenizer.apply_chat_template(
            dicts, tokenize=False, add_generation_prompt=generation_prompt)
        if not isinstance(text, str):
            raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
        return text

    def prompt(self, shared: list[Message]) -> str:
        key = tuple(shared)
        if key not in self._prompts:
            self._prompts[key] = self._render(shared, generation_prompt=True)
        return self._prompts[key]

    def response(self, shared: list[Message], final: Message, field: str) -> str:
        prompt = self.prompt(shared)
        full = self._render(shared + [final], generation_prompt=False)
        if not full.startswith(prompt):
            raise RowInvalid(field, "template_mismatch",
                             "the rendered conversation does not start with the rendered prompt")
        return full[len(prompt):].rstrip()

    def render_pair(self, prompt: Any, chosen: Any, rejected: Any) -> tuple[str, str, str]:
        shared, c_final, r_final = split_conversations(prompt, chosen, rejected)
        return (self.prompt(shared), self.response(shared, c_final, "chosen"),
                self.response(shared, r_final, "rejected"))
