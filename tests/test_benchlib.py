"""scripts/benchlib.py: the machine line from /proc text, the CPU steal share, and the baton that makes the
two sides of a benchmark take turns (fake workers started with `python -c`: no model is loaded)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import benchlib  # noqa: E402

CPUINFO = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 207
model name	: Intel(R) Xeon(R) Processor
stepping	: 2
microcode	: 0x1
cpu MHz		: 2100.000
flags		: fpu vme de pse

processor	: 1
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Another CPU
stepping	: 8
microcode	: 0x2b000590
"""

# user nice system idle iowait irq softirq steal guest guest_nice
STAT_BEFORE = "cpu  100 0 50 800 10 0 5 35 20 0\ncpu0 50 0 25 400 5 0 3 17 10 0\nintr 123\n"
STAT_AFTER = "cpu  200 0 100 1500 20 0 10 170 40 0\ncpu0 100 0 50 750 10 0 5 85 20 0\nintr 456\n"


def test_cpuinfo_gives_the_first_processor():
    assert benchlib.parse_cpuinfo(CPUINFO) == {
        "vendor": "GenuineIntel", "family": "6", "model": "207", "cpu": "Intel(R) Xeon(R) Processor",
        "stepping": "2", "microcode": "0x1"}
    assert benchlib.parse_cpuinfo("processor : 0\nBogoMIPS : 50.00\n") == {}  # an ARM-style file: nothing known


def test_cpu_times_leave_guest_time_out_of_the_total():
    # total = user .. steal = 100+0+50+800+10+0+5+35; guest (20) is already inside user
    assert benchlib.parse_cpu_times(STAT_BEFORE) == (35, 1000)
    assert benchlib.parse_cpu_times("cpu 1 2 3 4\n") == (0, 10)  # an old kernel: no steal column
    with pytest.raises(ValueError):
        benchlib.parse_cpu_times("intr 1\n")


def test_steal_is_the_share_of_the_ticks_between_two_readings():
    before, after = benchlib.parse_cpu_times(STAT_BEFORE), benchlib.parse_cpu_times(STAT_AFTER)
    assert benchlib.steal_percent(before, after) == pytest.approx(100 * (170 - 35) / (2000 - 1000))
    assert benchlib.steal_percent(before, before) is None  # no time passed
    assert benchlib.steal_percent(None, after) is None


def test_thp_setting_is_the_bracketed_word():
    assert benchlib.parse_thp("always [madvise] never\n") == "madvise"
    assert benchlib.parse_thp("[always] madvise never") == "always"
    assert benchlib.parse_thp("") == "?"


def test_machine_line_names_what_the_table_ran_on():
    d = {**benchlib.parse_cpuinfo(CPUINFO), "nproc": 2, "cpus": 2, "thp": "madvise", "load_before": "0.2 / 0.3 / 0.4",
         "load_after": "1.9 / 1.5 / 1.4", "run_s": 372.0,
         "steal_pct": benchlib.steal_percent(benchlib.parse_cpu_times(STAT_BEFORE),
                                             benchlib.parse_cpu_times(STAT_AFTER))}
    line = benchlib.machine_line(d)
    assert line == ("Machine: Intel(R) Xeon(R) Processor (GenuineIntel, family 6 model 207 stepping 2, microcode 0x1), "
                    "nproc 2, transparent huge pages madvise, load average (1/5/15 min) 0.2 / 0.3 / 0.4 before and "
                    "1.9 / 1.5 / 1.4 after, CPU steal 13.5% during the run (6.2 min).")
    busy = benchlib.machine_line({**d, "load_before": "1.5 / 0.3 / 0.4", "steal_pct": None, "cpus": 4})
    assert "nproc 2 of 4 CPUs" in busy and "CPU steal n/a" in busy and "load over 1 at the start" in busy


def test_machine_description_of_this_machine_has_every_field():
    d = benchlib.machine_description(benchlib.machine_snapshot())
    assert {"cpu", "vendor", "family", "model", "stepping", "microcode", "nproc", "thp", "load_before",
            "load_after", "steal_pct", "date"} <= set(d)
    assert benchlib.machine_line(d).startswith("Machine: ")
    json.dumps(d)  # it goes into the --json result


# ----------------------------------------------------------------------------- the baton

# A fake side: takes the baton, then `n` iterations of `sleep` s each, handing over between them; writes one
# line per iteration (label, index, start, end) and, at the end, its held-clock and wall seconds.
FAKE = textwrap.dedent("""
    import json, os, sys, time
    import benchlib
    label, n, sleep, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    b = benchlib.baton()
    with open(out, "a") as f:
        f.write(json.dumps({"pid": os.getpid()}) + "\\n")
        f.flush()
        c0, w0 = b.clock(), time.perf_counter()
        for i in range(n):
            t = time.time()
            time.sleep(sleep)
            f.write(json.dumps({"label": label, "i": i, "start": t, "end": time.time()}) + "\\n")
            f.flush()
            if label.endswith("dies") and i == 0:
                sys.exit(3)
            if i < n - 1:
                b.pass_on()
        f.write(json.dumps({"held": b.clock() - c0, "wall": time.perf_counter() - w0, "turns": b.turns}) + "\\n")
""")


def fake_side(label: str, n: int, sleep: float, out: Path, code: str = FAKE):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "scripts")}
    return label, [sys.executable, "-c", code, label, str(n), str(sleep), str(out)], env


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.multiprocess
def test_baton_alternates_the_sides_and_their_clocks_leave_out_the_waits(tmp_path):
    a, b, sleep = tmp_path / "a.jsonl", tmp_path / "b.jsonl", 0.1
    timeline = benchlib.take_turns([fake_side("A", 3, sleep, a), fake_side("B", 5, sleep, b)], turn_timeout=60)
    steps = sorted([r for r in records(a) + records(b) if "i" in r], key=lambda r: r["start"])
    # A, B, A, B, ... while both run; B alone once A has finished
    assert [(r["label"], r["i"]) for r in steps] == [("A", 0), ("B", 0), ("A", 1), ("B", 1), ("A", 2), ("B", 2),
                                                     ("B", 3), ("B", 4)]
    assert all(x["end"] <= y["start"] for x, y in zip(steps, steps[1:])), "two sides computed at once"
    assert [label for label, _, _ in timeline] == ["A", "B", "A", "B", "A", "B", "B", "B"]
    # each side's held clock counts its own iterations; its waits (two of the other side's iterations fall
    # inside each side's span) are left out
    for path, n in ((a, 3), (b, 5)):
        done = records(path)[-1]
        assert done["turns"] == n
        assert done["held"] >= n * sleep
        assert done["wall"] - done["held"] >= 2 * sleep * 0.9


@pytest.mark.multiprocess
def test_a_side_that_dies_holding_the_baton_stops_the_run_with_its_name(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    t = time.time()
    with pytest.raises(benchlib.WorkerFailed, match=r"B dies worker failed \(exit 3\)"):
        benchlib.take_turns([fake_side("A", 50, 0.01, a), fake_side("B dies", 50, 0.01, b)], turn_timeout=60)
    assert time.time() - t < 30
    with pytest.raises(ProcessLookupError):  # the other side did not outlive the run
        os.kill(records(a)[0]["pid"], 0)


@pytest.mark.multiprocess
def test_a_side_that_dies_waiting_for_its_turn_stops_the_run_at_once(tmp_path):
    crash = "import sys; sys.exit(5)"  # exits before it ever takes the baton
    t = time.time()
    with pytest.raises(benchlib.WorkerFailed, match=r"B worker failed \(exit 5\)"):
        benchlib.take_turns([fake_side("A", 1, 20.0, tmp_path / "a.jsonl"),
                             fake_side("B", 1, 0.0, tmp_path / "b.jsonl", code=crash)], turn_timeout=60)
    assert time.time() - t < 15, "waited for A's 20 s turn to end before noticing that B had died"


@pytest.mark.multiprocess
def test_a_side_that_keeps_the_baton_too_long_is_killed_by_name(tmp_path):
    t = time.time()
    with pytest.raises(benchlib.WorkerFailed, match="slow worker held the baton for over 1 s"):
        benchlib.take_turns([fake_side("slow", 1, 60.0, tmp_path / "a.jsonl")], turn_timeout=1)
    assert time.time() - t < 15


@pytest.mark.multiprocess
def test_run_in_turns_returns_each_workers_result(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent("""
        import argparse
        import benchlib
        p = argparse.ArgumentParser()
        p.add_argument("--steps", type=int)
        benchlib.add_worker_args(p, ("echo", "silent"))
        args = p.parse_args()
        baton = benchlib.baton()
        for _ in range(args.steps - 1):
            baton.pass_on()
        if args._worker == "echo":
            benchlib.worker_result(args, {"got": benchlib.worker_spec(args)["x"]})
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "scripts")}
    sides = [benchlib.Side("one", "echo", ["--steps", "3"], {"x": 1}, env),
             benchlib.Side("two", "echo", ["--steps", "2"], {"x": 2}, env)]
    out = benchlib.run_in_turns(str(script), sides, capture=True)
    assert {k: (r["got"], r["turns"], r["baton"]["turns"]) for k, r in out.items()} == {"one": (1, 3, 3),
                                                                                        "two": (2, 2, 2)}
    assert out["one"]["first_turn"] < out["two"]["first_turn"] < out["one"]["last_turn"]
    with pytest.raises(benchlib.WorkerFailed, match="mute worker exited without a result"):
        benchlib.run_in_turns(str(script), [benchlib.Side("mute", "silent", ["--steps", "1"], env=env)], capture=True)


# ----------------------------------------------------------------------------- sections and flags

def test_write_section_replaces_between_marks_and_leaves_a_file_without_them_alone(tmp_path):
    start, end = "<!-- x:start (written by a script) -->", "<!-- x:end -->"
    doc = tmp_path / "README.md"
    doc.write_text("# Title\n\nText.\n")
    assert not benchlib.write_section(doc, f"{start}\nnew\n{end}\n", start, end, append=False)
    assert doc.read_text() == "# Title\n\nText.\n"
    doc.write_text("before\n<!-- x:start -->\nold\n<!-- x:end -->\nafter\n")  # marks a person placed
    assert benchlib.write_section(doc, f"{start}\nnew\n{end}\n", start, end, append=False)
    assert doc.read_text() == f"before\n{start}\nnew\n{end}\nafter\n"
    other = tmp_path / "bench.md"
    assert benchlib.write_section(other, f"{start}\nnew\n{end}\n", start, end)  # appends by default
    assert other.read_text() == f"# Benchmarks\n\n{start}\nnew\n{end}\n"


def test_quick_sets_defaults_that_explicit_flags_override():
    def parse(argv):
        p = argparse.ArgumentParser()
        p.add_argument("--iters", type=int, default=5)
        p.add_argument("--new", type=int, default=32)
        benchlib.apply_quick(p, argv, {"iters": 2})
        return p.parse_args(argv)

    assert (parse([]).iters, parse([]).quick) == (5, False)
    assert (parse(["--quick"]).iters, parse(["--quick"]).new) == (2, 32)
    assert parse(["--quick", "--iters", "4"]).iters == 4
