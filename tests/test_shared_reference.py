"""Under LoRA, PPO's reference is the actor's frozen base with its adapters off: no second copy of the
weights, and the same log-probs as a separately loaded reference."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.helpers.models import tiny_llama_jax_config


def _lora_lm_and_its_base():
    from jaxrlhf.models import llama, registry
    from jaxrlhf.models.layers import LoRAConfig, LoRAParam

    cfg = tiny_llama_jax_config()
    lora = registry.build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(0),
                                lora=LoRAConfig(rank=4, targets="q_proj|v_proj|down_proj"))
    # Trained-looking adapters (B starts at zero, where adapters on and off would agree trivially).
    adapters = nnx.state(lora, LoRAParam)
    nnx.update(lora, jax.tree_util.tree_map(lambda x: jax.random.normal(jax.random.key(1), x.shape) * 0.3,
                                            adapters))
    base = registry.build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(5))
    nnx.update(base, nnx.state(lora, nnx.Not(LoRAParam)))
    return lora, base


def test_adapters_off_computes_the_base_model():
    from jaxrlhf.models.layers import adapters_off
    from jaxrlhf.rl.experience import response_logprobs

    lora, base = _lora_lm_and_its_base()
    ids = jax.random.randint(jax.random.key(2), (3, 12), 1, 97)
    mask = jnp.ones_like(ids).at[0, :4].set(0)
    resp = ids[:, -5:]
    with adapters_off():
        off = response_logprobs(lora, ids, mask, resp)
    on = response_logprobs(lora, ids, mask, resp)
    np.testing.assert_array_equal(np.asarray(off), np.asarray(response_logprobs(base, ids, mask, resp)))
    assert float(jnp.abs(on - off).max()) > 1e-3  # the adapters do change the model


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_experience_with_the_shared_reference_equals_a_separate_one():
    from jaxrlhf.models import llama, registry
    from jaxrlhf.ops import whitening
    from jaxrlhf.rl.experience import AdvantageConfig, make_experience_fn
    from jaxrlhf.rl.rewards import RewardShaping

    lora, base = _lora_lm_and_its_base()
    critic = registry.build_model(llama, tiny_llama_jax_config(), "value", rngs=nnx.Rngs(3))
    actor_def, actor_t, actor_f = nnx.split(lora, nnx.Param, ...)
    critic_def, critic_state = nnx.split(critic)
    ref_def, ref_state = nnx.split(base)
    B, P, N = 2, 6, 5
    ids = jax.random.randint(jax.random.key(4), (B, P + N), 1, 97)
    batch = {"ids_BxT": ids, "mask_BxT": jnp.ones_like(ids), "response_ids_BxN": ids[:, P:],
             "response_mask_BxN": jnp.ones((B, N), jnp.int32), "ended_B": jnp.ones((B,), bool),
             "sample_logp_BxN": jnp.zeros((B, N), jnp.float32)}
    kw = dict(temperature=1.0, shaping=RewardShaping(), advantages=AdvantageConfig())
    args = (batch, jnp.ones((B,), jnp.float32), jnp.asarray(0.1), whitening.RunningMoments.init())
    shared, _, m_shared = make_experience_fn(actor_def, None, critic_def, **kw)(
        (actor_t, actor_f), (), (critic_state,), *args)
    separate, _, m_separate = make_experience_fn(actor_def, ref_def, critic_def, **kw)(
        (actor_t, actor_f), (ref_state,), (critic_state,), *args)
    np.testing.assert_array_equal(np.asarray(shared["ref_logp_BxN"]), np.asarray(separate["ref_logp_BxN"]))
    assert float(m_shared["kl_k1_per_seq"]) == float(m_separate["kl_k1_per_seq"]) != 0.0


@pytest.mark.slow
def test_lora_ppo_loads_no_reference_and_starts_at_zero_kl(tmp_path, capsys):
    from jaxrlhf.rl.ppo_models import shares_actor_base
    from jaxrlhf.train_ppo import train
    from tests.helpers.data import write_prompts
    from tests.helpers.models import make_tiny_llama_dir
    from tests.helpers.runs import make_tiny_rm_export, tiny_ppo_config

    policy = make_tiny_llama_dir(tmp_path / "policy")
    config = tiny_ppo_config(policy, make_tiny_rm_export(tmp_path), write_prompts(tmp_path / "p.jsonl"),
                             tmp_path / "work")
    config.policy.train_mode, config.policy.lora_targets = "lora", "q_proj|v_proj"
    config.train.iterations, config.train.checkpoint_every = 3, 0
    assert shares_actor_base(config)
    train(config)
    out = capsys.readouterr().out
    assert "actor" in out and "\nreference " not in out  # no reference row in the memory plan
    rows = [json.loads(line) for line in (tmp_path / "work" / "metrics.jsonl").read_text().splitlines()]
    kl = [r["ppo/kl_k1_per_seq"] for r in rows if "ppo/kl_k1_per_seq" in r]
    assert len(kl) == 3 and kl[0] == 0.0 and kl[-1] != 0.0  # zero-initialised adapters: actor = reference

    config.policy.train_lm_head = True  # the LM head then trains: the base is no longer the reference
    assert not shares_actor_base(config)
