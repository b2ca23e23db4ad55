"""BERT-family encoder: BERT, MiniLM (a small BERT), RoBERTa.

Word + learned absolute position + token-type embeddings, LayerNorm, then post-LayerNorm blocks
(h = LN(h + attn(h)); h = LN(h + mlp(h))) of bidirectional attention over the keys where the mask is 1
and an exact-gelu MLP, scanned over layers. BERT and RoBERTa differ only in the position ids and in
the checkpoint names of the base model and the classifier:

- BERT: positions 0..T-1 whatever the padding (as `BertModel` computes them). Pad on the right, as
  the tokenizers do: a left-padded row puts its real tokens at shifted positions, as in HF.
- RoBERTa: pad rows sit at `padding_idx` (= pad_token_id) and real tokens count up from
  `padding_idx + 1`, which HF derives from `input_ids != pad`; we derive it from the attention mask
  (the same whenever masked tokens are the pad id), so left padding leaves real positions unchanged.

`positions_BxT` overrides either rule; it holds raw rows of the position table (HF's `position_ids`,
so RoBERTa's offset included). Token types default to zeros (`token_type_ids_BxT`, an extra keyword).

The BERT pooler (dense + tanh on the first token) is not part of the backbone: it is the reward/value
head's `dense` layer, so `weight_specs(cfg, "reward")` maps `bert.pooler.dense` there (RoBERTa:
`classifier.dense`) and a reward model imported from a bare `BertModel` checkpoint starts from the
pretrained pooler. Exporting task "backbone" therefore writes no pooler (transformers re-initialises it).

LoRA layer names (for `LoRAConfig.targets`): "attn.query", "attn.key", "attn.value", "attn.out",
"mlp.intermediate", "mlp.output". Dropout (training only, when a `dropout_rng` is given): LoRA dropout,
BERT's hidden dropout (embeddings, attention output, MLP output) at `Backbone(dropout=rate)` and its
attention-probability dropout at `attention_dropout=rate`; both off by default (RLHF code usually trains
without them). The attention masks are B x H x T x T: on a CPU they cost far more than the hidden ones.
The checkpoint's own `hidden_dropout_prob` / `attention_probs_dropout_prob` are kept for export only.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.attention import check_implementation, dot_product_attention
from jaxrlhf.models.base import HeadSpec, WeightSpec, linear_specs, stacked_linear_specs, stacked_specs
from jaxrlhf.models.heads import gather_positions
from jaxrlhf.models.layers import (
    Embed,
    LayerNorm,
    Linear,
    LoRAConfig,
    activation,
    apply_stacked,
    check_dropout_rate,
    check_lora_targets,
    create_stacked,
    dropout,
    lora_for,
    split_keys,
    split_last_layer,
    split_last_layer_inputs,
)

MODEL_TYPES = ("bert", "roberta")
IS_DECODER = False
HAS_DROPOUT = True  # Backbone(dropout=, attention_dropout=): hidden and attention dropout while training
POOLING = "first"
# The module-level default; a RoBERTa config's own prefix is `Config.hf_base_prefix` ("roberta.").
HF_BASE_PREFIX = "bert."
HF_BASE_PREFIXES = {"bert": "bert.", "roberta": "roberta."}
REWARD_HEAD = HeadSpec(use_bias=True, pre_dense=True)

LORA_LAYER_NAMES = ("attn.query", "attn.key", "attn.value", "attn.out", "mlp.intermediate", "mlp.output")
_ARCH_NAMES = {"bert": "Bert", "roberta": "Roberta"}
_ARCH_SUFFIX = {"backbone": "Model", "reward": "ForSequenceClassification", "value": "ForSequenceClassification"}
# Checkpoint names of the scalar head, (pre-dense, projection), after the base prefix for BERT's pooler.
_HEAD_KEYS = {"bert": ("bert.pooler.dense", "classifier"), "roberta": ("classifier.dense", "classifier.out_proj")}


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    model_type: str = "bert"
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Not read by the model (its rates are Backbone arguments); kept so an export round-trips them.
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a BERT-family type {MODEL_TYPES}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                             f"num_attention_heads={self.num_attention_heads}")
        if self.model_type == "roberta" and self.pad_token_id is None:
            raise ValueError("RoBERTa needs pad_token_id (its position ids are counted from it)")
        activation(self.hidden_act)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def hf_base_prefix(self) -> str:
        """"bert." or "roberta.": the base-model prefix of this model type's task checkpoints."""
        return HF_BASE_PREFIXES[self.model_type]

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        model_type = d.get("model_type", "bert")
        if d.get("is_decoder") or d.get("add_cross_attention"):
            raise ValueError(f"{model_type} as a decoder / with cross-attention is not supported")
        pos_type = d.get("position_embedding_type", "absolute")
        if pos_type != "absolute":
            raise ValueError(f"position_embedding_type {pos_type!r} is not supported (only 'absolute')")
        default_pad = 1 if model_type == "roberta" else 0
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]), num_attention_heads=int(d["num_attention_heads"]),
            intermediate_size=int(d["intermediate_size"]), model_type=model_type,
            hidden_act=d.get("hidden_act", "gelu"),
            max_position_embeddings=int(d.get("max_position_embeddings", 512)),
            type_vocab_size=int(d.get("type_vocab_size", 2)),
            layer_norm_eps=float(d.get("layer_norm_eps", 1e-12)),
            pad_token_id=d.get("pad_token_id", default_pad),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            hidden_dropout_prob=float(d.get("hidden_dropout_prob", 0.1)),
            attention_probs_dropout_prob=float(d.get("attention_probs_dropout_prob", 0.1)),
            classifier_dropout=d.get("classifier_dropout"))

    def to_hf(self, task: str = "backbone") -> dict:
        if task not in _ARCH_SUFFIX:
            raise ValueError(f"{self.model_type} is an encoder: task {task!r} has no HF architecture; "
                             f"choose one of {tuple(_ARCH_SUFFIX)}")
        d: dict[str, Any] = {
            "architectures": [_ARCH_NAMES[self.model_type] + _ARCH_SUFFIX[task]], "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers, "num_attention_heads": self.num_attention_heads,
            "intermediate_size": self.intermediate_size, "hidden_act": self.hidden_act,
            "max_position_embeddings": self.max_position_embeddings, "type_vocab_size": self.type_vocab_size,
            "layer_norm_eps": self.layer_norm_eps, "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "classifier_dropout": self.classifier_dropout, "position_embedding_type": "absolute",
            "initializer_range": 0.02, "is_decoder": False, "add_cross_attention": False,
            "torch_dtype": "float32", "use_cache": False,
        }
        if task in ("reward", "value"):
            d.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        return d




class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dropout_rate: float,
                 attention_dropout_rate: float, attention: str = "auto", **kw):
        E = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.attention = attention  # models.attention.IMPLEMENTATIONS (dropout on: the default path)
        self.dropout_rate, self.attention_dropout_rate = dropout_rate, attention_dropout_rate
        self.query = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.query"), **kw)
        self.key = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.key"), **kw)
        self.value = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.value"), **kw)
        self.out = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.out"), **kw)

    def __call__(self, x_BxTxE, mask_BxQxS, rng, key_mask_BxS=None, queries_BxQxE=None):
        """Self-attention; with `queries_BxQxE`, only those queries attend (keys and values from all of x),
        through the default kernel: a few query rows gain nothing from a fused one."""
        B, T, E = x_BxTxE.shape
        r = split_keys(rng, 6)
        xq = x_BxTxE if queries_BxQxE is None else queries_BxQxE
        Q = xq.shape[1]
        q = self.query(xq, r[0]).reshape(B, Q, self.num_heads, self.head_dim)
        k, v = (proj(x_BxTxE, key).reshape(B, T, self.num_heads, self.head_dim)
                for proj, key in zip((self.key, self.value), r[1:3]))
        implementation = self.attention if queries_BxQxE is None else "default"
        out = dot_product_attention(q, k, v, mask_BxQxS, dropout_rate=self.attention_dropout_rate,
                                    dropout_rng=r[4], implementation=implementation, key_mask_BxS=key_mask_BxS)
        return dropout(self.out(out.reshape(B, Q, E), r[3]), self.dropout_rate, r[5])


class MLP(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dropout_rate: float, **kw):
        self.act = activation(cfg.hidden_act)
        self.dropout_rate = dropout_rate
        self.intermediate = Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs,
                                   lora=lora_for(lora, "mlp.intermediate"), **kw)
        self.output = Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs, lora=lora_for(lora, "mlp.output"),
                             **kw)

    def __call__(self, x_BxTxE, rng):
        r = split_keys(rng, 3)
        return dropout(self.output(self.act(self.intermediate(x_BxTxE, r[0])), r[1]), self.dropout_rate, r[2])


class Block(nnx.Module):
    """Post-LayerNorm: h = LN(h + attn(h)); h = LN(h + mlp(h))."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dropout_rate: float,
                 attention_dropout_rate: float, dtype, param_dtype, attention: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.attn = Attention(cfg, rngs=rngs, lora=lora, dropout_rate=dropout_rate,
                              attention_dropout_rate=attention_dropout_rate, attention=attention, **kw)
        self.attn_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, lora=lora, dropout_rate=dropout_rate, **kw)
        self.mlp_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)

    def __call__(self, h_BxTxE, mask_BxTxS, rng, key_mask_BxS=None):
        r = split_keys(rng, 2)
        h_BxTxE = self.attn_norm(h_BxTxE + self.attn(h_BxTxE, mask_BxTxS, r[0], key_mask_BxS))
        return self.mlp_norm(h_BxTxE + self.mlp(h_BxTxE, r[1]))

    def at(self, h_BxTxE, index_B, key_mask_BxS, rng):
        """The block's output at one position per row, [B, E]: every token's keys and values, but the query,
        attention output, norms and MLP of that position only (the rest of a last layer feeds nothing)."""
        r = split_keys(rng, 2)
        x_Bx1xE = gather_positions(h_BxTxE, index_B)[:, None, :]
        x_Bx1xE = self.attn_norm(x_Bx1xE + self.attn(h_BxTxE, key_mask_BxS[:, None, :], r[0],
                                                     queries_BxQxE=x_Bx1xE))
        return self.mlp_norm(x_Bx1xE + self.mlp(x_Bx1xE, r[1]))[:, 0, :]


def position_ids(cfg: Config, attention_mask_BxT: jax.Array) -> jax.Array:
    """HF's position ids: BERT 0..T-1; RoBERTa pad_id + running count of real tokens (pads at pad_id)."""
    B, T = attention_mask_BxT.shape
    if cfg.model_type == "bert":
        return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    real = (attention_mask_BxT > 0).astype(jnp.int32)
    return jnp.cumsum(real, axis=-1) * real + int(cfg.pad_token_id)


class Backbone(nnx.Module):
    """Embeddings + LayerNorm, scanned post-LN blocks. `__call__` returns (hidden_BxTxE, None).
    `attention`: the attention kernel (models.attention.IMPLEMENTATIONS; `model.attention`)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None, dropout: float = 0.0,
                 attention_dropout: float = 0.0, attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, cfg.model_type)
        self.attention = check_implementation(attention)
        self.cfg = cfg
        self.dropout_rate = check_dropout_rate(dropout)
        self.attention_dropout_rate = check_dropout_rate(attention_dropout)
        self.hidden_size = cfg.hidden_size
        self.dtype = dtype
        self.scan_layers, self.remat = scan_layers, remat
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.position_embed = Embed(cfg.max_position_embeddings, cfg.hidden_size, rngs=rngs, **kw)
        self.token_type_embed = Embed(cfg.type_vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.embed_norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, **kw)
        self.layers = create_stacked(lambda r: Block(cfg, rngs=r, lora=lora, dropout_rate=self.dropout_rate,
                                                     attention_dropout_rate=self.attention_dropout_rate,
                                                     attention=attention, **kw),
                                     cfg.num_hidden_layers, rngs)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, dropout_rng=None,
                 token_type_ids_BxT=None):
        if cache is not None:
            raise ValueError(f"{self.cfg.model_type} is an encoder: it has no KV cache")
        h, key_mask_BxS, xs = self._embed(input_ids_BxT, attention_mask_BxT, positions_BxT, dropout_rng,
                                          token_type_ids_BxT)
        return self._run(self.layers, h, key_mask_BxS, xs), None

    def hidden_at(self, input_ids_BxT, attention_mask_BxT, index_B, *, positions_BxT=None, dropout_rng=None,
                  token_type_ids_BxT=None) -> jax.Array:
        """`__call__`'s hidden states at one position per row, hidden_BxE, with the last layer run for that
        position only (`Block.at`): a reward head reads one token, so of a 6-layer MiniLM step this leaves
        out about a seventh of the work. With dropout on, the whole stack runs and the position is read from it,
        so that each dropout site draws the same masks as in `__call__`."""
        if dropout_rng is not None and (self.dropout_rate > 0 or self.attention_dropout_rate > 0):
            hidden, _ = self(input_ids_BxT, attention_mask_BxT, positions_BxT=positions_BxT, dropout_rng=dropout_rng,
                             token_type_ids_BxT=token_type_ids_BxT)
            return gather_positions(hidden, index_B)
        h, key_mask_BxS, xs = self._embed(input_ids_BxT, attention_mask_BxT, positions_BxT, dropout_rng,
                                          token_type_ids_BxT)
        front, last = split_last_layer(self.layers)
        xs_front, x_last = split_last_layer_inputs(xs)
        if front is not None:
            h = self._run(front, h, key_mask_BxS, xs_front)
        return last.at(h, index_B, key_mask_BxS, x_last.get("rng"))

    def _embed(self, input_ids_BxT, attention_mask_BxT, positions_BxT, dropout_rng, token_type_ids_BxT):
        """Embeddings (+ LayerNorm, dropout), the key mask, and the per-layer dropout keys."""
        cfg = self.cfg
        if positions_BxT is None:
            positions_BxT = position_ids(cfg, attention_mask_BxT)
        if token_type_ids_BxT is None:
            token_type_ids_BxT = jnp.zeros_like(input_ids_BxT)
        h = self.embed(input_ids_BxT) + self.token_type_embed(token_type_ids_BxT) + self.position_embed(positions_BxT)
        key_mask_BxS = attention_mask_BxT > 0
        xs = {}
        if dropout_rng is not None:  # one key per layer, the last for the embeddings
            keys = jax.random.split(dropout_rng, cfg.num_hidden_layers + 1)
            xs["rng"], dropout_rng = keys[:-1], keys[-1]
        return dropout(self.embed_norm(h), self.dropout_rate, dropout_rng), key_mask_BxS, xs

    def _run(self, layers, h, key_mask_BxS, xs):
        # Bidirectional: every query sees every real key (key_mask_BxS, for kernels that take no dense mask).
        B, T = key_mask_BxS.shape
        mask_BxTxS = jnp.broadcast_to(key_mask_BxS[:, None, :], (B, T, T))

        def body(layer, h, x):
            return layer(h, mask_BxTxS, x.get("rng"), key_mask_BxS), None

        h, _ = apply_stacked(layers, h, body, scan=self.scan_layers, remat=self.remat, xs=xs)
        return h


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from.

    Task "backbone": a bare `BertModel` / `RobertaModel` checkpoint (`embeddings.word_embeddings.weight`,
    `encoder.layer.{i}.attention.self.query.weight`, ...; its `pooler.dense.*` is not read).
    Tasks "reward"/"value": `*ForSequenceClassification` names, base prefixed by `cfg.hf_base_prefix`;
    the head's dense layer is `bert.pooler.dense` (BERT) or `classifier.dense` (RoBERTa), its projection
    `classifier` or `classifier.out_proj`.
    """
    if task not in ("backbone", "reward", "value"):
        raise ValueError(f"unknown task {task!r} for the {cfg.model_type} encoder")
    pre, path0 = ("", ()) if task == "backbone" else (cfg.hf_base_prefix, ("backbone",))
    L = cfg.num_hidden_layers
    emb = pre + "embeddings."
    specs = [WeightSpec(path0 + ("embed", "embedding"), (emb + "word_embeddings.weight",)),
             WeightSpec(path0 + ("position_embed", "embedding"), (emb + "position_embeddings.weight",)),
             WeightSpec(path0 + ("token_type_embed", "embedding"), (emb + "token_type_embeddings.weight",)),
             WeightSpec(path0 + ("embed_norm", "scale"), (emb + "LayerNorm.weight",)),
             WeightSpec(path0 + ("embed_norm", "bias"), (emb + "LayerNorm.bias",))]
    layer = pre + "encoder.layer.{i}."
    lp = path0 + ("layers",)
    for ours, theirs in ((("attn", "query"), "attention.self.query"), (("attn", "key"), "attention.self.key"),
                         (("attn", "value"), "attention.self.value"), (("attn", "out"), "attention.output.dense"),
                         (("mlp", "intermediate"), "intermediate.dense"), (("mlp", "output"), "output.dense")):
        specs += stacked_linear_specs(lp + ours, layer + theirs, L, bias=True)
    for ours, theirs in (("attn_norm", "attention.output.LayerNorm"), ("mlp_norm", "output.LayerNorm")):
        specs += [stacked_specs(lp + (ours, "scale"), layer + theirs + ".weight", L),
                  stacked_specs(lp + (ours, "bias"), layer + theirs + ".bias", L)]
    if task in ("reward", "value"):
        dense, out = _HEAD_KEYS[cfg.model_type]
        specs += linear_specs(("head", "dense"), dense, bias=True) + linear_specs(("head", "out"), out, bias=True)
    return specs
