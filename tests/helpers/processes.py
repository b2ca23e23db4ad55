"""Starting `python -m tests.workers NAME ...` on fake CPU devices: one process, or several joined into one
run on 127.0.0.1 (jax.distributed through the JAXRLHF_* variables).

Workers run from the repository root, so `tests` imports as a package without any sys.path edits, on the
CPU platform (`JAX_PLATFORMS=cpu`) with `devices` fake devices each, so they also run on a machine with an
accelerator (where the default platform would be its one GPU or TPU, and the mesh would not fit); and
without GPU memory preallocation, so several of them never each claim most of a GPU. Any other test that
starts a JAX subprocess on fake CPU devices builds its environment with `cpu_env`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from tests.helpers import REPO_ROOT

TIMEOUT_S = 300  # for each process of a multi-process run


def gloo_available() -> bool:
    from jax._src.lib import _jax

    return hasattr(_jax, "make_gloo_tcp_collectives")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_command(name: str, *args) -> list[str]:
    return [sys.executable, "-m", "tests.workers", name, *map(str, args)]


def cpu_env(devices: int = 1, env: dict | None = None) -> dict:
    """os.environ plus `env`, for a subprocess on the CPU platform with `devices` fake CPU devices."""
    return dict(os.environ, **(env or {}), XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
                JAX_PLATFORMS="cpu", XLA_PYTHON_CLIENT_PREALLOCATE="false")


def worker_env(devices: int, env: dict | None = None) -> dict:
    return cpu_env(devices, env)


def run_worker(name: str, *args, devices: int = 1, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the worker `name` in one process with `devices` CPU devices; fails with its stderr unless it exits 0."""
    out = subprocess.run(worker_command(name, *args), env=worker_env(devices, env), cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def run_processes(name: str, args: list, processes: int, devices: int, env: dict) -> list[str]:
    """stdout of each of `processes` processes of the worker `name`, `devices` CPU devices each; fails (and
    kills the rest) if one fails or hangs."""
    env = dict(worker_env(devices, env), JAXRLHF_TRACEBACK="1")
    if processes > 1:
        env.update(JAXRLHF_COORDINATOR=f"127.0.0.1:{free_port()}", JAXRLHF_NUM_PROCESSES=str(processes))
    procs = [subprocess.Popen(worker_command(name, *args), env=dict(env, JAXRLHF_PROCESS_ID=str(i)), cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(processes)]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"process {len(outputs)} failed:\n{stderr[-4000:]}"
            outputs.append(stdout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return outputs


def run_results(name: str, args: list, processes: int, devices: int, env: dict) -> list[dict]:
    """The `RESULT {json}` line each process prints, checked to come from processes 0..n-1 of one run over
    processes x devices devices."""
    outputs = run_processes(name, args, processes, devices, env)
    results = [json.loads(line[len("RESULT "):]) for o in outputs for line in o.splitlines()
               if line.startswith("RESULT ")]
    assert [r["process"] for r in results] == list(range(processes))
    assert all(r["processes"] == processes and r["devices"] == processes * devices for r in results)
    return results
