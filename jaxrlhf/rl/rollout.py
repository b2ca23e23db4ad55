"""Rollouts: sample responses from the actor (jitted, KV cache), score them with the frozen reward model.

When the reward model is a decoder with the policy's vocabulary, the sampled tokens go straight in. When
it is not (a MiniLM reward model behind a SmolLM2 policy), each response is decoded to text and the
reward model reads `prompt.text + response` in its own tokenizer, as it saw comparisons in training.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.data.batching import pad_rows
from jaxrlhf.data.tokenize import TextEncoder
from jaxrlhf.rl.prompts import Prompt
from jaxrlhf.rl.sampling import SamplingConfig, decode
from jaxrlhf.infra.multihost import to_host
from jaxrlhf.rm.evaluate import to_global


def make_sample_fn(actor_def, cfg: SamplingConfig):
    """sample(actor (trainable, frozen), prompt_ids_BxP, prompt_mask_BxP, rng) -> rollout batch (jitted).

    The batch: ids_BxT / mask_BxT (prompt then response, T = P + N), response_ids_BxN,
    response_mask_BxN, ended_B (int32: a stop token was sampled), sample_logp_BxN.
    """

    @jax.jit
    def sample(actor, prompt_ids, prompt_mask, rng):
        out = decode(nnx.merge(actor_def, *actor), prompt_ids, prompt_mask, rng, cfg)
        return {"ids_BxT": jnp.concatenate([prompt_ids, out["response_ids_BxN"]], axis=1),
                "mask_BxT": jnp.concatenate([prompt_mask, out["response_mask_BxN"]], axis=1),
                "response_ids_BxN": out["response_ids_BxN"], "response_mask_BxN": out["response_mask_BxN"],
                "ended_B": out["ended_B"].astype(jnp.int32), "sample_logp_BxN": out["logprobs_BxN"]}

    return sample


def same_vocabulary(tokenizer_a, tokenizer_b) -> bool:
    return tokenizer_a.get_vocab() == tokenizer_b.get_vocab()


def rm_response_text(decoded: str) -> str:
    """A decoded response as the reward model reads it after `prompt.text` (HH: "Assistant: text")."""
    return " " + decoded.strip()


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a global batch array, on the host."""
    full = to_host(x)
    n = full.shape[0] // jax.process_count()
    return full[jax.process_index() * n:(jax.process_index() + 1) * n]


class RewardScorer:
    """Frozen reward model behind one `score(rollout, prompts) -> score_B (global float32)` call."""

    def __init__(self, rm_model: nnx.Module, rm_tokenizer, policy_tokenizer, *, is_decoder: bool, max_length: int,
                 mesh, pad_to_multiple: int = 32):
        self.direct = is_decoder and same_vocabulary(rm_tokenizer, policy_tokenizer)
        self.policy_tokenizer = policy_tokenizer
        self.encoder = TextEncoder(rm_tokenizer, max_length, append_eos=is_decoder)
        self.pad_id = rm_tokenizer.pad_token_id if rm_tokenizer.pad_token_id is not None else 0
        self.mesh, self.multiple = mesh, pad_to_multiple
        graphdef, state = nnx.split(rm_model)
        self._state = state
        self._forward = jax.jit(lambda s, ids, mask: nnx.merge(graphdef, s)(ids, mask).astype(jnp.float32))

    def response_texts(self, rollout: dict) -> list[str]:
        ids, mask = local_rows(rollout["response_ids_BxN"]), local_rows(rollout["response_mask_BxN"])
        return [self.policy_tokenizer.decode(row[m > 0].tolist(), skip_special_tokens=True).strip()
                for row, m in zip(ids, mask)]

    def score(self, rollout: dict, prompts: Sequence[Prompt], texts: Sequence[str] | None = None) -> jax.Array:
        if self.direct:
            return self._forward(self._state, rollout["ids_BxT"], rollout["mask_BxT"])
        texts = self.response_texts(rollout) if texts is None else texts
        enc = self.encoder.encode([p.text for p in prompts], [rm_response_text(t) for t in texts])
        width = -(-int(enc.lengths.max()) // self.multiple) * self.multiple
        if jax.process_count() > 1:  # every process's local batch must have the same shape
            width = -(-self.encoder.max_length // self.multiple) * self.multiple
        ids, mask = pad_rows(enc, range(len(enc)), width, self.pad_id)
        batch = to_global({"ids": ids, "mask": mask}, self.mesh)
        return self._forward(self._state, batch["ids"], batch["mask"])

