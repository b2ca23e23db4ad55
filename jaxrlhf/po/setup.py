"""What `train_dpo` builds around its step: the loss options checked, the reference chosen and loaded, the
window of step metrics turned into log lines, the note an export carries for `eval_rm --reference`."""

from __future__ import annotations

import dataclasses
from typing import Any

from flax import nnx

from jaxrlhf.models.hub import load_tokenizer
from jaxrlhf.training.loop import host_scalar
from jaxrlhf.training.run_setup import load_block
from jaxrlhf.training.trainable import base_is_reference

PREFERENCE_FILE = "preference.json"  # in an export: beta, loss type and reference, for eval_rm --reference


def check_loss(loss) -> None:
    """One-line errors for loss options no run can use."""
    if not loss.beta > 0:
        raise ValueError(f"loss.beta={loss.beta} must be positive (the implicit reward is beta * log-ratio)")
    if not 0.0 <= loss.label_smoothing < 0.5:
        raise ValueError(f"loss.label_smoothing={loss.label_smoothing} must be in [0, 0.5)")
    if loss.label_smoothing and loss.type not in ("sigmoid", "robust", "simpo"):
        raise ValueError(f"loss.label_smoothing applies to sigmoid, robust and simpo, not loss.type={loss.type}")
    if loss.type == "robust" and not loss.label_smoothing:
        raise ValueError("loss.type=robust needs loss.label_smoothing > 0 (the label-noise rate it corrects for)")
    if loss.sft_weight < 0:
        raise ValueError(f"loss.sft_weight={loss.sft_weight} must be >= 0")
    if loss.sft_weight and loss.type in ("listwise", "kto"):
        raise ValueError(f"loss.sft_weight is an extra term on pairs' chosen responses; loss.type={loss.type} "
                         "has no pairs")
    if loss.kto_desirable_weight <= 0 or loss.kto_undesirable_weight <= 0:
        raise ValueError("loss.kto_desirable_weight and loss.kto_undesirable_weight must be positive")
    if loss.chunk_size <= 0:
        raise ValueError(f"loss.chunk_size={loss.chunk_size} must be positive")


@dataclasses.dataclass
class Reference:
    kind: str                 # none | adapters_off | model (po.step.REFERENCES)
    name: str                 # what it is, for the log and the cache's fingerprint
    graphdef: Any = None      # kind == model
    state: Any = ()

    def describe(self) -> str:
        return {"none": "none (reference-free)", "adapters_off": f"{self.name} (the policy, LoRA adapters off)",
                "model": f"{self.name} (a frozen copy)"}[self.kind]


def load_reference(config, mesh, tokenizer) -> Reference:
    loss = config.loss
    if loss.reference_free or loss.type == "simpo":
        return Reference("none", "none")
    name = config.reference or config.model.name
    if base_is_reference(config.model, config.reference):
        return Reference("adapters_off", name)
    loaded = load_block(config.model, name, "causal_lm", mesh, config.seed, lora=False, trains=False)
    if config.reference and config.reference != config.model.name:
        if load_tokenizer(loaded.model_dir).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"reference={config.reference} has another vocabulary than model.name="
                             f"{config.model.name}: DPO compares the log-probs both give the same token ids")
    graphdef, state = nnx.split(loaded.model)
    return Reference("model", name, graphdef, state)


def preference_json(config, ref: Reference) -> dict:
    return {"loss_type": config.loss.type, "beta": config.loss.beta, "reference": ref.name,
            "reference_free": ref.kind == "none", "append_eos": bool(config.data.append_eos)}


def summarise(window: list[dict], objective: str) -> tuple[dict, float]:
    """Means over the window's pairs (lists, responses), exact from the sums; the count as throughput."""
    sums = {k: sum(host_scalar(m[k]) for m in window) for k in window[0]}
    n = max(sums["denom"], 1.0)
    out = {"loss": sums["loss_sum"] / n, "grad_norm": sums["grad_norm"] / len(window),
           "learning_rate": host_scalar(window[-1]["learning_rate"])}
    if objective == "pairs":
        out.update(accuracy=sums["correct_sum"] / n, margin=sums["margin_sum"] / n,
                   reward_chosen=sums["reward_chosen_sum"] / n, reward_rejected=sums["reward_rejected_sum"] / n,
                   logp_chosen=sums["logp_chosen_sum"] / n, logp_rejected=sums["logp_rejected_sum"] / n)
        if sums["sft_nll_sum"]:
            out["sft_nll"] = sums["sft_nll_sum"] / n
    elif objective == "listwise":
        out["accuracy"] = sums["pair_correct_sum"] / max(sums["pair_count"], 1.0)
    else:
        out.update(accuracy=sums["correct_sum"] / n, kl_reference=sums["kl_reference_sum"] / n,
                   reward_desirable=sums["reward_desirable_sum"] / max(sums["n_desirable"], 1.0),
                   reward_undesirable=sums["reward_undesirable_sum"] / max(sums["n_undesirable"], 1.0))
    if sums.get("nonfinite"):
        out["nonfinite"] = sums["nonfinite"]
    return out, sums["denom"]
