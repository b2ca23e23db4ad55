"""One-call entry points: source -> validated records -> (train, held-out) tokenised data.

    train, held, report = load_pair_data("builtin:hh_rlhf_harmless", tokenizer, max_length=256,
                                         held_out=256, seed=0)
    batches = PairBatcher(train, batch_size=16, seed=0).epoch(0)

Data that leaves nothing sensible to train (no usable record, a held-out size that takes everything, no
pairs, a max_length that cuts most responses to their tail) raises a one-line `ValueError`
(`jaxrlhf.data.usable`); `names` maps the arguments to what the caller calls them in those messages
(`{"held_out": "data.eval_size", "max_length": "data.max_length", ...}`), `max_positions` is the model's
limit for the max_length suggestion (default: the tokenizer's `model_max_length` when it states one).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxrlhf.data.errors import DataReport
from jaxrlhf.data.formats import Parsed, parse_table
from jaxrlhf.data.records import Pair, RankedList, Rated, ranked_to_pairs, ratings_to_pairs
from jaxrlhf.data.sources import load_table
from jaxrlhf.data.tokenize import ListData, PairData, RatedData, tokenize_lists, tokenize_pairs, tokenize_rated
from jaxrlhf.data.usable import check_truncation, model_limit, require_pairs, split_for_training

_LOAD_KEYS = ("config", "split", "data_dir", "revision", "cache_dir", "max_rows", "column_map", "name")


def load_records(
    source: Any,
    *,
    format: str = "auto",
    tokenizer=None,
    on_invalid: str = "raise",
    min_agreement: float | None = None,
    chat_template: bool = False,
    **load_kwargs,
) -> Parsed:
    """Loads and validates a source (`jaxrlhf.data.sources`) in a format (`jaxrlhf.data.formats`);
    `chat_template`: render HH dialogues with the tokenizer's chat template.

    load_kwargs: config, split, data_dir, revision, cache_dir, max_rows, column_map, name.
    """
    unknown = set(load_kwargs) - set(_LOAD_KEYS)
    if unknown:
        raise TypeError(f"unknown arguments {sorted(unknown)}")
    table = load_table(source, **load_kwargs)
    return parse_table(table, format, tokenizer=tokenizer, on_invalid=on_invalid,
                       min_agreement=min_agreement, chat_template=chat_template)


def as_pairs(records: list, report: DataReport | None = None, margin_scale: float = 0.0) -> list[Pair]:
    """Pairs from any record kind: pairs pass through, lists and ratings expand (ties dropped)."""
    if not records or isinstance(records[0], Pair):
        return list(records)
    if isinstance(records[0], RankedList):
        return ranked_to_pairs(records, report)
    if isinstance(records[0], Rated):
        return ratings_to_pairs(records, report, margin_scale=margin_scale)
    raise TypeError(f"cannot make pairs from {type(records[0]).__name__}")


def _split(parsed: Parsed, held_out: int | float, seed: int, names, kwargs) -> tuple[list, list]:
    values = {"min_agreement": kwargs.get("min_agreement"), "on_invalid": kwargs.get("on_invalid", "raise")}
    return split_for_training(parsed.records, held_out, seed, report=parsed.report, names=names, values=values)


def load_pair_data(
    source: Any,
    tokenizer,
    max_length: int,
    *,
    held_out: int | float = 0,
    seed: int = 0,
    append_eos: bool | None = None,
    margin_scale: float = 0.0,
    names: Mapping[str, str] | None = None,
    max_positions: int | None = None,
    shared_prompt: bool = False,
    **kwargs,
) -> tuple[PairData, PairData | None, DataReport]:
    """Comparisons for Bradley-Terry training, split by prompt into (train, held-out or None).

    Ranked lists and ratings are expanded into pairs after the split. kwargs go to `load_records`;
    `shared_prompt` to `tokenize_pairs`.
    The report's `kept` counts the pairs made; notes count truncated pairs per side.
    """
    parsed = load_records(source, tokenizer=tokenizer, **kwargs)
    report = parsed.report
    out = []
    parts = _split(parsed, held_out, seed, names, kwargs)
    for side, part in zip(("training", "held-out") if parts[1] else ("",), parts):
        pairs = as_pairs(part, report, margin_scale)
        require_pairs(pairs, part, report, side=side, names=names)
        out.append(tokenize_pairs(pairs, tokenizer, max_length, append_eos, shared_prompt) if pairs else None)
    report.kept = sum(len(d) for d in out if d is not None)
    for d in out:
        if d is not None:
            report.notes["truncated_chosen"] += int(d.chosen.truncated.sum())
            report.notes["truncated_rejected"] += int(d.rejected.truncated.sum())
    check_truncation([out[0].chosen, out[0].rejected], max_length, report.source, names,
                     max_positions or model_limit(tokenizer))
    return out[0], (out[1] if len(out) > 1 else None), report


def load_list_data(source: Any, tokenizer, max_length: int, *, held_out: int | float = 0,
                   seed: int = 0, append_eos: bool | None = None, names: Mapping[str, str] | None = None,
                   max_positions: int | None = None, shared_prompt: bool = False,
                   **kwargs) -> tuple[ListData, ListData | None, DataReport]:
    """Ranked lists kept whole (Plackett-Luce, Kendall's tau), split by prompt."""
    parsed = load_records(source, tokenizer=tokenizer, format=kwargs.pop("format", "ranked"), **kwargs)
    parts = _split(parsed, held_out, seed, names, kwargs)
    out = [tokenize_lists(p, tokenizer, max_length, append_eos, shared_prompt) if p else None for p in parts]
    check_truncation([out[0].seqs], max_length, parsed.report.source, names, max_positions or model_limit(tokenizer))
    return out[0], (out[1] if len(out) > 1 else None), parsed.report


def load_rated_data(source: Any, tokenizer, max_length: int, *, held_out: int | float = 0,
                    seed: int = 0, append_eos: bool | None = None, names: Mapping[str, str] | None = None,
                    max_positions: int | None = None,
                    **kwargs) -> tuple[RatedData, RatedData | None, DataReport]:
    """(prompt + response, rating) rows for reward regression, split by prompt."""
    parsed = load_records(source, tokenizer=tokenizer, format=kwargs.pop("format", "ratings"), **kwargs)
    parts = _split(parsed, held_out, seed, names, kwargs)
    out = [tokenize_rated(p, tokenizer, max_length, append_eos) if p else None for p in parts]
    check_truncation([out[0].seqs], max_length, parsed.report.source, names, max_positions or model_limit(tokenizer))
    return out[0], (out[1] if len(out) > 1 else None), parsed.report
