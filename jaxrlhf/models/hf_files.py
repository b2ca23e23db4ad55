"""Finding and reading an HF model directory: config.json and (sharded) safetensors.

Tensors are memory-mapped, so a tensor is read from disk only when it is placed on devices. We parse
the safetensors header ourselves because the `safetensors` numpy backend cannot return bfloat16,
the dtype most current checkpoints ship in; `ml_dtypes` gives NumPy that dtype.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from jaxrlhf.models.asset_registry import resolve_model_path


class WeightLoadError(ValueError):
    """A model directory or weight file that cannot be used; the message names the file."""


_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "merges.txt", "vocab.*"]


def resolve_model_dir(name_or_path: str, revision: str | None = None) -> Path:
    """A local directory, a trainer's workdir (its `export/`), a short asset alias ("minilm", "smollm2"), or a
    Hugging Face hub id."""
    name_or_path = resolve_model_path(str(name_or_path))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and (path / "export" / "config.json").is_file():
            return path / "export"
        return path
    looks_local = path.exists() or str(name_or_path).startswith(("/", ".", "~")) or str(name_or_path).count("/") > 1
    if looks_local:
        raise WeightLoadError(f"{name_or_path}: model directory not found")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=str(name_or_path), revision=revision, allow_patterns=HUB_PATTERNS))
    except Exception as e:  # noqa: BLE001 (network, auth, unknown repo: one line, not a traceback)
        raise WeightLoadError(f"{name_or_path}: not a local directory and could not be fetched from the "
                              f"Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise WeightLoadError(f"{path}: config.json missing")
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise WeightLoadError(f"{path}: invalid JSON ({e})") from None
    if "model_type" not in cfg:
        raise WeightLoadError(f"{path}: no 'model_type' field, cannot tell the architecture")
    return cfg


class SafetensorsFile:
    """One .safetensors file, memory-mapped; `get(key)` returns a NumPy view."""

    def __init__(self, path: Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        try:
            with open(self.path, "rb") as f:
                (header_len,) = struct.unpack("<Q", f.read(8))
                if header_len <= 0 or 8 + header_len > size:
                    raise ValueError(f"header length {header_len} does not fit in {size} bytes")
                header = json.loads(f.read(header_len))
        except (struct.error, ValueError, UnicodeDecodeError) as e:
            raise WeightLoadError(f"{self.path}: corrupt safetensors file ({e})") from None
        header.pop("__metadata__", None)
        self._data_start = 8 + header_len
        self._entries = header
        for key, entry in header.items():
            begin, end = entry["data_offsets"]
            if entry["dtype"] not in _DTYPES:
                raise WeightLoadError(f"{self.path}: tensor {key!r} has unsupported dtype {entry['dtype']}")
            expected = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(_DTYPES[entry["dtype"]]).itemsize
            if end - begin != expected or self._data_start + end > size:
                raise WeightLoadError(f"{self.path}: corrupt safetensors file (tensor {key!r} is truncated "
                                      f"or its size does not match its shape)")
        self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r") if size else None

    def keys(self):
        return self._entries.keys()

    def get(self, key: str) -> np.ndarray:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        raw = self._mmap[self._data_start + begin:self._data_start + end]
        return raw.view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


class WeightFiles:
    """All weights of a model directory: model.safetensors or a sharded index."""

    def __init__(self, model_dir: Path):
        self.model_dir = Path(model_dir)
        index = self.model_dir / "model.safetensors.index.json"
        single = self.model_dir / "model.safetensors"
        self._files: dict[str, SafetensorsFile] = {}
        self._key_to_file: dict[str, str] = {}
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise WeightLoadError(f"{index}: invalid safetensors index ({e})") from None
            self._key_to_file = dict(weight_map)
        elif single.is_file():
            self._files[single.name] = SafetensorsFile(single)
            self._key_to_file = {k: single.name for k in self._files[single.name].keys()}
        else:
            found = sorted(p.name for p in self.model_dir.iterdir())
            raise WeightLoadError(f"{self.model_dir}: no model.safetensors or model.safetensors.index.json "
                                  f"(found: {', '.join(found[:10]) or 'nothing'})")

    def __contains__(self, key: str) -> bool:
        return key in self._key_to_file

    def keys(self):
        return self._key_to_file.keys()

    def file_of(self, key: str) -> Path:
        return self.model_dir / self._key_to_file[key]

    def get(self, key: str) -> np.ndarray:
        name = self._key_to_file[key]
        if name not in self._files:
            path = self.model_dir / name
            if not path.is_file():
                raise WeightLoadError(f"{path}: listed in the safetensors index but missing")
            self._files[name] = SafetensorsFile(path)
        return self._files[name].get(key)


def is_hf_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / "config.json").is_file()
