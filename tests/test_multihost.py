"""Reward-model training in two processes on 127.0.0.1 (jax.distributed, gloo CPU collectives) equals one
process with the same global batch: each process loads half of every batch, both end with identical
parameters, one checkpoint and one metrics file are written, a stopped run resumes, the export loads."""

import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.multihost_helpers import gloo_available, run_results
from tests.rm_helpers import make_tiny_llama_dir, write_separable_pairs

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

ROOT = str(Path(__file__).parents[1])

# Runs train_rm.train in one process of a (possibly one-process) run, recording what the host loop hands
# to the devices (row hashes of each training batch) and the parameters of the last checkpoint saved.
WORKER = textwrap.dedent("""
    import hashlib, json, sys
    sys.path.insert(0, {root!r})
    import numpy as np
    from tests.rm_helpers import tiny_rm_config
    from jaxrlhf import train_rm
    from jaxrlhf.infra.checkpoint import Checkpointer

    cfg = tiny_rm_config({model!r}, {data!r}, {work!r})
    for dotted, value in {overrides!r}.items():
        block, key = dotted.rsplit(".", 1)
        cfg[block][key] = value

    rows, saved = [], {{}}
    from jaxrlhf.training import loop as step_loop  # the training batches pass its to_global
    to_global = step_loop.to_global
    def recording_to_global(batch, mesh):
        rows.append([hashlib.md5(r.tobytes()).hexdigest()[:10] for r in batch["chosen_ids_BxT"]])
        return to_global(batch, mesh)
    step_loop.to_global = recording_to_global
    save = Checkpointer.save
    def recording_save(self, step, state, meta):
        save(self, step, state, meta)
        saved["params"] = state["params"]  # the last one saved is the final state (never donated after)
    Checkpointer.save = recording_save

    summary = train_rm.train(cfg)

    import jax
    local = {{}}
    for path, leaf in jax.tree_util.tree_leaves_with_path(saved["params"]):
        assert leaf.is_fully_replicated, (path, leaf.sharding)  # data parallel: a whole copy on each process
        local[jax.tree_util.keystr(path)] = np.asarray(leaf.addressable_data(0))
    checksum = hashlib.sha256(b"".join(local[k].tobytes() for k in sorted(local))).hexdigest()
    np.savez({out!r} + f"/params_{{jax.process_index()}}.npz", **local)
    print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(),
                                      devices=jax.device_count(), checksum=checksum, rows=rows, summary=summary)))
""")


def launch(shared: Path, work: Path, out: Path, processes: int, devices: int, **overrides) -> list[dict]:
    """Starts `processes` workers of one run, waits for all (killing the rest if one fails or hangs)."""
    out.mkdir(parents=True, exist_ok=True)
    script = WORKER.format(root=ROOT, model=str(shared / "model"), data=str(shared / "pairs.jsonl"), work=str(work),
                           out=str(out), overrides=overrides)
    return run_results(script, processes, devices, {"HF_DATASETS_CACHE": str(shared / "hf")})


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("multihost")
    make_tiny_llama_dir(d / "model")
    write_separable_pairs(d / "pairs.jsonl", 48)  # 16 held out, 32 train: 4 steps of 8 pairs per epoch
    return d


def load_params(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


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
    two, one = load_params(tmp_path / "out_second" / "params_0.npz"), load_params(tmp_path / "out_single" / "params_0.npz")
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
    from jaxrlhf.configs_base import rm_defaults
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
