"""A PPO iteration's update phase waits on the device once, and its in-graph KL early stop is the host loop's.

- The update phase (every minibatch of every epoch) is one dispatch of one program, then one explicit fetch of
  all the iteration's metrics, under a device-to-host transfer guard: an implicit read such as `float(metric)`
  per minibatch or per metric raises.
- With `ppo.max_approx_kl` set so that an iteration stops mid-epoch, the iteration's parameters, optimiser state
  and metrics equal those of a plain Python loop over the same jitted one-minibatch update that stops at the
  first minibatch with `kl_skipped` set (the loop the iteration ran before it was one program). Without early
  stop, the scan equals the loop over every minibatch.
"""

from __future__ import annotations

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.helpers.data import write_prompts
from tests.helpers.models import make_tiny_llama_dir
from tests.helpers.runs import tiny_ppo_config

ROLLOUT, MINIBATCH, EPOCHS = 8, 2, 2  # 4 minibatches an epoch, 8 an iteration
MAX_APPROX_KL = 1e-4  # the first minibatch has approx KL ~0; after one Adam step the tiny policy crosses this


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(fresh train state, iteration, prompt set) of a tiny PPO run with the early stop on."""
    from jaxrlhf.data.sources import load_table
    from jaxrlhf.infra.sharding import make_mesh
    from jaxrlhf.rl import ppo_setup
    from jaxrlhf.rl.ppo_models import load_ppo_models
    from jaxrlhf.rl.prompts import build_prompt_set

    root = tmp_path_factory.mktemp("ppo_host_syncs")
    policy = make_tiny_llama_dir(root / "policy", seed=0)
    rm = make_tiny_llama_dir(root / "rm", seed=1)  # an untrained reward head: the scores need not mean anything
    prompts_file = write_prompts(root / "prompts.jsonl")
    config = tiny_ppo_config(policy, rm, prompts_file, root / "work")
    config.ppo.rollout_batch_size, config.ppo.minibatch_size, config.ppo.epochs = ROLLOUT, MINIBATCH, EPOCHS
    config.ppo.max_approx_kl = MAX_APPROX_KL
    mesh = make_mesh(devices=jax.devices()[:1])
    models = load_ppo_models(config, mesh)
    d = config.data
    prompts = build_prompt_set(load_table(str(prompts_file)), models.tokenizer, batch_size=ROLLOUT,
                               max_prompt_length=d.max_prompt_length, pad_to_multiple=d.pad_to_multiple, seed=0)
    state, iteration = ppo_setup.build(config, models, mesh, None)
    return state, iteration, prompts


def _copy(tree):
    """A copy on fresh buffers: the update donates the state it is given."""
    return jax.tree_util.tree_map(jnp.copy, tree)


def _key(i: int) -> jax.Array:
    return jax.random.fold_in(jax.random.key(0), i)


class HostReads:
    """While `counting`: the explicit fetches (`jax.device_get` calls) and the implicit reads of a jax.Array outside
    them (`float(x)`, `bool(x)`, `int(x)`, `x.tolist()`), each a host sync on an accelerator.

    The transfer guard raises on implicit reads on an accelerator, but not on CPU, where an array is read in place
    (jax-ml/jax#16602); so they are counted where those reads all pass, the array's `_value`. (NumPy's own readers,
    `np.asarray(x)`, take the buffer protocol on CPU and are not counted: the guard catches them elsewhere.)"""

    def __init__(self):
        self.counting, self.fetches, self.implicit_reads, self._fetching = False, 0, 0, False

    def __enter__(self):
        array_type = type(jnp.zeros(()))
        value, device_get = array_type.__dict__["_value"], jax.device_get
        self._originals = [(array_type, "_value", value), (jax, "device_get", device_get)]

        def read(array):
            self.implicit_reads += self.counting and not self._fetching
            return value.fget(array)

        def fetch(tree):
            self.fetches += self.counting
            fetching, self._fetching = self._fetching, True
            try:
                return device_get(tree)
            finally:
                self._fetching = fetching

        array_type._value, jax.device_get = property(read), fetch
        return self

    def __exit__(self, *exc):
        for owner, name, original in self._originals:
            setattr(owner, name, original)


def watched_iteration(iteration, state, batch, key) -> tuple[dict, dict, int, HostReads]:
    """(state, metrics, update dispatches, host reads from the first dispatch on) of one iteration; from the first
    dispatch on, implicit device-to-host transfers are also disallowed (which raises on an accelerator)."""
    dispatches = []
    with HostReads() as reads, contextlib.ExitStack() as guarded:
        def update(*args):
            if not dispatches:
                guarded.enter_context(jax.transfer_guard_device_to_host("disallow"))
                reads.counting = True
            dispatches.append(args)
            return iteration.update(*args)

        state, metrics = dataclasses.replace(iteration, update=update)(state, batch, key)
    return state, metrics, len(dispatches), reads


def test_host_reads_counts_the_reads_it_is_meant_to_catch():
    x = jnp.arange(3.0) + 1
    with HostReads() as reads:
        float(x[0])  # not counted: off
        reads.counting = True
        float(x[1]), bool(x[2] > 0), int(x[0]), x.tolist()
        jax.device_get({"a": x * 2, "b": x * 3})
    assert (reads.implicit_reads, reads.fetches) == (4, 1)
    float(x[2])  # restored
    assert reads.implicit_reads == 4


@pytest.mark.slow  # builds and compiles a tiny PPO run
def test_update_phase_is_one_dispatch_and_one_fetch(built):
    state0, iteration, prompts = built
    state = _copy(state0)
    for i in range(2):  # the first iteration compiles; the second runs the compiled programs
        state, metrics, dispatches, reads = watched_iteration(iteration, state, prompts.batch(i, 0, 1), _key(i))
        assert (dispatches, reads.fetches, reads.implicit_reads) == (1, 1, 0), i
        assert 1 <= metrics["minibatch_updates"] <= ROLLOUT // MINIBATCH * EPOCHS
        for phase in ("sample", "score", "experience", "update", "rollout", "iteration"):
            assert metrics[f"{phase}_seconds"] > 0, phase
        assert metrics["rollout_seconds"] + metrics["update_seconds"] <= metrics["iteration_seconds"] + 1e-6


def _captured_update_inputs(iteration, state, batch, key) -> tuple[dict, dict, dict]:
    """(the iteration's metrics, the state it ended with, what its update was called with: state (copied before
    the update donates it), experience, idx_NxM on the host)."""
    seen = {}

    def update(state, actor_frozen, critic_frozen, exp, idx_NxM):
        seen.update(state=_copy(state), exp=exp, idx_NxM=jax.device_get(idx_NxM))
        return iteration.update(state, actor_frozen, critic_frozen, exp, idx_NxM)

    state, metrics = dataclasses.replace(iteration, update=update)(state, batch, key)
    return metrics, state, seen


def host_loop(iteration, seen: dict, stop_on_kl: bool) -> tuple[dict, list[dict]]:
    """The minibatch loop as the iteration ran it before: one jitted update per minibatch, and a stop after the
    first whose approximate KL crossed the bound (that one's metrics kept)."""
    from jaxrlhf.infra.sharding import replicated

    step = jax.jit(iteration.update_minibatch)
    state, metrics = _copy(seen["state"]), []
    for idx_M in seen["idx_NxM"]:
        state, m = step(state, iteration.frozen.actor, iteration.frozen.critic, seen["exp"],
                        jax.device_put(idx_M, replicated(iteration.mesh)))
        metrics.append(jax.device_get(m))
        if stop_on_kl and float(m["kl_skipped"]):
            break
    return state, metrics


def loop_summary(ms: list[dict]) -> dict:
    """The update metrics the host loop reported: means of Python floats, the nonfinite count, the stop."""
    out = {k: float(np.mean([float(m[k]) for m in ms])) for k in ms[0]}
    out.update(nonfinite=float(sum(float(m["nonfinite"]) for m in ms)), minibatch_updates=len(ms),
               early_stop=float(bool(ms[-1]["kl_skipped"])))
    return out


def assert_states_equal(a: dict, b: dict) -> None:
    for part in ("actor", "critic", "step"):
        la, lb = jax.tree_util.tree_leaves(a[part]), jax.tree_util.tree_leaves(b[part])
        assert len(la) == len(lb) > 0
        for x, y in zip(la, lb):
            # The same arithmetic in a scan body as in its own program: equal to float32 rounding (bit for bit
            # on CPU); a minibatch applied or not moves the parameters by ~1e-3.
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7, err_msg=part)


@pytest.mark.slow  # builds and compiles a tiny PPO run
def test_in_graph_early_stop_equals_the_host_loop(built):
    from jaxrlhf.rl.ppo_step import scan_minibatches

    state0, iteration, prompts = built
    metrics, state, seen = _captured_update_inputs(iteration, _copy(state0), prompts.batch(0, 0, 1), _key(0))
    expected_state, expected = host_loop(iteration, seen, stop_on_kl=True)
    per_epoch, crossed = ROLLOUT // MINIBATCH, len(expected) - 1
    # The case this test is for: the bound is crossed inside an epoch, past its first minibatch.
    assert 0 < crossed and (crossed + 1) % per_epoch, [float(m["approx_kl"]) for m in expected]
    assert metrics["early_stop"] == 1.0 and metrics["minibatch_updates"] == crossed + 1
    assert_states_equal(state, expected_state)
    for k, v in loop_summary(expected).items():
        np.testing.assert_allclose(metrics[k], v, rtol=1e-6, atol=1e-9, err_msg=k)

    # Without the stop the scan runs every minibatch, as the loop without its break (each one past the bound is
    # still skipped by the update itself): the same state, and the same metrics minibatch by minibatch.
    scan = jax.jit(scan_minibatches(iteration.update_minibatch, stop_on_kl=False))
    state, metrics_N = scan(_copy(seen["state"]), iteration.frozen.actor, iteration.frozen.critic, seen["exp"],
                            jax.device_put(seen["idx_NxM"]))
    expected_state, expected = host_loop(iteration, seen, stop_on_kl=False)
    assert len(expected) == per_epoch * EPOCHS
    assert_states_equal(state, expected_state)
    metrics_N = jax.device_get(metrics_N)
    np.testing.assert_array_equal(metrics_N.pop("counted"), np.ones(len(expected)))
    assert set(metrics_N) == set(expected[0])
    for k, v in metrics_N.items():
        np.testing.assert_allclose(v, [m[k] for m in expected], rtol=1e-6, atol=1e-9, err_msg=k)
