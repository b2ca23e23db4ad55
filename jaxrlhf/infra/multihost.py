"""Several processes, one program: `jax.distributed` set-up and the few host-side collectives trainers need.

Every process runs the same trainer. Each loads only its rows of every batch and gives them to
`jax.make_array_from_process_local_data`; compiled steps see global arrays, so parameters stay
identical everywhere. Host code that looks at a value (metrics, scores, exported weights) must first
make it whole on every process (`to_host`), and any decision that changes the sequence of steps
(stopping) must be agreed by all processes (`any_process`), or they wait on each other forever.
"""

from __future__ import annotations

import os

import jax
import numpy as np

ENV_COORDINATOR = "JAXRLHF_COORDINATOR"
ENV_NUM_PROCESSES = "JAXRLHF_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXRLHF_PROCESS_ID"
AUTO = "auto"
# Set on the workers of a multi-host TPU slice (GKE, and TPU VMs where the runtime exports them).
_TPU_WORKER_VARS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")


def _tpu_pod_workers() -> int:
    for name in _TPU_WORKER_VARS:
        hosts = [h for h in os.environ.get(name, "").split(",") if h.strip()]
        if hosts:
            return len(hosts)
    return 0


def distributed_args(block=None) -> dict | None:
    """Arguments for `jax.distributed.initialize`, or None for a single process.

    The config block (`coordinator`, `num_processes`, `process_id`) wins over the JAXRLHF_* variables.
    coordinator "auto" (or a multi-host TPU slice) calls initialize with no arguments, so JAX detects
    the cluster itself (TPU pods, Slurm, Open MPI).
    """
    get = (lambda key, default: block.get(key, default)) if block is not None else (lambda key, default: default)
    coordinator = get("coordinator", "") or os.environ.get(ENV_COORDINATOR, "")
    if coordinator == AUTO or (not coordinator and _tpu_pod_workers() > 1):
        return {}
    if not coordinator:
        return None
    num_processes = get("num_processes", 0) or int(os.environ.get(ENV_NUM_PROCESSES, 0))
    process_id = get("process_id", -1)
    if process_id < 0:
        process_id = int(os.environ.get(ENV_PROCESS_ID, -1))
    if num_processes <= 0 or not 0 <= process_id < num_processes:
        raise ValueError(f"distributed: coordinator {coordinator} needs num_processes > 0 and 0 <= process_id < "
                         f"num_processes (got {num_processes} and {process_id}; set config.distributed.* or "
                         f"{ENV_NUM_PROCESSES} / {ENV_PROCESS_ID})")
    return {"coordinator_address": coordinator, "num_processes": num_processes, "process_id": process_id}


def initialize(block=None) -> None:
    """Joins the other processes when configured to; a no-op for one process or when already joined."""
    args = distributed_args(block)
    if args is None or jax.distributed.is_initialized():
        return
    # Cross-process collectives on CPU need an implementation; gloo is JAX's default (0.4.3x on), but a
    # user may have turned it off, and then every step with a cross-process reduction would fail.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**args)


def to_global(batch: dict, mesh) -> dict:
    """Per-process numpy batch -> global jax arrays split over the mesh's batch axes."""
    from jaxrlhf.infra.sharding import batch_sharding

    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(v)), np.asarray(v))
            for k, v in batch.items()}


def to_host(x) -> np.ndarray:
    """The whole value of `x` as numpy on every process (a collective when `x` spans other processes)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any; every process must call it at the same point."""
    if jax.process_count() == 1:
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(bool(flag)))))


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier of this name (nothing to wait for on one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
