"""The preference optimiser's data: the reward trainer's comparison data (`rm.data`, every shape, the same
validation) in batches that also carry the reference's cached log-probs, and KTO's mismatched sequences.

Objectives, by `loss.type`:
    pairs     sigmoid, robust, hinge, ipo, simpo: comparisons (ranked lists and ratings expanded into pairs)
    listwise  ranked lists kept whole (Plackett-Luce DPO)
    kto       rated responses: rated above `loss.kto_threshold` is desirable, else undesirable

Batch keys beyond `data.batching`'s: the cached reference log-probs once `reference` is set
(`ref_chosen_B`, `ref_rejected_B` for pairs; `ref_BxK` for lists; `ref_B`, `ref_kl_B` for KTO). KTO batches
are ids_BxT, mask_BxT, len_B (the rated response), kl_ids_BxT, kl_mask_BxT, kl_len_B (the row's prompt
with another row's response, for KTO's KL reference point), desirable_B and weight_B.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import numpy as np

from jaxrlhf.data import shared_prompt
from jaxrlhf.data.batching import Batcher, ListBatcher, PairBatcher
from jaxrlhf.data.tokenize import Encoded, RatedData, special_tokens
from jaxrlhf.ops.preference import PAIR_LOSSES
from jaxrlhf.rm import data as rm_data

LOSSES = (*PAIR_LOSSES, "listwise", "kto")


def objective_of(loss_type: str) -> str:
    if loss_type not in LOSSES:
        raise ValueError(f"loss.type must be one of {LOSSES}, got {loss_type!r}")
    return {"listwise": "listwise", "kto": "kto"}.get(loss_type, "pairs")


class PrefPairBatcher(PairBatcher):
    reference: dict[str, np.ndarray] | None = None  # {"chosen": [N], "rejected": [N]} once cached

    def _make(self, rows, weight, width):
        return self._with_reference(super()._make(rows, weight, width), rows)

    def _with_reference(self, batch: dict, rows: np.ndarray) -> dict:
        if self.reference is not None:
            batch["ref_chosen_B"] = self.reference["chosen"][rows].astype(np.float32)
            batch["ref_rejected_B"] = self.reference["rejected"][rows].astype(np.float32)
        return batch

    def scored_index(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Where each reference output of a batch of `rows` goes in `reference`: the rows themselves."""
        return {"chosen": rows, "rejected": rows}


class SharedPromptPairBatcher(PrefPairBatcher):
    """PrefPairBatcher's pairs with each pair one row, its prompt once (`data.shared_prompt`'s layout and
    keys, with margin_B, weight_B, chosen_len_B, rejected_len_B and the cached reference as before). Rows
    are sorted by that row's length, and T is capped at twice `max_length`."""

    def __init__(self, data, batch_size: int, *, suffix_len: int = 0, **kwargs):
        self.data, self.suffix_len = data, int(suffix_len)
        encs = (data.chosen, data.rejected)
        lengths = np.fromiter((shared_prompt.group_length(encs, (i, i)) for i in range(len(data.chosen))),
                              np.int64, len(data.chosen))
        Batcher.__init__(self, lengths, 2 * data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        return int(self.lengths[rows].sum()), batch * width

    def _make(self, rows, weight, width):
        d = self.data
        groups = [shared_prompt.split_group((d.chosen, d.rejected), (i, i), self.suffix_len) for i in rows]
        batch = shared_prompt.pack_rows(groups, width, d.pad_id)
        batch.update(margin_B=d.margin[rows].astype(np.float32), weight_B=weight,
                     chosen_len_B=d.chosen.response_len[rows].astype(np.int32),
                     rejected_len_B=d.rejected.response_len[rows].astype(np.int32))
        return self._with_reference(batch, rows)


class PrefListBatcher(ListBatcher):
    reference: dict[str, np.ndarray] | None = None  # {"seqs": [responses]} once cached

    def _make(self, rows, weight, width):
        return self._with_reference(super()._make(rows, weight, width), rows)

    def _with_reference(self, batch: dict, rows: np.ndarray) -> dict:
        if self.reference is not None:
            batch["ref_BxK"] = self.reference["seqs"][self._slots(rows)[0]].astype(np.float32)
        return batch

    def scored_index(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        seq, valid = self._slots(rows)
        return {"seqs": np.where(valid, seq, -1)}


@dataclasses.dataclass
class KTOData:
    """Rated responses as desirable or not, each with a mismatched (prompt, response) sequence."""

    seqs: Encoded
    kl: Encoded  # row i: the prompt of row i with the response of another row
    desirable: np.ndarray  # bool [N]
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.seqs)


def mismatched(seqs: Encoded, prefix_len: int, max_length: int, seed: int) -> Encoded:
    """Row i's prefix specials and prompt followed by the response and closing tokens of row `partner[i]`,
    partners a random cyclic shift (so no row is its own). Too long: the prompt loses its start."""
    n = len(seqs)
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, np.int64)
    partner[order] = np.roll(order, -1)
    pieces, prompt_len, response_len = [], np.zeros(n, np.int32), np.zeros(n, np.int32)
    for i in range(n):
        own, other = seqs.sequence(i), seqs.sequence(partner[i])
        j = int(partner[i])
        prefix, prompt = own[:prefix_len], own[prefix_len:seqs.prompt_len[i]]
        tail = other[seqs.prompt_len[j]:]  # response + closing specials
        room = max_length - len(prefix) - len(tail)
        prompt = prompt[len(prompt) - max(room, 0):] if room < len(prompt) else prompt
        pieces.append(np.concatenate([prefix, prompt, tail]).astype(np.int32)[:max_length])
        prompt_len[i] = len(prefix) + len(prompt)
        response_len[i] = seqs.response_len[j]
    lengths = np.fromiter((len(p) for p in pieces), np.int64, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    return Encoded(ids, offsets, prompt_len, response_len, np.zeros(n, bool))


def kto_data(rated: RatedData, threshold: float, prefix_len: int, seed: int, where: str) -> KTOData:
    desirable = rated.target > threshold
    if desirable.all() or not desirable.any():
        kind = "above" if desirable.all() else "at or below"
        raise ValueError(f"every {where} rating is {kind} loss.kto_threshold={threshold} (ratings "
                         f"{rated.target.min():g} to {rated.target.max():g}): KTO needs desirable and undesirable "
                         f"responses; set loss.kto_threshold between them")
    return KTOData(rated.seqs, mismatched(rated.seqs, prefix_len, rated.max_length, seed), desirable,
                   rated.pad_id, rated.max_length)


class KTOBatcher(Batcher):
    reference: dict[str, np.ndarray] | None = None  # {"seqs": [N], "kl": [N]} once cached

    def __init__(self, data: KTOData, batch_size: int, **kwargs):
        self.data = data
        super().__init__(np.maximum(data.seqs.lengths, data.kl.lengths), data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        real = self.data.seqs.lengths[rows].sum() + self.data.kl.lengths[rows].sum()
        return int(real), 2 * batch * width

    def _make(self, rows, weight, width):
        d = self.data
        ids, mask = self._fill(d.seqs, rows, width, d.pad_id)
        kl_ids, kl_mask = self._fill(d.kl, rows, width, d.pad_id)
        batch = {"ids_BxT": ids, "mask_BxT": mask, "len_B": d.seqs.response_len[rows].astype(np.int32),
                 "kl_ids_BxT": kl_ids, "kl_mask_BxT": kl_mask, "kl_len_B": d.kl.response_len[rows].astype(np.int32),
                 "desirable_B": d.desirable[rows].astype(np.int32), "weight_B": weight}
        if self.reference is not None:
            batch["ref_B"] = self.reference["seqs"][rows].astype(np.float32)
            batch["ref_kl_B"] = self.reference["kl"][rows].astype(np.float32)
        return batch

    def scored_index(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return {"seqs": rows, "kl": rows}


class SharedPromptListBatcher(PrefListBatcher):
    """PrefListBatcher's lists with each list one row, its prompt once (`data.shared_prompt`'s layout and
    keys, response k the k-th slot, an empty slot no tokens; with ranks_BxK, valid_BxK, weight_B, len_BxK
    and the cached reference). T is capped at K times `max_length`."""

    def __init__(self, data, batch_size: int, *, suffix_len: int = 0, **kwargs):
        self.data, self.suffix_len = data, int(suffix_len)
        sizes = np.diff(data.list_offsets)
        lengths = np.fromiter((shared_prompt.group_length([data.seqs] * int(n), range(int(s), int(s + n)))
                               for s, n in zip(data.list_offsets[:-1], sizes)), np.int64, len(sizes))
        Batcher.__init__(self, lengths, data.max_k * data.max_length, batch_size, **kwargs)

    def _real_and_total(self, rows, batch, width):
        return int(self.lengths[rows].sum()), batch * width

    def _make(self, rows, weight, width):
        d = self.data
        seq, valid = self._slots(rows)
        groups = [shared_prompt.split_group([d.seqs] * int(v.sum()), s[v], self.suffix_len)
                  for s, v in zip(seq, valid)]
        batch = shared_prompt.pack_rows(groups, width, d.pad_id)
        batch.update(ranks_BxK=np.where(valid, d.ranks[seq], d.max_k).astype(np.int32),
                     valid_BxK=valid.astype(np.int32), weight_B=weight,
                     len_BxK=d.seqs.response_len[seq].astype(np.int32))
        return self._with_reference(batch, rows)


_BATCHERS = {"pairs": PrefPairBatcher, "listwise": PrefListBatcher, "kto": KTOBatcher}
_SHARED_BATCHERS = {"pairs": SharedPromptPairBatcher, "listwise": SharedPromptListBatcher}
_NEEDS = {"listwise": ("ranked", "ranked lists (data.format=ranked: prompt, responses, ranks)",
                       "for two responses a list is a pair: use loss.type=sigmoid, the same loss"),
          "kto": ("ratings", "rated responses (data.format=ratings: prompt, response, rating)",
                  "use a pair loss (loss.type=sigmoid)")}


@dataclasses.dataclass
class PrefData:
    objective: str
    train: Any
    held_out: Any
    report: Any
    train_batcher: Batcher
    eval_batch_size: int
    batcher_kwargs: dict
    suffix_len: int  # closing specials after each response (not scored)

    def batcher(self, data, shuffle: bool = False) -> Batcher:
        """Batches of `data` (train or held out) at the evaluation batch size, in a fixed order."""
        return type(self.train_batcher)(data, self.eval_batch_size, **dict(self.batcher_kwargs, shuffle=shuffle))

    def describe(self) -> str:
        held = len(self.held_out) if self.held_out is not None else 0
        return (f"{self.objective}: {len(self.train)} train, {held} held out; {self.report}; "
                f"padding efficiency {self.train_batcher.padding_efficiency(0):.2f}")


def _rm_view(config, objective: str):
    """The config as the reward trainer's data loader reads it: the objective picks the loader."""
    view = copy.deepcopy(config)
    with view.unlocked():
        view.data.ranked_mode = "plackett_luce" if objective == "listwise" else "pairs"
        view.data.ratings_mode = "regression" if objective == "kto" else "pairs"
    return view


def prepare(config, tokenizer, max_positions: int | None = None) -> PrefData:
    """Loads, validates, splits (by prompt) and tokenises the data of `config.data` for `config.loss.type`;
    the wrong data shape for the loss is a one-line `ValueError`."""
    objective = objective_of(config.loss.type)
    if objective in _NEEDS:
        fmt, what, hint = _NEEDS[objective]
        for source in filter(None, (config.data.source, config.data.eval_source)):
            found = rm_data.source_format(source, config.data)
            if found != fmt:
                raise ValueError(f"loss.type={config.loss.type} needs {what}; {source} holds {found} data: {hint}")
    # One prompt, two (or K) responses: a prompt too long is cut alike for all of them.
    rm = rm_data.prepare(_rm_view(config, objective), tokenizer, is_decoder=True, max_positions=max_positions,
                         shared_prompt=True)
    specials = special_tokens(tokenizer, bool(config.data.append_eos))
    train, held = rm.train, rm.held_out
    if objective == "kto":
        threshold, prefix = config.loss.kto_threshold, len(specials.prefix)
        train = kto_data(train, threshold, prefix, config.data.split_seed, "training")
        held = None if held is None else kto_data(held, threshold, prefix, config.data.split_seed + 1, "held-out")
    d = config.data
    kwargs = dict(rm.batcher_kwargs)
    batcher_cls = _BATCHERS[objective]
    if d.get("shared_prompt", False) and objective in _SHARED_BATCHERS:
        batcher_cls = _SHARED_BATCHERS[objective]
        kwargs["suffix_len"] = len(specials.suffix)
    train_batcher = batcher_cls(train, d.batch_size, seed=config.seed, bucket_window=d.bucket_window, **kwargs)
    return PrefData(objective, train, held, rm.report, train_batcher, rm.eval_batch_size, kwargs,
                    len(specials.suffix))
