"""Gemma decoders: Gemma (v1), Gemma 2, Gemma 3 text-only (`gemma`, `gemma2`, `gemma3_text`).

Llama's grouped-query attention with RoPE and a gated MLP (`llama.Attention`, `llama.MLP`, reused), with
Gemma's differences:

- RMSNorm scales by (1 + weight), computed in float32 (`GemmaRMSNorm`); HF stores the zero-centred weight.
- Token embeddings are multiplied by sqrt(hidden_size), the factor cast to the compute dtype as HF does
  (in bf16 sqrt(3072) becomes 55.5); the LM head is the tied, unscaled embedding.
- GeGLU: the MLP's gate goes through `gelu_pytorch_tanh` (`hidden_activation`; v1's `hidden_act`).
- Gemma 2/3 wrap both sub-layers in norms (pre and post attention, pre and post feed-forward).
- Attention scale query_pre_attn_scalar ** -0.5 (v1: head_dim ** -0.5), applied by scaling q.
- Gemma 2 soft-caps attention logits (`attn_logit_softcapping`, on the default and xla attention paths) and
  the final logits (`final_logit_softcapping`, in `heads.CausalLM` through the backbone's
  `final_logit_softcap`); Gemma 3 may cap the final logits.
- Sliding-window layers per HF's `layer_types` (Gemma 2: even layers; Gemma 3: five local to one global,
  `sliding_window_pattern`); Gemma 3 adds per-head q/k norms and its own RoPE base for the local layers
  (`rope_local_base_freq`). Per-layer differences are scanned arrays (the `sliding` flag picks the mask and
  the rotary table), so the layers stay one compiled block.

Refused with one line: Gemma 3 with a vision tower (model_type gemma3 / `vision_config`), bidirectional
attention, RoPE types other than default and linear, scaled RoPE on Gemma 3's local layers, and Gemma 3's
`attn_logit_softcapping` (transformers ignores it there, so a checkpoint's behaviour would be ambiguous).
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
    LoRAConfig,
    RMSNorm,
    activation,
    apply_stacked,
    check_lora_targets,
    create_stacked,
    split_keys,
)
from jaxrlhf.models.llama import LORA_LAYER_NAMES, MLP, Attention, rope_cos_sin

MODEL_TYPES = ("gemma", "gemma2", "gemma3_text")
IS_DECODER = True
POOLING = "last"
HF_BASE_PREFIX = "model."
REWARD_HEAD = HeadSpec(use_bias=False, pre_dense=False)

_ARCHS = {  # task -> HF class, per model type
    "gemma": {"backbone": "GemmaModel", "causal_lm": "GemmaForCausalLM", "reward": "GemmaForSequenceClassification"},
    "gemma2": {"backbone": "Gemma2Model", "causal_lm": "Gemma2ForCausalLM",
               "reward": "Gemma2ForSequenceClassification"},
    "gemma3_text": {"backbone": "Gemma3TextModel", "causal_lm": "Gemma3ForCausalLM",
                    "reward": "Gemma3TextForSequenceClassification"},
}
_ROPE_TYPES = ("default", "linear")
_LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    model_type: str = "gemma2"
    hidden_act: str = "gelu_pytorch_tanh"
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 8192
    rope_theta: float = 10000.0  # the full-attention layers' base (Gemma 3: rope_parameters.full_attention)
    rope_type: str = "default"  # of the full-attention layers: "default" or "linear"
    rope_factor: float = 1.0
    rope_local_theta: float | None = None  # Gemma 3's sliding layers (rope_local_base_freq); None: rope_theta
    query_pre_attn_scalar: float = 256.0
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    sliding_window: int | None = None
    sliding_layers: tuple[bool, ...] | None = None  # which layers use the window (None: none)
    attention_bias: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not a Gemma type {MODEL_TYPES}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_type not in _ROPE_TYPES:
            raise ValueError(f"unsupported rope_type {self.rope_type!r} for {self.model_type}; "
                             f"supported: {_ROPE_TYPES}")
        if self.sliding_layers is not None and len(self.sliding_layers) != self.num_hidden_layers:
            raise ValueError(f"sliding_layers has {len(self.sliding_layers)} entries for "
                             f"{self.num_hidden_layers} layers")
        if self.model_type == "gemma" and (self.sliding_window or self.attn_logit_softcapping
                                           or self.final_logit_softcapping or self.rope_local_theta):
            raise ValueError("Gemma v1 has no sliding window, soft-capping or local RoPE base")
        activation(self.hidden_act)  # fails early on an unknown activation

    # What llama.Attention / llama.MLP read.
    @property
    def qkv_bias(self) -> bool:
        return self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.attention_bias

    @property
    def mlp_bias(self) -> bool:
        return False

    @property
    def qk_norm(self) -> bool:
        return self.model_type == "gemma3_text"

    @property
    def post_norms(self) -> bool:
        """Gemma 2/3 norm each sub-layer's output too."""
        return self.model_type != "gemma"

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        mt = d.get("model_type", "gemma2")
        if mt == "gemma3" or "vision_config" in d or "text_config" in d:
            raise ValueError("Gemma 3 with a vision tower (vision_config / model_type gemma3) is not supported; "
                             "use a text-only gemma3_text checkpoint")
        if d.get("use_bidirectional_attention"):
            raise ValueError(f"{mt}: use_bidirectional_attention=True is not supported (causal decoders only)")
        heads, layers = int(d["num_attention_heads"]), int(d["num_hidden_layers"])
        head_dim = int(d.get("head_dim") or int(d["hidden_size"]) // heads)
        full, local_theta = _rope_fields(d, mt)
        partial = full.get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1, 1.0):
            raise ValueError(f"partial rotary embeddings (partial_rotary_factor={partial}) are not supported")
        if mt == "gemma":  # transformers 5 reads hidden_act, and takes the legacy "gelu" as the tanh form
            act = d.get("hidden_act") or "gelu_pytorch_tanh"
            act = "gelu_pytorch_tanh" if act == "gelu" else act
        else:
            act = d.get("hidden_activation") or "gelu_pytorch_tanh"
        window, sliding = None, None
        if mt != "gemma" and d.get("sliding_window") is not None:
            types = d.get("layer_types") or _default_layer_types(d, mt, layers)
            unknown = sorted(set(types) - set(_LAYER_TYPES))
            if unknown:
                raise ValueError(f"layer_types {unknown} are not supported; known: {_LAYER_TYPES}")
            if len(types) != layers:
                raise ValueError(f"layer_types has {len(types)} entries for {layers} layers")
            sliding = tuple(t == "sliding_attention" for t in types)
            window = int(d["sliding_window"]) if any(sliding) else None
            sliding = sliding if any(sliding) else None
        attn_cap = d.get("attn_logit_softcapping") if mt != "gemma" else None
        if mt == "gemma3_text" and attn_cap is not None:
            raise ValueError(f"gemma3_text with attn_logit_softcapping={attn_cap} is not supported: transformers "
                             f"ignores it for Gemma 3, so the checkpoint's behaviour is ambiguous")
        eos = d.get("eos_token_id")
        return cls(
            vocab_size=int(d["vocab_size"]), hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]), num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=int(d.get("num_key_value_heads") or heads), head_dim=head_dim, model_type=mt,
            hidden_act=act, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(d.get("max_position_embeddings", 8192)),
            rope_theta=float(full.get("rope_theta", 10000.0)),
            rope_type=full.get("rope_type", full.get("type", "default")) or "default",
            rope_factor=float(full.get("factor", 1.0)), rope_local_theta=local_theta,
            query_pre_attn_scalar=float(head_dim if mt == "gemma" else d.get("query_pre_attn_scalar", 256)),
            attn_logit_softcapping=None if attn_cap is None else float(attn_cap),
            final_logit_softcapping=(None if mt == "gemma" or d.get("final_logit_softcapping") is None
                                     else float(d["final_logit_softcapping"])),
            sliding_window=window, sliding_layers=sliding, attention_bias=bool(d.get("attention_bias", False)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)), bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos, pad_token_id=d.get("pad_token_id"))

    def full_rope(self) -> dict:
        params: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.rope_theta}
        if self.rope_type == "linear":
            params["factor"] = self.rope_factor
        return params

    def to_hf(self, task: str = "causal_lm") -> dict:
        """A config.json dict for `transformers` (Gemma2ForCausalLM, Gemma3TextForSequenceClassification, ...)."""
        mt = self.model_type
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        d: dict[str, Any] = {
            "architectures": [_ARCHS[mt]["reward" if task == "value" else task]], "model_type": mt,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads, "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim, "rms_norm_eps": self.rms_norm_eps,
            "max_position_embeddings": self.max_position_embeddings, "attention_bias": self.attention_bias,
            "tie_word_embeddings": self.tie_word_embeddings, "attention_dropout": 0.0,
            "bos_token_id": self.bos_token_id, "eos_token_id": eos, "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32", "initializer_range": 0.02, "use_cache": True,
        }
        if self.rope_type != "default":  # the transformers 4 spelling
            d["rope_scaling"] = {k: v for k, v in self.full_rope().items() if k != "rope_theta"}
        if mt == "gemma3_text":
            local = self.rope_local_theta if self.rope_local_theta is not None else self.rope_theta
            d["rope_parameters"] = {"full_attention": self.full_rope(),
                                    "sliding_attention": {"rope_type": "default", "rope_theta": local}}
            d.update(rope_theta=self.rope_theta, rope_local_base_freq=local)
        else:
            d.update(rope_theta=self.rope_theta, rope_parameters=self.full_rope())
        if mt == "gemma":
            d["hidden_act"] = self.hidden_act
        else:
            sliding = self.sliding_layers or (False,) * self.num_hidden_layers
            scalar = float(self.query_pre_attn_scalar)  # transformers' strict config wants an int where it is one
            d.update(hidden_activation=self.hidden_act,
                     query_pre_attn_scalar=int(scalar) if scalar.is_integer() else scalar,
                     attn_logit_softcapping=self.attn_logit_softcapping,
                     final_logit_softcapping=self.final_logit_softcapping, sliding_window=self.sliding_window,
                     layer_types=[_LAYER_TYPES[int(s)] for s in sliding], use_bidirectional_attention=False)
        if task in ("reward", "value"):
            d.update(num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0},
                     pad_token_id=classifier_pad_id(self))
        return d


def _rope_fields(d: dict, mt: str) -> tuple[dict, float | None]:
    """(the full-attention layers' rope dict, Gemma 3's local-layer base or None), from transformers 5's
    `rope_parameters` (per layer type for Gemma 3) or the older rope_theta / rope_scaling /
    rope_local_base_freq."""
    params = dict(d.get("rope_parameters") or {})
    per_type = any(isinstance(v, dict) for v in params.values())
    if mt != "gemma3_text":
        if per_type:
            raise ValueError(f"{mt}: per-layer-type rope_parameters are not supported")
        full = {**(d.get("rope_scaling") or {}), **params}
        full.setdefault("rope_theta", d.get("rope_theta", 10000.0))
        return full, None
    if per_type:
        full, local = dict(params.get("full_attention") or {}), dict(params.get("sliding_attention") or {})
    else:  # older files: rope_theta (+ rope_scaling) for the global layers, rope_local_base_freq for the local
        full, local = {**(d.get("rope_scaling") or {}), **params}, {}
    full.setdefault("rope_theta", d.get("rope_theta", 1_000_000.0))
    local.setdefault("rope_theta", d.get("rope_local_base_freq", 10_000.0))
    local_type = local.get("rope_type", local.get("type", "default")) or "default"
    if local_type != "default":
        raise ValueError(f"gemma3_text: rope_parameters.sliding_attention rope_type {local_type!r} is not supported "
                         f"(default only)")
    return full, float(local["rope_theta"])


def _default_layer_types(d: dict, mt: str, layers: int) -> list[str]:
    """HF's defaults when a config.json has no layer_types: Gemma 2 alternates from a sliding layer 0; Gemma 3
    has every `sliding_window_pattern`-th layer global."""
    pattern = 2 if mt == "gemma2" else int(d.get("sliding_window_pattern") or d.get("_sliding_window_pattern") or 6)
    return [_LAYER_TYPES[int(bool((i + 1) % pattern))] for i in range(layers)]


def inv_freq(theta: float, head_dim: int, rope_type: str = "default", factor: float = 1.0) -> np.ndarray:
    """RoPE inverse frequencies [head_dim / 2] (float32); linear scaling divides them by `factor`."""
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    return (inv / factor if rope_type == "linear" else inv).astype(np.float32)


class GemmaRMSNorm(RMSNorm):
    """x / rms(x) * (1 + scale), all in float32, then cast (HF: `(x * w).to(dtype)`, not Llama's order)."""

    def __init__(self, dim: int, eps: float, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        super().__init__(dim, eps, dtype=dtype, param_dtype=param_dtype)
        self.scale = nnx.Param(jnp.zeros((dim,), param_dtype))  # zero-centred, as HF stores it

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)


class Block(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dtype, param_dtype,
                 attention: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        norm = lambda: GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)  # noqa: E731
        self.attn_norm = norm()
        # the kernel divides by sqrt(head_dim); q_scale turns that into query_pre_attn_scalar ** -0.5
        self.attn = Attention(cfg, rngs=rngs, lora=lora, attention=attention, norm=GemmaRMSNorm,
                              q_scale=math.sqrt(cfg.head_dim / cfg.query_pre_attn_scalar),
                              softcap=cfg.attn_logit_softcapping, **kw)
        self.post_attn_norm = nnx.data(norm() if cfg.post_norms else None)
        self.mlp_norm = norm()
        self.mlp = MLP(cfg, rngs=rngs, lora=lora, **kw)
        self.post_mlp_norm = nnx.data(norm() if cfg.post_norms else None)

    def __call__(self, h_BxTxE, cos, sin, mask_BxTxS, layer_kv, inputs, rng, structure=None):
        r = split_keys(rng, 2)
        a, layer_kv = self.attn(self.attn_norm(h_BxTxE), cos, sin, mask_BxTxS, layer_kv, inputs, r[0], structure)
        h_BxTxE = h_BxTxE + (a if self.post_attn_norm is None else self.post_attn_norm(a))
        m = self.mlp(self.mlp_norm(h_BxTxE), r[1])
        h_BxTxE = h_BxTxE + (m if self.post_mlp_norm is None else self.post_mlp_norm(m))
        return h_BxTxE, layer_kv


class Backbone(nnx.Module):
    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None,
                 attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, "Gemma")
        self.attention = check_implementation(attention)
        self.cfg = cfg
        self.hidden_size = cfg.hidden_size
        self.final_logit_softcap = cfg.final_logit_softcapping  # read by heads.CausalLM
        self.dtype = dtype
        self.scan_layers, self.remat = scan_layers, remat
        self.embed = Embed(cfg.vocab_size, cfg.hidden_size, rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layers = create_stacked(
            lambda r: Block(cfg, rngs=r, lora=lora, dtype=dtype, param_dtype=param_dtype, attention=attention),
            cfg.num_hidden_layers, rngs)
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)

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
        """As llama.Backbone: `kv_len` bounds the cache slots attended (kv_cache module docstring)."""
        cfg = self.cfg
        T = input_ids_BxT.shape[1]
        inputs = kv_cache.attention_inputs(attention_mask_BxT, positions_BxT, cache, cfg.sliding_window, kv_len,
                                           segments_BxT)
        sliding = cfg.sliding_layers or (False,) * cfg.num_hidden_layers
        full_cs = rope_cos_sin(inputs.positions_BxT, inv_freq(cfg.rope_theta, cfg.head_dim, cfg.rope_type,
                                                              cfg.rope_factor))
        local_cs = full_cs
        if cfg.rope_local_theta is not None and any(sliding):  # Gemma 3: its own base on the sliding layers
            local_cs = rope_cos_sin(inputs.positions_BxT, inv_freq(cfg.rope_local_theta, cfg.head_dim))
        mixed = any(sliding) and not all(sliding)
        xs: dict[str, Any] = {}
        if cache is not None:  # the whole cache rides in the carry and is written in place, T slots a layer
            xs["layer"] = jnp.arange(cfg.num_hidden_layers)
        if dropout_rng is not None:
            xs["rng"] = jax.random.split(dropout_rng, cfg.num_hidden_layers)
        if mixed:
            xs["sliding"] = jnp.asarray(sliding)
        # Over its own keys with one mask for every layer, fused kernels get the mask's structure (llama.Backbone).
        structure = None
        if inputs.structured and not mixed:
            structure = dict(key_mask_BxS=inputs.key_mask_BxS, causal=True,
                             window=cfg.sliding_window if all(sliding) else None)

        def body(layer, carry, x):
            if mixed:  # per-layer choice of mask and rotary table, by the scanned flag
                s = x["sliding"]
                mask = jnp.where(s, inputs.window_mask_BxTxS, inputs.mask_BxTxS)
                cos, sin = (jnp.where(s, lo, fu) for lo, fu in zip(local_cs, full_cs))
            else:
                mask = inputs.window_mask_BxTxS if all(sliding) else inputs.mask_BxTxS
                cos, sin = local_cs if all(sliding) else full_cs
            h, kv = carry
            h, kv = layer(h, cos, sin, mask, None if kv is None else (*kv, x["layer"]), inputs, x.get("rng"),
                          structure)
            return (h, kv), None

        h = self.embed(input_ids_BxT)
        h = h * jnp.asarray(math.sqrt(cfg.hidden_size), h.dtype)  # HF casts the factor to the weights' dtype
        kv = None if cache is None else (cache.k_LxBxKxSxD, cache.v_LxBxKxSxD)
        (h, kv), _ = apply_stacked(self.layers, (h, kv), body, scan=self.scan_layers, remat=self.remat, xs=xs)
        h = self.norm(h)
        if cache is not None:
            cache = kv_cache.updated_cache(cache, kv[0], kv[1], inputs, T)
        return h, cache


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from (`model.layers.{i}.pre_feedforward_layernorm.weight`...).
    Norm weights are taken as HF stores them (zero-centred; GemmaRMSNorm adds the 1)."""
    pre, path0 = ("", ()) if task == "backbone" else (HF_BASE_PREFIX, ("backbone",))
    L = cfg.num_hidden_layers
    layer = f"{pre}layers.{{i}}."
    specs = [WeightSpec(path0 + ("embed", "embedding"), (pre + "embed_tokens.weight",))]
    for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
        specs += stacked_linear_specs(path0 + ("layers", "attn", name), layer + "self_attn." + name, L,
                                      bias=cfg.attention_bias)
    if cfg.qk_norm:
        specs += [stacked_specs(path0 + ("layers", "attn", n, "scale"), layer + f"self_attn.{n}.weight", L)
                  for n in ("q_norm", "k_norm")]
    for name in ("gate_proj", "up_proj", "down_proj"):
        specs += stacked_linear_specs(path0 + ("layers", "mlp", name), layer + "mlp." + name, L, bias=False)
    # v1 names its pre-MLP norm post_attention_layernorm (as Llama); Gemma 2/3 use that name for the norm
    # of the attention output and call the pre-MLP one pre_feedforward_layernorm.
    norms = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm"}
    if cfg.post_norms:
        norms = {"attn_norm": "input_layernorm", "post_attn_norm": "post_attention_layernorm",
                 "mlp_norm": "pre_feedforward_layernorm", "post_mlp_norm": "post_feedforward_layernorm"}
    specs += [stacked_specs(path0 + ("layers", ours, "scale"), layer + hf + ".weight", L) for ours, hf in norms.items()]
    specs.append(WeightSpec(path0 + ("norm", "scale"), (pre + "norm.weight",)))
    if task == "causal_lm" and not cfg.tie_word_embeddings:
        specs += linear_specs(("lm_head",), "lm_head", bias=False)
    elif task in ("reward", "value"):
        specs.append(WeightSpec(("head", "out", "kernel"), ("score.weight",), transpose, transpose))
    elif task not in ("backbone", "causal_lm"):
        raise ValueError(f"unknown task {task!r}")
    return specs
