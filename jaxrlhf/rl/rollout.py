"""Rollouts: sample responses from the actor (jitted, KV cache) and decode them for the reward model.

The reward model never reads the policy's tokens: the policy's prompt is its chat rendering, while the
reward model learned from the data's own format. Each response is decoded to text and `rm.scoring`
re-renders prompt and response as the reward model saw them in training, whatever the two tokenizers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.infra.multihost import to_host
from jaxrlhf.rl.sampling import SamplingConfig, decode


def make_sample_fn(actor_def, cfg: SamplingConfig, group_size: int = 1):
    """sample(actor (trainable, frozen), prompt_ids_BxP, prompt_mask_BxP, rng) -> rollout batch (jitted).

    The batch: ids_BxT / mask_BxT (prompt then response, T = P + N), response_ids_BxN,
    response_mask_BxN, ended_B (int32: a stop token was sampled), sample_logp_BxN. With `group_size` G it has
    B*G rows, each prompt's G samples in a row, from one shared prefill (`sampling.decode`).
    """

    @jax.jit
    def sample(actor, prompt_ids, prompt_mask, rng):
        out = decode(nnx.merge(actor_def, *actor), prompt_ids, prompt_mask, rng, cfg, group_size)
        if group_size > 1:
            prompt_ids, prompt_mask = (jnp.repeat(x, group_size, axis=0) for x in (prompt_ids, prompt_mask))
        return {"ids_BxT": jnp.concatenate([prompt_ids, out["response_ids_BxN"]], axis=1),
                "mask_BxT": jnp.concatenate([prompt_mask, out["response_mask_BxN"]], axis=1),
                "response_ids_BxN": out["response_ids_BxN"], "response_mask_BxN": out["response_mask_BxN"],
                "ended_B": out["ended_B"].astype(jnp.int32), "sample_logp_BxN": out["logprobs_BxN"]}

    return sample


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global batch array, on the host."""
    full = to_host(x)
    n = full.shape[0] // jax.process_count()
    return full[jax.process_index() * n:(jax.process_index() + 1) * n]


def response_texts(policy_tokenizer, rollout: dict) -> list[str]:
    """This process's sampled responses as text (specials dropped, whitespace stripped)."""
    ids, mask = local_rows(rollout["response_ids_BxN"]), local_rows(rollout["response_mask_BxN"])
    return [policy_tokenizer.decode(row[m > 0].tolist(), skip_special_tokens=True).strip()
            for row, m in zip(ids, mask)]
