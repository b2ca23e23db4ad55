"""A stand-in for `jax.sharding.Mesh` with only the `.shape` the sharding rules, planner and mesh checks read."""


class FakeMesh:
    def __init__(self, data: int = 1, fsdp: int = 1, tensor: int = 1):
        self.shape = {"data": data, "fsdp": fsdp, "tensor": tensor}
