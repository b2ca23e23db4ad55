"""Heads on top of any backbone: language-model logits, a scalar reward, per-token values.

Logits, rewards and values come out float32 whatever the compute dtype, from matmuls that accumulate in
float32. The reward is read at the last
real token for decoders and the first token for encoders, located from the attention mask so left
and right padding give the same answer.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.base import HeadSpec
from jaxrlhf.models.layers import Linear, activation
from jaxrlhf.ops.logprobs import lm_logits, token_logprobs


def last_token_index(mask_BxT: jax.Array) -> jax.Array:
    """Index of the rightmost real token of each row (works for left and right padding)."""
    T = mask_BxT.shape[-1]
    return T - 1 - jnp.argmax(mask_BxT[:, ::-1] > 0, axis=-1)


def first_token_index(mask_BxT: jax.Array) -> jax.Array:
    return jnp.argmax(mask_BxT > 0, axis=-1)


def gather_positions(hidden_BxTxD: jax.Array, index_B: jax.Array) -> jax.Array:
    return jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0, :]


class ScalarHead(nnx.Module):
    """hidden -> scalar, optionally through dense + activation first (the BERT/RoBERTa classifier shape: tanh;
    DeBERTa's pooler: gelu)."""

    def __init__(self, dim: int, spec: HeadSpec, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.dense = nnx.data(Linear(dim, dim, use_bias=True, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
                              if spec.pre_dense else None)
        self.act = jnp.tanh if spec.activation == "tanh" else activation(spec.activation)
        # std 0.02 as HF initialises a fresh classifier: small enough that the first BT losses sit
        # near log 2, large enough that the backbone gets gradient from the first step.
        self.out = Linear(dim, 1, use_bias=spec.use_bias, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                          init_std=0.02, out_dtype=jnp.float32)

    def __call__(self, h: jax.Array) -> jax.Array:
        if self.dense is not None:
            h = self.act(self.dense(h))
        return self.out(h)[..., 0]


class CausalLM(nnx.Module):
    """Logits from the backbone's last hidden states. A backbone with a `final_logit_softcap` (Gemma 2) has its
    logits soft-capped on every path here (logits, sequence_logprobs, token_logprobs), so sampler and learner
    agree; such a model refuses `lm_head_kernel()`, whose callers would compute uncapped logits."""

    def __init__(self, backbone: nnx.Module, *, vocab_size: int, tie_embeddings: bool, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        self.backbone = backbone
        self.dtype = dtype
        self.logit_softcap = getattr(backbone, "final_logit_softcap", None)
        self.lm_head = nnx.data(None if tie_embeddings else Linear(
            backbone.hidden_size, vocab_size, use_bias=False, rngs=rngs, dtype=dtype, param_dtype=param_dtype))

    def lm_head_kernel(self) -> jax.Array:
        """The D x V output matrix (tied: the transposed token embedding)."""
        if self.logit_softcap is not None:
            raise ValueError(f"this model soft-caps its logits (final_logit_softcapping={self.logit_softcap}): take "
                             f"log-probs through CausalLM.token_logprobs / logits, not lm_head_kernel()")
        return self._kernel()

    def _kernel(self) -> jax.Array:
        if self.lm_head is None:
            return self.backbone.embed.embedding[...].T
        return self.lm_head.kernel_value(self.dtype)

    def logits(self, hidden_BxTxD: jax.Array) -> jax.Array:
        """float32 logits (`ops.logprobs.lm_logits`, as the chunked log-prob path computes them)."""
        return lm_logits(hidden_BxTxD.astype(self.dtype), self._kernel(), self.logit_softcap)

    def token_logprobs(self, hidden_BxTxD, targets_BxT, temperature: float = 1.0, chunk_size: int = 128, *,
                       return_entropy: bool = False):
        """`ops.logprobs.token_logprobs` through this LM head (soft-capped where the model caps its logits)."""
        return token_logprobs(hidden_BxTxD, self._kernel(), targets_BxT, temperature, chunk_size,
                              return_entropy=return_entropy, softcap=self.logit_softcap)

    def sequence_logprobs(self, ids_BxT, mask_BxT, scored_BxT, *, chunk_size: int = 128,
                          dropout_rng=None) -> tuple[jax.Array, jax.Array]:
        """(log p of the tokens `scored_BxT` marks, summed per row; their count per row), float32 [B] each.
        Position t - 1 predicts token t, so a marked token is scored from the hidden state before it; the
        LM head runs in chunks (`ops.logprobs.token_logprobs`), never on all [B, T, V] logits at once."""
        hidden_BxTxD, _ = self.backbone(ids_BxT, mask_BxT, dropout_rng=dropout_rng)
        logp_BxT1 = self.token_logprobs(hidden_BxTxD[:, :-1], ids_BxT[:, 1:], chunk_size=chunk_size)
        scored_BxT1 = scored_BxT[:, 1:].astype(jnp.float32)
        return jnp.sum(logp_BxT1 * scored_BxT1, axis=-1), jnp.sum(scored_BxT1, axis=-1)

    def shared_prompt_logprobs(self, ids_BxT, part_BxT, pos_BxT, source_BxT, scored_BxT, num_responses: int, *,
                               chunk_size: int = 128, dropout_rng=None) -> tuple[jax.Array, jax.Array]:
        """`sequence_logprobs` of every response of rows that hold a prompt once and then its K responses
        (`data.shared_prompt`'s layout): (summed log-probs, scored tokens), float32 [B, K]. Each response
        attends to the prompt and itself only, at its own positions, so the values and gradients are those
        of the K separate sequences."""
        hidden_BxTxD, _ = self.backbone(ids_BxT, part_BxT >= 0, positions_BxT=pos_BxT, segments_BxT=part_BxT,
                                        dropout_rng=dropout_rng)
        source_BxTxD = jnp.take_along_axis(hidden_BxTxD, source_BxT[..., None], axis=1)
        logp_BxT = self.token_logprobs(source_BxTxD, ids_BxT, chunk_size=chunk_size)
        in_part_BxTxK = ((part_BxT[..., None] == jnp.arange(1, num_responses + 1))
                         & (scored_BxT[..., None] > 0)).astype(jnp.float32)
        # A product and a sum, not an einsum: a float32 matmul may run in bf16 passes on TPU.
        return jnp.sum(logp_BxT[..., None] * in_part_BxTxK, axis=1), jnp.sum(in_part_BxTxK, axis=1)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, dropout_rng=None):
        """Returns (logits_BxTxV, cache). For long sequences prefer `backbone` + chunked log-probs."""
        hidden, cache = self.backbone(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT,
                                      cache=cache, dropout_rng=dropout_rng)
        return self.logits(hidden), cache


class RewardModel(nnx.Module):
    def __init__(self, backbone: nnx.Module, *, head: HeadSpec, pooling: str, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        if pooling not in ("last", "first"):
            raise ValueError(f"pooling must be 'last' or 'first', got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        self.head = ScalarHead(backbone.hidden_size, head, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, dropout_rng=None) -> jax.Array:
        """Scalar reward per sequence, reward_B (float32)."""
        pool = last_token_index if self.pooling == "last" else first_token_index
        index = pool(attention_mask_BxT)
        if hasattr(self.backbone, "hidden_at"):  # the last layer for the pooled token only (models.bert)
            return self.head(self.backbone.hidden_at(input_ids_BxT, attention_mask_BxT, index,
                                                     positions_BxT=positions_BxT, dropout_rng=dropout_rng))
        hidden, _ = self.backbone(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT,
                                  dropout_rng=dropout_rng)
        return self.head(gather_positions(hidden, index))


class ValueModel(nnx.Module):
    """Per-token values; same head shape as RewardModel so a critic can start from a reward model."""

    def __init__(self, backbone: nnx.Module, *, head: HeadSpec, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.backbone = backbone
        self.head = ScalarHead(backbone.hidden_size, head, rngs=rngs, dtype=dtype, param_dtype=param_dtype)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, dropout_rng=None) -> jax.Array:
        hidden, _ = self.backbone(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT,
                                  dropout_rng=dropout_rng)
        return self.head(hidden)
