"""What the benchmark scripts share: the checkout on `sys.path`, the TRL pins, the machine and version
lines, git state, the hidden `--_worker` subprocess, markdown tables and `write_section`.

A script beside this file starts with `import benchlib` (Python puts a script's own folder first on
`sys.path`, so this works from any working directory); importing it puts the checkout first on `sys.path`,
so `jaxrlhf` is this checkout's also when it is not pip-installed. Nothing here imports JAX or torch.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# TRL is pinned twice, on purpose. bench_rm compares with RewardTrainer and follows current TRL; bench_ppo
# compares with PPOTrainer, which TRL removed after 1.12.0 (there it is `trl.experimental.ppo`), so that side
# stays on 1.12.0. Change them here; each script reads its pin from these two names.
TRL_REWARD_VERSION = "1.16.0"  # scripts/bench_rm.py: trl.RewardTrainer
TRL_PPO_VERSION = "1.12.0"     # scripts/bench_ppo.py: trl.experimental.ppo.PPOTrainer, in its own --target folder


def trl_requirement(version: str) -> str:
    return f"trl=={version}"


# ----------------------------------------------------------------------------- machine and versions

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float | None:
    """Physical memory in GiB (None where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> dict:
    """cpus: the machine's CPUs; nproc: those this process may run on; cpu: the model; memory_gib; platform."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 0)
    return {"cpus": os.cpu_count(), "nproc": len(affinity), "cpu": cpu_model(), "memory_gib": memory_gib(),
            "platform": platform.platform()}


def loadavg() -> str:
    """'1.0 / 0.8 / 0.5': the 1, 5 and 15 minute load averages ('?' where unknown)."""
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def busy_note(load: str) -> str:
    """A remark for a table's machine line when the 1-minute load (`loadavg()`) was over 1 before the run."""
    try:
        busy = float(load.split()[0]) > 1.0
    except (ValueError, IndexError):
        busy = False
    return " (the machine was busy: other jobs share these cores)" if busy else ""


def version(dist: str) -> str:
    """The version of an installed distribution: the imported module's `__version__` when it is loaded (so a
    copy put on `sys.path`, like bench_ppo's TRL folder, reports itself), else the package metadata."""
    module = sys.modules.get(dist.replace("-", "_"))
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions(*dists: str) -> dict[str, str]:
    return {d: version(d) for d in dists}


def versions_text(*dists: str) -> str:
    """'jax 0.4.38, flax 0.10.2'"""
    return ", ".join(f"{d} {v}" for d, v in versions(*dists).items())


def command_line(script: str, argv: Sequence[str]) -> str:
    """The command that reproduces this run, as a table's footnote shows it."""
    return " ".join(["python", script, *(shlex.quote(a) for a in argv)])


# ----------------------------------------------------------------------------- git

def git_state(rev: str = "") -> str:
    """'commit abc1234', with a note when jaxrlhf/ has uncommitted changes or `rev` (`--commit`) was used."""
    if rev:
        full = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True)
        return f"commit {full.stdout.strip() or rev} (`--commit`: the committed files, not the working tree)"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxrlhf"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"commit {head}" + (" with uncommitted changes in jaxrlhf/" if dirty else "")


def use_commit(rev: str) -> str:
    """Extracts jaxrlhf/ as committed at `rev` into a temp folder and returns the folder; put it first on
    `sys.path` (in the workers too) to benchmark that revision instead of the working tree."""
    data = subprocess.run(["git", "archive", rev, "jaxrlhf"], cwd=REPO, capture_output=True, check=True).stdout
    dest = tempfile.mkdtemp(prefix="bench_src_")
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest)
    return dest


# ----------------------------------------------------------------------------- workers
# A script measures each side in a fresh process: it re-runs itself with its own arguments plus the hidden
# `--_worker KIND --_io DIR`. DIR holds spec.json (what the host passes; {} when nothing) and gets
# result.json (what the worker returns, a JSON object).

def add_worker_args(parser: argparse.ArgumentParser, kinds: Sequence[str] | None = None) -> None:
    parser.add_argument("--_worker", choices=kinds, help=argparse.SUPPRESS)
    parser.add_argument("--_io", help=argparse.SUPPRESS)


def worker_spec(args: argparse.Namespace) -> dict:
    """In a worker: what the host passed to `run_worker` as `spec`."""
    return json.loads((Path(args._io) / "spec.json").read_text())


def worker_result(args: argparse.Namespace, result: Mapping) -> None:
    """In a worker: hands `result` back to `run_worker`."""
    (Path(args._io) / "result.json").write_text(json.dumps(result))


class WorkerFailed(SystemExit):
    """A worker exited non-zero. Uncaught, it ends the script with its message (exit status 1)."""


def run_worker(script: str, argv: Sequence[str], kind: str, spec: Mapping | None = None, *,
               env: Mapping[str, str] | None = None, cwd: str | Path | None = None, capture: bool = False,
               echo: bool = False, label: str = "") -> dict:
    """Runs `python script *argv --_worker kind --_io DIR` and returns the worker's `worker_result` ({} if it
    gave none) plus `wall` (seconds), `load_before` and `load_after` (`loadavg()`).

    env: the worker's environment (default: this one's). capture: keep the worker's output off the console
    (its stderr tail goes into the error). echo: print the command first. Raises WorkerFailed (named `label`,
    default `kind`) when the worker exits non-zero."""
    with tempfile.TemporaryDirectory(prefix="bench_worker_") as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(dict(spec or {})))
        cmd = [sys.executable, str(Path(script).resolve()), *argv, "--_worker", kind, "--_io", tmp]
        if echo:
            print(f"== {kind}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
        load, t = loadavg(), time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=None if env is None else dict(env), capture_output=capture,
                              text=True)
        if proc.returncode:
            tail = f"\n{proc.stderr[-3000:]}" if capture else ""
            raise WorkerFailed(f"{label or kind} worker failed (exit {proc.returncode}): "
                               f"{' '.join(shlex.quote(c) for c in cmd)}{tail}")
        out = Path(tmp) / "result.json"
        result = json.loads(out.read_text()) if out.is_file() else {}
    result.update(wall=time.perf_counter() - t, load_before=load, load_after=loadavg())
    return result


# ----------------------------------------------------------------------------- markdown

def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table as lines: the header, the |---| rule, one line per row (cells already formatted)."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def write_section(out: str | Path, section: str, mark_start: str, mark_end: str) -> None:
    """Replaces the text from `mark_start` (up to its first " (") through `mark_end` in the file `out` by
    `section`, which begins and ends with those marks; appends `section` when the file has none yet.
    An empty `out` (a script's `--out ''`) writes nothing."""
    if not out:
        return
    path = Path(out)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(mark_start.split(" (")[0]), text.find(mark_end)
    if start >= 0 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(mark_end):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {out}")
