"""From sampled responses to a PPO training batch: log-probs, values, shaped rewards, GAE, advantages.

Sequences are `[left-padded prompt | right-padded response]`, ids_BxT with T = P + N. The token at
response position t is predicted from the hidden state at sequence position P - 1 + t, and the critic's
value of the state before that token sits at the same position, so both are read from the slice
`[P - 1, T - 1)` of the backbone output. Log-probs use the sampling temperature, as the sampler did.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.layers import adapters_off
from jaxrlhf.ops import whitening
from jaxrlhf.ops.gae import gae
from jaxrlhf.ops.metrics import explained_variance
from jaxrlhf.rl.rewards import RewardShaping, process_scores, token_rewards

WHITEN_SCOPES = ("rollout", "minibatch")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AdvantageConfig:
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True           # advantage normalisation (zero mean, unit variance over response tokens)
    clip: float = 0.0             # clip whitened advantages to [-clip, clip]; <= 0: off
    scope: str = "rollout"        # whiten over the whole rollout batch (TRL >= 0.12, OpenRLHF) or per
                                  # minibatch in the update (MOSS-RLHF PPO-Max, old TRL)

    def __post_init__(self):
        if self.scope not in WHITEN_SCOPES:
            raise ValueError(f"ppo.whiten_scope must be one of {WHITEN_SCOPES}, got {self.scope!r}")


def normalise_advantages(adv_BxN, mask_BxN, cfg: AdvantageConfig):
    """Whiten (if on) then clip (if on) over the masked-in tokens; masked positions come out zero."""
    if cfg.whiten:
        adv_BxN = whitening.masked_whiten(adv_BxN, mask_BxN)
    return whitening.clip_advantages(adv_BxN, cfg.clip if cfg.clip > 0 else None) * mask_BxN.astype(jnp.float32)


def response_logprobs(policy: nnx.Module, ids_BxT, mask_BxT, response_ids_BxN, temperature: float = 1.0,
                      chunk_size: int = 128, return_entropy: bool = False):
    """log p(response token | prefix) under a CausalLM, [B, N] float32 (and entropy with return_entropy)."""
    N = response_ids_BxN.shape[1]
    T = ids_BxT.shape[1]
    hidden_BxTxD, _ = policy.backbone(ids_BxT, mask_BxT)
    h_BxNxD = hidden_BxTxD[:, T - N - 1:T - 1]
    temperature = temperature if temperature > 0 else 1.0  # greedy sampling reports temperature-1 log-probs
    # Through the model's own head: soft-capped logits (Gemma 2) as the sampler computes them.
    return policy.token_logprobs(h_BxNxD, response_ids_BxN, temperature, chunk_size, return_entropy=return_entropy)


def group_response_logprobs(policy: nnx.Module, ids_RxT, mask_RxT, response_ids_RxN, group_size: int,
                            temperature: float = 1.0, chunk_size: int = 128):
    """`response_logprobs` for rows in groups that share their prompt, with each prompt run once.

    Rows b*G .. b*G + G - 1 (G = `group_size`) must hold the same left-padded prompt in their first
    P = T - N slots, as group sampling lays them out. The B prompts are prefilled into a KV cache, which
    is repeated to the R = B*G rows; the responses then run as one N-token call on that cache. A prompt's
    hidden states do not depend on what follows it (causal attention), so this is the full-sequence
    computation with the prompt's forward done once instead of G times; in the backward pass the repeat
    sums the group's gradients into the prompt's keys and values, which is the same gradient. A forward
    and backward then cost B*P + R*N tokens instead of R*(P + N)."""
    G = group_size
    R, N = response_ids_RxN.shape
    P = ids_RxT.shape[1] - N
    if G <= 1 or R % G:
        raise ValueError(f"group_response_logprobs: {R} rows are not groups of {G}")
    backbone = policy.backbone
    # A reshape, not the strided slice [::G]: with the rows sharded, XLA 0.10.2's partitioner got the gradient
    # of the program built on the strided slice wrong (test_train_grpo's sharded run caught it).
    prompt_ids_BxP, prompt_mask_BxP = (x.reshape(R // G, G, -1)[:, 0, :P] for x in (ids_RxT, mask_RxT))
    cache = backbone.init_cache(R // G, P + N - 1)
    prompt_hidden_BxPxD, cache = backbone(prompt_ids_BxP, prompt_mask_BxP, cache=cache, kv_len=P)
    h_RxNxD = jnp.repeat(prompt_hidden_BxPxD[:, -1:], G, axis=0)  # the last prompt token predicts token 0
    if N > 1:  # the response's last token predicts nothing scored: feed the first N - 1
        resp_hidden_RxMxD, _ = backbone(ids_RxT[:, P:P + N - 1], mask_RxT[:, P:P + N - 1],
                                        cache=cache.repeat_rows(G), kv_len=P + N - 1)
        h_RxNxD = jnp.concatenate([h_RxNxD, resp_hidden_RxMxD], axis=1)
    temperature = temperature if temperature > 0 else 1.0
    return policy.token_logprobs(h_RxNxD, response_ids_RxN, temperature, chunk_size)


def response_values(critic: nnx.Module, ids_BxT, mask_BxT, num_response: int):
    """V(state before each response token), [B, N] float32."""
    T = ids_BxT.shape[1]
    return critic(ids_BxT, mask_BxT)[:, T - num_response - 1:T - 1].astype(jnp.float32)


def make_experience_fn(actor_def, ref_def, critic_def, *, temperature: float, shaping: RewardShaping,
                       advantages: AdvantageConfig, chunk_size: int = 128):
    """experience(actor, ref, critic, batch, score_B, kl_coef, moments) -> (experience, moments, metrics).

    `actor`, `ref`, `critic` are (trainable, frozen) state pairs; with `ref_def` None the reference is the
    actor with its LoRA adapters off (`ref` is then ignored: pass ()). `batch` holds ids_BxT, mask_BxT,
    response_ids_BxN, response_mask_BxN, ended_B. The experience adds old_logp_BxN, ref_logp_BxN,
    values_BxN, rewards_BxN, advantages_BxN, returns_BxN.
    """

    def experience(actor, ref, critic, batch, score_B, kl_coef, moments):
        ids, mask = batch["ids_BxT"], batch["mask_BxT"]
        resp, resp_mask = batch["response_ids_BxN"], batch["response_mask_BxN"]
        N = resp.shape[1]
        m = resp_mask.astype(jnp.float32)
        logp, entropy = response_logprobs(nnx.merge(actor_def, *actor), ids, mask, resp, temperature, chunk_size,
                                          return_entropy=True)
        if ref_def is None:
            with adapters_off():
                ref_logp = response_logprobs(nnx.merge(actor_def, *actor), ids, mask, resp, temperature, chunk_size)
        else:
            ref_logp = response_logprobs(nnx.merge(ref_def, *ref), ids, mask, resp, temperature, chunk_size)
        values = jnp.where(resp_mask > 0, response_values(nnx.merge(critic_def, *critic), ids, mask, N), 0.0)
        logp, ref_logp = jax.lax.stop_gradient(logp) * m, jax.lax.stop_gradient(ref_logp) * m
        score, moments = process_scores(score_B, batch["ended_B"], moments, shaping)
        rewards, kl = token_rewards(score, logp, ref_logp, resp_mask, kl_coef, shaping.kl_estimator)
        adv, returns = gae(rewards, values, resp_mask, advantages.gamma, advantages.lam)
        if advantages.scope == "rollout":  # else the update step whitens each minibatch
            adv = normalise_advantages(adv, resp_mask, advantages)
        lengths = jnp.sum(m, axis=-1)
        n_tokens = jnp.maximum(jnp.sum(m), 1.0)
        exp = dict(batch, old_logp_BxN=logp, ref_logp_BxN=ref_logp, values_BxN=values, rewards_BxN=rewards,
                   advantages_BxN=adv, returns_BxN=returns)
        raw = jnp.asarray(score_B, jnp.float32)
        # What the sampler drew with vs what the learner recomputes: ~1e-6 in float32; a growing gap is
        # an off-policy bias that PPO's ratio does not see (and what precedes ratio blow-ups).
        mismatch = jnp.abs(batch["sample_logp_BxN"].astype(jnp.float32) - logp) * m
        log_ratio_sum = jnp.sum(logp - ref_logp, axis=-1)
        metrics = {
            "score_mean": jnp.mean(raw), "score_std": jnp.std(raw),
            "reward_mean": jnp.mean(score), "reward_std": jnp.std(score),
            "kl_per_seq": jnp.mean(jnp.sum(kl, axis=-1)),      # the penalised estimator, summed over tokens
            "kl_k1_per_seq": jnp.mean(log_ratio_sum),          # log p - log p_ref, summed: the sequence KL sample
            "entropy": jnp.sum(entropy * m) / n_tokens,
            "response_length": jnp.mean(lengths),
            "ended_frac": jnp.mean(batch["ended_B"].astype(jnp.float32)),
            "ref_perplexity": jnp.exp(-jnp.sum(ref_logp) / n_tokens),
            "explained_variance": explained_variance(values, returns, resp_mask),
            "value_mean": jnp.sum(values) / n_tokens,
            "return_mean": jnp.sum(returns * m) / n_tokens,
            "kl_coef": jnp.asarray(kl_coef, jnp.float32),
            "logprob_mismatch_mean": jnp.sum(mismatch) / n_tokens,
            "logprob_mismatch_max": jnp.max(mismatch),
        }
        return exp, moments, metrics

    return experience
