"""Llama-family decoder: Llama 2/3, Mistral, Qwen2/2.5, Qwen3, SmolLM2.

Pre-norm blocks (RMSNorm) of grouped-query attention with rotary embeddings and a SwiGLU MLP, scanned
over layers. Weights use the HF checkpoint layout as it is: RoPE rotates halves of each head
(`rotate_half`), so HF q/k projections load without any row permutation. Differences between the
members are config switches: q/k/v bias (Qwen2; `attention_bias` puts a bias on o_proj too),
`head_dim`, `rope_theta` and Llama-3 / linear `rope_scaling`, tied embeddings (SmolLM2, small Qwen2.5)
and the sliding window (Mistral; Qwen2/3 when `use_sliding_window`), applied on cache slots as HF does;
Qwen3's per-head RMSNorm of q and k before RoPE is `qk_norm`. `Attention` also serves `models.gemma`
(its own norm class, a query scale and attention-logit soft-capping).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models import kv_cache
from jaxrlhf.models.attention import check_implementation
from jaxrlhf.models.base import (
    HeadSpec,
    WeightSpec,
    classifier_pad_id,
    linear_specs,
    stacked_linear_specs,
    stacked_specs,
    transpose,
)
from jaxrlhf.models.layers import (
    Embed,
    Linear,
    LoRAConfig,
    RMSNorm,
    activation,
    apply_stacked,
    check_lora_targets,
    create_stacked,
    lora_for,
    split_keys,
)

MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
IS_DECODER = True
POOLING = "last"
HF_BASE_PREFIX = "model."
REWARD_HEAD = HeadSpec(use_bias=False, pre_dense=False)

_ARCH_NAMES = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}
_ARCH_SUFFIX = {"backbone": "Model", "causal_lm": "ForCausalLM", "reward": "ForSequenceClassification",
                "value": "ForSequenceClassification"}
_ROPE_TYPES = ("default", "linear", "llama3")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "llama"
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rope_type: str = "default"  # "default", "linear" or "llama3"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position_embeddings: int | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim of each q and k head, before RoPE
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None  # which layers use the window (None: none)
    max_window_layers: int | None = None  # Qwen2/3's field, kept for export
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a Llama-family type {MODEL_TYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"unsupported rope type {self.rope_type!r}; supported: {_ROPE_TYPES}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_hidden_layers:
            raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for "
                             f"{self.num_hidden_layers} layers")
        activation(self.hidden_act)  # fails early on an unknown activation

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        model_type = d.get("model_type", "llama")
        hidden, heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        layers = int(d["num_hidden_layers"])
        # transformers 5 keeps rope settings in `rope_parameters`; older files use rope_theta + rope_scaling.
        rope = dict(d.get("rope_scaling") or {})
        rope.update(d.get("rope_parameters") or {})
        if any(isinstance(v, dict) for v in rope.values()):
            raise ValueError("per-layer-type rope_parameters are not supported")
        rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
        theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
        partial = rope.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise ValueError(f"partial rotary embeddings (partial_rotary_factor={partial}) are not supported")
        if model_type == "qwen2":
            qkv_bias, o_bias = True, False
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
        sliding_window, sliding_layers, max_window_layers = None, None, None
        if model_type == "mistral" and d.get("sliding_window") is not None:
            sliding_window, sliding_layers = int(d["sliding_window"]), (True,) * layers
        elif model_type in ("qwen2", "qwen3"):
            max_window_layers = d.get("max_window_layers")
            if d.get("use_sliding_window") and d.get("sliding_window") is not None:
                sliding_window = int(d["sliding_window"])
                types = d.get("layer_types") or [
                    "sliding_attention" if i >= int(max_window_layers or 0) else "full_attention"
                    for i in range(layers)]
                sliding_layers = tuple(t == "sliding_attention" for t in types)
                if not any(sliding_layers):
                    sliding_window, sliding_layers = None, None
        eos = d.get("eos_token_id")
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=hidden, intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or hidden // heads), model_type=model_type,
            hidden_act=d.get("hidden_act", "silu"), rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)), rope_theta=float(theta),
            rope_type=rope_type, rope_factor=float(rope.get("factor", 1.0)),
            rope_low_freq_factor=float(rope.get("low_freq_factor", 1.0)),
            rope_high_freq_factor=float(rope.get("high_freq_factor", 4.0)),
            rope_original_max_position_embeddings=rope.get("original_max_position_embeddings"),
            qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=bool(d.get("mlp_bias", False)), qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)), sliding_window=sliding_window,
            sliding_layers=sliding_layers, max_window_layers=max_window_layers,
            bos_token_id=d.get("bos_token_id"), eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"))

    def rope_parameters(self) -> dict:
        params: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type in ("linear", "llama3"):
            params["factor"] = self.rope_factor
        if self.rope_type == "llama3":
            params.update(low_freq_factor=self.rope_low_freq_factor, high_freq_factor=self.rope_high_freq_factor,
                          original_max_position_embeddings=self.original_max_positions())
        return params

    def original_max_positions(self) -> int:
        return int(self.rope_original_max_position_embeddings or self.max_position_embeddings)

    def to_hf(self, task: str = "causal_lm") -> dict:
        """A config.json dict for `transformers` (LlamaForCausalLM, Qwen2ForSequenceClassification, ...)."""
        if self.model_type in ("llama", "qwen3") and self.qkv_bias != self.o_bias:
            raise ValueError(f"HF {_ARCH_NAMES[self.model_type]} has one `attention_bias` switch for q/k/v/o; "
                             f"this config differs")
        if self.qk_norm != (self.model_type == "qwen3"):
            raise ValueError(f"qk_norm={self.qk_norm} has no HF {_ARCH_NAMES[self.model_type]} equivalent")
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        d: dict[str, Any] = {
            "architectures": [_ARCH_NAMES[self.model_type] + _ARCH_SUFFIX[task]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "hidden_act": self.hidden_act, "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings,
            "rope_theta": self.rope_theta, "rope_parameters": self.rope_parameters(),
            "tie_word_embeddings": self.tie_word_embeddings, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": eos, "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32", "initializer_range": 0.02, "use_cache": True,
        }
        if self.rope_type != "default":  # the transformers 4 spelling
            d["rope_scaling"] = {k: v for k, v in self.rope_parameters().items() if k != "rope_theta"}
        if self.model_type == "llama":
            d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        else:
            if self.model_type == "qwen3":
                d["attention_bias"] = self.qkv_bias
            d.update(use_sliding_window=self.sliding_window is not None, sliding_window=self.sliding_window,
                     max_window_layers=self.max_window_layers if self.max_window_layers is not None
                     else self.num_hidden_layers,
                     layer_types=["sliding_attention" if s else "full_attention"
                                  for s in (self.sliding_layers or (False,) * self.num_hidden_layers)])
        if task in ("reward", "value"):
            d.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                     pad_token_id=classifier_pad_id(self))
        return d


def rope_inv_freq(cfg: Config) -> np.ndarray:
    """Inverse frequencies [head_dim / 2] (float32), with linear or Llama-3 scaling applied."""
    dim = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    if cfg.rope_type == "linear":
        inv = inv / cfg.rope_factor
    elif cfg.rope_type == "llama3":
        old_len = cfg.original_max_positions()
        low_wavelen = old_len / cfg.rope_low_freq_factor
        high_wavelen = old_len / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / cfg.rope_factor, inv)
        smooth = (old_len / wavelen - cfg.rope_low_freq_factor) / (cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv = np.where(medium, smoothed, scaled)
    return inv.astype(np.float32)


def rope_cos_sin(positions_BxT: jax.Array, inv_freq: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos, sin [B, T, head_dim] in the HF layout (the half-frequencies repeated twice), float32."""
    freqs_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)
    angles = jnp.concatenate([freqs_BxTxF, freqs_BxTxF], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BxTxNxD: jax.Array, cos_BxTxD: jax.Array, sin_BxTxD: jax.Array) -> jax.Array:
    x = x_BxTxNxD.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxD[:, :, None, :] + rotated * sin_BxTxD[:, :, None, :]
    return out.astype(x_BxTxNxD.dtype)



class Attention(nnx.Module):
    """GQA with RoPE. `cfg` needs the shape fields, qkv_bias, o_bias and qk_norm. `norm`: the class of the q/k
    norms (Gemma's differs); `q_scale`: multiplies q so that the kernel's 1/sqrt(head_dim) becomes the family's
    scale (Gemma's query_pre_attn_scalar); `softcap`: attention logit soft-capping (Gemma 2)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, attention: str = "auto",
                 norm: type = RMSNorm, q_scale: float = 1.0, softcap: float | None = None, **kw):
        H, K, D, E = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, D
        self.attention = attention  # models.attention.IMPLEMENTATIONS
        self.q_scale, self.softcap = q_scale, softcap

        def linear(name, d_in, d_out, bias):
            return Linear(d_in, d_out, use_bias=bias, rngs=rngs, lora=lora_for(lora, "attn." + name), **kw)

        self.q_proj = linear("q_proj", E, H * D, cfg.qkv_bias)
        self.k_proj = linear("k_proj", E, K * D, cfg.qkv_bias)
        self.v_proj = linear("v_proj", E, K * D, cfg.qkv_bias)
        self.o_proj = linear("o_proj", H * D, E, cfg.o_bias)
        self.q_norm = nnx.data(norm(D, cfg.rms_norm_eps, **kw) if cfg.qk_norm else None)
        self.k_norm = nnx.data(norm(D, cfg.rms_norm_eps, **kw) if cfg.qk_norm else None)

    def __call__(self, x_BxTxE, cos_BxTxD, sin_BxTxD, mask_BxTxS, layer_kv, inputs, rng, structure=None):
        """`inputs`: the call's kv_cache.AttentionInputs. `structure`: how the mask was made
        (dot_product_attention's key_mask_BxS, causal, window), or None (a decode step on the KV cache;
        layers that choose their window per layer)."""
        B, T, _ = x_BxTxE.shape
        r = split_keys(rng, 4)
        q = self.q_proj(x_BxTxE, r[0]).reshape(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(x_BxTxE, r[1]).reshape(B, T, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x_BxTxE, r[2]).reshape(B, T, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:  # per head, over head_dim
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos_BxTxD, sin_BxTxD), apply_rope(k, cos_BxTxD, sin_BxTxD)
        if self.q_scale != 1.0:
            q = q * jnp.asarray(self.q_scale, q.dtype)
        # With a cache: this call's keys are written into it, and a decode step attends over its prefix.
        out, layer_kv = kv_cache.attend_and_write(q, k, v, mask_BxTxS, layer_kv, inputs, self.attention, structure,
                                                  softcap=self.softcap)
        out = self.o_proj(out.reshape(B, T, self.num_heads * self.head_dim), r[3])
        return out, layer_kv


class MLP(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, **kw):
        E, F, bias = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        self.act = activation(cfg.hidden_act)
        self.gate_proj = Linear(E, F, use_bias=bias, rngs=rngs, lora=lora_for(lora, "mlp.gate_proj"), **kw)
        self.up_proj = Linear(E, F, use_bias=bias, rngs=rngs, lora=lora_for(lora, "mlp.up_proj"), **kw)
        self.down_proj = Linear(F, E, use_bias=bias, rngs=rngs, lora=lora_for(lora, "mlp.down_proj"), **kw)

    def __call__(self, x_BxTxE, rng):
        r = split_keys(rng, 3)
        return self.down_proj(self.act(self.gate_proj(x_BxTxE, r[0])) * self.up_proj(x_BxTxE, r[1]), r[2])


class Block(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dtype, param_dtype,
                 attention: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.attn = Attention(cfg, rngs=rngs, lora=lora, attention=attention, **kw)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, lora=lora, **kw)

    def __call__(self, h_BxTxE, cos, sin, mask_BxTxS, layer_kv, inputs, rng, structure=None):
        r = split_keys(rng, 2)
        a, layer_kv = self.attn(self.attn_norm(h_BxTxE), cos, sin, mask_BxTxS, layer_kv, inputs, r[0], structure)
        h_BxTxE = h_BxTxE + a
        h_BxTxE = h_BxTxE + self.mlp(self.mlp_norm(h_BxTxE), r[1])
        return h_BxTxE, layer_kv



LORA_LAYER_NAMES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj",
                    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")



class Backbone(nnx.Module):
    """Token embedding, scanned blocks, final RMSNorm. `__call__` returns (hidden_BxTxE, cache).
    `attention`: the attention kernel (models.attention.IMPLEMENTATIONS; `model.attention`)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None,
                 attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, "Llama")
        self.attention = check_implementation(attention)
        self.cfg = cfg
        self.hidden_size = cfg.hidden_size
        self.dtype = dtype
        self.scan_layers, self.remat = scan_layers, remat
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = create_stacked(
            lambda r: Block(cfg, rngs=r, lora=lora, dtype=dtype, param_dtype=param_dtype, attention=attention),
            cfg.num_hidden_layers, rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

    @property
    def attention_window(self) -> int | None:
        """The sliding window some layer attends within, or None (all layers attend in full)."""
        return self.cfg.sliding_window

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> kv_cache.KVCache:
        """An empty cache for `batch` rows of up to `max_len` tokens (prompt + generated)."""
        cfg = self.cfg
        return kv_cache.init_cache(cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim,
                                   dtype or self.dtype)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, kv_len=None,
                 dropout_rng=None, segments_BxT=None):
        """`kv_len`: with a cache, attend over its slots [0, kv_len) only (static; kv_cache module docstring)."""
        cfg = self.cfg
        T = input_ids_BxT.shape[1]
        inputs = kv_cache.attention_inputs(attention_mask_BxT, positions_BxT, cache, cfg.sliding_window, kv_len,
                                           segments_BxT)
        cos, sin = rope_cos_sin(inputs.positions_BxT, rope_inv_freq(cfg))
        sliding = cfg.sliding_layers or (False,) * cfg.num_hidden_layers
        xs: dict[str, Any] = {}
        if cache is not None:  # the whole cache rides in the carry and is written in place, T slots a layer
            xs["layer"] = jnp.arange(cfg.num_hidden_layers)
        if dropout_rng is not None:
            xs["rng"] = jax.random.split(dropout_rng, cfg.num_hidden_layers)
        if any(sliding) and not all(sliding):
            xs["sliding"] = jnp.asarray(sliding)
        # Attending over its own keys (no cache, or a prefill) the mask is causal + key padding (+ the window
        # on every layer): kernels that take no dense mask build it from this. A decode step on the cache,
        # or a window chosen per layer, has only the mask.
        structure = None
        if inputs.structured and "sliding" not in xs:
            structure = dict(key_mask_BxS=inputs.key_mask_BxS, causal=True,
                             window=cfg.sliding_window if all(sliding) else None)

        def body(layer, carry, x):
            if "sliding" in x:
                mask = jnp.where(x["sliding"], inputs.window_mask_BxTxS, inputs.mask_BxTxS)
            else:
                mask = inputs.window_mask_BxTxS if all(sliding) else inputs.mask_BxTxS
            h, kv = carry
            h, kv = layer(h, cos, sin, mask, None if kv is None else (*kv, x["layer"]), inputs, x.get("rng"),
                          structure)
            return (h, kv), None

        h = self.embed(input_ids_BxT)
        kv = None if cache is None else (cache.k_LxBxKxSxD, cache.v_LxBxKxSxD)
        (h, kv), _ = apply_stacked(self.layers, (h, kv), body, scan=self.scan_layers, remat=self.remat, xs=xs)
        h = self.norm(h)
        if cache is not None:
            cache = kv_cache.updated_cache(cache, kv[0], kv[1], inputs, T)
        return h, cache


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from (`model.layers.{i}.self_attn.q_proj.weight`...)."""
    pre, path0 = ("", ()) if task == "backbone" else (HF_BASE_PREFIX, ("backbone",))
    L = cfg.num_hidden_layers
    layer = f"{pre}layers.{{i}}."
    specs = [WeightSpec(path0 + ("embed", "embedding"), (pre + "embed_tokens.weight",))]
    for name, bias in (("q_proj", cfg.qkv_bias), ("k_proj", cfg.qkv_bias), ("v_proj", cfg.qkv_bias),
                       ("o_proj", cfg.o_bias)):
        specs += stacked_linear_specs(path0 + ("layers", "attn", name), layer + "self_attn." + name, L, bias=bias)
    if cfg.qk_norm:
        specs += [stacked_specs(path0 + ("layers", "attn", n, "scale"), layer + f"self_attn.{n}.weight", L)
                  for n in ("q_norm", "k_norm")]
    for name in ("gate_proj", "up_proj", "down_proj"):
        specs += stacked_linear_specs(path0 + ("layers", "mlp", name), layer + "mlp." + name, L, bias=cfg.mlp_bias)
    specs += [stacked_specs(path0 + ("layers", "attn_norm", "scale"), layer + "input_layernorm.weight", L),
              stacked_specs(path0 + ("layers", "mlp_norm", "scale"), layer + "post_attention_layernorm.weight", L),
              WeightSpec(path0 + ("norm", "scale"), (pre + "norm.weight",))]
    if task == "causal_lm" and not cfg.tie_word_embeddings:
        specs += linear_specs(("lm_head",), "lm_head", bias=False)
    elif task in ("reward", "value"):
        specs.append(WeightSpec(("head", "out", "kernel"), ("score.weight",), transpose, transpose))
    elif task not in ("backbone", "causal_lm"):
        raise ValueError(f"unknown task {task!r}")
    return specs
