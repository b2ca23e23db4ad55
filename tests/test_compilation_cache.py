"""The persistent compilation cache (`compilation_cache_dir`, infra/runtime.py): a second process running the
same program loads it from the folder instead of compiling it; programs that compile fast are not written;
"" switches it off; a folder that cannot be made is a warning; changing it does not block a resume. Cache
hits are counted with the events JAX records (`/jax/compilation_cache/cache_hits`, `.../cache_misses`, one
per program written) and checked against the files in the folder.

The suite itself runs with the cache off (tests/conftest.py sets JAXRLHF_COMPILATION_CACHE=""); the runs
here point it at temporary folders, and $HOME at one where the default `~/...` folder is the subject.
"""

import json
import os
import stat
import subprocess
import sys
import warnings

import jax
import pytest

from jaxrlhf.configs import base
from jaxrlhf.infra.runtime import CACHE_MIN_COMPILE_TIME_S, setup_compilation_cache
from jaxrlhf.training.resume_guard import changed_keys
from tests.helpers import REPO_ROOT
from tests.helpers.mesh import cpu_mesh
from tests.helpers.processes import cpu_env

HITS, MISSES = "/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses"

# A trainer's start (setup_runtime on its default config), then one small jitted program.
PROGRAM = f"""
import collections, json
import jax, jax.numpy as jnp
from jaxrlhf.configs.base import rm_defaults
from jaxrlhf.infra.runtime import setup_runtime

events = collections.Counter()
jax.monitoring.register_event_listener(lambda event, **kw: events.update([event]))
setup_runtime(rm_defaults())
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
f(jnp.ones((8, 8))).block_until_ready()
print("RESULT", json.dumps({{"hits": events[{HITS!r}], "misses": events[{MISSES!r}],
                            "platform": jax.default_backend()}}))
"""

CACHE_VARIABLES = ("JAXRLHF_COMPILATION_CACHE", "JAX_COMPILATION_CACHE_DIR",
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def _env(home, gpu: bool = False, **variables) -> dict:
    env = {k: v for k, v in cpu_env().items() if k not in CACHE_VARIABLES and not k.startswith("JAXRLHF_")}
    if gpu:  # the machine's own platform
        env.pop("JAX_PLATFORMS")
        env.pop("XLA_FLAGS")
    return dict(env, HOME=str(home), **variables)


def _run(env) -> dict:
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def _entries(folder) -> set[str]:
    return {p.name for p in folder.iterdir() if p.name.endswith("-cache")} if folder.is_dir() else set()


def _second_run_hits(tmp_path, gpu: bool = False) -> str:
    """Runs PROGRAM twice with the default folder under a temporary $HOME and every program cached."""
    folder = tmp_path / ".cache" / "jaxrlhf" / "xla"
    env = _env(tmp_path, gpu=gpu, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    first = _run(env)
    written = _entries(folder)
    assert first["hits"] == 0 and first["misses"] >= 1 and len(written) == first["misses"], (first, written)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700  # the cache runs code: private to the user
    second = _run(env)
    assert second["hits"] == first["misses"] and second["misses"] == 0, second
    assert _entries(folder) == written  # nothing compiled, nothing new written
    return second["platform"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_process_loads_the_program_from_the_default_folder(tmp_path):
    assert _second_run_hits(tmp_path) == "cpu"


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fast_compiles_are_not_written_and_empty_switches_the_cache_off(tmp_path):
    folder = tmp_path / "cache"
    result = _run(_env(tmp_path, JAXRLHF_COMPILATION_CACHE=str(folder)))  # the 1 s threshold applies
    assert result["misses"] == 0 and folder.is_dir() and not _entries(folder), result
    result = _run(_env(tmp_path, JAXRLHF_COMPILATION_CACHE="", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0"))
    assert result["misses"] == 0 and not (tmp_path / ".cache").exists(), result


@pytest.mark.requires_gpu
@pytest.mark.slow
@pytest.mark.multiprocess
def test_a_second_process_loads_the_gpu_program_from_the_cache(tmp_path):
    assert _second_run_hits(tmp_path, gpu=True) == "gpu"


def test_the_default_folder_comes_from_the_environment(monkeypatch):
    for key in CACHE_VARIABLES:
        monkeypatch.delenv(key, raising=False)
    assert base.rm_defaults().compilation_cache_dir == "~/.cache/jaxrlhf/xla"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/jax/own")
    assert base.ppo_defaults().compilation_cache_dir == "/jax/own"
    monkeypatch.setenv("JAXRLHF_COMPILATION_CACHE", "")
    assert base.sft_defaults().compilation_cache_dir == ""
    assert 0 < CACHE_MIN_COMPILE_TIME_S <= 10
    # Where compiled programs are kept is not what a run is: a resume may move or switch off the cache.
    assert changed_keys({"compilation_cache_dir": "~/.cache/jaxrlhf/xla"}, {"compilation_cache_dir": ""}) == []


def test_a_folder_that_cannot_be_made_is_a_warning(tmp_path):
    (tmp_path / "file").write_text("")
    before = jax.config.jax_compilation_cache_dir
    with pytest.warns(UserWarning, match="compilation cache off: cannot use compilation_cache_dir="):
        assert setup_compilation_cache(str(tmp_path / "file" / "xla")) is None
    assert jax.config.jax_compilation_cache_dir == before
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.warns(UserWarning, match="not writable"):
            assert setup_compilation_cache(str(locked)) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert setup_compilation_cache(None) is None  # a config without the key: JAX's own settings


def test_cpu_mesh_lies_on_cpu_devices():
    mesh = cpu_mesh()
    assert mesh.shape == {"data": 1, "fsdp": 1, "tensor": 1}
    assert all(d.platform == "cpu" for d in mesh.devices.flat)
