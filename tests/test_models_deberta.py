"""DeBERTa-v2/v3 against the PyTorch models in `transformers`.

Two tiny random configs are made here: v3-style (no absolute positions, shared attention keys, log-bucketed
relative positions with position_buckets 6 and max_relative_positions 7 over 12 tokens, so exact, log and
clipped buckets all occur, LayerNormed relative table, no token types) and v2-style (absolute positions,
separate pos_key/pos_query projections, unbucketed offsets clipped at 5, token types, a narrower embedding
projected up, c2p only, the old "c2p" string spelling). Every torch parameter is re-drawn (LayerNorm scales
around 1, all else at 0.2), copied in through `deberta.weight_specs`, and compared in float32 eval mode.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxrlhf.models import deberta, registry
from tests.helpers.weights import copy_torch_model

V = 101
PAD = 0
TOL = 1e-4
T = 12


def tiny_deberta_config(**overrides) -> transformers.DebertaV2Config:
    """v3-style: 2 layers, hidden 32 in 4 heads, relative attention with small buckets; dropout off."""
    kw = dict(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
              max_position_embeddings=64, type_vocab_size=0, relative_attention=True, position_buckets=6,
              max_relative_positions=7, pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm",
              position_biased_input=False, layer_norm_eps=1e-7, pad_token_id=PAD, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, pooler_dropout=0.0, cls_dropout=0.0)
    return transformers.DebertaV2Config(**{**kw, **overrides})


CONFIGS = {
    "v3": tiny_deberta_config(),
    "v2": tiny_deberta_config(position_biased_input=True, share_att_key=False, type_vocab_size=2,
                              norm_rel_ebd="none", position_buckets=-1, max_relative_positions=5,
                              pos_att_type="c2p", embedding_size=24),
}
_AUTO = {"backbone": transformers.AutoModel, "reward": transformers.AutoModelForSequenceClassification,
         "value": transformers.AutoModelForSequenceClassification}


def _torch_model(hc, task: str, seed: int = 0):
    hc = hc.__class__.from_dict(hc.to_dict())
    if task in ("reward", "value"):
        hc.num_labels = 1
    torch.manual_seed(seed)
    tm = _AUTO[task].from_config(hc, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if name.endswith("LayerNorm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return tm


def load_torch_weights(model: nnx.Module, cfg, task: str, tm) -> None:
    copy_torch_model(model, deberta.weight_specs(cfg, task), tm)


def _build(name: str, task: str, seed: int = 0, **kw):
    hc = CONFIGS[name]
    cfg = deberta.Config.from_hf(hc.to_dict())
    tm = _torch_model(hc, task, seed)
    model = registry.build_model(deberta, cfg, task, rngs=nnx.Rngs(1), **kw)
    load_torch_weights(model, cfg, task, tm)
    return cfg, model, tm


def _batch(seed: int = 0):
    """Rows: right padding, left padding, holes in the middle, no padding (pads are PAD ids)."""
    mask = np.ones((4, T), np.int32)
    mask[0, 7:] = 0
    mask[1, :4] = 0
    mask[2, [2, 5, 6, 9]] = 0
    ids = np.where(mask > 0, np.random.RandomState(seed).randint(3, V, mask.shape), PAD)
    return ids, mask


def _assert_close_on_real(ours, ref, mask):
    ours = np.asarray(ours)
    assert np.isfinite(ours).all(), "padding positions must not produce NaN/inf"
    real = mask > 0
    assert np.abs(ref[real]).max() > 0.5  # not a comparison of near-zero numbers
    for row in range(mask.shape[0]):
        err = np.abs(ours[row][real[row]] - ref[row][real[row]]).max()
        assert err < TOL, f"row {row}: max abs error {err}"


def test_log_buckets_match_transformers_for_the_tiny_and_the_real_v3_settings():
    from transformers.models.deberta_v2.modeling_deberta_v2 import make_log_bucket_position

    for buckets, max_rel, n in ((6, 7, 40), (256, 512, 3000), (4, 64, 200)):
        rel = np.arange(-n, n + 1)
        ref = make_log_bucket_position(torch.tensor(rel), buckets, max_rel).long().numpy()
        np.testing.assert_array_equal(deberta.log_bucket_position(rel, buckets, max_rel), ref)
    cfg = deberta.Config.from_hf(CONFIGS["v3"].to_dict())
    assert set(np.unique(deberta.relative_positions(cfg, T))) > {-7, -4, 0, 4, 7}  # exact, log and clipped


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_last_hidden_states_match_torch_with_right_left_and_holey_padding(name):
    cfg, model, tm = _build(name, "backbone")
    ids, mask = _batch()
    types = np.random.RandomState(1).randint(0, 2, ids.shape) if cfg.type_vocab_size else np.zeros_like(ids)
    hidden, cache = model(jnp.asarray(ids), jnp.asarray(mask), token_type_ids_BxT=jnp.asarray(types))
    assert cache is None
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                 token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    _assert_close_on_real(hidden, ref, mask)
    # the relative terms matter: without them the output is far off
    with torch.no_grad():
        for layer in tm.encoder.layer:
            layer.attention.self.relative_attention = False
        plain = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert np.abs(plain - ref)[mask > 0].max() > 100 * TOL


def test_scanned_and_unscanned_layers_agree():
    cfg, scanned, _ = _build("v3", "backbone")
    unscanned = registry.build_model(deberta, cfg, "backbone", rngs=nnx.Rngs(5), scan_layers=False)
    nnx.update(unscanned, nnx.state(scanned))
    ids, mask = (jnp.asarray(a) for a in _batch(6))
    np.testing.assert_allclose(np.asarray(unscanned(ids, mask)[0]), np.asarray(scanned(ids, mask)[0]), atol=1e-5)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_reward_matches_torch_sequence_classification_with_right_padding(name):
    cfg, model, tm = _build(name, "reward")
    ids, mask = _batch(2)
    right = [0, 3]  # rows whose first token is real: HF's pooler reads index 0
    reward = model(jnp.asarray(ids), jnp.asarray(mask))
    assert reward.dtype == jnp.float32 and reward.shape == (ids.shape[0],)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids[right]), attention_mask=torch.tensor(mask[right])).logits[:, 0].numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(reward)[right], ref, atol=TOL, rtol=0)
    if not cfg.position_biased_input:  # v3: only slot offsets matter, so a left-padded copy scores the same
        left = model(jnp.asarray(np.roll(ids[:1], 5, axis=1)), jnp.asarray(np.roll(mask[:1], 5, axis=1)))
        np.testing.assert_allclose(np.asarray(left), ref[:1], atol=TOL, rtol=0)


def test_value_head_is_pooler_and_classifier_on_every_hidden_state():
    cfg, model, tm = _build("v3", "value", seed=3)
    ids, mask = _batch(3)
    values = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert values.shape == ids.shape and values.dtype == np.float32
    with torch.no_grad():
        h = tm.deberta(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        by_hand = tm.classifier(torch.nn.functional.gelu(tm.pooler.dense(h)))[..., 0].numpy()
    _assert_close_on_real(values, by_hand, mask)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("task", ["reward", "backbone"])
def test_to_hf_config_builds_the_torch_model_whose_tensors_are_the_spec_table(name, task):
    cfg = deberta.Config.from_hf(CONFIGS[name].to_dict())
    d = cfg.to_hf(task)
    assert deberta.Config.from_hf(d) == cfg
    tm = getattr(transformers, d["architectures"][0])(transformers.AutoConfig.for_model(**d))
    keys = {k for spec in deberta.weight_specs(cfg, task) for k in spec.hf_keys}
    assert keys == {k for k in tm.state_dict() if not k.endswith("position_ids")}


@pytest.mark.parametrize("name,task", [("v3", "reward"), ("v2", "backbone")])
def test_export_round_trip_through_transformers_and_our_importer(tmp_path, name, task):
    from jaxrlhf.models.export import export_hf
    from jaxrlhf.models.hub import from_pretrained

    cfg, model, _ = _build(name, task, seed=4)
    ids, mask = _batch(4)
    ids, mask = ids[[0, 3]], mask[[0, 3]]
    if task == "reward":
        ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    else:
        ours = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))[0])
    out = export_hf(model, deberta, cfg, task, tmp_path / "export")
    tm = _AUTO[task].from_pretrained(str(out), attn_implementation="eager").eval()
    assert type(tm).__name__ == cfg.to_hf(task)["architectures"][0]
    with torch.no_grad():
        res = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if task == "reward":
        np.testing.assert_allclose(ours, res.logits[:, 0].numpy(), atol=TOL, rtol=0)
    else:
        _assert_close_on_real(ours, res.last_hidden_state.numpy(), mask)
    loaded = from_pretrained(str(out), task)
    assert loaded.family is deberta and loaded.config == cfg and loaded.initialised == []
    again = loaded.model(jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(np.asarray(again if task == "reward" else again[0]), ours, atol=1e-6, rtol=0)


def test_unsupported_settings_are_refused_with_the_field_named():
    d = CONFIGS["v3"].to_dict()
    for field, bad in (("conv_kernel_size", 3), ("pooler_hidden_size", 16), ("pooler_hidden_act", "tanh"),
                       ("pos_att_type", ["p2p"]), ("model_type", "deberta"), ("norm_rel_ebd", "other"),
                       ("attention_head_size", 4)):
        with pytest.raises(ValueError, match=field):
            deberta.Config.from_hf({**d, field: bad})
    assert deberta.Config.from_hf({**d, "pos_att_type": "P2C|c2p"}).pos_att_type == ("p2c", "c2p")  # old spelling
    with pytest.raises(ValueError, match="model.attention"):
        registry.build_model(deberta, deberta.Config.from_hf(d), "reward", rngs=nnx.Rngs(0), attention="splash")
    with pytest.raises(registry.UnknownArchitectureError, match="deberta"):
        registry.family_for("deberta")  # v1 is not registered
    cfg = deberta.Config.from_hf(d)
    with pytest.raises(registry.UnknownArchitectureError, match="encoder"):
        registry.build_model(deberta, cfg, "causal_lm", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="encoder"):
        cfg.to_hf("causal_lm")
    with pytest.raises(ValueError, match="no KV cache"):
        deberta.Backbone(cfg, rngs=nnx.Rngs(0))(jnp.ones((1, 3), jnp.int32), jnp.ones((1, 3), jnp.int32), cache=())
