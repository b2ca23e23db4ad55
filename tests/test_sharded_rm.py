"""RM training on 8 fake CPU devices under data-parallel, FSDP and tensor-parallel meshes gives the
same losses as on one device, also when a run resumes on a different mesh from another mesh's checkpoint."""

import json

import numpy as np
import pytest

from tests.helpers.data import write_separable_pairs
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.processes import run_worker

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # training runs on 8 fake devices in worker processes


def run(tmp_path, name, mesh, devices, model, data, stop_after=0, checkpoint_every=0):
    """The worker train_rm (tests/workers.py) on `devices` fake devices: its losses by step and eval.json."""
    work = tmp_path / name
    out = run_worker("train_rm", "--model", model, "--data", data, "--work", work, "--mesh", ",".join(map(str, mesh)),
                     "--stop-after", stop_after, "--checkpoint-every", checkpoint_every, devices=devices,
                     env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert f"DEVICES {devices}" in out.stdout
    if stop_after:
        return None, None
    records = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}  # a resume appends its steps
    final = json.loads((work / "eval.json").read_text())
    return np.array([losses[k] for k in sorted(losses)]), final


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """The one-device reference run, shared by the tests here."""
    shared = tmp_path_factory.mktemp("sharded_rm_shared")
    make_tiny_llama_dir(shared / "model")
    write_separable_pairs(shared / "pairs.jsonl", 96)
    losses, final = run(shared, "single", (1, 1, 1), 1, shared / "model", shared / "pairs.jsonl")
    return shared, losses, final


@pytest.mark.parametrize("name,mesh", [("data", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("mixed", (2, 2, 2)),
                                       ("tensor", (1, 1, 8))])
def test_sharded_training_matches_one_device(tmp_path_factory, single_run, name, mesh):
    shared, single, single_final = single_run
    tmp = tmp_path_factory.mktemp(name)
    losses, final = run(tmp, name, mesh, 8, shared / "model", shared / "pairs.jsonl")
    assert len(losses) == len(single) == 10
    np.testing.assert_allclose(losses, single, atol=1e-5)
    assert abs(final["mean_margin"] - single_final["mean_margin"]) < 1e-4


def test_resume_on_a_different_mesh_reshards(tmp_path, single_run):
    """Saved with parameters and optimiser state FSDP-sharded over 8 devices, restored tensor-parallel
    over 4 and data-parallel over 2: the run goes on as if it had never stopped."""
    shared, single, single_final = single_run
    args = (shared / "model", shared / "pairs.jsonl")
    run(tmp_path, "moved", (1, 8, 1), 8, *args, stop_after=4, checkpoint_every=2)
    assert sorted(int(p.name) for p in (tmp_path / "moved" / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]
    losses, final = run(tmp_path, "moved", (2, 1, 4), 8, *args)
    logged = [l for l in (tmp_path / "moved" / "metrics.jsonl").read_text().splitlines() if "train/loss" in l]
    assert len(logged) == len(losses) == len(single) == 10  # steps 1-4 once: it resumed, did not start over
    np.testing.assert_allclose(losses, single, atol=1e-5)
    assert abs(final["mean_margin"] - single_final["mean_margin"]) < 1e-4
