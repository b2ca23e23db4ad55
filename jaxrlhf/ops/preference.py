"""Direct preference losses on sequence log-probabilities: the DPO family, SimPO, KTO, listwise DPO.

Inputs are per-sequence log-probs of the response tokens (sums over the response, float32) under the
policy and the frozen reference. The implicit reward of a response is `beta * (logp - ref_logp)`; DPO
and its relatives are losses on the difference of the chosen and rejected implicit rewards
`h = beta * ((logp_c - ref_c) - (logp_r - ref_r))`:

    sigmoid  -log sigmoid(h)                                   (DPO, Rafailov et al. 2023)
             with label smoothing eps: -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)   (conservative DPO)
    robust   (-(1 - eps) log sigmoid(h) + eps log sigmoid(-h)) / (1 - 2 eps)   (Chowdhury et al. 2024:
             unbiased under labels flipped with probability eps)
    hinge    max(0, 1 - h)                                     (SLiC-HF)
    ipo      ((logp_c - ref_c) - (logp_r - ref_r) - 1 / (2 beta))^2   (Azar et al. 2023)
    simpo    -log sigmoid(beta * (logp_c / |c| - logp_r / |r|) - gamma)   (Meng et al. 2024: no reference,
             length-normalised log-probs, target margin gamma; label smoothing as for sigmoid)

Each returns an unreduced SUM and its denominator, like `ops.losses`, so means stay exact under gradient
accumulation; metrics are weighted sums over the same pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrlhf.ops.losses import Metrics, _f32, plackett_luce_loss

PAIR_LOSSES = ("sigmoid", "robust", "hinge", "ipo", "simpo")


def _clean(x, w) -> jax.Array:
    # Padding pairs may hold nan or inf; zero them before any maths so nothing leaks into the gradient.
    return jnp.where(w != 0, _f32(x), 0.0)


def response_mask(mask_BxT, response_len_B, suffix_len: int = 0) -> jax.Array:
    """bool [B, T]: the last `response_len` real tokens of each row before its `suffix_len` closing specials,
    the tokens a preference loss scores, for left or right padding (`data.batching.PairBatcher` gives each
    side's `*_len_B`, `data.tokenize.SpecialTokens` the suffix)."""
    real = jnp.asarray(mask_BxT) > 0
    from_end_BxT = jnp.cumsum(real[:, ::-1].astype(jnp.int32), axis=-1)[:, ::-1]  # 1 at the last real token
    n = jnp.asarray(response_len_B, jnp.int32)[:, None]
    return real & (from_end_BxT > suffix_len) & (from_end_BxT <= suffix_len + n)


def pair_loss(
    logp_chosen_B,
    logp_rejected_B,
    ref_chosen_B=None,
    ref_rejected_B=None,
    *,
    loss_type: str = "sigmoid",
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    lengths_chosen_B=None,
    lengths_rejected_B=None,
    sft_weight: float = 0.0,
    weight_B=None,
) -> tuple[jax.Array, jax.Array, Metrics]:
    """A DPO-family loss on B pairs: `(loss_sum, denom, metrics)`.

    `ref_*` None means reference-free (a reference log-prob of 0; SimPO ignores the reference always).
    `lengths_*` (response tokens) are needed by SimPO and by the SFT term. `sft_weight` adds
    `sft_weight * (-logp_c / |c|)`, the per-token NLL of the chosen response (the RPO objective).
    `weight_B` is 0 for padding pairs.

    Metrics (weighted sums): `reward_chosen_sum`, `reward_rejected_sum` (implicit rewards
    `beta * (logp - ref)`; for SimPO `beta * logp / length`), `correct_sum` (chosen reward strictly
    higher: ties are wrong), `margin_sum`, `logp_chosen_sum`, `logp_rejected_sum`, `sft_nll_sum`.
    """
    if loss_type not in PAIR_LOSSES:
        raise ValueError(f"loss.type must be one of {PAIR_LOSSES}, got {loss_type!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {label_smoothing}")
    pc = _f32(logp_chosen_B)
    w = jnp.ones_like(pc) if weight_B is None else _f32(weight_B)
    pc, pr = _clean(pc, w), _clean(logp_rejected_B, w)
    rc = jnp.zeros_like(pc) if ref_chosen_B is None else _clean(ref_chosen_B, w)
    rr = jnp.zeros_like(pr) if ref_rejected_B is None else _clean(ref_rejected_B, w)
    need_lengths = loss_type == "simpo" or sft_weight
    if need_lengths and (lengths_chosen_B is None or lengths_rejected_B is None):
        raise ValueError("SimPO and the SFT term need the response lengths")
    if need_lengths:
        lc = jnp.maximum(_clean(lengths_chosen_B, w), 1.0)
        lr = jnp.maximum(_clean(lengths_rejected_B, w), 1.0)

    if loss_type == "simpo":
        reward_c, reward_r = beta * pc / lc, beta * pr / lr
        h = reward_c - reward_r - simpo_gamma
    else:
        reward_c, reward_r = beta * (pc - rc), beta * (pr - rr)
        h = reward_c - reward_r

    eps = label_smoothing
    if loss_type in ("sigmoid", "simpo"):
        per_pair = -(1.0 - eps) * jax.nn.log_sigmoid(h) - eps * jax.nn.log_sigmoid(-h)
    elif loss_type == "robust":
        per_pair = (-(1.0 - eps) * jax.nn.log_sigmoid(h) + eps * jax.nn.log_sigmoid(-h)) / (1.0 - 2.0 * eps)
    elif loss_type == "hinge":
        per_pair = jax.nn.relu(1.0 - h)
    else:  # ipo
        per_pair = jnp.square((pc - rc) - (pr - rr) - 1.0 / (2.0 * beta))

    sft_nll = -pc / lc if sft_weight else jnp.zeros_like(pc)
    per_pair = per_pair + sft_weight * sft_nll
    margin = reward_c - reward_r
    metrics = {
        "reward_chosen_sum": jnp.sum(w * reward_c),
        "reward_rejected_sum": jnp.sum(w * reward_r),
        "correct_sum": jnp.sum(w * (margin > 0)),
        "margin_sum": jnp.sum(w * margin),
        "logp_chosen_sum": jnp.sum(w * pc),
        "logp_rejected_sum": jnp.sum(w * pr),
        "sft_nll_sum": jnp.sum(w * sft_nll),
    }
    return jnp.sum(w * per_pair), jnp.sum(w), metrics


def listwise_loss(logp_BxK, ref_logp_BxK, ranks_BxK, valid_BxK=None, *, beta: float = 0.1):
    """Plackett-Luce DPO over K ranked responses at once (rank 0 best): the Plackett-Luce NLL of the
    observed ranking with the implicit rewards `beta * (logp - ref)` as scores. For K = 2 it is DPO's
    sigmoid loss. `ref_logp_BxK` None: reference-free. Returns `ops.losses.plackett_luce_loss`'s
    `(loss_sum, denom, metrics)`."""
    valid = jnp.ones(jnp.shape(ranks_BxK), bool) if valid_BxK is None else jnp.asarray(valid_BxK).astype(bool)
    logp = jnp.where(valid, _f32(logp_BxK), 0.0)
    ref = 0.0 if ref_logp_BxK is None else jnp.where(valid, _f32(ref_logp_BxK), 0.0)
    return plackett_luce_loss(beta * (logp - ref), ranks_BxK, valid)


def kto_reference_point(logp_mismatched_B, ref_mismatched_B, weight_B=None) -> jax.Array:
    """KTO's reference point z0: a batch estimate of KL(policy || reference), the mean log-ratio of
    responses paired with prompts they do not answer, clipped at 0 and held constant (no gradient),
    as in Ethayarajh et al. 2024."""
    lp = _f32(logp_mismatched_B)
    w = jnp.ones_like(lp) if weight_B is None else _f32(weight_B)
    ratio = _clean(lp, w) - _clean(ref_mismatched_B, w)
    kl = jnp.sum(w * ratio) / jnp.maximum(jnp.sum(w), 1.0)
    return jax.lax.stop_gradient(jnp.maximum(kl, 0.0))


def kto_loss(
    logp_B,
    ref_logp_B,
    desirable_B,
    reference_point,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    weight_B=None,
) -> tuple[jax.Array, jax.Array, Metrics]:
    """KTO on unpaired responses: with r = logp - ref and z0 the reference point,
    desirable: `w_D * (1 - sigmoid(beta * (r - z0)))`, undesirable: `w_U * (1 - sigmoid(beta * (z0 - r)))`.
    The denominator is the sum of `weight_B` (each response counted once, whatever its class weight).

    Metrics: `reward_desirable_sum`, `reward_undesirable_sum` (of `beta * r`), `n_desirable`,
    `n_undesirable`, `correct_sum` (desirable with `r > z0`, undesirable with `r < z0`)."""
    lp = _f32(logp_B)
    w = jnp.ones_like(lp) if weight_B is None else _f32(weight_B)
    r = _clean(lp, w) - _clean(ref_logp_B, w)
    good = jnp.asarray(desirable_B).astype(bool)
    z0 = _f32(reference_point)
    per = jnp.where(good, desirable_weight * (1.0 - jax.nn.sigmoid(beta * (r - z0))),
                    undesirable_weight * (1.0 - jax.nn.sigmoid(beta * (z0 - r))))
    wg, wb = w * good, w * (~good)
    metrics = {
        "reward_desirable_sum": jnp.sum(wg * beta * r),
        "reward_undesirable_sum": jnp.sum(wb * beta * r),
        "n_desirable": jnp.sum(wg),
        "n_undesirable": jnp.sum(wb),
        "correct_sum": jnp.sum(wg * (r > z0)) + jnp.sum(wb * (r < z0)),
    }
    return jnp.sum(w * per), jnp.sum(w), metrics
