"""Batched sampling from a causal LM with a KV cache: one prefill, then 1-token decode steps.

    cfg = SamplingConfig(max_new_tokens=64, temperature=0.7, top_p=0.9, eos_ids=(tok.eos_token_id,),
                         pad_id=tok.pad_token_id)
    ids_BxP, mask_BxP = left_pad(chat_prompts(tok, ["What is the capital of France?"]), tok.pad_token_id)
    out = generate(model, ids_BxP, mask_BxP, jax.random.key(0), cfg)
    out["response_ids_BxN"], out["response_mask_BxN"], out["logprobs_BxN"], out["ended_B"]

`generate` is jitted (graph definition and config static: one compile per prompt shape and config);
`decode` is the same computation for callers already inside a jitted rollout step. Shapes are static:
the response buffer is [B, max_new_tokens]. The decode steps run in a `lax.while_loop` that stops
early once every row has emitted a stop token; the rest of the buffer stays pad with mask 0.

Prompts are meant to be LEFT-padded (all rows then decode in lockstep from the same cache slot), but
any padding works: the first token is drawn from the logits at each row's last real prompt token, and
masked slots in the cache are never attended to. Every row needs at least one real prompt token.

`response_mask_BxN` is 1 up to and including the first stop token, 0 after; tokens after it are
`pad_id`. `logprobs_BxN` is log softmax(logits / temperature) of the sampled token under the
UNFILTERED temperature-scaled distribution (top-k/top-p only restrict what can be drawn; see
`sampling_filters`), 0 where the mask is 0; greedy (temperature 0) reports it at temperature 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.heads import gather_positions, last_token_index
from jaxrlhf.models.layers import layers_sliced_once
from jaxrlhf.rl.sampling_filters import filter_logits, sample_token, top_k_filter, top_p_filter  # noqa: F401


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How to sample. Hashable: it is a static argument of the jitted `generate`.

    temperature 0 is greedy. top_k <= 0 and top_p >= 1 switch those filters off. `eos_ids` are the
    stop tokens (empty: never stop early, always `max_new_tokens`). `pad_id` fills finished rows.
    """

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    eos_ids: tuple[int, ...] = ()
    pad_id: int = 0
    compact_rows: bool = True  # drop finished rows from the decode batch as they add up (`row_levels`, `_compacts`)

    def __post_init__(self):
        eos = self.eos_ids
        eos = () if eos is None else (int(eos),) if isinstance(eos, (int, np.integer)) else tuple(int(e) for e in eos)
        object.__setattr__(self, "eos_ids", eos)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def decode(model: nnx.Module, prompt_ids_BxP: jax.Array, prompt_mask_BxP: jax.Array, rng: jax.Array | None,
           cfg: SamplingConfig, group_size: int = 1) -> dict[str, jax.Array]:
    """The traceable body of `generate` (a CausalLM module, not jitted here). `group_size` G: G samples of each
    prompt, rows b*G .. b*G + G - 1 of the [B*G, N] outputs, from one prefill of the B prompts whose cache the
    group shares: the same tokens as G copies of each prompt row given the same key."""
    rng = jax.random.key(0) if rng is None else rng
    eos = jnp.asarray(cfg.eos_ids, jnp.int32) if cfg.eos_ids else None
    backbone = model.backbone

    def is_stop(tok_B):
        return jnp.zeros(tok_B.shape, jnp.bool_) if eos is None else jnp.any(tok_B[:, None] == eos, axis=-1)

    def emit(step, logits_rxV, finished_R, bufs, rows=None):
        """Draws step `step`'s tokens and writes them; finished rows get pad / mask 0 / logprob 0. `rows`
        (row_ids_r, R): the logits are those rows of the R-row batch (the rest have finished)."""
        finished = finished_R if rows is None else finished_R[rows[0]]
        tok, logp = sample_token(logits_rxV, jax.random.fold_in(rng, step), cfg.temperature, cfg.top_k, cfg.top_p,
                                 rows)
        alive = ~finished
        tok = jnp.where(alive, tok, cfg.pad_id).astype(jnp.int32)
        new = (tok, alive.astype(jnp.int32), jnp.where(alive, logp, 0.0))
        finished = finished | (alive & is_stop(tok))
        if rows is None:
            bufs = tuple(jax.lax.dynamic_update_slice(b, x[:, None], (0, step)) for b, x in zip(bufs, new))
            return tok, alive, finished, bufs
        bufs = tuple(b.at[rows[0], step].set(x) for b, x in zip(bufs, new))
        return tok, alive, finished_R.at[rows[0]].set(finished), bufs

    with _weights_sliced_once(backbone):
        return _decode_loop(model, prompt_ids_BxP, prompt_mask_BxP, cfg, emit, group_size)


def _weights_sliced_once(backbone):
    # CPU only: there the per-step copies of each layer's weights cost as much as the matmuls; on an
    # accelerator the second copy of the weights would cost memory a large model does not have.
    if jax.default_backend() == "cpu" and getattr(backbone, "scan_layers", False):
        return layers_sliced_once(backbone.layers)
    return contextlib.nullcontext()


# Decode steps attend over the cache's filled prefix, rounded up to a multiple of KV_BUCKET slots, not over
# all P + N slots. The loop is split into phases, one `while_loop` per bucket, each attending over a static
# prefix length (a plain slice of the cache: XLA sees static shapes, no dynamic-size dot). The other
# designs compile worse: a `lax.switch` over prefix lengths inside each layer puts the whole cache through
# a conditional per layer per step, and a dynamic-size slice does not exist in XLA. Each phase compiles the
# decode step once more, so the phases are capped (MAX_KV_PHASES): past the cap the buckets grow
# geometrically. 128 slots: TPU lanes, and on CPU a bucket's extra reads are small next to the weights.
KV_BUCKET = 128
MAX_KV_PHASES = 4


def kv_phases(P: int, N: int, bucket: int | None = None, max_phases: int | None = None) -> tuple[int, ...]:
    """Static prefix lengths (cache slots attended) of the decode phases for a P-slot prompt and N new tokens.

    Step s (1 <= s < N) feeds the token drawn at step s - 1 into slot P + s - 1 and attends over the slots
    [0, P + s); it runs in the first phase whose length is >= P + s. Lengths are multiples of `bucket`
    (the last one is the cache size P + N), at most `max_phases` of them."""
    bucket = KV_BUCKET if bucket is None else bucket
    max_phases = MAX_KV_PHASES if max_phases is None else max_phases
    S = P + N
    need = P + N - 1  # the last step's prefix
    bounds = list(range(-(-(P + 1) // bucket) * bucket, need, bucket))
    if len(bounds) >= max_phases:  # geometric: each phase about twice as long as the one before
        bounds, b = [], -(-(P + 1) // bucket) * bucket
        while b < need and len(bounds) < max_phases - 1:
            bounds.append(b)
            b = -(-(2 * b) // bucket) * bucket
    return tuple(b for b in bounds if b < S) + (S,)


def row_levels(rows: int, enabled: bool = True) -> tuple[int, ...]:
    """The decode batch sizes a loop of `rows` rows steps through as rows finish: halving while the half
    keeps at least MIN_COMPACT_ROWS rows, at most MAX_COMPACTIONS times (each size compiles the decode step
    once more per phase). Below that size a step costs about the same whatever the rows (the weights'
    reads dominate), so dropping rows would save nothing."""
    levels = [rows]
    while (enabled and len(levels) <= MAX_COMPACTIONS and levels[-1] % 2 == 0
           and levels[-1] // 2 >= MIN_COMPACT_ROWS):
        levels.append(levels[-1] // 2)
    return tuple(levels)


MIN_COMPACT_ROWS = 16
MAX_COMPACTIONS = 2
MIN_COMPACT_STEPS = 64


def _compacts(cfg: SamplingConfig) -> bool:
    # Rows only finish at a stop token. Each smaller batch compiles the decode step again (seconds for a
    # 135M model here), which a short loop does not win back. On several devices the rows are sharded,
    # and gathering the live ones would move the cache between devices: there the batch keeps its size.
    return (cfg.compact_rows and bool(cfg.eos_ids) and cfg.max_new_tokens >= MIN_COMPACT_STEPS
            and jax.device_count() == 1)


def _decode_loop(model, prompt_ids_BxP, prompt_mask_BxP, cfg, emit, group_size=1):
    backbone = model.backbone
    B, P = prompt_ids_BxP.shape
    N = cfg.max_new_tokens

    def next_logits(hidden_BxD):
        return model.logits(hidden_BxD[:, None, :])[:, 0].astype(jnp.float32)

    # Prefill: the prompt attends over its own P keys (no cache tail), which it writes for the decode steps.
    # A group's rows share their prompt's prefill: its keys/values once per prompt as the cache's shared
    # prefix (then the decode steps' slots count from 0), or, for sliding-window models, repeated G times.
    shared = group_size > 1 and getattr(backbone, "attention_window", None) is None
    cache = backbone.init_cache(B, P if shared else P + N)
    hidden_BxPxD, cache = backbone(prompt_ids_BxP, prompt_mask_BxP, cache=cache, kv_len=P)
    logits = next_logits(gather_positions(hidden_BxPxD, last_token_index(prompt_mask_BxP)))
    if shared:
        cache = cache.share_prefix(group_size, N)
    elif group_size > 1:
        cache = cache.repeat_rows(group_size)
    if group_size > 1:
        logits, B = jnp.repeat(logits, group_size, axis=0), B * group_size
    bufs = (jnp.full((B, N), cfg.pad_id, jnp.int32), jnp.zeros((B, N), jnp.int32), jnp.zeros((B, N), jnp.float32))
    tok, alive, finished, bufs = emit(0, logits, jnp.zeros((B,), jnp.bool_), bufs)
    levels = row_levels(B, _compacts(cfg))

    def run_level(level, step, cache, tok, alive, finished, bufs, ids_r):
        """The decode steps at batch size levels[level] (ids_r: the rows decoded, by their row number), then the
        levels below. Returns the full-batch results (step, finished, bufs, row_steps)."""
        rows = levels[level]
        offset = cache.max_len - N  # cache slots before the first decode step's
        fewer = levels[level + 1] if level + 1 < len(levels) else 0  # live rows at which this level ends
        row_info, first = None if level == 0 else (ids_r, B), step
        for kv_len in kv_phases(offset, N):  # steps 1 .. kv_len - offset attend over slots [0, kv_len)
            last = min(kv_len - offset, N - 1)

            def cond(carry, last=last, fewer=fewer):
                step, _, _, _, finished, _ = carry
                return (step <= last) & (jnp.sum(~finished) > fewer)

            def body(carry, kv_len=kv_len, row_info=row_info):
                step, cache, tok, alive, finished, bufs = carry
                # A finished row feeds pad with mask 0: it takes a cache slot but is never attended to.
                hidden_rx1xD, cache = backbone(tok[:, None], alive[:, None].astype(jnp.int32), cache=cache,
                                               kv_len=kv_len)
                tok, alive, finished, bufs = emit(step, next_logits(hidden_rx1xD[:, 0]), finished, bufs, row_info)
                return step + 1, cache, tok, alive, finished, bufs

            step, cache, tok, alive, finished, bufs = jax.lax.while_loop(
                cond, body, (step, cache, tok, alive, finished, bufs))
        row_steps = rows * (step - first)
        if fewer == 0:
            return step, finished, bufs, row_steps

        def smaller():  # the live rows first; the batch has room for all of them
            keep_r = jnp.argsort(finished[ids_r], stable=True)[:fewer]
            out = run_level(level + 1, step, cache.take_rows(keep_r), tok[keep_r], alive[keep_r], finished, bufs,
                            ids_r[keep_r])
            return *out[:3], out[3] + row_steps

        # Gathering the cache costs about a step: only when steps remain for the smaller batch.
        return jax.lax.cond((step < N) & ~jnp.all(finished), smaller, lambda: (step, finished, bufs, row_steps))

    # Rows that finish stop costing decode work: once no more than half the decoded rows are live, the live
    # ones (and their cache) are gathered into a batch half as large (`row_levels`), and the loop goes on
    # there. Each row keeps its own draws (`sample_token`'s rows), so the tokens are those of the full batch.
    step, finished, bufs, row_steps = run_level(0, jnp.asarray(1, jnp.int32), cache, tok, alive, finished, bufs,
                                                jnp.arange(B))
    ids, mask, logp = bufs
    return {"response_ids_BxN": ids, "response_mask_BxN": mask, "logprobs_BxN": logp, "ended_B": finished,
            "lengths_B": jnp.sum(mask, axis=-1), "num_steps": step, "row_steps": row_steps}


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "group_size"))
def _generate_jit(graphdef, state, prompt_ids_BxP, prompt_mask_BxP, rng, cfg, group_size=1):
    return decode(nnx.merge(graphdef, state), prompt_ids_BxP, prompt_mask_BxP, rng, cfg, group_size)


def generate(model: nnx.Module | tuple[Any, Any], prompt_ids_BxP, prompt_mask_BxP, rng: jax.Array | None,
             cfg: SamplingConfig, group_size: int = 1) -> dict[str, jax.Array]:
    """Samples `cfg.max_new_tokens` tokens (fewer steps if every row stops) after each prompt.

    `model` is a CausalLM or its `nnx.split` pair (graphdef, state); passing the pair skips a graph
    traversal per call. Returns response_ids_BxN (int32), response_mask_BxN (int32), logprobs_BxN
    (float32), ended_B (bool: a stop token was emitted), lengths_B, num_steps (decode steps run) and
    row_steps (rows decoded, summed over the steps: less than B x steps once finished rows were dropped).
    With `group_size` G the outputs have B*G rows, G samples of each prompt in a row (see `decode`).
    """
    graphdef, state = model if isinstance(model, tuple) else nnx.split(model)
    rng = jax.random.key(0) if rng is None else rng
    return _generate_jit(graphdef, state, jnp.asarray(prompt_ids_BxP, jnp.int32),
                         jnp.asarray(prompt_mask_BxP, jnp.int32), rng, cfg, group_size)


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None,
             multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Left-pads token-id lists into (ids_BxP, mask_BxP) int32 arrays.

    P is `length` if given (a longer sequence is an error), else the longest sequence rounded up to
    `multiple` (fewer distinct shapes, fewer compiles).
    """
    seqs = [list(map(int, s)) for s in sequences]
    if not seqs:
        raise ValueError("left_pad: no sequences")
    if any(len(s) == 0 for s in seqs):
        raise ValueError("left_pad: a sequence is empty; every prompt needs at least one token")
    longest = max(len(s) for s in seqs)
    if length is None:
        length = -(-longest // multiple) * multiple
    elif longest > length:
        raise ValueError(f"left_pad: a sequence has {longest} tokens, more than length={length}")
    ids = np.full((len(seqs), length), pad_id, np.int32)
    mask = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, length - len(s):] = s
        mask[i, length - len(s):] = 1
    return ids, mask


def chat_prompts(tokenizer, user_texts: Sequence[str], system: str | None = None) -> list[list[int]]:
    """Token ids of one single-turn chat per text, ending with the assistant's generation prompt.

    Uses the tokenizer's own chat template (its default system message unless `system` is given);
    the special tokens come from the template text, so no extra BOS is added.
    """
    out = []
    for text in user_texts:
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": text}]
        rendered = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(list(tokenizer(rendered, add_special_tokens=False)["input_ids"]))
    return out
