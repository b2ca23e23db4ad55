"""Critic-free RL maths and pieces against independent references: float64 loops for the advantage
estimators, hand-computed aggregations and clipping, the GRPO paper's k3 formula, a group that shares its
prompt's prefill against G independent rows, and the reward functions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.ops.group_advantages import degenerate_groups, group_advantages, reinforce_pp_advantages
from jaxrlhf.ops.kl import kl_penalty
from jaxrlhf.ops.ppo import aggregate, policy_loss, surrogate_tokens
from jaxrlhf.rl import arithmetic
from jaxrlhf.rl.group_step import GroupRLConfig, make_group_experience_fn, make_group_update_step
from jaxrlhf.rl.verifiable import RewardFunctions, final_number


def _loop_group(rewards, estimator, scale_by_std, eps=1e-4):
    out = np.zeros_like(rewards, np.float64)
    for b, row in enumerate(rewards.astype(np.float64)):
        G = len(row)
        for i in range(G):
            if estimator == "rloo":
                out[b, i] = row[i] - sum(row[j] for j in range(G) if j != i) / (G - 1)
                continue
            mean = sum(row) / G
            out[b, i] = row[i] - mean
            if estimator == "grpo" and scale_by_std:
                std = math.sqrt(sum((x - mean) ** 2 for x in row) / (G - 1))
                out[b, i] /= std + eps
    return out


@pytest.mark.parametrize("estimator,scale_by_std", [("grpo", True), ("grpo", False), ("rloo", True),
                                                    ("group_mean", True)])
def test_group_advantages_match_a_float64_loop(estimator, scale_by_std):
    rewards = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    rewards[2] = 0.7  # a degenerate group
    got = np.asarray(group_advantages(rewards, estimator, scale_by_std))
    np.testing.assert_allclose(got, _loop_group(rewards, estimator, scale_by_std), rtol=1e-5, atol=1e-6)
    assert np.all(got[2] == 0.0) and np.all(np.isfinite(got))
    assert list(np.asarray(degenerate_groups(rewards))) == [False, False, True, False, False]


def test_a_group_of_one_or_an_unknown_estimator_is_refused():
    with pytest.raises(ValueError, match="at least 2"):
        group_advantages(np.ones((3, 1)))
    with pytest.raises(ValueError, match="unknown group estimator"):
        group_advantages(np.ones((3, 2)), "ppo")


def test_reinforce_pp_advantages_are_whitened_returns_to_go():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(4, 7)).astype(np.float32)
    mask = (np.arange(7)[None] < np.array([[7], [3], [5], [1]])).astype(np.int32)
    gamma = 0.9
    returns = np.zeros((4, 7))
    for b in range(4):
        acc = 0.0
        for t in reversed(range(7)):
            acc = rewards[b, t] + gamma * acc if mask[b, t] else 0.0
            returns[b, t] = acc
    real = returns[mask > 0]
    want = np.where(mask > 0, (returns - real.mean()) / math.sqrt(real.var(ddof=1) + 1e-8), 0.0)
    got = np.asarray(reinforce_pp_advantages(rewards, mask, gamma))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_loss_aggregations_match_hand_computed_values():
    loss = np.array([[1.0, 2.0, 3.0, 9.0], [4.0, 9.0, 9.0, 9.0]], np.float32)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]])
    s, d = aggregate(loss, mask, "token_mean")
    assert float(s / d) == pytest.approx((1 + 2 + 3 + 4) / 4)
    s, d = aggregate(loss, mask, "seq_mean_token_mean")
    assert float(s / d) == pytest.approx(((1 + 2 + 3) / 3 + 4 / 1) / 2)
    s, d = aggregate(loss, mask, "seq_mean_token_sum_norm", max_len=8)
    assert float(s / d) == pytest.approx(((1 + 2 + 3) / 8 + 4 / 8) / 2)
    s, d = aggregate(np.vstack([loss, loss[:1]]), np.vstack([mask, 0 * mask[:1]]), "seq_mean_token_mean")
    assert float(d) == 2  # a response out of the mask (a dropped group) is not counted
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(loss, mask, "sum")


def test_clip_higher_bounds_the_ratio_asymmetrically():
    # ratios 1.5 (positive advantage: clipped at 1 + high) and 0.5 (negative advantage: clipped at 1 - low)
    old = np.zeros((1, 2), np.float32)
    new = np.log(np.array([[1.5, 0.5]], np.float32))
    adv = np.array([[1.0, -1.0]], np.float32)
    mask = np.ones((1, 2))
    _, loss, metrics = surrogate_tokens(new, old, adv, mask, clip_eps=0.2, clip_eps_high=0.28)
    np.testing.assert_allclose(np.asarray(loss), [[-1.28, 0.8]], rtol=1e-6)
    assert float(jnp.sum(metrics["clip_frac_sum"])) == 2.0
    symmetric, _, _ = policy_loss(new, old, adv, mask, 0.2)
    assert float(symmetric) == pytest.approx(-1.2 + 0.8)


def test_k3_kl_is_the_grpo_papers_formula():
    logp = np.log(np.array([0.2, 0.5, 0.9], np.float32))
    ref = np.log(np.array([0.3, 0.5, 0.6], np.float32))
    want = [r / p - math.log(r / p) - 1 for p, r in zip([0.2, 0.5, 0.9], [0.3, 0.5, 0.6])]
    np.testing.assert_allclose(np.asarray(kl_penalty(logp, ref, "k3")), want, rtol=1e-5, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from flax import nnx

    from jaxrlhf.models.hub import from_pretrained
    from tests.helpers.models import make_tiny_llama_dir, perturb_weights

    path = make_tiny_llama_dir(tmp_path_factory.mktemp("policy") / "m")
    model = perturb_weights(from_pretrained(str(path), "causal_lm").model)
    return nnx.split(model)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_group_sharing_its_prompt_prefill_samples_what_g_independent_rows_do(tiny_policy, temperature):
    from jaxrlhf.rl.sampling import SamplingConfig, generate, left_pad

    G = 3
    ids, mask = left_pad([[1, 7, 8, 9], [1, 10, 11], [1, 12, 13, 14, 15]], 0, length=8)
    cfg = SamplingConfig(max_new_tokens=6, temperature=temperature, eos_ids=(2,), pad_id=0)
    key = jax.random.key(3)
    grouped = generate(tiny_policy, ids, mask, key, cfg, group_size=G)
    rows = generate(tiny_policy, np.repeat(ids, G, 0), np.repeat(mask, G, 0), key, cfg)
    np.testing.assert_array_equal(np.asarray(grouped["response_ids_BxN"]), np.asarray(rows["response_ids_BxN"]))
    np.testing.assert_array_equal(np.asarray(grouped["response_mask_BxN"]), np.asarray(rows["response_mask_BxN"]))
    np.testing.assert_allclose(np.asarray(grouped["logprobs_BxN"]), np.asarray(rows["logprobs_BxN"]), atol=1e-5)
    if temperature > 0:  # the samples of a group differ from one another
        resp = np.asarray(grouped["response_ids_BxN"]).reshape(3, G, -1)
        assert any(len({tuple(r) for r in group}) > 1 for group in resp)


def _rollout(tiny_policy, G, scores):
    from jaxrlhf.rl.rollout import make_sample_fn
    from jaxrlhf.rl.sampling import SamplingConfig, left_pad
    from jaxrlhf.training.trainable import split_for

    graphdef, state = tiny_policy
    ids, mask = left_pad([[1, 7, 8], [1, 10, 11, 12]], 0, length=4)
    sample = make_sample_fn(graphdef, SamplingConfig(max_new_tokens=4, temperature=1.0, pad_id=0), G)
    from flax import nnx

    _, params, frozen = split_for(nnx.merge(graphdef, state), _full())
    rollout = sample((params, frozen), ids, mask, jax.random.key(0))
    return rollout, (params, frozen), jnp.asarray(scores, jnp.float32)


def _full():
    import ml_collections

    return ml_collections.ConfigDict({"train_mode": "full", "train_lm_head": False})


def test_the_update_loss_is_minus_the_mean_advantage_at_ratio_one_and_degenerate_groups_leave_it(tiny_policy):
    import optax

    G = 3
    scores = [1.0, 0.0, 0.0, 0.5, 0.5, 0.5]  # group 1 degenerate
    rollout, actor, score = _rollout(tiny_policy, G, scores)
    graphdef = tiny_policy[0]
    cfg = GroupRLConfig(group_size=G, aggregation="seq_mean_token_mean", single_update=True, max_new_tokens=4)
    exp, metrics = jax.jit(make_group_experience_fn(graphdef, None, cfg))(actor, (), rollout, score)
    adv = np.asarray(exp["advantages_BxN"])
    mask = np.asarray(rollout["response_mask_BxN"])
    want_adv = _loop_group(np.array(scores).reshape(2, G), "grpo", True).reshape(-1)
    np.testing.assert_allclose(adv, want_adv[:, None] * mask, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(exp["loss_mask_BxN"])[G:] == 0) and float(metrics["groups_dropped_frac"]) == 0.5
    state = {"actor": {"params": actor[0], "opt_state": optax.sgd(0.0).init(actor[0])}, "step": jnp.int32(0)}
    _, m = jax.jit(make_group_update_step(graphdef, optax.sgd(0.0), cfg))(state, actor[1], exp)
    # ratio 1: the surrogate is -A per token; each response's token mean, averaged over the G responses of the
    # group that is left (the degenerate group's rows are in neither the sum nor the denominator)
    per_row = [-(want_adv[i] * mask[i]).sum() / max(mask[i].sum(), 1) for i in range(G)]
    assert float(m["policy_loss"]) == pytest.approx(sum(per_row) / G, abs=1e-6)
    assert np.isfinite(float(m["loss"]))


def _grouped_rows(B, G, P, N, V=101, seed=0):
    """B left-padded prompts (lengths P, P - 3, 1), each repeated G times, and R = B*G responses, some ended
    early (right padding): the layout group sampling writes."""
    rs = np.random.RandomState(seed)
    lengths = [P, P - 3, 1][:B]
    pm = np.zeros((B, P), np.int32)
    for b, n in enumerate(lengths):
        pm[b, P - n:] = 1
    prompt = rs.randint(1, V, (B, P)) * pm
    rm = np.ones((B * G, N), np.int32)
    rm[0, 2:] = 0
    rm[G + 1, 1:] = 0  # a response of one token
    resp = rs.randint(1, V, (B * G, N)) * rm
    ids = np.concatenate([np.repeat(prompt, G, 0), resp], 1).astype(np.int32)
    mask = np.concatenate([np.repeat(pm, G, 0), rm], 1).astype(np.int32)
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(resp.astype(np.int32)), rm


@pytest.mark.parametrize("name", ["llama", "gpt2", "mistral", "qwen2"])
def test_a_groups_prompt_run_once_gives_the_full_sequence_logprobs_and_gradients(name):
    from flax import nnx

    from jaxrlhf.rl.experience import group_response_logprobs, response_logprobs
    from tests.helpers.models import tiny_decoder

    G, P, N = 3, 7, 5
    ids, mask, resp, rm = _grouped_rows(3, G, P, N)
    graphdef, params, rest = nnx.split(tiny_decoder(name), nnx.Param, ...)
    weight = jnp.asarray(rm * np.arange(1.0, N + 1))  # every position's gradient counts, differently

    def objective(params, shared):
        model = nnx.merge(graphdef, params, rest)
        logp = (group_response_logprobs(model, ids, mask, resp, G, 0.7) if shared
                else response_logprobs(model, ids, mask, resp, 0.7))
        return jnp.sum(logp * weight), logp

    (_, want), want_grad = jax.value_and_grad(objective, has_aux=True)(params, False)
    (_, got), got_grad = jax.value_and_grad(objective, has_aux=True)(params, True)
    np.testing.assert_allclose(np.asarray(got) * rm, np.asarray(want) * rm, atol=2e-5)
    for (path, w), g in zip(jax.tree_util.tree_leaves_with_path(want_grad), jax.tree.leaves(got_grad)):
        scale = float(jnp.abs(w).max())
        assert scale > 0, path
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5 * scale, err_msg=str(path))


def test_rows_that_are_not_whole_groups_are_refused():
    from jaxrlhf.rl.experience import group_response_logprobs
    from tests.helpers.models import tiny_decoder

    ids, mask, resp, _ = _grouped_rows(2, 3, 7, 4)
    with pytest.raises(ValueError, match="not groups of 4"):
        group_response_logprobs(tiny_decoder("llama"), ids, mask, resp, 4)


def test_an_update_on_shared_prompts_equals_one_on_full_rows(tiny_policy):
    """Experience and two clipped SGD updates (two epochs: old log-probs from the experience, a ratio != 1) with
    each group's prompt run once, against the same with every row's full sequence."""
    import optax

    G = 3
    rollout, actor, score = _rollout(tiny_policy, G, [1.0, 0.0, 0.5, 0.2, 0.9, 0.4])
    graphdef = tiny_policy[0]
    opt = optax.sgd(1.0)  # Adam would turn rounding in near-zero gradients into whole steps
    results = []
    for shared in (True, False):
        cfg = GroupRLConfig(group_size=G, max_new_tokens=4, shared_prompt=shared, kl_coef=0.1)
        exp, _ = jax.jit(make_group_experience_fn(graphdef, None, cfg))(actor, (), rollout, score)
        state = {"actor": {"params": actor[0], "opt_state": opt.init(actor[0])}, "step": jnp.int32(0)}
        update = jax.jit(make_group_update_step(graphdef, opt, cfg))
        state, _ = update(state, actor[1], exp)
        state, m = update(state, actor[1], exp)  # the second update sees a ratio away from 1
        results.append((exp, state["actor"]["params"], m))
    (exp_s, params_s, m_s), (exp_f, params_f, m_f) = results
    for k in ("old_logp_BxN", "ref_logp_BxN", "advantages_BxN"):
        np.testing.assert_allclose(np.asarray(exp_s[k]), np.asarray(exp_f[k]), atol=2e-5, err_msg=k)
    assert float(m_s["ratio"]) != 1.0
    for k in ("loss", "policy_loss", "kl_loss", "ratio"):
        assert float(m_s[k]) == pytest.approx(float(m_f[k]), rel=1e-4, abs=1e-6), k
    for a, b, a0 in zip(jax.tree.leaves(params_s), jax.tree.leaves(params_f), jax.tree.leaves(actor[0])):
        step = np.asarray(b) - np.asarray(a0)
        assert np.abs(step).max() > 0
        np.testing.assert_allclose(np.asarray(a) - np.asarray(a0), step, atol=1e-4 * np.abs(step).max())


def test_minibatches_hold_whole_groups_when_the_prompt_is_shared():
    from jaxrlhf.rl.group_iteration import GroupIteration

    def order(shared):
        it = GroupIteration.__new__(GroupIteration)  # only the fields minibatch_order reads
        it.cfg, it.rollout_batch_size, it.epochs, it.minibatch_size = (
            GroupRLConfig(group_size=4, shared_prompt=shared), 6, 2, 8)
        return it.minibatch_order(jax.random.key(0))

    idx = order(True)
    assert idx.shape == (6, 8)
    groups = idx.reshape(-1, 4)
    assert np.all(groups == groups[:, :1] + np.arange(4)) and np.all(groups[:, 0] % 4 == 0)
    for epoch in idx.reshape(2, -1):  # each epoch visits every row once
        assert sorted(epoch) == list(range(24))
    assert not np.all(order(False).reshape(-1, 4) % 4 == np.arange(4))  # rows shuffled one by one


def test_verifiable_rewards_and_their_errors():
    assert final_number("The answer is 1,234.") == 1234.0
    assert final_number("so -3.5 then #### 12") == 12.0
    assert final_number("\\boxed{7}") == 7.0 and final_number("no digits") is None
    fns = RewardFunctions.parse("exact_match=2,format=0.5,length_penalty", format_regex=r"^\d+$", length_target=4)
    total, parts = fns.score(["p", "p"], ["12", "it is 11 I think"], [{"answer": 12}, {"answer": 12}])
    np.testing.assert_allclose(parts["exact_match"], [1.0, 0.0])
    np.testing.assert_allclose(parts["format"], [1.0, 0.0])
    np.testing.assert_allclose(parts["length_penalty"], [0.0, -(16 - 4) / 4])
    np.testing.assert_allclose(total, [2.5, -3.0])
    custom = RewardFunctions.parse("tests.helpers.rewards:yes_fraction")
    assert custom.names == ["yes_fraction"]
    np.testing.assert_allclose(custom.score(["p"], ["yes no yes yes"], [{}])[0], [0.75])
    for spec, message in [("tests.helpers.rewards:NOT_A_FUNCTION", "has no function"),
                          ("nope_module:f", "cannot import 'nope_module'"), ("exact_match=x", "not a number"),
                          ("bogus", "neither a built-in"), ("format", "format_regex is empty")]:
        with pytest.raises(ValueError, match=message):
            RewardFunctions.parse(spec)
    failing = RewardFunctions.parse("tests.helpers.rewards:fails_on_hello")
    with pytest.raises(ValueError, match=r"'fails_on_hello' failed on row 1 \(prompt 'say hello'\): RuntimeError"):
        failing.score(["hi", "say hello"], ["a", "b"], [{}, {}])


def test_arithmetic_problems_are_seeded_and_their_answers_exact():
    a = arithmetic.problems(200, seed=0, ops="+,-,*", max_value=30)
    assert a == arithmetic.problems(200, seed=0, ops="+,-,*", max_value=30)
    assert a != arithmetic.problems(200, seed=1, ops="+,-,*", max_value=30)
    for row in a:
        x, y = (int(v) for v in __import__("re").findall(r"\d+", row["prompt"])[:2])
        assert row["answer"] == {"+": x + y, "-": x - y, "*": x * y}[row["op"]] and row["answer"] >= 0
    assert {r["op"] for r in a} == {"+", "-", "*"}
    assert len({r["prompt"] for r in a}) == 200  # distinct
    held = arithmetic.problems(64, seed=1)
    train = arithmetic.problems(2048, seed=0, exclude={r["prompt"] for r in held})
    assert len(train) == 2048 and not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    with pytest.raises(ValueError, match="task.ops"):
        arithmetic.problems(3, 0, ops="/")
    with pytest.raises(ValueError, match="cannot draw 10 problems"):  # 1 + 1 .. 2 + 2 in one template: 3 sums
        arithmetic.problems(10, 0, min_value=1, max_value=2, ops="+", styles="plain")


def test_the_frontier_reads_the_last_record_of_each_step(tmp_path):
    import json

    from jaxrlhf.rl.frontier import frontier_png, kl_reward_points

    lines = [{"step": 1, "ppo/kl_k1_per_seq": 0.0, "ppo/score_mean": 0.1}, {"step": 2, "ppo/kl_k1_per_seq": 1.0,
             "ppo/score_mean": 0.5}, {"step": 2, "eval/score_mean": 9.0},  # an eval record: not a point
             {"step": 2, "ppo/kl_k1_per_seq": 2.0, "ppo/score_mean": 0.7}]  # resumed: logged again, wins
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    points = kl_reward_points(path, "ppo/", "score_mean")
    assert points == [(1, 0.0, 0.1), (2, 2.0, 0.7)]
    assert frontier_png(points[:1], tmp_path / "one.png", "score") is None
    assert frontier_png(points, tmp_path / "f.png", "score").read_bytes()[:4] == b"\x89PNG"
