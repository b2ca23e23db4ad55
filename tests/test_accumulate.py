"""Gradient accumulation is exact when micro-batches hold different numbers of real rows and tokens.

The jitted RM and SFT train steps with grad_accum=k must give the loss, gradient and parameters of
grad_accum=1 on the same batch, and both must equal a direct reference: the mean over the real pairs
(RM) or over the response tokens (SFT) of the whole batch, computed without the library's loss code.
Each micro-batch carries a different count, so averaging per-micro-batch means would be wrong, and
every test checks that it would be wrong by far more than its tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxrlhf.configs.base import rm_defaults
from jaxrlhf.models.hub import from_pretrained
from jaxrlhf.rm.step import make_train_step as make_rm_train_step
from jaxrlhf.sft.step import make_train_step as make_sft_train_step
from jaxrlhf.training.trainable import split_trainable
from tests.helpers.models import make_tiny_llama_dir

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

B, T, FIRST_ID = 8, 16, 6  # ids below FIRST_ID are the tiny tokenizer's specials (pad = 0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_llama_dir(tmp_path_factory.mktemp("accumulate") / "model")


def gradient_keeping_sgd() -> optax.GradientTransformation:
    """SGD with learning rate 1 whose state is the last gradient it got: the step's mean gradient, exactly."""
    return optax.GradientTransformation(
        lambda params: jax.tree_util.tree_map(jnp.zeros_like, params),
        lambda grads, state, params=None: (jax.tree_util.tree_map(jnp.negative, grads), grads))


def scale_param(variable, factor):
    variable.set_value(variable.get_value() * factor)


def run_step(make_step, graphdef, trainable, frozen, batch, grad_accum):
    step = jax.jit(make_step(grad_accum))
    state = {"params": trainable, "opt_state": gradient_keeping_sgd().init(trainable),
             "step": jnp.zeros((), jnp.int32)}
    new_state, metrics = step(state, frozen, batch, jax.random.key(0))
    return new_state, jax.device_get(metrics)


def flat(tree):
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]


def global_norm(leaves):
    return float(np.sqrt(sum(np.sum(x * x) for x in leaves)))


def relative_gap(a, b):
    return global_norm([x - y for x, y in zip(a, b)]) / global_norm(b)


def check_against_reference(state, metrics, trainable, ref_loss, ref, loss_key):
    """One step's loss, gradient (kept in the optimiser state), grad norm and parameters == the reference."""
    loss = metrics["loss"] if loss_key == "loss" else metrics["nll_sum"] / metrics["tokens"]
    np.testing.assert_allclose(loss, ref_loss, rtol=2e-5)
    grads = flat(state["opt_state"])
    assert relative_gap(grads, ref) < 2e-5
    for g, r in zip(grads, ref):
        np.testing.assert_allclose(g, r, rtol=1e-3, atol=2e-5 * np.abs(r).max() + 1e-9)
    np.testing.assert_allclose(metrics["grad_norm"], global_norm(ref), rtol=2e-5)
    for p, p0, r in zip(flat(state["params"]), flat(trainable), ref):
        np.testing.assert_allclose(p, p0 - r, rtol=1e-6, atol=2e-5 * np.abs(r).max() + 1e-9)


def check_accumulated(big, acc, ref_loss, ref, mean_of_means_loss, mean_of_means_grads):
    """grad_accum=k == grad_accum=1; and a mean of micro-batch means misses by far more than the tolerances."""
    assert abs(mean_of_means_loss - ref_loss) > 0.05 * abs(ref_loss)
    assert relative_gap(flat(mean_of_means_grads), ref) > 0.05
    (big_state, big_metrics), (acc_state, acc_metrics) = big, acc
    for key in ("loss", "nll_sum", "tokens", "pairs"):
        if key in big_metrics:
            np.testing.assert_allclose(acc_metrics[key], big_metrics[key], rtol=2e-5)
    for g1, gk, r in zip(flat(big_state["opt_state"]), flat(acc_state["opt_state"]), ref):
        np.testing.assert_allclose(gk, g1, rtol=1e-4, atol=1e-5 * np.abs(r).max() + 1e-9)
    for p1, pk, r in zip(flat(big_state["params"]), flat(acc_state["params"]), ref):
        np.testing.assert_allclose(pk, p1, rtol=1e-6, atol=2e-5 * np.abs(r).max() + 1e-9)


def random_rows(rng, lengths, vocab):
    ids = np.zeros((len(lengths), T), np.int32)
    mask = np.zeros((len(lengths), T), np.int32)
    for j, n in enumerate(lengths):
        ids[j, :n] = rng.integers(FIRST_ID, vocab, n)
        mask[j, :n] = 1
    return ids, mask


def micro_slices(grad_accum):
    size = B // grad_accum
    return [slice(i * size, (i + 1) * size) for i in range(grad_accum)]


# ----------------------------------------------------------------------------------------------- RM

# Five real pairs, then three filler rows that repeat row 0 with weight 0 (as the batcher fills a last
# batch). grad_accum=2 cuts 4 + 1 real pairs, grad_accum=4 cuts 2, 2, 1, 0; sequence lengths differ too.
RM_CHOSEN_LEN = [14, 16, 12, 15, 4]
RM_REJECTED_LEN = [13, 9, 16, 11, 3]
RM_REAL = len(RM_CHOSEN_LEN)


def rm_batch(vocab):
    rng = np.random.default_rng(0)
    c_ids, c_mask = random_rows(rng, RM_CHOSEN_LEN, vocab)
    r_ids, r_mask = random_rows(rng, RM_REJECTED_LEN, vocab)
    fill = lambda x: np.concatenate([x, np.repeat(x[:1], B - RM_REAL, axis=0)])
    return {"chosen_ids_BxT": fill(c_ids), "chosen_mask_BxT": fill(c_mask),
            "rejected_ids_BxT": fill(r_ids), "rejected_mask_BxT": fill(r_mask),
            "margin_B": np.zeros(B, np.float32), "weight_B": (np.arange(B) < RM_REAL).astype(np.float32),
            "chosen_len_B": fill(np.asarray(RM_CHOSEN_LEN, np.int32) - 1),
            "rejected_len_B": fill(np.asarray(RM_REJECTED_LEN, np.int32) - 1)}


def rm_reference(graphdef, frozen):
    """value_and_grad over `trainable` of the mean Bradley-Terry NLL, -log sigmoid(r_c - r_r), over the
    pairs `rows` (all of them real)."""

    def mean_nll(trainable, rows):
        model = nnx.merge(graphdef, trainable, frozen)
        r_c = model(rows["chosen_ids_BxT"], rows["chosen_mask_BxT"])
        r_r = model(rows["rejected_ids_BxT"], rows["rejected_mask_BxT"])
        return jnp.mean(jax.nn.softplus(r_r - r_c)), (r_c, r_r)

    return jax.jit(jax.value_and_grad(mean_nll, has_aux=True))


def test_rm_accumulation_with_unequal_micro_batches_equals_one_big_batch(model_dir):
    loaded = from_pretrained(str(model_dir), "reward")
    scale_param(loaded.model.head.out.kernel, 50.0)  # rewards of order 1: per-pair losses far apart
    graphdef, trainable, frozen = split_trainable(loaded.model, "full")
    batch = rm_batch(loaded.hf_config["vocab_size"])
    loss_cfg = rm_defaults().loss
    make_step = lambda k: make_rm_train_step(graphdef, loss_cfg, gradient_keeping_sgd(),
                                             optax.constant_schedule(1.0), grad_accum=k)
    reference = rm_reference(graphdef, frozen)

    (ref_loss, (r_c, r_r)), ref_grads = reference(trainable, {k: v[:RM_REAL] for k, v in batch.items()})
    # The loss once more in float64 from the rewards: mean over the 5 real pairs of -log sigmoid(r_c - r_r).
    diff = np.asarray(r_c, np.float64) - np.asarray(r_r, np.float64)
    loss64 = float(np.mean(np.log1p(np.exp(-diff))))
    np.testing.assert_allclose(float(ref_loss), loss64, rtol=1e-6)
    ref = flat(ref_grads)

    big = run_step(make_step, graphdef, trainable, frozen, batch, 1)
    check_against_reference(*big, trainable, loss64, ref, "loss")
    for grad_accum in (2, 4):
        acc = run_step(make_step, graphdef, trainable, frozen, batch, grad_accum)
        check_against_reference(*acc, trainable, loss64, ref, "loss")
        # What averaging per-micro-batch means would give (a micro-batch of filler rows counts as 0).
        losses, grads = [], []
        for sl in micro_slices(grad_accum):
            n = int(batch["weight_B"][sl].sum())
            (loss, _), g = reference(trainable, {k: v[sl][:n] for k, v in batch.items()}) if n else (
                (0.0, None), jax.tree_util.tree_map(jnp.zeros_like, trainable))
            losses.append(float(loss))
            grads.append(g)
        mom_grads = jax.tree_util.tree_map(lambda *g, n=grad_accum: sum(g) / n, *grads)
        check_accumulated(big, acc, loss64, ref, float(np.mean(losses)), mom_grads)
        for _, metrics in (big, acc):
            assert metrics["pairs"] == RM_REAL
            assert metrics["accuracy"] == pytest.approx(np.mean(diff > 0))


# ---------------------------------------------------------------------------------------------- SFT

# (prompt tokens, response tokens) of 7 real rows and one filler row (row 0 again, nothing scored).
# grad_accum=2 scores 40 + 4 tokens, grad_accum=4 scores 20, 20, 3, 1; sequence lengths differ too.
SFT_ROWS = [(5, 10), (3, 10), (6, 10), (4, 10), (7, 2), (2, 1), (9, 1)]


def sft_batch(vocab):
    rng = np.random.default_rng(1)
    ids, mask = random_rows(rng, [p + r for p, r in SFT_ROWS], vocab)
    loss_mask = np.zeros_like(mask)
    for j, (p, r) in enumerate(SFT_ROWS):
        loss_mask[j, p:p + r] = 1
    fill = lambda x, v=None: np.concatenate([x, x[:1] if v is None else np.full_like(x[:1], v)])
    return {"ids_BxT": fill(ids), "mask_BxT": fill(mask), "loss_mask_BxT": fill(loss_mask, 0),
            "weight_B": (np.arange(B) < len(SFT_ROWS)).astype(np.float32)}


def sft_reference(graphdef, frozen):
    """value_and_grad over `trainable` of the mean NLL over the response tokens of `rows`, from the full
    [B, T, V] logits."""

    def mean_nll(trainable, rows):
        model = nnx.merge(graphdef, trainable, frozen)
        logits, _ = model(rows["ids_BxT"], rows["mask_BxT"])
        logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, rows["ids_BxT"][:, 1:, None], axis=-1)[..., 0]
        scored = rows["loss_mask_BxT"][:, 1:].astype(jnp.float32)
        return -jnp.sum(picked * scored) / jnp.sum(scored), logits

    return jax.jit(jax.value_and_grad(mean_nll, has_aux=True))


def float64_token_mean_nll(logits, rows):
    logits = np.asarray(logits, np.float64)[:, :-1]
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(T - 1):
            if rows["loss_mask_BxT"][b, t + 1]:
                total -= logp[b, t, rows["ids_BxT"][b, t + 1]]
                count += 1
    return total / count, count


def test_sft_accumulation_with_unequal_token_counts_equals_token_mean(model_dir):
    loaded = from_pretrained(str(model_dir), "causal_lm")
    scale_param(loaded.model.backbone.embed.embedding, 50.0)  # tied head: peaked logits, per-token NLLs far apart
    graphdef, trainable, frozen = split_trainable(loaded.model, "full")
    batch = sft_batch(loaded.hf_config["vocab_size"])
    make_step = lambda k: make_sft_train_step(graphdef, gradient_keeping_sgd(), optax.constant_schedule(1.0),
                                              grad_accum=k, chunk_size=4)
    reference = sft_reference(graphdef, frozen)

    (ref_loss, logits), ref_grads = reference(trainable, batch)
    loss64, count = float64_token_mean_nll(logits, batch)
    assert count == sum(r for _, r in SFT_ROWS)
    np.testing.assert_allclose(float(ref_loss), loss64, rtol=1e-5)
    ref = flat(ref_grads)

    big = run_step(make_step, graphdef, trainable, frozen, batch, 1)
    check_against_reference(*big, trainable, loss64, ref, "nll")
    for grad_accum in (2, 4):
        acc = run_step(make_step, graphdef, trainable, frozen, batch, grad_accum)
        check_against_reference(*acc, trainable, loss64, ref, "nll")
        losses, grads = [], []
        for sl in micro_slices(grad_accum):
            (loss, _), g = reference(trainable, {k: v[sl] for k, v in batch.items()})
            losses.append(float(loss))
            grads.append(g)
        mom_grads = jax.tree_util.tree_map(lambda *g, n=grad_accum: sum(g) / n, *grads)
        check_accumulated(big, acc, loss64, ref, float(np.mean(losses)), mom_grads)
        for _, metrics in (big, acc):
            assert metrics["tokens"] == count
            assert metrics["seq_tokens"] == batch["mask_BxT"].sum()


def test_gpu_takes_a_select_where_cpu_takes_a_cond_with_the_same_results(monkeypatch):
    """XLA:GPU reads a cond's predicate on the host: there the guarded update is a select instead."""
    import optax

    from jaxrlhf.training.accumulate import guarded_update

    opt = optax.adam(0.1)
    params = {"w": jnp.ones(3)}
    state = opt.init(params)
    grads = {"good": {"w": jnp.array([1.0, -1.0, 0.5])}, "nan": {"w": jnp.array([1.0, jnp.nan, 0.5])}}

    def run():
        fn = jax.jit(lambda g: guarded_update(params, state, g, opt, jnp.float32(1.0)))
        return {k: fn(g) for k, g in grads.items()}, fn.lower(grads["good"]).as_text()

    on_cpu, cpu_hlo = run()
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    on_gpu, gpu_hlo = run()
    assert "stablehlo.case" in cpu_hlo and "stablehlo.case" not in gpu_hlo
    for k in grads:
        for a, b in zip(jax.tree_util.tree_leaves(on_cpu[k]), jax.tree_util.tree_leaves(on_gpu[k])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(on_gpu["nan"][0]["w"]), np.ones(3))  # the bad step not applied
