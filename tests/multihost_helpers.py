"""Starting one run as several CPU processes on 127.0.0.1 (jax.distributed through JAXRLHF_* variables)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

TIMEOUT_S = 300


def gloo_available() -> bool:
    from jax._src.lib import _jax

    return hasattr(_jax, "make_gloo_tcp_collectives")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(script: str, processes: int, devices: int, env: dict) -> list[str]:
    """stdout of each of `processes` workers running `script` with `devices` CPU devices each; fails (and
    kills the rest) if one fails or hangs."""
    env = dict(os.environ, **env, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAXRLHF_TRACEBACK="1")
    if processes > 1:
        env.update(JAXRLHF_COORDINATOR=f"127.0.0.1:{free_port()}", JAXRLHF_NUM_PROCESSES=str(processes))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=dict(env, JAXRLHF_PROCESS_ID=str(i)),
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


def run_results(script: str, processes: int, devices: int, env: dict) -> list[dict]:
    """The `RESULT {json}` line each worker prints, checked to come from processes 0..n-1 of one run over
    processes x devices devices."""
    outputs = run_processes(script, processes, devices, env)
    results = [json.loads(line[len("RESULT "):]) for o in outputs for line in o.splitlines()
               if line.startswith("RESULT ")]
    assert [r["process"] for r in results] == list(range(processes))
    assert all(r["processes"] == processes and r["devices"] == processes * devices for r in results)
    return results
