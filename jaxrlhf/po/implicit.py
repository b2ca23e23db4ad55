"""A preference-optimised policy read as a reward model: the implicit reward `beta * (log p - log p_ref)` of a
response, summed over its tokens (SimPO's: `beta * log p / length`, no reference), from an export or a
train_dpo workdir, for `eval_rm --reference` and anything else that scores with it. `evaluate_implicit` is
what eval_rm prints for a policy: the reward model's summary of a comparison file."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from jaxrlhf.data.tokenize import special_tokens
from jaxrlhf.infra import sharding as shd
from jaxrlhf.models.hf_files import WeightLoadError, is_hf_dir
from jaxrlhf.models.hub import from_pretrained, load_tokenizer
from jaxrlhf.ops.preference import response_mask
from jaxrlhf.po.setup import PREFERENCE_FILE
from jaxrlhf.rm.evaluate_file import load_kwargs, summarise_file
from jaxrlhf.training.run_setup import load_model, restore_trained_params


@dataclasses.dataclass
class Policy:
    model: nnx.Module
    tokenizer: Any
    note: dict  # preference.json: loss_type, beta, reference, reference_free ({} when absent)


def load_policy(path: str, mesh) -> Policy:
    """An exported causal LM (with the `preference.json` train_dpo writes, if any) or a train_dpo workdir
    (the model of its `run_config.json` with the newest checkpoint's parameters), float32, on `mesh`."""
    p = Path(path).expanduser()
    if is_hf_dir(p):
        note = json.loads((p / PREFERENCE_FILE).read_text()) if (p / PREFERENCE_FILE).is_file() else {}
        return Policy(from_pretrained(str(p), "causal_lm", mesh=mesh).model, load_tokenizer(p), note)
    if not (p / "run_config.json").is_file():
        raise WeightLoadError(f"{p}: neither an exported model (config.json) nor a train_dpo workdir "
                              f"(run_config.json + checkpoints/)")
    config = ml_collections.ConfigDict(json.loads((p / "run_config.json").read_text()))
    if "beta" not in config.get("loss", {}):
        raise WeightLoadError(f"{p}: a workdir of another trainer than train_dpo (its run_config.json has no "
                              f"loss.beta); pass its export/ folder or a train_dpo workdir")
    config.model.dtype, config.model.param_dtype = "float32", "float32"
    loaded = load_model(config, mesh, "causal_lm")
    model = restore_trained_params(loaded.model, config.model, p / "checkpoints")
    loss = config.loss
    note = {"loss_type": loss.type, "beta": loss.beta, "reference": config.reference or config.model.name,
            "reference_free": bool(loss.reference_free) or loss.type == "simpo",
            "append_eos": bool(config.data.append_eos)}
    return Policy(model, load_tokenizer(loaded.model_dir), note)


def make_implicit_reward_fn(policy_def, ref_def, *, beta: float, length_normalise: bool = False,
                            suffix_len: int = 0, chunk_size: int = 128) -> Callable:
    """reward(policy_state, ref_state, ids_BxT, mask_BxT, response_len_B) -> float32 [B]; `ref_def` None:
    reference-free. `length_normalise`: divide the log-probs by the response length first (SimPO)."""

    def reward(policy_state, ref_state, ids, mask, length):
        scored = response_mask(mask, length, suffix_len)
        logp, tokens = nnx.merge(policy_def, policy_state).sequence_logprobs(ids, mask, scored, chunk_size=chunk_size)
        if ref_def is not None:
            logp = logp - nnx.merge(ref_def, ref_state).sequence_logprobs(ids, mask, scored, chunk_size=chunk_size)[0]
        return beta * (logp / jnp.maximum(tokens, 1.0) if length_normalise else logp)

    return reward


def is_preference_policy(model_path: str) -> bool:
    """A train_dpo export (its preference.json) or workdir (loss.beta in its run_config.json)."""
    p = Path(model_path).expanduser()
    if is_hf_dir(p):
        return (p / PREFERENCE_FILE).is_file()
    run_config = p / "run_config.json"
    return run_config.is_file() and '"beta"' in run_config.read_text()


def evaluate_implicit(model_path: str, data: str, *, reference: str | None = None, beta: float | None = None,
                      fmt: str = "auto", max_length: int = 256, batch_size: int = 32, limit: int = 0) -> dict:
    """The reward-model summary of a policy's implicit rewards beta * (log p - log p_ref) on `data`."""
    mesh = shd.make_mesh()
    policy = load_policy(model_path, mesh)
    note = policy.note
    beta = beta if beta is not None else note.get("beta")
    if beta is None:
        raise ValueError(f"--beta: {model_path} does not say which beta it was trained with (no {PREFERENCE_FILE}); "
                         "pass it")
    if beta <= 0:
        raise ValueError(f"--beta={beta} must be > 0 (the implicit reward is beta * log-ratio)")
    reference = reference or (None if note.get("reference_free") else note.get("reference"))
    if not reference and not note.get("reference_free"):
        raise ValueError("--reference: the model the policy was optimised against (an HF dir, hub id or alias)")
    policy_def, policy_state = nnx.split(policy.model)
    ref_def, ref_state = None, nnx.State({})
    if reference:
        ref_model = from_pretrained(reference, "causal_lm", mesh=mesh)
        if load_tokenizer(ref_model.model_dir).get_vocab() != policy.tokenizer.get_vocab():
            raise ValueError(f"--reference={reference} has another vocabulary than {model_path}: the implicit "
                             f"reward compares log-probs of the same token ids")
        ref_def, ref_state = nnx.split(ref_model.model)
    append_eos = bool(note.get("append_eos", True))
    reward = jax.jit(make_implicit_reward_fn(policy_def, ref_def, beta=float(beta),
                                             length_normalise=note.get("loss_type") == "simpo",
                                             suffix_len=len(special_tokens(policy.tokenizer, append_eos).suffix)))
    reward_fn = lambda ids, mask, length: reward(policy_state, ref_state, ids, mask, length)
    pair_fn = lambda b: (reward_fn(b["chosen_ids_BxT"], b["chosen_mask_BxT"], b["chosen_len_B"]),
                         reward_fn(b["rejected_ids_BxT"], b["rejected_mask_BxT"], b["rejected_len_B"]))
    summary = summarise_file(data, policy.tokenizer, max_length, batch_size, append_eos, pair_fn, reward_fn, mesh,
                             load_kwargs(fmt, limit), shared_prompt=True)
    summary["implicit_reward"] = {"beta": float(beta), "reference": reference}
    return summary
