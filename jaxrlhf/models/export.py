"""Export a model back to an HF directory that `transformers` loads.

LoRA adapters are merged into the kernels first (on a copy, the live model keeps its adapters). The
same `weight_specs` table the importer reads is walked backwards, so a name mapping cannot drift
between import and export. Only process 0 writes; every process takes part in gathering shards.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from jaxrlhf.infra.multihost import barrier, to_host
from jaxrlhf.models.layers import Linear


def merged_copy(model: nnx.Module) -> nnx.Module:
    """A copy of `model` with every LoRA adapter folded into its kernel."""
    model = nnx.clone(model)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, Linear):
            module.merge_lora()
    return model


def hf_state_dict(model: nnx.Module, family: ModuleType, cfg: Any, task: str) -> dict[str, np.ndarray]:
    flat = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(merged_copy(model), nnx.Param))}
    tensors: dict[str, np.ndarray] = {}
    for spec in family.weight_specs(cfg, task):
        value = np.asarray(to_host(flat[spec.path]), np.float32)
        parts = list(value) if spec.stacked else [value]
        for key, part in zip(spec.hf_keys, parts):
            tensors[key] = np.ascontiguousarray(spec.to_hf(part))
    return tensors


def export_hf(model: nnx.Module, family: ModuleType, cfg: Any, task: str, out_dir: str | os.PathLike,
              tokenizer=None, extra_json: dict[str, dict] | None = None) -> Path:
    """Writes config.json, model.safetensors, tokenizer files and `extra_json` files into out_dir.

    Written into a temporary sibling folder and renamed, so a crash never leaves a half export.
    """
    out_dir = Path(out_dir)
    tensors = hf_state_dict(model, family, cfg, task)
    if jax.process_index() == 0:
        _write(out_dir, tensors, cfg, task, tokenizer, extra_json)
    barrier("export_hf")  # no process reads the export before process 0 has written it
    return out_dir


def _write(out_dir: Path, tensors: dict, cfg: Any, task: str, tokenizer, extra_json: dict | None) -> None:
    """A write that fails (disk full, quota, permissions) is one OSError naming the file and the cause; the
    temporary folder goes, and an earlier export in `out_dir` stays as it was."""
    tmp = old = None
    current = out_dir.parent
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        current = tmp / "model.safetensors"
        save_file(tensors, str(current), metadata={"format": "pt"})
        current = tmp / "config.json"
        current.write_text(json.dumps(cfg.to_hf(task), indent=2))
        if tokenizer is not None:
            current = tmp / "tokenizer files"
            tokenizer.save_pretrained(str(tmp))
        for name, content in (extra_json or {}).items():
            current = tmp / name
            current.write_text(json.dumps(content, indent=2))
        current = out_dir
        old = out_dir.with_name(f".{out_dir.name}.replaced") if out_dir.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)  # renames need no space: the earlier export stays until the new one is in
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except Exception as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not out_dir.exists():
            os.replace(old, out_dir)
        if not (isinstance(e, OSError) or "os error" in str(e).lower()):  # safetensors' error wraps the OS's
            raise  # not a write failure: keep its traceback
        raise _export_error(out_dir, current, e) from None


def _export_error(out_dir: Path, current: Path, e: Exception) -> OSError:
    errno_ = getattr(e, "errno", None)
    code = re.search(r"os error (\d+)", str(e))
    if errno_ is None and code:
        errno_ = int(code.group(1))
    cause = os.strerror(errno_) if errno_ else " ".join(str(e).split())[:200]
    if getattr(e, "filename", None):
        current = Path(e.filename)
    name = current.name if current.parent != out_dir.parent else current
    err = OSError(f"export to {out_dir} failed: cannot write {name}: {cause}")
    err.errno = errno_
    return err
