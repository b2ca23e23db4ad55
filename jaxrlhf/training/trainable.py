"""Which parameters train: all of them, LoRA adapters plus heads, or heads only."""

from __future__ import annotations

from flax import nnx

from jaxrlhf.models.layers import LoRAParam

TRAIN_MODES = ("full", "lora", "frozen_backbone")


def trainable_filter(mode: str):
    if mode == "full":
        return nnx.Param
    head = nnx.All(nnx.Param, nnx.Any(nnx.PathContains("head"), nnx.PathContains("lm_head")))
    if mode == "lora":
        return nnx.Any(LoRAParam, head)
    if mode == "frozen_backbone":
        return head
    raise ValueError(f"train mode must be one of {TRAIN_MODES}, got {mode!r}")


def split_trainable(model: nnx.Module, mode: str):
    """(graphdef, trainable_state, frozen_state); merge them back with nnx.merge(graphdef, t, f)."""
    graphdef, trainable, frozen = nnx.split(model, trainable_filter(mode), ...)
    return graphdef, trainable, frozen


def count_params(state) -> int:
    import jax

    return sum(int(x.size) for x in jax.tree_util.tree_leaves(state))
