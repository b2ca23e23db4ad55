"""Load a trained reward model from an exported HF directory or from a training workdir."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import ml_collections

from jaxrlhf.models.hf_files import WeightLoadError, is_hf_dir
from jaxrlhf.models.hub import LoadedModel, from_pretrained, load_tokenizer
from jaxrlhf.rm.scoring import SPEC_FILE, RewardScorer, ScoringSpec


@dataclasses.dataclass
class TrainedRM:
    """A reward model with what it was trained as: `spec` (how to feed it) and `stats` (reward moments)."""

    loaded: LoadedModel
    tokenizer: Any
    stats: dict
    spec: ScoringSpec

    def scorer(self, max_length: int = 512, batch_size: int = 16) -> RewardScorer:
        return RewardScorer(self.loaded.model, self.tokenizer, self.spec, is_decoder=self.loaded.family.IS_DECODER,
                            max_length=max_length, batch_size=batch_size)


def load_reward_model(config, mesh) -> LoadedModel:
    """`config.model` as a reward model (scalar head) on `mesh`: what train_rm trains."""
    from jaxrlhf.training.run_setup import load_model

    return load_model(config, mesh, "reward")


def reward_stats(train_summary: dict, spec: ScoringSpec) -> dict:
    """What PPO needs to normalise this model's rewards (`reward_stats.json`): their mean and std on training
    data, of the quantity every consumer scores (reward / length with `loss.length_normalise`), and how many
    rewards they came from (`n_rewards`; `n_pairs` is the pairs, lists' pairs or rated responses compared)."""
    keys = ("reward_mean", "reward_std", "n", "n_rewards", "accuracy")
    stats = {("n_pairs" if k == "n" else "train_accuracy" if k == "accuracy" else k): train_summary[k]
             for k in keys if k in train_summary}
    return dict(stats, length_normalised=spec.length_normalise)


def _stats(directory: Path) -> dict:
    stats_file = directory / "reward_stats.json"
    return json.loads(stats_file.read_text()) if stats_file.is_file() else {}


def load_trained_rm(path: str, mesh=None, *, dtype: str = "float32", param_dtype: str = "float32") -> TrainedRM:
    """`path` is an export dir or a train_rm workdir.

    For a workdir the model is rebuilt from its `run_config.json` and the parameters come from the
    newest complete checkpoint; its spec and stats are the ones train_rm wrote beside them. The model
    computes in `dtype` with every weight stored in `param_dtype` (names as `model.dtype` and
    `model.frozen_dtype` take them: "auto" allowed); it is for scoring, so nothing of it trains.
    """
    from jaxrlhf.infra.precision import cast_frozen, compute_dtype, storage_dtype

    compute = compute_dtype(dtype)
    storage = storage_dtype(param_dtype, compute)
    p = Path(path).expanduser()
    if is_hf_dir(p):
        loaded = from_pretrained(str(p), "reward", mesh=mesh, dtype=compute, param_dtype=storage)
        return TrainedRM(loaded, load_tokenizer(p), _stats(p), ScoringSpec.read(p, loaded.family.IS_DECODER))
    run_config = p / "run_config.json"
    if not run_config.is_file():
        raise WeightLoadError(f"{p}: neither an exported model (config.json) nor a train_rm workdir "
                              f"(run_config.json + checkpoints/)")
    import jax
    from flax import nnx

    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.training.run_setup import restore_trained_params

    config = ml_collections.ConfigDict(json.loads(run_config.read_text()))
    config.model.dtype, config.model.param_dtype = dtype, "float32"  # the checkpoint's masters restore as saved
    mesh = mesh if mesh is not None else shd.make_mesh(devices=jax.devices()[:1])
    loaded = load_reward_model(config, mesh)
    loaded.model = restore_trained_params(loaded.model, config.model, p / "checkpoints")
    cast_frozen(loaded.model, nnx.Nothing, storage)
    tokenizer = load_tokenizer(loaded.model_dir)
    use_distinct_pad(loaded, tokenizer)  # as train_rm padded it
    spec = ScoringSpec.read(p, loaded.family.IS_DECODER)
    if not (p / SPEC_FILE).is_file():  # a workdir from before the spec file: its config still says this much
        spec = dataclasses.replace(spec, length_normalise=bool(config.loss.get("length_normalise", False)),
                                   append_eos=bool(config.data.get("append_eos", True)) and loaded.family.IS_DECODER)
    return TrainedRM(loaded, tokenizer, _stats(p), spec)


def use_distinct_pad(loaded: LoadedModel, tokenizer) -> None:
    """Decoder RMs read the reward at the final EOS. HF sequence classifiers find the last token as the
    last one that is not the pad id, so an export whose pad id equals EOS would be scored one token
    early in `transformers`. Pad with another special token (ours masks padding either way)."""
    import dataclasses

    eos = tokenizer.eos_token_id
    if not loaded.family.IS_DECODER or eos is None or tokenizer.pad_token_id != eos:
        return
    for candidate in (tokenizer.unk_token, tokenizer.bos_token):
        if candidate is not None and candidate != tokenizer.eos_token:
            tokenizer.pad_token = candidate
            break
    if tokenizer.pad_token_id != tokenizer.eos_token_id and hasattr(loaded.config, "pad_token_id"):
        loaded.config = dataclasses.replace(loaded.config, pad_token_id=tokenizer.pad_token_id)
