"""Qwen3 (llama.py's `qk_norm`) and Gemma / Gemma 2 / Gemma 3 text (gemma.py) against `transformers`' PyTorch models.

Tiny random configs are made here with transformers' own config classes; every torch parameter is re-drawn
at a scale where logits are of order one (norm weights included: Gemma's are zero-centred, so they get
0.2 N(0, 1) around HF's implicit 1), copied through the family's `weight_specs` table, and outputs compared in
float32 on real-token positions. Sliding windows of 3 on 8-token rows, query_pre_attn_scalar != head_dim and
soft-caps small enough to bend order-one logits make a wrong window, scale or cap show.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxrlhf.models import attention, export, gemma, hub, llama, registry
from tests.helpers.weights import copy_torch_model

V = 101  # vocabulary; id 0 is the pad token
PAD = 0
TOL = 1e-4
_SHAPE = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, max_position_embeddings=64, pad_token_id=PAD, rms_norm_eps=1e-5)


def _qwen3(**kw):
    return transformers.Qwen3Config(**{**_SHAPE, "head_dim": 16, "tie_word_embeddings": False, **kw})


def _gemma2(**kw):
    return transformers.Gemma2Config(**{**_SHAPE, "sliding_window": 3, "query_pre_attn_scalar": 12,
                                        "attn_logit_softcapping": 1.5, "final_logit_softcapping": 2.0, **kw})


def _gemma3(**kw):
    return transformers.Gemma3TextConfig(**{
        **_SHAPE, "sliding_window": 3, "query_pre_attn_scalar": 10, "final_logit_softcapping": 3.0,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"],
        "rope_parameters": {"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
                            "sliding_attention": {"rope_type": "default", "rope_theta": 50.0}}, **kw})


CONFIGS = {
    # head_dim 16 != hidden / heads, untied, full attention everywhere
    "qwen3": (llama, _qwen3()),
    # biases on q/k/v/o, tied, layers 1-2 sliding (window 3) and layer 0 full
    "qwen3_bias_window": (llama, _qwen3(attention_bias=True, tie_word_embeddings=True, use_sliding_window=True,
                                        sliding_window=3, max_window_layers=1)),
    "gemma": (gemma, transformers.GemmaConfig(**_SHAPE)),
    # layers 0 and 2 sliding (HF's default alternation), both soft-caps on
    "gemma2": (gemma, _gemma2()),
    # untied LM head, attention biases, the window on every layer
    "gemma2_untied_bias": (gemma, _gemma2(tie_word_embeddings=False, attention_bias=True,
                                          layer_types=["sliding_attention"] * 3)),
    # q/k norms, local RoPE base 50 vs linear-scaled global, final soft-cap only
    "gemma3": (gemma, _gemma3()),
}
ALL = sorted(CONFIGS)
SOFTCAPPED = ["gemma2", "gemma3"]


def _torch_model(hc, task: str, seed: int = 0):
    hc = hc.__class__.from_dict(hc.to_dict())
    auto = {"causal_lm": transformers.AutoModelForCausalLM, "reward": transformers.AutoModelForSequenceClassification,
            "value": transformers.AutoModelForSequenceClassification, "backbone": transformers.AutoModel}[task]
    if task in ("reward", "value"):
        hc.num_labels = 1
    torch.manual_seed(seed)
    tm = auto.from_config(hc, attn_implementation="eager").eval()
    centre = 0.0 if hc.model_type.startswith("gemma") else 1.0  # Gemma norms scale by (1 + weight)
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(centre + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return tm


def _load(model: nnx.Module, family, cfg, task: str, tm) -> None:
    copy_torch_model(model, family.weight_specs(cfg, task), tm, cfg.tie_word_embeddings)


def _build(name: str, task: str, seed: int = 0, **kw):
    family, hc = CONFIGS[name]
    cfg = family.Config.from_hf(hc.to_dict())
    tm = _torch_model(hc, task, seed)
    model = registry.build_model(family, cfg, task, rngs=nnx.Rngs(1), **kw)
    _load(model, family, cfg, task, tm)
    return family, cfg, model, tm


def _batch(seed: int = 0):
    """Rows: right padding, left padding, holes in the middle, no padding (pads are PAD ids)."""
    mask = np.array([[1, 1, 1, 1, 1, 1, 0, 0],
                     [0, 0, 1, 1, 1, 1, 1, 1],
                     [1, 1, 0, 1, 0, 1, 1, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    ids = np.where(mask > 0, np.random.RandomState(seed).randint(1, V, mask.shape), PAD)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)  # what HF users pass for left padding
    return ids, mask, positions


def _torch_kwargs(ids, mask, positions):
    return dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(positions))


def _assert_rows_close(ours, ref, mask, tol=TOL):
    real = mask > 0
    assert np.isfinite(ours).all(), "padding positions must not produce NaN/inf"
    for row in range(mask.shape[0]):
        err = np.abs(ours[row][real[row]] - ref[row][real[row]]).max()
        assert err < tol, f"row {row}: max abs error {err}"


def test_configs_read_what_they_should():
    cfgs = {n: f.Config.from_hf(hc.to_dict()) for n, (f, hc) in CONFIGS.items()}
    assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 16 and not cfgs["qwen3"].qkv_bias
    assert cfgs["qwen3_bias_window"].sliding_layers == (False, True, True) and cfgs["qwen3_bias_window"].o_bias
    g2, g3 = cfgs["gemma2"], cfgs["gemma3"]
    assert g2.sliding_layers == (True, False, True) and g2.sliding_window == 3 and g2.query_pre_attn_scalar == 12
    assert (g2.attn_logit_softcapping, g2.final_logit_softcapping, g2.rope_local_theta) == (1.5, 2.0, None)
    assert (g3.rope_type, g3.rope_factor, g3.rope_theta, g3.rope_local_theta) == ("linear", 4.0, 1e4, 50.0)
    assert g3.qk_norm and g3.attn_logit_softcapping is None and g3.final_logit_softcapping == 3.0
    assert cfgs["gemma"].query_pre_attn_scalar == 8 and not cfgs["gemma"].post_norms
    # HF's default layer patterns when a config.json has none: Gemma 2 alternates, Gemma 3 every 6th global
    d = _gemma2(num_hidden_layers=4).to_dict()
    d.pop("layer_types")
    assert gemma.Config.from_hf(d).sliding_layers == (True, False, True, False)
    d = _gemma3(num_hidden_layers=7, layer_types=None).to_dict()
    d.pop("layer_types")
    d["sliding_window_pattern"] = 3
    assert gemma.Config.from_hf(d).sliding_layers == (True, True, False, True, True, False, True)
    # the older Gemma 3 spelling: rope_theta, rope_local_base_freq, rope_scaling
    d = {k: v for k, v in _gemma3().to_dict().items() if k != "rope_parameters"}
    d.update(rope_theta=1e6, rope_local_base_freq=1e4, rope_scaling={"rope_type": "linear", "factor": 8.0})
    c = gemma.Config.from_hf(d)
    assert (c.rope_theta, c.rope_local_theta, c.rope_type, c.rope_factor) == (1e6, 1e4, "linear", 8.0)


def test_unsupported_fields_are_refused_with_one_line():
    g3 = _gemma3().to_dict()
    cases = [
        (gemma, {**g3, "model_type": "gemma3", "vision_config": {}}, "vision_config"),
        (gemma, {**g3, "use_bidirectional_attention": True}, "use_bidirectional_attention"),
        (gemma, {**g3, "attn_logit_softcapping": 50.0}, "attn_logit_softcapping"),
        (gemma, {**g3, "rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0},
                                           "sliding_attention": {"rope_type": "default"}}}, "rope_type"),
        (gemma, {**g3, "rope_parameters": {"full_attention": {"rope_type": "default"},
                                           "sliding_attention": {"rope_type": "linear", "factor": 2.0}}},
         "sliding_attention"),
        (gemma, {**_gemma2().to_dict(), "layer_types": ["chunked_attention"] * 3}, "layer_types"),
        (llama, {**_qwen3().to_dict(), "rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope type"),
    ]
    for family, d, field in cases:
        with pytest.raises(ValueError, match=field) as e:
            family.Config.from_hf(d)
        assert "\n" not in str(e.value)
    with pytest.raises(registry.UnknownArchitectureError, match="gemma3"):
        registry.family_for("gemma3")


@pytest.mark.parametrize("name", ALL)
def test_causal_lm_logits_match_torch_with_right_left_and_holey_padding(name):
    family, cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch()
    logits, cache = model(jnp.asarray(ids), jnp.asarray(mask))
    assert cache is None
    with torch.no_grad():
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits.numpy()
    assert np.abs(ref[mask > 0]).max() > 0.5  # not a comparison of near-zero numbers
    _assert_rows_close(np.asarray(logits), ref, mask)


def test_the_tiny_configs_exercise_what_they_claim():
    """A wrong window, scale, soft-cap or local RoPE base would change the torch logits these tests compare."""
    ids, mask, positions = _batch()

    def torch_logits(hc):
        with torch.no_grad():
            return _torch_model(hc, "causal_lm")(**_torch_kwargs(ids, mask, positions)).logits.numpy()

    base = torch_logits(_gemma3())
    real = mask > 0
    for changed in (_gemma3(sliding_window=8), _gemma3(query_pre_attn_scalar=8), _gemma3(final_logit_softcapping=None),
                    _gemma3(rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0,
                                                                "rope_theta": 10000.0},
                                             "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})):
        assert np.abs(torch_logits(changed)[real] - base[real]).max() > 1e-2
    assert np.abs(torch_logits(_gemma2(attn_logit_softcapping=None))[real] - torch_logits(_gemma2())[real]).max() > 1e-2


@pytest.mark.parametrize("name", ["qwen3_bias_window", "gemma", "gemma2", "gemma3"])
def test_reward_matches_torch_sequence_classification(name):
    family, cfg, model, tm = _build(name, "reward")
    ids, mask, positions = _batch(1)
    reward = model(jnp.asarray(ids), jnp.asarray(mask))
    assert reward.dtype == jnp.float32 and reward.shape == (ids.shape[0],)
    with torch.no_grad():  # torch picks the rightmost non-pad token of each row
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits[:, 0].numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(reward), ref, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["qwen3", "gemma2_untied_bias", "gemma3"])
def test_value_head_is_head_of_every_hidden_state_and_backbone_task_matches(name):
    family, cfg, model, tm = _build(name, "value")
    ids, mask, positions = _batch(2)
    values = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert values.shape == ids.shape and values.dtype == np.float32
    with torch.no_grad():
        hidden = tm.model(**_torch_kwargs(ids, mask, positions)).last_hidden_state.numpy()
    by_hand = hidden @ tm.score.weight.detach().numpy()[0]
    real = mask > 0
    np.testing.assert_allclose(values[real], by_hand[real], atol=TOL, rtol=0)
    bare = registry.build_model(family, cfg, "backbone", rngs=nnx.Rngs(3))  # keys without "model."
    _load(bare, family, cfg, "backbone", tm.model)
    ours, _ = bare(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(ours)[real], hidden[real], atol=TOL, rtol=0)


@pytest.mark.parametrize("name,scan_layers", [("qwen3_bias_window", True), ("gemma2", True), ("gemma3", True),
                                              ("gemma3", False), ("gemma2_untied_bias", True)])
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
    full_ids = np.concatenate([prompt_ids, step_ids], 1)
    full_mask = np.concatenate([prompt_mask, step_mask], 1)
    full = np.asarray(model(jnp.asarray(full_ids), jnp.asarray(full_mask))[0])
    np.testing.assert_allclose(np.asarray(prefill)[prompt_mask > 0], full[:, :T0][prompt_mask > 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.asarray(steps)[step_mask > 0], full[:, T0:][step_mask > 0], atol=TOL, rtol=0)
    assert np.isfinite(np.asarray(steps)).all()


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("task", ["causal_lm", "reward", "backbone"])
def test_to_hf_config_builds_the_same_torch_model_and_round_trips(name, task):
    family, hc = CONFIGS[name]
    cfg = family.Config.from_hf(hc.to_dict())
    d = cfg.to_hf(task)
    assert family.Config.from_hf(d) == cfg
    loaded = transformers.AutoConfig.for_model(**d)
    tm = getattr(transformers, d["architectures"][0])(loaded)
    assert family.Config.from_hf(loaded.to_dict()) == cfg  # what transformers makes of it reads back the same
    if task == "reward":
        assert loaded.num_labels == 1 and loaded.pad_token_id is not None
    keys = {k for spec in family.weight_specs(cfg, task) for k in spec.hf_keys}
    assert keys == set(tm.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    ref = _torch_model(hc, task).state_dict()
    for k, v in tm.state_dict().items():
        assert v.shape == ref[k].shape, k


@pytest.mark.parametrize("name", ["qwen3_bias_window", "gemma2_untied_bias", "gemma3"])
def test_export_loads_in_transformers_and_from_pretrained_gives_the_same_outputs(name, tmp_path):
    family, cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch(3)
    ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0])
    out = export.export_hf(model, family, cfg, "causal_lm", tmp_path / "export")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = back(**_torch_kwargs(ids, mask, positions)).logits.numpy()
        ref = tm(**_torch_kwargs(ids, mask, positions)).logits.numpy()
    _assert_rows_close(theirs, ref, mask, tol=1e-5)  # the export is the same torch model
    _assert_rows_close(ours, ref, mask)
    loaded = hub.from_pretrained(str(out), "causal_lm")
    assert loaded.config == cfg and loaded.initialised == []
    again = np.asarray(loaded.model(jnp.asarray(ids), jnp.asarray(mask))[0])
    np.testing.assert_allclose(again[mask > 0], ours[mask > 0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", SOFTCAPPED)
def test_sequence_and_token_logprobs_are_of_the_soft_capped_logits(name):
    """sequence_logprobs / token_logprobs against torch's log_softmax of its (soft-capped) logits, and sampling's
    `logits` agree with them; the uncapped logits would give other numbers; lm_head_kernel() is refused."""
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
        torch_logits = tm(**_torch_kwargs(ids, mask, positions)).logits.double()
    logp_ref = torch.log_softmax(torch_logits, -1).numpy()
    want = [sum(logp_ref[b, t - 1, ids[b, t]] for t in np.nonzero(scored[b])[0]) for b in range(len(rows))]
    np.testing.assert_array_equal(np.asarray(tokens_B), [3, 3, 3])
    np.testing.assert_allclose(np.asarray(logp_B), want, atol=3 * TOL, rtol=0)
    cap = cfg.final_logit_softcapping
    assert np.abs(torch_logits.numpy()).max() < cap  # torch's logits are capped ...
    hidden, _ = model.backbone(jnp.asarray(ids), jnp.asarray(mask))
    raw = np.asarray(hidden @ model.backbone.embed.embedding[...].T)
    assert np.abs(raw).max() > 0.8 * cap  # ... and the cap bends ours
    # the per-token path (PPO's) with a temperature: log softmax(capped / temperature)
    per_token = model.token_logprobs(hidden[:, :-1], jnp.asarray(ids[:, 1:]), 0.7, chunk_size=4)
    capped = np.asarray(model.logits(hidden))
    assert np.abs(capped).max() < cap
    expect = np.asarray(jax.nn.log_softmax(jnp.asarray(capped[:, :-1]) / 0.7, axis=-1))
    expect = np.take_along_axis(expect, ids[:, 1:, None], axis=-1)[..., 0]
    np.testing.assert_allclose(np.asarray(per_token), expect, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="soft-caps its logits"):
        model.lm_head_kernel()


@pytest.mark.parametrize("block_rows", [1, 4])
def test_soft_capped_blocked_attention_matches_reference_with_gradients(block_rows):
    """The default path's hand-written backward carries the soft-cap's derivative; grouped-query heads, holes,
    a row with no visible key. Fused kernels refuse the soft-cap in one line."""
    B, T, H, K, D = 4, 6, 4, 2, 8
    rng = np.random.default_rng(0)
    q, k, v = (jnp.asarray(3.0 * rng.standard_normal(s), jnp.float32) for s in ((B, T, H, D), (B, T, K, D),
                                                                                (B, T, K, D)))
    mask = np.broadcast_to(np.tril(np.ones((T, T), bool)), (B, T, T)).copy()
    mask[1, :, :2] = False  # left padding: rows 0-1 of example 1 see nothing
    mask[2, :, 3] = False
    mask = jnp.asarray(mask)
    weights = jnp.asarray(rng.standard_normal((B, T, H, D)), jnp.float32)

    def loss(fn, *args):
        return jnp.sum(fn(*args) * weights)

    blocked = lambda q, k, v: attention.blocked_attention(q, k, v, mask, block_rows=block_rows, softcap=2.0)  # noqa: E731
    ref = lambda q, k, v: attention.reference_attention(q, k, v, mask, softcap=2.0)  # noqa: E731
    uncapped = attention.reference_attention(q, k, v, mask)
    real = np.asarray(mask.any(-1))
    assert np.abs(np.asarray(ref(q, k, v) - uncapped))[real].max() > 1e-2
    np.testing.assert_allclose(np.asarray(blocked(q, k, v))[real], np.asarray(ref(q, k, v))[real], atol=1e-5)
    g_blocked = jax.grad(lambda *a: loss(blocked, *a), argnums=(0, 1, 2))(q, k, v)
    g_ref = jax.grad(lambda *a: loss(ref, *a), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(g_blocked, g_ref):
        a, b = np.asarray(a), np.asarray(b)
        if a.shape[1] == T and a.shape[2] == H:  # dq: compare real query rows
            a, b = a[real], b[real]
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    xla = attention.dot_product_attention(q, k, v, mask, implementation="xla", softcap=2.0)
    np.testing.assert_allclose(np.asarray(xla)[real], np.asarray(ref(q, k, v))[real], atol=1e-5)
    for impl in ("cudnn", "splash"):
        with pytest.raises(ValueError, match="soft-capping") as e:
            attention.dot_product_attention(q, k, v, mask, implementation=impl, softcap=2.0,
                                            key_mask_BxS=jnp.ones((B, T), bool), causal=True, interpret=True)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["gemma2", "qwen3_bias_window"])
def test_gradients_match_torch(name):
    """d(sum of weighted real-token logits) against torch's autograd: the soft-caps' and Gemma's norms' backward
    (the attention's is hand-written), through the scanned layers."""
    family, cfg, model, tm = _build(name, "causal_lm")
    ids, mask, positions = _batch(5)
    w_BxTxV = np.random.RandomState(6).standard_normal(ids.shape + (V,)).astype(np.float32) * mask[..., None]

    def loss(m):
        return jnp.sum(m(jnp.asarray(ids), jnp.asarray(mask))[0] * w_BxTxV)

    grads = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.grad(loss)(model))}
    (tm(**_torch_kwargs(ids, mask, positions)).logits * torch.tensor(w_BxTxV)).sum().backward()
    base = tm.model
    pairs = [(("backbone", "embed", "embedding"), base.embed_tokens.weight.grad.numpy())]
    for i, layer in enumerate(base.layers):
        pairs += [(("backbone", "layers", "attn", "q_proj", "kernel"), layer.self_attn.q_proj.weight.grad.numpy().T, i),
                  (("backbone", "layers", "attn", "k_proj", "kernel"), layer.self_attn.k_proj.weight.grad.numpy().T, i),
                  (("backbone", "layers", "attn_norm", "scale"), layer.input_layernorm.weight.grad.numpy(), i)]
    pairs.append((("backbone", "norm", "scale"), base.norm.weight.grad.numpy()))
    for path, ref, *layer in pairs:
        ours = grads[path][layer[0]] if layer else grads[path]
        scale = np.abs(ref).max()
        assert scale > 1e-3, path
        np.testing.assert_allclose(ours, ref, atol=1e-4 * scale, rtol=0, err_msg=str((path, layer)))
