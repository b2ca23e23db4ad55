"""Per-device memory of a run, from shapes alone, printed before anything compiles.

Parameters and optimiser state are counted exactly: each parameter's bytes divided by the sizes of the
mesh axes in its PartitionSpec (the array's own sharding when it has one, else the rule table's), so a
replicated dim counts in full on every device. AdamW keeps two moments per trainable parameter with the
parameter's sharding; frozen parameters have none; gradients match the trainable parameters.

Activations are an ESTIMATE of the largest step, per device, with B the sequences on one device
(global / (data*fsdp)), T the sequence length, H hidden, I intermediate, nH heads, L layers, V vocab,
s the compute dtype's bytes and tp the tensor axis size:

    block  = B*T*(8*H + (4*I + 2*nH*T)/tp) * s    saved tensors of one transformer block: norm inputs,
                                                  q/k/v, attention output, residuals; MLP gate, up and
                                                  product; attention scores and probabilities
             with fused attention (flash kernels, the CPU path's blocks) the 2*nH*T term is 2*nH: a row
             max and sum per head instead of the T x T scores
    train  = L*saved + block, saved per layer by the remat policy (models.layers.REMAT_POLICIES):
             none: block (and no recomputed block); full: B*T*H*s (the layer's input);
             dots_with_no_batch_dims_saveable: B*T*(4*H + 2*kv_heads*head_dim + 2*I/tp)*s (input and the
             weight projections' outputs); dots_saveable: those and attention's B*nH*T*T*4/tp scores
             (none with fused attention)
    forward (frozen model, experience pass) = block (one layer live at a time)
    logits = B*C*V*4 per LM-head chunk of C positions (float32), twice when training (their gradient)
    cache  = 2*L*B*T*kv_heads*head_dim*s for sampling with a KV cache

Not counted: FSDP's all-gathered weights of the layer being computed, XLA's temporary buffers and
fragmentation; plan with headroom.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxrlhf.infra import sharding as shd

ADAM_MOMENTS = 2


@dataclasses.dataclass(frozen=True)
class Dims:
    """The sizes the activation estimate needs, read from any family's Config."""
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, cfg: Any) -> Dims:
        def first(*names):
            return next(int(getattr(cfg, n)) for n in names if getattr(cfg, n, None) is not None)

        heads = first("num_attention_heads", "num_heads")
        return cls(hidden=first("hidden_size"), intermediate=first("intermediate_size"),
                   layers=first("num_hidden_layers", "num_layers"), heads=heads,
                   kv_heads=int(getattr(cfg, "num_key_value_heads", None) or heads),
                   head_dim=first("head_dim"), vocab=first("vocab_size"))


@dataclasses.dataclass(frozen=True)
class Workload:
    """What a model computes in the largest step of a run, in global sequences (0: does not happen)."""
    train_batch: int = 0      # sequences per (micro) step of a gradient computation
    train_length: int = 0
    forward_batch: int = 0    # sequences per forward-only pass (scoring, experience)
    forward_length: int = 0
    logits_chunk: int = 0     # LM-head positions per chunk; 0: the model has no LM head in use
    cache_batch: int = 0      # sequences sampled with a KV cache
    cache_length: int = 0
    remat: bool | str = False  # a policy name of models.layers.REMAT_POLICIES (True/False: full/none)
    dtype_bytes: int = 4
    fused_attention: bool = False  # no T x T scores kept (see the module docstring)


@dataclasses.dataclass(frozen=True)
class ModelPlan:
    name: str
    params: int          # bytes per device
    grads: int
    optimiser: int
    activations: int     # an estimate
    devices: int

    @property
    def total(self) -> int:
        return self.params + self.grads + self.optimiser + self.activations


def _flat(state) -> Iterable[tuple[str, Any]]:
    for path, value in nnx.to_flat_state(state):
        yield shd.path_str(path), (value.get_value() if isinstance(value, nnx.Variable) else value)


def shard_bytes(shape, dtype, spec, mesh_shape: Mapping[str, int]) -> int:
    """Bytes of one device's shard; dims are only sharded where the axis sizes divide them."""
    split = 1
    for axes in spec:
        for axis in (axes if isinstance(axes, tuple) else (axes,)):
            split *= mesh_shape[axis] if axis else 1
    return math.prod(shape) * np.dtype(dtype).itemsize // split


def state_bytes(state, mesh, rules=shd.DEFAULT_PARAM_RULES, logical_to_mesh=None) -> int:
    """Per-device bytes of an nnx State of arrays or ShapeDtypeStructs."""
    return sum(shard_bytes(v.shape, v.dtype, shd.spec_of(p, v, mesh, rules, logical_to_mesh), mesh.shape)
               for p, v in _flat(state))


def activation_bytes(dims: Dims, work: Workload, mesh_shape: Mapping[str, int]) -> int:
    """The estimate of the module docstring, per device."""
    batch_split = mesh_shape.get("data", 1) * mesh_shape.get("fsdp", 1)
    tp = mesh_shape.get("tensor", 1)
    s = work.dtype_bytes

    def local(batch):
        return -(-batch // batch_split)

    def block(batch, length):
        scores = 2 * dims.heads * (1 if work.fused_attention else length)
        return local(batch) * length * (8 * dims.hidden + (4 * dims.intermediate + scores) // tp) * s

    def logits(batch, copies):
        return local(batch) * work.logits_chunk * dims.vocab * 4 * copies // tp

    def projections(batch, length):
        return local(batch) * length * (4 * dims.hidden + 2 * dims.kv_heads * dims.head_dim
                                        + 2 * dims.intermediate // tp) * s

    phases = [0]
    if work.train_batch:
        B, T = work.train_batch, work.train_length
        policy = _remat_name(work.remat)
        per_layer = {"none": block(B, T), "full": local(B) * T * dims.hidden * s,
                     "dots_with_no_batch_dims_saveable": projections(B, T),
                     "dots_saveable": projections(B, T) + (0 if work.fused_attention else
                                                           local(B) * dims.heads * T * T * 4 // tp)}[policy]
        saved = dims.layers * per_layer + (0 if policy == "none" else block(B, T))
        phases.append(saved + logits(B, 2))
    if work.forward_batch:
        phases.append(block(work.forward_batch, work.forward_length) + logits(work.forward_batch, 1))
    if work.cache_batch:
        cache = 2 * dims.layers * local(work.cache_batch) * work.cache_length * dims.kv_heads * dims.head_dim * s
        next_token_logits = local(work.cache_batch) * dims.vocab * 4 // tp if work.logits_chunk else 0
        phases.append(cache + block(work.cache_batch, 1) + next_token_logits)
    return max(phases)


def _remat_name(remat) -> str:
    # models.layers.remat_name, which infra (a layer below models) cannot import; tests check they agree.
    if isinstance(remat, bool) or str(remat).lower() in ("true", "false"):
        return "full" if str(remat).lower() == "true" else "none"
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {remat!r}")
    return remat


REMAT_POLICIES = ("none", "full", "dots_with_no_batch_dims_saveable", "dots_saveable")  # least memory last-but-one


def plan_model(name: str, trainable, frozen, dims: Dims, work: Workload, mesh, rules=shd.DEFAULT_PARAM_RULES,
               logical_to_mesh=None) -> ModelPlan:
    """`trainable` / `frozen`: nnx States (real or abstract); `trainable` may be None for a frozen model."""
    train_bytes = state_bytes(trainable, mesh, rules, logical_to_mesh) if trainable is not None else 0
    frozen_bytes = state_bytes(frozen, mesh, rules, logical_to_mesh) if frozen is not None else 0
    return ModelPlan(name, params=train_bytes + frozen_bytes, grads=train_bytes,
                     optimiser=ADAM_MOMENTS * train_bytes, activations=activation_bytes(dims, work, mesh.shape),
                     devices=math.prod(mesh.shape.values()))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def per_device_total(plans: list[ModelPlan]) -> int:
    """Models run one after another: every model's parameters and optimiser state, plus the largest
    gradients + activations of any one of them."""
    return (sum(p.params + p.optimiser for p in plans)
            + max((p.grads + p.activations for p in plans), default=0))


def format_plan(plans: list[ModelPlan], mesh, device_limit: int | None = None) -> str:
    """One row per model and a total; models run one after another, so the total takes the largest
    gradients + activations of any one model on top of every model's parameters and optimiser state.
    `device_limit`: a device's bytes, to warn when the plan does not fit."""
    mesh_desc = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    header = f"{'per device':<16}{'params':>11}{'grads':>11}{'optimiser':>11}{'activations*':>14}{'total':>11}"
    rows = [f"memory plan, mesh {mesh_desc}", header]
    for p in plans:
        rows.append(f"{p.name:<16}{_size(p.params):>11}{_size(p.grads):>11}{_size(p.optimiser):>11}"
                    f"{_size(p.activations):>14}{_size(p.total):>11}")
    per_device = per_device_total(plans)
    devices = plans[0].devices if plans else 1
    rows.append(f"{'all models':<16}{_size(sum(p.params for p in plans)):>11}{'':>11}"
                f"{_size(sum(p.optimiser for p in plans)):>11}{'':>14}{_size(per_device):>11}"
                f"   x {devices} devices = {_size(per_device * devices)}")
    rows.append("* activations are an estimate (jaxrlhf.infra.planner)")
    if device_limit and per_device > device_limit:
        rows.append(f"warning: the plan needs {_size(per_device)} per device, a device has {_size(device_limit)}")
    return "\n".join(rows)


def device_memory_limit() -> int | None:
    """Bytes a device can hold, where the backend says (GPU, TPU); None on CPU."""
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")
