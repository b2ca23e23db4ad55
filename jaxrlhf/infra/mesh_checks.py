"""Checks that a mesh fits the run, before anything compiles, with one-line messages.

A batch must split evenly over the batch axes (data*fsdp). A parameter axis (fsdp, tensor) larger than
1 must split at least one parameter: one that divides none of the dims the rule table assigns it is a
mistake (the devices along it would all hold the same copies), and is refused with the axis, its size
and the dims it could not split. An axis that splits some parameters but leaves others whole is a
warning: those parameters are replicated along it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from flax import nnx

from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.sharding import spec_of


def check_batch(mesh, sizes: Mapping[str, int]) -> None:
    """`sizes`: config key -> global batch size; each must divide by data*fsdp."""
    split = math.prod(mesh.shape.get(a, 1) for a in shd.BATCH_AXES)
    for name, size in sizes.items():
        if size % split:
            raise shd.MeshError(f"{name}={size} does not divide by the mesh's batch axes data*fsdp={split} "
                                f"(data={mesh.shape.get('data', 1)}, fsdp={mesh.shape.get('fsdp', 1)}): "
                                f"use a multiple of {split}")


def _assignments(state, axis: str, mesh, rules, logical_to_mesh):
    """(path, shape, {logical name: dim}, split along `axis`?) of each parameter with a dim assigned to `axis`."""
    for path, value in nnx.to_flat_state(state):
        path, value = shd.path_str(path), value.get_value()
        names = shd.logical_axes(path, len(value.shape), rules)
        dims = {name: dim for name, dim in zip(names, value.shape) if name and logical_to_mesh.get(name) == axis}
        if dims:
            spec = spec_of(path, value, mesh, rules, logical_to_mesh)
            split = any(axis in (a if isinstance(a, tuple) else (a,)) for a in spec)
            yield path, tuple(value.shape), dims, split


def _refusal(axis: str, size: int, found: dict) -> shd.MeshError:
    dims: dict[str, set[int]] = {}
    for rows in found.values():
        for _, _, assigned, _ in rows:
            for logical, dim in assigned.items():
                dims.setdefault(logical, set()).add(dim)
    shown = ", ".join(f"{k} {'/'.join(map(str, sorted(v)))}" for k, v in sorted(dims.items()))
    return shd.MeshError(f"mesh axis {axis}={size} cannot split any parameter: no dim it is assigned to divides "
                         f"by {size} ({shown or 'none assigned'}); choose a {axis} size that divides them")


def _warning(axis: str, size: int, found: dict, states: Mapping[str, object]) -> str | None:
    parts, examples = [], []
    for name, rows in found.items():
        whole = [(path, shape) for path, shape, _, split in rows if not split]
        if whole:
            total = sum(math.prod(v.get_value().shape) for _, v in nnx.to_flat_state(states[name]))
            share = sum(math.prod(shape) for _, shape in whole) / max(total, 1)
            parts.append(f"{name} {len(whole)} of {len(rows)} ({share:.0%} of its parameters)")
            examples += [f"{p} {s}" for p, s in sorted(whole, key=lambda w: -math.prod(w[1]))[:2]]
    if not parts:
        return None
    return (f"warning: mesh axis {axis}={size} leaves parameters it is assigned to whole: {', '.join(parts)}; "
            f"e.g. {', '.join(list(dict.fromkeys(examples))[:3])}")


def check_axes(states: Mapping[str, object], mesh, rules=shd.DEFAULT_PARAM_RULES,
               logical_to_mesh=None) -> list[str]:
    """`states`: model name -> its nnx State. Raises MeshError for an axis that splits nothing;
    returns one warning line per axis that leaves parameters whole."""
    logical_to_mesh = shd.DEFAULT_LOGICAL_TO_MESH if logical_to_mesh is None else logical_to_mesh
    warnings = []
    for axis, size in mesh.shape.items():
        if size == 1 or axis not in logical_to_mesh.values():
            continue
        found = {name: list(_assignments(state, axis, mesh, rules, logical_to_mesh)) for name, state in states.items()}
        if not any(split for rows in found.values() for *_, split in rows):
            raise _refusal(axis, size, found)
        warning = _warning(axis, size, found, states)
        if warning:
            warnings.append(warning)
    return warnings
