"""BERT-family encoder (BERT, RoBERTa, the real MiniLM) against the PyTorch models in `transformers`.

Tiny random configs are made here; every torch parameter is re-drawn (LayerNorm scales around 1, all
else at 0.2) so a mis-mapped tensor shows, copied into our models through `bert.weight_specs`, and
compared in float32 eval mode on real-token positions. Masked tokens carry the pad id, so RoBERTa's HF
position ids (computed from input_ids) are its own, independent of ours (computed from the mask).
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxrlhf.models import bert, registry
from jaxrlhf.models.layers import Linear, LoRAConfig, keep_mask
from tests.helpers.models import tiny_bert_config, tiny_llama_jax_config
from tests.helpers.weights import copy_by_specs

V = 101
TOL = 1e-4


def _hf_config(kind: str, **kw):
    return tiny_bert_config(kind, **{**dict(vocab_size=V, max_position_embeddings=40, hidden_dropout_prob=0.0,
                                            attention_probs_dropout_prob=0.0), **kw})


KINDS = ("bert", "roberta")


def _torch_model(kind: str, task: str, seed: int = 0, **kw):
    hc = _hf_config(kind, **kw)
    if task in ("reward", "value"):
        hc.num_labels = 1
        auto = transformers.AutoModelForSequenceClassification
    else:
        auto = transformers.AutoModel
    torch.manual_seed(seed)
    tm = auto.from_config(hc, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in tm.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.copy_(0.2 * torch.randn_like(p))
    return hc, tm


def load_state_dict(model: nnx.Module, cfg: bert.Config, task: str, sd: dict[str, np.ndarray],
                    ignore: tuple[str, ...] = ()) -> None:
    """Copies HF tensors into `model` through `bert.weight_specs`, checking the table both ways."""
    copy_by_specs(model, bert.weight_specs(cfg, task), sd,
                  unread=lambda k: k.endswith("position_ids") or (bool(ignore) and k.startswith(ignore)))


def _sd(tm) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()}


def _build(kind: str, task: str, seed: int = 0, **kw):
    hc, tm = _torch_model(kind, task, seed)
    cfg = bert.Config.from_hf(hc.to_dict())
    model = registry.build_model(bert, cfg, task, rngs=nnx.Rngs(1), **kw)
    load_state_dict(model, cfg, task, _sd(tm), ignore=("pooler.",) if task == "backbone" else ())
    return hc, cfg, model, tm


def _batch(pad: int, seed: int = 0):
    """Rows: right padding, left padding, holes in the middle, no padding; masked tokens are `pad`."""
    mask = np.array([[1, 1, 1, 1, 1, 0, 0, 0],
                     [0, 0, 0, 1, 1, 1, 1, 1],
                     [1, 1, 0, 1, 0, 0, 1, 1],
                     [1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    ids = np.random.RandomState(seed).randint(3, V, mask.shape)
    return np.where(mask > 0, ids, pad), mask


def _assert_close_on_real(ours, ref, mask):
    ours = np.asarray(ours)
    assert np.isfinite(ours).all(), "padding positions must not produce NaN/inf"
    real = mask > 0
    assert np.abs(ref[real]).max() > 0.5  # not a comparison of near-zero numbers
    for row in range(mask.shape[0]):
        err = np.abs(ours[row][real[row]] - ref[row][real[row]]).max()
        assert err < TOL, f"row {row}: max abs error {err}"


@pytest.mark.parametrize("kind", KINDS)
def test_last_hidden_states_match_torch_with_right_left_and_holey_padding_and_token_types(kind):
    hc, cfg, model, tm = _build(kind, "backbone")
    ids, mask = _batch(hc.pad_token_id)
    hidden, cache = model(jnp.asarray(ids), jnp.asarray(mask))
    assert cache is None
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    _assert_close_on_real(hidden, ref, mask)

    types = np.random.RandomState(1).randint(0, 2, ids.shape)
    hidden_t, _ = model(jnp.asarray(ids), jnp.asarray(mask), token_type_ids_BxT=jnp.asarray(types))
    with torch.no_grad():
        ref_t = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types)).last_hidden_state.numpy()
    assert np.abs(ref_t - ref)[mask > 0].max() > 0.1  # token types matter in this check
    _assert_close_on_real(hidden_t, ref_t, mask)


def test_position_ids_follow_hf_rules():
    mask = jnp.asarray([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1]])
    b = bert.Config(model_type="bert", pad_token_id=0)
    r = bert.Config(model_type="roberta", pad_token_id=1)
    np.testing.assert_array_equal(bert.position_ids(b, mask), np.tile(np.arange(5), (3, 1)))
    ids = torch.tensor(np.where(np.asarray(mask) > 0, 7, 1))  # HF derives RoBERTa positions from pad ids
    ref = transformers.models.roberta.modeling_roberta.RobertaEmbeddings.create_position_ids_from_input_ids(ids, 1)
    np.testing.assert_array_equal(bert.position_ids(r, mask), ref.numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_reward_matches_torch_sequence_classification(kind):
    hc, cfg, model, tm = _build(kind, "reward")
    ids, mask = _batch(hc.pad_token_id, seed=2)
    right = [0, 3]  # rows whose first token is real: HF reads index 0
    reward = model(jnp.asarray(ids), jnp.asarray(mask))
    assert reward.dtype == jnp.float32 and reward.shape == (ids.shape[0],)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids[right]), attention_mask=torch.tensor(mask[right])).logits[:, 0].numpy()
    assert np.abs(ref).max() > 0.1
    np.testing.assert_allclose(np.asarray(reward)[right], ref, atol=TOL, rtol=0)
    if kind == "roberta":  # positions come from the mask: the left-padded copy of row 0 scores the same
        left_ids = np.roll(ids[:1], 3, axis=1)
        left_mask = np.roll(mask[:1], 3, axis=1)
        left = model(jnp.asarray(left_ids), jnp.asarray(left_mask))
        np.testing.assert_allclose(np.asarray(left), ref[:1], atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_value_head_is_pooler_and_classifier_on_every_hidden_state(kind):
    hc, cfg, model, tm = _build(kind, "value", seed=3)
    ids, mask = _batch(hc.pad_token_id, seed=3)
    values = np.asarray(model(jnp.asarray(ids), jnp.asarray(mask)))
    assert values.shape == ids.shape and values.dtype == np.float32
    base = tm.bert if kind == "bert" else tm.roberta
    with torch.no_grad():
        h = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).last_hidden_state
        if kind == "bert":
            by_hand = tm.classifier(tm.bert.pooler.activation(tm.bert.pooler.dense(h)))[..., 0].numpy()
        else:
            by_hand = tm.classifier.out_proj(torch.tanh(tm.classifier.dense(h)))[..., 0].numpy()
    _assert_close_on_real(values, by_hand, mask)


@pytest.mark.parametrize("kind", KINDS)
def test_export_table_names_exactly_the_torch_checkpoint(kind):
    """weight_specs written back (to_hf) is a strict state_dict of the HF class `to_hf(task)` names."""
    for task in ("reward", "backbone"):
        hc, cfg, model, _ = _build(kind, task, seed=4)
        hf = cfg.to_hf(task)
        tm = transformers.AutoModelForSequenceClassification.from_config(
            transformers.AutoConfig.for_model(**hf)) if task == "reward" else transformers.AutoModel.from_config(
            transformers.AutoConfig.for_model(**hf), add_pooling_layer=False)
        assert type(tm).__name__ == hf["architectures"][0]
        flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        sd = {}
        for spec in bert.weight_specs(cfg, task):
            for key, part in zip(spec.hf_keys, list(flat[spec.path]) if spec.stacked else [flat[spec.path]]):
                sd[key] = torch.tensor(spec.to_hf(part))
        tm.load_state_dict(sd, strict=True)
        assert bert.Config.from_hf(hf) == cfg
        if task == "reward":  # the reloaded torch model scores as ours does
            ids, mask = _batch(hc.pad_token_id, seed=4)
            ids, mask = ids[[0, 3]], mask[[0, 3]]
            with torch.no_grad():
                ref = tm.eval()(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
            np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids), jnp.asarray(mask))), ref, atol=TOL)


@pytest.mark.slow
def test_scanned_unscanned_and_remat_give_same_outputs_and_gradients():
    hc, cfg, scanned, _ = _build("bert", "reward")
    ids, mask = _batch(hc.pad_token_id, seed=5)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)
    w_B = jnp.asarray([1.0, -2.0, 0.5, 1.5])

    def loss(model):
        return jnp.sum(model(ids, mask) * w_B)

    results = []
    for scan_layers, remat in ((True, False), (False, False), (True, True), (False, True)):
        model = registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(7), scan_layers=scan_layers, remat=remat)
        nnx.update(model, nnx.state(scanned))
        value, grads = nnx.value_and_grad(loss)(model)
        results.append((value, {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}))
    ref_value, ref_grads = results[0]
    assert all(np.abs(g).sum() > 0 for p, g in ref_grads.items()), "every parameter gets a gradient"
    for value, grads in results[1:]:
        np.testing.assert_allclose(value, ref_value, rtol=1e-5)
        assert grads.keys() == ref_grads.keys()
        for p in ref_grads:
            np.testing.assert_allclose(grads[p], ref_grads[p], atol=1e-4, rtol=1e-4, err_msg=str(p))


@pytest.mark.slow
def test_lora_adapts_named_layers_starts_at_base_and_threads_dropout_keys_through_scan():
    hc, cfg, base, _ = _build("roberta", "reward")
    ids, mask = (jnp.asarray(a) for a in _batch(hc.pad_token_id, seed=6))
    ref = np.asarray(base(ids, mask))

    # the train config's default targets adapt q/k/v only; each name reaches its own Linear
    default = LoRAConfig(rank=4, targets="q_proj|k_proj|v_proj|o_proj|query|key|value")
    m = registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(2), lora=default)
    adapted = {"/".join(map(str, p)) for p, mod in nnx.iter_modules(m)
               if isinstance(mod, Linear) and mod.lora_a is not None}
    assert adapted == {"backbone/layers/attn/query", "backbone/layers/attn/key", "backbone/layers/attn/value"}
    with pytest.raises(ValueError, match="match no"):
        registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(2), lora=LoRAConfig(targets="q_proj|gate_proj"))

    lora = LoRAConfig(rank=4, alpha=8.0, dropout=0.5, targets="|".join(bert.LORA_LAYER_NAMES))
    run = nnx.jit(lambda m, rng: m(ids, mask, dropout_rng=rng))
    outs = {}
    for scan_layers in (True, False):
        m = registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(2), lora=lora, scan_layers=scan_layers)
        nnx.update(m, nnx.state(base, nnx.Param))  # base weights; A random, B zero
        n_adapted = sum(isinstance(mod, Linear) and mod.lora_a is not None for _, mod in nnx.iter_modules(m))
        assert n_adapted == 6
        np.testing.assert_allclose(np.asarray(run(m, jax.random.key(0))), ref, atol=1e-6, rtol=0)
        for _, mod in nnx.iter_modules(m):  # a non-zero B changes the output
            if isinstance(mod, Linear) and mod.lora_b is not None:
                mod.lora_b[...] = 0.3 * jax.random.normal(jax.random.key(1), mod.lora_b[...].shape)
        outs[scan_layers] = [np.asarray(run(m, jax.random.key(k))) for k in (0, 0, 1)]
        outs[scan_layers].append(np.asarray(run(m, None)))
    for scan_layers in (True, False):
        k0, k0_again, k1, no_dropout = outs[scan_layers]
        assert np.abs(no_dropout - ref).max() > 1e-3
        np.testing.assert_array_equal(k0, k0_again)
        assert np.abs(k0 - k1).max() > 1e-3 and np.abs(k0 - no_dropout).max() > 1e-3
    # the same key gives the same per-layer dropout masks whether the layers are scanned or unrolled
    for a, b in zip(outs[True], outs[False]):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)


def _our_dropout_keep_masks(rng, cfg: bert.Config, rate: float, attention: bool, B: int, T: int) -> list[np.ndarray]:
    """Our keep masks in PyTorch's call order (embeddings; per layer: attention probabilities, attention
    output, MLP output), drawn from the key scheme of `bert.Backbone` (per-layer keys, the last for the
    embeddings; in a layer: attention, MLP; attention's 5th and 6th subkeys, MLP's 3rd)."""
    E, H = cfg.hidden_size, cfg.num_attention_heads
    keys = jax.random.split(rng, cfg.num_hidden_layers + 1)
    draw = lambda k, shape: np.asarray(keep_mask(k, rate, shape))
    masks = [draw(keys[-1], (B, T, E))]
    for layer_key in keys[:-1]:
        attn_key, mlp_key = jax.random.split(layer_key, 2)
        attn = jax.random.split(attn_key, 6)
        if attention:
            masks.append(draw(attn[4], (B, H, 1, T, T)).reshape(B, H, T, T))
        masks += [draw(attn[5], (B, T, E)), draw(jax.random.split(mlp_key, 3)[2], (B, T, E))]
    return masks


@pytest.mark.parametrize("scan_layers,attention", [(True, True), (False, False)])
def test_hidden_and_attention_dropout_match_torch_train_mode_given_the_same_masks(monkeypatch, scan_layers, attention):
    """BERT's dropout sites and inverted scaling, checked against `transformers` in train mode: every
    torch dropout call (embeddings, attention probabilities, attention output, MLP output) is replaced by
    the multiplication with our own keep mask for that site. Hidden dropout alone leaves the attention
    probabilities whole."""
    rate = 0.3
    attention_rate = rate if attention else 0.0
    hc, cfg, ours, ref_tm = _build("bert", "reward", dropout=rate, attention_dropout=attention_rate,
                                   scan_layers=scan_layers)
    hc_train = _hf_config("bert", hidden_dropout_prob=rate, attention_probs_dropout_prob=attention_rate,
                          classifier_dropout=0.0)
    hc_train.num_labels = 1
    tm = transformers.AutoModelForSequenceClassification.from_config(hc_train, attn_implementation="eager")
    tm.load_state_dict(ref_tm.state_dict())
    tm.train()
    ids, mask = _batch(hc.pad_token_id, seed=3)
    B, T = ids.shape
    rng = jax.random.key(7)
    pending = [torch.tensor(m) for m in _our_dropout_keep_masks(rng, cfg, rate, attention, B, T)]

    def dropout_with_our_masks(x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0:  # the classifier's (set to 0: we have none), attention's when off
            return x
        assert p == rate
        keep = pending.pop(0)
        assert keep.shape == x.shape
        return x * keep / (1.0 - p)

    monkeypatch.setattr(torch.nn.functional, "dropout", dropout_with_our_masks)
    with torch.no_grad():
        ref = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    assert not pending, f"{len(pending)} masks unused: torch applies dropout at fewer sites than we do"
    first_real = mask[:, 0] > 0  # rows HF pools where we do (index 0); a left-padded row it reads at a pad
    assert first_real.sum() == 3
    got = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask), dropout_rng=rng))
    np.testing.assert_allclose(got[first_real], ref[first_real], atol=TOL, rtol=0)
    # the masks matter: without the key (evaluation) the output is the dropout-free one
    with torch.no_grad():
        tm.eval()
        no_dropout = tm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits[:, 0].numpy()
    eval_out = np.asarray(ours(jnp.asarray(ids), jnp.asarray(mask)))
    np.testing.assert_allclose(eval_out[first_real], no_dropout[first_real], atol=TOL, rtol=0)
    assert np.abs(got - eval_out)[first_real].min() > 10 * TOL


def test_dropout_rate_is_checked_and_refused_where_it_is_not_implemented():
    from jaxrlhf.models import llama

    hc, cfg, _, _ = _build("bert", "reward")
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(0), dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(0), attention_dropout=-0.1)
    tiny_llama = tiny_llama_jax_config(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    with pytest.raises(ValueError, match="BERT family only"):
        registry.build_model(llama, tiny_llama, "reward", rngs=nnx.Rngs(0), dropout=0.1)
    with pytest.raises(ValueError, match="BERT family only"):
        registry.build_model(llama, tiny_llama, "reward", rngs=nnx.Rngs(0), attention_dropout=0.1)
    registry.build_model(llama, tiny_llama, "reward", rngs=nnx.Rngs(0), dropout=0.0)


# ---- the real MiniLM (sentence-transformers/all-MiniLM-L6-v2; the `minilm_dir` fixture is in conftest) ----

SENTENCES = ["The cat sat on the mat.",
             "A reward model scores how much people prefer one answer to another.",
             "Paris is the capital of France, and it is known for the Eiffel Tower and its museums.",
             "Hi!"]


@pytest.mark.slow
@pytest.mark.real_model
def test_minilm_last_hidden_states_match_transformers(minilm_dir):
    from safetensors.numpy import load_file

    from jaxrlhf.models import hub

    hf = json.load(open(os.path.join(minilm_dir, "config.json")))
    cfg = bert.Config.from_hf(hf)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("bert", 6, 384)
    sd = load_file(os.path.join(minilm_dir, "model.safetensors"))
    # a bare BertModel checkpoint: no "bert." prefix, and it carries the pooler
    assert "embeddings.word_embeddings.weight" in sd and not any(k.startswith("bert.") for k in sd)
    assert {"pooler.dense.weight", "pooler.dense.bias"} <= set(sd)

    model = registry.build_model(bert, cfg, "backbone", rngs=nnx.Rngs(0))
    load_state_dict(model, cfg, "backbone", sd, ignore=("pooler.",))
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    assert enc["attention_mask"].min() == 0  # the batch really is padded
    hidden, _ = model(jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                      token_type_ids_BxT=jnp.asarray(enc["token_type_ids"]))
    tm = transformers.AutoModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        out = tm(**{k: torch.tensor(v) for k, v in enc.items()})
    _assert_close_on_real(hidden, out.last_hidden_state.numpy(), enc["attention_mask"])

    # task "reward" through the importer: the bare checkpoint's (unprefixed) pooler becomes the head's
    # dense layer, so tanh(dense(h[CLS])) is HF's pooler_output; only the projection starts fresh
    keys = {s.path: s.hf_keys for s in bert.weight_specs(cfg, "reward")}
    assert keys[("head", "dense", "kernel")] == ("bert.pooler.dense.weight",)
    loaded = hub.from_pretrained(minilm_dir, "reward")
    assert sorted(loaded.initialised) == ["head/out/bias", "head/out/kernel"], loaded.initialised
    pooled = jnp.tanh(loaded.model.head.dense(hidden[:, 0]))
    np.testing.assert_allclose(np.asarray(pooled), out.pooler_output.numpy(), atol=TOL, rtol=0)


@pytest.mark.real_model
def test_model_block_dropout_keys_reach_the_minilm_encoder(minilm_dir):
    from jaxrlhf.configs.base import model_block
    from jaxrlhf.training.run_setup import load_block

    block = model_block()
    block.dropout, block.attention_dropout = 0.1, 0.2
    model = load_block(block, minilm_dir, "reward", mesh=None, seed=0).model
    layer = model.backbone.layers
    assert (model.backbone.dropout_rate, layer.attn.dropout_rate, layer.mlp.dropout_rate) == (0.1, 0.1, 0.1)
    assert layer.attn.attention_dropout_rate == 0.2
    # a run_config.json written before the keys existed loads with dropout off
    del block["dropout"], block["attention_dropout"]
    old = load_block(block, minilm_dir, "reward", mesh=None, seed=0).model
    assert (old.backbone.dropout_rate, old.backbone.layers.attn.attention_dropout_rate) == (0.0, 0.0)


@pytest.mark.parametrize("layers,scan_layers", [(2, True), (2, False), (1, True)])
def test_reward_runs_the_last_layer_for_the_pooled_token_only_with_the_same_value_and_gradients(layers,
                                                                                                scan_layers):
    """RewardModel reads the first real token; `hidden_at` runs the last layer for it alone. Its reward and
    every gradient equal the full stack's hidden state gathered at that token (left padding and holes too)."""
    from jaxrlhf.models.heads import first_token_index, gather_positions

    hc, tm = _torch_model("roberta", "reward", num_hidden_layers=layers)
    cfg = bert.Config.from_hf(hc.to_dict())
    model = registry.build_model(bert, cfg, "reward", rngs=nnx.Rngs(1), scan_layers=scan_layers)
    load_state_dict(model, cfg, "reward", _sd(tm))
    ids, mask = (jnp.asarray(a) for a in _batch(hc.pad_token_id, seed=8))
    w_B = jnp.asarray([1.0, -2.0, 0.5, 1.5])

    def pooled_loss(m):
        return jnp.sum(m(ids, mask) * w_B)

    def full_loss(m):
        hidden, _ = m.backbone(ids, mask)
        return jnp.sum(m.head(gather_positions(hidden, first_token_index(mask))) * w_B)

    (v1, g1), (v2, g2) = (nnx.value_and_grad(f)(model) for f in (pooled_loss, full_loss))
    assert abs(float(v2)) > 0.05  # not a comparison of near-zero numbers
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    g1, g2 = ({p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(g)} for g in (g1, g2))
    assert g1.keys() == g2.keys()
    for p in g2:
        assert np.abs(g2[p]).sum() > 0, p
        np.testing.assert_allclose(g1[p], g2[p], atol=1e-5, rtol=1e-5, err_msg=str(p))
    with torch.no_grad():  # and the first row (right-padded, so HF reads the same token) matches PyTorch
        ref = tm(input_ids=torch.tensor(np.asarray(ids[:1])), attention_mask=torch.tensor(np.asarray(mask[:1])))
    np.testing.assert_allclose(np.asarray(model(ids, mask))[:1], ref.logits[:, 0].numpy(), atol=TOL, rtol=0)
