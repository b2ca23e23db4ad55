"""PPO in two processes on 127.0.0.1 (two CPU devices each) equals one process with four devices: same
per-iteration metrics, one metrics file and one export written by process 0, identical final actors."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import write_prompts
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import gloo_available, run_results
from tests.helpers.runs import make_tiny_rm_export

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # two PPO runs in worker processes


def launch(setup, work: Path, processes: int, devices: int) -> list[dict]:
    """`processes` processes of one run of the worker multihost_ppo (tests/workers.py), `devices` CPU devices each."""
    policy, rm, prompts, root = setup
    args = ["--policy", policy, "--rm", rm, "--prompts", prompts, "--work", work]
    return run_results("multihost_ppo", args, processes, devices, {"HF_DATASETS_CACHE": str(root / "hf")})


def test_two_process_ppo_equals_one_process(tmp_path):
    if not gloo_available():
        pytest.skip("this jaxlib has no gloo CPU collectives, so two CPU processes cannot run one computation")
    setup = (make_tiny_llama_dir(tmp_path / "policy", seed=0), make_tiny_rm_export(tmp_path),
             write_prompts(tmp_path / "prompts.jsonl"), tmp_path)
    launch(setup, tmp_path / "one", 1, 4)  # its metrics are the reference
    two = launch(setup, tmp_path / "two", 2, 2)
    assert two[0]["checksum"] == two[1]["checksum"]  # both processes hold the same actor

    records = lambda w: [json.loads(l) for l in (w / "metrics.jsonl").read_text().splitlines()
                         if '"ppo/score_mean"' in l]
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]  # one writer: no line twice
    for key in ("score_mean", "kl_per_seq", "policy_loss", "value_loss", "response_length"):
        np.testing.assert_allclose([r[f"ppo/{key}"] for r in b], [r[f"ppo/{key}"] for r in a], atol=1e-5,
                                   err_msg=key)
    assert (tmp_path / "two" / "export" / "config.json").exists()
