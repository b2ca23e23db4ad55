"""Host malloc settings for XLA on CPU: transparent huge pages for large allocations.

XLA's CPU runtime allocates each step's temporaries (gigabytes for a reward-model step) afresh with
malloc, which serves them by mmap and returns them to the kernel at the end of the step; the next step
then faults every 4 KiB page back in, zero-filled: hundreds of thousands of faults, a fifth of a MiniLM
reward-model step. glibc's `glibc.malloc.hugetlb=1` tunable asks for transparent huge pages on those
mappings (512x fewer faults), resident memory unchanged; docs/benchmarks.md ("Reward-model step: malloc
and layer layout", scripts/bench_rm_step.py) has the measurements. PyTorch's CPU step does not gain from it.

glibc reads tunables once, at process start, so a command-line entry point re-executes itself once with
the tunable set (same pid, same arguments). Set JAXRLHF_MALLOC_TUNING=0 to opt out.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "JAXRLHF_MALLOC_TUNING"
_THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_available() -> bool:
    try:
        return "[never]" not in _THP.read_text()
    except OSError:
        return False


def tuned_env(environ: Mapping[str, str], *, glibc: bool | None = None, thp: bool | None = None) -> dict | None:
    """`environ` plus the huge-page tunable, or None when it is already set, opted out or unsupported."""
    if environ.get(OPT_OUT, "1") == "0":
        return None
    glibc = (sys.platform == "linux" and platform.libc_ver()[0] == "glibc") if glibc is None else glibc
    thp = _thp_available() if thp is None else thp
    current = environ.get("GLIBC_TUNABLES", "")
    if not (glibc and thp) or any(item.split("=")[0] == TUNABLE for item in current.split(":") if item):
        return None
    return {**environ, "GLIBC_TUNABLES": ":".join(filter(None, [current, f"{TUNABLE}=1"]))}


def entry_point_env(environ: Mapping[str, str]) -> dict:
    """The environment a jaxrlhf entry point runs in when started with `environ`."""
    return tuned_env(environ) or dict(environ)


def reexec_with_tuned_malloc() -> None:
    """Replaces this process by itself with the tunable set, once; returns when there is nothing to do."""
    env = tuned_env(os.environ)
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, env)
    except OSError:  # an embedded or unusual interpreter: run on untuned rather than fail
        return
