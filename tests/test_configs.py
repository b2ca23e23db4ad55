"""The config package: shared default blocks, the per-experiment files and their checkout twins, and the
allowed values of the string-choice keys (`jaxrlhf/configs/validate.py`)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import ml_collections
import pytest

from jaxrlhf.configs import base, validate

REPO = Path(__file__).resolve().parents[1]
PACKAGED = REPO / "jaxrlhf" / "configs"
TWINS = REPO / "configs"
NOT_EXPERIMENTS = {"__init__", "base", "validate"}
DEFAULTS = {"rm": base.rm_defaults, "sft": base.sft_defaults, "dpo": base.dpo_defaults, "ppo": base.ppo_defaults,
            "grpo": base.grpo_defaults}


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"_cfg_{path.parent.name}_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _experiments(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in NOT_EXPERIMENTS)


# ---- shared blocks -------------------------------------------------------------------------------------

def test_rm_and_sft_share_the_data_and_train_blocks():
    rm, sft = base.rm_defaults(), base.sft_defaults()
    # what only one trainer has; anything else one of them grows belongs in the shared block
    assert set(rm.data) - set(sft.data) == {"ranked_mode", "ratings_mode", "min_agreement"}
    assert set(sft.data) - set(rm.data) == set()
    assert set(rm.train) - set(sft.train) == {"stats_pairs", "histogram"}
    assert set(sft.train) - set(rm.train) == {"eval_at_start"}
    block_data = base.data_block(eval_size=1, max_length=2, batch_size=3, eval_batch_size=4)
    block_train = base.train_block(epochs=5)
    assert set(block_data) <= set(rm.data) and set(block_train) <= set(rm.train)
    # the block's arguments are the only shared keys whose defaults differ between the two trainers
    differ = {k for k in set(rm.data) & set(sft.data) if rm.data[k] != sft.data[k]}
    assert differ == {"eval_size", "batch_size", "eval_batch_size"}
    assert {k for k in set(rm.train) & set(sft.train) if rm.train[k] != sft.train[k]} == {"epochs"}
    assert rm.optim.learning_rate != sft.optim.learning_rate  # the one optim default SFT changes
    assert set(rm.optim) == set(sft.optim) == set(base.optim_block())


def test_every_trainer_shares_the_model_source_run_mesh_and_distributed_blocks():
    configs = {name: make() for name, make in DEFAULTS.items()}
    model_keys = set(base.model_block())
    for name, config in configs.items():
        assert {"workdir", "seed", "mesh", "distributed"} <= set(config), name
        assert config.mesh == base.mesh_block() and config.distributed == base.distributed_block(), name
        assert set(base.source_block()) <= set(config.data), name
        assert set(base.run_block(log_every=1, checkpoint_every=1)) <= set(config.train), name
        for block in ("model", "policy"):
            if block in config:
                assert set(config[block]) == model_keys, (name, block)
    ppo = configs["ppo"]
    assert set(ppo.critic) == model_keys | {"init"}
    for block in ("actor_optim", "critic_optim"):
        assert set(ppo[block]) == set(base.optim_block())
        assert (ppo[block].schedule, ppo[block].warmup_steps, ppo[block].weight_decay) == ("constant", 0, 0.0)


@pytest.mark.parametrize("trainer,expected", [
    ("rm", {"workdir": "workdir/rm", "model.name": "minilm", "data.eval_size": 512, "data.batch_size": 16,
            "data.eval_batch_size": 32, "data.max_length": 256, "data.on_invalid": "error",
            "data.format": "auto", "optim.learning_rate": 3e-5, "optim.schedule": "cosine", "train.epochs": 2,
            "train.log_every": 10, "train.checkpoint_every": 100, "train.on_nonfinite": "stop",
            "train.stats_pairs": 512, "mesh.data": -1}),
    ("sft", {"workdir": "workdir/sft", "model.name": "smollm2", "data.eval_size": 64, "data.batch_size": 8,
             "data.eval_batch_size": 16, "data.max_length": 256, "data.on_invalid": "error",
             "optim.learning_rate": 1e-4, "train.epochs": 1, "train.eval_at_start": True,
             "train.log_every": 10, "loss.chunk_size": 128}),
    ("dpo", {"workdir": "workdir/dpo", "model.name": "smollm2", "reference": "", "data.format": "auto",
             "data.eval_size": 256, "data.batch_size": 8, "loss.type": "sigmoid", "loss.beta": 0.1,
             "loss.reference_logps": "auto", "loss.label_smoothing": 0.0, "optim.learning_rate": 5e-7,
             "train.epochs": 1, "train.eval_at_start": False}),
    ("ppo", {"workdir": "workdir/ppo", "policy.name": "smollm2", "critic.init": "reward_model",
             "critic.name": "", "reward_model.path": "workdir/rm/export", "data.max_prompt_length": 128,
             "data.pad_to_multiple": 32, "data.on_invalid": "error", "sampling.max_new_tokens": 64,
             "sampling.ignore_eos": False, "kl.estimator": "k1", "kl.coef": 0.05, "ppo.whiten_scope": "rollout",
             "actor_optim.learning_rate": 1e-6, "critic_optim.learning_rate": 5e-6, "train.iterations": 20,
             "train.log_every": 1, "train.eval_every": 5, "train.checkpoint_every": 10}),
])
def test_important_defaults(trainer, expected):
    flat = _flat(DEFAULTS[trainer]())
    assert {k: flat[k] for k in expected} == expected


def test_ignore_eos_is_a_bool_sampling_key_of_ppo_only():
    config = base.ppo_defaults()
    assert config.sampling.ignore_eos is False
    with pytest.raises(TypeError):  # typed bool: a string override is refused
        config.sampling.ignore_eos = "yes"
    assert "sampling" not in base.rm_defaults() and "sampling" not in base.sft_defaults()


def test_defaults_are_fresh_per_call():
    a, b = base.rm_defaults(), base.rm_defaults()
    a.data.batch_size = 1
    a.model.name = "x"
    assert b.data.batch_size == 16 and b.model.name == "minilm"


# ---- overrides -----------------------------------------------------------------------------------------

def _parse(monkeypatch, *argv: str):
    """The trainers' flag (`infra.runtime.run_trainer`) on a fresh FlagValues; ml_collections reads the
    command line while defining it."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["prog", *argv]
    monkeypatch.setattr(sys, "argv", argv)
    values = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", str(PACKAGED / "rm.py"), flag_values=values)
    values(argv)
    return holder.value


def test_a_command_line_override_applies_and_a_misspelt_one_raises(monkeypatch):
    config = _parse(monkeypatch, f"--config={TWINS / 'rm.py'}", "--config.train.max_steps=3")
    assert config.train.max_steps == 3
    # the exceptions `infra.runtime.run_trainer` turns into "bad command-line flag or config override"
    with pytest.raises(AttributeError, match="max_stepz"):
        _parse(monkeypatch, f"--config={TWINS / 'rm.py'}", "--config.train.max_stepz=3")
    with pytest.raises(KeyError, match="trian"):
        _parse(monkeypatch, f"--config={PACKAGED / 'rm.py'}", "--config.trian.max_steps=3")


# ---- per-experiment files and their checkout twins ---------------------------------------------------

@pytest.mark.parametrize("name", _experiments(PACKAGED))
def test_experiment_overrides_only_existing_keys(name):
    config = _load(PACKAGED / f"{name}.py").get_config()
    trainer = validate.trainer_of(config)
    defaults = _flat(DEFAULTS[trainer]())
    flat = _flat(config)
    assert set(flat) == set(defaults), f"{name}.py adds {set(flat) - set(defaults)}, drops {set(defaults) - set(flat)}"
    assert {k: type(v) for k, v in flat.items()} == {k: type(v) for k, v in defaults.items()}
    assert {k for k in flat if flat[k] != defaults[k]}, f"{name}.py changes nothing"
    validate.check_choices(config)


def test_experiment_files_are_the_expected_ones():
    assert _experiments(PACKAGED) == ["dpo", "grpo_arithmetic", "ppo", "rm", "rm_smollm2", "sft"]


def test_every_packaged_config_has_a_checkout_twin_and_back():
    assert not TWINS.is_symlink(), "configs/ is a folder of twins, not a symlink (symlinks break on Windows)"
    assert _experiments(TWINS) == _experiments(PACKAGED)
    assert not {p.name for p in TWINS.iterdir()} - {f"{n}.py" for n in _experiments(TWINS)} - {"__pycache__"}


@pytest.mark.parametrize("name", _experiments(TWINS))
def test_twin_reexports_the_packaged_get_config(name):
    twin = _load(TWINS / f"{name}.py")
    packaged = importlib.import_module(f"jaxrlhf.configs.{name}")
    assert twin.get_config is packaged.get_config  # the same function: any `:ARG` reaches it unchanged
    assert twin.get_config() == _load(PACKAGED / f"{name}.py").get_config()
    assert len((TWINS / f"{name}.py").read_text().splitlines()) < 10, "a twin only re-exports"


def test_trainers_default_to_a_packaged_config():
    for trainer, name in (("train_rm", "rm"), ("train_sft", "sft"), ("train_dpo", "dpo"), ("train_ppo", "ppo")):
        source = (REPO / "jaxrlhf" / f"{trainer}.py").read_text()
        assert f'"configs" / "{name}.py"' in source, f"{trainer} no longer defaults to jaxrlhf/configs/{name}.py"
        assert (PACKAGED / f"{name}.py").is_file()


def test_configs_is_a_package_that_ships():
    from setuptools import find_packages

    assert (PACKAGED / "__init__.py").is_file()
    assert "jaxrlhf.configs" in find_packages(str(REPO), include=["jaxrlhf", "jaxrlhf.*"])


# ---- allowed values ------------------------------------------------------------------------------------

def test_choices_copy_the_library():
    from jaxrlhf.data.batching import PADDING_SIDES
    from jaxrlhf.data.errors import ON_INVALID
    from jaxrlhf.data.formats import FORMATS
    from jaxrlhf.infra.precision import AUTO, DTYPES
    from jaxrlhf.models.attention import IMPLEMENTATIONS
    from jaxrlhf.models.layers import REMAT_POLICIES
    from jaxrlhf.ops.kl import ESTIMATORS
    from jaxrlhf.rl.experience import WHITEN_SCOPES
    from jaxrlhf.rl.ppo_models import CRITIC_INITS
    from jaxrlhf.sft.data import SFT_FORMATS
    from jaxrlhf.training.nonfinite import POLICIES
    from jaxrlhf.training.optim import SCHEDULES
    from jaxrlhf.training.trainable import TRAIN_MODES

    assert tuple("raise" if v == "error" else v for v in validate.ON_INVALID) == ON_INVALID
    assert set(validate.DTYPES) == set(DTYPES)
    assert set(validate.AUTO_DTYPES) == {AUTO, *DTYPES}
    assert set(validate.REMAT) == set(REMAT_POLICIES)
    from jaxrlhf.training.loss_scale import MODES

    assert validate.LOSS_SCALE == MODES
    assert validate.ATTENTION == IMPLEMENTATIONS
    assert validate.TRAIN_MODES == TRAIN_MODES
    assert validate.SCHEDULES == SCHEDULES
    assert validate.ON_NONFINITE == POLICIES
    assert set(validate.PADDING_SIDES) == set(PADDING_SIDES)
    assert validate.RM_FORMATS == FORMATS
    assert validate.SFT_FORMATS == SFT_FORMATS
    assert validate.CRITIC_INITS == CRITIC_INITS
    assert validate.KL_ESTIMATORS == ESTIMATORS
    assert validate.WHITEN_SCOPES == WHITEN_SCOPES
    from jaxrlhf.po.data import LOSSES
    from jaxrlhf.po.reference import MODES as REFERENCE_MODES

    assert validate.PO_LOSSES == LOSSES
    assert validate.REFERENCE_LOGPS == REFERENCE_MODES
    from jaxrlhf.ops.ppo import AGGREGATIONS
    from jaxrlhf.rl.group_step import ALGORITHMS

    assert validate.GRPO_ALGORITHMS == ALGORITHMS
    assert validate.LOSS_AGGREGATIONS == AGGREGATIONS
    from jaxrlhf.rl.guardrails import ON_MAX_KL

    assert validate.ON_MAX_KL == ON_MAX_KL


def test_rm_objective_modes_are_the_ones_rm_data_accepts():
    from types import SimpleNamespace

    from jaxrlhf.rm.data import objective_of

    for ranked in validate.RANKED_MODES:
        for ratings in validate.RATINGS_MODES:
            objective_of(SimpleNamespace(ranked_mode=ranked, ratings_mode=ratings))
    with pytest.raises(ValueError):
        objective_of(SimpleNamespace(ranked_mode="listwise", ratings_mode="pairs"))
    with pytest.raises(ValueError):
        objective_of(SimpleNamespace(ranked_mode="pairs", ratings_mode="mse"))


def test_every_checked_key_exists_with_an_allowed_default():
    for trainer, make in DEFAULTS.items():
        config = make()
        assert validate.trainer_of(config) == trainer
        flat = _flat(config)
        for key, choices in validate.CHOICES[trainer].items():
            assert key in flat, (trainer, key)
            assert flat[key] in choices, (trainer, key, flat[key])
        validate.check_choices(config)
        validate.check_choices(config.to_dict())  # a plain dict (a run_config.json) works too


@pytest.mark.parametrize("trainer,key", [(t, k) for t in validate.CHOICES for k in validate.CHOICES[t]])
def test_a_value_outside_the_choices_raises_one_line_naming_it(trainer, key):
    config = DEFAULTS[trainer]()
    *path, last = key.split(".")
    node = config
    for part in path:
        node = node[part]
    node[last] = "bogus"
    with pytest.raises(ValueError) as err:
        validate.check_choices(config)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"{key}='bogus' is not one of ")
    assert all(choice in message for choice in validate.CHOICES[trainer][key])


def test_on_invalid_raise_points_at_the_config_word():
    config = base.ppo_defaults()
    config.data.on_invalid = "raise"
    with pytest.raises(ValueError, match="'raise' is 'error' in a config"):
        validate.check_choices(config)


def test_rm_and_sft_formats_are_checked_per_trainer():
    sft = base.sft_defaults()
    sft.data.format = "ranked"  # an RM format
    with pytest.raises(ValueError, match="data.format='ranked'"):
        validate.check_choices(sft)
    validate.check_choices(sft, trainer="rm")  # as an RM config it would pass


def test_missing_keys_are_not_checked_and_unknown_trainers_raise():
    config = base.rm_defaults()
    del config.data["padding_side"]  # a run_config.json written before the key existed
    validate.check_choices(config)
    with pytest.raises(ValueError, match="cannot tell which trainer"):
        validate.trainer_of(ml_collections.ConfigDict({"model": base.model_block()}))
    with pytest.raises(ValueError, match="trainer='a2c'"):
        validate.check_choices(config, trainer="a2c")
