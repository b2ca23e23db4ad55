"""Load a trained reward model from an exported HF directory or from a training workdir."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections

from jaxrlhf.models.hf_files import WeightLoadError, is_hf_dir
from jaxrlhf.models.hub import LoadedModel, from_pretrained, load_tokenizer


def load_trained_rm(path: str, mesh=None) -> tuple[LoadedModel, object, dict]:
    """(loaded model, tokenizer, reward stats). `path` is an export dir or a train_rm workdir.

    For a workdir the model is rebuilt from its `run_config.json` and the parameters come from the
    newest complete checkpoint.
    """
    p = Path(path).expanduser()
    if is_hf_dir(p):
        loaded = from_pretrained(str(p), "reward", mesh=mesh)
        stats_file = p / "reward_stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        return loaded, load_tokenizer(p), stats
    run_config = p / "run_config.json"
    if not run_config.is_file():
        raise WeightLoadError(f"{p}: neither an exported model (config.json) nor a train_rm workdir "
                              f"(run_config.json + checkpoints/)")
    import jax
    from flax import nnx

    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.infra.checkpoint import Checkpointer
    from jaxrlhf.train_rm import load_reward_model
    from jaxrlhf.training.trainable import split_trainable

    config = ml_collections.ConfigDict(json.loads(run_config.read_text()))
    mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])
    loaded = load_reward_model(config, mesh)
    ckpt = Checkpointer(p / "checkpoints")
    if ckpt.latest_step() is None:
        raise WeightLoadError(f"{p / 'checkpoints'}: no complete checkpoint")
    graphdef, trainable, frozen = split_trainable(loaded.model, config.model.train_mode)
    # Only the parameters are needed; the optimiser state in the checkpoint is restored as stored.
    restored, _, _ = ckpt.restore_params(trainable)
    ckpt.close()
    loaded.model = nnx.merge(graphdef, restored, frozen)
    return loaded, load_tokenizer(loaded.model_dir), {}


def use_distinct_pad(loaded: LoadedModel, tokenizer) -> None:
    """Decoder RMs read the reward at the final EOS. HF sequence classifiers find the last token as the
    last one that is not the pad id, so an export whose pad id equals EOS would be scored one token
    early in `transformers`. Pad with another special token (ours masks padding either way)."""
    import dataclasses

    if not loaded.family.IS_DECODER or tokenizer.eos_token_id is None or tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    for candidate in (tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            break
    if tokenizer.pad_token_id != tokenizer.eos_token_id and hasattr(loaded.config, "pad_token_id"):
        loaded.config = dataclasses.replace(loaded.config, pad_token_id=tokenizer.pad_token_id)
