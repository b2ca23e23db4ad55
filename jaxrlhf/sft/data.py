"""Supervised fine-tuning data: rows -> (prompt, response) examples -> token batches with a loss mask.

Row shapes (detected from the columns, or forced with `format`):
  prompt_response  `prompt` and `response` texts.
  hh               `chosen` (and optionally `rejected`) HH-RLHF dialogues; the chosen one is trained on:
                   prompt = the dialogue up to its last "\\n\\nAssistant:" (the cut `split_hh` makes
                   when `rejected` is there), response = the chosen continuation.
  chat             `messages` (or `chosen`) lists of {role, content}; rendered with the tokenizer's chat
                   template, the response is the last message, which must come from the assistant.

Sequences are laid out by `TextEncoder` (prefix specials + prompt + response + EOS); the loss mask is 1
on the response tokens and the EOS only, so prompt and padding never enter the loss.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import numpy as np

from jaxrlhf.data.batching import Batcher  # order, resumption and per-process slicing
from jaxrlhf.data.chat import ChatRenderer, as_messages
from jaxrlhf.data.errors import DataError, DataReport, RowGuard, RowInvalid, row_policy
from jaxrlhf.data.formats import text
from jaxrlhf.data.prompts import hh_prompt
from jaxrlhf.data.sources import Table, load_table
from jaxrlhf.data.tokenize import Encoded, TextEncoder
from jaxrlhf.data.usable import check_truncation, model_limit, require_records, split_for_training

SFT_FORMATS = ("auto", "prompt_response", "hh", "chat")
# What the config calls each option, for the messages of data that leaves nothing to train (data.usable).
NAMES = {"held_out": "data.eval_size", "max_length": "data.max_length", "on_invalid": "data.on_invalid",
         "eval_source": "data.eval_source", "limit": "data.limit"}


@dataclasses.dataclass(frozen=True)
class Example:
    prompt: str
    response: str
    row: int  # 1-based row of the source


def detect_sft_format(table: Table) -> str:
    cols = set(table.column_names)
    if "messages" in cols:
        return "chat"
    if {"prompt", "response"} <= cols:
        return "prompt_response"
    if "chosen" in cols:
        first = next((v for v in table.columns["chosen"] if v is not None), None)
        return "chat" if isinstance(first, (list, tuple)) else "hh"
    raise DataError(table.name, None, None, f"cannot detect the SFT data format from columns {sorted(cols)}; "
                                            f"expected prompt+response, chosen (HH dialogues) or messages")


def _hh_example(chosen, rejected) -> tuple[str, str]:
    chosen = text(chosen, "chosen")
    prompt = hh_prompt(chosen, None if rejected is None else text(rejected, "rejected"))
    return prompt, chosen[len(prompt):]


def _chat_example(renderer: ChatRenderer, value, field: str) -> tuple[str, str]:
    messages = as_messages(value, field)
    if messages[-1][0] != "assistant":
        raise RowInvalid(field, "bad_structure", "the last message must come from the assistant")
    if len(messages) < 2:
        raise RowInvalid(field, "no_shared_prompt", "no prompt messages before the assistant's")
    return renderer.prompt(messages[:-1]), renderer.response(messages[:-1], messages[-1], field)


def parse_sft_table(table: Table, format: str = "auto", *, tokenizer=None,
                    on_invalid: str = "raise") -> tuple[list[Example], DataReport]:
    """Validated examples of `table`; a bad row raises `DataError` or is counted and skipped."""
    if format not in SFT_FORMATS:
        raise ValueError(f"data.format must be one of {SFT_FORMATS} for SFT, got {format!r}")
    fmt = detect_sft_format(table) if format == "auto" else format
    cols = table.columns
    needed = {"prompt_response": ("prompt", "response"), "hh": ("chosen",),
              "chat": ("messages",) if "messages" in cols else ("chosen",)}[fmt]
    missing = [c for c in needed if c not in cols]
    if missing:
        raise DataError(table.name, None, missing[0], f"column missing; columns are {sorted(cols)}")
    report = DataReport(source=table.name, rows=table.num_rows)
    guard = RowGuard(table.name, on_invalid, report)
    renderer = ChatRenderer(tokenizer) if fmt == "chat" else None
    examples = []
    for i in range(table.num_rows):
        try:
            if fmt == "prompt_response":
                prompt, response = text(cols["prompt"][i], "prompt"), text(cols["response"][i], "response")
            elif fmt == "hh":
                prompt, response = _hh_example(cols["chosen"][i], cols["rejected"][i] if "rejected" in cols else None)
            else:
                prompt, response = _chat_example(renderer, cols[needed[0]][i], needed[0])
        except RowInvalid as err:
            guard.invalid(i, err)
            continue
        if not response.strip():  # HH has a few: nothing to imitate but the EOS
            report.filtered["empty_response"] += 1
            continue
        examples.append(Example(prompt, response, i + 1))
    report.kept = len(examples)
    return examples, report


@dataclasses.dataclass
class SFTData:
    seqs: Encoded
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.seqs)


def tokenize_examples(examples: list[Example], tokenizer, max_length: int, append_eos: bool = True) -> SFTData:
    enc = TextEncoder(tokenizer, max_length, append_eos)
    seqs = enc.encode([e.prompt for e in examples], [e.response for e in examples])
    return SFTData(seqs, enc.special.pad_id, enc.max_length)


class SFTBatcher(Batcher):
    """Batches: ids_BxT, mask_BxT, loss_mask_BxT (int32; 1 on response tokens + EOS of real rows),
    weight_B (float32, 0 for filler rows). Order, bucketing and resumption as in `jaxrlhf.data.batching`."""

    def __init__(self, data: SFTData, batch_size: int, **kwargs):
        self.data = data
        super().__init__(data.seqs.lengths, data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        return int(self.data.seqs.lengths[rows].sum()), batch * width

    def _make(self, rows, weight, width):
        seqs = self.data.seqs
        ids, mask = self._fill(seqs, rows, width, self.data.pad_id)
        loss_mask = np.zeros_like(mask)
        for j, i in enumerate(rows):
            if weight[j] == 0:
                continue
            start = seqs.prompt_len[i] + (0 if self.padding_side == "right" else width - seqs.lengths[i])
            loss_mask[j, start:start + seqs.response_len[i]] = 1
        return {"ids_BxT": ids, "mask_BxT": mask, "loss_mask_BxT": loss_mask, "weight_B": weight}


@dataclasses.dataclass
class SFTDataset:
    train: SFTData
    held_out: SFTData | None
    report: DataReport
    train_batcher: SFTBatcher
    eval_batch_size: int
    batcher_kwargs: dict

    def held_out_batches(self) -> Iterator[dict]:
        if self.held_out is None:
            return iter(())
        return SFTBatcher(self.held_out, self.eval_batch_size, **dict(self.batcher_kwargs, shuffle=False)).epoch(0)

    def describe(self) -> str:
        held = len(self.held_out) if self.held_out is not None else 0
        return (f"{len(self.train)} train, {held} held out; {self.report}; "
                f"padding efficiency {self.train_batcher.padding_efficiency(0):.2f}")


def _load(source: str, data_cfg, tokenizer, on_invalid: str) -> tuple[list[Example], DataReport]:
    if data_cfg.limit < 0:
        raise ValueError(f"data.limit={data_cfg.limit} must be >= 0 (0: every row)")
    table = load_table(source, config=data_cfg.subset or None, split=data_cfg.split,
                       max_rows=data_cfg.limit or None)
    return parse_sft_table(table, data_cfg.format, tokenizer=tokenizer, on_invalid=on_invalid)


def prepare(config, tokenizer, max_positions: int | None = None) -> SFTDataset:
    """Loads, validates, splits (by prompt), tokenises and batches the data named in `config.data`.

    Data that leaves nothing sensible to train is a one-line `ValueError` naming the config keys to change
    (`jaxrlhf.data.usable`); max_positions: the model's limit for a suggested data.max_length (default: the
    tokenizer's `model_max_length` when it states one).
    """
    d = config.data
    if d.on_invalid not in ("error", "skip"):
        raise ValueError(f"data.on_invalid must be 'error' or 'skip', got {d.on_invalid!r}")
    on_invalid = row_policy(d.on_invalid)
    values = {"on_invalid": d.on_invalid}
    examples, report = _load(d.source, d, tokenizer, on_invalid)
    if d.eval_source:
        require_records(examples, report, "examples", NAMES, values)
        held, held_report = _load(d.eval_source, d, tokenizer, on_invalid)
        train = examples
        require_records(held, held_report, "examples", NAMES, values)
    else:
        train, held = split_for_training(examples, d.eval_size, d.split_seed, report=report, unit="examples",
                                         names=NAMES, values=values)
    train_data = tokenize_examples(train, tokenizer, d.max_length, bool(d.append_eos))
    held_data = tokenize_examples(held, tokenizer, d.max_length, bool(d.append_eos)) if held else None
    check_truncation([train_data.seqs], d.max_length, report.source, NAMES, max_positions or model_limit(tokenizer))
    report.notes["truncated"] += int(train_data.seqs.truncated.sum())
    procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batcher_kwargs = dict(pad_to_multiple=d.pad_to_multiple, padding_side=d.padding_side, **procs)
    train_batcher = SFTBatcher(train_data, d.batch_size, seed=config.seed, bucket_window=d.bucket_window,
                                 **batcher_kwargs)
    eval_bs = max(d.eval_batch_size // procs["process_count"], 1) * procs["process_count"]
    return SFTDataset(train_data, held_data, report, train_batcher, eval_bs, batcher_kwargs)
