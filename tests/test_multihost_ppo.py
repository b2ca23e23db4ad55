"""PPO in two processes on 127.0.0.1 (two CPU devices each) equals one process with four devices: same
per-iteration metrics, one metrics file and one export written by process 0, identical final actors."""

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.multihost_helpers import gloo_available, run_results
from tests.ppo_helpers import make_tiny_rm_export, write_prompts
from tests.rm_helpers import make_tiny_llama_dir

pytestmark = pytest.mark.slow  # trains, spawns processes or loads a real model

ROOT = str(Path(__file__).parents[1])
WORKER = textwrap.dedent("""
    import hashlib, json, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    import jax, numpy as np
    from tests.ppo_helpers import tiny_ppo_config
    from jaxrlhf.infra.multihost import to_host
    from jaxrlhf.infra.checkpoint import Checkpointer
    from jaxrlhf.train_ppo import train

    cfg = tiny_ppo_config(Path({policy!r}), Path({rm!r}), Path({prompts!r}), Path({work!r}))
    cfg.train.iterations = 3
    cfg.train.checkpoint_every = 0
    cfg.train.export = True
    cfg.ppo.rollout_batch_size, cfg.ppo.minibatch_size = 8, 4
    saved = {{}}
    save = Checkpointer.save
    def recording_save(self, step, state, meta):
        save(self, step, state, meta)
        saved["actor"] = state["actor"]["params"]
    Checkpointer.save = recording_save
    train(cfg)
    leaves = [to_host(x) for x in jax.tree_util.tree_leaves(saved["actor"])]
    checksum = hashlib.sha256(b"".join(np.ascontiguousarray(x).tobytes() for x in leaves)).hexdigest()
    print("RESULT " + json.dumps(dict(process=jax.process_index(), processes=jax.process_count(),
                                      devices=jax.device_count(), checksum=checksum)))
""")


def launch(setup, work: Path, processes: int, devices: int) -> list[dict]:
    policy, rm, prompts, root = setup
    script = WORKER.format(root=ROOT, policy=str(policy), rm=str(rm), prompts=str(prompts), work=str(work))
    return run_results(script, processes, devices, {"HF_DATASETS_CACHE": str(root / "hf")})


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
