"""Prompts for PPO rollouts: loaded from any table source, rendered for the policy, batched left-padded.

A prompt (`jaxrlhf.data.prompts.Prompt`) keeps the data's own text, which the reward model reads, and the
conversation as messages, which the policy's chat template renders. Sources: HH-RLHF dialogues (`chosen`,
optionally `rejected`) or a `prompt` column (a string or a message list).

Prompts longer than `max_prompt_length` policy tokens are dropped and counted: cutting a conversation from
the left would leave a broken chat template. Too few prompts left for one rollout batch, or an evaluation
hold-out that leaves less than one, is a one-line `ValueError` naming the config keys to change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np

from jaxrlhf.data.batching import backend_multiple
from jaxrlhf.data.errors import DataReport, RowGuard, RowInvalid
from jaxrlhf.data.prompts import Prompt, prompt_of_row
from jaxrlhf.data.sources import Table
from jaxrlhf.data.usable import losses
from jaxrlhf.rl.sampling import left_pad

# What train_ppo's config calls each option, for the messages below.
NAMES = {"max_prompt_length": "data.max_prompt_length", "on_invalid": "data.on_invalid"}


def parse_prompts(table: Table, on_invalid: str = "raise") -> tuple[list[Prompt], DataReport]:
    """Unique prompts of a table, in order of first appearance."""
    prompts, _, report = parse_prompt_rows(table, on_invalid)
    return prompts, report


def parse_prompt_rows(table: Table, on_invalid: str = "raise") -> tuple[list[Prompt], list[dict], DataReport]:
    """Unique prompts of a table and the first row of each (verifiable rewards read its answer)."""
    if "prompt" not in table.columns and "chosen" not in table.columns:
        raise ValueError(f"{table.name}: needs a 'prompt' column or HH-RLHF 'chosen' dialogues; "
                         f"columns are {sorted(table.column_names)}")
    report = DataReport(source=table.name, rows=table.num_rows)
    guard = RowGuard(table.name, on_invalid, report)
    seen: dict[str, tuple[Prompt, dict]] = {}
    for i in range(table.num_rows):
        row = table.row(i)
        try:
            prompt = prompt_of_row(row)
        except RowInvalid as err:
            guard.invalid(i, err)
            continue
        seen.setdefault(prompt.text, (prompt, row))
    report.kept = len(seen)
    report.filtered["duplicate"] = table.num_rows - sum(report.invalid.values()) - len(seen)
    return [p for p, _ in seen.values()], [r for _, r in seen.values()], report


def render_for_policy(tokenizer, prompts: Sequence[Prompt], *, use_chat_template: bool = True,
                      system: str | None = None) -> list[list[int]]:
    """Policy token ids of each prompt, ending where the assistant's response begins."""
    has_template = use_chat_template and getattr(tokenizer, "chat_template", None)
    out = []
    for p in prompts:
        if has_template:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": r, "content": c} for r, c in p.messages]
            text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            out.append(list(tokenizer(text, add_special_tokens=False)["input_ids"]))
        else:
            out.append(list(tokenizer(p.text, add_special_tokens=True)["input_ids"]))
    return out


@dataclasses.dataclass
class PromptSet:
    """Rendered prompts and an endless, resumable, seeded stream of left-padded batches."""

    prompts: list[Prompt]
    ids: list[list[int]]
    report: DataReport
    pad_id: int
    batch_size: int
    pad_to_multiple: int = 32
    seed: int = 0
    shuffle: bool = True  # False: batches in order (a fixed evaluation set)
    rows: list[dict] | None = None  # the data row of each prompt, for reward functions

    def __post_init__(self):
        if len(self.prompts) < self.batch_size:
            raise ValueError(f"{self.report.source}: {len(self.prompts)} usable prompts make no batch of "
                             f"ppo.rollout_batch_size={self.batch_size} ({self.report})")

    @property
    def batches_per_epoch(self) -> int:
        return len(self.prompts) // self.batch_size

    def batch_rows(self, index: int) -> np.ndarray:
        """Rows of global batch `index`: epoch e = index // batches_per_epoch is a permutation seeded by e."""
        epoch, k = divmod(index, self.batches_per_epoch)
        order = (np.random.default_rng([self.seed, epoch]).permutation(len(self.prompts)) if self.shuffle
                 else np.arange(len(self.prompts)))
        return order[k * self.batch_size:(k + 1) * self.batch_size]

    def batch(self, index: int, process_index: int = 0, process_count: int = 1) -> dict:
        """This process's share of global batch `index`: ids_BxP, mask_BxP (int32) and the prompts.

        P is the longest prompt of the whole global batch rounded up, so every process agrees on it.
        """
        rows = self.batch_rows(index)
        width = max(len(self.ids[r]) for r in rows)
        multiple = backend_multiple(self.pad_to_multiple)
        width = -(-width // multiple) * multiple
        local = np.array_split(rows, process_count)[process_index]
        ids, mask = left_pad([self.ids[r] for r in local], self.pad_id, length=width)
        out = {"ids_BxP": ids, "mask_BxP": mask, "prompts": [self.prompts[r] for r in local]}
        if self.rows is not None:
            out["rows"] = [self.rows[r] for r in local]
        return out

    def hold_out(self, n: int) -> tuple[PromptSet, PromptSet | None]:
        """(training set, evaluation set of `n` prompts rounded down to whole batches, in a fixed order).

        The split is seeded, so a resumed run holds out the same prompts."""
        requested, b, total = n, self.batch_size, len(self.prompts)
        n = n // b * b
        if n <= 0:
            return self, None
        if total - n < b:
            most = (total - b) // b * b
            fix = f"set data.eval_prompts to at most {most} (or 0)" if most > 0 else \
                "set data.eval_prompts=0, or give more prompts"
            raise ValueError(f"{self.report.source}: data.eval_prompts={requested} holds out {n} of the {total} usable "
                             f"prompts (whole batches of ppo.rollout_batch_size={b}), leaving {total - n}, less than "
                             f"one rollout batch: {fix}")
        order = np.random.default_rng([self.seed, 7919]).permutation(len(self.prompts))
        part = lambda rows, shuffle: dataclasses.replace(
            self, prompts=[self.prompts[r] for r in rows], ids=[self.ids[r] for r in rows], shuffle=shuffle,
            rows=None if self.rows is None else [self.rows[r] for r in rows])
        return part(order[n:], True), part(order[:n], False)

    def batches(self, start: int = 0) -> Iterator[dict]:
        index = start
        while True:
            yield self.batch(index)
            index += 1


def build_prompt_set(table: Table, tokenizer, *, batch_size: int, max_prompt_length: int,
                     pad_to_multiple: int = 32, seed: int = 0, on_invalid: str = "raise",
                     use_chat_template: bool = True, system: str | None = None, limit: int = 0) -> PromptSet:
    prompts, rows, report = parse_prompt_rows(table, on_invalid)
    if limit:
        prompts, rows = prompts[:limit], rows[:limit]
    ids = render_for_policy(tokenizer, prompts, use_chat_template=use_chat_template, system=system)
    keep = [i for i, x in enumerate(ids) if len(x) <= max_prompt_length]
    report.filtered["too_long"] = len(ids) - len(keep)
    report.kept = len(keep)
    if len(keep) < batch_size:
        raise ValueError(_no_batch(report, sorted(len(x) for x in ids), batch_size, max_prompt_length, on_invalid))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PromptSet([prompts[i] for i in keep], [ids[i] for i in keep], report, int(pad_id or 0), batch_size,
                     pad_to_multiple, seed, rows=[rows[i] for i in keep])


def _no_batch(report: DataReport, lengths: list[int], batch_size: int, max_prompt_length: int,
              on_invalid: str) -> str:
    """Why fewer than `batch_size` prompts are left (`lengths`: the rendered length of every parsed prompt)."""
    kept = report.kept
    values = {"max_prompt_length": max_prompt_length, "on_invalid": "error" if on_invalid == "raise" else on_invalid}
    if report.filtered["too_long"] and len(lengths) >= batch_size:
        fix = (f"set data.max_prompt_length to at least {lengths[batch_size - 1]} for one batch (the median prompt "
               f"is {lengths[len(lengths) // 2]} tokens)")
    elif not lengths and sum(report.invalid.values()):
        fix = "set data.on_invalid=error to see the first bad row"
    elif kept:
        fix = f"set ppo.rollout_batch_size to at most {kept}, or give more prompts"
    else:
        fix = "give more prompts"
    return (f"{report.source}: {kept} usable prompts make no batch of ppo.rollout_batch_size={batch_size}: "
            f"{losses(report, 'prompts', NAMES, values)}; {fix}")
