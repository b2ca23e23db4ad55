"""GPT-Neo decoder (EleutherAI): GPT-2's block with separate q/k/v projections and local attention layers.

Differences from GPT-2 that matter for exactness:

- q/k/v are separate bias-free `nn.Linear`s ([out, in]: transposed on import) and `out_proj` has a bias;
  the MLP's `c_fc` / `c_proj` are `nn.Linear` too, not GPT-2's Conv1D.
- No 1/sqrt(head_dim) scaling of the attention logits (HF computes q.k unscaled): our attention kernels
  divide by sqrt(D), so q is multiplied by sqrt(D) first.
- `attention_types` expands to one "global" or "local" per layer; a local layer sees the `window_size`
  slots up to its own (q - window < s <= q, on slot indices as HF's banded `bias` buffer does, pads
  included). The choice rides through the layer scan as a per-layer boolean array, so one compiled block
  serves both kinds.

Positions come from the attention mask (left padding starts at 0 on the first real token), as in
`gpt2.py`; pass `positions_BxT` to reproduce HF's `arange` on padded rows. Dropout is not applied
(RLHF fine-tunes with it off); LoRA dropout is. LoRA layer names: "attn.q_proj", "attn.k_proj",
"attn.v_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj". Refused: attention kinds other than global/local
(`attention_types`), more than one `eos_token_id`.
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

MODEL_TYPES = ("gpt_neo",)
IS_DECODER = True
POOLING = "last"
HF_BASE_PREFIX = "transformer."
REWARD_HEAD = HeadSpec(use_bias=False, pre_dense=False)  # GPTNeoForSequenceClassification.score: no bias

_ARCHS = {"backbone": "GPTNeoModel", "causal_lm": "GPTNeoForCausalLM", "reward": "GPTNeoForSequenceClassification",
          "value": "GPTNeoForSequenceClassification"}
LORA_LAYER_NAMES = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.c_fc", "mlp.c_proj")
_ATTENTION_KINDS = ("global", "local")


def expand_attention_types(attention_types) -> tuple[str, ...]:
    """HF's [[["global", "local"], 12]] form as one kind per layer (as `GPTNeoConfig.attention_layers`)."""
    return tuple(kind for kinds, repeat in attention_types for _ in range(int(repeat)) for kind in kinds)


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int = 50257
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 8192
    max_positions: int = 2048
    window_size: int = 256
    attention_layers: tuple[str, ...] = ("global", "local") * 12
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}")
        if len(self.attention_layers) != self.num_layers:
            raise ValueError(f"attention_types gives {len(self.attention_layers)} layers, num_layers={self.num_layers}")
        bad = sorted(set(self.attention_layers) - set(_ATTENTION_KINDS))
        if bad:
            raise ValueError(f"attention_types {bad} are not supported (only 'global' and 'local')")
        activation(self.activation_function)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def local_layers(self) -> tuple[bool, ...]:
        return tuple(kind == "local" for kind in self.attention_layers)

    @classmethod
    def from_hf(cls, d: dict) -> Config:
        hidden = int(d.get("hidden_size", 2048))
        layers = int(d.get("num_layers", d.get("num_hidden_layers", 24)))
        if d.get("attention_types") is not None:
            kinds = expand_attention_types(d["attention_types"])
        else:
            kinds = tuple(d.get("attention_layers") or expand_attention_types([[["global", "local"], 12]]))
        eos = d.get("eos_token_id", 50256)
        if isinstance(eos, list):  # one id per config field, as GPT-2's Config keeps it
            if len(eos) != 1:
                raise ValueError(f"eos_token_id {eos}: only one EOS id is supported")
            eos = eos[0]
        return cls(
            vocab_size=int(d.get("vocab_size", 50257)), hidden_size=hidden, num_layers=layers,
            num_heads=int(d.get("num_heads", d.get("num_attention_heads", 16))),
            intermediate_size=int(d.get("intermediate_size") or 4 * hidden),
            max_positions=int(d.get("max_position_embeddings", 2048)), window_size=int(d.get("window_size", 256)),
            attention_layers=kinds, activation_function=d.get("activation_function", "gelu_new"),
            layer_norm_epsilon=float(d.get("layer_norm_epsilon", 1e-5)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=eos, pad_token_id=d.get("pad_token_id"))

    def to_hf(self, task: str = "causal_lm") -> dict:
        d: dict[str, Any] = {
            "architectures": [_ARCHS[task]], "model_type": "gpt_neo",
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
            "num_heads": self.num_heads, "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_positions, "window_size": self.window_size,
            "attention_types": [[list(self.attention_layers), 1]],  # one entry per layer: any pattern round-trips
            "activation_function": self.activation_function, "layer_norm_epsilon": self.layer_norm_epsilon,
            "tie_word_embeddings": self.tie_word_embeddings, "resid_dropout": 0.0, "embed_dropout": 0.0,
            "attention_dropout": 0.0, "classifier_dropout": 0.0, "initializer_range": 0.02,
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
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(self, name, Linear(E, E, use_bias=False, rngs=rngs, lora=lora_for(lora, "attn." + name), **kw))
        self.out_proj = Linear(E, E, rngs=rngs, lora=lora_for(lora, "attn.out_proj"), **kw)

    def __call__(self, x_BxTxE, mask_BxTxS, layer_kv, inputs, rng, structure=None):
        """`layer_kv`: (k_LxBxKxSxD, v_LxBxKxSxD, layer) or None; `inputs`: kv_cache.AttentionInputs."""
        B, T, E = x_BxTxE.shape
        r = split_keys(rng, 4)
        q, k, v = (proj(x_BxTxE, key).reshape(B, T, self.num_heads, self.head_dim)
                   for proj, key in zip((self.q_proj, self.k_proj, self.v_proj), r))
        # The kernels divide by sqrt(D); GPT-Neo does not scale, so undo it on q.
        q = q * jnp.asarray(math.sqrt(self.head_dim), q.dtype)
        out, layer_kv = kv_cache.attend_and_write(q, k, v, mask_BxTxS, layer_kv, inputs, self.attention, structure)
        return self.out_proj(out.reshape(B, T, E), r[3]), layer_kv


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
    """Pre-LayerNorm: h += attn(LN(h)); h += mlp(LN(h))."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, lora: LoRAConfig | None, dtype, param_dtype,
                 attention: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.ln_1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **kw)
        self.attn = Attention(cfg, rngs=rngs, lora=lora, attention=attention, **kw)
        self.ln_2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_epsilon, **kw)
        self.mlp = MLP(cfg, rngs=rngs, lora=lora, **kw)

    def __call__(self, h_BxTxE, mask_BxTxS, layer_kv, inputs, rng, structure=None):
        r = split_keys(rng, 2)
        a, layer_kv = self.attn(self.ln_1(h_BxTxE), mask_BxTxS, layer_kv, inputs, r[0], structure)
        h_BxTxE = h_BxTxE + a
        return h_BxTxE + self.mlp(self.ln_2(h_BxTxE), r[1]), layer_kv


class Backbone(nnx.Module):
    """Token + position embeddings, scanned blocks (global or local attention per layer), final LayerNorm.
    Returns (hidden_BxTxE, cache). `attention`: the attention kernel (models.attention.IMPLEMENTATIONS)."""

    def __init__(self, cfg: Config, *, rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 scan_layers: bool = True, remat: bool = False, lora: LoRAConfig | None = None,
                 attention: str = "auto"):
        check_lora_targets(lora, LORA_LAYER_NAMES, "GPT-Neo")
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
        return self.cfg.window_size if any(self.cfg.local_layers) else None

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> kv_cache.KVCache:
        cfg = self.cfg
        return kv_cache.init_cache(cfg.num_layers, batch, max_len, cfg.num_heads, cfg.head_dim, dtype or self.dtype)

    def __call__(self, input_ids_BxT, attention_mask_BxT, *, positions_BxT=None, cache=None, kv_len=None,
                 dropout_rng=None, segments_BxT=None):
        """`kv_len`: with a cache, attend over its slots [0, kv_len) only (static; kv_cache module docstring)."""
        cfg = self.cfg
        T = input_ids_BxT.shape[1]
        local = cfg.local_layers
        inputs = kv_cache.attention_inputs(attention_mask_BxT, positions_BxT, cache,
                                           cfg.window_size if any(local) else None, kv_len, segments_BxT)
        xs: dict[str, Any] = {}
        if cache is not None:  # the whole cache rides in the carry and is written in place, T slots a layer
            xs["layer"] = jnp.arange(cfg.num_layers)
        if dropout_rng is not None:
            xs["rng"] = jax.random.split(dropout_rng, cfg.num_layers)
        if any(local) and not all(local):  # mixed: the layer's kind is scanned data, not a Python branch
            xs["local"] = jnp.asarray(local)
        # Over its own keys with one kind of layer, kernels that take no dense mask build it from `structure`;
        # a decode step on the cache, or a kind chosen per layer, has only the dense mask.
        structure = None
        if inputs.structured and "local" not in xs:
            structure = dict(key_mask_BxS=inputs.key_mask_BxS, causal=True,
                             window=cfg.window_size if all(local) else None)

        def body(layer, carry, x):
            if "local" in x:
                mask = jnp.where(x["local"], inputs.window_mask_BxTxS, inputs.mask_BxTxS)
            else:
                mask = inputs.window_mask_BxTxS if all(local) else inputs.mask_BxTxS
            h, kv = carry
            h, kv = layer(h, mask, None if kv is None else (*kv, x["layer"]), inputs, x.get("rng"), structure)
            return (h, kv), None

        h = self.embed(input_ids_BxT) + self.wpe(inputs.positions_BxT)
        kv = None if cache is None else (cache.k_LxBxKxSxD, cache.v_LxBxKxSxD)
        (h, kv), _ = apply_stacked(self.layers, (h, kv), body, scan=self.scan_layers, remat=self.remat, xs=xs)
        h = self.ln_f(h)
        if cache is not None:
            cache = kv_cache.updated_cache(cache, kv[0], kv[1], inputs, T)
        return h, cache


def weight_specs(cfg: Config, task: str) -> list[WeightSpec]:
    """Our parameter paths and the HF tensors they come from (`transformer.h.{i}.attn.attention.q_proj.weight`...)."""
    if task not in ("backbone", "causal_lm", "reward", "value"):
        raise ValueError(f"unknown task {task!r}")
    pre, path0 = ("", ()) if task == "backbone" else (HF_BASE_PREFIX, ("backbone",))
    L = cfg.num_layers
    layer = f"{pre}h.{{i}}."
    lp = path0 + ("layers",)
    specs = [WeightSpec(path0 + ("embed", "embedding"), (pre + "wte.weight",)),
             WeightSpec(path0 + ("wpe", "embedding"), (pre + "wpe.weight",))]
    for ln in ("ln_1", "ln_2"):
        specs += [stacked_specs(lp + (ln, "scale"), layer + ln + ".weight", L),
                  stacked_specs(lp + (ln, "bias"), layer + ln + ".bias", L)]
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        specs += stacked_linear_specs(lp + ("attn", name), layer + "attn.attention." + name, L,
                                      bias=name == "out_proj")
    for name in ("c_fc", "c_proj"):
        specs += stacked_linear_specs(lp + ("mlp", name), layer + "mlp." + name, L, bias=True)
    specs += [WeightSpec(path0 + ("ln_f", "scale"), (pre + "ln_f.weight",)),
              WeightSpec(path0 + ("ln_f", "bias"), (pre + "ln_f.bias",))]
    if task == "causal_lm" and not cfg.tie_word_embeddings:
        specs += linear_specs(("lm_head",), "lm_head", bias=False)
    elif task in ("reward", "value"):
        specs.append(WeightSpec(("head", "out", "kernel"), ("score.weight",), transpose, transpose))
    return specs
