"""Row formats: detection, parsing and validation of comparison data.

Formats (detected from the columns by `detect_format`, or forced):
  pairs    `prompt`, `chosen`, `rejected` texts.
  hh       `chosen`, `rejected` full dialogues as in Anthropic HH-RLHF; the prompt is their shared
           prefix cut after the last "\\n\\nAssistant:" inside it, each response is the rest.
  chat     `chosen`, `rejected` message lists (optional `prompt`), see `jaxrlhf.data.chat`.
  ranked   `prompt`, `responses` (K texts) and `ranks` (lower is better) or `scores` (higher is better);
           what `python -m jaxrlhf.annotate export` writes.
  ratings  `prompt`, `response` and a numeric `reward` (or `rating`, `score`; higher is better).
Pair formats may carry a numeric `margin`; pair and ranked rows an annotator `agreement` in [0, 1].

Invalid rows raise `DataError` naming source, 1-based row and field, or with `on_invalid="skip"` are
dropped and counted by reason in the returned `DataReport`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from jaxrlhf.data.chat import ChatRenderer
from jaxrlhf.data.errors import DataError, DataReport, RowGuard, RowInvalid
from jaxrlhf.data.records import Pair, RankedList, Rated, dense_ranks
from jaxrlhf.data.sources import Table

FORMATS = ("auto", "pairs", "hh", "chat", "ranked", "ratings")
HH_ASSISTANT = "\n\nAssistant:"
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}
RATING_COLUMNS = ("reward", "rating", "score")


@dataclasses.dataclass
class Parsed:
    """Records of one kind: `Pair` (formats pairs/hh/chat), `RankedList` or `Rated`."""

    format: str
    records: list
    report: DataReport


def detect_format(table: Table) -> str:
    cols = set(table.column_names)
    if "responses" in cols:
        return "ranked"
    if "response" in cols and cols & set(RATING_COLUMNS):
        return "ratings"
    if {"chosen", "rejected"} <= cols:
        first = next((v for v in table.columns["chosen"] if v is not None), None)
        if isinstance(first, (list, tuple)):
            return "chat"
        return "pairs" if "prompt" in cols else "hh"
    raise DataError(table.name, None, None,
                    f"cannot detect the data format from columns {sorted(cols)}; "
                    f"pass format= one of {FORMATS[1:]}")


def text(value: Any, field: str) -> str:
    if value is None:
        raise RowInvalid(field, "missing")
    if not isinstance(value, str):
        raise RowInvalid(field, "not_string", f"got {type(value).__name__}")
    if not value.strip():
        raise RowInvalid(field, "empty")
    return value


def number(value: Any, field: str) -> float:
    if value is None:
        raise RowInvalid(field, "missing")
    if isinstance(value, bool):
        raise RowInvalid(field, "not_numeric", "got a boolean")
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            raise RowInvalid(field, "not_numeric", f"got {value[:40]!r}") from None
    else:
        raise RowInvalid(field, "not_numeric", f"got {type(value).__name__}")
    if not math.isfinite(out):
        raise RowInvalid(field, "not_numeric", f"got {out}")
    return out


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of two HH dialogues sharing their prompt.

    The shared prefix is cut back to just after the last "\\n\\nAssistant:" it contains, so a prefix
    that ends inside the final assistant turn (both responses start alike) still yields the whole turn
    as the responses.
    """
    if chosen == rejected:
        raise RowInvalid("rejected", "identical", "chosen and rejected are the same text")
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise RowInvalid("chosen", "no_shared_prompt",
                         f"the dialogues share no prefix ending in {HH_ASSISTANT!r}")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def hh_messages(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' -> [(user, a), (assistant, b), (user, c)]."""
    parts = HH_TURN.split(text)
    messages = []
    for role, content in zip(parts[1::2], parts[2::2]):
        content = content.strip()
        if content:
            messages.append((_HH_ROLES[role], content))
    return messages


def _hh_as_chat(renderer: ChatRenderer, prompt: str, chosen: str, rejected: str) -> tuple[str, str, str]:
    """An HH prompt and its two final assistant turns rendered with the model's chat template."""
    shared = hh_messages(prompt)
    if not shared or shared[-1][0] != "user":
        raise RowInvalid("chosen", "bad_structure", "the prompt does not end with a Human turn")
    return (renderer.prompt(shared), renderer.response(shared, ("assistant", chosen.strip()), "chosen"),
            renderer.response(shared, ("assistant", rejected.strip()), "rejected"))


def _require(table: Table, names: tuple[str, ...]) -> None:
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise DataError(table.name, None, missing[0],
                        f"column missing; columns are {sorted(table.column_names)}")


def _pair_extras(table: Table, i: int, min_agreement: float | None) -> tuple[float, float | None]:
    margin = 0.0
    if "margin" in table.columns and table.columns["margin"][i] is not None:
        margin = number(table.columns["margin"][i], "margin")
    return margin, _agreement(table, i, min_agreement)


def _parse_pair_row(fmt: str, table: Table, i: int, renderer, report: DataReport) -> tuple:
    cols = table.columns
    if fmt == "chat":
        prompt = cols["prompt"][i] if "prompt" in cols else None
        return renderer.render_pair(prompt, cols["chosen"][i], cols["rejected"][i])
    chosen, rejected = text(cols["chosen"][i], "chosen"), text(cols["rejected"][i], "rejected")
    if fmt == "hh":
        prompt, c, r = split_hh(chosen, rejected)
        if not c.strip() or not r.strip():
            report.notes["empty_response"] += 1  # a real preference: saying nothing was better
        return _hh_as_chat(renderer, prompt, c, r) if renderer is not None else (prompt, c, r)
    if chosen == rejected:
        raise RowInvalid("rejected", "identical", "chosen and rejected are the same text")
    return text(cols["prompt"][i], "prompt"), chosen, rejected


def _agreement(table: Table, i: int, min_agreement: float | None) -> float | None:
    value = table.columns["agreement"][i] if "agreement" in table.columns else None
    if value is None and min_agreement is None:
        return None
    agreement = number(value, "agreement")
    if not 0.0 <= agreement <= 1.0:
        raise RowInvalid("agreement", "out_of_range", f"{agreement} is not in [0, 1]")
    return agreement


def _parse_ranked_row(table: Table, i: int, score_col: str, min_agreement: float | None) -> RankedList:
    cols = table.columns
    prompt = text(cols["prompt"][i], "prompt")
    responses = cols["responses"][i]
    if responses is None:
        raise RowInvalid("responses", "missing")
    if isinstance(responses, str) or not isinstance(responses, (list, tuple)) or len(responses) < 2:
        raise RowInvalid("responses", "bad_structure", "expected a list of at least 2 texts")
    texts = tuple(text(r, f"responses[{k}]") for k, r in enumerate(responses))
    if len(set(texts)) != len(texts):
        raise RowInvalid("responses", "identical", "a response appears twice")
    values = cols[score_col][i]
    if values is None:
        raise RowInvalid(score_col, "missing")
    if not isinstance(values, (list, tuple)) or len(values) != len(texts):
        raise RowInvalid(score_col, "bad_structure", f"expected a list of {len(texts)} numbers")
    nums = [number(v, f"{score_col}[{k}]") for k, v in enumerate(values)]
    return RankedList(prompt, texts, dense_ranks(nums, higher_is_better=score_col == "scores"), i + 1,
                      _agreement(table, i, min_agreement))


def parse_table(
    table: Table,
    format: str = "auto",
    *,
    tokenizer=None,
    on_invalid: str = "raise",
    min_agreement: float | None = None,
    chat_template: bool = False,
) -> Parsed:
    """Parses and validates every row of `table` (see module doc).

    tokenizer: needed for chat data (its chat template renders the texts).
    chat_template: HH dialogues too are rendered with the tokenizer's chat template (their Human and
    Assistant turns as user and assistant messages), as a chat model sees a conversation.
    min_agreement: drop pairs whose `agreement` is below it (needs an `agreement` column).
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    fmt = detect_format(table) if format == "auto" else format
    report = DataReport(source=table.name, rows=table.num_rows)
    guard = RowGuard(table.name, on_invalid, report)
    records: list = []
    cols = table.columns
    if fmt in ("pairs", "hh", "chat"):
        _require(table, ("prompt", "chosen", "rejected") if fmt == "pairs" else ("chosen", "rejected"))
        if min_agreement is not None:
            _require(table, ("agreement",))
        renderer = ChatRenderer(tokenizer) if fmt == "chat" or (fmt == "hh" and chat_template) else None
        for i in range(table.num_rows):
            try:
                prompt, chosen, rejected = _parse_pair_row(fmt, table, i, renderer, report)
                margin, agreement = _pair_extras(table, i, min_agreement)
            except RowInvalid as err:
                guard.invalid(i, err)
                continue
            if min_agreement is not None and agreement < min_agreement:
                report.filtered["low_agreement"] += 1
                continue
            records.append(Pair(prompt, chosen, rejected, margin, agreement, i + 1))
    elif fmt == "ranked":
        score_col = "ranks" if "ranks" in cols else "scores"
        _require(table, ("prompt", "responses", score_col) + (("agreement",) if min_agreement is not None else ()))
        for i in range(table.num_rows):
            try:
                lst = _parse_ranked_row(table, i, score_col, min_agreement)
            except RowInvalid as err:
                guard.invalid(i, err)
                continue
            if min_agreement is not None and lst.agreement < min_agreement:
                report.filtered["low_agreement"] += 1
                continue
            if len(set(lst.ranks)) == 1:
                report.filtered["all_tied"] += 1
                continue
            records.append(lst)
    elif fmt == "ratings":
        rating_col = next((c for c in RATING_COLUMNS if c in cols), RATING_COLUMNS[0])
        _require(table, ("prompt", "response", rating_col))
        for i in range(table.num_rows):
            try:
                rec = Rated(text(cols["prompt"][i], "prompt"), text(cols["response"][i], "response"),
                            number(cols[rating_col][i], rating_col), i + 1)
            except RowInvalid as err:
                guard.invalid(i, err)
                continue
            records.append(rec)
    report.kept = len(records)
    report.format = fmt
    report.response_prefix = _response_prefix(records)
    return Parsed(fmt, records, report)


def _response_prefix(records: list) -> str:
    """" " when most responses begin with whitespace (HH's "Assistant: text"), else "": how a response a
    policy generates must be joined to the prompt for a reward model trained on these records."""
    texts = [t for r in records[:2000] for t in (
        (r.chosen, r.rejected) if isinstance(r, Pair) else r.responses if isinstance(r, RankedList) else (r.response,))]
    spaced = sum(t[:1].isspace() for t in texts)
    return " " if texts and 2 * spaced > len(texts) else ""
