"""Sampling with the KV cache against step-by-step decoding with full forwards (no cache) on a tiny Llama.

The reference re-runs the whole (prompt + tokens so far) sequence at every step and reads the logits
at each row's last real token, so it shares no code with the cache path. Parameters are re-drawn at
a scale where logits are of order one, so argmax near-ties (which float noise could flip) are unlikely.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models import llama, registry
from jaxrlhf.rl.sampling import SamplingConfig, chat_prompts, decode, generate, left_pad
from jaxrlhf.rl.sampling_filters import filter_logits, sample_token, top_k_filter, top_p_filter
from tests.helpers.models import perturb_weights, tiny_llama_jax_config
from tests.helpers.tokenizers import make_decoder_tokenizer

V = 101
PAD = 0


def tiny_model(tied: bool = False, seed: int = 0):
    cfg = tiny_llama_jax_config(vocab_size=V, head_dim=8, rms_norm_eps=1e-5, max_position_embeddings=128,
                                tie_word_embeddings=tied, pad_token_id=PAD)
    return perturb_weights(registry.build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(seed)), seed)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def prompts(padding: str = "left"):
    """Three prompts of lengths 6, 3 and 1, padded to 6 on the given side (left: with PAD ids)."""
    rs = np.random.RandomState(3)
    seqs = [list(rs.randint(1, V, n)) for n in (6, 3, 1)]
    ids, mask = left_pad(seqs, PAD)
    if padding == "right":  # with arbitrary ids under the padding, which must not matter
        ids = np.stack([np.roll(r, -int((m == 0).sum())) for r, m in zip(ids, mask)])
        mask = np.stack([np.roll(m, -int((m == 0).sum())) for m in mask])
        ids = np.where(mask > 0, ids, rs.randint(1, V, ids.shape)).astype(np.int32)
    return ids, mask


@functools.cache
def _forward(graphdef):
    return jax.jit(lambda state, ids, mask: nnx.merge(graphdef, state)(ids, mask)[0])


def full_logits(model, ids, mask):
    """Logits of one full forward, no cache (jitted so the reference loops stay quick)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef)(state, jnp.asarray(ids), jnp.asarray(mask)), np.float64)


def greedy_reference(model, ids, mask, n: int, eos_ids=()):
    """Greedy decoding by full forwards, one step at a time; stops a row after its first stop token."""
    B = ids.shape[0]
    out = np.full((B, n), PAD, np.int64)
    out_mask = np.zeros((B, n), np.int64)
    finished = np.zeros(B, bool)
    P = ids.shape[1]
    # One fixed width (trailing slots masked out: a causal model never looks right), one compile.
    cur_ids = np.concatenate([ids, np.full((B, n), PAD)], 1)
    cur_mask = np.concatenate([mask, np.zeros((B, n), mask.dtype)], 1)
    for t in range(n):
        logits = full_logits(model, cur_ids, cur_mask)
        last = cur_mask.shape[1] - 1 - np.argmax(cur_mask[:, ::-1] > 0, axis=1)
        tok = np.argmax(logits[np.arange(B), last], axis=-1)
        alive = ~finished
        out[:, t] = np.where(alive, tok, PAD)
        out_mask[:, t] = alive
        finished |= alive & np.isin(tok, eos_ids)
        cur_ids[:, P + t], cur_mask[:, P + t] = out[:, t], out_mask[:, t]
    return out, out_mask


def reference_logprobs(model, ids, mask, resp, resp_mask, temperature):
    """log_softmax(logits / T) at each response token, from one full forward over prompt + response."""
    P = ids.shape[1]
    logits = full_logits(model, np.concatenate([ids, resp], 1), np.concatenate([mask, resp_mask], 1))
    # The token at sequence position P + t is predicted at the previous REAL position (right-padded
    # prompts have holes), i.e. the last real position before P + t.
    all_mask = np.concatenate([mask, resp_mask], 1)
    B, N = resp.shape
    out = np.zeros((B, N))
    for b in range(B):
        for t in range(N):
            if resp_mask[b, t]:
                prev = max(j for j in range(P + t) if all_mask[b, j])
                z = logits[b, prev] / temperature
                z = z - z.max()
                out[b, t] = z[resp[b, t]] - np.log(np.exp(z).sum())
    return out


@pytest.mark.parametrize("padding", ["left", "right"])
def test_greedy_equals_uncached_step_by_step_argmax(model, padding):
    ids, mask = prompts(padding)
    n = 7
    out = generate(model, ids, mask, None, SamplingConfig(max_new_tokens=n, temperature=0.0, pad_id=PAD))
    ref_ids, ref_mask = greedy_reference(model, ids, mask, n)
    np.testing.assert_array_equal(np.asarray(out["response_ids_BxN"]), ref_ids)
    np.testing.assert_array_equal(np.asarray(out["response_mask_BxN"]), ref_mask)
    assert not np.asarray(out["ended_B"]).any()
    assert int(out["num_steps"]) == n
    # the rows differ (not one degenerate token everywhere), so the check has teeth
    assert len({tuple(r) for r in ref_ids}) == 3 and len(set(ref_ids.ravel())) > 3


def test_cached_run_matches_a_wider_left_padding(model):
    """The same prompts padded further to the left give the same greedy tokens and log-probs."""
    ids, mask = prompts()
    wide_ids = np.concatenate([np.full((3, 4), PAD), ids], 1)
    wide_mask = np.concatenate([np.zeros((3, 4), np.int32), mask], 1)
    cfg = SamplingConfig(max_new_tokens=6, temperature=0.0)
    a = generate(model, ids, mask, None, cfg)
    b = generate(model, wide_ids, wide_mask, None, cfg)
    np.testing.assert_array_equal(np.asarray(a["response_ids_BxN"]), np.asarray(b["response_ids_BxN"]))
    np.testing.assert_allclose(np.asarray(a["logprobs_BxN"]), np.asarray(b["logprobs_BxN"]), atol=1e-5)


def test_eos_masks_after_the_first_stop_token(model):
    ids, mask = prompts()
    n = 8
    free, _ = greedy_reference(model, ids, mask, n)
    # Stop on row 0's 3rd token (picked so it does not occur earlier in row 0).
    t0 = next(t for t in range(2, n) if free[0, t] not in free[0, :t])
    eos = int(free[0, t0])
    out = generate(model, ids, mask, None, SamplingConfig(max_new_tokens=n, temperature=0.0, eos_ids=(eos, 9999),
                                                          pad_id=PAD))
    got_ids, got_mask = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    ref_ids, ref_mask = greedy_reference(model, ids, mask, n, eos_ids=(eos,))
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_array_equal(got_mask, ref_mask)
    expected_mask0 = (np.arange(n) <= t0).astype(int)
    np.testing.assert_array_equal(got_mask[0], expected_mask0)  # 1 through the first EOS, 0 after
    assert got_ids[0, t0] == eos and (got_ids[0, t0 + 1:] == PAD).all()
    ended = np.asarray(out["ended_B"])
    np.testing.assert_array_equal(ended, [(eos in r[:n]) for r in free])
    assert ended[0]
    np.testing.assert_array_equal(np.asarray(out["lengths_B"]), ref_mask.sum(1))
    assert (np.asarray(out["logprobs_BxN"])[got_mask == 0] == 0).all()


def test_all_rows_stopping_ends_the_loop_early(model):
    ids, mask = prompts()
    first, _ = greedy_reference(model, ids, mask, 1)
    out = generate(model, ids, mask, None, SamplingConfig(max_new_tokens=6, temperature=0.0,
                                                          eos_ids=tuple(int(t) for t in first[:, 0]), pad_id=PAD))
    assert int(out["num_steps"]) == 1
    np.testing.assert_array_equal(np.asarray(out["response_mask_BxN"]), np.eye(6, dtype=int)[[0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(out["response_ids_BxN"])[:, 0], first[:, 0])
    assert np.asarray(out["ended_B"]).all()


def test_sampled_eos_truncates_without_changing_earlier_draws(model):
    """Each step's key depends on the step only, so a run with a stop token equals the run without one
    up to and including the stop, and rows that never emit it are untouched."""
    ids, mask = prompts()
    n, key = 10, jax.random.key(4)
    free = np.asarray(generate(model, ids, mask, key, SamplingConfig(max_new_tokens=n, temperature=1.0))
                      ["response_ids_BxN"])
    t0 = next(t for t in range(1, n) if free[0, t] not in free[0, :t])
    eos = int(free[0, t0])
    out = generate(model, ids, mask, key, SamplingConfig(max_new_tokens=n, temperature=1.0, eos_ids=(eos,),
                                                         pad_id=PAD))
    got, got_mask = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    for b in range(3):
        hits = np.flatnonzero(free[b] == eos)
        stop = hits[0] if len(hits) else n - 1
        np.testing.assert_array_equal(got[b, :stop + 1], free[b, :stop + 1])
        assert (got[b, stop + 1:] == PAD).all()
        np.testing.assert_array_equal(got_mask[b], np.arange(n) <= stop)
        assert bool(out["ended_B"][b]) == bool(len(hits))
    assert got_mask[0, t0] == 1 and got_mask[0, t0 + 1] == 0


@pytest.mark.parametrize("temperature,top_k,top_p,padding", [(0.0, 0, 1.0, "left"), (0.7, 0, 1.0, "left"),
                                                             (1.3, 5, 0.8, "left"), (1.0, 0, 1.0, "right")])
def test_logprobs_are_temperature_scaled_unfiltered_log_softmax(model, temperature, top_k, top_p, padding):
    ids, mask = prompts(padding)
    cfg = SamplingConfig(max_new_tokens=6, temperature=temperature, top_k=top_k, top_p=top_p, eos_ids=(3,),
                         pad_id=PAD)
    out = generate(model, ids, mask, jax.random.key(11), cfg)
    resp, resp_mask = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    ref = reference_logprobs(model, ids, mask, resp, resp_mask, temperature or 1.0)
    np.testing.assert_allclose(np.asarray(out["logprobs_BxN"]), ref, atol=2e-5)


def test_top_k_one_equals_greedy(model):
    ids, mask = prompts()
    greedy = generate(model, ids, mask, None, SamplingConfig(max_new_tokens=6, temperature=0.0))
    for seed in (0, 1):
        k1 = generate(model, ids, mask, jax.random.key(seed), SamplingConfig(max_new_tokens=6, temperature=1.5,
                                                                             top_k=1))
        np.testing.assert_array_equal(np.asarray(k1["response_ids_BxN"]), np.asarray(greedy["response_ids_BxN"]))


def test_sampled_tokens_stay_inside_top_k(model):
    ids, mask = prompts()
    out = generate(model, ids, mask, jax.random.key(5), SamplingConfig(max_new_tokens=8, temperature=2.0, top_k=3))
    resp, resp_mask = np.asarray(out["response_ids_BxN"]), np.asarray(out["response_mask_BxN"])
    logits = full_logits(model, np.concatenate([ids, resp], 1), np.concatenate([mask, resp_mask], 1))
    P = ids.shape[1]
    for t in range(8):
        top3 = np.argsort(-logits[:, P + t - 1], axis=-1)[:, :3]
        assert all(resp[b, t] in top3[b] for b in range(3)), t
    # temperature 2 over 3 tokens: not always the argmax
    greedy = np.asarray(generate(model, ids, mask, None, SamplingConfig(max_new_tokens=8, temperature=0.0))
                        ["response_ids_BxN"])
    assert (resp != greedy).any()


def test_sampling_is_reproducible_per_key(model):
    ids, mask = prompts()
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0)
    a = generate(model, ids, mask, jax.random.key(1), cfg)
    b = generate(model, ids, mask, jax.random.key(1), cfg)
    c = generate(model, ids, mask, jax.random.key(2), cfg)
    for k in a:
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]))
    assert (np.asarray(a["response_ids_BxN"]) != np.asarray(c["response_ids_BxN"])).any()


def test_compiles_once_for_repeated_calls_with_the_same_shapes():
    from jaxrlhf.rl import sampling

    model = tiny_model(seed=2)
    ids, mask = prompts()
    cfg = SamplingConfig(max_new_tokens=5, temperature=0.9, top_p=0.9)
    sampling._generate_jit.clear_cache()
    generate(model, ids, mask, jax.random.key(0), cfg)
    assert sampling._generate_jit._cache_size() == 1
    rs = np.random.RandomState(0)
    other_ids = np.where(mask > 0, rs.randint(1, V, ids.shape), PAD)
    graphdef, state = nnx.split(model)
    state = jax.tree_util.tree_map(lambda x: x * 1.01, state)  # new weights, same shapes
    generate(model, other_ids, mask, jax.random.key(1), cfg)
    generate((graphdef, state), ids, mask, jax.random.key(2), SamplingConfig(max_new_tokens=5, temperature=0.9,
                                                                             top_p=0.9))
    assert sampling._generate_jit._cache_size() == 1
    generate(model, ids, mask, jax.random.key(0), SamplingConfig(max_new_tokens=6, temperature=0.9, top_p=0.9))
    assert sampling._generate_jit._cache_size() == 2  # a new response length is a new shape


def test_decode_runs_inside_a_callers_jit(model):
    ids, mask = prompts()
    graphdef, state = nnx.split(model)
    cfg = SamplingConfig(max_new_tokens=4, temperature=0.0)

    @jax.jit
    def rollout(state, ids, mask):
        return decode(nnx.merge(graphdef, state), ids, mask, None, cfg)["response_ids_BxN"]

    ref, _ = greedy_reference(model, ids, mask, 4)
    np.testing.assert_array_equal(np.asarray(rollout(state, jnp.asarray(ids), jnp.asarray(mask))), ref)


# ---- pure filters -------------------------------------------------------------------------------

def test_top_p_filter_hand_computed():
    probs = np.array([0.1, 0.4, 0.05, 0.3, 0.15])  # sorted: 0.4 (1), 0.3 (3), 0.15 (4), 0.1 (0), 0.05 (2)
    logits = np.log(probs)
    keep = lambda p: np.isfinite(np.asarray(top_p_filter(jnp.asarray(logits), p)))  # noqa: E731
    np.testing.assert_array_equal(keep(0.5), [0, 1, 0, 1, 0])  # 0.4 < 0.5, 0.7 >= 0.5
    np.testing.assert_array_equal(keep(0.7 + 1e-6), [0, 1, 0, 1, 1])  # 0.7 < p: needs 0.15 too
    np.testing.assert_array_equal(keep(0.3), [0, 1, 0, 0, 0])  # the top token alone
    np.testing.assert_array_equal(keep(1e-9), [0, 1, 0, 0, 0])  # never fewer than one token
    np.testing.assert_array_equal(keep(0.96), [1, 1, 1, 1, 1])  # 0.95 < 0.96: all five
    np.testing.assert_array_equal(keep(1.0), [1, 1, 1, 1, 1])
    kept = np.asarray(top_p_filter(jnp.asarray(logits), 0.5))
    np.testing.assert_allclose(kept[[1, 3]], logits[[1, 3]], rtol=1e-6)  # kept logits unchanged


def test_top_k_and_combined_filters_hand_computed():
    logits = jnp.asarray([[2.0, -1.0, 0.5, 3.0, 0.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    np.testing.assert_array_equal(np.isfinite(np.asarray(top_k_filter(logits, 2))),
                                  [[1, 0, 0, 1, 0], [0, 0, 0, 1, 1]])
    np.testing.assert_array_equal(np.asarray(top_k_filter(logits, 0)), np.asarray(logits))
    # top-k 3 then top-p 0.8 of the renormalised top 3: row 1 probs over {4,3,2} are .665, .245, .090
    both = np.isfinite(np.asarray(filter_logits(logits, top_k=3, top_p=0.8)))
    np.testing.assert_array_equal(both[1], [0, 0, 0, 1, 1])
    # row 0 over {3.0, 2.0, 0.5}: .690, .254, .057 -> 0.69 < 0.8, 0.944 >= 0.8: two tokens
    np.testing.assert_array_equal(both[0], [1, 0, 0, 1, 0])
    # leading dims are kept
    assert filter_logits(jnp.zeros((2, 3, 5)), top_k=2).shape == (2, 3, 5)


def test_sample_token_frequencies_match_the_filtered_distribution():
    logits = jnp.asarray([1.0, 0.2, -0.5, 0.9, -2.0, 0.0])
    T, k, p = 0.8, 4, 0.85
    keys = jax.random.split(jax.random.key(0), 40000)
    toks, logps = jax.vmap(lambda key: sample_token(logits[None], key, T, k, p))(keys)
    toks = np.asarray(toks)[:, 0]
    z = np.asarray(logits, np.float64) / T
    full = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    order = np.argsort(-z)[:k]
    pk = full[order] / full[order].sum()
    keep = (np.cumsum(pk) - pk) < p
    target = np.zeros(6)
    target[order[keep]] = pk[keep]
    target /= target.sum()
    freq = np.bincount(toks, minlength=6) / len(toks)
    np.testing.assert_allclose(freq, target, atol=0.01)
    assert set(np.unique(toks)) == set(order[keep])
    np.testing.assert_allclose(np.asarray(logps)[:, 0], np.log(full[toks]), atol=1e-5)


def _numpy_top_p_support(logits, p):
    """Sort-based float64 reference: the smallest most-likely prefix with mass >= p, plus ties."""
    z = np.asarray(logits, np.float64)
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    order = np.argsort(-probs, kind="stable")
    cum_before = np.cumsum(probs[order]) - probs[order]
    n = max(1, int((cum_before < p).sum()))
    return probs >= probs[order[n - 1]]


def test_top_p_filter_matches_a_sort_reference_on_a_large_vocabulary():
    rs = np.random.RandomState(0)
    V = 3000
    logits = np.stack([rs.randn(V) * s for s in (0.3, 1.0, 3.0, 8.0)]).astype(np.float32)
    for p in (0.05, 0.5, 0.9, 0.99):
        got = np.isfinite(np.asarray(top_p_filter(jnp.asarray(logits), p)))
        for row in range(4):
            ref = _numpy_top_p_support(logits[row], p)
            # float32 vs float64 sums may move the boundary by one token at most
            assert np.sum(got[row] != ref) <= 1, (p, row, got[row].sum(), ref.sum())
            assert got[row][np.argmax(logits[row])]


@pytest.mark.parametrize("case", ["small_nucleus", "large_nucleus"])
def test_top_p_sampling_on_a_large_vocabulary(case):
    """Top-p alone first searches the 256 best tokens; a larger nucleus falls back to the whole vocabulary.
    Both must draw from exactly the nucleus, with the renormalised probabilities."""
    from jaxrlhf.rl import sampling_filters

    V, T, p = 600, 1.0, 0.9
    rs = np.random.RandomState(1)
    if case == "small_nucleus":
        logits = np.full(V, -8.0)
        logits[rs.choice(V, 6, replace=False)] = [3.0, 2.5, 2.0, 1.0, 0.5, 0.0]
    else:
        logits = rs.randn(V) * 0.2  # near uniform: the nucleus holds ~540 tokens
    logits = jnp.asarray(logits[None], jnp.float32)
    support = _numpy_top_p_support(np.asarray(logits[0]) / T, p)
    assert (support.sum() < 10) == (case == "small_nucleus") and (support.sum() > 256) == (case != "small_nucleus")
    keys = jax.random.split(jax.random.key(3), 40000)
    toks = np.asarray(jax.vmap(lambda k: sample_token(logits, k, T, 0, p)[0])(keys))[:, 0]
    assert support[toks].all()  # never outside the nucleus
    z = np.asarray(logits[0], np.float64) / T
    target = np.where(support, np.exp(z - z.max()), 0.0)
    target /= target.sum()
    freq = np.bincount(toks, minlength=V) / len(toks)
    if case == "small_nucleus":
        np.testing.assert_allclose(freq, target, atol=0.01)
    else:  # many tokens: compare the mass of the more likely half of the nucleus, and the coverage
        upper = support & (z > np.median(z[support]))
        assert abs(freq[upper].sum() - target[upper].sum()) < 0.01
        assert (freq[support] > 0).mean() > 0.95
        # the fallback branch is the plain filtered categorical, draw for draw
        k = jax.random.key(7)
        np.testing.assert_array_equal(
            np.asarray(sample_token(logits, k, T, 0, p)[0]),
            np.asarray(sampling_filters.sample_categorical(k, sampling_filters.filter_logits(logits / T, top_p=p))))


def test_inverse_cdf_draw_picks_the_token_whose_interval_holds_u():
    """Two-level inverse CDF against a float64 reference: u1 picks the block of 256 by mass, u2 the
    token inside it. Masked (-inf) tokens are never drawn, even at u = 0 or u -> 1."""
    from jaxrlhf.rl.sampling_filters import SAMPLE_BLOCK, categorical_from_uniforms

    rs = np.random.RandomState(2)
    V = 600  # blocks of 256, 256 and 88 (+ padding)
    logits = rs.randn(V) * 2
    logits[[0, 255, 256, 599, 598]] = -np.inf
    w = np.exp(logits - logits[np.isfinite(logits)].max())
    blocks = [w[i:i + SAMPLE_BLOCK] for i in range(0, V, SAMPLE_BLOCK)]
    cum_blocks = np.cumsum([b.sum() for b in blocks])
    u = rs.uniform(size=(400, 2))
    u = np.concatenate([u, [[0.0, 0.0], [1 - 2 ** -24, 1 - 2 ** -24], [0.5, 0.0], [0.5, 1 - 2 ** -24]]])
    expected = []
    for u1, u2 in u:
        b = int(np.searchsorted(cum_blocks, u1 * cum_blocks[-1], side="right"))
        cum = np.cumsum(blocks[b])
        expected.append(b * SAMPLE_BLOCK + int(np.searchsorted(cum, u2 * cum[-1], side="right")))
    got = np.asarray(categorical_from_uniforms(jnp.asarray(np.tile(logits, (len(u), 1)), jnp.float32),
                                               jnp.asarray(u[:, 0], jnp.float32), jnp.asarray(u[:, 1], jnp.float32)))
    assert np.isfinite(logits[got]).all()
    np.testing.assert_array_equal(got, expected)
    assert got[-4] == 1 and got[-3] == 597  # first and last drawable tokens
    # u = 1 (outside uniform()'s range, as float rounding of u * total could be) still lands on a drawable token
    edge = categorical_from_uniforms(jnp.asarray(logits[None], jnp.float32), jnp.ones(1), jnp.ones(1))
    assert int(edge[0]) == 597


def test_plain_temperature_sampling_frequencies_on_a_large_vocabulary():
    V, T = 700, 1.5
    logits = jnp.asarray(np.random.RandomState(0).randn(1, V) * 3, jnp.float32)
    keys = jax.random.split(jax.random.key(0), 100000)
    toks = np.asarray(jax.vmap(lambda k: sample_token(logits, k, T)[0])(keys))[:, 0]
    z = np.asarray(logits[0], np.float64) / T
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    freq = np.bincount(toks, minlength=V) / len(toks)
    sigma = np.sqrt(p * (1 - p) / len(toks)) + 1e-6
    assert (np.abs(freq - p) / sigma).max() < 5  # no token off by more than 5 standard deviations
    block_mass = np.add.reduceat(p, [0, 256, 512])
    np.testing.assert_allclose(np.add.reduceat(freq, [0, 256, 512]), block_mass, atol=0.006)


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (50, 1.0), (50, 0.9)])
def test_filtered_sampling_compiles_without_a_full_vocabulary_sort(top_k, top_p):
    """A full sort of 8 x 49k logits costs as much as a SmolLM2 decode step on CPU; top_k must stay a
    TopK (XLA lowers a top_k whose result reaches a `cond` as a sort unless a barrier stops it)."""
    logits = jnp.zeros((8, 5000))
    hlo = jax.jit(lambda x, k: sample_token(x, k, 0.7, top_k, top_p)).lower(logits, jax.random.key(0)).compile()
    assert "sort(" not in hlo.as_text()


# ---- padding and chat helpers --------------------------------------------------------------------

def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(ids, [[0, 5, 6, 7], [0, 0, 0, 8]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 1]])
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    ids, _ = left_pad([[5, 6, 7]], pad_id=2, length=5)
    np.testing.assert_array_equal(ids, [[2, 2, 5, 6, 7]])
    with pytest.raises(ValueError, match="more than length"):
        left_pad([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="empty"):
        left_pad([[1], []], 0)


def test_chat_prompts_apply_the_template_with_generation_prompt():
    tok = make_decoder_tokenizer()
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    got = chat_prompts(tok, ["hello world", "good"])
    for text, ids in zip(["hello world", "good"], got):
        rendered = f"<user> {text} <assistant>"
        assert ids == tok(rendered, add_special_tokens=False)["input_ids"]
    with_system = chat_prompts(tok, ["good"], system="bad")[0]
    assert with_system == tok("<system> bad <user> good <assistant>", add_special_tokens=False)["input_ids"]


def test_config_validation():
    assert SamplingConfig(eos_ids=[2, 3]).eos_ids == (2, 3)
    assert SamplingConfig(eos_ids=2).eos_ids == (2,)
    assert SamplingConfig(temperature=0).greedy
    hash(SamplingConfig(eos_ids=[1]))
    for bad in (dict(temperature=-1.0), dict(top_p=0.0), dict(max_new_tokens=0)):
        with pytest.raises(ValueError):
            SamplingConfig(**bad)


def test_layers_sliced_once_gives_the_scanned_outputs(model, monkeypatch):
    """On CPU `generate` slices each layer's weights out of the stack once, before the decode loop (slicing
    inside the loop copied them at every step): it must run that path and give the tokens and log-probs of
    the plain scanned forward."""
    from jaxrlhf.models import layers
    from jaxrlhf.rl import sampling

    ids, mask = prompts()
    backbone = model.backbone
    plain, _ = backbone(jnp.asarray(ids), jnp.asarray(mask))
    with layers.layers_sliced_once(backbone.layers):
        sliced, _ = backbone(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(sliced), np.asarray(plain), atol=1e-5)

    cfg = SamplingConfig(max_new_tokens=5, eos_ids=(), pad_id=PAD, temperature=1.0)
    graphdef, state = nnx.split(model)
    key = jax.random.key(3)
    run = lambda s: decode(nnx.merge(graphdef, s), jnp.asarray(ids), jnp.asarray(mask), key, cfg)  # noqa: E731
    calls = []
    unrolled = layers._unrolled
    monkeypatch.setattr(layers, "_unrolled", lambda *a: (calls.append(1), unrolled(*a))[1])
    out = jax.jit(run)(state)
    assert len(calls) == 2  # the prefill and the decode step, both over the pre-sliced weights
    monkeypatch.setattr(sampling, "_weights_sliced_once", lambda backbone: contextlib.nullcontext())
    ref = jax.jit(run)(state)
    assert len(calls) == 2
    np.testing.assert_array_equal(np.asarray(out["response_ids_BxN"]), np.asarray(ref["response_ids_BxN"]))
    np.testing.assert_allclose(np.asarray(out["logprobs_BxN"]), np.asarray(ref["logprobs_BxN"]), atol=1e-5)
