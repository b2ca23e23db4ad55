"""Copies a PyTorch model's tensors into ours through a family's `weight_specs` table, checking the table
both ways as it goes: every spec names one of our parameters with the right shape, `to_hf` inverts
`to_flax` (the exporter relies on it), no parameter of ours is left uncovered (LoRA adapters aside) and no
torch tensor is left unread unless `unread` allows it."""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxrlhf.models.layers import LoRAParam


def torch_state(tm) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in tm.state_dict().items()}


def copy_by_specs(model: nnx.Module, specs, sd: dict[str, np.ndarray],
                  unread: Callable[[str], bool] = lambda key: False) -> None:
    flat = list(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    current = dict(flat)
    new, used = {}, set()
    for spec in specs:
        assert spec.path in current, f"spec names unknown parameter {spec.path}"
        assert spec.path not in new, f"two specs for {spec.path}"
        parts = [spec.to_flax(np.asarray(sd[k])) for k in spec.hf_keys]
        for key, part in zip(spec.hf_keys, parts):
            np.testing.assert_array_equal(spec.to_hf(part), sd[key])
        used.update(spec.hf_keys)
        value = np.stack(parts) if spec.stacked else parts[0]
        assert value.shape == current[spec.path].get_value().shape, spec.path
        new[spec.path] = value
    uncovered = [p for p, v in flat if p not in new and not isinstance(v, LoRAParam)]
    assert not uncovered, f"parameters no spec covers: {uncovered}"
    unused = sorted(k for k in sd if k not in used and not unread(k))
    assert not unused, f"torch tensors no spec reads: {unused}"
    nnx.update(model, nnx.from_flat_state([(p, v.replace(jnp.asarray(new[p]))) for p, v in flat if p in new]))


def copy_torch_model(model: nnx.Module, specs, tm, tie_word_embeddings: bool = False) -> None:
    """`copy_by_specs` of a torch module; a tied LM head's `lm_head.weight` is the embedding, read once."""
    copy_by_specs(model, specs, torch_state(tm),
                  unread=lambda k: (tie_word_embeddings and k == "lm_head.weight") or k.endswith("position_ids"))
