"""Damaged checkpoints and failed writes: each a one-line notice or error, never a traceback.

A newest checkpoint that is truncated, half-copied or unreadable is skipped for the newest intact one (one
line naming it); none intact is a one-line error. A disk that fills during a save (a small tmpfs, mounted
when the tests run as root) is one line and exit code 2 from the command line, the previous checkpoint
still restores and the half-written one is never taken for complete. Metrics and export writes that fail
are one line each.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlhf.infra.checkpoint import Checkpointer, CheckpointWriteError
from jaxrlhf.infra.checkpoint_damage import find_damage


def _state(k: int, n: int = 3) -> dict:
    """Random arrays large enough for Orbax to store out of line (in the ocdbt.process_0/d/ data files)."""
    keys = jax.random.split(jax.random.key(k), n)
    return {"params": {f"w{i}": jax.random.normal(keys[i], (64, 64)) + k for i in range(n)},
            "step": jnp.asarray(k, jnp.int32)}


def _largest_array_file(step_dir: Path) -> Path:
    return max((step_dir / "state").glob("ocdbt.process_*/d/*"), key=lambda p: p.stat().st_size)


def _truncate(path: Path, keep: float = 0.5) -> None:
    os.truncate(path, int(path.stat().st_size * keep))


DAMAGE = {  # how -> (damage the step folder, the file the notice names)
    "truncated state metadata JSON": (lambda d: _truncate(d / "state/_METADATA"), lambda d: "state/_METADATA"),
    "truncated meta JSON": (lambda d: _truncate(d / "meta/metadata"), lambda d: "meta/metadata"),
    "deleted array file": (lambda d: _largest_array_file(d).unlink(), None),
    "truncated array file": (lambda d: _truncate(_largest_array_file(d)), None),
}


def _damage(step_dir: Path, how: str) -> str:
    """Damages `step_dir` as `how` says; returns the name of the damaged file relative to it."""
    named = DAMAGE[how][1]
    name = named(step_dir) if named else _largest_array_file(step_dir).relative_to(step_dir).as_posix()
    DAMAGE[how][0](step_dir)
    return name


@pytest.fixture
def two_steps(tmp_path):
    ckpt = Checkpointer(tmp_path / "ckpt")
    ckpt.save(5, _state(5), {"step": 5})
    ckpt.save(10, _state(10), {"step": 10})
    ckpt.close()
    return tmp_path / "ckpt"


def _equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True))


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_intact_checkpoint_passes_the_check(two_steps):
    assert find_damage(two_steps / "5") is None and find_damage(two_steps / "10") is None


@pytest.mark.parametrize("how", list(DAMAGE))
def test_damaged_newest_restores_the_previous_with_one_line(two_steps, how, capfd):
    name = _damage(two_steps / "10", how)
    assert name in find_damage(two_steps / "10")
    ckpt = Checkpointer(two_steps)
    capfd.readouterr()
    state, meta, step = ckpt.restore(_state(0))
    ckpt.close()
    assert step == 5 and meta == {"step": 5} and _equal(state, _state(5))
    err = capfd.readouterr().err
    assert len(_lines(err)) == 1, err
    assert f"checkpoint step 10 ({two_steps / '10'}) is incomplete or corrupt" in err
    assert name in err and "resuming from step 5" in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore:Sharding info not provided")
def test_params_only_restore_falls_back_too(two_steps, capfd):
    _damage(two_steps / "10", "truncated array file")
    ckpt = Checkpointer(two_steps)
    params, _, step = ckpt.restore_params(_state(0)["params"])
    ckpt.close()
    assert step == 5 and _equal(params, _state(5)["params"])
    assert "using step 5" in capfd.readouterr().err


def test_restore_that_fails_midway_falls_back(two_steps, capfd):
    """Bytes garbled in place (same size) pass the cheap check; the restore itself fails, and the previous
    step is used."""
    victim = _largest_array_file(two_steps / "10")
    victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    assert find_damage(two_steps / "10") is None
    ckpt = Checkpointer(two_steps)
    state, _, step = ckpt.restore(_state(0))
    ckpt.close()
    assert step == 5 and _equal(state, _state(5))
    err = capfd.readouterr().err
    assert len(_lines(err)) == 1 and "restoring it failed" in err and "step 10" in err, err


def test_every_step_damaged_is_one_line_naming_the_files(two_steps, capsys):
    from jaxrlhf.infra.runtime import cli_errors

    names = [_damage(two_steps / "10", "deleted array file"), _damage(two_steps / "5", "truncated meta JSON")]
    ckpt = Checkpointer(two_steps)
    with pytest.raises(ValueError) as info:
        ckpt.restore(_state(0))
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint in {two_steps}")
    assert all(n in message for n in names) and str(two_steps / "10") in message

    capsys.readouterr()
    with pytest.raises(SystemExit) as code, cli_errors():
        ckpt.restore(_state(0))
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert _lines(err) == [f"error: {message}"]


def test_training_resume_sets_damaged_steps_aside_and_saves_them_again(two_steps, capfd):
    import ml_collections

    from jaxrlhf.training.run_setup import open_checkpoints

    workdir = two_steps.parent
    two_steps.rename(workdir / "checkpoints")
    _damage(workdir / "checkpoints/10", "truncated state metadata JSON")
    config = ml_collections.ConfigDict({"train": {"keep_checkpoints": 2, "checkpoint_every": 5, "resume": True}})
    ckpt, state, start = open_checkpoints(config, workdir, _state(0))
    assert start == 5 and _equal(state, _state(5))
    assert (workdir / "checkpoints.damaged/10/state/_METADATA").is_file()
    assert "checkpoints.damaged" in capfd.readouterr().err
    ckpt.save(10, _state(11), {"step": 10})  # the step number is free again
    ckpt.close()
    ckpt = Checkpointer(workdir / "checkpoints")
    state, _, step = ckpt.restore(_state(0))
    ckpt.close()
    assert step == 10 and _equal(state, _state(11))


# ---------------------------------------------------------------------------------------- full disks


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of `size` mounted at `path` (skips where mounting is not allowed), unmounted afterwards."""
    if os.name != "posix" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (these tests fill a disk on purpose)")
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {out.stderr.strip() or out.returncode}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_disk_full_during_a_save_is_one_error_and_the_previous_step_restores(tmp_path, capfd):
    with small_disk(tmp_path / "disk", "2m") as disk:
        ckpt = Checkpointer(disk / "ckpt")
        ckpt.save(1, _state(1), {"step": 1})
        big = _state(2, n=300)  # ~5 MB in 300 arrays: many writes in flight when the disk fills
        with pytest.raises(CheckpointWriteError) as info:
            ckpt.save(2, big, {"step": 2})
            ckpt.wait()  # the save runs in the background: its failure surfaces here at the latest
        ckpt.close()
        message = str(info.value)
        assert "\n" not in message and message.startswith(f"checkpoint step 2 could not be saved in {disk / 'ckpt'}")
        assert "No space left on device" in message and "the last complete checkpoint is step 1" in message
        err = capfd.readouterr().err
        assert "Traceback" not in err and "Event loop is closed" not in err, err[-3000:]
        assert not (disk / "ckpt/2").exists()  # the half-written step keeps its temporary name
        ckpt = Checkpointer(disk / "ckpt")
        assert ckpt.latest_step() == 1
        state, _, step = ckpt.restore(_state(0))
        ckpt.close()
        assert step == 1 and _equal(state, _state(1))


@pytest.mark.multiprocess  # a fresh interpreter: pytest installs its own unraisable-exception hook
def test_reports_left_by_failed_reads_and_saves_stay_off_stderr(two_steps):
    """A restore that falls over leaves Orbax reads behind, collected later as coroutines whose exception
    Python prints through sys.unraisablehook; tensorstore calls back into the event loop of a failed save
    ("RuntimeError: Event loop is closed"). Neither reaches stderr; other such reports still do."""
    victim = _largest_array_file(two_steps / "10")
    victim.write_bytes(np.random.default_rng(0).bytes(victim.stat().st_size))
    code = ("import gc\n"
            "import jax\n"
            "from jaxrlhf.infra.checkpoint import Checkpointer\n"
            f"ckpt = Checkpointer({str(two_steps)!r})\n"
            "target = {'params': {f'w{i}': jax.numpy.zeros((64, 64)) for i in range(3)}, 'step': jax.numpy.int32(0)}\n"
            "print('restored step', ckpt.restore(target)[2])\n"
            "ckpt.close()\n"
            "gc.collect()\n"
            "class Callback:\n"
            "    def __del__(self):\n"
            "        raise RuntimeError('Event loop is closed')\n"
            "Callback()\n"
            "class Other:\n"
            "    def __del__(self):\n"
            "        raise RuntimeError('another problem')\n"
            "Other()\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 0 and "restored step 5" in out.stdout, out.stderr
    lines = _lines(out.stderr)
    assert lines[0].startswith("warning: checkpoint step 10") and "restoring it failed" in lines[0], out.stderr
    rest = "\n".join(lines[1:])
    assert "Event loop is closed" not in rest and "orbax" not in rest and "another problem" in rest, out.stderr


def test_metrics_write_failure_is_one_line(tmp_path, capsys):
    """metrics.jsonl on a device that is always full (/dev/full): the write names the file."""
    from jaxrlhf.infra.metrics import MetricsWriter
    from jaxrlhf.infra.runtime import cli_errors

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "metrics.jsonl").symlink_to("/dev/full")
    writer = MetricsWriter(tmp_path, tensorboard=False)
    with pytest.raises(SystemExit) as code, cli_errors():
        writer.write(1, {"loss": 0.5}, prefix="train/")
    assert code.value.code == 2
    assert _lines(capsys.readouterr().err) == [
        f"error: cannot write metrics to {tmp_path / 'metrics.jsonl'}: No space left on device"]


def test_tensorboard_write_failure_is_one_line(tmp_path, capfd):
    from jaxrlhf.infra import metrics
    from jaxrlhf.infra.runtime import cli_errors

    with small_disk(tmp_path / "disk", "64k") as disk:
        writer = metrics.MetricsWriter(disk / "work")
        writer._jsonl.close()  # metrics.jsonl is the test above: here only TensorBoard's file fills the disk
        writer._jsonl = open(os.devnull, "w")
        big = {f"metric_{i}": float(i) for i in range(4000)}  # ~100 kB of events, more than the disk holds
        capfd.readouterr()
        with pytest.raises(SystemExit) as code, cli_errors():
            for step in range(3):
                writer.write(step, big)
            writer.close()
        assert code.value.code == 2
        err = _lines(capfd.readouterr().err)
        assert len(err) == 1 and err[0].startswith(f"error: cannot write metrics to {disk / 'work/tensorboard'}")
        assert err[0].endswith("No space left on device")


def test_export_write_failure_is_one_line_and_keeps_the_earlier_export(tmp_path, capsys):
    from jaxrlhf.infra.runtime import cli_errors
    from jaxrlhf.models.export import export_hf
    from jaxrlhf.models.hub import from_pretrained
    from tests.helpers.models import make_tiny_llama_dir

    loaded = from_pretrained(str(make_tiny_llama_dir(tmp_path / "model")), "reward")
    capsys.readouterr()
    with small_disk(tmp_path / "disk", "64k") as disk:  # the tiny model's safetensors is ~80 kB
        earlier = disk / "export"
        earlier.mkdir()
        (earlier / "config.json").write_text("{}")
        with pytest.raises(SystemExit) as code, cli_errors():
            export_hf(loaded.model, loaded.family, loaded.config, "reward", earlier)
        assert code.value.code == 2
        assert _lines(capsys.readouterr().err) == [
            f"error: export to {earlier} failed: cannot write model.safetensors: No space left on device"]
        assert sorted(p.name for p in disk.iterdir()) == ["export"]  # no temporary folder left behind
        assert (earlier / "config.json").read_text() == "{}"


# ------------------------------------------------------------------------------------- trainer runs


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.helpers.data import write_separable_pairs
    from tests.helpers.models import make_tiny_llama_dir

    d = tmp_path_factory.mktemp("faults")
    return make_tiny_llama_dir(d / "model"), write_separable_pairs(d / "pairs.jsonl", 96)


@pytest.mark.slow
def test_trainer_resumes_past_a_damaged_checkpoint_and_matches(tiny, tmp_path, capfd):
    """train_rm: the newest checkpoint damaged, the run resumes from the one before, saves the damaged
    step's number again and ends with the very parameters of the first run; all damaged: one line, exit 2."""
    from jaxrlhf.infra.runtime import cli_errors
    from jaxrlhf.rm.load import load_trained_rm
    from jaxrlhf.train_rm import train
    from tests.helpers.runs import complete_steps, tiny_rm_config

    model, data = tiny
    work = tmp_path / "work"
    config = tiny_rm_config(model, data, work)
    config.train.epochs = 2  # 20 steps, checkpoints kept at 15 and 20
    train(config)
    ckpts = work / "checkpoints"
    assert complete_steps(ckpts) == [15, 20]
    metadata = (ckpts / "20/state/_METADATA").read_bytes()
    _damage(ckpts / "20", "truncated state metadata JSON")

    capfd.readouterr()
    load_trained_rm(str(work))  # eval_rm, score and PPO load a workdir this way
    assert "is incomplete or corrupt (state/_METADATA is not valid JSON (truncated?)): using step 15" in \
        capfd.readouterr().err

    train(config)
    out = capfd.readouterr()
    warnings = [line for line in _lines(out.err) if "incomplete or corrupt" in line]
    assert len(warnings) == 1 and "resuming from step 15" in warnings[0] and "Traceback" not in out.err
    assert "resumed from step 15" in out.out
    assert complete_steps(ckpts) == [15, 20] and find_damage(ckpts / "20") is None
    (work / "checkpoints.damaged/20/state/_METADATA").write_bytes(metadata)  # the first run's step 20, repaired
    target = load_params_target(work)
    first, again = Checkpointer(work / "checkpoints.damaged"), Checkpointer(ckpts)
    assert _equal(first.restore_params(target, step=20)[0], again.restore_params(target, step=20)[0])
    first.close()
    again.close()

    for step in (15, 20):
        _damage(ckpts / str(step), "truncated array file")
    capfd.readouterr()
    with pytest.raises(SystemExit) as code, cli_errors():
        train(config)
    assert code.value.code == 2
    err = _lines(capfd.readouterr().err)
    errors = [line for line in err if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: no intact checkpoint in {ckpts}: step 20")
    assert not any("Traceback" in line for line in err)


def load_params_target(work: Path):
    """The trainable parameters of the workdir's model, as a restore target."""
    import json

    import ml_collections

    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.rm.load import load_reward_model
    from jaxrlhf.training.trainable import split_for

    config = ml_collections.ConfigDict(json.loads((work / "run_config.json").read_text()))
    loaded = load_reward_model(config, shd.make_mesh(devices=jax.devices()[:1]))
    return split_for(loaded.model, config.model)[1]


@pytest.mark.slow
@pytest.mark.multiprocess  # the train_rm command line, its checkpoints on a disk that fills
def test_cli_disk_full_during_a_save_is_one_line_exit_2_and_resumable(tiny, tmp_path):
    from jaxrlhf.rm.load import load_trained_rm
    from tests.helpers.runs import complete_steps, rm_cli_args

    model, data = tiny
    work = tmp_path / "work"
    with small_disk(work / "checkpoints", "800k") as ckpts:  # two tiny checkpoints (~350 kB each) fit
        out = subprocess.run(rm_cli_args(model, data, work), capture_output=True, text=True, timeout=300,
                             env=dict(os.environ, HF_DATASETS_CACHE=str(tmp_path / "hf")))
        assert out.returncode == 2, out.stderr[-3000:]
        assert "Traceback" not in out.stderr and "Event loop is closed" not in out.stderr, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
        assert len(errors) == 1, errors
        assert f"could not be saved in {ckpts}: No space left on device" in errors[0]
        steps = complete_steps(ckpts)
        assert steps and f"the last complete checkpoint is step {steps[-1]}" in errors[0]
        assert any(".orbax-checkpoint-tmp" in p.name for p in ckpts.iterdir())  # the half-written one
        assert all(find_damage(ckpts / str(s)) is None for s in steps)
        rm = load_trained_rm(str(work))  # the last complete checkpoint restores
        from flax import nnx

        leaves = jax.tree_util.tree_leaves(nnx.state(rm.loaded.model))
        assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)
