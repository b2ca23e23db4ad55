"""scripts/device_check.py: the --smoke run on this CPU writes a result line per measurement with the fields each
section promises, all finite; a failing measurement is an error line (OOM flagged), not the end of the run;
past the budget the rest is recorded as skipped."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tarfile
import types

import pytest

from tests.helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import device_check  # noqa: E402

SCRIPT = REPO_ROOT / "scripts" / "device_check.py"

# Fields every ok line of a section carries: `numbers` finite numbers here, `nullable` present but null where
# the backend has no such figure (this CPU has no peak FLOP/s, HBM bandwidth or memory counters).
PROMISED = {
    "env": dict(numbers=("device_count",), strings=("jax", "jaxlib", "flax", "backend", "device_kind", "xla_flags"),
                nullable=("memory_limit_gib", "peak_flops_bf16", "peak_hbm_bytes_s")),
    "attn": dict(numbers=("ms", "tflops", "flops", "compile_s", "rel_diff_out", "rel_diff_dq"), nullable=()),
    "rm": dict(numbers=("ms", "pairs_per_s", "tokens_per_s", "flops_6n", "flops_attn", "flops_xla_compiled",
                        "flops_xla_unrolled", "compile_s", "program_gib", "loss", "nonfinite", "n_params"),
               nullable=("mfu_6n", "mfu_6n_attn", "mfu_xla", "peak_gib")),
    "decode": dict(numbers=("ms_per_step", "tokens_per_s", "num_steps", "weight_bytes", "cache_bytes",
                            "bytes_per_step", "compile_s"), nullable=("hbm_frac", "peak_gib")),
    "logp": dict(numbers=("mean_abs_diff", "max_abs_diff", "n_tokens"), nullable=()),
    "ppo": dict(numbers=("ms", "tokens_per_s", "flops_6n", "flops_xla_unrolled", "compile_s", "program_gib"),
                nullable=("mfu_6n", "mfu_xla", "peak_gib")),
    "compile": dict(numbers=("compile_s", "lower_s", "T"), nullable=()),
    "profile": dict(numbers=("trace_mib", "ms"), nullable=()),
}
PROMISED["rm1b"] = PROMISED["rm"]


def _numbers_finite(row: dict) -> list[str]:
    """Keys whose value is a non-finite number (written as the strings NaN / Infinity) anywhere in the row."""
    bad = []
    for k, v in row.items():
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            if x in ("NaN", "Infinity", "-Infinity") or (isinstance(x, float) and not math.isfinite(x)):
                bad.append(k)
    return bad


def _run(tmp_path, *args, timeout=600):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    return proc, rows


@pytest.mark.slow  # about 50 s on a 2-core machine: every section at tiny shapes
def test_smoke_run_writes_every_section(tmp_path):
    proc, rows = _run(tmp_path, "--smoke")
    errors = [r for r in rows if r["status"] == "error"]
    assert not errors, [(r["section"], r["variant"], r["error"]) for r in errors]
    assert rows[-1]["section"] == "end" and rows[-1]["status"] == "ok"
    for section, promise in PROMISED.items():
        ok = [r for r in rows if r["section"] == section and r["status"] == "ok"]
        assert ok, f"no ok line for {section}"
        for r in ok:
            where = f"{section}/{r['variant']}"
            assert not _numbers_finite(r), (where, _numbers_finite(r))
            for k in promise["numbers"]:
                assert isinstance(r.get(k), (int, float)) and not isinstance(r[k], bool), (where, k, r.get(k))
            for k in promise.get("strings", ()):
                assert isinstance(r.get(k), str), (where, k)
            for k in promise["nullable"]:
                assert k in r, (where, k)
    # only the kernels of other backends (cuDNN, Splash) may be skipped on a CPU
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert all(r["section"] == "attn" and "needs a" in r["reason"] for r in skipped), skipped
    assert ("attn", "nn_cudnn") in {(r["section"], r["variant"]) for r in skipped}

    by = {(r["section"], r["variant"]): r for r in rows}
    smoke = device_check.SMOKE
    assert by[("logp", "f32")]["max_abs_diff"] < 1e-4  # sampler and learner agree in float32
    assert by[("logp", "f32")]["n_tokens"] == smoke["logp_batch"] * smoke["new"]
    assert by[("logp", "bf16")]["mean_abs_diff"] >= 0
    for r in rows:
        if r["section"] in ("rm", "rm1b") and r["status"] == "ok":
            assert r["nonfinite"] == 0 and r["flops_xla_unrolled"] > r["flops_xla_compiled"]
        if r["section"] == "decode" and r["status"] == "ok":
            assert r["num_steps"] == smoke["new"] and r["generated_tokens"] == r["B"] * smoke["new"]  # no EOS
    for name in ("nn_default", "nn_xla"):  # jax's attention agrees with jaxrlhf's (bfloat16 inputs)
        assert by[("attn", name)]["rel_diff_out"] < 3e-2 and by[("attn", name)]["rel_diff_dq"] < 3e-2
    with tarfile.open(tmp_path / "trace.tgz") as tar:
        assert any(m.isfile() for m in tar.getmembers())
    assert "| section | variant | status | measured |" in proc.stdout  # the closing table


def test_budget_spent_skips_the_rest(tmp_path):
    _, rows = _run(tmp_path, "--smoke", "--sections", "rm,decode", "--budget_s", "0", timeout=120)
    assert [(r["section"], r["status"]) for r in rows] == [("env", "skipped"), ("rm", "skipped"),
                                                           ("decode", "skipped"), ("end", "ok")]
    assert all("budget" in r["reason"] for r in rows[:-1])


def test_a_failing_measurement_is_a_line_and_the_run_goes_on(tmp_path):
    args = types.SimpleNamespace(out=str(tmp_path), budget_s=1e9, smoke=True, attention="")
    run = device_check.Run(args, dict(device_check.SMOKE))

    def oom():
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 81.5GiB")

    assert run.measure("rm", "bf16_64x512", oom, T=512) is None
    run.measure("rm", "next", lambda: {"ms": 1.5, "bad": float("nan")})
    run.file.close()
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert rows[0]["status"] == "error" and rows[0]["oom"] is True and rows[0]["T"] == 512
    assert "RESOURCE_EXHAUSTED" in rows[0]["error"] and "oom" in rows[0]["traceback"]
    assert rows[1]["status"] == "ok" and rows[1]["ms"] == 1.5 and rows[1]["bad"] == "NaN"  # visible, valid JSON


def test_unknown_section_is_refused():
    with pytest.raises(SystemExit):
        device_check.parse_args(["--sections", "rm,nope"])
