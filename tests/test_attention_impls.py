"""The attention implementations behind `model.attention` against today's path (`blocked_attention`), in
float32 on the masks the models make (left and right padding, holes), forward and gradients, with
grouped-query heads; which implementation `auto` picks; the one-line refusals; a tiny Llama RM built with
`attention="xla"` against the default.

"xla" uses the same dense mask, so it matches on every row. The packed path (how "cudnn" is fed:
real tokens to the front, `is_causal` + sequence lengths) is checked here through XLA, which takes the
same arguments; cuDNN itself needs a GPU. Splash runs in Pallas interpret mode on this CPU. Those two
differ from today's path on pad query rows only (no caller reads them), so they are compared on real
rows, with the gradients of a loss that reads real rows only.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxrlhf.models import attention, bert, gpt2, llama, registry
from tests.helpers import REPO_ROOT
from tests.helpers.models import tiny_llama_jax_config
from tests.helpers.processes import TIMEOUT_S, cpu_env
from tests.test_attention import inputs, masks

TOL = 1e-5
HEADS = [(4, 4), (6, 2)]  # MHA, and grouped-query heads (3 query heads per KV head)


def structured(kind: str, B: int, T: int, causal: bool = True, window: int | None = None):
    """(dense mask [B, T, T], key mask [B, T]) as the models build them: key padding from `masks(kind)`
    (the causal mask's last row holds every key), then causal and the window."""
    key_BxS = masks(kind, B, T, T)[:, -1, :]
    t, s = np.arange(T)[:, None], np.arange(T)[None, :]
    pair_TxS = (s <= t) if causal else np.ones((T, T), bool)
    if window is not None:
        pair_TxS = pair_TxS & (s > t - window)
    return jnp.asarray(pair_TxS[None] & key_BxS[:, None, :]), jnp.asarray(key_BxS)


def compare(fn, q, k, v, dense, key, *, real_rows_only: bool):
    """fn's output and (dq, dk, dv) against the default path's; with `real_rows_only`, on real query rows
    and for a loss that reads only those."""
    B, T = key.shape
    rows = np.asarray(key) if real_rows_only else np.ones((B, T), bool)
    cot = jnp.asarray(np.random.default_rng(3).standard_normal(q.shape), jnp.float32) * rows[:, :, None, None]

    def out_and_grads(f):  # one compiled program each (op-by-op autodiff compiles every op on its own)
        return jax.jit(lambda q, k, v: (f(q, k, v), jax.grad(lambda *a: jnp.sum(f(*a) * cot), argnums=(0, 1, 2))(
            q, k, v)))(q, k, v)

    want, want_g = out_and_grads(lambda q, k, v: attention.blocked_attention(q, k, v, dense))
    got, got_g = out_and_grads(fn)
    # pad rows may differ but never hold NaN/inf: the next layer multiplies them by zero weights
    assert np.all(np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got)[rows], np.asarray(want)[rows], atol=TOL, rtol=TOL)
    assert sum(float(jnp.abs(g).sum()) for g in want_g) > 0
    for name, g, w in zip("qkv", got_g, want_g):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=TOL, rtol=TOL, err_msg=f"d{name}")


# ---- xla: the same dense mask ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["left", "right", "holed"])
@pytest.mark.parametrize("heads", HEADS)
def test_xla_equals_default_on_every_row(kind, heads):
    H, K = heads
    B, T, D = 4, 7, 8
    q, k, v = inputs(B, T, T, H, K, D, seed=1)
    dense = jnp.asarray(masks(kind, B, T, T))
    fn = lambda q, k, v: attention.dot_product_attention(q, k, v, dense, implementation="xla")  # noqa: E731
    compare(fn, q, k, v, dense, jnp.ones((B, T), bool), real_rows_only=False)


# ---- the packed path cuDNN is fed, run through XLA ------------------------------------------------------

@pytest.mark.parametrize("kind", ["left", "right", "holed"])
@pytest.mark.parametrize("causal", [True, False])
def test_packed_causal_seqlen_path_equals_default_on_real_rows(kind, causal):
    H, K = HEADS[1]
    B, T, D = 4, 7, 8
    q, k, v = inputs(B, T, T, H, K, D, seed=2)
    dense, key = structured(kind, B, T, causal=causal)
    fn = lambda q, k, v: attention.nn_attention(q, k, v, dense, "xla", key_mask_BxS=key, causal=causal)  # noqa: E731
    compare(fn, q, k, v, dense, key, real_rows_only=True)


# ---- splash in Pallas interpret mode --------------------------------------------------------------------

@pytest.mark.parametrize("kind,causal,window", [("left", True, None), ("right", True, None),
                                                ("holed", True, None), ("right", False, None),
                                                ("left", True, 3)])
def test_splash_interpreted_equals_default_on_real_rows(kind, causal, window):
    H, K = 4, 2
    B, T, D = 3, 7, 8
    q, k, v = inputs(B, T, T, H, K, D, seed=4)
    dense, key = structured(kind, B, T, causal=causal, window=window)

    def fn(q, k, v):
        return attention.dot_product_attention(q, k, v, dense, implementation="splash", key_mask_BxS=key,
                                               causal=causal, window=window, interpret=True)

    compare(fn, q, k, v, dense, key, real_rows_only=True)


_MESH_SCRIPT = textwrap.dedent("""
    import jax
    import numpy as np
    from jaxrlhf.infra import sharding as shd
    from jaxrlhf.models import attention
    from tests.test_attention import inputs
    from tests.test_attention_impls import structured

    q, k, v = inputs(4, 7, 7, 4, 2, 8)
    dense, key = structured("left", 4, 7)
    f = jax.jit(lambda q, k, v: attention.dot_product_attention(
        q, k, v, dense, implementation="splash", key_mask_BxS=key, causal=True, interpret=True))
    with jax.set_mesh(shd.make_mesh(data=2, fsdp=1, tensor=2)):
        assert "manual_computation" in f.lower(q, k, v).as_text()  # it ran under shard_map
        got = np.asarray(f(q, k, v))
    want = np.asarray(attention.blocked_attention(q, k, v, dense))
    real = np.asarray(key)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5, rtol=1e-5)
    print("ok")
""")


def test_splash_under_a_mesh_context_runs_under_shard_map_over_batch_and_heads():
    """4 fake CPU devices, batch over "data" and heads over "tensor" (a subprocess: the device count is set
    before JAX starts)."""
    done = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], capture_output=True, text=True, env=cpu_env(4),
                          timeout=TIMEOUT_S, cwd=REPO_ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


# ---- cuDNN, where there is a GPU ----------------------------------------------------------------------

@pytest.mark.requires_gpu
@pytest.mark.parametrize("kind", ["left", "right", "holed"])
@pytest.mark.parametrize("window", [None, 4])
def test_cudnn_equals_default_on_real_rows_in_bfloat16(kind, window):
    """On a GPU: cuDNN (the packed path without a window, the dense mask as a bias with one) agrees with the
    default path within bfloat16 rounding, outputs and gradients; auto picks it for bfloat16 on the packed
    path only, and XLA for a float32 call or a dense mask."""
    H, K = HEADS[1]
    B, T, D = 4, 64, 64
    q, k, v = inputs(B, T, T, H, K, D, dtype=jnp.bfloat16, seed=5)
    dense, key = structured(kind, B, T, window=window)
    auto = attention.select_implementation("auto", q, k, key_mask_BxS=key, causal=True, window=window)
    assert auto == ("cudnn" if window is None else "xla")
    assert attention.select_implementation("auto", q.astype(jnp.float32), k.astype(jnp.float32),
                                           key_mask_BxS=key, causal=True) == "xla"
    assert attention.select_implementation("auto", q, k) == "xla"  # a dense mask only
    rows = np.asarray(key)
    cot = jnp.asarray(np.random.default_rng(3).standard_normal(q.shape) * rows[:, :, None, None], jnp.bfloat16)

    def out_and_grads(implementation):
        def f(q, k, v):
            return attention.dot_product_attention(q, k, v, dense, implementation=implementation, key_mask_BxS=key,
                                                   causal=True, window=window)

        def loss(*a):
            return jnp.sum((f(*a) * cot).astype(jnp.float32))

        return jax.jit(lambda q, k, v: (f(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)))(q, k, v)

    (want, want_g), (got, got_g) = out_and_grads("default"), out_and_grads("cudnn")
    as32 = lambda x: np.asarray(x, np.float32)  # noqa: E731
    assert np.all(np.isfinite(as32(got)))  # pad rows too: the next layer multiplies them by zero weights
    np.testing.assert_allclose(as32(got)[rows], as32(want)[rows], atol=3e-2, rtol=3e-2)
    for name, g, w in zip("qkv", got_g, want_g):
        scale = np.abs(as32(w)).max()
        np.testing.assert_allclose(as32(g) / scale, as32(w) / scale, atol=3e-2, err_msg=f"d{name}")


# ---- which implementation serves a call -----------------------------------------------------------------

def _qk(T=6, S=None, dtype=jnp.float32):
    q, k, _ = inputs(2, T, S or T, 4, 2, 8, dtype=dtype)
    return q, k


def test_auto_on_cpu_is_the_default_path_bit_for_bit():
    assert jax.default_backend() == "cpu"
    q, k, v = inputs(3, 6, 6, 4, 2, 8)
    dense, key = structured("left", 3, 6)
    assert attention.select_implementation("auto", q, k, key_mask_BxS=key, causal=True) == "default"
    got = attention.dot_product_attention(q, k, v, dense, implementation="auto", key_mask_BxS=key, causal=True)
    assert np.array_equal(np.asarray(got), np.asarray(attention.blocked_attention(q, k, v, dense)))


def test_one_token_decode_step_takes_the_default_path_whatever_is_asked():
    q, k = _qk(T=1, S=9)
    for implementation in attention.IMPLEMENTATIONS:
        assert attention.select_implementation(implementation, q, k) == "default"


@pytest.mark.parametrize("implementation,kw,words", [
    ("cudnn", {}, ["attention='cudnn' cannot serve this call", "NVIDIA GPU", "cpu"]),
    ("splash", {}, ["attention='splash' cannot serve this call", "TPU kernel", "cpu", "interpret=True"]),
    ("splash", {"interpret": True}, ["attention='splash' cannot serve this call", "dense mask"]),
    ("splash", {"interpret": True, "key_mask": True, "window": 3},
     ["attention='splash' cannot serve this call", "sliding window without causal"]),
    ("flash", {}, ["attention='flash' is not one of auto, default, xla, cudnn, splash"]),
])
def test_an_implementation_that_cannot_serve_raises_one_line(implementation, kw, words):
    q, k = _qk()
    key = jnp.ones(q.shape[:2], bool) if kw.pop("key_mask", False) else None
    with pytest.raises(ValueError) as err:
        attention.select_implementation(implementation, q, k, key_mask_BxS=key, **kw)
    message = str(err.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_auto_falls_back_instead_of_raising():
    q, k = _qk()
    # On CPU auto never reaches a fused kernel; a dense-mask call that splash refuses is still served.
    assert attention.select_implementation("auto", q, k) == "default"
    assert attention.select_implementation("xla", q, k) == "xla"


def test_a_key_mask_must_describe_self_attention():
    q, k = _qk(T=6, S=9)
    with pytest.raises(ValueError, match="describes a"):
        attention.select_implementation("xla", q, k, key_mask_BxS=jnp.ones((2, 9), bool))


# ---- models ---------------------------------------------------------------------------------------------

def _rm(attention_impl: str):
    cfg = tiny_llama_jax_config(num_attention_heads=4, num_key_value_heads=2)
    return registry.build_model(llama, cfg, "reward", rngs=nnx.Rngs(0), attention=attention_impl)


def _padded_batch(vocab: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, vocab, size=(4, 9))
    mask = np.ones((4, 9), np.int32)
    mask[0, :3] = 0  # left padding
    mask[1, 6:] = 0  # right padding
    mask[2, :2] = 0  # both: [left pad | prompt | response | right pad]
    mask[2, 7:] = 0
    return jnp.asarray(ids * mask), jnp.asarray(mask)


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_llama_rm_with_xla_attention_gives_the_default_rewards_and_gradients():
    default, xla = _rm("default"), _rm("xla")
    assert xla.backbone.attention == "xla" and xla.backbone.layers.attn.attention == "xla"
    nnx.update(xla, nnx.state(default))
    ids, mask = _padded_batch(default.backbone.cfg.vocab_size)

    def loss(model):
        rewards = model(ids, mask)
        return jnp.sum(rewards * jnp.arange(1.0, 5.0)), rewards

    step = nnx.jit(nnx.value_and_grad(loss, has_aux=True))
    results = []
    for model in (default, xla):
        (_, rewards), grads = step(model)
        results.append((np.asarray(rewards), {p: np.asarray(g.get_value()) for p, g in nnx.to_flat_state(grads)}))
    (want_r, want_g), (got_r, got_g) = results
    np.testing.assert_allclose(got_r, want_r, atol=TOL, rtol=TOL)
    assert got_g.keys() == want_g.keys() and sum(np.abs(g).sum() for g in want_g.values()) > 0
    for p in want_g:
        np.testing.assert_allclose(got_g[p], want_g[p], atol=TOL, rtol=TOL, err_msg=str(p))


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_gpt2_and_bert_with_xla_attention_give_the_default_outputs():
    ids, mask = _padded_batch(97)
    mask = mask.at[2].set(jnp.asarray([1] * 7 + [0] * 2))  # the encoder pads on the right
    for family, cfg, task in ((gpt2, gpt2.Config(vocab_size=97, hidden_size=32, num_layers=2, num_heads=4,
                                                 intermediate_size=64, max_positions=64), "causal_lm"),
                              (bert, bert.Config(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                                 num_attention_heads=4, intermediate_size=64), "reward")):
        default = registry.build_model(family, cfg, task, rngs=nnx.Rngs(1), attention="default")
        xla = registry.build_model(family, cfg, task, rngs=nnx.Rngs(1), attention="xla")
        nnx.update(xla, nnx.state(default))
        want, got = nnx.jit(lambda m: m(ids, mask))(default), nnx.jit(lambda m: m(ids, mask))(xla)
        want, got = (want[0], got[0]) if isinstance(want, tuple) else (want, got)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL, err_msg=family.__name__)


@pytest.mark.parametrize("implementation,reason", [("cudnn", "NVIDIA GPU"), ("splash", "TPU kernel")])
def test_a_model_asking_for_a_kernel_this_machine_lacks_raises_one_line(implementation, reason):
    model = _rm(implementation)
    ids, mask = _padded_batch(model.backbone.cfg.vocab_size)
    with pytest.raises(ValueError, match=reason) as err:
        model(ids, mask)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # compiles a train step or a model's gradient (~5-13 s)
def test_a_splash_model_samples_with_xla_prefill_and_default_decode():
    """KV-cache calls: Splash's static masks cannot follow the cache's write index, so its prefill runs on
    XLA and the one-token decode step on the default path; both give the default model's logits."""
    cfg = tiny_llama_jax_config()
    default = registry.build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(2), attention="default")
    splash = registry.build_model(llama, cfg, "causal_lm", rngs=nnx.Rngs(2), attention="splash")
    nnx.update(splash, nnx.state(default))
    ids, mask = _padded_batch(cfg.vocab_size)
    ids, mask = ids[:, :6], mask.at[1].set(1)[:, :6]  # left-padded prompts
    outs = []
    for model in (default, splash):
        cache = model.backbone.init_cache(4, 8)
        prefill, cache = model(ids, mask, cache=cache)
        step, _ = model(ids[:, -1:], jnp.ones((4, 1), jnp.int32), cache=cache)
        outs.append((np.asarray(prefill), np.asarray(step)))
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(outs[1][0][real], outs[0][0][real], atol=TOL, rtol=TOL)
    np.testing.assert_allclose(outs[1][1], outs[0][1], atol=TOL, rtol=TOL)


def test_an_unknown_attention_is_refused_when_the_model_is_built():
    with pytest.raises(ValueError, match="attention='flash' is not one of"):
        _rm("flash")
