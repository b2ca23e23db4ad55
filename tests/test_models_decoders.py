"""Llama-family and GPT-2 decoders against the PyTorch models in `transformers`.

Tiny random configs are made here; every torch parameter is re-drawn at a scale where the logits are
of order one (norm scales and biases included, so a mis-mapped one shows), copied into our models
through the family's `weight_specs` table, and outputs compared in float32 on real-token positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxrlhf.models import gpt2, llama, registry
from jaxrlhf.models.layers import Linear, LoRAConfig, LoRAParam
from tests.helpers.models import tiny_gpt2_config, tiny_llama_config, tiny_llama_jax_config
from tests.helpers.weights import copy_torch_model

V = 101  # vocabulary; id 0 is the pad token
PAD = 0  # the tiny configs' pad_token_id
TOL = 1e-4


def _llama_cfg(**kw):
    return tiny_llama_config(**{**dict(vocab_size=V, rms_norm_eps=1e-5), **kw})


def _configs():
    return {
        "llama_gqa_untied": (llama, _llama_cfg(tie_word_embeddings=False)),
        # head_dim given explicitly (not hidden/heads), one KV head, tied, biases everywhere
        "llama_tied_bias_headdim": (llama, _llama_cfg(num_attention_heads=2, num_key_value_heads=1, head_dim=24,
                                                      tie_word_embeddings=True, attention_bias=True,
                                                      mlp_bias=True, rope_parameters={"rope_type": "default",
                                                                                      "rope_theta": 500.0})),
        # head_dim 16 with theta 1e4 puts two frequencies in the smoothed band of original_max=64
        "llama3_rope": (llama, _llama_cfg(num_attention_heads=2, num_key_value_heads=1, rope_parameters={
            "rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64})),
        "mistral_window": (llama, tiny_llama_config(transformers.MistralConfig, vocab_size=V, head_dim=8,
                                                    sliding_window=3)),
        # q/k/v bias without o bias, tied, layer 0 full attention and layer 1 sliding
        "qwen2_bias_window": (llama, tiny_llama_config(transformers.Qwen2Config, vocab_size=V,
                                                       tie_word_embeddings=True, use_sliding_window=True,
                                                       sliding_window=3, max_window_layers=1)),
        "gpt2": (gpt2, tiny_gpt2_config(vocab_size=V, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                                        attn_pdrop=0.0)),
        "gpt2_untied_layer_scaled": (gpt2, tiny_gpt2_config(
            vocab_size=V, n_head=2, n_inner=48, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
            tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True)),
    }


CONFIGS = _configs()
ALL = sorted(CONFIGS)


def _torch_model(hc, task: str, seed: int = 0):
    hc = hc.__class__.from_dict(hc.to_dict())
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "reward": transformers.AutoModelForSequenceClassification,
            "value": transformers.AutoModelForSequenceClassification, "backbone": transformers.AutoModel}[task]
    if task in ("reward", "value"):
        hc.num_labels = 1
    torch.manual_seed(seed)
    tm = auto.from_config(hc, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if p.ndim == 1 and ("norm" in name or ".ln_" in name or name.endswith("ln_f.weight")) \
                    and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return tm


def load_torch_weights(model: nnx.Module, family, cfg, task: str, tm) -> None:
    copy_torch_model(model, family.weight_specs(cfg, task), tm, cfg.tie_word_embeddings)


def _build(name: str, task: str, seed: int = 0, **kw):
    family, hc = CONFIGS[name]
    cfg = family.Config.from_hf(hc.to_dict())
    tm = _torch_model(hc, task, seed)
    model = registry.build_model(family, cfg, task, rngs=nnx.Rngs(1), **kw)
    load_torch_weights(model, family, cfg, task, tm)
    return family, cfg, model, tm


def _batch(seed: int = 0):
    """Rows: right padding, left padding, holes in the middle, no padding (pads are PAD ids)."""
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0],
                     [0, 0, 0, 1, 1, 1, 1, 1],
                     [1, 1, 0, 1, 0, 0, 1, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    ids = np.random.RandomState(seed).randint(1, V, mask.shape)
    ids = np.where(mask > 0, ids, PAD)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what HF users pass for left padding
    return ids, mask, positions


def _torch_kwargs(ids, mask, positions):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                position_ids=torch.tensor(positions))


@pytest.mark.parametrize("name", ALL)
def test_causal_lm_logits_match_torch_with_right_left_and_holey_padding(name):
    family, cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch()
    logits, cache = model(jnp.asarray(ids), jnp.asarray(mask))  # positions default from the mask
    assert cache is None
    logits = np.asarray(logits)
    with torch.no_grad():
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits.numpy()
    assert np.isfinite(logits).all(), "padding positions must not produce NaN/inf"
    real = mask > 0
    assert np.abs(ref[real]).max() > 0.5  # the comparison is not between near-zero numbers
    for row in range(ids.shape[0]):
        err = np.abs(logits[row][real[row]] - ref[row][real[row]]).max()
        assert err < TOL, f"row {row}: max abs error {err}"


def test_llama3_and_linear_rope_frequencies_match_torch():
    for rope in ({"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                 {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}):
        hc = _llama_cfg(num_attention_heads=2, num_key_value_heads=1, rope_parameters=rope)
        cfg = llama.Config.from_hf(hc.to_dict())
        ref = transformers.LlamaModel(hc).rotary_emb.inv_freq.numpy()
        ours = llama.rope_inv_freq(cfg)
        np.testing.assert_allclose(ours, ref, rtol=1e-6)
        plain = llama.rope_inv_freq(llama.Config.from_hf(_llama_cfg(num_attention_heads=2).to_dict()))
        assert not np.allclose(ours, plain)  # the scaling did something
    # the older spelling: rope_theta + rope_scaling {"type": ...}
    d = _llama_cfg().to_dict()
    d.pop("rope_parameters")
    d.update(rope_theta=5e5, rope_scaling={"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 64})
    cfg = llama.Config.from_hf(d)
    assert (cfg.rope_type, cfg.rope_theta, cfg.rope_original_max_position_embeddings) == ("llama3", 5e5, 64)
    with pytest.raises(ValueError, match="rope"):
        llama.Config.from_hf(dict(d, rope_scaling={"type": "yarn", "factor": 2.0}))


@pytest.mark.parametrize("name", ["llama_gqa_untied", "qwen2_bias_window", "mistral_window", "gpt2"])
def test_reward_matches_torch_sequence_classification(name):
    family, cfg, model, tm = _build(name, "reward")
    ids, mask, positions = _batch(1)
    reward = model(jnp.asarray(ids), jnp.asarray(mask))
    assert reward.dtype == jnp.float32 and reward.shape == (ids.shape[0],)
    with torch.no_grad():  # torch picks the rightmost non-pad token of each row
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits[:, 0].numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(reward), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["llama_tied_bias_headdim", "gpt2_untied_layer_scaled"])
def test_value_head_is_head_of_every_hidden_state_and_backbone_task_matches(name):
    family, cfg, model, tm = _build(name, "value")
    ids, mask, positions = _batch(2)
    values = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert values.shape == ids.shape and values.dtype == np.float32
    base = tm.model if family is llama else tm.transformer
    with torch.no_grad():
        hidden = base(**_torch_kwargs(ids, mask, positions)).last_hidden_state.numpy()
    by_hand = hidden @ tm.score.weight.detach().numpy()[0]
    real = mask > 0
    np.testing.assert_allclose(values[real], by_hand[real], atol=TOL, rtol=0)

    # task "backbone": keys without the base prefix, as in a bare LlamaModel / GPT2Model checkpoint
    bare = registry.build_model(family, cfg, "backbone", rngs=nnx.Rngs(3))
    load_torch_weights(bare, family, cfg, "backbone", base)
    ours, _ = bare(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours)[real], hidden[real], atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["llama_gqa_untied", "gpt2"])
def test_scanned_unscanned_and_remat_give_same_outputs_and_gradients(name):
    family, cfg, scanned, _ = _build(name, "causal_lm")
    ids, mask, _ = _batch(3)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    weights_BxTxV = jax.random.normal(jax.random.key(0), ids.shape + (V,))

    def loss(model):
        logits, _ = model(ids, mask)
        return jnp.sum(logits * weights_BxTxV)

    results = []
    for scan_layers, remat in ((True, False), (False, False), (True, True), (False, True),
                               (True, "dots_with_no_batch_dims_saveable"), (False, "dots_saveable")):
        model = registry.build_model(family, cfg, "causal_lm", rngs=nnx.Rngs(7), scan_layers=scan_layers,
                                     remat=remat)
        nnx.update(model, nnx.state(scanned))
        value, grads = nnx.value_and_grad(loss)(model)
        results.append((value, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}))
    ref_value, ref_grads = results[0]
    assert sum(np.abs(g).sum() for g in ref_grads.values()) > 0
    for value, grads in results[1:]:
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for p in ref_grads:
            np.testing.assert_allclose(grads[p], ref_grads[p], atol=1e-4, rtol=1e-4, err_msg=str(p))


def test_remat_policies_recompute_what_they_say():
    """Dots in the lowered gradient program (one scanned block): a policy that saves the weight projections'
    outputs recomputes only attention's two batched products; full remat recomputes every forward dot;
    saving every dot recomputes none."""
    import re

    from jaxrlhf.models.layers import remat_name

    cfg = tiny_llama_jax_config()
    ids = jnp.ones((2, 16), jnp.int32)

    def dots(remat):
        graphdef, state = nnx.split(registry.build_model(llama, cfg, "reward", rngs=nnx.Rngs(0), remat=remat))
        grad = jax.jit(jax.grad(lambda st: nnx.merge(graphdef, st)(ids, jnp.ones_like(ids)).sum()))
        return len(re.findall(r"stablehlo\.dot_general", grad.lower(state).as_text()))

    none, full = dots("none"), dots("full")
    assert dots(False) == none and dots(True) == full  # configs from before the policies
    assert dots("dots_with_no_batch_dims_saveable") == none + 2
    assert dots("dots_saveable") == none
    assert full >= none + 8  # q, k, v, o, gate, up, down and attention's products again
    with pytest.raises(ValueError, match="model.remat must be one of"):
        remat_name("some")


@pytest.mark.parametrize("name,scan_layers", [("llama_gqa_untied", True), ("mistral_window", True),
                                              ("qwen2_bias_window", True), ("gpt2", False)])
def test_cached_prefill_and_decode_steps_match_full_forward(name, scan_layers):
    family, cfg, model, _ = _build(name, "causal_lm", scan_layers=scan_layers)
    rs = np.random.RandomState(4)
    B, T0, N = 3, 5, 5
    prompt_mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]], np.int32)  # left padded
    prompt_ids = np.where(prompt_mask > 0, rs.randint(1, V, (B, T0)), PAD)
    step_ids = rs.randint(1, V, (B, N))
    step_mask = np.ones((B, N), np.int32)
    step_mask[0, 2:] = 0  # row 0 finishes: its later tokens are fed masked out
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
    assert cache.k_LxBxKxSxD.shape[:2] == (2, B) and cache.k_LxBxKxSxD.shape[3] == S
    np.testing.assert_array_equal(np.asarray(cache.num_tokens_B()), prompt_mask.sum(1) + step_mask.sum(1))

    full_ids = np.concatenate([prompt_ids, step_ids], 1)
    full_mask = np.concatenate([prompt_mask, step_mask], 1)
    full, _ = model(jnp.asarray(full_ids), jnp.asarray(full_mask))
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(prefill)[prompt_mask > 0], full[:, :T0][prompt_mask > 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(steps)[step_mask > 0], full[:, T0:][step_mask > 0], atol=TOL, rtol=0)
    assert np.isfinite(np.asarray(steps)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name,targets", [("llama_gqa_untied", "q_proj|v_proj|o_proj|gate_proj|down_proj"),
                                          ("gpt2", "c_attn|c_proj|c_fc")])
def test_lora_zero_b_equals_base_and_merge_equals_adapted(name, targets):
    family, cfg, base, _ = _build(name, "causal_lm")
    lora = LoRAConfig(rank=4, alpha=8.0, dropout=0.5, targets=targets)
    model = registry.build_model(family, cfg, "causal_lm", rngs=nnx.Rngs(5), lora=lora)
    nnx.update(model, nnx.state(base))
    adapters = dict(nnx.to_flat_state(nnx.state(model, LoRAParam)))
    assert adapters, "no adapters were created"
    ids, mask, _ = _batch(5)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    base_logits = np.asarray(base(ids, mask)[0])
    np.testing.assert_allclose(np.asarray(model(ids, mask)[0]), base_logits, atol=1e-5, rtol=0)

    keys = iter(jax.random.split(jax.random.key(9), len(adapters)))
    nnx.update(model, nnx.from_flat_state([(p, v.replace(0.3 * jax.random.normal(next(keys), v.get_value().shape)))
                                           for p, v in adapters.items() if p[-1] == "lora_b"]))
    adapted = np.asarray(model(ids, mask)[0])
    assert np.abs(adapted - base_logits).max() > 1e-2  # the adapter changes the model

    # LoRA dropout acts only when a dropout key is given, with keys split per layer and per projection
    dropped = np.asarray(model(ids, mask, dropout_rng=jax.random.key(1))[0])
    assert np.abs(dropped - adapted).max() > 1e-3
    np.testing.assert_array_equal(np.asarray(model(ids, mask, dropout_rng=jax.random.key(1))[0]), dropped)

    merged = nnx.clone(model)
    for _, module in nnx.iter_modules(merged):
        if isinstance(module, Linear):
            module.merge_lora()
    assert not list(nnx.to_flat_state(nnx.state(merged, LoRAParam)))
    np.testing.assert_allclose(np.asarray(merged(ids, mask)[0]), adapted, atol=1e-4, rtol=0)


def test_lora_targets_that_match_no_layer_are_refused():
    cfg = gpt2.Config.from_hf(CONFIGS["gpt2"][1].to_dict())
    with pytest.raises(ValueError, match="match no GPT-2 layer"):
        gpt2.Backbone(cfg, rngs=nnx.Rngs(0), lora=LoRAConfig())  # default targets are Llama names


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("task", ["causal_lm", "reward", "backbone"])
def test_to_hf_config_builds_the_same_torch_model_and_round_trips(name, task):
    family, hc = CONFIGS[name]
    cfg = family.Config.from_hf(hc.to_dict())
    d = cfg.to_hf(task)
    assert family.Config.from_hf(d) == cfg
    loaded = transformers.AutoConfig.for_model(**d)
    arch = getattr(transformers, d["architectures"][0])
    tm = arch(loaded)
    if task == "reward":
        assert loaded.num_labels == 1 and loaded.pad_token_id is not None
    # the exported config gives a torch model whose tensors are exactly the spec table's
    keys = {k for spec in family.weight_specs(cfg, task) for k in spec.hf_keys}
    expect = set(tm.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    assert keys == expect
    ref = _torch_model(hc, task).state_dict()
    for k, v in tm.state_dict().items():
        assert v.shape == ref[k].shape, k


@pytest.mark.parametrize("train_lm_head", [False, True])
def test_lora_leaves_an_untied_lm_head_frozen_unless_asked(train_lm_head):
    import ml_collections

    from jaxrlhf.training.trainable import split_for

    family, cfg, _, _ = _build("llama_gqa_untied", "causal_lm")
    model = registry.build_model(family, cfg, "causal_lm", rngs=nnx.Rngs(5),
                                 lora=LoRAConfig(rank=2, alpha=4.0, targets="q_proj|v_proj"))
    block = ml_collections.ConfigDict({"train_mode": "lora", "train_lm_head": train_lm_head})
    _, trainable, frozen = split_for(model, block)
    trained = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(trainable)}
    assert trained and all("lora" in p or "lm_head" in p for p in trained)
    assert any("lm_head" in p for p in trained) == train_lm_head
    assert any("lm_head" in "/".join(map(str, p)) for p, _ in nnx.to_flat_state(frozen)) != train_lm_head
    # frozen_backbone on a causal LM trains the LM head: it is all there is to train
    _, heads, _ = split_for(model, ml_collections.ConfigDict({"train_mode": "frozen_backbone"}))
    assert {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(heads)} == {"lm_head/kernel"}


@pytest.mark.parametrize("name", ALL)
def test_sequence_logprobs_of_responses_match_torch_with_right_and_left_padding(name):
    """CausalLM.sequence_logprobs (what SFT and the DPO family score) against log_softmax of PyTorch's logits:
    the last 3 real tokens of each row are the response, each scored from the position before it."""
    family, cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch(seed=4)
    rows = [0, 1, 3]  # right padding, left padding, none
    ids, mask, positions = ids[rows], mask[rows], positions[rows]
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1)
    scored = np.zeros_like(mask)
    for b, end in enumerate(last):
        scored[b, end - 2:end + 1] = 1
    logp_B, tokens_B = model.sequence_logprobs(jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(scored),
                                               chunk_size=3)
    with torch.no_grad():
        logp_ref = torch.log_softmax(tm(**_torch_kwargs(ids, mask, positions)).logits.double(), -1).numpy()
    want = [sum(logp_ref[b, t - 1, ids[b, t]] for t in np.nonzero(scored[b])[0]) for b in range(len(rows))]
    np.testing.assert_array_equal(np.asarray(tokens_B), [3, 3, 3])
    assert min(abs(w) for w in want) > 0.5
    np.testing.assert_allclose(np.asarray(logp_B), want, atol=3 * TOL, rtol=0)
