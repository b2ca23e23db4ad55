"""What the GGUF exporter reads: a causal decoder's HF tensors, LoRA merged, and the cheap refusals first.

`--model` may be an exported HF directory (what `models.export` writes), a trainer workdir holding one in
`export/`, an asset alias, a hub id, or a PEFT LoRA adapter directory (`adapter_config.json`: its base is
loaded and `W + alpha/r * B @ A` folded in). Weights go through the same importer and `weight_specs`
table as every other load (`hub.from_pretrained` then `export.hf_state_dict`, which merges any LoRA the
model carries), so the names reaching the GGUF table are the canonical HF ones whatever the checkpoint's
spelling. Reward models, critics and encoders are refused from config.json alone, before any weight
is read: llama.cpp runs language models, and a scalar head has no GGUF form.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import numpy as np

from jaxrlhf.models import registry
from jaxrlhf.models.hf_files import SafetensorsFile, read_config, resolve_model_dir

ADAPTER_CONFIG = "adapter_config.json"
_REWARD_SPEC = "reward_model.json"  # rm.scoring.SPEC_FILE (a layer up): written beside every RM export
_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[\w-]+)?\.weight$")


@dataclasses.dataclass
class Source:
    model_dir: Path            # where the weights came from (the base model, for an adapter)
    tokenizer_dir: Path        # the adapter's own tokenizer files when it has them, else the model's
    hf_config: dict
    config: object             # the family's Config (e.g. llama.Config)
    tensors: dict[str, np.ndarray]  # canonical HF names, float32, LoRA merged


def resolve(name_or_path: str) -> Path:
    """The directory to export: an alias/hub id resolved, a trainer workdir's `export/` taken."""
    path = resolve_model_dir(name_or_path)
    if not (path / "config.json").is_file() and not (path / ADAPTER_CONFIG).is_file() \
            and (path / "export" / "config.json").is_file():
        return path / "export"
    return path


def check_causal_lm(model_dir: Path, hf_config: dict, supported: tuple[str, ...]) -> None:
    """Refuses (ValueError, one line) what llama.cpp cannot run as a language model."""
    heads = [str(a) for a in hf_config.get("architectures") or []
             if str(a).endswith(("ForSequenceClassification", "ForTokenClassification"))]
    if heads or (model_dir / _REWARD_SPEC).is_file():
        raise ValueError(f"{model_dir} is a reward model or critic ({', '.join(heads) or _REWARD_SPEC}): only "
                         f"causal language models convert to GGUF")
    family = registry.family_for(hf_config["model_type"])
    if not family.IS_DECODER:
        raise ValueError(f"{model_dir} is a {hf_config['model_type']} encoder: GGUF export is for the decoders "
                         f"llama.cpp runs")
    if hf_config["model_type"] not in supported:
        raise ValueError(f"{model_dir}: no GGUF tensor table for model_type {hf_config['model_type']!r} yet "
                         f"(supported: {', '.join(supported)})")


def _has_tokenizer(d: Path) -> bool:
    return any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json"))


def describe(name_or_path: str, supported: tuple[str, ...]) -> tuple[Path, Path, Path | None, dict]:
    """(model dir, tokenizer dir, adapter dir or None, config.json) with the refusals done; no weights read."""
    path = resolve(name_or_path)
    adapter = None
    if (path / ADAPTER_CONFIG).is_file():
        adapter = path
        base = _adapter_config(path).get("base_model_name_or_path")
        if not base:
            raise ValueError(f"{path / ADAPTER_CONFIG}: no base_model_name_or_path, cannot tell what to merge into")
        local = path / base
        path = resolve(str(local) if local.is_dir() else base)
    hf_config = read_config(path)
    check_causal_lm(path, hf_config, supported)
    tok_dir = adapter if adapter is not None and _has_tokenizer(adapter) else path
    return path, tok_dir, adapter, hf_config


def load(model_dir: Path, tokenizer_dir: Path, adapter: Path | None, hf_config: dict) -> Source:
    """The float32 HF tensors of the causal LM in `model_dir`, with `adapter` (a PEFT LoRA dir) merged."""
    from jaxrlhf.models.export import hf_state_dict
    from jaxrlhf.models.hub import from_pretrained

    lm = from_pretrained(str(model_dir), "causal_lm")
    if lm.initialised:  # e.g. an untied lm_head missing: a fresh random head is no model to ship
        raise ValueError(f"{model_dir}: {', '.join(lm.initialised[:3])} not in the checkpoint")
    tensors = hf_state_dict(lm.model, lm.family, lm.config, "causal_lm")  # merges LoRA the model carries
    if adapter is not None:
        merge_peft_lora(adapter, tensors)
    return Source(model_dir, tokenizer_dir, hf_config, lm.config, tensors)


def _adapter_config(adapter: Path) -> dict:
    path = adapter / ADAPTER_CONFIG
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def merge_peft_lora(adapter: Path, tensors: dict[str, np.ndarray]) -> None:
    """Folds a PEFT LoRA adapter into `tensors` (in place): W += alpha/r * B @ A (alpha/sqrt(r) for rsLoRA).

    Only plain LoRA on linear layers; DoRA, per-module ranks, embedding adapters and `modules_to_save`
    are refused rather than half merged."""
    cfg = _adapter_config(adapter)
    where = adapter / ADAPTER_CONFIG
    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise ValueError(f"{where}: peft_type {cfg.get('peft_type')!r} is not LoRA")
    for key in ("use_dora", "rank_pattern", "alpha_pattern", "modules_to_save", "fan_in_fan_out"):
        if cfg.get(key):
            raise ValueError(f"{where}: {key} is not supported by the GGUF export's LoRA merge")
    r, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
    path = adapter / "adapter_model.safetensors"
    if not path.is_file():
        raise ValueError(f"{adapter}: no adapter_model.safetensors")
    weights = SafetensorsFile(path)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key in weights.keys():
        m = _LORA_KEY.match(key)
        if m is None:
            raise ValueError(f"{path}: tensor {key!r} is not a LoRA A/B matrix (only plain LoRA merges)")
        pairs.setdefault(m.group(1), {})[m.group(2)] = np.asarray(weights.get(key), np.float32)
    for module, ab in pairs.items():
        target = module + ".weight"
        if target not in tensors or set(ab) != {"A", "B"}:
            raise ValueError(f"{path}: LoRA for {module!r} does not match the base model")
        delta = scale * (ab["B"] @ ab["A"])
        if delta.shape != tensors[target].shape:
            raise ValueError(f"{path}: LoRA for {module!r} has shape {delta.shape}, the weight "
                             f"{tensors[target].shape}")
        tensors[target] = tensors[target] + delta
