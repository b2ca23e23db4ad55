"""The lean decode loop: heads-major KV cache, prefill over the prompt's own keys, decode steps over the
cache's filled prefix in bucket phases, GPT-2's cache carried in place. Checked against a plain greedy loop
of full forwards (no cache) and by reading the lowered decode program."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.rl import sampling
from jaxrlhf.rl.sampling import SamplingConfig, decode, kv_phases, left_pad
from tests.helpers.models import tiny_decoder

V = 101
PAD = 0


def _tiny(name, scan_layers=True, seed=0):
    return tiny_decoder(name, V, PAD, scan_layers, seed)


def _prompts():
    rs = np.random.RandomState(3)
    return left_pad([list(rs.randint(1, V, n)) for n in (6, 3, 1)], PAD)


def full_forward_greedy(model, ids, mask, n):
    """The reference: at each step the full model over prompt + generated tokens, argmax at the last token."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda st, i, m: nnx.merge(graphdef, st)(i, m)[0])
    B, P = ids.shape
    cur_ids = np.concatenate([ids, np.full((B, n), PAD)], 1).astype(np.int32)
    cur_mask = np.concatenate([mask, np.zeros((B, n), np.int32)], 1).astype(np.int32)
    out, logp = np.zeros((B, n), np.int64), np.zeros((B, n))
    for t in range(n):
        logits = np.asarray(forward(state, cur_ids, cur_mask), np.float64)[:, P + t - 1]
        tok = logits.argmax(-1)
        z = logits - logits.max(-1, keepdims=True)
        logp[:, t] = z[np.arange(B), tok] - np.log(np.exp(z).sum(-1))
        out[:, t] = tok
        cur_ids[:, P + t], cur_mask[:, P + t] = tok, 1
    return out, logp


def _decode_fn(model, cfg):
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda st, i, m: decode(nnx.merge(graphdef, st), i, m, None, cfg))  # a fresh trace
    return fn, state


@pytest.mark.parametrize("name,scan_layers", [("llama", True), ("gpt2", True), ("gpt2", False),
                                              ("mistral", True), ("qwen2", True)])
def test_greedy_ids_equal_a_full_forward_greedy_loop_across_bucket_phases(name, scan_layers, monkeypatch):
    monkeypatch.setattr(sampling, "KV_BUCKET", 4)  # prompt 6 + 12 new: phases over 8, 12, 16 and 18 slots
    model = _tiny(name, scan_layers)
    ids, mask = _prompts()
    n = 12
    assert kv_phases(ids.shape[1], n) == (8, 12, 16, 18)
    fn, state = _decode_fn(model, SamplingConfig(max_new_tokens=n, temperature=0.0, pad_id=PAD))
    out = fn(state, jnp.asarray(ids), jnp.asarray(mask))
    ref_ids, ref_logp = full_forward_greedy(model, ids, mask, n)
    np.testing.assert_array_equal(np.asarray(out["response_ids_BxN"]), ref_ids)
    np.testing.assert_allclose(np.asarray(out["logprobs_BxN"]), ref_logp, atol=1e-5, rtol=0)
    assert int(out["num_steps"]) == n
    assert len({tuple(r) for r in ref_ids}) == 3 and len(set(ref_ids.ravel())) > 3


def test_kv_phases_cover_every_step_with_few_static_lengths():
    for P, N in [(6, 12), (64, 64), (64, 256), (128, 512), (64, 1024), (1, 1), (127, 2), (5, 300)]:
        phases = kv_phases(P, N)
        assert phases[-1] == P + N and len(phases) <= sampling.MAX_KV_PHASES
        assert list(phases) == sorted(set(phases)) and phases[0] >= P + 1
        assert all(b % sampling.KV_BUCKET == 0 for b in phases[:-1])
    assert kv_phases(64, 256) == (128, 256, 320)


@pytest.mark.parametrize("name", ["llama", "gpt2", "qwen2"])
def test_backbone_kv_len_prefill_and_prefix_steps_match_the_full_forward(name):
    """Prefill with kv_len = T (own keys), then steps each attending over a short prefix of a long cache."""
    model = _tiny(name)
    backbone = model.backbone
    rs = np.random.RandomState(4)
    ids, mask = _prompts()
    B, P = ids.shape
    N = 5
    step_ids, step_mask = rs.randint(1, V, (B, N)), np.ones((B, N), np.int32)
    step_mask[0, 2:] = 0
    S = P + N + 20  # a long tail the steps never attend to

    @jax.jit
    def run(ids, mask, step_ids, step_mask):
        cache = backbone.init_cache(B, S)
        h0, cache = backbone(ids, mask, cache=cache, kv_len=P)
        hs = []
        for t in range(N):
            h, cache = backbone(step_ids[:, t:t + 1], step_mask[:, t:t + 1], cache=cache, kv_len=P + t + 1 + t % 2)
            hs.append(h[:, 0])
        return h0, jnp.stack(hs, 1), cache

    h0, hs, cache = run(*map(jnp.asarray, (ids, mask, step_ids, step_mask)))
    K = cache.k_LxBxKxSxD.shape[2]
    assert cache.k_LxBxKxSxD.shape == (2, B, K, S, 8) and cache.k_LxBxKxSxD.dtype == jnp.float32
    full, _ = backbone(jnp.asarray(np.concatenate([ids, step_ids], 1)),
                       jnp.asarray(np.concatenate([mask, step_mask], 1)))
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(h0)[mask > 0], full[:, :P][mask > 0], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(hs)[step_mask > 0], full[:, P:][step_mask > 0], atol=1e-4, rtol=0)


def _tensor_shapes(line):
    return [tuple(int(d) for d in m.split("x")[:-1]) for m in re.findall(r"tensor<([0-9x]+x[a-z0-9]+)>", line)]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_decode_program_attends_over_the_prefix_without_transposing_the_cache(name):
    """In the lowered decode program no transpose touches a cache-sized array, and the first phase's
    attention reads a 128-slot prefix, not the whole P + N cache."""
    model = _tiny(name, scan_layers=False)
    B, P, N = 3, 6, 200
    ids = jnp.ones((B, P), jnp.int32)
    graphdef, state = nnx.split(model)
    cfg = SamplingConfig(max_new_tokens=N, temperature=0.0)
    text = jax.jit(lambda st, i, m: decode(nnx.merge(graphdef, st), i, m, None, cfg)).lower(state, ids, ids).as_text()
    assert kv_phases(P, N) == (128, 206)
    K, D = (2, 8) if name == "llama" else (4, 8)
    assert text.count("stablehlo.while") >= 2
    for line in text.splitlines():
        if "stablehlo.transpose" in line:
            assert not any(set(s) & {128, P + N} for s in _tensor_shapes(line)), line  # no slot axis
    dots = [_tensor_shapes(line) for line in text.splitlines() if "stablehlo.dot_general" in line]
    attended = [s[1][2] for s in dots if len(s[1]) == 4 and s[1][:2] == (B, K) and s[1][3] == D]
    assert 128 in attended and P + N in attended and P in attended  # phase 1, phase 2, the prefill


@pytest.mark.parametrize("name,scan_layers,shares", [("llama", True, True), ("gpt2", False, True),
                                                     ("mistral", True, False), ("qwen2", True, False)])
def test_a_group_decodes_what_its_repeated_rows_do_across_bucket_phases(name, scan_layers, shares, monkeypatch):
    """G samples per prompt: the prompt's cache as a shared prefix (sliding-window models: repeated G times)
    draws the same tokens, with the same log-probs, as G independent copies of each prompt row."""
    monkeypatch.setattr(sampling, "KV_BUCKET", 4)  # 12 new tokens: several phases on either cache layout
    from jaxrlhf.models.kv_cache import KVCache

    shared_calls, share_prefix = [], KVCache.share_prefix
    monkeypatch.setattr(KVCache, "share_prefix", lambda self, *a: shared_calls.append(a) or share_prefix(self, *a))
    model = _tiny(name, scan_layers)
    ids, mask = _prompts()
    G, cfg = 3, SamplingConfig(max_new_tokens=12, temperature=1.0, eos_ids=(5,), pad_id=PAD)
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda st, i, m, g: decode(nnx.merge(graphdef, st), i, m, jax.random.key(7), cfg, g),
                  static_argnums=3)
    grouped = run(state, jnp.asarray(ids), jnp.asarray(mask), G)
    assert bool(shared_calls) == shares
    rows = run(state, jnp.asarray(np.repeat(ids, G, 0)), jnp.asarray(np.repeat(mask, G, 0)), 1)
    for key in ("response_ids_BxN", "response_mask_BxN", "ended_B"):
        np.testing.assert_array_equal(np.asarray(grouped[key]), np.asarray(rows[key]), err_msg=key)
    np.testing.assert_allclose(np.asarray(grouped["logprobs_BxN"]), np.asarray(rows["logprobs_BxN"]), atol=1e-5)
    resp = np.asarray(grouped["response_ids_BxN"]).reshape(3, G, -1)
    assert any(len({tuple(r) for r in group}) > 1 for group in resp)  # the samples of a group differ


def test_a_shared_prefix_refuses_a_sliding_window():
    from jaxrlhf.models.kv_cache import attention_inputs, init_cache

    cache = init_cache(2, 1, 4, 1, 8).share_prefix(2, 3)
    with pytest.raises(ValueError, match="sliding-window"):
        attention_inputs(jnp.ones((2, 1), jnp.int32), None, cache, sliding_window=3, kv_len=3)


@pytest.mark.parametrize("name,G", [("llama", 4), ("gpt2", 1), ("mistral", 4)])
def test_dropping_finished_rows_keeps_every_rows_tokens_and_saves_decode_work(name, G, monkeypatch):
    """Rows that stopped are dropped from the decode batch as it halves (12 -> 6 -> 3 rows here): the tokens,
    log-probs and stops are those of the loop that keeps all rows, for the shared-prefix, plain and repeated
    caches, across bucket phases; and fewer rows were decoded."""
    monkeypatch.setattr(sampling, "KV_BUCKET", 4)
    monkeypatch.setattr(sampling, "MIN_COMPACT_ROWS", 3)
    monkeypatch.setattr(sampling, "MIN_COMPACT_STEPS", 12)
    assert sampling.row_levels(12) == (12, 6, 3)
    model = _tiny(name)
    rs = np.random.RandomState(5)
    ids, mask = left_pad([list(rs.randint(1, V, n)) for n in (5, 2, 6, 3, 1, 4, 2, 6, 3, 5, 1, 4)[:12 // G]], PAD)
    graphdef, state = nnx.split(model)
    outs = {}
    for compact in (True, False):
        cfg = SamplingConfig(max_new_tokens=12, temperature=1.0, eos_ids=tuple(range(5, 30)), pad_id=PAD,
                             compact_rows=compact)
        run = jax.jit(lambda st, i, m, cfg=cfg: decode(nnx.merge(graphdef, st), i, m, jax.random.key(2), cfg, G))
        outs[compact] = jax.tree.map(np.asarray, run(state, jnp.asarray(ids), jnp.asarray(mask)))
    dropped, kept = outs[True], outs[False]
    for key in ("response_ids_BxN", "response_mask_BxN", "ended_B", "num_steps"):
        np.testing.assert_array_equal(dropped[key], kept[key], err_msg=key)
    np.testing.assert_allclose(dropped["logprobs_BxN"], kept["logprobs_BxN"], atol=1e-5)
    lengths = kept["lengths_B"]
    assert len(set(lengths.tolist())) > 2 and kept["ended_B"].sum() >= 9  # rows stop at many different steps
    assert kept["row_steps"] == 12 * (kept["num_steps"] - 1)
    assert dropped["row_steps"] < kept["row_steps"] * 0.8
