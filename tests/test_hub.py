"""The importer and exporter end to end against `transformers` PyTorch models saved as HF directories."""

import json

import jax
import numpy as np
import pytest
import torch
import transformers

from jaxrlhf.models.export import export_hf
from jaxrlhf.models.hf_files import WeightLoadError
from jaxrlhf.models.hub import from_pretrained
from jaxrlhf.models.registry import UnknownArchitectureError
from tests.helpers.models import tiny_bert_config, tiny_gpt2_config, tiny_llama_config

torch.manual_seed(0)


def batch(B=3, T=9, vocab=97, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab, (B, T)).astype(np.int32)
    mask = np.ones((B, T), np.int32)
    mask[1, 6:] = 0  # right padding
    ids[1, 6:] = 0
    return ids, mask


def torch_logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()


@pytest.mark.parametrize("make_cfg,cls", [
    (tiny_llama_config, transformers.LlamaForCausalLM),
    (lambda: tiny_llama_config(tie_word_embeddings=True), transformers.LlamaForCausalLM),
    (tiny_gpt2_config, transformers.GPT2LMHeadModel)])
def test_causal_lm_import_matches_torch(tmp_path, make_cfg, cls):
    ref = cls(make_cfg()).eval()
    ref.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path), "causal_lm")
    assert loaded.initialised == []
    ids, mask = batch()
    logits, _ = loaded.model(ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], torch_logits(ref, ids, mask)[real], atol=1e-4)


def test_sharded_checkpoint(tmp_path):
    ref = transformers.LlamaForCausalLM(tiny_llama_config()).eval()
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    loaded = from_pretrained(str(tmp_path), "causal_lm")
    ids, mask = batch()
    np.testing.assert_allclose(np.asarray(loaded.model(ids, mask)[0])[mask > 0],
                               torch_logits(ref, ids, mask)[mask > 0], atol=1e-4)


def test_sequence_classification_checkpoint_imports_into_reward_head(tmp_path):
    ref = transformers.LlamaForSequenceClassification(tiny_llama_config(num_labels=1)).eval()
    ref.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path), "reward")
    assert loaded.initialised == []
    ids, mask = batch()
    expected = torch_logits(ref, ids, mask)[:, 0]
    np.testing.assert_allclose(np.asarray(loaded.model(ids, mask)), expected, atol=1e-4)


def test_base_checkpoint_gets_a_fresh_reward_head(tmp_path):
    transformers.LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path), "reward")
    assert loaded.initialised == ["head/out/kernel"]
    rewards = np.asarray(loaded.model(*batch()))
    assert rewards.shape == (3,) and np.all(np.isfinite(rewards))


@pytest.mark.parametrize("task,cls", [("causal_lm", transformers.AutoModelForCausalLM),
                                      ("reward", transformers.AutoModelForSequenceClassification)])
def test_export_round_trip(tmp_path, task, cls):
    transformers.LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "src")
    loaded = from_pretrained(str(tmp_path / "src"), task, seed=3)
    export_hf(loaded.model, loaded.family, loaded.config, task, tmp_path / "out")
    back = cls.from_pretrained(tmp_path / "out").eval()
    ids, mask = batch()
    ours = loaded.model(ids, mask)
    ours = np.asarray(ours[0] if task == "causal_lm" else ours)
    theirs = torch_logits(back, ids, mask)
    if task == "reward":
        np.testing.assert_allclose(ours, theirs[:, 0], atol=1e-4)
    else:
        np.testing.assert_allclose(ours[mask > 0], theirs[mask > 0], atol=1e-4)


def test_export_merges_lora(tmp_path):
    from flax import nnx

    from jaxrlhf.models.layers import LoRAConfig, LoRAParam

    transformers.LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "src")
    loaded = from_pretrained(str(tmp_path / "src"), "causal_lm", lora=LoRAConfig(4, 8.0, 0.0, "q_proj|v_proj"))
    assert any("lora_a" in p for p in loaded.initialised)
    # give the adapters non-zero B so the merge matters
    lora_state = nnx.state(loaded.model, LoRAParam)
    nnx.update(loaded.model, jax.tree_util.tree_map(lambda x: x + 0.05, lora_state))
    export_hf(loaded.model, loaded.family, loaded.config, "causal_lm", tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    ids, mask = batch()
    np.testing.assert_allclose(np.asarray(loaded.model(ids, mask)[0])[mask > 0],
                               torch_logits(back, ids, mask)[mask > 0], atol=1e-4)


def test_unknown_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    with pytest.raises(UnknownArchitectureError, match="mamba"):
        from_pretrained(str(tmp_path))


def test_shape_mismatch_names_file_and_tensor(tmp_path):
    transformers.LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    bad_shape = r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.\w+_proj\.weight.*shape"
    with pytest.raises(WeightLoadError, match=bad_shape):
        from_pretrained(str(tmp_path))


def test_wrong_checkpoint_family(tmp_path):
    transformers.GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.update(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, vocab_size=97)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(WeightLoadError, match="not found in the weights"):
        from_pretrained(str(tmp_path))


@pytest.mark.parametrize("save_cls,task", [(transformers.RobertaModel, "reward"),
                                           (transformers.RobertaForSequenceClassification, "backbone"),
                                           (transformers.BertModel, "reward")])
def test_encoder_checkpoints_load_across_tasks(tmp_path, save_cls, task):
    """A bare encoder loads as a reward model (fresh head) and a classifier loads as a bare backbone."""
    is_roberta = "Roberta" in save_cls.__name__
    cfg = tiny_bert_config("roberta" if is_roberta else "bert", max_position_embeddings=80, num_labels=1,
                           pad_token_id=1)
    ref = save_cls(cfg).eval()
    ref.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path), task)
    assert all(p.startswith("head/") for p in loaded.initialised)
    ids, mask = batch()
    ids = np.where(mask > 0, np.maximum(ids, 2), 1)  # RoBERTa positions in HF come from ids != pad (1)
    hidden_ref = (ref.roberta if hasattr(ref, "roberta") else ref)
    with torch.no_grad():
        expected = hidden_ref(input_ids=torch.tensor(ids, dtype=torch.long),
                              attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    backbone = loaded.model if task == "backbone" else loaded.model.backbone
    hidden, _ = backbone(ids, mask)
    np.testing.assert_allclose(np.asarray(hidden)[mask > 0], expected[mask > 0], atol=1e-4)
