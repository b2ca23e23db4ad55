"""`from_pretrained`: one importer for every family, placing each tensor onto its sharding.

The model is first built abstractly (`nnx.eval_shape`, no memory), every HF tensor is read (memory
mapped), mapped by the family's `weight_specs` table, checked against the expected shape and put
straight onto its NamedSharding with `jax.make_array_from_callback`, so each device receives only its
shard. Parameters the checkpoint does not hold (a new reward head, LoRA adapters) are initialised by a
jitted function that XLA prunes to just those parameters.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from jaxrlhf.infra import sharding as shd
from jaxrlhf.models import registry
from jaxrlhf.models.base import WeightSpec
from jaxrlhf.models.hf_files import WeightFiles, WeightLoadError, read_config, resolve_model_dir
from jaxrlhf.models.layers import LoRAConfig

# Parameters that may be absent from a checkpoint and are then freshly initialised.
_FRESH_OK = ("head", "lm_head", "lora_a", "lora_b")


@dataclasses.dataclass
class LoadedModel:
    model: nnx.Module
    family: ModuleType
    config: Any
    hf_config: dict
    model_dir: Path
    task: str
    initialised: list[str]  # parameters not found in the checkpoint, freshly initialised


def _find_key(files: WeightFiles, key: str, prefix: str) -> str | None:
    """The checkpoint key for `key`, allowing for a base-model prefix ("model.", "bert.") or its absence."""
    candidates = [key]
    if prefix and key.startswith(prefix):
        candidates.append(key[len(prefix):])
    elif prefix:
        candidates.append(prefix + key)
    return next((c for c in candidates if c in files), None)


def _read_spec(files: WeightFiles, spec: WeightSpec, prefix: str, expected_shape, np_dtype) -> np.ndarray | None:
    keys = [_find_key(files, k, prefix) for k in spec.hf_keys]
    if all(k is None for k in keys):
        return None
    if any(k is None for k in keys):
        missing = spec.hf_keys[keys.index(None)]
        raise WeightLoadError(f"{files.model_dir}: tensor {missing!r} is missing (other layers have it)")
    parts = []
    for key in keys:
        array = np.asarray(spec.to_flax(files.get(key)))
        parts.append(array)
    value = np.stack(parts) if spec.stacked else parts[0]
    if tuple(value.shape) != tuple(expected_shape):
        shown = keys[0] if len(keys) == 1 else f"{keys[0]} (x{len(keys)} layers)"
        raise WeightLoadError(f"{files.file_of(keys[0])}: tensor {shown!r} has shape {tuple(value.shape)} after "
                              f"mapping, the model expects {tuple(expected_shape)} (config.json does not match "
                              f"the weights?)")
    return value.astype(np_dtype)


def from_pretrained(name_or_path: str, task: str = "causal_lm", *, mesh: Mesh | None = None,
                    param_rules=shd.DEFAULT_PARAM_RULES, logical_to_mesh=None, dtype: Any = jnp.float32,
                    param_dtype: Any = jnp.float32, scan_layers: bool = True, remat: bool = False,
                    lora: LoRAConfig | None = None, seed: int = 0, revision: str | None = None,
                    config_overrides: dict | None = None, dropout: float = 0.0,
                    attention_dropout: float = 0.0, attention: str = "auto") -> LoadedModel:
    """Loads an HF directory, alias or hub id as a `task` model ("backbone", "causal_lm", "reward", "value").
    `attention`: the attention kernel (models.attention.IMPLEMENTATIONS)."""
    model_dir = resolve_model_dir(name_or_path, revision)
    hf_config = read_config(model_dir)
    hf_config.update(config_overrides or {})
    family = registry.family_for(hf_config["model_type"])
    try:
        cfg = family.Config.from_hf(hf_config)
    except (KeyError, TypeError, ValueError) as e:
        raise WeightLoadError(f"{model_dir / 'config.json'}: cannot read the {hf_config['model_type']} config "
                              f"({e})") from None
    files = WeightFiles(model_dir)
    mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])

    def create():
        return registry.build_model(family, cfg, task, rngs=nnx.Rngs(seed), dtype=dtype, param_dtype=param_dtype,
                                    scan_layers=scan_layers, remat=remat, lora=lora, dropout=dropout,
                                    attention_dropout=attention_dropout, attention=attention)

    graphdef, abstract_state = nnx.split(nnx.eval_shape(create))
    flat = dict(nnx.to_flat_state(abstract_state))
    shardings = shd.param_shardings({p: v.get_value().shape for p, v in flat.items()}, mesh, param_rules,
                                    logical_to_mesh)

    values: dict[tuple, jax.Array] = {}
    prefix = getattr(cfg, "hf_base_prefix", family.HF_BASE_PREFIX)  # RoBERTa shares BERT's module
    for spec in family.weight_specs(cfg, task):
        if spec.path not in flat:
            raise WeightLoadError(f"internal: {family.__name__}.weight_specs names unknown parameter {spec.path}")
        abstract = flat[spec.path].get_value()
        host = _read_spec(files, spec, prefix, abstract.shape, np.dtype(abstract.dtype))
        if host is not None:
            values[spec.path] = jax.make_array_from_callback(host.shape, shardings[spec.path], lambda i, h=host: h[i])

    fresh = [p for p in flat if p not in values]
    not_ok = [p for p in fresh if not any(part in _FRESH_OK for part in p)]
    if not_ok:
        names = ", ".join(shd.path_str(p) for p in not_ok[:5])
        raise WeightLoadError(f"{model_dir}: {len(not_ok)} backbone parameters not found in the weights "
                              f"(e.g. {names}); is this a {hf_config['model_type']} checkpoint?")
    if fresh:
        init = jax.jit(lambda: {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(create())) if p in fresh},
                       out_shardings={p: shardings[p] for p in fresh})
        values.update(init())

    state = nnx.from_flat_state([(p, v.replace(values[p])) for p, v in flat.items()])
    model = nnx.merge(graphdef, state)
    return LoadedModel(model, family, cfg, hf_config, model_dir, task, [shd.path_str(p) for p in fresh])


def load_tokenizer(model_dir: str | Path):
    """The directory's own tokenizer; decoders without a pad token pad with EOS."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
    except Exception as e:  # noqa: BLE001 (any tokenizer failure: one line, not a traceback)
        raise WeightLoadError(f"{model_dir}: cannot load the tokenizer ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok
