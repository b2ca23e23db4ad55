"""A prompt run once with its responses after it (`data.shared_prompt`): the row layout written out by hand, the
log-probs and every gradient equal to the separate sequences' for each decoder family (sliding windows and
soft-caps included), pairs and lists against PyTorch's float64 log-probs of each sequence alone, and a DPO
update with LoRA equal to the same update on separate sequences."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import transformers
from flax import nnx

from jaxrlhf.data import shared_prompt
from jaxrlhf.data.records import Pair, RankedList
from jaxrlhf.data.tokenize import tokenize_lists, tokenize_pairs
from jaxrlhf.models.hub import from_pretrained, load_tokenizer
from jaxrlhf.models.layers import LoRAConfig
from jaxrlhf.po.data import PrefPairBatcher, SharedPromptListBatcher, SharedPromptPairBatcher
from jaxrlhf.po.step import LossSpec, group_logprobs, make_train_step
from jaxrlhf.training.optim import make_optimizer
from jaxrlhf.training.run_setup import init_train_state
from jaxrlhf.training.trainable import split_trainable
from tests.helpers.models import make_tiny_llama_dir, perturb_weights, tiny_decoder, torch_response_logp

PAIRS = [Pair("hello there what is it", "yes good one two", "no"), Pair("one two", "red", "bad bad green blue world"),
         Pair("why", "a b c d e f g", "hi"), Pair("seven eight nine ten eleven", "good", "bad"),
         Pair("hi", "no no", "yes yes yes")]


def test_rows_hold_the_prompt_once_then_each_response():
    """Prompt [5, 6, 7]; response 1 = [8, 9] + closing special 2, response 2 = [10] + 2; width 10."""
    got = shared_prompt.pack_rows([(np.array([5, 6, 7]), [np.array([8, 9, 2]), np.array([10, 2])], [2, 1])], 10, 0)
    want = {
        "shared_ids_BxT":    [5, 6, 7, 8, 9, 2, 10, 2, 0, 0],
        "shared_part_BxT":   [0, 0, 0, 1, 1, 1, 2, 2, -1, -1],
        "shared_pos_BxT":    [0, 1, 2, 3, 4, 5, 3, 4, 0, 0],
        "shared_source_BxT": [0, 0, 1, 2, 3, 4, 2, 6, 0, 0],  # each response's first token: from slot 2
        "shared_scored_BxT": [0, 0, 0, 1, 1, 0, 1, 0, 0, 0],
    }
    for k, v in want.items():
        np.testing.assert_array_equal(got[k][0], v, err_msg=k)
    # No prompt: a response's first token has nothing before it, so it is not scored (as unpacked).
    empty = shared_prompt.pack_rows([(np.array([], np.int32), [np.array([8, 9]), np.array([10])], [2, 1])], 4, 0)
    np.testing.assert_array_equal(empty["shared_scored_BxT"][0], [0, 1, 0, 0])
    with pytest.raises(ValueError, match="does not fit"):
        shared_prompt.pack_rows([(np.array([5, 6, 7]), [np.array([8, 9])], [2])], 4, 0)


def _hf_decoder(name: str):
    """Gemma 2 (soft-caps, window on layers 0 and 2), Gemma 3 (q/k norms, a local RoPE base) and GPT-Neo
    (a global and two local layers), randomly initialised and perturbed."""
    from jaxrlhf.models import gemma, gpt_neo, registry

    shape = dict(vocab_size=101, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=0)
    if name == "gemma2":
        family, hc = gemma, transformers.Gemma2Config(**shape, sliding_window=3, query_pre_attn_scalar=12,
                                                      attn_logit_softcapping=1.5, final_logit_softcapping=2.0)
    elif name == "gemma3":
        family, hc = gemma, transformers.Gemma3TextConfig(
            **shape, sliding_window=3, query_pre_attn_scalar=10,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0},
                             "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}})
    else:
        family, hc = gpt_neo, transformers.GPTNeoConfig(
            vocab_size=101, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=48, window_size=3,
            attention_types=[[["global", "local"], 1], [["local"], 1]], max_position_embeddings=64, pad_token_id=0)
    cfg = family.Config.from_hf(hc.to_dict())
    return perturb_weights(registry.build_model(family, cfg, "causal_lm", rngs=nnx.Rngs(0)), 0)


def _groups(rng, B: int, K: int, suffix: int):
    """Random prompts of 0-6 tokens (one empty, one of a single token) with K responses of 1-5 tokens, each
    ending in `suffix` closing specials; the scored count excludes them."""
    groups = []
    for b in range(B):
        P = {0: 0, 1: 1}.get(b, int(rng.integers(2, 7)))
        parts = [rng.integers(1, 101, int(rng.integers(1, 6)) + suffix) for _ in range(K)]
        groups.append((rng.integers(1, 101, P), parts, [len(x) - suffix for x in parts]))
    return groups


def _separate(groups, K: int, width: int):
    """Each (prompt, response) alone, right-padded: ids, mask and the scored mask, [B*K, width]."""
    ids, mask, scored = (np.zeros((len(groups) * K, width), np.int32) for _ in range(3))
    for b, (prompt, parts, n_scored) in enumerate(groups):
        for k, (part, n) in enumerate(zip(parts, n_scored)):
            row, P = b * K + k, len(prompt)
            ids[row, :P + len(part)] = np.concatenate([prompt, part])
            mask[row, :P + len(part)] = 1
            scored[row, P:P + n] = 1
    return ids, mask, scored


@pytest.mark.parametrize("name", ["llama", "gpt2", "mistral", "qwen2", "gemma2", "gemma3", "gpt_neo"])
def test_one_row_per_prompt_gives_each_sequences_logprobs_and_gradients(name):
    B, K, suffix = 5, 3, 1
    groups = _groups(np.random.default_rng(0), B, K, suffix)
    rows = {k: jnp.asarray(v) for k, v in shared_prompt.pack_rows(groups, 28, 0).items()}
    ids, mask, scored = (jnp.asarray(x) for x in _separate(groups, K, 12))
    model = _hf_decoder(name) if name in ("gemma2", "gemma3", "gpt_neo") else tiny_decoder(name)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    weight_BxK = jnp.asarray(np.random.default_rng(1).normal(size=(B, K)), jnp.float32)

    def objective(params, shared):
        m = nnx.merge(graphdef, params, rest)
        if shared:
            logp, tokens = m.shared_prompt_logprobs(*(rows[k] for k in shared_prompt.KEYS), K, chunk_size=5)
        else:
            logp, tokens = (x.reshape(B, K) for x in m.sequence_logprobs(ids, mask, scored, chunk_size=5))
        return jnp.sum(logp * weight_BxK), (logp, tokens)

    (_, (want, want_n)), want_grad = jax.value_and_grad(objective, has_aux=True)(params, False)
    (_, (got, got_n)), got_grad = jax.value_and_grad(objective, has_aux=True)(params, True)
    np.testing.assert_array_equal(np.asarray(got_n), np.asarray(want_n))
    assert np.asarray(want_n)[0].tolist() == [n - 1 for n in groups[0][2]]  # no prompt: the first is unscored
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-5)
    assert np.ptp(np.asarray(want)) > 1.0
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want_grad), jax.tree.leaves(got_grad)):
        scale = float(jnp.abs(w).max())
        assert scale > 0, path
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=3e-5 * scale, err_msg=str(path))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model_dir = make_tiny_llama_dir(tmp_path_factory.mktemp("shared") / "m", seed=0, initializer_range=0.3)
    return {"dir": model_dir, "tokenizer": load_tokenizer(model_dir)}


def _spec(objective="pairs") -> LossSpec:
    return LossSpec(objective, "sigmoid", 0.5, suffix_len=0, chunk_size=5)


def test_pairs_and_lists_in_shared_rows_match_torch_on_each_sequence(tiny):
    """max_length 9 cuts two of the prompts (one cut for both responses): every response's log-prob
    against PyTorch's float64 log-softmax over that sequence alone."""
    tok, model_dir = tiny["tokenizer"], tiny["dir"]
    model = from_pretrained(model_dir, "causal_lm").model
    pairs = tokenize_pairs(PAIRS, tok, max_length=9, shared_prompt=True)
    assert (pairs.chosen.truncated | pairs.rejected.truncated).sum() == 2
    batch = SharedPromptPairBatcher(pairs, 5, shuffle=False, bucket_window=0, pad_to_multiple=4).batch(0, 0)
    logps, tokens = group_logprobs(model, {k: jnp.asarray(v) for k, v in batch.items()}, "pairs", _spec())
    for side in ("chosen", "rejected"):
        enc = getattr(pairs, side)
        want = [torch_response_logp(model_dir, enc.sequence(i), int(enc.response_len[i])) for i in range(5)]
        np.testing.assert_array_equal(np.asarray(tokens[side]), enc.response_len)
        np.testing.assert_allclose(np.asarray(logps[side]), want, atol=2e-4, rtol=0)

    lists = tokenize_lists([RankedList("hi there you", ("yes", "no bad", "good one red"), (1, 0, 2)),
                            RankedList("one", ("red", "blue"), (0, 1))], tok, max_length=16, shared_prompt=True)
    batch = SharedPromptListBatcher(lists, 2, shuffle=False, bucket_window=0).batch(0, 0)
    logps, _ = group_logprobs(model, {k: jnp.asarray(v) for k, v in batch.items()}, "listwise", _spec("listwise"))
    seqs = lists.seqs
    want = [torch_response_logp(model_dir, seqs.sequence(i), int(seqs.response_len[i])) for i in range(len(seqs))]
    got = np.asarray(logps["seqs"])
    np.testing.assert_allclose([got[0, 0], got[0, 1], got[0, 2], got[1, 0], got[1, 1]], want, atol=2e-4, rtol=0)
    assert got[1, 2] == 0.0  # the second list's empty slot holds no tokens


def test_responses_that_do_not_share_their_prompt_tokens_are_refused(tiny):
    pairs = tokenize_pairs(PAIRS, tiny["tokenizer"], max_length=9)  # each side's prompt cut on its own
    with pytest.raises(ValueError, match="do not share their prompt tokens"):
        SharedPromptPairBatcher(pairs, 5, shuffle=False).batch(0, 0)


def test_a_lora_dpo_update_on_shared_rows_is_the_update_on_separate_sequences(tiny):
    """Two AdamW steps against the adapters-off reference: the same losses, metrics and parameters."""
    tok, model_dir = tiny["tokenizer"], tiny["dir"]
    pairs = tokenize_pairs(PAIRS, tok, max_length=9, shared_prompt=True)
    optimizer, schedule = make_optimizer(ml_collections.ConfigDict(dict(
        learning_rate=1e-2, schedule="constant", warmup_steps=0, warmup_ratio=0.0, weight_decay=0.0,
        max_grad_norm=1.0, b1=0.9, b2=0.999, eps=1e-8)), 10)
    results = []
    for batcher in (PrefPairBatcher, SharedPromptPairBatcher):
        policy = from_pretrained(model_dir, "causal_lm", lora=LoRAConfig(rank=2, alpha=4.0, targets="q_proj|v_proj"),
                                 seed=3).model
        graphdef, trainable, frozen = split_trainable(policy, "lora")
        step = jax.jit(make_train_step(graphdef, None, _spec(), "adapters_off", optimizer, schedule))
        state = init_train_state(trainable, optimizer)
        b = batcher(pairs, 5, shuffle=False, bucket_window=0, pad_to_multiple=4)
        metrics = []
        for i in range(2):
            batch = {k: jnp.asarray(v) for k, v in b.batch(0, 0).items()}
            state, m = step(state, (frozen, ()), batch, jax.random.key(i))
            metrics.append(m)
        results.append((state["params"], metrics))
    (p_sep, m_sep), (p_sh, m_sh) = results
    for a, b in zip(m_sep, m_sh):
        for k in ("loss_sum", "denom", "seq_tokens", "grad_norm", "correct_sum"):
            assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-4, abs=1e-6), k
    assert float(m_sep[1]["loss_sum"]) != pytest.approx(float(m_sep[0]["loss_sum"]), rel=1e-3)  # it learned
    for a, b in zip(jax.tree.leaves(p_sep), jax.tree.leaves(p_sh)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5)
