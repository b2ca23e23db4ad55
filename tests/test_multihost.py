"""Reward-model training in two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) equals one
process with the same global batch: each process loads half of every batch, both end with identical
parameters, one checkpoint and one metrics file are written, a stopped run resumes, the export loads."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import gloo_available, run_results

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model


def launch(shared: Path, work: Path, out: Path, processes: int, devices: int, **overrides) -> list[dict]:
    """Starts `processes` processes of one run of the worker multihost_rm (tests/workers.py), waits for all
    (killing the rest if one fails or hangs)."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["--model", shared / "model", "--data", shared / "pairs.jsonl", "--work", work, "--out", out,
            *(f"--set={key}={json.dumps(value)}" for key, value in overrides.items())]
    return run_results("multihost_rm", args, processes, devices, {"HF_DATASETS_CACHE": str(shared / "hf")})


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("multihost")
    make_tiny_llama_dir(d / "model")
    write_separable_pairs(d / "pairs.jsonl", 48)  # 16 held out, 32 train: 4 steps of 8 pairs per epoch
    return d


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.multiprocess
def test_two_processes_train_resume_and_export_like_one(shared, tmp_path):
    if not gloo_available():
        pytest.skip("this jaxlib has no gloo CPU collectives, so two CPU processes cannot run one computation")
    common = {"train.epochs": 2, "train.log_every": 1, "train.checkpoint_every": 0}
    single = launch(shared, tmp_path / "single", tmp_path / "out_single", 1, 1, **common)[0]

    work = tmp_path / "two"
    first = launch(shared, work, tmp_path / "out_first", 2, 2, **common, **{"train.stop_after": 3})
    assert all(r["summary"] == {"stopped_at": 3} for r in first)
    assert sorted(os.listdir(work / "checkpoints")) == ["3"]
    second = launch(shared, work, tmp_path / "out_second", 2, 2, **common,
                    **{"train.export": True, "train.histogram": True})

    # Each process was handed its own half of every global batch: process 0 the first rows, 1 the rest.
    assert len(single["rows"]) == 8
    for step in range(8):
        run = first if step < 3 else second
        i = step if step < 3 else step - 3
        halves = [r["rows"][i] for r in run]
        assert [len(h) for h in halves] == [4, 4]
        assert halves[0] + halves[1] == single["rows"][step]

    # Both processes hold the same parameters, and they are those of the one-process run.
    assert second[0]["checksum"] == second[1]["checksum"]
    two = load_params(tmp_path / "out_second" / "params_0.npz")
    one = load_params(tmp_path / "out_single" / "params_0.npz")
    assert two.keys() == one.keys() and len(one) > 5
    worst = max(float(np.max(np.abs(two[k] - one[k]))) for k in one)
    print(f"largest parameter difference, two processes vs one: {worst:.3g}")
    assert worst < 1e-5
    for key in ("accuracy", "mean_margin", "reward_mean", "n"):
        assert second[0]["summary"][key] == second[1]["summary"][key]
        assert abs(second[0]["summary"][key] - single["summary"][key]) < 1e-4

    # One checkpoint tree (the resumed run's final step next to the stop step), one metrics file with
    # each step once (a second writer would duplicate lines), one eval.json, histogram and export.
    assert sorted(os.listdir(work / "checkpoints")) == ["3", "8"]
    steps = [json.loads(line)["step"] for line in (work / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in line]
    assert steps == list(range(1, 9))
    assert len(list((work / "tensorboard").iterdir())) == 2  # one event file per launch
    assert json.loads((work / "eval.json").read_text())["accuracy"] == second[0]["summary"]["accuracy"]
    assert (work / "reward_histogram.png").stat().st_size > 1000
    assert [p.name for p in work.iterdir() if p.name.startswith(".export")] == []
    check_export(work / "export", two)


def check_export(export: Path, final: dict[str, np.ndarray]) -> None:
    """The export loads as a reward model whose parameters are the trained ones."""
    import jax
    from flax import nnx

    from jaxrlhf.models.hub import from_pretrained

    assert json.loads((export / "reward_stats.json").read_text())["n_pairs"] > 0
    model = from_pretrained(str(export), "reward").model
    loaded = {jax.tree_util.keystr(p): np.asarray(v)
              for p, v in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))}
    assert loaded.keys() == final.keys()
    for k in final:
        np.testing.assert_allclose(loaded[k], final[k], atol=1e-6, err_msg=k)


def test_distributed_arguments_from_config_env_or_tpu_pod(monkeypatch):
    from jaxrlhf.configs.base import rm_defaults
    from jaxrlhf.infra.multihost import distributed_args

    for name in ("JAXRLHF_COORDINATOR", "JAXRLHF_NUM_PROCESSES", "JAXRLHF_PROCESS_ID", "TPU_WORKER_HOSTNAMES",
                 "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(name, raising=False)
    block = rm_defaults().distributed
    assert distributed_args(block) is None  # one process: nothing to join
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
    assert distributed_args(block) is None  # a single-host TPU VM
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.2,10.0.0.3")
    assert distributed_args(block) == {}  # a pod slice: JAX detects the workers itself
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAXRLHF_COORDINATOR", "10.0.0.2:1234")
    monkeypatch.setenv("JAXRLHF_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAXRLHF_PROCESS_ID", "3")
    assert distributed_args(block) == {"coordinator_address": "10.0.0.2:1234", "num_processes": 4, "process_id": 3}
    block.coordinator, block.num_processes, block.process_id = "h:9", 2, 0  # the config wins over the env
    assert distributed_args(block) == {"coordinator_address": "h:9", "num_processes": 2, "process_id": 0}
    block.process_id = 2
    with pytest.raises(ValueError, match="process_id"):
        distributed_args(block)
    block.coordinator = "auto"
    assert distributed_args(block) == {}
