"""Tokenising prompt/response texts with the model's tokenizer into ragged token sequences.

A sequence is  prefix specials + prompt + response (+ EOS) + suffix specials,  where the specials are
whatever the tokenizer itself adds around a text ([CLS] ... [SEP] for BERT, BOS for Llama, nothing for
GPT-2), found by encoding a marker text with and without them. EOS is appended for decoders (tokenizers
that add no suffix but have an eos token) unless `append_eos=False`, and not twice when a chat-rendered
response already ends in it. Prompt and response are tokenised separately, so their token counts are
exact. Too long a sequence keeps the END of the response: the prompt is cut from the left first, then
the start of the response; special tokens and the EOS always survive.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

_MARKER = "hello"
_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    prefix: tuple[int, ...]
    suffix: tuple[int, ...]
    eos_id: int | None  # appended after each response, or None
    pad_id: int
    prefix_text: str  # the prefix as text, stripped from prompts a chat template already began with

    @property
    def num_fixed(self) -> int:
        return len(self.prefix) + len(self.suffix)


def special_tokens(tokenizer, append_eos: bool | None = None) -> SpecialTokens:
    """What `tokenizer` adds around a text, plus the EOS policy and the pad id."""
    bare = list(_ids(tokenizer, [_MARKER], add_special_tokens=False)[0])
    full = list(_ids(tokenizer, [_MARKER], add_special_tokens=True)[0])
    at = next((i for i in range(len(full) - len(bare) + 1) if full[i:i + len(bare)] == bare), None)
    if not bare or at is None:
        raise ValueError(f"cannot locate the special tokens {type(tokenizer).__name__} adds")
    prefix, suffix = tuple(full[:at]), tuple(full[at + len(bare):])
    eos = getattr(tokenizer, "eos_token_id", None)
    if append_eos is None:
        append_eos = eos is not None and not suffix
    if append_eos and eos is None:
        raise ValueError("append_eos=True but the tokenizer has no eos_token")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos if eos is not None else 0
    prefix_text = tokenizer.decode(list(prefix)) if prefix else ""
    return SpecialTokens(prefix, suffix, eos if append_eos else None, int(pad), prefix_text)


def _ids(tokenizer, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
    out: list[list[int]] = []
    for start in range(0, len(texts), _CHUNK):
        enc = tokenizer(list(texts[start:start + _CHUNK]), add_special_tokens=add_special_tokens,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        out.extend(enc["input_ids"])
    return out


@dataclasses.dataclass
class Encoded:
    """N ragged token sequences stored flat.

    ids[offsets[i]:offsets[i+1]] is sequence i; prompt_len[i] counts the tokens before its response
    (special prefix + prompt), response_len[i] the response tokens (with an appended EOS).
    full_length and full_response_len are the same counts before truncation (None when unknown).
    """

    ids: np.ndarray  # int32 [total]
    offsets: np.ndarray  # int64 [N + 1]
    prompt_len: np.ndarray  # int32 [N]
    response_len: np.ndarray  # int32 [N]
    truncated: np.ndarray  # bool [N]
    full_length: np.ndarray | None = None  # int32 [N]: the whole sequence, untruncated
    full_response_len: np.ndarray | None = None  # int32 [N]: the whole response (+ EOS), untruncated

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int32)

    def sequence(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]

    @property
    def response_cut(self) -> np.ndarray:
        """bool [N]: the response lost its start to truncation (and so the prompt is gone entirely)."""
        if self.full_response_len is None:
            return np.zeros(len(self), bool)
        return self.response_len < self.full_response_len


class TextEncoder:
    """Encodes (prompt, response) texts into `Encoded`; repeated prompts are tokenised once."""

    def __init__(self, tokenizer, max_length: int, append_eos: bool | None = None):
        self.tokenizer = tokenizer
        self.special = special_tokens(tokenizer, append_eos)
        self.max_length = int(max_length)
        if self.max_length < self.special.num_fixed + 2:
            raise ValueError(f"max_length={max_length} leaves no room for text")
        self._prompt_cache: dict[str, list[int]] = {}

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return _ids(self.tokenizer, texts)

    def _prompt_ids(self, prompts: Sequence[str]) -> list[list[int]]:
        strip = self.special.prefix_text
        todo = [p for p in dict.fromkeys(prompts) if p not in self._prompt_cache]
        texts = [p[len(strip):] if strip and p.startswith(strip) else p for p in todo]
        for p, ids in zip(todo, self.token_ids(texts)):
            self._prompt_cache[p] = ids
        return [self._prompt_cache[p] for p in prompts]

    def response_ids(self, responses: Sequence[str]) -> list[list[int]]:
        """Each response's tokens with the EOS `encode` appends."""
        eos = self.special.eos_id
        return [r + [eos] if eos is not None and (not r or r[-1] != eos) else r for r in self.token_ids(responses)]

    def shared_prompt_room(self, response_groups: Sequence[Sequence[str]]) -> np.ndarray:
        """Per group of responses to one prompt, the prompt tokens that fit beside the longest of them: passed
        to `encode` as `prompt_room`, every response of a group keeps the same (cut) prompt."""
        sizes = np.fromiter((len(g) for g in response_groups), np.int64, len(response_groups))
        lengths = np.fromiter((len(r) for r in self.response_ids([r for g in response_groups for r in g])), np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        longest = np.maximum.reduceat(lengths, starts) if len(lengths) else np.zeros(0, np.int64)
        return np.maximum(self.max_length - self.special.num_fixed - longest, 0)

    def encode(self, prompts: Sequence[str], responses: Sequence[str], prompt_room=None) -> Encoded:
        """`prompt_room[i]`: at most that many prompt tokens for row i (its start is cut), before the usual
        fitting (`shared_prompt_room`)."""
        if len(prompts) != len(responses):
            raise ValueError("prompts and responses differ in number")
        sp = self.special
        p_ids, r_ids = self._prompt_ids(prompts), self.token_ids(responses)
        full_prompt_len = [len(p) for p in p_ids]
        if prompt_room is not None:
            p_ids = [p[len(p) - min(len(p), int(room)):] for p, room in zip(p_ids, prompt_room)]
        n = len(prompts)
        prompt_len = np.zeros(n, np.int32)
        response_len = np.zeros(n, np.int32)
        truncated = np.zeros(n, bool)
        full_length = np.zeros(n, np.int32)
        full_response_len = np.zeros(n, np.int32)
        pieces = []
        for i, (p, r) in enumerate(zip(p_ids, r_ids)):
            eos = [sp.eos_id] if sp.eos_id is not None and (not r or r[-1] != sp.eos_id) else []
            budget = self.max_length - sp.num_fixed - len(eos)
            full_length[i] = sp.num_fixed + full_prompt_len[i] + len(r) + len(eos)
            truncated[i] = len(p) < full_prompt_len[i]
            full_response_len[i] = len(r) + len(eos)
            if len(p) + len(r) > budget:
                truncated[i] = True
                if len(r) >= budget:
                    p, r = [], r[len(r) - budget:]
                else:
                    p = p[len(p) - (budget - len(r)):]
            pieces.append(np.asarray(list(sp.prefix) + p + r + eos + list(sp.suffix), np.int32))
            prompt_len[i] = len(sp.prefix) + len(p)
            response_len[i] = len(r) + len(eos)
        lengths = np.fromiter((len(x) for x in pieces), np.int64, n)
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
        return Encoded(ids.astype(np.int32), offsets, prompt_len, response_len, truncated, full_length,
                       full_response_len)


@dataclasses.dataclass
class PairData:
    """Tokenised comparisons: row i of `chosen` beats row i of `rejected`."""

    chosen: Encoded
    rejected: Encoded
    margin: np.ndarray  # float32 [N]
    group: np.ndarray  # int32 [N], index of the prompt (pairs sharing a prompt share it)
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.chosen)


@dataclasses.dataclass
class ListData:
    """Tokenised ranked lists: list i is seqs rows list_offsets[i]:list_offsets[i+1]."""

    seqs: Encoded
    list_offsets: np.ndarray  # int64 [N + 1]
    ranks: np.ndarray  # int32 [total responses], 0 = best
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.list_offsets) - 1

    @property
    def max_k(self) -> int:
        return int(np.diff(self.list_offsets).max()) if len(self) else 0


@dataclasses.dataclass
class RatedData:
    """Tokenised (prompt + response, rating) rows for reward regression."""

    seqs: Encoded
    target: np.ndarray  # float32 [N]
    pad_id: int
    max_length: int

    def __len__(self) -> int:
        return len(self.seqs)


def _groups(prompts: Sequence[str]) -> np.ndarray:
    index: dict[str, int] = {}
    return np.asarray([index.setdefault(p, len(index)) for p in prompts], np.int32)


def tokenize_pairs(pairs, tokenizer, max_length: int, append_eos: bool | None = None,
                   shared_prompt: bool = False) -> PairData:
    """Tokenises `Pair` records (see module doc for the sequence layout and truncation). `shared_prompt`: when
    the prompt must be cut, chosen and rejected keep the same part of it (what fits beside the longer
    response), as DPO compares the two responses to one prompt; else each keeps what fits beside it."""
    enc = TextEncoder(tokenizer, max_length, append_eos)
    prompts = [p.prompt for p in pairs]
    room = enc.shared_prompt_room([(p.chosen, p.rejected) for p in pairs]) if shared_prompt else None
    chosen = enc.encode(prompts, [p.chosen for p in pairs], room)
    rejected = enc.encode(prompts, [p.rejected for p in pairs], room)
    margin = np.asarray([p.margin for p in pairs], np.float32)
    return PairData(chosen, rejected, margin, _groups(prompts), enc.special.pad_id, enc.max_length)


def tokenize_lists(lists, tokenizer, max_length: int, append_eos: bool | None = None,
                   shared_prompt: bool = False) -> ListData:
    """Tokenises `RankedList` records, every response after its list's prompt (`shared_prompt` as for
    `tokenize_pairs`: a list's responses keep the same part of a prompt that must be cut)."""
    enc = TextEncoder(tokenizer, max_length, append_eos)
    prompts = [lst.prompt for lst in lists for _ in lst.responses]
    room = None
    if shared_prompt:
        room = np.repeat(enc.shared_prompt_room([lst.responses for lst in lists]), [len(x.responses) for x in lists])
    seqs = enc.encode(prompts, [r for lst in lists for r in lst.responses], room)
    sizes = np.asarray([len(lst.responses) for lst in lists], np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    ranks = np.asarray([k for lst in lists for k in lst.ranks], np.int32)
    return ListData(seqs, offsets, ranks, enc.special.pad_id, enc.max_length)


def tokenize_rated(rated, tokenizer, max_length: int, append_eos: bool | None = None) -> RatedData:
    """Tokenises `Rated` records for regression on the rating."""
    enc = TextEncoder(tokenizer, max_length, append_eos)
    seqs = enc.encode([r.prompt for r in rated], [r.response for r in rated])
    target = np.asarray([r.rating for r in rated], np.float32)
    return RatedData(seqs, target, enc.special.pad_id, enc.max_length)
