"""The reward trainer's view of `jaxrlhf.data`: config block in, batchers out."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Iterator

import jax

from jaxrlhf.data import PairBatcher, PairData, load_pair_data
from jaxrlhf.data.errors import DataReport


@dataclasses.dataclass
class RMData:
    train: PairData
    held_out: PairData | None
    report: DataReport
    train_batcher: PairBatcher
    eval_batch_size: int
    batcher_kwargs: dict

    def eval_batches(self) -> Iterator[dict]:
        return self._ordered(self.held_out)

    def train_sample_batches(self, max_pairs: int) -> Iterator[dict]:
        """A seeded random sample of about `max_pairs` training pairs (all of them if 0)."""
        batches = self._ordered(self.train, shuffle=bool(max_pairs))
        return itertools.islice(batches, -(-max_pairs // self.eval_batch_size)) if max_pairs else batches

    def _ordered(self, data: PairData | None, shuffle: bool = False) -> Iterator[dict]:
        if data is None:
            return iter(())
        kw = dict(self.batcher_kwargs, shuffle=shuffle)
        return PairBatcher(data, self.eval_batch_size, **kw).epoch(0)

    def describe(self) -> str:
        eff = self.train_batcher.padding_efficiency(0)
        held = len(self.held_out) if self.held_out is not None else 0
        return f"{len(self.train)} train pairs, {held} held out; {self.report}; padding efficiency {eff:.2f}"


def _load_kwargs(data_cfg) -> dict:
    kw = dict(format=data_cfg.format, on_invalid="raise" if data_cfg.on_invalid == "error" else data_cfg.on_invalid,
              min_agreement=data_cfg.min_agreement or None, split=data_cfg.split)
    if data_cfg.subset:
        kw["config"] = data_cfg.subset
    if data_cfg.limit:
        kw["max_rows"] = data_cfg.limit
    return kw


def prepare(config, tokenizer, *, is_decoder: bool) -> RMData:
    """Loads, validates, tokenises and splits the comparisons named in `config.data`."""
    d = config.data
    if d.on_invalid not in ("error", "skip"):
        raise ValueError(f"data.on_invalid must be 'error' or 'skip', got {d.on_invalid!r}")
    append_eos = bool(d.append_eos) and is_decoder
    held_out = 0 if d.eval_source else d.eval_size
    train, held, report = load_pair_data(d.source, tokenizer, d.max_length, held_out=held_out, seed=config.seed,
                                         append_eos=append_eos, **_load_kwargs(d))
    if d.eval_source:
        held, _, _ = load_pair_data(d.eval_source, tokenizer, d.max_length, append_eos=append_eos,
                                    **_load_kwargs(d))
    procs = dict(process_index=jax.process_index(), process_count=jax.process_count())
    batcher_kwargs = dict(pad_to_multiple=d.pad_to_multiple, padding_side=d.padding_side, **procs)
    train_batcher = PairBatcher(train, d.batch_size, seed=config.seed, **batcher_kwargs)
    eval_bs = max(d.eval_batch_size // procs["process_count"], 1) * procs["process_count"]
    return RMData(train, held, report, train_batcher, eval_bs, batcher_kwargs)
