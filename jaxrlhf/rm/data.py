"""The reward trainer's view of `jaxrlhf.data`: config block in, batchers and evaluation out.

Three objectives, chosen by the data config:
    pairs          Bradley-Terry on comparisons (ranked lists and ratings expanded into pairs)
    plackett_luce  ranked lists kept whole (`data.ranked_mode = "plackett_luce"`)
    regression     scalar ratings fitted directly (`data.ratings_mode = "regression"`)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import jax

from jaxrlhf.data import (
    ListBatcher,
    PairBatcher,
    RegressionBatcher,
    detect_format,
    load_list_data,
    load_pair_data,
    load_rated_data,
    load_table,
)
from jaxrlhf.data.errors import DataReport, row_policy
from jaxrlhf.rm.evaluate import score_lists, score_pairs, score_rated, summarise

_LOADERS = {"pairs": (load_pair_data, PairBatcher), "plackett_luce": (load_list_data, ListBatcher),
            "regression": (load_rated_data, RegressionBatcher)}
# What the config calls each loader option, for the messages of data that leaves nothing to train.
NAMES = {"held_out": "data.eval_size", "max_length": "data.max_length", "min_agreement": "data.min_agreement",
         "on_invalid": "data.on_invalid", "ratings_mode": "data.ratings_mode", "eval_source": "data.eval_source",
         "limit": "data.limit"}


@dataclasses.dataclass
class RMData:
    objective: str
    train: Any
    held_out: Any
    held_out_lists: Any  # ranked held-out lists in "pairs" mode, for Kendall's tau
    report: DataReport
    train_batcher: Any
    eval_batch_size: int
    batcher_kwargs: dict

    def _batches(self, data, shuffle: bool = False, batcher=None) -> Iterator[dict]:
        if data is None:
            return iter(())
        batcher = batcher or _LOADERS[self.objective][1]
        return batcher(data, self.eval_batch_size, **dict(self.batcher_kwargs, shuffle=shuffle)).epoch(0)

    def held_out_batches(self) -> Iterator[dict]:
        """The held-out data in the batches `evaluate` scores (for scoring it with another framework)."""
        return self._batches(self.held_out)

    def evaluate(self, pair_fn: Callable, reward_fn: Callable, mesh, *, sample: int = 0,
                 on_train: bool = False) -> tuple[dict, dict | None]:
        """(summary, pair scores or None) on the held-out data, or a sample of the training data.

        pair_fn(batch) -> (r_chosen, r_rejected); reward_fn(ids, mask, response_len) -> rewards.
        """
        data = self.train if on_train else self.held_out
        batches = self._batches(data, shuffle=bool(sample))
        if sample:
            batches = itertools.islice(batches, -(-sample // self.eval_batch_size))
        if self.objective == "regression":
            return score_rated(reward_fn, batches, mesh), None
        if self.objective == "plackett_luce":
            return score_lists(reward_fn, batches, mesh), None
        scores = score_pairs(pair_fn, batches, mesh)
        summary = summarise(scores)
        if self.held_out_lists is not None and not on_train:
            summary["kendall_tau"] = score_lists(reward_fn, self._batches(self.held_out_lists, batcher=ListBatcher),
                                                 mesh)["kendall_tau"]
        return summary, scores

    def describe(self) -> str:
        eff = self.train_batcher.padding_efficiency(0)
        held = len(self.held_out) if self.held_out is not None else 0
        return (f"{self.objective}: {len(self.train)} train, {held} held out; {self.report}; "
                f"padding efficiency {eff:.2f}")


def _load_kwargs(data_cfg) -> dict:
    if data_cfg.limit < 0:
        raise ValueError(f"data.limit={data_cfg.limit} must be >= 0 (0: every row)")
    kw = dict(format=data_cfg.format, on_invalid=row_policy(data_cfg.on_invalid),
              min_agreement=data_cfg.min_agreement or None, split=data_cfg.split)
    if data_cfg.subset:
        kw["config"] = data_cfg.subset
    if data_cfg.limit:
        kw["max_rows"] = data_cfg.limit
    if data_cfg.get("chat_template", False):  # train_dpo's key
        kw["chat_template"] = True
    return kw


def objective_of(data_cfg) -> str:
    if data_cfg.ranked_mode not in ("pairs", "plackett_luce"):
        raise ValueError(f"data.ranked_mode must be 'pairs' or 'plackett_luce', got {data_cfg.ranked_mode!r}")
    if data_cfg.ratings_mode not in ("pairs", "regression"):
        raise ValueError(f"data.ratings_mode must be 'pairs' or 'regression', got {data_cfg.ratings_mode!r}")
    if data_cfg.ranked_mode == "plackett_luce":
        return "plackett_luce"
    return "regression" if data_cfg.ratings_mode == "regression" else "pairs"


def source_format(source: str, data_cfg) -> str:
    """`data.format`, or the format detected from the source's columns when it is auto."""
    if data_cfg.format != "auto":
        return data_cfg.format
    kw = {k: v for k, v in _load_kwargs(data_cfg).items() if k in ("split", "config", "max_rows")}
    return detect_format(load_table(source, **kw))


def _is_ranked(source: str, data_cfg) -> bool:
    return source_format(source, data_cfg) == "ranked"


def prepare(config, tokenizer, *, is_decoder: bool, max_positions: int | None = None,
            shared_prompt: bool = False) -> RMData:
    """Loads, validates, tokenises and splits the data named in `config.data`; `shared_prompt`: the
    responses to one prompt keep the same part of it when it must be cut (`data.tokenize.tokenize_pairs`).

    Data that leaves nothing sensible to train is a one-line `ValueError` naming the config keys to change
    (`jaxrlhf.data.usable`); max_positions: the model's limit for a suggested data.max_length (default: the
    tokenizer's `model_max_length` when it states one).
    """
    d = config.data
    if d.on_invalid not in ("error", "skip"):
        raise ValueError(f"data.on_invalid must be 'error' or 'skip', got {d.on_invalid!r}")
    objective = objective_of(d)
    load, batcher_cls = _LOADERS[objective]
    common = dict(append_eos=bool(d.append_eos) and is_decoder, names=NAMES, max_positions=max_positions,
                  **_load_kwargs(d))
    if objective != "pairs":
        common.pop("format")  # the list / rating loaders pick their format
    if objective != "regression":
        common["shared_prompt"] = shared_prompt
    held_out = 0 if d.eval_source else d.eval_size
    train, held, report = load(d.source, tokenizer, d.max_length, held_out=held_out, seed=d.split_seed, **common)
    eval_source, eval_held = (d.eval_source, 0) if d.eval_source else (d.source, held_out)
    if d.eval_source:
        held, _, _ = load(d.eval_source, tokenizer, d.max_length, **common)
    held_lists = None
    if objective == "pairs" and _is_ranked(eval_source, d):
        kw = {k: v for k, v in common.items() if k not in ("format", "shared_prompt")}
        lists = load_list_data(eval_source, tokenizer, d.max_length, held_out=eval_held, seed=d.split_seed, **kw)
        held_lists = lists[1] if eval_held else lists[0]
    procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batcher_kwargs = dict(pad_to_multiple=d.pad_to_multiple, padding_side=d.padding_side, **procs)
    train_batcher = batcher_cls(train, d.batch_size, seed=config.seed, bucket_window=d.bucket_window,
                                **batcher_kwargs)
    eval_bs = max(d.eval_batch_size // procs["process_count"], 1) * procs["process_count"]
    return RMData(objective, train, held, held_lists, report, train_batcher, eval_bs, batcher_kwargs)
