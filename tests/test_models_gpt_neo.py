"""GPT-Neo against the PyTorch models in `transformers`.

Tiny random configs are made here, with global and local layers mixed and a window of 3 over sequences
of 8 or more, so a wrong window, a wrong per-layer choice or a stray 1/sqrt(d) shows. Every torch
parameter is re-drawn (LayerNorm scales around 1, all else at 0.2, so the logits are of order one and a
mis-mapped tensor shows), copied in through `gpt_neo.weight_specs`, and compared in float32.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxrlhf.models import gpt_neo, registry
from jaxrlhf.models.layers import LoRAConfig
from tests.helpers.weights import copy_torch_model

V = 101  # vocabulary; id 0 is the pad token
PAD = 0
TOL = 1e-4
_AUTO = {"causal_lm": transformers.AutoModelForCausalLM, "reward": transformers.AutoModelForSequenceClassification,
         "value": transformers.AutoModelForSequenceClassification, "backbone": transformers.AutoModel}


def tiny_gpt_neo_config(**overrides) -> transformers.GPTNeoConfig:
    """3 layers (global, local, local), window 3, hidden 32 in 4 heads; dropout off."""
    kw = dict(vocab_size=V, hidden_size=32, num_layers=3, num_heads=4, intermediate_size=48,
              attention_types=[[["global", "local"], 1], [["local"], 1]], window_size=3, max_position_embeddings=32,
              pad_token_id=PAD, bos_token_id=1, eos_token_id=2, resid_dropout=0.0, embed_dropout=0.0,
              attention_dropout=0.0, classifier_dropout=0.0)
    return transformers.GPTNeoConfig(**{**kw, **overrides})


CONFIGS = {
    "mixed_tied": tiny_gpt_neo_config(),
    "local_only_untied": tiny_gpt_neo_config(num_layers=2, attention_types=[[["local"], 2]],
                                             tie_word_embeddings=False),
}


def _torch_model(hc, task: str, seed: int = 0):
    hc = hc.__class__.from_dict(hc.to_dict())
    if task in ("reward", "value"):
        hc.num_labels = 1
    torch.manual_seed(seed)
    tm = _AUTO[task].from_config(hc, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if ".ln_" in name and name.endswith("weight"):  # LayerNorm scales (transformer.ln_f included)
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return tm


def load_torch_weights(model: nnx.Module, cfg, task: str, tm) -> None:
    copy_torch_model(model, gpt_neo.weight_specs(cfg, task), tm, cfg.tie_word_embeddings)


def _build(name: str, task: str, seed: int = 0, **kw):
    hc = CONFIGS[name]
    cfg = gpt_neo.Config.from_hf(hc.to_dict())
    tm = _torch_model(hc, task, seed)
    model = registry.build_model(gpt_neo, cfg, task, rngs=nnx.Rngs(1), **kw)
    load_torch_weights(model, cfg, task, tm)
    return cfg, model, tm


def _batch(seed: int = 0, T: int = 10):
    """Rows: right padding, left padding, holes in the middle, no padding (pads are PAD ids)."""
    mask = np.ones((4, T), np.int32)
    mask[0, 6:] = 0
    mask[1, :3] = 0
    mask[2, [2, 4, 5, 8]] = 0
    ids = np.where(mask > 0, np.random.RandomState(seed).randint(3, V, mask.shape), PAD)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what HF users pass for padded rows
    return ids, mask, positions


def _torch_kwargs(ids, mask, positions):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))


def _assert_close_on_real(ours, ref, mask):
    ours = np.asarray(ours)
    assert np.isfinite(ours).all(), "padding positions must not produce NaN/inf"
    real = mask > 0
    assert np.abs(ref[real]).max() > 0.5  # not a comparison of near-zero numbers
    for row in range(mask.shape[0]):
        err = np.abs(ours[row][real[row]] - ref[row][real[row]]).max()
        assert err < TOL, f"row {row}: max abs error {err}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_causal_lm_logits_match_torch_with_right_left_and_holey_padding(name):
    cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch()
    logits, cache = model(jnp.asarray(ids), jnp.asarray(mask))  # positions default from the mask
    assert cache is None
    with torch.no_grad():
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits.numpy()
    _assert_close_on_real(logits, ref, mask)

    # the window and the per-layer kinds matter here: a model that attends globally everywhere differs
    wide = registry.build_model(gpt_neo, dataclasses.replace(cfg, attention_layers=("global",) * cfg.num_layers),
                                "causal_lm", rngs=nnx.Rngs(1))
    nnx.update(wide, nnx.state(model))
    other, _ = wide(jnp.asarray(ids), jnp.asarray(mask))
    assert np.abs(np.asarray(other) - ref)[mask > 0].max() > 100 * TOL


def test_reward_matches_torch_sequence_classification():
    cfg, model, tm = _build("mixed_tied", "reward")
    ids, mask, positions = _batch(1)
    reward = model(jnp.asarray(ids), jnp.asarray(mask))
    assert reward.dtype == jnp.float32 and reward.shape == (ids.shape[0],)
    with torch.no_grad():  # torch reads the rightmost non-pad token of each row
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits[:, 0].numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(reward), ref, atol=TOL, rtol=0)


def test_value_head_is_score_of_every_hidden_state_and_backbone_task_matches():
    cfg, model, tm = _build("mixed_tied", "value", seed=2)
    ids, mask, positions = _batch(2)
    values = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert values.shape == ids.shape and values.dtype == np.float32
    with torch.no_grad():
        hidden = tm.transformer(**_torch_kwargs(ids, mask, positions)).last_hidden_state.numpy()
    by_hand = hidden @ tm.score.weight.detach().numpy()[0]
    real = mask > 0
    np.testing.assert_allclose(values[real], by_hand[real], atol=TOL, rtol=0)

    bare = registry.build_model(gpt_neo, cfg, "backbone", rngs=nnx.Rngs(3))  # keys without "transformer."
    load_torch_weights(bare, cfg, "backbone", tm.transformer)
    ours, _ = bare(jnp.asarray(ids), jnp.asarray(mask))
    _assert_close_on_real(ours, hidden, mask)


@pytest.mark.parametrize("name,scan_layers", [("mixed_tied", True), ("mixed_tied", False),
                                              ("local_only_untied", True)])
def test_cached_prefill_and_decode_steps_match_full_forward(name, scan_layers):
    """Prompt 5 + 6 steps > window 3: decode steps must drop the slots that leave the window."""
    cfg, model, _ = _build(name, "causal_lm", scan_layers=scan_layers)
    rs = np.random.RandomState(4)
    B, T0, N = 3, 5, 6
    prompt_mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], np.int32)  # left padded
    prompt_ids = np.where(prompt_mask > 0, rs.randint(3, V, (B, T0)), PAD)
    step_ids = rs.randint(3, V, (B, N))
    step_mask = np.ones((B, N), np.int32)
    step_mask[0, 3:] = 0  # row 0 finishes: its later tokens are fed masked out
    step_mask[1, 1] = 0  # a single masked step in the middle
    S = T0 + N + 3  # spare slots at the end stay masked
    graphdef, state = nnx.split(model)

    @jax.jit
    def generate(state, prompt_ids, prompt_mask, step_ids, step_mask):
        m = nnx.merge(graphdef, state)
        cache = m.backbone.init_cache(B, S)
        prefill_logits, cache = m(prompt_ids, prompt_mask, cache=cache)

        def step(cache, x):
            ids_B, mask_B = x
            logits, cache = m(ids_B[:, None], mask_B[:, None], cache=cache)
            return cache, logits[:, 0]

        cache, logits_NxBxV = jax.lax.scan(step, cache, (step_ids.T, step_mask.T))
        return prefill_logits, jnp.swapaxes(logits_NxBxV, 0, 1), cache

    prefill, steps, cache = generate(state, *map(jnp.asarray, (prompt_ids, prompt_mask, step_ids, step_mask)))
    assert int(cache.index) == T0 + N
    assert cache.k_LxBxKxSxD.shape == (cfg.num_layers, B, cfg.num_heads, S, cfg.head_dim)
    full_ids = np.concatenate([prompt_ids, step_ids], 1)
    full_mask = np.concatenate([prompt_mask, step_mask], 1)
    full, _ = model(jnp.asarray(full_ids), jnp.asarray(full_mask))
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(prefill)[prompt_mask > 0], full[:, :T0][prompt_mask > 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(steps)[step_mask > 0], full[:, T0:][step_mask > 0], atol=TOL, rtol=0)


    @jax.jit
    def prefill_own_keys(state, ids, mask):  # kv_len == T0: the prefill attends over its own keys only
        m = nnx.merge(graphdef, state)
        return m.logits(m.backbone(ids, mask, cache=m.backbone.init_cache(B, S), kv_len=T0)[0])

    own = np.asarray(prefill_own_keys(state, jnp.asarray(prompt_ids), jnp.asarray(prompt_mask)))
    np.testing.assert_allclose(own[prompt_mask > 0], full[:, :T0][prompt_mask > 0], atol=TOL, rtol=0)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("task", ["causal_lm", "reward", "backbone"])
def test_to_hf_config_builds_the_torch_model_whose_tensors_are_the_spec_table(name, task):
    hc = CONFIGS[name]
    cfg = gpt_neo.Config.from_hf(hc.to_dict())
    d = cfg.to_hf(task)
    assert gpt_neo.Config.from_hf(d) == cfg
    loaded = transformers.AutoConfig.for_model(**d)
    assert list(loaded.attention_layers) == list(hc.attention_layers) and loaded.window_size == hc.window_size
    tm = getattr(transformers, d["architectures"][0])(loaded)
    if task == "reward":
        assert loaded.num_labels == 1 and loaded.pad_token_id is not None
    keys = {k for spec in gpt_neo.weight_specs(cfg, task) for k in spec.hf_keys}
    assert keys == set(tm.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())


@pytest.mark.parametrize("task", ["causal_lm", "reward"])
def test_export_round_trip_through_transformers_and_our_importer(tmp_path, task):
    from jaxrlhf.models.export import export_hf
    from jaxrlhf.models.hub import from_pretrained

    cfg, model, _ = _build("mixed_tied" if task == "reward" else "local_only_untied", task, seed=5)
    ids, mask, positions = _batch(5)
    if task == "reward":  # an exported classifier head: make it non-trivial
        nnx.update(model.head, nnx.from_flat_state([(("out", "kernel"), nnx.Param(
            0.3 * jax.random.normal(jax.random.key(0), model.head.out.kernel.shape)))]))
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0 if task == "causal_lm" else slice(None)])
    out = export_hf(model, gpt_neo, cfg, task, tmp_path / "export")
    tm = _AUTO[task].from_pretrained(str(out), attn_implementation="eager").eval()
    assert type(tm).__name__ == cfg.to_hf(task)["architectures"][0]
    with torch.no_grad():
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits.numpy()
    if task == "reward":
        np.testing.assert_allclose(ours, ref[:, 0], atol=TOL, rtol=0)
    else:
        _assert_close_on_real(ours, ref, mask)
    loaded = from_pretrained(str(out), task)
    assert loaded.family is gpt_neo and loaded.config == cfg and loaded.initialised == []
    again = np.asarray(loaded.model(jnp.asarray(ids), jnp.asarray(mask))[0 if task == "causal_lm" else slice(None)])
    np.testing.assert_allclose(again, ours, atol=1e-6, rtol=0)


def test_unsupported_settings_are_refused_with_the_field_named():
    d = CONFIGS["mixed_tied"].to_dict()
    with pytest.raises(ValueError, match="attention_types"):
        gpt_neo.Config.from_hf({**d, "attention_types": [[["global", "sparse"], 1], [["local"], 1]]})
    with pytest.raises(ValueError, match="attention_types"):
        gpt_neo.Config.from_hf({**d, "attention_types": [[["global"], 2]]})  # 2 kinds for 3 layers
    with pytest.raises(ValueError, match="match no GPT-Neo layer"):
        gpt_neo.Backbone(gpt_neo.Config.from_hf(d), rngs=nnx.Rngs(0), lora=LoRAConfig(targets="c_attn"))
    assert registry.family_for("gpt_neo") is gpt_neo
