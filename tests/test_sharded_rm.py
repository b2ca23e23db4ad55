"""RM training on 8 fake CPU devices under data-parallel, FSDP and tensor-parallel meshes gives the
same losses as on one device."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.rm_helpers import make_tiny_llama_dir, write_separable_pairs

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {root!r})
    from tests.rm_helpers import tiny_rm_config
    from jaxrlhf.train_rm import train
    import jax
    cfg = tiny_rm_config({model!r}, {data!r}, {work!r})
    cfg.train.epochs = 1
    cfg.train.log_every = 1
    cfg.train.checkpoint_every = 0
    cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = {mesh}
    print("DEVICES", len(jax.devices()))
    train(cfg)
""")


def run(tmp_path, name, mesh, devices, model, data):
    work = tmp_path / name
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               HF_DATASETS_CACHE=str(tmp_path / "hf"))
    script = SCRIPT.format(root=str(Path(__file__).parents[1]), model=str(model), data=str(data), work=str(work),
                           mesh=mesh)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"DEVICES {devices}" in out.stdout
    records = [json.loads(l) for l in (work / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    final = json.loads((work / "eval.json").read_text())
    return np.array(losses), final


@pytest.mark.parametrize("name,mesh", [("data", (8, 1, 1)), ("fsdp", (1, 8, 1)), ("mixed", (2, 2, 2)),
                                       ("tensor", (1, 1, 8))])
def test_sharded_training_matches_one_device(tmp_path_factory, name, mesh):
    shared = tmp_path_factory.getbasetemp() / "sharded_rm_shared"
    if not shared.exists():
        shared.mkdir()
        make_tiny_llama_dir(shared / "model")
        write_separable_pairs(shared / "pairs.jsonl", 96)
        run(shared, "single", (1, 1, 1), 1, shared / "model", shared / "pairs.jsonl")
    single = [json.loads(l)["train/loss"] for l in (shared / "single" / "metrics.jsonl").read_text().splitlines()
              if "train/loss" in l]
    tmp = tmp_path_factory.mktemp(name)
    losses, final = run(tmp, name, mesh, 8, shared / "model", shared / "pairs.jsonl")
    assert len(losses) == len(single) == 10
    np.testing.assert_allclose(losses, single, atol=1e-5)
    single_final = json.loads((shared / "single" / "eval.json").read_text())
    assert abs(final["mean_margin"] - single_final["mean_margin"]) < 1e-4
