"""Log-probabilities of target tokens, computed from hidden states in chunks over the sequence.

A [B, T, V] float32 logits tensor is large (8 x 1024 x 128k = 4 GiB), and PPO needs log-probs of
the sampled tokens only. So the LM head is applied to `chunk_size` positions at a time inside a
`lax.map`, and each chunk is rematerialised (`jax.checkpoint`) in the backward pass instead of
saved: neither pass ever holds more than [B, chunk_size, V] logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.ops.matmul import matmul_f32
from jaxrlhf.ops.ppo import entropy_from_logits


def lm_logits(hidden_xD: jax.Array, lm_head_DxV: jax.Array, softcap: float | None = None) -> jax.Array:
    """Next-token logits `hidden @ lm_head` as float32: the product runs in the hidden states' (compute)
    dtype, the kernel cast to it (a float32 master is not an f32 GEMM in a bf16 run), and accumulates in
    float32 (bf16 logits would be rounded by up to 0.125 at magnitude 30), in the backward pass too
    (`ops.matmul`). The one function the sampler
    and the log-prob path both use, so the policy that samples is the policy PPO's ratio assumes.
    `softcap` (Gemma 2's `final_logit_softcapping`): softcap * tanh(logits / softcap), in float32."""
    logits = matmul_f32(hidden_xD, lm_head_DxV)
    return logits if softcap is None else softcap * jnp.tanh(logits / softcap)


def logprobs_from_logits(logits_BxTxV, targets_BxT, temperature: float = 1.0) -> jax.Array:
    """log softmax(logits / temperature) at `targets`, float32, for logits already at hand."""
    logits = jnp.asarray(logits_BxTxV, jnp.float32) / temperature
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, jnp.asarray(targets_BxT)[..., None], axis=-1)[..., 0]


def token_logprobs(
    hidden_BxTxD,
    lm_head_DxV,
    targets_BxT,
    temperature: float = 1.0,
    chunk_size: int = 128,
    *,
    return_entropy: bool = False,
    softcap: float | None = None,
):
    """`log softmax(hidden @ lm_head / temperature)[targets]` as [B, T] float32.

    Targets are the tokens to score at each position (for a causal LM, the inputs shifted left:
    the caller aligns them). The logits are `lm_logits`'s: the hidden states' dtype, float32 accumulation.
    With a tied embedding [V, D], pass its transpose. With `return_entropy`, also returns the
    per-token entropy of the same (temperature-scaled) distribution: `(logp_BxT, entropy_BxT)`.
    `softcap`: the logits are soft-capped (`lm_logits`) before the temperature, as HF generation does.
    """
    hidden = jnp.asarray(hidden_BxTxD)
    w = jnp.asarray(lm_head_DxV)
    targets = jnp.asarray(targets_BxT)
    B, T, D = hidden.shape
    C = max(1, min(chunk_size, T))
    n_chunks = -(-T // C)
    pad = n_chunks * C - T
    hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
    targets = jnp.pad(targets, ((0, 0), (0, pad)))
    h_NxBxCxD = hidden.reshape(B, n_chunks, C, D).swapaxes(0, 1)
    y_NxBxC = targets.reshape(B, n_chunks, C).swapaxes(0, 1)

    @jax.checkpoint
    def one_chunk(args):
        h_BxCxD, y_BxC = args
        logits = lm_logits(h_BxCxD, w, softcap) / temperature
        logp = logprobs_from_logits(logits, y_BxC)
        ent = entropy_from_logits(logits) if return_entropy else jnp.zeros_like(logp)
        return logp, ent

    logp_NxBxC, ent_NxBxC = jax.lax.map(one_chunk, (h_NxBxCxD, y_NxBxC))
    unchunk = lambda x: x.swapaxes(0, 1).reshape(B, n_chunks * C)[:, :T]
    if return_entropy:
        return unchunk(logp_NxBxC), unchunk(ent_NxBxC)
    return unchunk(logp_NxBxC)
