"""Memory planner and mesh checks: planned per-device bytes equal what from_pretrained places on 8 fake
devices; FSDP spreads SmolLM2 and MiniLM evenly; a batch or axis that does not fit is one error line."""

import json
import subprocess
import sys

import pytest
from flax import nnx

from jaxrlhf.infra import planner
from jaxrlhf.infra import sharding as shd
from jaxrlhf.infra.mesh_checks import check_axes, check_batch
from jaxrlhf.models import registry
from tests.helpers import REPO_ROOT as ROOT
from tests.helpers.data import write_separable_pairs
from tests.helpers.mesh import FakeMesh
from tests.helpers.models import make_tiny_llama_dir, tiny_llama_dir_config
from tests.helpers.processes import cpu_env, run_worker

SMOLLM2_CONFIG = {"model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
                  "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
                  "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "tie_word_embeddings": True}
MINILM_CONFIG = {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "intermediate_size": 1536,
                 "num_hidden_layers": 6, "num_attention_heads": 12, "max_position_embeddings": 512,
                 "type_vocab_size": 2, "pad_token_id": 0}


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("planner")
    write_separable_pairs(root / "pairs.jsonl", 32)
    return make_tiny_llama_dir(root / "model")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_planned_parameter_bytes_equal_bytes_placed_on_each_device(tiny_llama_dir):
    run = run_worker("placed_bytes", "--model", tiny_llama_dir, devices=8)  # tests/workers.py
    results = json.loads(run.stdout.split("RESULT", 1)[1])
    for r in results:
        assert r["placed_params"] == [r["planned_params"]] * 8, r
        assert r["planned_abstract"] == r["planned_params"], r  # shapes alone give the same answer
        # the two moments as planned, plus the replicated int32 step counts of AdamW and the schedule
        assert len(set(r["placed_optimiser"])) == 1, r
        assert 0 < r["placed_optimiser"][0] - r["planned_optimiser"] <= 16, r
    lora = next(r for r in results if r["mode"] == "lora")
    # only the (replicated) adapters of q (32 out) and v (16 out) and the head (split over fsdp=4) train
    adapters = 2 * (32 * 4 + 4 * 32) + 2 * (32 * 4 + 4 * 16)
    assert lora["planned_optimiser"] == 2 * 4 * (adapters + 32 // 4)


def _totals(hf_config, task, mesh, mode="full"):
    from jaxrlhf.training.trainable import split_trainable

    model, cfg = registry.abstract_model(hf_config, task)
    _, trainable, frozen = split_trainable(model, mode)
    plan = planner.plan_model("m", trainable, frozen, planner.Dims.of(cfg), planner.Workload(), mesh)
    unsharded = planner.state_bytes(nnx.state(model), FakeMesh())
    return plan, unsharded


@pytest.mark.parametrize("name,hf_config,task,mesh", [
    ("smollm2 fsdp", SMOLLM2_CONFIG, "causal_lm", FakeMesh(fsdp=8)),
    ("smollm2 tensor", SMOLLM2_CONFIG, "causal_lm", FakeMesh(tensor=8)),
    ("smollm2 critic fsdp", SMOLLM2_CONFIG, "value", FakeMesh(fsdp=8)),
    ("minilm fsdp", MINILM_CONFIG, "reward", FakeMesh(fsdp=8)),
])
def test_sharding_spreads_parameters_and_optimiser_over_8_devices(name, hf_config, task, mesh):
    plan, unsharded = _totals(hf_config, task, mesh)
    assert unsharded > 80e6  # the real sizes: 135M (SmolLM2) and 22.7M (MiniLM) float32 parameters
    assert plan.params <= unsharded / 8 * 1.05, name
    assert plan.optimiser <= 2 * unsharded / 8 * 1.05, name


def test_frozen_parameters_have_no_optimiser_state():
    plan, unsharded = _totals(SMOLLM2_CONFIG, "causal_lm", FakeMesh(fsdp=8), mode="frozen_backbone")
    assert plan.optimiser == plan.grads == 0  # tied embeddings: no head parameter trains
    plan, _ = _totals(MINILM_CONFIG, "reward", FakeMesh(), mode="frozen_backbone")
    assert 0 < plan.optimiser == 2 * 4 * (384 * 384 + 384 + 384 + 1)  # the pooler-style head: dense + out


def test_activation_estimate_follows_its_formula():
    dims = planner.Dims(hidden=64, intermediate=256, layers=4, heads=8, kv_heads=2, head_dim=8, vocab=1000)
    work = planner.Workload(train_batch=16, train_length=32)
    block = 2 * 32 * (8 * 64 + 4 * 256 + 2 * 8 * 32) * 4  # 16 sequences over data=8: 2 per device
    assert planner.activation_bytes(dims, work, {"data": 8}) == 4 * block
    remat = planner.Workload(train_batch=16, train_length=32, remat=True)
    assert planner.activation_bytes(dims, remat, {"data": 8}) == 4 * 2 * 32 * 64 * 4 + block
    projections = 2 * 32 * (4 * 64 + 2 * 2 * 8 + 2 * 256) * 4
    nbd = planner.Workload(train_batch=16, train_length=32, remat="dots_with_no_batch_dims_saveable")
    assert planner.activation_bytes(dims, nbd, {"data": 8}) == 4 * projections + block
    dots = planner.Workload(train_batch=16, train_length=32, remat="dots_saveable")
    assert planner.activation_bytes(dims, dots, {"data": 8}) == 4 * (projections + 2 * 8 * 32 * 32 * 4) + block
    with_logits = planner.Workload(train_batch=16, train_length=32, logits_chunk=16)
    assert planner.activation_bytes(dims, with_logits, {"data": 8}) == 4 * block + 2 * 16 * 1000 * 4 * 2


def test_planner_knows_the_models_remat_policies():
    from jaxrlhf.models.layers import REMAT_POLICIES

    assert set(planner.REMAT_POLICIES) == set(REMAT_POLICIES)


def test_table_has_a_row_per_model_and_a_mesh_total():
    plans = [planner.ModelPlan("actor", 1000, 1000, 2000, 500, 8), planner.ModelPlan("critic", 1000, 0, 0, 100, 8)]
    table = planner.format_plan(plans, FakeMesh(fsdp=8))
    lines = table.splitlines()
    assert lines[2].split()[0] == "actor" and lines[3].split()[0] == "critic"
    # models run one after another: parameters and optimisers add up, the peak step on top
    assert "5.4 KiB" in lines[4] and "x 8 devices = 43.0 KiB" in lines[4]  # 2000 + 2000 + 1500 bytes


def test_batch_that_does_not_divide_is_one_line():
    check_batch(FakeMesh(data=2, fsdp=4), {"data.batch_size": 16})
    with pytest.raises(shd.MeshError) as e:
        check_batch(FakeMesh(data=3), {"ppo.rollout_batch_size": 12, "ppo.minibatch_size": 4})
    assert str(e.value) == ("ppo.minibatch_size=4 does not divide by the mesh's batch axes data*fsdp=3 "
                            "(data=3, fsdp=1): use a multiple of 3")


def test_axis_that_splits_nothing_is_refused_and_partial_splits_warn():
    # the shapes of make_tiny_llama_dir: vocab 39, hidden 32, intermediate 64, 4 heads of 8, 2 kv heads
    model, _ = registry.abstract_model(tiny_llama_dir_config().to_diff_dict(), "reward")
    states = {"reward model": nnx.state(model)}
    with pytest.raises(shd.MeshError) as e:
        check_axes(states, FakeMesh(tensor=7))
    assert str(e.value) == ("mesh axis tensor=7 cannot split any parameter: no dim it is assigned to divides by 7 "
                            "(mlp 16/32/64, vocab 39); choose a tensor size that divides them")
    with pytest.raises(shd.MeshError, match="mesh axis fsdp=5 cannot split any parameter"):
        check_axes(states, FakeMesh(fsdp=5))
    assert check_axes(states, FakeMesh(data=4, fsdp=2)) == []
    warnings = check_axes(states, FakeMesh(tensor=3))  # splits the vocab (39) only
    assert len(warnings) == 1 and warnings[0].startswith(
        "warning: mesh axis tensor=3 leaves parameters it is assigned to whole: reward model 7 of 8 (")
    assert "backbone/layers/mlp/gate_proj/kernel (2, 32, 64)" in warnings[0]


def _cli(tiny_llama_dir, devices, *overrides):
    env = cpu_env(devices)
    env.pop("JAXRLHF_TRACEBACK", None)
    pairs = tiny_llama_dir.parent / "pairs.jsonl"
    cmd = [sys.executable, "-m", "jaxrlhf.train_rm", f"--config={ROOT / 'jaxrlhf/configs/rm.py'}",
           f"--config.model.name={tiny_llama_dir}", f"--config.data.source={pairs}",
           f"--config.workdir={tiny_llama_dir.parent / 'work'}", *overrides]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_cli_batch_error_is_one_stderr_line(tiny_llama_dir):
    run = _cli(tiny_llama_dir, 3, "--config.mesh.data=3")
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.strip().splitlines() == [
        "error: data.batch_size=16 does not divide by the mesh's batch axes data*fsdp=3 (data=3, fsdp=1): "
        "use a multiple of 3"]


@pytest.mark.slow
@pytest.mark.multiprocess
def test_cli_axis_error_is_one_stderr_line(tiny_llama_dir):
    run = _cli(tiny_llama_dir, 7, "--config.mesh.data=1", "--config.mesh.tensor=7")
    assert run.returncode == 2, run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: mesh axis tensor=7 cannot split any parameter"), lines


def test_table_warns_when_the_plan_exceeds_a_device():
    plans = [planner.ModelPlan("rm", 1000, 1000, 2000, 500, 8)]
    assert "warning" not in planner.format_plan(plans, FakeMesh(fsdp=8), device_limit=4500)
    assert planner.format_plan(plans, FakeMesh(fsdp=8), device_limit=4499).splitlines()[-1] == (
        "warning: the plan needs 4.4 KiB per device, a device has 4.4 KiB")


@pytest.mark.multiprocess
def test_planner_cli_plans_from_config_json_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    cmd = [sys.executable, "-m", "jaxrlhf.plan", f"--model={tmp_path}", "--mesh=1,8,1", "--batch=16"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=cpu_env())
    assert run.returncode == 0, run.stderr[-2000:]
    row = run.stdout.splitlines()[2].split()
    assert row[:3] == ["causal_lm", "64.3", "MiB"]  # 538,060,032 bytes of float32 parameters / 8 (+ norms)
    run = subprocess.run(cmd[:-2] + ["--mesh=1,1,7"], capture_output=True, text=True, cwd=ROOT, env=cpu_env())
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith(
        "error: mesh axis tensor=7 cannot split any parameter: no dim it is assigned to divides by 7 (mlp ")


LLAMA_3_2_1B_CONFIG = dict(  # meta-llama/Llama-3.2-1B's config.json, the fields the planner reads
    model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=2048,
    intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=True)


def test_planner_says_which_remat_policies_fit_a_device(tmp_path, capsys):
    """Llama-3.2-1B full RM training, 16 pairs (32 sequences) of 512 bf16 tokens, FSDP over a v5e-8 (16 GiB
    a chip): the policies named as fitting are exactly those whose planned total is under the limit."""
    from jaxrlhf import plan

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_2_1B_CONFIG))
    args = [f"--model={tmp_path}", "--task=reward", "--mesh=1,8,1", "--batch=32", "--length=512", "--dtype_bytes=2"]
    plan.main(args + ["--device_gib=16"])
    out = capsys.readouterr().out.splitlines()
    fitting = out[-1].removeprefix("fits in 16 GiB with remat: ").split(", ")
    assert out[-1].startswith("fits in 16 GiB with remat: ") and fitting, out
    totals = {}
    for policy in planner.REMAT_POLICIES:
        plan.main(args + [f"--remat={policy}"])
        row = capsys.readouterr().out.splitlines()[2].split()
        totals[policy] = float(row[-2]) * {"MiB": 2**20, "GiB": 2**30}[row[-1]]
    assert set(fitting) == {p for p, t in totals.items() if t <= 16 * 2**30}, totals
    assert "full" in fitting and totals["full"] < totals["none"]


LLAMA_3_1_8B_CONFIG = dict(  # meta-llama/Llama-3.1-8B's config.json, the fields the planner reads
    model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=128256, hidden_size=4096,
    intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
    max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
    rope_scaling={"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192, "rope_type": "llama3"})


def test_fused_attention_keeps_no_scores():
    dims = planner.Dims(hidden=64, intermediate=256, layers=4, heads=8, kv_heads=2, head_dim=8, vocab=1000)
    work = planner.Workload(train_batch=16, train_length=32, fused_attention=True)
    block = 2 * 32 * (8 * 64 + 4 * 256 + 2 * 8) * 4  # a row max and sum per head, not 2 * 8 * 32 scores
    assert planner.activation_bytes(dims, work, {"data": 8}) == 4 * block


def _ppo_plan(tmp_path, capsys, *extra):
    from jaxrlhf import plan

    (tmp_path / "config.json").write_text(json.dumps(LLAMA_3_1_8B_CONFIG))
    plan.main([f"--model={tmp_path}", "--ppo", "--batch=128", "--minibatch=16", "--length=1024", "--dtype_bytes=2",
               "--device_gib=80", *extra])
    return capsys.readouterr().out.splitlines()


def test_llama_3_1_8b_lora_ppo_fits_one_80gb_gpu_with_full_remat(tmp_path, capsys):
    """The issue's case: 128 rollouts of 512 + 512 tokens, minibatches of 16, bf16 compute with the frozen
    weights (LoRA bases, the reward model) in bf16, the reference being the actor's base."""
    out = _ppo_plan(tmp_path, capsys, "--train_mode=lora", "--remat=full")
    names = [line.split()[0] for line in out[2:5]]
    assert names == ["actor", "reward", "critic"], out  # no reference row: the actor's base serves
    assert out[-1] == "fits in 80 GiB with remat: full" and "warning" not in "\n".join(out), out
    actor = out[2].split()
    assert actor[1:3] == ["15.0", "GiB"]  # 8.0e9 parameters in bf16; the adapters are MiBs
    full_ft = _ppo_plan(tmp_path, capsys, "--train_mode=full", "--remat=full")
    assert any(line.startswith("reference") for line in full_ft)
    assert full_ft[-1].startswith("no remat policy fits in 80 GiB")
