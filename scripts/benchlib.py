"""What the benchmark scripts share: the checkout on `sys.path`, the TRL pins, the machine description and
version lines, git state, the hidden `--_worker` subprocess, the baton that makes two worker processes take
turns, `--quick` and `--json`, markdown tables and `write_section`.

A script beside this file starts with `import benchlib` (Python puts a script's own folder first on
`sys.path`, so this works from any working directory); importing it puts the checkout first on `sys.path`,
so `jaxrlhf` is this checkout's also when it is not pip-installed. Nothing here imports JAX or torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import re
import select
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
# Compile times are part of what the benchmarks report: no persistent compilation cache unless asked for.
os.environ.setdefault("JAXRLHF_COMPILATION_CACHE", "")

# TRL is pinned twice, on purpose. bench_rm compares with RewardTrainer and follows current TRL; bench_ppo
# compares with PPOTrainer, which TRL removed after 1.12.0 (there it is `trl.experimental.ppo`), so that side
# stays on 1.12.0. Change them here; each script reads its pin from these two names.
TRL_REWARD_VERSION = "1.16.0"  # scripts/bench_rm.py: trl.RewardTrainer
TRL_PPO_VERSION = "1.12.0"     # scripts/bench_ppo.py: trl.experimental.ppo.PPOTrainer, in its own --target folder


def trl_requirement(version: str) -> str:
    return f"trl=={version}"


def trl_folder(version: str) -> str:
    """Where a script looks for TRL `version` by default: /tmp/trl116 for 1.16.0."""
    return "/tmp/trl" + "".join(version.split(".")[:2])


def trl_install_command(version: str, folder: str = "") -> str:
    """The install line for one TRL pin: its own `--target` folder, with `accelerate` (which TRL imports)."""
    return f"pip install --no-deps --target {folder or trl_folder(version)} {trl_requirement(version)} accelerate"


def trl_in_folder(folder: str | Path) -> str:
    """The TRL version installed in `folder` by `pip install --target` ('' when none is there)."""
    found = sorted(Path(folder).glob("trl-*.dist-info")) if (Path(folder) / "trl").is_dir() else []
    return found[-1].name[len("trl-"):-len(".dist-info")] if found else ""


# ----------------------------------------------------------------------------- machine and versions

def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    return parse_cpuinfo(_read("/proc/cpuinfo")).get("cpu") or platform.processor() or "unknown CPU"


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
    """A remark for a table's machine line when the 1-minute load (`loadavg()`) was over 1 before the run: the
    cores were not idle when it began (a job just ended, or one still runs)."""
    try:
        busy = float(load.split()[0]) > 1.0
    except (ValueError, IndexError):
        busy = False
    return " (1-minute load over 1 at the start)" if busy else ""


# The speed of the same code drifts on a shared or virtual machine (here a 2-vCPU guest: the same XLA matmul ran
# 69-98 GFLOP/s in one run and 106-143 ten minutes later), so every table records the machine it ran on, how
# loaded it was and how much CPU time the hypervisor took away (steal) while it ran.

THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"
CPUINFO_KEYS = {"model name": "cpu", "vendor_id": "vendor", "cpu family": "family", "model": "model",
                "stepping": "stepping", "microcode": "microcode"}


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor's model name (`cpu`), vendor, family, model, stepping and microcode from the text of
    /proc/cpuinfo; keys the kernel does not give (other architectures, some hypervisors) are left out."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:  # the end of the first processor's block: the others repeat it
                break
            continue
        key, _, value = line.partition(":")
        name = CPUINFO_KEYS.get(key.strip())
        if name and name not in out:
            out[name] = value.strip()
    return out


def parse_cpu_times(text: str) -> tuple[int, int]:
    """(steal, total) clock ticks of all CPUs from the text of /proc/stat (its first, `cpu`, line). Total sums
    user .. steal; guest and guest_nice are left out because the kernel already counts them in user and nice."""
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
            return (ticks[7] if len(ticks) > 7 else 0), sum(ticks)
    raise ValueError("no 'cpu' line in /proc/stat")


def steal_percent(before: Sequence[int] | None, after: Sequence[int] | None) -> float | None:
    """The share of CPU time the hypervisor gave to others between two `parse_cpu_times` readings, in percent."""
    if not before or not after or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def parse_thp(text: str) -> str:
    """'madvise' from 'always [madvise] never' (/sys/kernel/mm/transparent_hugepage/enabled)."""
    m = re.search(r"\[([^\]]+)\]", text)
    return m.group(1) if m else (text.strip() or "?")


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_times() -> tuple[int, int] | None:
    try:
        return parse_cpu_times(_read("/proc/stat"))
    except ValueError:
        return None


def machine_snapshot() -> dict:
    """The start of a run, for `machine_description`: load average, CPU times and the time."""
    return {"load": loadavg(), "cpu_times": cpu_times(), "time": time.time()}


def machine_description(start: Mapping | None = None) -> dict:
    """The machine a table was measured on, as a dict (`machine_line` renders it): CPU model, vendor, family,
    model, stepping and microcode, nproc, the transparent-huge-page setting, and, since `start` (a
    `machine_snapshot()` taken at the start of the run; None: now), the load average before and after and the
    CPU steal percent."""
    cpu, thp = parse_cpuinfo(_read("/proc/cpuinfo")), _read(THP_SETTING)
    end = machine_snapshot()
    start = start or end
    m = machine()
    return {"cpu": m["cpu"], **{k: cpu.get(k, "?") for k in ("vendor", "family", "model", "stepping", "microcode")},
            "nproc": m["nproc"], "cpus": m["cpus"], "thp": parse_thp(thp) if thp else "n/a",
            "load_before": start["load"], "load_after": end["load"],
            "steal_pct": steal_percent(start["cpu_times"], end["cpu_times"]),
            "run_s": end["time"] - start["time"], "platform": platform.platform(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")}


def machine_line(d: Mapping) -> str:
    """One line: 'Machine: Intel(R) Xeon(R) Processor (GenuineIntel, family 6 model 207 stepping 2, microcode
    0x1), nproc 2, transparent huge pages madvise, load average (1/5/15 min) 1.0 / 1.1 / 1.4 before and
    1.9 / 1.5 / 1.4 after, CPU steal 0.4% during the run (6.2 min).'"""
    steal = "n/a" if d.get("steal_pct") is None else f"{d['steal_pct']:.1f}%"
    cpus = f" of {d['cpus']} CPUs" if d.get("cpus") not in (None, d["nproc"]) else ""
    span = f" ({d['run_s'] / 60:.1f} min)" if d.get("run_s", 0) >= 6 else ""
    return (f"Machine: {d['cpu']} ({d['vendor']}, family {d['family']} model {d['model']} stepping {d['stepping']}, "
            f"microcode {d['microcode']}), nproc {d['nproc']}{cpus}, transparent huge pages {d['thp']}, load average "
            f"(1/5/15 min) {d['load_before']} before and {d['load_after']} after, CPU steal {steal} during the run"
            f"{span}{busy_note(d['load_before'])}.")


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


def import_jaxrlhf_from(src: str) -> None:
    """Makes `import jaxrlhf` load the copy under `src` (`use_commit`), even where the script has already
    imported parts of the checkout's: those modules are dropped first, else the commit's code would never run."""
    for name in [m for m in sys.modules if m == "jaxrlhf" or m.startswith("jaxrlhf.")]:
        del sys.modules[name]
    sys.path.insert(0, src)
    import jaxrlhf

    if not Path(jaxrlhf.__file__).resolve().is_relative_to(Path(src).resolve()):
        raise SystemExit(f"error: jaxrlhf still imports from {jaxrlhf.__file__}, not from {src}")


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
    """In a worker: hands `result` back to `run_worker` or `run_in_turns` (with its baton's turns and wait)."""
    extra = {"baton": _baton.stats()} if _baton is not None and _baton.active else {}
    (Path(args._io) / "result.json").write_text(json.dumps({**result, **extra}))


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


# ----------------------------------------------------------------------------- turns (the baton)
# Two sides of a comparison that run in separate processes take turns: the parent starts both, each blocks
# before its next step until it holds the baton and hands it back after the step, and the parent passes it
# A, B, A, B, ... So only one side computes at any moment, and a drift of the machine's speed (see above) hits
# both sides' steps alike instead of whichever side ran in the slower minutes.
#
# Each worker gets two pipes, named in BENCHLIB_BATON as "READ_FD,WRITE_FD" (inherited through pass_fds): the
# parent writes GO to the first to pass the baton; the worker writes BACK to the second to return it. A worker
# that exits closes its end, which the parent reads as EOF: done when it exited 0, else a WorkerFailed naming
# the side. A worker that holds the baton longer than `turn_timeout` is killed, with an error naming it.

BATON_ENV = "BENCHLIB_BATON"
GO, BACK = b"g", b"b"
TURN_TIMEOUT_S = 1800.0  # a side's longest turn; its first one (imports, loading, compiling) is the longest
EXIT_TIMEOUT_S = 120.0   # from closing its pipe (its last turn's end) to the exit of a worker


class Baton:
    """A worker's end of the turns. Outside `take_turns` (no BENCHLIB_BATON) it never waits, so the same
    worker code also runs alone."""

    def __init__(self, fds: str = ""):
        self._fds = tuple(int(x) for x in fds.split(",")) if fds else ()
        self.held, self.turns, self.waited = False, 0, 0.0

    @property
    def active(self) -> bool:
        return bool(self._fds)

    def take(self) -> None:
        """Blocks until the parent passes the baton; exits when the parent has gone."""
        if not self._fds or self.held:
            return
        t = time.perf_counter()
        got = os.read(self._fds[0], 1)
        if got != GO:
            raise SystemExit("benchlib: the parent closed the baton pipe; stopping")
        self.waited += time.perf_counter() - t
        self.held, self.turns = True, self.turns + 1

    def give(self) -> None:
        if self._fds and self.held:
            self.held = False
            os.write(self._fds[1], BACK)

    def pass_on(self) -> None:
        """The end of this turn: hands the baton back and waits for the next turn."""
        self.give()
        self.take()

    def clock(self) -> float:
        """Seconds that run only while this worker holds the baton (`perf_counter` less the waits): the time
        between two readings taken across a hand-over is the held time alone."""
        return time.perf_counter() - self.waited

    def stats(self) -> dict:
        return {"turns": self.turns, "waited_s": self.waited}


_baton: Baton | None = None


def baton() -> Baton:
    """This process's baton, taken on the first call (which waits for the first turn). A worker calls it before
    its heavy imports and model loading, so that nothing of it runs outside its turns."""
    global _baton
    if _baton is None:
        _baton = Baton(os.environ.pop(BATON_ENV, ""))  # popped: its children do not share the pipes
        _baton.take()
    return _baton


@dataclasses.dataclass
class _Player:
    label: str
    cmd: list[str]
    proc: subprocess.Popen
    go: int            # the parent's write end: passes the baton
    back: int          # the parent's read end: the baton comes back, or EOF when the worker exits
    log: object = None  # the worker's output file when captured
    done: bool = False


def _start_player(label: str, cmd: Sequence[str], env: Mapping[str, str] | None, cwd, capture: bool) -> _Player:
    go_r, go_w = os.pipe()
    back_r, back_w = os.pipe()
    env = {**(os.environ if env is None else env), BATON_ENV: f"{go_r},{back_w}"}
    log = tempfile.TemporaryFile("w+") if capture else None
    try:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, pass_fds=(go_r, back_w), stdout=log,
                                stderr=subprocess.STDOUT if capture else None, text=True)
    finally:
        os.close(go_r)
        os.close(back_w)
    return _Player(label, list(cmd), proc, go_w, back_r, log)


def _tail(p: _Player) -> str:
    if p.log is None:
        return ""
    p.log.seek(0)
    return "\n" + p.log.read()[-3000:]


def _ended(p: _Player, exit_timeout: float) -> None:
    """`p` closed its pipe: waits for its exit; raises WorkerFailed naming it unless it exited 0."""
    try:
        rc = p.proc.wait(timeout=exit_timeout)
    except subprocess.TimeoutExpired:
        p.proc.kill()
        raise WorkerFailed(f"{p.label} worker closed its baton pipe but did not exit in {exit_timeout:.0f} s; "
                           f"killed it") from None
    p.done = True
    if rc:
        raise WorkerFailed(f"{p.label} worker failed (exit {rc}): {' '.join(shlex.quote(c) for c in p.cmd)}"
                           f"{_tail(p)}")


def _turn(p: _Player, players: Sequence[_Player], turn_timeout: float, exit_timeout: float) -> None:
    """Passes the baton to `p` and waits until it comes back or `p` exits; a waiting side that dies meanwhile
    raises at once rather than at its turn."""
    try:
        os.write(p.go, GO)
    except BrokenPipeError:  # it exited before its turn
        _ended(p, exit_timeout)
        return
    deadline = time.monotonic() + turn_timeout
    while True:
        waiting = {o.back: o for o in players if not o.done}
        ready, _, _ = select.select(list(waiting), [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            raise WorkerFailed(f"{p.label} worker held the baton for over {turn_timeout:.0f} s; killed it")
        for fd in ready:
            o, got = waiting[fd], os.read(fd, 1)
            if o is p and got == BACK:
                return
            if got:  # a side returned a baton it did not hold: the protocol is broken, not the machine
                raise WorkerFailed(f"{o.label} worker handed back the baton out of turn")
            _ended(o, exit_timeout)
            if o is p:
                return


def _next_player(players: Sequence[_Player], p: _Player) -> _Player | None:
    """The first side after `p`, round the list, that has not exited (`p` itself when it is the last)."""
    k = players.index(p)
    for j in range(1, len(players) + 1):
        q = players[(k + j) % len(players)]
        if not q.done:
            return q
    return None


def take_turns(sides: Sequence[tuple[str, Sequence[str], Mapping[str, str] | None]], *, cwd: str | Path | None = None,
               capture: bool = False, turn_timeout: float = TURN_TIMEOUT_S,
               exit_timeout: float = EXIT_TIMEOUT_S) -> list[tuple[str, float, float]]:
    """Starts one process per side, (label, command, env or None for this one's), and passes them the baton in
    turn, first to last and round again, until every one has exited; a side that has exited drops out of the
    round. Returns the turns as (label, start, end) in `time.time()`. Raises WorkerFailed, naming the side,
    when one exits non-zero or holds the baton over `turn_timeout` s; the others are then killed.

    capture: the workers' output goes to temp files (its tail into the error) instead of the console."""
    labels = [label for label, _, _ in sides]
    if len(set(labels)) != len(labels):
        raise ValueError(f"side labels must differ: {labels}")
    players: list[_Player] = []
    timeline: list[tuple[str, float, float]] = []
    try:
        for label, cmd, env in sides:
            players.append(_start_player(label, cmd, env, cwd, capture))
        p = players[0] if players else None
        while p is not None:
            t = time.time()
            _turn(p, players, turn_timeout, exit_timeout)
            timeline.append((p.label, t, time.time()))
            p = _next_player(players, p)
    finally:
        for p in players:
            if p.proc.poll() is None:
                p.proc.kill()
                p.proc.wait()
            for fd in (p.go, p.back):
                os.close(fd)
            if p.log is not None:
                p.log.close()
    return timeline


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of `run_in_turns`: its label, the worker kind, the script's arguments, its spec and env."""
    label: str
    kind: str
    argv: Sequence[str] = ()
    spec: Mapping | None = None
    env: Mapping[str, str] | None = None


def run_in_turns(script: str, sides: Sequence[Side], *, cwd: str | Path | None = None, capture: bool = False,
                 echo: bool = False, turn_timeout: float = TURN_TIMEOUT_S) -> dict[str, dict]:
    """`run_worker` for several sides at once, taking turns (`take_turns`); each worker calls `baton()` before its
    work and `baton().pass_on()` after each step. Returns {label: the worker's `worker_result` plus `turns`,
    `first_turn` and `last_turn` (seconds from the start) and `wall`}. Raises WorkerFailed as `take_turns`
    does, and when a worker exits 0 without a result."""
    with tempfile.TemporaryDirectory(prefix="bench_turns_") as tmp:
        runs = []
        for k, side in enumerate(sides):
            io_dir = Path(tmp) / str(k)
            io_dir.mkdir()
            (io_dir / "spec.json").write_text(json.dumps(dict(side.spec or {})))
            cmd = [sys.executable, str(Path(script).resolve()), *side.argv, "--_worker", side.kind,
                   "--_io", str(io_dir)]
            if echo:
                print(f"== {side.label}: {' '.join(shlex.quote(c) for c in cmd)}", flush=True)
            runs.append((side.label, cmd, side.env))
        t0 = time.time()
        timeline = take_turns(runs, cwd=cwd, capture=capture, turn_timeout=turn_timeout)
        wall = time.time() - t0
        results = {}
        for k, side in enumerate(sides):
            out = Path(tmp) / str(k) / "result.json"
            if not out.is_file():
                raise WorkerFailed(f"{side.label} worker exited without a result ({side.kind})")
            turns = [(a - t0, b - t0) for label, a, b in timeline if label == side.label]
            results[side.label] = {**json.loads(out.read_text()), "turns": len(turns), "wall": wall,
                                   "first_turn": turns[0][0], "last_turn": turns[-1][1]}
    return results


def turns_text(results: Mapping[str, Mapping]) -> str:
    """'jaxrlhf 25 turns from 0.0 to 6.1 min, TRL 25 turns from 0.3 to 6.2 min' (`run_in_turns` results)."""
    return ", ".join(f"{label} {r['turns']} turns from {r['first_turn'] / 60:.1f} to {r['last_turn'] / 60:.1f} min"
                     for label, r in results.items())


# ----------------------------------------------------------------------------- --quick and --json

def apply_quick(parser: argparse.ArgumentParser, argv: Sequence[str] | None, quick: Mapping[str, object]) -> None:
    """Adds `--quick` and, when it is in `argv`, makes `quick` the defaults (flags given explicitly still win).
    Workers get the same argv, so they see the same settings."""
    parser.add_argument("--quick", action="store_true",
                        help="a run of a few minutes with the same per-step job: " + flags_text(quick))
    if "--quick" in (sys.argv[1:] if argv is None else argv):
        parser.set_defaults(**quick)


def flags_text(flags: Mapping[str, object]) -> str:
    """'--iters 2 --repeats 3'"""
    return " ".join(f"--{k} {v}" for k, v in flags.items())


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default="", help="also write the result here as JSON (scripts/bench_all.py "
                        "reads it); '' : none")


def write_json(path: str | Path, benchmark: str, args: argparse.Namespace, command: str, machine: Mapping,
               headline: Mapping, **details) -> None:
    """The machine-readable result of a run: what bench_all's "Headline ratios" table needs (`headline`: the
    ratio's `name`, `best` and `median` speed-up of jaxrlhf, a `detail` text) and what the script adds."""
    if not path:
        return
    record = {"benchmark": benchmark, "quick": bool(getattr(args, "quick", False)), "command": command,
              "date": machine["date"], "machine": dict(machine), "machine_line": machine_line(machine),
              "headline": dict(headline), **details}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


def ratio_text(x: float | None) -> str:
    """'1.23x', or 'n/a' for a ratio that could not be measured (None, NaN: no steady steps on a side)."""
    return "n/a" if x is None or x != x else f"{x:.2f}x"


def print_headline(head: Mapping, per: str = "") -> None:
    """The one line each script prints for bench_all's log: its ratio, best and median (`per`: ' turn')."""
    print(f"headline: {head['name']}: {ratio_text(head['best'])} best{per}, "
          f"{ratio_text(head['median'])} median{per} ({head['detail']})")


def quick_note(args: argparse.Namespace, quick: Mapping[str, object]) -> list[str]:
    """The line a section starts with when `--quick` made it."""
    if not getattr(args, "quick", False):
        return []
    return [f"**Quick run (`--quick`: {flags_text(quick)}): each timed step, call or iteration is the full run's "
            "job, there are fewer of them; rerun without `--quick` for the full table.**", ""]


# ----------------------------------------------------------------------------- markdown

def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """A markdown table as lines: the header, the |---| rule, one line per row (cells already formatted)."""
    def line(cells):
        return "| " + " | ".join(str(c) for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows)]


def write_section(out: str | Path, section: str, mark_start: str, mark_end: str, *, append: bool = True) -> bool:
    """Replaces the text from `mark_start` (up to its first " (", so `<!-- name:start -->` matches too) through
    `mark_end` in the file `out` by `section`, which begins and ends with those marks. When the file has no
    such marks: appends `section` (`append`), or leaves the file alone and says so (`append=False`, for a file
    like the README where only a person decides where a section goes). An empty `out` (a script's `--out ''`)
    writes nothing. Returns whether it wrote."""
    if not out:
        return False
    path = Path(out)
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    start, end = text.find(mark_start.split(" (")[0]), text.find(mark_end)
    if start >= 0 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(mark_end):]
    elif append:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        print(f"{out} has no {mark_start.split(' (')[0]} --> ... {mark_end} marks: left unchanged")
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {out}")
    return True
