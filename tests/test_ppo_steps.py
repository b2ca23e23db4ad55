"""The PPO experience and update steps against independent float64 references, and their switches.

- The experience step (log-probs, values, shaped rewards, GAE, whitening, metrics) against a float64 numpy
  pipeline fed by per-row forwards of the models on the unpadded sequences (full logits, no chunking).
- One SGD update: its metrics against the clipped-surrogate / clipped-value formulas (TRL, MOSS-RLHF) in
  float64, and the applied step going downhill on the loss those formulas define.
- Switches: the approximate-KL skip, per-minibatch whitening, advantage clipping, the adaptive KL
  controller at the train_ppo defaults, and the seeded reward moments (`rl.ppo_setup.initial_moments`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrlhf.ops import whitening
from jaxrlhf.rl.experience import AdvantageConfig, make_experience_fn
from jaxrlhf.rl.ppo_step import PPOLossConfig, make_update_step
from jaxrlhf.rl.rewards import RewardShaping

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

PAD, EOS = 0, 2
TEMPERATURE = 0.7
P, N = 6, 7
# (real prompt tokens, real response tokens, ended with EOS)
ROWS = [(6, 7, False), (4, 4, True), (2, 1, True), (5, 6, True)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from jaxrlhf.models.hub import from_pretrained
    from tests.helpers.models import make_tiny_llama_dir

    root = tmp_path_factory.mktemp("ppo_steps")
    actor_dir = make_tiny_llama_dir(root / "actor", seed=3)
    ref_dir = make_tiny_llama_dir(root / "ref", seed=4)  # different weights from the actor
    actor = from_pretrained(str(actor_dir), "causal_lm").model
    ref = from_pretrained(str(ref_dir), "causal_lm").model
    critic = from_pretrained(str(actor_dir), "value", seed=5).model
    # A fresh head reads values of ~0.1; scale it so values and their differences matter in GAE.
    critic.head.out.kernel[...] = critic.head.out.kernel[...] * 20.0
    return actor, ref, critic


@pytest.fixture(scope="module")
def batch(models):
    vocab = models[0].lm_head_kernel().shape[1]
    rng = np.random.default_rng(0)
    B = len(ROWS)
    ids = np.full((B, P + N), PAD, np.int32)
    mask = np.zeros((B, P + N), np.int32)
    ended = np.zeros(B, np.int32)
    for b, (n_prompt, n_resp, has_eos) in enumerate(ROWS):
        ids[b, P - n_prompt:P] = rng.integers(6, vocab, n_prompt)  # left-padded prompt
        ids[b, P:P + n_resp] = rng.integers(6, vocab, n_resp)      # right-padded response
        if has_eos:
            ids[b, P + n_resp - 1] = EOS
        mask[b, P - n_prompt:P + n_resp] = 1
        ended[b] = int(has_eos)
    return {"ids_BxT": ids, "mask_BxT": mask, "response_ids_BxN": ids[:, P:].copy(),
            "response_mask_BxN": mask[:, P:].copy(), "ended_B": ended,
            "sample_logp_BxN": np.zeros((B, N), np.float32)}


# ---------------------------------------------------------------------------------------------------
# Independent float64 references

def _split(model):
    graphdef, params, frozen = nnx.split(model, nnx.Param, ...)
    return graphdef, params, frozen


def _log_softmax64(x):
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def ref_policy(model, batch, temperature=TEMPERATURE):
    """(logp, entropy) [B, N] float64 from full-logits forwards of each row without any padding."""
    ids, mask, resp_mask = batch["ids_BxT"], batch["mask_BxT"], batch["response_mask_BxN"]
    B = ids.shape[0]
    logp, ent = np.zeros((B, N)), np.zeros((B, N))
    for b in range(B):
        real = ids[b][mask[b] > 0]
        n_prompt = int(mask[b, :P].sum())
        logits, _ = model(jnp.asarray(real[None]), jnp.ones((1, len(real)), jnp.int32))
        lsm = _log_softmax64(np.asarray(logits[0], np.float64) / temperature)
        for t in range(int(resp_mask[b].sum())):
            row = lsm[n_prompt - 1 + t]  # the state before response token t predicts it
            logp[b, t] = row[batch["response_ids_BxN"][b, t]]
            ent[b, t] = -(np.exp(row) * row).sum()
    return logp, ent


def ref_values(critic, batch):
    """V(state before each response token) [B, N] float64, unpadded per-row forwards, 0 after the end."""
    ids, mask, resp_mask = batch["ids_BxT"], batch["mask_BxT"], batch["response_mask_BxN"]
    out = np.zeros((ids.shape[0], N))
    for b in range(ids.shape[0]):
        real = ids[b][mask[b] > 0]
        n_prompt = int(mask[b, :P].sum())
        v = np.asarray(critic(jnp.asarray(real[None]), jnp.ones((1, len(real)), jnp.int32))[0], np.float64)
        for t in range(int(resp_mask[b].sum())):
            out[b, t] = v[n_prompt - 1 + t]
    return out


def ref_gae(rewards, values, mask, gamma, lam):
    """A_t = sum_l (gamma lam)^l delta_{t+l} over the row's response (contiguous from 0), terminal at its end."""
    B = rewards.shape[0]
    adv = np.zeros_like(rewards)
    for b in range(B):
        L = int(mask[b].sum())
        delta = [rewards[b, t] + gamma * (values[b, t + 1] if t + 1 < L else 0.0) - values[b, t] for t in range(L)]
        for t in range(L):
            adv[b, t] = sum((gamma * lam) ** (u - t) * delta[u] for u in range(t, L))
    return adv


def ref_whiten(x, mask, clip=0.0):
    m = mask > 0
    vals = x[m]
    out = (x - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8)  # unbiased variance, as TRL's masked_whiten
    if clip > 0:
        out = np.clip(out, -clip, clip)
    return np.where(m, out, 0.0)


def ref_moments(prior_mean, prior_var, prior_count, x):
    """Pooled mean and population variance of a prior (mean, var, count) and samples x, via E[x^2]."""
    n = prior_count + len(x)
    mean = (prior_count * prior_mean + np.sum(x)) / n
    second = (prior_count * (prior_var + prior_mean ** 2) + np.sum(np.square(x))) / n
    return mean, second - mean ** 2, n


# ---------------------------------------------------------------------------------------------------
# 1. Experience step

SHAPING = RewardShaping(normalise=True, shift_mean=True, clip=1.2, scale=1.5, missing_eos_penalty=0.3)
SCORES = np.array([2.0, -1.0, 4.0, 0.3], np.float32)
PRIOR = (0.5, 2.0, 4.0)  # running moments before this batch: mean, variance, count
KL_COEF = 0.1
GAMMA, LAM = 0.9, 0.8


def run_experience(models, batch, advantages: AdvantageConfig, sample_logp=None):
    actor, ref, critic = models
    a_def, a_params, a_frozen = _split(actor)
    c_def, c_params, c_frozen = _split(critic)
    r_def, r_state = nnx.split(ref)
    fn = jax.jit(make_experience_fn(a_def, r_def, c_def, temperature=TEMPERATURE, shaping=SHAPING,
                                    advantages=advantages, chunk_size=3))  # 3 does not divide N = 7
    b = dict(batch)
    if sample_logp is not None:
        b["sample_logp_BxN"] = sample_logp.astype(np.float32)
    moments = whitening.RunningMoments(*(jnp.float32(v) for v in PRIOR))
    exp, moments, metrics = fn((a_params, a_frozen), (r_state,), (c_params, c_frozen),
                               jax.tree_util.tree_map(jnp.asarray, b), jnp.asarray(SCORES), jnp.float32(KL_COEF),
                               moments)
    return jax.device_get(exp), jax.device_get(moments), jax.device_get(metrics)


@pytest.fixture(scope="module")
def reference(models, batch):
    """Everything the experience step should produce, in float64."""
    actor, ref, critic = models
    m = batch["response_mask_BxN"].astype(np.float64)
    logp, entropy = ref_policy(actor, batch)
    ref_logp, _ = ref_policy(ref, batch)
    values = ref_values(critic, batch)
    penalised = SCORES.astype(np.float64) - SHAPING.missing_eos_penalty * (1 - batch["ended_B"])
    mean, var, count = ref_moments(*PRIOR, penalised)  # the batch enters the moments before normalising
    score = SHAPING.scale * np.clip((penalised - mean) / np.sqrt(var + 1e-8), -SHAPING.clip, SHAPING.clip)
    k1 = (logp - ref_logp) * m
    rewards = -KL_COEF * k1
    for b in range(len(ROWS)):
        rewards[b, int(m[b].sum()) - 1] += score[b]  # on the last real token
    adv = ref_gae(rewards, values, m, GAMMA, LAM)
    return dict(logp=logp, ref_logp=ref_logp, values=values, entropy=entropy, rewards=rewards, score=score,
                adv=adv, returns=(adv + values) * m, moments=(mean, var, count), k1=k1, mask=m)


def test_experience_matches_float64_reference(models, batch, reference):
    ref = reference
    m = ref["mask"]
    # What the sampler reported: the recomputed log-probs plus a known gap on real tokens, junk after EOS.
    noise = np.random.default_rng(1).uniform(-0.05, 0.05, m.shape) * m
    sample_logp = np.where(m > 0, ref["logp"] + noise, 123.0)
    exp, moments, metrics = run_experience(models, batch, AdvantageConfig(gamma=GAMMA, lam=LAM, whiten=True),
                                           sample_logp)
    # sanity of the case: rows differ in length, one row never ended, some score is clipped
    assert sorted(m.sum(1)) == [1, 4, 6, 7] and (np.abs(ref["score"]) == 1.5 * 1.2).any()
    assert not (np.abs(ref["score"]) == 1.5 * 1.2).all()

    close = lambda got, want, tol=2e-5: np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=tol,
                                                                   atol=tol)
    close(exp["old_logp_BxN"], ref["logp"] * m)
    close(exp["ref_logp_BxN"], ref["ref_logp"] * m)
    close(exp["values_BxN"], ref["values"])
    close(exp["rewards_BxN"], ref["rewards"])
    close(exp["returns_BxN"], ref["returns"])  # from the advantages before whitening
    close(exp["advantages_BxN"], ref_whiten(ref["adv"], m), 1e-4)
    for k in ("ids_BxT", "mask_BxT", "response_ids_BxN", "response_mask_BxN", "ended_B"):
        np.testing.assert_array_equal(exp[k], batch[k])
    for key in ("old_logp_BxN", "rewards_BxN", "advantages_BxN", "returns_BxN", "values_BxN"):
        assert exp[key].dtype == np.float32, key
    close([moments.mean, moments.var, moments.count], list(ref["moments"]), 1e-5)

    close(metrics["kl_k1_per_seq"], ref["k1"].sum(1).mean())
    close(metrics["kl_per_seq"], ref["k1"].sum(1).mean())  # the k1 estimator is the penalised one here
    close(metrics["score_mean"], SCORES.astype(np.float64).mean())
    close(metrics["reward_mean"], ref["score"].mean())
    close(metrics["entropy"], (ref["entropy"] * m).sum() / m.sum(), 1e-4)
    close(metrics["response_length"], m.sum(1).mean())
    close(metrics["ended_frac"], 0.75)
    close(metrics["logprob_mismatch_mean"], np.abs(noise).sum() / m.sum(), 1e-4)
    close(metrics["logprob_mismatch_max"], np.abs(noise).max(), 1e-4)


def test_experience_advantage_clip_and_minibatch_scope(models, batch, reference):
    """clip > 0 clips the whitened advantages (returns keep the raw ones); scope=minibatch leaves them raw."""
    m = reference["mask"]
    clip = 0.6
    whitened = ref_whiten(reference["adv"], m)
    n_beyond = int(((np.abs(whitened) > clip) & (m > 0)).sum())
    assert 0 < n_beyond < m.sum()  # the case clips some tokens, not all
    exp, _, _ = run_experience(models, batch, AdvantageConfig(gamma=GAMMA, lam=LAM, whiten=True, clip=clip))
    np.testing.assert_allclose(exp["advantages_BxN"], np.clip(whitened, -clip, clip), atol=1e-4)
    assert np.abs(exp["advantages_BxN"]).max() <= clip + 1e-6
    np.testing.assert_allclose(exp["returns_BxN"], reference["returns"], atol=2e-5)

    exp, _, _ = run_experience(models, batch, AdvantageConfig(gamma=GAMMA, lam=LAM, whiten=True, clip=clip,
                                                              scope="minibatch"))
    np.testing.assert_allclose(exp["advantages_BxN"], reference["adv"], atol=2e-5)  # whitened in the update
    np.testing.assert_allclose(exp["returns_BxN"], reference["returns"], atol=2e-5)


# ---------------------------------------------------------------------------------------------------
# 2. Update step

CLIP_EPS, VCLIP_EPS, VF_COEF, ENT_COEF = 0.2, 0.2, 0.5, 0.05


def make_minibatch(models, batch, reference, logratio_shift=None, adv=None):
    """An experience minibatch around the current models: old log-probs = current - d (ratio e^d, some
    outside the clip range), old values = current - dv (|dv| > value clip), random returns and advantages."""
    m = reference["mask"]
    rng = np.random.default_rng(2)
    d = rng.choice([-0.4, -0.1, 0.05, 0.3, -0.35, 0.15], size=m.shape) if logratio_shift is None else logratio_shift
    dv = rng.choice([0.5, -0.4, 0.3, -0.6, 0.45], size=m.shape)
    if adv is None:
        adv = rng.normal(size=m.shape)
    returns = reference["values"] + rng.normal(size=m.shape)
    mb = dict(batch, old_logp_BxN=(reference["logp"] - d) * m, values_BxN=(reference["values"] - dv) * m,
              advantages_BxN=adv * m, returns_BxN=returns * m, ref_logp_BxN=reference["ref_logp"] * m)
    return {k: (v.astype(np.float32) if v.dtype == np.float64 else v) for k, v in mb.items()}


def ref_losses(logp, entropy, values, mb):
    """The PPO losses and metrics in float64, written out as in TRL / MOSS-RLHF, token means over the mask."""
    m = mb["response_mask_BxN"] > 0
    old = mb["old_logp_BxN"].astype(np.float64)
    adv = mb["advantages_BxN"].astype(np.float64)
    ratio = np.exp(logp - old)
    pg1 = -adv * ratio
    pg2 = -adv * np.clip(ratio, 1 - CLIP_EPS, 1 + CLIP_EPS)
    v_old = mb["values_BxN"].astype(np.float64)
    ret = mb["returns_BxN"].astype(np.float64)
    vf1 = (values - ret) ** 2
    vf2 = (np.clip(values, v_old - VCLIP_EPS, v_old + VCLIP_EPS) - ret) ** 2
    out = {
        "policy_loss": np.maximum(pg1, pg2)[m].mean(),
        "clip_frac": (pg2 > pg1)[m].mean(),
        "approx_kl": ((ratio - 1) - np.log(ratio))[m].mean(),  # k3 of KL(old || new)
        "ratio": ratio[m].mean(),
        "entropy": entropy[m].mean(),
        "value_loss": 0.5 * np.maximum(vf1, vf2)[m].mean(),
        "value_clip_frac": (vf2 > vf1)[m].mean(),
    }
    out["actor_loss"] = out["policy_loss"] - ENT_COEF * out["entropy"]
    out["critic_loss"] = VF_COEF * out["value_loss"]
    # margins: no token sits on a clip boundary, where float32 and float64 could disagree
    out["margin"] = min(np.abs(pg1 - pg2)[m & (np.abs(pg1 - pg2) > 0)].min(), np.abs(vf1 - vf2)[m].min())
    return out


def loss_cfg(**kw):
    kw = dict(dict(clip_eps=CLIP_EPS, value_clip_eps=VCLIP_EPS, vf_coef=VF_COEF, entropy_coef=ENT_COEF,
                   temperature=TEMPERATURE, chunk_size=4), **kw)
    return PPOLossConfig(**kw)


def init_state(models, actor_opt, critic_opt):
    actor, _, critic = models
    a_def, a_params, a_frozen = _split(actor)
    c_def, c_params, c_frozen = _split(critic)
    state = {"actor": {"params": a_params, "opt_state": actor_opt.init(a_params)},
             "critic": {"params": c_params, "opt_state": critic_opt.init(c_params)},
             "step": jnp.zeros((), jnp.int32)}
    return (a_def, a_frozen), (c_def, c_frozen), state


def updater(models, cfg, actor_opt, critic_opt):
    """mb -> (state before, state after, metrics) of one jitted update from the models' current weights."""
    (a_def, a_frozen), (c_def, c_frozen), state = init_state(models, actor_opt, critic_opt)
    step = jax.jit(make_update_step(a_def, c_def, actor_opt, critic_opt, cfg))

    def run(mb):
        new_state, metrics = step(state, a_frozen, c_frozen, jax.tree_util.tree_map(jnp.asarray, mb))
        return state, jax.device_get(new_state), jax.device_get(metrics)

    return run


def _merged(models, state):
    actor, _, critic = models
    a_def, _, a_frozen = _split(actor)
    c_def, _, c_frozen = _split(critic)
    return (nnx.merge(a_def, state["actor"]["params"], a_frozen),
            nnx.merge(c_def, state["critic"]["params"], c_frozen))


def _sqnorm(tree):
    return sum(float(np.sum(np.square(np.asarray(x, np.float64)))) for x in jax.tree_util.tree_leaves(tree))


def test_update_metrics_match_formulas_and_step_goes_downhill(models, batch, reference):
    mb = make_minibatch(models, batch, reference)
    before = ref_losses(reference["logp"], reference["entropy"], reference["values"], mb)
    assert 0 < before["clip_frac"] < 1 and 0 < before["value_clip_frac"] < 1 and before["margin"] > 1e-3
    lrs = {"actor": 1e-3, "critic": 5e-5}  # the critic's gradient is ~8x larger
    state0, state1, metrics = updater(models, loss_cfg(), optax.sgd(lrs["actor"]), optax.sgd(lrs["critic"]))(mb)
    for key in ("policy_loss", "clip_frac", "approx_kl", "ratio", "entropy", "value_loss", "value_clip_frac"):
        np.testing.assert_allclose(float(metrics[key]), before[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert float(metrics["kl_skipped"]) == 0 and float(metrics["nonfinite"]) == 0

    # The applied step: theta - lr * g. It must lower the loss the formulas define, by lr * |g|^2 to first order.
    actor1, critic1 = _merged(models, state1)
    logp1, ent1 = ref_policy(actor1, batch)
    after = ref_losses(logp1, ent1, ref_values(critic1, batch), mb)
    for part, loss in (("actor", "actor_loss"), ("critic", "critic_loss")):
        lr = lrs[part]
        step = jax.tree_util.tree_map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b, np.float64),
                                      state0[part]["params"], state1[part]["params"])
        g2 = _sqnorm(step) / lr ** 2  # |g|^2 from the step SGD took
        np.testing.assert_allclose(g2, float(metrics[f"{part}_grad_norm"]) ** 2, rtol=1e-3)
        drop = before[loss] - after[loss]
        assert drop > 0, (part, before[loss], after[loss])
        np.testing.assert_allclose(drop, lr * g2, rtol=0.05, err_msg=part)

    # The entropy bonus on its own (its gradient is ~1% of the surrogate's above): with zero advantages the
    # surrogate is 0 with no gradient, so the step follows -entropy_coef * entropy and must raise the entropy.
    lr = 0.05
    zero_adv = make_minibatch(models, batch, reference, adv=np.zeros_like(reference["mask"]))
    _, state1, metrics = updater(models, loss_cfg(entropy_coef=1.0), optax.sgd(lr), optax.sgd(0.0))(zero_adv)
    assert float(metrics["policy_loss"]) == 0.0
    m = reference["mask"] > 0
    _, ent1 = ref_policy(_merged(models, state1)[0], batch)
    rise = ent1[m].mean() - reference["entropy"][m].mean()
    assert rise > 0
    np.testing.assert_allclose(rise, lr * float(metrics["actor_grad_norm"]) ** 2, rtol=0.05)


# ---------------------------------------------------------------------------------------------------
# 3. Switches

def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_max_approx_kl_skips_the_whole_minibatch(models, batch, reference):
    m = reference["mask"]
    cfg = loss_cfg(max_approx_kl=0.05)
    update = updater(models, cfg, optax.adam(1e-3), optax.adam(1e-3))
    # old = current - 1 on every token: approx KL = e - 2 = 0.72 > 0.05: not applied.
    far = make_minibatch(models, batch, reference, logratio_shift=np.ones_like(m))
    state0, state1, metrics = update(far)
    np.testing.assert_allclose(float(metrics["approx_kl"]), np.e - 2, rtol=1e-4)
    assert float(metrics["kl_skipped"]) == 1.0
    for part in ("actor", "critic"):
        assert _leaves_equal(state1[part]["params"], state0[part]["params"]), part
        assert _leaves_equal(state1[part]["opt_state"], state0[part]["opt_state"]), part
    # old = current: approx KL ~ 0 < 0.05: both parts take their step, the Adam moments move.
    near = make_minibatch(models, batch, reference, logratio_shift=np.zeros_like(m))
    state0, state1, metrics = update(near)
    assert float(metrics["approx_kl"]) < 1e-5 and float(metrics["kl_skipped"]) == 0.0
    for part in ("actor", "critic"):
        assert not _leaves_equal(state1[part]["params"], state0[part]["params"]), part
        assert not _leaves_equal(state1[part]["opt_state"], state0[part]["opt_state"]), part


def test_minibatch_whitening_equals_prewhitened_rollout_scope(models, batch, reference):
    m = reference["mask"]
    raw = np.random.default_rng(3).normal(3.0, 2.0, size=m.shape) * m  # far from whitened: mean 3, std 2
    clip = 1.0
    by_hand = ref_whiten(raw, m, clip)
    assert 0 < ((np.abs(ref_whiten(raw, m)) > clip) & (m > 0)).sum() < m.sum()
    sgd = optax.sgd(1e-2)
    mb_cfg = loss_cfg(advantages=AdvantageConfig(whiten=True, clip=clip, scope="minibatch"))
    ro_cfg = loss_cfg(advantages=AdvantageConfig(whiten=True, clip=clip, scope="rollout"))
    rollout_scope = updater(models, ro_cfg, sgd, sgd)
    _, s_mb, m_mb = updater(models, mb_cfg, sgd, sgd)(make_minibatch(models, batch, reference, adv=raw))
    _, s_ro, m_ro = rollout_scope(make_minibatch(models, batch, reference, adv=by_hand))
    _, s_raw, m_raw = rollout_scope(make_minibatch(models, batch, reference, adv=raw))
    np.testing.assert_allclose(float(m_mb["policy_loss"]), float(m_ro["policy_loss"]), rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(s_mb["actor"]["params"]),
                    jax.tree_util.tree_leaves(s_ro["actor"]["params"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # Fed the raw advantages without per-minibatch whitening, the update is a different one.
    assert abs(float(m_raw["policy_loss"]) - float(m_ro["policy_loss"])) > 0.5
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        jax.tree_util.tree_leaves(s_raw["actor"]["params"]), jax.tree_util.tree_leaves(s_ro["actor"]["params"])))
    assert diff > 1e-4


def test_adaptive_kl_controller_direction_and_default_horizon():
    from jaxrlhf.configs.base import ppo_defaults
    from jaxrlhf.ops.kl import FixedKLController, KLControllerState
    from jaxrlhf.rl.ppo_setup import kl_controller

    config = ppo_defaults()
    config.kl.adaptive = True
    ctl = kl_controller(config.kl)
    target, B = config.kl.target, 16
    assert ctl.target == target and ctl.horizon == config.kl.horizon and ctl.init_coef == config.kl.coef

    def run(kl, steps, controller=ctl):
        coefs, state = [float(controller.init().coef)], controller.init()
        for _ in range(steps):
            state = controller.update(KLControllerState(state.coef), kl, B)
            coefs.append(float(state.coef))
        return np.array(coefs)

    up, down, flat = run(1.5 * target, 5), run(0.9 * target, 5), run(target, 5)
    assert (np.diff(up) > 0).all() and (np.diff(down) < 0).all() and (flat == flat[0]).all()
    # beta * (1 + clip(kl / target - 1, -0.2, 0.2) * B / horizon), by hand
    np.testing.assert_allclose(up[1], config.kl.coef * (1 + 0.2 * B / config.kl.horizon), rtol=1e-6)
    np.testing.assert_allclose(down[1], config.kl.coef * (1 - 0.1 * B / config.kl.horizon), rtol=1e-6)

    # The default horizon moves beta within a run; the old 10000 barely did (review B6).
    assert run(2 * target, 25)[-1] / config.kl.coef > 1.5
    old_config = ppo_defaults()
    old_config.kl.adaptive, old_config.kl.horizon = True, 10000
    old = kl_controller(old_config.kl)
    assert abs(run(2 * target, 25, old)[-1] / config.kl.coef - 1) < 0.01
    # adaptive off: a fixed beta whatever the KL
    config.kl.adaptive = False
    fixed = kl_controller(config.kl)
    assert isinstance(fixed, FixedKLController)
    assert (run(5 * target, 3, fixed) == np.float32(config.kl.coef)).all()


def test_initial_moments_seed_count_and_weight_after_three_batches():
    from jaxrlhf.configs.base import ppo_defaults
    from jaxrlhf.rl.ppo_setup import initial_moments
    from jaxrlhf.rl.rewards import process_scores

    mean, std = 1.5, 2.0
    stats = {"reward_mean": mean, "reward_std": std, "n_pairs": 512, "n_rewards": 1024}
    config = ppo_defaults()
    default_weight = config.rewards.rm_stats_weight

    def seeded(stats, weight=None):
        c = ppo_defaults()
        if weight is not None:
            c.rewards.rm_stats_weight = weight
        mo = initial_moments(c, stats)
        return float(mo.mean), float(mo.var), float(mo.count)

    assert seeded(stats) == (mean, std ** 2, min(default_weight, 1024))
    assert seeded(stats, 100)[2] == 100
    assert seeded(stats, 5000)[2] == 1024       # at most the rewards the statistics came from
    assert seeded(stats, -1)[2] == 1024         # -1: all of them
    # n_rewards wins over the pair count (Plackett-Luce exports count compared pairs in n_pairs)
    assert seeded(dict(stats, n_pairs=1536), -1)[2] == 1024
    # an older export without n_rewards: two rewards per training pair
    old = {"reward_mean": mean, "reward_std": std, "n_pairs": 300}
    assert seeded(old, -1)[2] == 600 and seeded(old, 5000)[2] == 600 and seeded(old)[2] == min(default_weight, 600)
    config.rewards.init_from_rm_stats = False
    assert float(initial_moments(config, stats).count) == 0.0

    # 3 iterations of 16 fresh scores at the default weight (16): the prior keeps 16 / 64 of the weight.
    assert default_weight == 16
    moments = initial_moments(ppo_defaults(), stats)
    rng = np.random.default_rng(4)
    fresh = [rng.normal(-1.0, 0.5, 16).astype(np.float32) for _ in range(3)]
    for scores in fresh:
        _, moments = process_scores(jnp.asarray(scores), jnp.ones(16), moments, RewardShaping())
    allx = np.concatenate(fresh).astype(np.float64)
    want_mean = 16 / 64 * mean + 48 / 64 * allx.mean()
    np.testing.assert_allclose(float(moments.mean), want_mean, rtol=1e-5)
    np.testing.assert_allclose(float(moments.count), 64)
    w_mean, w_var, _ = ref_moments(mean, std ** 2, 16, allx)
    np.testing.assert_allclose([float(moments.mean), float(moments.var)], [w_mean, w_var], rtol=1e-5)


def test_value_clip_frac_is_zero_when_no_value_moves_past_the_clip():
    from jaxrlhf.ops.ppo import value_loss

    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 2500)).astype(np.float32)
    v_old = (v + rng.uniform(-0.1, 0.1, v.shape)).astype(np.float32)  # every |v - v_old| < 0.2
    ret = rng.normal(size=v.shape).astype(np.float32)
    loss_sum, n, metrics = value_loss(v, v_old, ret, np.ones(v.shape), 0.2)
    np.testing.assert_allclose(float(loss_sum), 0.5 * np.sum((v.astype(np.float64) - ret) ** 2), rtol=1e-5)
    assert float(metrics["clip_frac_sum"]) == 0.0
