"""Device mesh and the rule table that maps parameters to mesh axes.

Parameters get logical axis names from a table of path patterns ("vocab", "embed", "mlp"); a second
table maps logical names to mesh axes. Data parallel, FSDP and tensor parallel are then just
different mesh shapes: ("data", "fsdp", "tensor") = (8,1,1), (1,8,1), (1,1,8) or mixes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# (pattern searched in "a/b/c" parameter paths, logical names of the trailing dims). First match wins;
# leading dims beyond the names (the stacked layer axis) are never sharded.
DEFAULT_PARAM_RULES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    (r"lora_[ab]$", (None, None)),
    (r"(^|/)embed/embedding$", ("vocab", "embed")),
    (r"lm_head/kernel$", ("embed", "vocab")),
    (r"head/out/kernel$", ("embed", None)),
    (r"(o_proj|down_proj|c_proj|attn/out|output|out_proj)/kernel$", ("mlp", "embed")),
    (r"(q_proj|k_proj|v_proj|gate_proj|up_proj|c_attn|c_fc|query|key|value|intermediate)/kernel$", ("embed", "mlp")),
    (r"/kernel$", ("embed", "mlp")),
    (r"/embedding$", (None, "embed")),
)

DEFAULT_LOGICAL_TO_MESH: dict[str, Any] = {"vocab": "tensor", "embed": "fsdp", "mlp": "tensor"}


class MeshError(ValueError):
    pass


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp", "tensor") mesh over all devices; one size may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise MeshError(f"{len(devices)} devices do not divide by fsdp*tensor*data={known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise MeshError(f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} "
                        f"devices, but {len(devices)} are available")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def logical_axes(path: str, ndim: int, rules=DEFAULT_PARAM_RULES) -> tuple[str | None, ...]:
    for pattern, names in rules:
        if re.search(pattern, path) and len(names) <= ndim:
            return (None,) * (ndim - len(names)) + tuple(names)
    return (None,) * ndim


def partition_spec(path: str, shape: Sequence[int], mesh: Mesh, rules=DEFAULT_PARAM_RULES,
                   logical_to_mesh=None) -> P:
    """The PartitionSpec of one parameter; a dim that the mesh axis does not divide stays whole."""
    logical_to_mesh = DEFAULT_LOGICAL_TO_MESH if logical_to_mesh is None else logical_to_mesh
    spec = []
    for dim, name in zip(shape, logical_axes(path, len(shape), rules)):
        axis = logical_to_mesh.get(name) if name else None
        size = mesh.shape[axis] if axis else 1
        spec.append(axis if axis and size > 1 and dim % size == 0 else None)
    return P(*spec)


def path_str(path: Iterable[Any]) -> str:
    return "/".join(str(p) for p in path)


def param_shardings(flat_shapes: dict[tuple, Sequence[int]], mesh: Mesh, rules=DEFAULT_PARAM_RULES,
                    logical_to_mesh=None) -> dict[tuple, NamedSharding]:
    return {path: NamedSharding(mesh, partition_spec(path_str(path), shape, mesh, rules, logical_to_mesh))
            for path, shape in flat_shapes.items()}


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) dim split over the data and fsdp axes, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def spec_of(path: str, value, mesh, rules=DEFAULT_PARAM_RULES, logical_to_mesh=None):
    """The PartitionSpec a parameter has (placed arrays) or will get (abstract shapes)."""
    sharding = getattr(value, "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.spec
    return partition_spec(path, value.shape, mesh, rules, logical_to_mesh)
