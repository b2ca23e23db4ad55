"""Which parameters train: all of them, LoRA adapters plus heads, or heads only."""

from __future__ import annotations

from flax import nnx

from jaxrlhf.models.layers import LoRAParam

TRAIN_MODES = ("full", "lora", "frozen_backbone")


def trainable_filter(mode: str, train_lm_head: bool = False):
    """`lora`: adapters and the scalar (reward/value) head; an untied LM head only with `train_lm_head`
    (it is V x D, 525M parameters on Llama-3-8B, which PEFT and TRL leave frozen). `frozen_backbone`:
    the heads, the LM head included (on a causal LM that is all it can train)."""
    if mode == "full":
        return nnx.Param
    scalar_head = nnx.All(nnx.Param, nnx.PathContains("head"))
    lm_head = nnx.All(nnx.Param, nnx.PathContains("lm_head"))
    if mode == "lora":
        return nnx.Any(LoRAParam, scalar_head, lm_head) if train_lm_head else nnx.Any(LoRAParam, scalar_head)
    if mode == "frozen_backbone":
        return nnx.Any(scalar_head, lm_head)
    raise ValueError(f"train mode must be one of {TRAIN_MODES}, got {mode!r}")


def split_trainable(model: nnx.Module, mode: str, train_lm_head: bool = False):
    """(graphdef, trainable_state, frozen_state); merge them back with nnx.merge(graphdef, t, f)."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(mode, train_lm_head), ...)
    return graphdef, trainable, frozen


def split_for(model: nnx.Module, block):
    """`split_trainable` as a model config block asks (`train_mode`, `train_lm_head`; a run_config.json
    written before `train_lm_head` existed has none: off)."""
    return split_trainable(model, block.train_mode, bool(block.get("train_lm_head", False)))


def base_is_reference(block, reference: str) -> bool:
    """Whether a frozen reference named `reference` ("" for the block's own model) is the block's model with
    its LoRA adapters off (`models.layers.adapters_off`), so no second copy need load: under LoRA, when it
    names the same model and nothing but adapters trains (an LM head trained with `train_lm_head` would
    make the base differ from the reference)."""
    return (block.train_mode == "lora" and not block.get("train_lm_head", False)
            and reference in ("", block.name))


def count_params(state) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))
