"""Data that leaves nothing sensible to train: one `ValueError` line naming the cause in the user's terms.

    require_records     nothing usable after validation and the filters: the rows read and where they went
    split_for_training  the above, then a held-out size that leaves nothing to train on or holds out nothing
    require_pairs       ranked lists or ratings that make no (better, worse) pair
    check_truncation    a max_length that cuts most responses down to their tail, with no prompt left

The rules:
  * no record survives validation (`on_invalid="skip"`) and the filters (`min_agreement`, all-tied lists,
    empty SFT responses): an error listing what each step dropped;
  * a held-out count (or fraction) that takes every usable record, or that holds out nothing because
    records sharing a prompt stay on one side: an error saying how many records there are and what to set;
  * lists or ratings that expand to no pair on a side that was asked for: an error saying why (ties, one
    rated response per prompt);
  * more than `CUT_SHARE` of the responses lose their start to truncation (which keeps the response's end,
    so the whole prompt went first): an error suggesting a max_length of at least the median untruncated
    prompt + response length, capped at the model's limit (no error once max_length is at that limit).

Messages name each option as the caller calls it: `names` maps the library's argument names (`held_out`,
`max_length`, `min_agreement`, `on_invalid`, `ratings_mode`, `eval_source`) to the caller's, e.g.
`{"held_out": "data.eval_size"}` for a trainer's config; an option missing from `names` keeps its own name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxrlhf.data.errors import DataReport
from jaxrlhf.data.records import Pair, RankedList, Rated, group_by_prompt
from jaxrlhf.data.split import held_out_count, split_by_prompt

CUT_SHARE = 0.5  # more than this share of responses cut into (their start and the whole prompt gone): an error
_UNITS = ((Pair, "comparisons"), (RankedList, "ranked lists"), (Rated, "rated responses"))
FORMAT_UNITS = {"pairs": "comparisons", "hh": "comparisons", "chat": "comparisons", "ranked": "ranked lists",
                "ratings": "rated responses"}
_LIMIT_UNKNOWN = 1_000_000  # transformers' "no limit" is 1e30; anything this large says nothing


def unit_of(records: Sequence, default: str = "records") -> str:
    """What the records are called in messages: comparisons, ranked lists, rated responses."""
    for cls, unit in _UNITS:
        if records and isinstance(records[0], cls):
            return unit
    return default


def model_limit(tokenizer) -> int | None:
    """The tokenizer's `model_max_length` when it states a real limit (the model's positions), else None."""
    value = getattr(tokenizer, "model_max_length", None)
    return int(value) if isinstance(value, int) and 0 < value < _LIMIT_UNKNOWN else None


def _name(names: Mapping[str, str] | None, key: str) -> str:
    return (names or {}).get(key, key)


def _setting(names, values, key: str, default: Any = None) -> str:
    value = (values or {}).get(key, default)
    return _name(names, key) + ("" if value is None else f"={value}")


def losses(report: DataReport, unit: str = "records", names: Mapping[str, str] | None = None,
           values: Mapping[str, Any] | None = None) -> str:
    """What validation and the filters dropped, e.g. '20 rows read; 5 invalid rows skipped (on_invalid=skip:
    3 identical, 2 empty); 15 comparisons below min_agreement=0.8'. `values`: the options' values."""
    parts = [f"{report.rows} rows read"]
    invalid = sum(report.invalid.values())
    if invalid:
        reasons = ", ".join(f"{n} {kind.replace('_', ' ')}" for kind, n in report.invalid.most_common())
        parts.append(f"{invalid} invalid rows skipped ({_setting(names, values, 'on_invalid', 'skip')}: {reasons})")
    for key, n in report.filtered.items():
        if not n:
            continue
        if key == "low_agreement":
            parts.append(f"{n} {unit} below {_setting(names, values, 'min_agreement')}")
        elif key == "all_tied":
            parts.append(f"{n} ranked lists with every response tied")
        elif key == "tie":
            parts.append(f"{n} tied pairs (equal rank or rating) dropped")
        elif key == "identical":
            parts.append(f"{n} pairs of identical responses dropped")
        elif key == "empty_response":
            parts.append(f"{n} rows with an empty response")
        elif key == "duplicate":
            parts.append(f"{n} duplicate {unit}")
        elif key == "too_long":
            parts.append(f"{n} longer than {_setting(names, values, 'max_prompt_length')} tokens")
        else:
            parts.append(f"{n} {key.replace('_', ' ')}")
    return "; ".join(parts)


def _hint(report: DataReport, names, values) -> str:
    """What to change, for the step that dropped the most."""
    steps = {"invalid": sum(report.invalid.values()), **{k: v for k, v in report.filtered.items() if v}}
    if not any(steps.values()):
        return ""
    worst = max(steps, key=steps.get)
    strict = "error" if names and "on_invalid" in names else "raise"  # a config's word for the library's
    return {
        "invalid": f": set {_name(names, 'on_invalid')}={strict} to see the first bad row",
        "low_agreement": f": lower {_name(names, 'min_agreement')}",
        "all_tied": ": a ranked list needs at least two different ranks (or scores)",
        "empty_response": ": every response is empty, there is nothing to imitate",
    }.get(worst, "")


def require_records(records: Sequence, report: DataReport, unit: str | None = None,
                    names: Mapping[str, str] | None = None, values: Mapping[str, Any] | None = None) -> None:
    """Raises `ValueError` when no record is left, saying what the rows turned into."""
    if records:
        return
    unit = unit or FORMAT_UNITS.get(report.format, "records")
    if not report.rows:
        raise ValueError(f"{report.source}: no rows to read (is {_name(names, 'limit')} or the split empty?)"
                         if names and "limit" in names else f"{report.source}: no rows to read")
    raise ValueError(f"{report.source}: no usable {unit} left: {losses(report, unit, names, values)}"
                     f"{_hint(report, names, values)}")


def split_for_training(records: Sequence, held_out: int | float, seed: int = 0, *, report: DataReport,
                       unit: str | None = None, names: Mapping[str, str] | None = None,
                       values: Mapping[str, Any] | None = None) -> tuple[list, list]:
    """(train, held-out) of `records` split by prompt (`split_by_prompt`), after `require_records`; raises
    `ValueError` when the held-out size leaves nothing to train on or holds out nothing."""
    unit = unit or unit_of(records, FORMAT_UNITS.get(report.format, "records"))
    require_records(records, report, unit, names, values)
    name, n = _name(names, "held_out"), len(records)
    target = held_out_count(n, held_out, name)
    if not target:
        return list(records), []
    if target >= n:
        why = f"{report.source}: {name}={held_out} would hold out all {n} usable {unit}, leaving none to train on " \
              f"({losses(report, unit, names, values)})"
        if isinstance(held_out, float):
            raise ValueError(f"{why}: use a smaller fraction, or a count below {n}")
        fraction = ", or a fraction such as 0.1" if name == "held_out" else ""
        raise ValueError(f"{why}: set {name} below {n} (0: no held-out set){fraction}")
    train, held = split_by_prompt(records, held_out, seed)
    if not held:
        groups = group_by_prompt(records)
        smallest = min(len(g) for g in groups.values())
        elsewhere = f", and evaluate on another file with {names['eval_source']}" if names and "eval_source" in names \
            else ""
        if len(groups) == 1:
            raise ValueError(f"{report.source}: {name}={held_out} holds out nothing: all {n} usable {unit} share one "
                             f"prompt, and a prompt's {unit} are never split between training and held-out; "
                             f"set {name}=0{elsewhere}")
        raise ValueError(f"{report.source}: {name}={held_out} holds out nothing: {unit} sharing a prompt stay on one "
                         f"side and the smallest prompt group has {smallest}; set {name} to at least {smallest} "
                         f"(below {n}){elsewhere}")
    return train, held


def _why_no_pairs(records: Sequence) -> str:
    if records and isinstance(records[0], Rated):
        groups = group_by_prompt(records)
        if all(len(g) == 1 for g in groups.values()):
            return (f"each of their {len(groups)} prompts has a single rated response, and a pair needs two "
                    f"responses to one prompt with different ratings")
        return "every two responses to the same prompt have the same rating (or the same text)"
    return "every two responses to the same prompt are tied"


def require_pairs(pairs: Sequence, records: Sequence, report: DataReport, *, side: str = "",
                  names: Mapping[str, str] | None = None) -> None:
    """Raises `ValueError` when `records` made no pair. side: "training" or "held-out" after a split, else ""."""
    if pairs:
        return
    unit = unit_of(records)
    regression = f"; or fit the ratings directly with {_name(names, 'ratings_mode')}=regression" \
        if records and isinstance(records[0], Rated) else ""
    what = f"the {len(records)} {side + ' ' if side else 'usable '}{unit}"
    fix = f"; set {_name(names, 'held_out')} larger, or 0" if side == "held-out" else ""
    raise ValueError(f"{report.source}: {what} make no pairs: {_why_no_pairs(records)}{fix}{regression}")


def check_truncation(encoded: Sequence, max_length: int, source: str, names: Mapping[str, str] | None = None,
                     limit: int | None = None) -> None:
    """Raises `ValueError` when more than `CUT_SHARE` of the responses in `encoded` (`Encoded` objects, e.g.
    chosen and rejected) lost their start: truncation cut the whole prompt and then into the response.

    The suggestion is the median untruncated length, capped at `limit` (the model's positions, when known);
    a `max_length` already at `limit` is left alone, since nothing longer would fit the model.
    """
    encoded = [e for e in encoded if e is not None and len(e) and e.full_length is not None]
    if not encoded:
        return
    cut = np.concatenate([e.response_cut for e in encoded])
    k, n = int(cut.sum()), len(cut)
    if k <= CUT_SHARE * n or (limit is not None and max_length >= limit):
        return
    p50 = int(np.ceil(np.median(np.concatenate([e.full_length for e in encoded]))))
    suggest = min(p50, limit) if limit is not None else p50
    kept = int(np.median(np.concatenate([e.response_len for e in encoded])[cut]))
    name = _name(names, "max_length")
    capped = f" (the model's limit of {limit} tokens)" if suggest < p50 else ""
    raise ValueError(f"{source}: {name}={max_length} cuts {k} of {n} responses ({k / n:.0%}) to their last {kept} "
                     f"tokens, with none of the prompt left; the median prompt + response is {p50} tokens: set "
                     f"{name} to at least {suggest}{capped}")
