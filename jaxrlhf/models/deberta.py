"""DeBERTa-v2/v3 encoder (`deberta-v2`): disentangled attention over relative positions.

Post-LayerNorm blocks as BERT's, but each layer's attention logits are content-to-content plus, from one
table of relative-position embeddings shared by all layers (LayerNormed when `norm_rel_ebd` says so):

    c2p[i, j] = q_i . Kr[idx(i - j)]        Kr = the layer's key projection of the table (share_att_key)
    p2c[i, j] = k_j . Qr[idx(j - i)]        Qr = its query projection        (or pos_key/pos_query_proj)
    logits    = (q_i . k_j + c2p + p2c) / sqrt(head_dim * (1 + number of those terms in pos_att_type))

where idx = clip(bucket(i - j) + span, 0, 2 span - 1) and `bucket` is HF's log bucketing (exact below
position_buckets / 2, logarithmic up to max_relative_positions). Relative positions are slot offsets, as
in HF, so they do not depend on padding; v3 (`position_biased_input` False) has no absolute position
embeddings at all. The logits carry an additive bias, so attention runs here as whole arrays (float32
logits and softmax), not through `models.attention`'s kernels.

The reward/value head is DeBERTa's ContextPooler (dense + gelu on the first token, HF `pooler.dense`) and
then `classifier`, so a `DebertaV2ForSequenceClassification` checkpoint imports whole.

Not supported (refused by `Config.from_hf`): DeBERTa v1 (`deberta`), the convolution after the first
layer (`conv_kernel_size` > 0), a pooler wider than the hidden size or not gelu, `attention_head_size`
other than hidden / heads. Dropout is not applied (RLHF fine-tunes with it off); LoRA dropout is.
LoRA layer names: "attn.query_proj", "attn.key_proj", "attn.value_proj", "attn.pos_key_proj",
"attn.pos_query_proj", "attn.out", "mlp.intermediate", "mlp.output".
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.attention import check_implementation
from jaxrlhf.models.base import HeadSpec, WeightSpec, linear_specs, stacked_linear_specs, stacked_specs
from jaxrlhf.models.layers import (
    Embed,
    LayerNorm,
    Linear,
    LoRAConfig,
    activation,
    apply_stacked,
    check_lora_targets,
    create_stacked,
    lora_for,
    split_keys,
)

MODEL_TYPES = ("deberta-v2",)
IS_DECODER = False
POOLING = "first"
HF_BASE_PREFIX = "deberta."
REWARD_HEAD = HeadSpec(use_bias=True, pre_dense=True, activation="gelu")  # ContextPooler + classifier

LORA_LAYER_NAMES = ("attn.query_proj", "attn.key_proj", "attn.value_proj", "attn.pos_key_proj",
                    "attn.pos_query_proj", "attn.out", "mlp.intermediate", "mlp.output")
_ARCHS = {"backbone": "DebertaV2Model", "reward": "DebertaV2ForSequenceClassification",
          "value": "DebertaV2ForSequenceClassification"}
_NEG = float(jnp.finfo(jnp.float32).min)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 128100
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 0
    layer_norm_eps: float = 1e-7
    embedding_size: int = 768
    position_biased_input: bool = False
    relative_attention: bool = True
    max_relative_positions: int = -1  # < 1: max_position_embeddings
    position_buckets: int = 256  # <= 0: no bucketing
    pos_att_type: tuple[str, ...] = ("p2c", "c2p")
    share_att_key: bool = True
    norm_rel_ebd: str = "layer_norm"
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Not read by the model (dropout is off); kept so an export round-trips them.
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        bad = sorted(set(self.pos_att_type) - {"c2p", "p2c"})
        if bad:
            raise ValueError(f"pos_att_type {bad} is not supported (only 'c2p' and 'p2c')")
        if self.norm_rel_ebd not in ("none", "layer_norm"):
            raise ValueError(f"norm_rel_ebd {self.norm_rel_ebd!r} is not supported (only 'none' or 'layer_norm')")
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_relative(self) -> int:
        return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_position_embeddings

    @property
    def span(self) -> int:
        """HF's att_span / pos_ebd_size: the relative table holds 2 * span rows."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative

    @property
    def scale(self) -> float:
        """sqrt(head_dim * scale_factor), in float32 as HF computes it."""
        return float(np.sqrt(np.float32(self.head_dim) * np.float32(1 + len(self.pos_att_type))))

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        model_type = d.get("model_type", "deberta-v2")
        if model_type != "deberta-v2":
            raise ValueError(f"model_type {model_type!r} is not supported by the DeBERTa family (only 'deberta-v2': "
                             f"DeBERTa-v2/v3; DeBERTa v1 'deberta' is not)")
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        if int(d.get("conv_kernel_size") or 0) > 0:
            raise ValueError(f"conv_kernel_size={d['conv_kernel_size']}: DeBERTa's convolution layer is not supported")
        if int(d.get("pooler_hidden_size") or hidden) != hidden:
            raise ValueError(f"pooler_hidden_size={d['pooler_hidden_size']} != hidden_size={hidden} is not supported")
        if d.get("pooler_hidden_act", "gelu") != "gelu":
            raise ValueError(f"pooler_hidden_act {d['pooler_hidden_act']!r} is not supported (only 'gelu')")
        if d.get("attention_head_size") not in (None, hidden // heads):
            raise ValueError(f"attention_head_size={d['attention_head_size']} != hidden_size / num_attention_heads "
                             f"is not supported")
        pos_att = d.get("pos_att_type") or ()
        if isinstance(pos_att, str):  # the old "p2c|c2p" spelling, as DebertaV2Config reads it
            pos_att = [x.strip() for x in pos_att.lower().split("|")]
        norm_rel = "|".join(x.strip() for x in str(d.get("norm_rel_ebd", "none")).lower().split("|"))
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=hidden, num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads, intermediate_size=int(d["intermediate_size"]),
            hidden_act=d.get("hidden_act", "gelu"), max_position_embeddings=int(d.get("max_position_embeddings", 512)),
            type_vocab_size=int(d.get("type_vocab_size", 0)), layer_norm_eps=float(d.get("layer_norm_eps", 1e-7)),
            embedding_size=int(d.get("embedding_size") or hidden),
            position_biased_input=bool(d.get("position_biased_input", True)),
            relative_attention=bool(d.get("relative_attention", False)),
            max_relative_positions=int(d.get("max_relative_positions", -1)),
            position_buckets=int(d.get("position_buckets", -1)), pos_att_type=tuple(pos_att),
            share_att_key=bool(d.get("share_att_key", False)), norm_rel_ebd=norm_rel,
            pad_token_id=d.get("pad_token_id", 0), bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"), hidden_dropout_prob=float(d.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(d.get("attention_probs_dropout_prob", 0.1)))

    def to_hf(self, task: str = "backbone") -> dict:
        if task not in _ARCHS:
            raise ValueError(f"deberta-v2 is an encoder: task {task!r} has no HF architecture; "
                             f"choose one of {tuple(_ARCHS)}")
        d: dict[str, Any] = {
            "architectures": [_ARCHS[task]], "model_type": "deberta-v2",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size, "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings, "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps, "embedding_size": self.embedding_size,
            "position_biased_input": self.position_biased_input, "relative_attention": self.relative_attention,
            "max_relative_positions": self.max_relative_positions, "position_buckets": self.position_buckets,
            "pos_att_type": list(self.pos_att_type), "share_att_key": self.share_att_key,
            "norm_rel_ebd": self.norm_rel_ebd, "conv_kernel_size": 0, "pooler_hidden_size": self.hidden_size,
            "pooler_hidden_act": "gelu", "pooler_dropout": 0.0, "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob, "initializer_range": 0.02,
            "torch_dtype": "float32",
        }
        if task in ("reward", "value"):
            d.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        return d


def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """HF's `make_log_bucket_position`, op for op in float32 (ceil of a float: the same rounding as torch)."""
    sign = np.sign(relative_pos)
    mid = bucket_size // 2
    abs_pos = np.where((relative_pos < mid) & (relative_pos > -mid), mid - 1, np.abs(relative_pos))
    ratio = abs_pos.astype(np.float32) / np.float32(mid)
    with np.errstate(divide="ignore"):  # log(0) where mid == 1: a value the `where` below discards
        log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
    return np.where(abs_pos <= mid, relative_pos.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_positions(cfg: Config, T: int) -> np.ndarray:
    """rel_TxT[i, j]: the (bucketed) offset i - j between slots, a trace-time constant (T is static)."""
    rel = np.arange(T)[:, None] - np.arange(T)[None, :]
    if cfg.position_buckets > 0 and cfg.max_relative > 0:
        rel = log_bucket_position(rel, cfg.position_buckets, cfg.max_relative)
    return rel


class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, **kw):
        E = cfg.hidden_size
        self.num_heads, self.head_dim, self.scale = cfg.num_attention_heads, cfg.head_dim, cfg.scale
        self.pos_att_type, self.span = cfg.pos_att_type, cfg.span
        self.relative = cfg.relative_attention and bool(cfg.pos_att_type)
        for name in ("query_proj", "key_proj", "value_proj"):
            setattr(self, name, Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn." + name), **kw))
        separate = cfg.relative_attention and not cfg.share_att_key
        self.pos_key_proj = nnx.data(Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.pos_key_proj"), **kw)
                                     if separate and "c2p" in cfg.pos_att_type else None)
        self.pos_query_proj = nnx.data(Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.pos_query_proj"), **kw)
                                       if separate and "p2c" in cfg.pos_att_type else None)
        self.out = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.out"), **kw)

    def _heads(self, x_BxTxE):
        B, T, _ = x_BxTxE.shape
        return x_BxTxE.reshape(B, T, self.num_heads, self.head_dim)

    def __call__(self, x_BxTxE, key_mask_BxS, rel_RxE, rel_TxT, rng):
        """`rel_RxE`: the (normalised) relative table, R = 2 * span rows; `rel_TxT`: bucketed slot offsets."""
        B, T, E = x_BxTxE.shape
        r = split_keys(rng, 6)
        q, k, v = (self._heads(proj(x_BxTxE, key))
                   for proj, key in zip((self.query_proj, self.key_proj, self.value_proj), r))
        f32 = dict(preferred_element_type=jnp.float32)
        logits_BxHxTxS = jnp.einsum("bthd,bshd->bhts", q, k, **f32)
        if self.relative:
            rel_1xRxE = rel_RxE[None]
            span = self.span
            if "c2p" in self.pos_att_type:  # q_i . Kr[idx(i - j)]: gather the [T, R] products at idx[i, j]
                kr = self.key_proj if self.pos_key_proj is None else self.pos_key_proj
                kr_RxHxD = self._heads(kr(rel_1xRxE, r[3]))[0]
                c2p_BxHxTxR = jnp.einsum("bthd,rhd->bhtr", q, kr_RxHxD, **f32)
                idx = jnp.asarray(np.clip(rel_TxT + span, 0, 2 * span - 1), jnp.int32)
                logits_BxHxTxS += jnp.take_along_axis(c2p_BxHxTxR, jnp.broadcast_to(idx, (B, self.num_heads, T, T)),
                                                      axis=-1)
            if "p2c" in self.pos_att_type:  # k_j . Qr[idx'(j, i)], gathered per key row then transposed
                qr = self.query_proj if self.pos_query_proj is None else self.pos_query_proj
                qr_RxHxD = self._heads(qr(rel_1xRxE, r[4]))[0]
                p2c_BxHxSxR = jnp.einsum("bshd,rhd->bhsr", k, qr_RxHxD, **f32)
                idx = jnp.asarray(np.clip(-rel_TxT + span, 0, 2 * span - 1), jnp.int32)
                p2c_BxHxSxT = jnp.take_along_axis(p2c_BxHxSxR, jnp.broadcast_to(idx, (B, self.num_heads, T, T)),
                                                  axis=-1)
                logits_BxHxTxS += jnp.swapaxes(p2c_BxHxSxT, -1, -2)
        logits_BxHxTxS = jnp.where(key_mask_BxS[:, None, None, :], logits_BxHxTxS / self.scale, _NEG)
        probs = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(v.dtype)
        out = jnp.einsum("bhts,bshd->bthd", probs, v).reshape(B, T, E)
        return self.out(out, r[5])


class Block(nnx.Module):
    """Post-LayerNorm: h = LN(h + attn(h)); h = LN(h + mlp(h))."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dtype, param_dtype):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, lora=lora, **kw)
        self.attn_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.act = activation(cfg.hidden_act)
        self.intermediate = Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs,
                                   lora=lora_for(lora, "mlp.intermediate"), **kw)
        self.output = Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs, lora=lora_for(lora, "mlp.output"),
                             **kw)
        self.mlp_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, h_BxTxE, key_mask_BxS, rel_RxE, rel_TxT, rng):
        r = split_keys(rng, 3)
        h_BxTxE = self.attn_norm(h_BxTxE + self.attn(h_BxTxE, key_mask_BxS, rel_RxE, rel_TxT, r[0]))
        return self.mlp_norm(h_BxTxE + self.output(self.act(self.intermediate(h_BxTxE, r[1])), r[2]))


class Backbone(nnx.Module):
    """Embeddings (+ LayerNorm), scanned disentangled-attention blocks. `__call__` returns (hidden_BxTxE, None).
    `attention`: "auto" or "default" only; the fused kernels take no additive bias for the relative terms."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None,
                 attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, "DeBERTa")
        if check_implementation(attention) not in ("auto", "default"):
            raise ValueError(f"model.attention={attention!r} is not supported by deberta-v2 (its relative-position "
                             f"bias runs on its own attention path): use 'auto' or 'default'")
        self.cfg = cfg
        self.hidden_size = cfg.hidden_size
        self.dtype = dtype
        self.scan_layers, self.remat = scan_layers, remat
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed = Embed(cfg.vocab_size, cfg.embedding_size, rngs=rngs, **kw)
        self.position_embed = nnx.data(Embed(cfg.max_position_embeddings, cfg.embedding_size, rngs=rngs, **kw)
                                       if cfg.position_biased_input else None)
        self.token_type_embed = nnx.data(Embed(cfg.type_vocab_size, cfg.embedding_size, rngs=rngs, **kw)
                                         if cfg.type_vocab_size > 0 else None)
        self.embed_proj = nnx.data(Linear(cfg.embedding_size, cfg.hidden_size, use_bias=False, rngs=rngs, **kw)
                                   if cfg.embedding_size != cfg.hidden_size else None)
        self.embed_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.rel_embed = nnx.data(Embed(2 * cfg.span, cfg.hidden_size, rngs=rngs, **kw)
                                  if cfg.relative_attention else None)
        self.rel_norm = nnx.data(LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
                                 if cfg.relative_attention and cfg.norm_rel_ebd == "layer_norm" else None)
        self.layers = create_stacked(lambda r: Block(cfg, rngs=r, lora=lora, **kw), cfg.num_hidden_layers, rngs)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, dropout_rng=None,
                 token_type_ids_BxT=None):
        """`positions_BxT`: rows of the absolute position table (v2 with position_biased_input; HF's default is
        0..T-1 whatever the padding, as here). Token types default to zeros."""
        if cache is not None:
            raise ValueError("deberta-v2 is an encoder: it has no KV cache")
        cfg = self.cfg
        B, T = input_ids_BxT.shape
        h = self.embed(input_ids_BxT)
        if self.position_embed is not None:
            if positions_BxT is None:
                positions_BxT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
            h = h + self.position_embed(positions_BxT)
        if self.token_type_embed is not None:
            types = jnp.zeros_like(input_ids_BxT) if token_type_ids_BxT is None else token_type_ids_BxT
            h = h + self.token_type_embed(types)
        if self.embed_proj is not None:
            h = self.embed_proj(h)
        key_mask_BxS = attention_mask_BxT > 0
        h = self.embed_norm(h) * key_mask_BxS[..., None].astype(self.dtype)  # HF zeroes pad embeddings
        rel_RxE = None
        if self.rel_embed is not None:  # one table for every layer, normalised once
            rel_RxE = self.rel_embed.embedding[...].astype(self.dtype)
            if self.rel_norm is not None:
                rel_RxE = self.rel_norm(rel_RxE)
        rel_TxT = relative_positions(cfg, T)
        xs = {} if dropout_rng is None else {"rng": jax.random.split(dropout_rng, cfg.num_hidden_layers)}

        def body(layer, h, x):
            return layer(h, key_mask_BxS, rel_RxE, rel_TxT, x.get("rng")), None

        h, _ = apply_stacked(self.layers, h, body, scan=self.scan_layers, remat=self.remat, xs=xs)
        return h, None


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from.

    Task "backbone": a bare `DebertaV2Model` checkpoint (`embeddings.word_embeddings.weight`,
    `encoder.layer.{i}.attention.self.query_proj.weight`, ...). Tasks "reward"/"value":
    `DebertaV2ForSequenceClassification` names (base under "deberta."), the head's dense layer from
    `pooler.dense` and its projection from `classifier`.
    """
    if task not in _ARCHS:
        raise ValueError(f"unknown task {task!r} for the deberta-v2 encoder")
    pre, path0 = ("", ()) if task == "backbone" else (HF_BASE_PREFIX, ("backbone",))
    L = cfg.num_hidden_layers
    emb, enc = pre + "embeddings.", pre + "encoder."
    specs = [WeightSpec(path0 + ("embed", "embedding"), (emb + "word_embeddings.weight",)),
             WeightSpec(path0 + ("embed_norm", "scale"), (emb + "LayerNorm.weight",)),
             WeightSpec(path0 + ("embed_norm", "bias"), (emb + "LayerNorm.bias",))]
    if cfg.position_biased_input:
        specs.append(WeightSpec(path0 + ("position_embed", "embedding"), (emb + "position_embeddings.weight",)))
    if cfg.type_vocab_size > 0:
        specs.append(WeightSpec(path0 + ("token_type_embed", "embedding"), (emb + "token_type_embeddings.weight",)))
    if cfg.embedding_size != cfg.hidden_size:
        specs += linear_specs(path0 + ("embed_proj",), emb + "embed_proj", bias=False)
    if cfg.relative_attention:
        specs.append(WeightSpec(path0 + ("rel_embed", "embedding"), (enc + "rel_embeddings.weight",)))
        if cfg.norm_rel_ebd == "layer_norm":
            specs += [WeightSpec(path0 + ("rel_norm", "scale"), (enc + "LayerNorm.weight",)),
                      WeightSpec(path0 + ("rel_norm", "bias"), (enc + "LayerNorm.bias",))]
    layer, lp = enc + "layer.{i}.", path0 + ("layers",)
    linears = [(("attn", "query_proj"), "attention.self.query_proj"), (("attn", "key_proj"), "attention.self.key_proj"),
               (("attn", "value_proj"), "attention.self.value_proj"), (("attn", "out"), "attention.output.dense"),
               (("intermediate",), "intermediate.dense"), (("output",), "output.dense")]
    if cfg.relative_attention and not cfg.share_att_key:
        linears += [(("attn", "pos_key_proj"), "attention.self.pos_key_proj")] * ("c2p" in cfg.pos_att_type)
        linears += [(("attn", "pos_query_proj"), "attention.self.pos_query_proj")] * ("p2c" in cfg.pos_att_type)
    for ours, theirs in linears:
        specs += stacked_linear_specs(lp + ours, layer + theirs, L, bias=True)
    for ours, theirs in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
        specs += [stacked_specs(lp + (ours, "scale"), layer + theirs + ".weight", L),
                  stacked_specs(lp + (ours, "bias"), layer + theirs + ".bias", L)]
    if task in ("reward", "value"):
        specs += linear_specs(("head", "dense"), "pooler.dense", bias=True)
        specs += linear_specs(("head", "out"), "classifier", bias=True)
    return specs
