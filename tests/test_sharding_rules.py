"""Mesh construction and the parameter-to-mesh rule table (runs on one device; the 8-device
equivalence tests live with the trainers)."""

import pytest
from jax.sharding import PartitionSpec as P

from jaxrlhf.infra import sharding as shd
from tests.helpers.mesh import FakeMesh


def test_rules_shard_the_expected_dims():
    mesh = FakeMesh(data=1, fsdp=4, tensor=2)
    # stacked q projection [L, in, out]: layer axis whole, in over fsdp, out over tensor
    assert shd.partition_spec("backbone/layers/attn/q_proj/kernel", (3, 64, 32), mesh) == P(None, "fsdp", "tensor")
    assert shd.partition_spec("backbone/layers/mlp/down_proj/kernel", (3, 128, 64), mesh) == P(None, "tensor", "fsdp")
    assert shd.partition_spec("backbone/embed/embedding", (100, 64), mesh) == P("tensor", "fsdp")
    assert shd.partition_spec("backbone/final_norm/scale", (64,), mesh) == P(None)
    assert shd.partition_spec("backbone/layers/attn/q_proj/lora_a", (3, 64, 8), mesh) == P(None, None, None)


def test_dim_not_divisible_stays_whole():
    mesh = FakeMesh(data=1, fsdp=4, tensor=3)
    assert shd.partition_spec("backbone/layers/attn/q_proj/kernel", (2, 64, 32), mesh) == P(None, "fsdp", None)


def test_make_mesh_sizes_and_errors():
    import jax

    n = len(jax.devices())
    assert shd.make_mesh().shape == {"data": n, "fsdp": 1, "tensor": 1}
    with pytest.raises(shd.MeshError, match="devices"):
        shd.make_mesh(data=n + 1)
    with pytest.raises(shd.MeshError, match="at most one"):
        shd.make_mesh(data=-1, fsdp=-1)
