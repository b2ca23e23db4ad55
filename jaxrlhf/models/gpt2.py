"""GPT-2 decoder: learned positions, pre-LayerNorm blocks, gelu_new MLP, tied LM head.

HF stores GPT-2's projections as `Conv1D` weights, already [in, out] like our kernels, so they load
untransposed; the fused `c_attn` ([E, 3E], q | k | v) stays one Linear (LoRA on "c_attn" adapts all
three, as PEFT does). Positions come from the attention mask (left padding starts at 0 on the first
real token), unlike HF's default `arange`: pass `positions_BxT` to reproduce HF on padded rows.
Dropout (resid/embd/attn_pdrop) is not applied: RLHF fine-tunes with it off; LoRA dropout is.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models import kv_cache
from jaxrlhf.models.attention import check_implementation
from jaxrlhf.models.base import HeadSpec, WeightSpec, classifier_pad_id, linear_specs, stacked_specs, transpose
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

MODEL_TYPES = ("gpt2",)
IS_DECODER = True
POOLING = "last"
HF_BASE_PREFIX = "transformer."
REWARD_HEAD = HeadSpec(use_bias=False, pre_dense=False)

_ARCHS = {"backbone": "GPT2Model", "causal_lm": "GPT2LMHeadModel", "reward": "GPT2ForSequenceClassification",
          "value": "GPT2ForSequenceClassification"}
LORA_LAYER_NAMES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 1024
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        activation(self.activation_function)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        if d.get("add_cross_attention"):
            raise ValueError("GPT-2 with cross-attention (add_cross_attention) is not supported")
        hidden = int(d.get("n_embd", d.get("hidden_size", 768)))
        return cls(
            vocab_size=int(d.get("vocab_size", 50257)), hidden_size=hidden,
            num_layers=int(d.get("n_layer", d.get("num_hidden_layers", 12))),
            num_heads=int(d.get("n_head", d.get("num_attention_heads", 12))),
            intermediate_size=int(d.get("n_inner") or 4 * hidden),
            max_positions=int(d.get("n_positions", d.get("max_position_embeddings", 1024))),
            activation_function=d.get("activation_function", "gelu_new"),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            scale_attn_weights=bool(d.get("scale_attn_weights", True)),
            scale_attn_by_inverse_layer_idx=bool(d.get("scale_attn_by_inverse_layer_idx", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"),
            pad_token_id=d.get("pad_token_id"))

    def to_hf(self, task: str = "causal_lm") -> dict:
        d: dict[str, Any] = {
            "architectures": [_ARCHS[task]], "model_type": "gpt2",
            "vocab_size": self.vocab_size, "n_embd": self.hidden_size, "n_layer": self.num_layers,
            "n_head": self.num_heads, "n_inner": self.intermediate_size, "n_positions": self.max_positions,
            "n_ctx": self.max_positions, "activation_function": self.activation_function,
            "layer_norm_epsilon": self.layer_norm_epsilon, "scale_attn_weights": self.scale_attn_weights,
            "scale_attn_by_inverse_layer_idx": self.scale_attn_by_inverse_layer_idx,
            "reorder_and_upcast_attn": False, "tie_word_embeddings": self.tie_word_embeddings,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32", "use_cache": True,
        }
        if task in ("reward", "value"):
            d.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                     pad_token_id=classifier_pad_id(self))
        return d


class Attention(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, attention: str = "auto", **kw):
        E = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.attention = attention  # models.attention.IMPLEMENTATIONS
        self.c_attn = Linear(E, 3 * E, rngs=rngs, lora=lora_for(lora, "attn.c_attn"), **kw)
        self.c_proj = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.c_proj"), **kw)

    def __call__(self, x_BxTxE, mask_BxTxS, q_scale, layer_kv, inputs, rng, structure=None):
        """`layer_kv`: (k_LxBxKxSxD, v_LxBxKxSxD, layer) or None; `inputs`: the call's
        kv_cache.AttentionInputs. `structure`: how the mask was made (dot_product_attention's key_mask_BxS,
        causal), None for a decode step on the cache."""
        B, T, E = x_BxTxE.shape
        r = split_keys(rng, 2)
        qkv = self.c_attn(x_BxTxE, r[0])
        q, k, v = (a.reshape(B, T, self.num_heads, self.head_dim) for a in jnp.split(qkv, 3, axis=-1))
        # dot_product_attention divides by sqrt(D); q_scale turns that into GPT-2's configured scaling.
        q = q * jnp.asarray(q_scale, q.dtype)
        out, layer_kv = kv_cache.attend_and_write(q, k, v, mask_BxTxS, layer_kv, inputs, self.attention, structure)
        return self.c_proj(out.reshape(B, T, E), r[1]), layer_kv


class MLP(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, **kw):
        self.act = activation(cfg.activation_function)
        self.c_fc = Linear(cfg.hidden_size, cfg.intermediate_size, rngs=rngs, lora=lora_for(lora, "mlp.c_fc"), **kw)
        self.c_proj = Linear(cfg.intermediate_size, cfg.hidden_size, rngs=rngs, lora=lora_for(lora, "mlp.c_proj"),
                             **kw)

    def __call__(self, x_BxTxE, rng):
        r = split_keys(rng, 2)
        return self.c_proj(self.act(self.c_fc(x_BxTxE, r[0])), r[1])


class Block(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dtype, param_dtype,
                 attention: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **kw)
        self.attn = Attention(cfg, rngs=rngs, lora=lora, attention=attention, **kw)
        self.ln_2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **kw)
        self.mlp = MLP(cfg, rngs=rngs, lora=lora, **kw)

    def __call__(self, h_BxTxE, mask_BxTxS, q_scale, layer_kv, inputs, rng, structure=None):
        r = split_keys(rng, 2)
        a, layer_kv = self.attn(self.ln_1(h_BxTxE), mask_BxTxS, q_scale, layer_kv, inputs, r[0], structure)
        h_BxTxE = h_BxTxE + a
        h_BxTxE = h_BxTxE + self.mlp(self.ln_2(h_BxTxE), r[1])
        return h_BxTxE, layer_kv


class Backbone(nnx.Module):
    """Token + position embeddings, scanned blocks, final LayerNorm. Returns (hidden_BxTxE, cache).
    `attention`: the attention kernel (models.attention.IMPLEMENTATIONS; `model.attention`)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None,
                 attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, "GPT-2")
        self.attention = check_implementation(attention)
        self.cfg = cfg
        self.hidden_size = cfg.hidden_size
        self.dtype = dtype
        self.scan_layers, self.remat = scan_layers, remat
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, **kw)
        self.wpe = Embed(cfg.max_positions, cfg.hidden_size, rngs=rngs, init_std=0.01, **kw)
        self.layers = create_stacked(lambda r: Block(cfg, rngs=r, lora=lora, attention=attention, **kw),
                                     cfg.num_layers, rngs)
        self.ln_f = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **kw)

    @property
    def attention_window(self) -> int | None:
        """The sliding window some layer attends within, or None (all layers attend in full)."""
        return None

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> kv_cache.KVCache:
        cfg = self.cfg
        return kv_cache.init_cache(cfg.num_layers, batch, max_len, cfg.num_heads, cfg.head_dim, dtype or self.dtype)

    def _q_scales(self) -> jax.Array | float:
        """Per-layer factor so that logits = q.k * HF scaling (1/sqrt(D), optionally / (layer + 1))."""
        cfg = self.cfg
        base = 1.0 if cfg.scale_attn_weights else math.sqrt(cfg.head_dim)
        if not cfg.scale_attn_by_inverse_layer_idx:
            return base
        return base / jnp.arange(1, cfg.num_layers + 1, dtype=jnp.float32)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, kv_len=None,
                 dropout_rng=None, segments_BxT=None):
        """`kv_len`: with a cache, attend over its slots [0, kv_len) only (static; kv_cache module docstring)."""
        cfg = self.cfg
        T = input_ids_BxT.shape[1]
        inputs = kv_cache.attention_inputs(attention_mask_BxT, positions_BxT, cache, kv_len=kv_len,
                                           segments_BxT=segments_BxT)
        scales = self._q_scales()
        xs: dict[str, Any] = {}
        if cache is not None:  # the whole cache rides in the carry and is written in place, T slots a layer
            xs["layer"] = jnp.arange(cfg.num_layers)
        if dropout_rng is not None:
            xs["rng"] = jax.random.split(dropout_rng, cfg.num_layers)
        if not isinstance(scales, float):
            xs["scale"] = scales
        # Attending over its own keys (no cache, or a prefill) the mask is causal + key padding: kernels that
        # take no dense mask build it from this.
        structure = dict(key_mask_BxS=inputs.key_mask_BxS, causal=True) if inputs.structured else None

        def body(layer, carry, x):
            h, kv = carry
            h, kv = layer(h, inputs.mask_BxTxS, x.get("scale", scales), None if kv is None else (*kv, x["layer"]),
                          inputs, x.get("rng"), structure)
            return (h, kv), None

        h = self.embed(input_ids_BxT) + self.wpe(inputs.positions_BxT)
        kv = None if cache is None else (cache.k_LxBxKxSxD, cache.v_LxBxKxSxD)
        (h, kv), _ = apply_stacked(self.layers, (h, kv), body, scan=self.scan_layers, remat=self.remat, xs=xs)
        h = self.ln_f(h)
        if cache is not None:
            cache = kv_cache.updated_cache(cache, kv[0], kv[1], inputs, T)
        return h, cache


def _conv1d_specs(path: tuple[str, ...], key_fmt: str, num_layers: int) -> list[WeightSpec]:
    """An HF Conv1D: weight already [in, out], taken as it is."""
    return [stacked_specs(path + ("kernel",), key_fmt + ".weight", num_layers),
            stacked_specs(path + ("bias",), key_fmt + ".bias", num_layers)]


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from (`transformer.h.{i}.attn.c_attn.weight`...)."""
    pre, path0 = ("", ()) if task == "backbone" else (HF_BASE_PREFIX, ("backbone",))
    L = cfg.num_layers
    layer = f"{pre}h.{{i}}."
    specs = [WeightSpec(path0 + ("embed", "embedding"), (pre + "wte.weight",)),
             WeightSpec(path0 + ("wpe", "embedding"), (pre + "wpe.weight",))]
    for ln in ("ln_1", "ln_2"):
        specs += [stacked_specs(path0 + ("layers", ln, "scale"), layer + ln + ".weight", L),
                  stacked_specs(path0 + ("layers", ln, "bias"), layer + ln + ".bias", L)]
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        specs += _conv1d_specs(path0 + ("layers",) + tuple(name.split(".")), layer + name, L)
    specs += [WeightSpec(path0 + ("ln_f", "scale"), (pre + "ln_f.weight",)),
              WeightSpec(path0 + ("ln_f", "bias"), (pre + "ln_f.bias",))]
    if task == "causal_lm" and not cfg.tie_word_embeddings:
        specs += linear_specs(("lm_head",), "lm_head", bias=False)
    elif task in ("reward", "value"):
        specs.append(WeightSpec(("head", "out", "kernel"), ("score.weight",), transpose, transpose))
    elif task not in ("backbone", "causal_lm"):
        raise ValueError(f"unknown task {task!r}")
    return specs
