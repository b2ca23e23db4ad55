"""Rows that hold a prompt once, followed by each of its responses: a comparison's chosen and rejected (or a
ranked list's K responses) in one sequence instead of K.

Row layout (slots left to right, right-padded):  prompt | response 1 | ... | response K | padding.

Batch keys, every one [B, T] int32:
  shared_ids_BxT     the tokens
  shared_part_BxT    -1 padding, 0 the prompt, k >= 1 response k (with its closing specials)
  shared_pos_BxT     the position each token has in its own sequence (prompt + that response alone)
  shared_source_BxT  the slot whose hidden state predicts this token: the previous slot, or for a response's
                     first token the prompt's last one (0 where nothing is scored)
  shared_scored_BxT  1 on the response tokens a preference loss scores (not the closing specials)

A token attends to the prompt and to its own response only (`models.kv_cache.attention_inputs`'s
`segments_BxT` = shared_part_BxT), at the positions it would have alone, so each response's log-probs are those of
its own sequence, and a forward and backward cost P + sum(N_k) tokens instead of K*P + sum(N_k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxrlhf.data.tokenize import Encoded

KEYS = ("shared_ids_BxT", "shared_part_BxT", "shared_pos_BxT", "shared_source_BxT", "shared_scored_BxT")


def split_group(encs: Sequence[Encoded], index: Sequence[int], suffix_len: int):
    """(prompt, [response + closing specials], [scored count]) of sequences `index[k]` of `encs[k]`, which
    must share their prompt (the same cut of it: `tokenize`'s `shared_prompt`)."""
    prompt = None
    parts, scored = [], []
    for enc, i in zip(encs, index):
        seq, p = enc.sequence(int(i)), int(enc.prompt_len[i])
        if prompt is None:
            prompt = seq[:p]
        elif not np.array_equal(prompt, seq[:p]):
            raise ValueError(f"sequence {int(i)}'s responses do not share their prompt tokens: tokenise with "
                             f"shared_prompt=True (one cut of the prompt for all of them)")
        parts.append(seq[p:])
        scored.append(min(int(enc.response_len[i]), max(len(seq) - p - suffix_len, 0)))
    return prompt, parts, scored


def group_length(encs: Sequence[Encoded], index: Sequence[int]) -> int:
    """Slots the row of one group takes: the prompt once plus every response."""
    return int(encs[0].prompt_len[index[0]]) + sum(int(e.lengths[i] - e.prompt_len[i]) for e, i in zip(encs, index))


def pack_rows(groups: Sequence[tuple[np.ndarray, Sequence[np.ndarray], Sequence[int]]], width: int,
              pad_id: int) -> dict[str, np.ndarray]:
    """The batch keys of the module doc for `groups` of (prompt, parts, scored counts), one row each."""
    B = len(groups)
    out = {k: np.zeros((B, width), np.int32) for k in KEYS}
    out["shared_ids_BxT"][:] = pad_id
    out["shared_part_BxT"][:] = -1
    for b, (prompt, parts, scored) in enumerate(groups):
        P = len(prompt)
        end = P + sum(len(x) for x in parts)
        if end > width:
            raise ValueError(f"a group of {end} tokens does not fit a row of {width}")
        out["shared_ids_BxT"][b, :P] = prompt
        out["shared_part_BxT"][b, :P] = 0
        out["shared_pos_BxT"][b, :P] = np.arange(P)
        out["shared_source_BxT"][b, 1:P] = np.arange(P - 1)
        # A response's first token is predicted by the prompt's last one; with no prompt it is not scored, as
        # the first token of an unpacked sequence is not.
        first = 0 if P > 0 else 1
        at = P
        for k, (part, n_scored) in enumerate(zip(parts, scored), start=1):
            n = len(part)
            sl = slice(at, at + n)
            out["shared_ids_BxT"][b, sl] = part
            out["shared_part_BxT"][b, sl] = k
            out["shared_pos_BxT"][b, sl] = P + np.arange(n)
            out["shared_source_BxT"][b, sl] = np.concatenate([[max(P - 1, 0)], at + np.arange(n - 1)])[:n]
            out["shared_scored_BxT"][b, at + first:at + max(n_scored, first)] = 1
            at += n
    return out
