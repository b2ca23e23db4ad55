"""A stand-in for `jax.sharding.Mesh` with only the `.shape` the sharding rules, planner and mesh checks read;
and real meshes over fake CPU devices for in-process sharding tests.

The real ones ask for CPU devices by name: on a GPU or TPU host the default backend is the accelerator
(one device), while `jax_num_cpu_devices` only multiplies the CPU backend's devices. A test that builds
one also places its inputs there (`jax.default_device(mesh.devices.flat[0])`, or arrays put with a
`NamedSharding` on the mesh), so nothing it compares is computed on the accelerator.
"""


class FakeMesh:
    def __init__(self, data: int = 1, fsdp: int = 1, tensor: int = 1):
        self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}


def cpu_devices(n: int) -> list:
    """`n` CPU devices of this process. Asks for them with `jax_num_cpu_devices` while no JAX backend has
    started yet; skips the test (with the reason) when one has, with fewer CPU devices than `n`: run it in
    a process of its own then, or through tests/helpers/processes.py."""
    import jax
    import pytest
    from jax._src import xla_bridge

    if not xla_bridge.backends_are_initialized() and jax.config.jax_num_cpu_devices < n:
        jax.config.update("jax_num_cpu_devices", n)
    devices = jax.devices("cpu")
    if len(devices) < n:
        pytest.skip(f"needs {n} CPU devices, this process has {len(devices)} (JAX started before the test "
                    "could ask for more)")
    return devices[:n]


def cpu_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1):
    """A real ("data", "fsdp", "tensor") mesh over data*fsdp*tensor CPU devices (see `cpu_devices`)."""
    from jaxrlhf.infra import sharding as shd

    return shd.make_mesh(data, fsdp, tensor, devices=cpu_devices(data * fsdp * tensor))
