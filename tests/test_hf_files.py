"""Reading HF directories: safetensors (single, sharded, bfloat16) and clear errors for bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxrlhf.models.hf_files import SafetensorsFile, WeightFiles, WeightLoadError, read_config, resolve_model_dir


def test_reads_every_dtype_like_torch(tmp_path):
    tensors = {"f32": torch.randn(3, 4), "bf16": torch.randn(5, 2).to(torch.bfloat16),
               "f16": torch.randn(7).to(torch.float16), "i64": torch.arange(6).reshape(2, 3)}
    save_file(tensors, tmp_path / "model.safetensors")
    f = SafetensorsFile(tmp_path / "model.safetensors")
    for key, t in tensors.items():
        got = f.get(key)
        assert got.shape == tuple(t.shape)
        np.testing.assert_array_equal(got.astype(np.float64), t.to(torch.float64).numpy())


def test_sharded_index(tmp_path):
    save_file({"a": torch.ones(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(3)}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    files = WeightFiles(tmp_path)
    assert set(files.keys()) == {"a", "b"}
    np.testing.assert_array_equal(files.get("b"), np.zeros(3, np.float32))


def test_truncated_file_names_file(tmp_path):
    save_file({"w": torch.randn(64, 64)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightLoadError, match=r"model\.safetensors: corrupt safetensors file"):
        WeightFiles(tmp_path)


def test_garbage_file_names_file(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(WeightLoadError, match=r"model\.safetensors: corrupt"):
        WeightFiles(tmp_path)


def test_missing_weights_and_config(tmp_path):
    with pytest.raises(WeightLoadError, match=r"no model\.safetensors"):
        WeightFiles(tmp_path)
    with pytest.raises(WeightLoadError, match=r"config\.json missing"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(WeightLoadError, match=r"config\.json: invalid JSON"):
        read_config(tmp_path)


def test_missing_directory_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(WeightLoadError, match="model directory not found"):
        resolve_model_dir(str(tmp_path / "nope"))


def test_a_trainer_workdir_resolves_to_its_export(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "config.json").write_text("{}")
    assert resolve_model_dir(str(tmp_path)) == tmp_path / "export"
    (tmp_path / "config.json").write_text("{}")  # a model directory that happens to hold an export/ is itself
    assert resolve_model_dir(str(tmp_path)) == tmp_path


def test_index_pointing_at_missing_shard(tmp_path):
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(WeightLoadError, match=r"gone\.safetensors: listed in the safetensors index but missing"):
        WeightFiles(tmp_path).get("a")
