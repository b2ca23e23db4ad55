"""The huge-page malloc tunable: environment logic, and the one-time re-exec of an entry point."""

import os
import subprocess
import sys

import pytest

from jaxrlhf.infra import host_memory


def test_tunable_is_added_and_others_kept():
    env = host_memory.tuned_env({"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, glibc=True, thp=True)
    assert env["PATH"] == "/bin"
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert host_memory.tuned_env({}, glibc=True, thp=True)["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,glibc,thp", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, True, True),  # the user's own choice stands
    ({"JAXRLHF_MALLOC_TUNING": "0"}, True, True),
    ({}, False, True),  # musl, macOS, Windows
    ({}, True, False),  # transparent huge pages set to "never"
])
def test_nothing_to_do(environ, glibc, thp):
    assert host_memory.tuned_env(environ, glibc=glibc, thp=thp) is None


def test_entry_point_reexecutes_itself_once_with_the_tunable():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JAXRLHF_MALLOC_TUNING")}
    if host_memory.tuned_env(env) is None:
        pytest.skip("no glibc or transparent huge pages here: the re-exec is rightly skipped")
    code = ("import os; from jaxrlhf.infra.host_memory import reexec_with_tuned_malloc; "
            "print('start', os.getpid(), flush=True); reexec_with_tuned_malloc(); "
            "print('tuned', os.getpid(), os.environ['GLIBC_TUNABLES'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split("\n")
    starts = [l.split()[1] for l in lines if l.startswith("start")]
    tuned = [l.split() for l in lines if l.startswith("tuned")]
    assert len(starts) == 2 and starts[0] == starts[1]  # ran twice, as the same process
    assert len(tuned) == 1 and tuned[0][1] == starts[0] and tuned[0][2] == "glibc.malloc.hugetlb=1"
