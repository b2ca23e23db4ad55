"""Maps an HF `model_type` to our family module and builds a model for a task."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxrlhf.models.base import TASKS
from jaxrlhf.models.heads import CausalLM, RewardModel, ValueModel
from jaxrlhf.models.layers import LoRAConfig

_FAMILY_MODULES = {
    "llama": "jaxrlhf.models.llama",
    "mistral": "jaxrlhf.models.llama",
    "qwen2": "jaxrlhf.models.llama",
    "qwen3": "jaxrlhf.models.llama",
    "gemma": "jaxrlhf.models.gemma",
    "gemma2": "jaxrlhf.models.gemma",
    "gemma3_text": "jaxrlhf.models.gemma",
    "gpt2": "jaxrlhf.models.gpt2",
    "gpt_neo": "jaxrlhf.models.gpt_neo",
    "deberta-v2": "jaxrlhf.models.deberta",
    "bert": "jaxrlhf.models.bert",
    "roberta": "jaxrlhf.models.bert",
}


class UnknownArchitectureError(ValueError):
    pass


def supported_model_types() -> list[str]:
    return sorted(_FAMILY_MODULES)


def family_for(model_type: str) -> ModuleType:
    if model_type not in _FAMILY_MODULES:
        raise UnknownArchitectureError(
            f"unknown architecture model_type={model_type!r}; supported: {', '.join(supported_model_types())}")
    return importlib.import_module(_FAMILY_MODULES[model_type])


def build_model(family: ModuleType, cfg: Any, task: str, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                param_dtype: Any = jnp.float32, scan_layers: bool = True, remat: bool = False,
                lora: LoRAConfig | None = None, dropout: float = 0.0, attention_dropout: float = 0.0,
                attention: str = "auto") -> nnx.Module:
    """A randomly initialised model of `family` for `task` (weights are loaded afterwards). `dropout`,
    `attention_dropout`: hidden and attention-probability dropout while training, for families that have
    them (BERT); 0 elsewhere. `attention`: the attention kernel (models.attention.IMPLEMENTATIONS)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    kw = dict(dtype=dtype, param_dtype=param_dtype, attention=attention)
    if getattr(family, "HAS_DROPOUT", False):
        kw.update(dropout=dropout, attention_dropout=attention_dropout)
    elif dropout or attention_dropout:
        raise ValueError(f"dropout={dropout}, attention_dropout={attention_dropout}: hidden/attention dropout is "
                         f"implemented for the BERT family only, "
                         f"not {family.__name__.rsplit('.', 1)[-1]} (LoRA dropout is lora_dropout)")
    backbone = family.Backbone(cfg, rngs=rngs, scan_layers=scan_layers, remat=remat, lora=lora, **kw)
    if task == "backbone":
        return backbone
    if task == "causal_lm":
        if not family.IS_DECODER:
            raise UnknownArchitectureError(f"{family.__name__} is an encoder: it has no causal LM head")
        return CausalLM(backbone, vocab_size=cfg.vocab_size, tie_embeddings=cfg.tie_word_embeddings, rngs=rngs,
                        dtype=dtype, param_dtype=param_dtype)
    if task == "reward":
        return RewardModel(backbone, head=family.REWARD_HEAD, pooling=family.POOLING, rngs=rngs, dtype=dtype,
                           param_dtype=param_dtype)
    return ValueModel(backbone, head=family.REWARD_HEAD, rngs=rngs, dtype=dtype, param_dtype=param_dtype)


def abstract_model(hf_config: dict, task: str, **build_kw) -> tuple[nnx.Module, Any]:
    """(abstract model, family Config) from a config.json dict: shapes only, no weights, no memory."""
    family = family_for(hf_config["model_type"])
    cfg = family.Config.from_hf(hf_config)
    model = nnx.eval_shape(lambda: build_model(family, cfg, task, rngs=nnx.Rngs(0), **build_kw))
    return model, cfg
