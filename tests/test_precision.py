"""Precision per role (DESIGN.md, "Precision"): compute dtype `auto`, float32 masters for what trains,
frozen weights in the compute dtype, float32-accumulated logits and rewards, and the compiled program's
dots in bf16 where a bf16 run asks for them (read from the lowered StableHLO)."""

import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from tests.helpers.models import make_tiny_llama_dir, tiny_llama_jax_config


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_llama_dir(tmp_path_factory.mktemp("precision") / "model")


def _block(**overrides):
    from jaxrlhf.configs.base import model_block

    block = model_block()
    block.update(overrides)
    return block


def _dtypes(state) -> set[str]:
    return {str(x.dtype) for x in jax.tree_util.tree_leaves(state)}


def test_auto_is_float32_on_cpu_and_bfloat16_on_accelerators(monkeypatch):
    from jaxrlhf.infra import precision

    assert precision.compute_dtype("auto") == jnp.float32  # this machine
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert precision.compute_dtype("auto") == jnp.bfloat16
    assert precision.storage_dtype("auto", jnp.bfloat16) == jnp.bfloat16
    assert precision.storage_dtype("float32", jnp.bfloat16) == jnp.float32
    with pytest.raises(ValueError, match="unknown dtype 'fp8'"):
        precision.compute_dtype("fp8")


def test_trainable_masters_float32_frozen_weights_in_the_compute_dtype(llama_dir):
    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.training.run_setup import load_block
    from jaxrlhf.training.trainable import split_for

    mesh = shd.make_mesh(devices=jax.devices()[:1])
    block = _block(dtype="bfloat16", train_mode="lora", lora_targets="q_proj|v_proj")
    lora = load_block(block, str(llama_dir), "reward", mesh, seed=0)
    _, trainable, frozen = split_for(lora.model, block)
    assert _dtypes(trainable) == {"float32"}  # adapters and the reward head
    assert _dtypes(frozen) == {"bfloat16"}    # the base

    reference = load_block(block, str(llama_dir), "causal_lm", mesh, seed=0, lora=False, trains=False)
    assert _dtypes(nnx.state(reference.model)) == {"bfloat16"}

    full = load_block(_block(dtype="bfloat16"), str(llama_dir), "reward", mesh, seed=0)
    assert _dtypes(nnx.state(full.model)) == {"float32"}  # everything trains: all masters
    kept = load_block(_block(dtype="bfloat16", train_mode="lora", frozen_dtype="float32"), str(llama_dir),
                      "reward", mesh, seed=0)
    assert _dtypes(nnx.state(kept.model)) == {"float32"}


def _rm_step(llama_dir, param_dtype: str, lr: float, dtype: str = "bfloat16"):
    from jaxrlhf.configs.base import rm_defaults
    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.rm.step import make_train_step
    from jaxrlhf.training.optim import make_optimizer
    from jaxrlhf.training.run_setup import init_train_state, load_block
    from jaxrlhf.training.trainable import split_for

    block = _block(dtype=dtype, param_dtype=param_dtype)
    loaded = load_block(block, str(llama_dir), "reward", shd.make_mesh(devices=jax.devices()[:1]), seed=0)
    optim = ml_collections.ConfigDict(dict(rm_defaults().optim))
    optim.update(learning_rate=lr, schedule="constant", warmup_steps=0, weight_decay=0.0)
    optimizer, schedule = make_optimizer(optim, total_steps=10)
    graphdef, trainable, frozen = split_for(loaded.model, block)
    state = init_train_state(trainable, optimizer)
    step = jax.jit(make_train_step(graphdef, rm_defaults().loss, optimizer, schedule))
    return step, state, frozen


def _pairs(B=4, T=16, seed=0, vocab=39):  # make_tiny_llama_dir's vocabulary (its word-level tokenizer)
    rng = np.random.default_rng(seed)
    ids = lambda: rng.integers(3, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[:, T - 3:] = 0
    length = np.full((B,), 6, np.int32)
    return {"chosen_ids_BxT": ids(), "chosen_mask_BxT": mask, "rejected_ids_BxT": ids(), "rejected_mask_BxT": mask,
            "chosen_len_B": length, "rejected_len_B": length, "weight_B": np.ones((B,), np.float32),
            "margin_B": np.zeros((B,), np.float32)}


def _changed_fraction(before, after) -> float:
    pairs = zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(after))
    changed = [float(np.mean(np.asarray(a) != np.asarray(b))) for a, b in pairs]
    return float(np.mean(changed))


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_a_1e6_learning_rate_step_moves_float32_masters_in_a_bf16_run(llama_dir):
    step, state, frozen = _rm_step(llama_dir, "float32", 1e-6)
    before = jax.tree_util.tree_map(np.asarray, state["params"])
    new, metrics = step(state, frozen, _pairs(), jax.random.key(0))
    assert _dtypes(new["params"]) == {"float32"} and _dtypes(new["opt_state"]) <= {"float32", "int32"}
    assert float(metrics["grad_norm"]) > 0
    assert _changed_fraction(before, new["params"]) > 0.9  # Adam moves every weight with a gradient by ~lr

    # What the masters are for: the same step with bf16 parameters loses almost every update (a 1e-6 step
    # on a 0.02 weight is below bf16's spacing there), so this test can tell the two apart.
    step16, state16, frozen16 = _rm_step(llama_dir, "bfloat16", 1e-6)
    before16 = jax.tree_util.tree_map(np.asarray, state16["params"])
    new16, _ = step16(state16, frozen16, _pairs(), jax.random.key(0))
    assert _changed_fraction(before16, new16["params"]) < 0.2


_DOT = re.compile(r"stablehlo\.dot_general.*:\s*\(tensor<([^>]*)>, tensor<([^>]*)>\)\s*->\s*tensor<([^>]*)>")


def _dots(hlo: str) -> list[tuple[str, str, str]]:
    dots = _DOT.findall(hlo)
    assert dots, "no dot_general in the lowered program"
    return dots


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_compiled_bf16_rm_step_has_bf16_dots_and_a_float32_reward_head(llama_dir):
    step, state, frozen = _rm_step(llama_dir, "float32", 1e-5)
    hlo = step.lower(state, frozen, _pairs(), jax.random.key(0)).as_text()
    dots = _dots(hlo)
    f32_operands = [d for d in dots if not (d[0].endswith("bf16") and d[1].endswith("bf16"))]
    assert not f32_operands, f"float32 GEMMs in a bf16 step: {f32_operands[:3]}"
    # The reward head (hidden 32 -> 1) accumulates in float32: its forward dot yields [2B, 1] f32.
    assert any(out == "8x1xf32" for _, _, out in dots), sorted({d[2] for d in dots})
    # The parameters the step takes and returns are the float32 masters.
    assert "tensor<2x32x32xbf16>" not in hlo.split("{")[0]  # no stacked bf16 weight in the signature


def _tiny_lm(cfg, dtype):
    from jaxrlhf.models import llama
    from jaxrlhf.models.registry import build_model

    return build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(0), dtype=dtype)


def test_compiled_bf16_logprob_path_runs_the_lm_head_in_bf16_with_f32_accumulation():
    from jaxrlhf.rl.experience import response_logprobs

    cfg = tiny_llama_jax_config()
    model = _tiny_lm(cfg, jnp.bfloat16)
    graphdef, state = nnx.split(model)
    ids = jnp.ones((2, 12), jnp.int32)

    def logp(state, ids):
        return response_logprobs(nnx.merge(graphdef, state), ids, jnp.ones_like(ids), ids[:, -4:])

    def sampler_logits(state, ids):
        m = nnx.merge(graphdef, state)
        hidden, _ = m.backbone(ids, jnp.ones_like(ids))
        return m.logits(hidden[:, -1:])

    for fn in (logp, sampler_logits):
        dots = _dots(jax.jit(fn).lower(state, ids).as_text())
        head = [d for d in dots if d[2].endswith(f"x{cfg.vocab_size}xf32")]
        assert head, f"{fn.__name__}: no float32-accumulated LM-head dot: {sorted({d[2] for d in dots})}"
        assert all(a.endswith("bf16") and b.endswith("bf16") for a, b, _ in head), head


def _sampler_vs_recomputed(dtype) -> np.ndarray:
    from jaxrlhf.rl.experience import response_logprobs
    from jaxrlhf.rl.sampling import SamplingConfig, generate

    cfg = tiny_llama_jax_config()
    model = _tiny_lm(cfg, dtype)
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.vocab_size, (4, 8)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[0, :3], mask[0, :3] = 0, 0  # one left-padded row
    scfg = SamplingConfig(max_new_tokens=12, temperature=1.0)
    out = generate(model, ids, mask, jax.random.key(1), scfg)
    full_ids = jnp.concatenate([ids, out["response_ids_BxN"]], axis=1)
    full_mask = jnp.concatenate([mask, out["response_mask_BxN"]], axis=1)
    recomputed = response_logprobs(model, full_ids, full_mask, out["response_ids_BxN"], temperature=1.0)
    on = np.asarray(out["response_mask_BxN"]) > 0
    return np.abs(np.asarray(recomputed) - np.asarray(out["logprobs_BxN"]))[on]


def test_sampler_and_recomputed_logprobs_agree_float32():
    diff = _sampler_vs_recomputed(jnp.float32)
    assert diff.mean() < 1e-5, (diff.mean(), diff.max())


def test_sampler_and_recomputed_logprobs_agree_bf16():
    # Measured here: mean 3.3e-4, max 1.1e-3. What remains is the bf16 hidden states of the one-token decode
    # program and of the full forward rounding at different points (XLA fuses the two differently); the
    # logits themselves are the same float32 function of them (the lowered-HLO test above).
    diff = _sampler_vs_recomputed(jnp.bfloat16)
    assert diff.mean() < 1e-3, (diff.mean(), diff.max())


def test_a_run_from_before_auto_resumes_where_auto_means_its_dtype(monkeypatch):
    """run_config.json of an older run says float32; today's default says auto. On CPU that is the same run;
    where auto means bfloat16 it is not, and the resume guard says so."""
    from jaxrlhf.training.resume_guard import changed_keys

    old, new = {"model": {"dtype": "float32"}}, {"model": {"dtype": "auto"}}
    assert changed_keys(old, new) == []
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    assert changed_keys(old, new) == [("model.dtype", "float32", "auto")]
    assert changed_keys({"model": {"dtype": "bfloat16"}}, new) == []
