"""DPO on 8 fake CPU devices (data-parallel, FSDP, mixed meshes) and in two processes on 127.0.0.1 gives the
losses of one device, the cached reference included (every process computes and reads the same cache)."""

import json

import numpy as np
import pytest

from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import gloo_available, run_results

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # training runs in worker processes


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    d = tmp_path_factory.mktemp("sharded_dpo")
    make_tiny_llama_dir(d / "model")
    write_separable_pairs(d / "pairs.jsonl", 40)  # 8 held out, 32 train: 4 steps of 8 pairs per epoch
    return d


def run(shared, work, mesh, processes=1, devices=1, **overrides) -> list[dict]:
    args = ["--model", shared / "model", "--data", shared / "pairs.jsonl", "--work", work,
            "--mesh", ",".join(map(str, mesh)), *(f"--set={k}={json.dumps(v)}" for k, v in overrides.items())]
    return run_results("train_dpo", args, processes, devices, {"HF_DATASETS_CACHE": str(shared / "hf")})


@pytest.fixture(scope="module")
def single(shared):
    return run(shared, shared / "single", (1, 1, 1))[0]


def _losses(result) -> np.ndarray:
    return np.array([result["losses"][k] for k in sorted(result["losses"], key=int)])


@pytest.mark.parametrize("name,mesh", [("data", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("mixed", (2, 2, 2))])
def test_sharded_dpo_matches_one_device(shared, single, tmp_path, name, mesh):
    result = run(shared, tmp_path / name, mesh, devices=8)[0]
    assert len(_losses(single)) == 12
    np.testing.assert_allclose(_losses(result), _losses(single), atol=1e-5)
    assert result["summary"]["mean_margin"] == pytest.approx(single["summary"]["mean_margin"], abs=1e-4)


def test_two_processes_with_the_cached_reference_train_like_one(shared, single, tmp_path):
    if not gloo_available():
        pytest.skip("this jaxlib has no gloo CPU collectives, so two CPU processes cannot run one computation")
    work = tmp_path / "two"
    first = run(shared, work, (2, 1, 1), processes=2, **{"train.stop_after": 5})
    assert all(r["summary"] == {"stopped_at": 5} for r in first)
    assert (work / "reference_logps.npz").is_file()
    second = run(shared, work, (2, 1, 1), processes=2)
    timing = ("train_seconds", "pairs_per_s")
    assert [{k: v for k, v in r["summary"].items() if k not in timing} for r in second] == \
        [{k: v for k, v in second[0]["summary"].items() if k not in timing}] * 2
    losses = {int(k): v for r in (first[0], second[0]) for k, v in r["losses"].items()}
    np.testing.assert_allclose([losses[k] for k in sorted(losses)], _losses(single), atol=1e-5)
    assert second[0]["summary"]["accuracy"] == single["summary"]["accuracy"]
