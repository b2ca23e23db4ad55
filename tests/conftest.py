"""Every test writes Hugging Face caches into a temporary folder, never into the user's cache; and the
fixtures several test modules share (helper functions are in tests/helpers/).

The variables are set at import, before any test module imports `datasets` (which reads them once) or JAX
starts a backend; subprocesses inherit them:
- no persistent compilation cache (the trainers' `compilation_cache_dir` default comes from
  $JAXRLHF_COMPILATION_CACHE; tests/test_compilation_cache.py turns it on in a temporary folder);
- no GPU memory preallocation, so the test process and its subprocesses share a GPU host's memory.

`@pytest.mark.requires_gpu` skips a test, with the reason, where JAX sees no GPU, and runs it at
`jax_default_matmul_precision="highest"` where it does (torch-parity tolerances do not hold under TF32).
Fake-device and multi-process tests force `JAX_PLATFORMS=cpu` for their subprocesses (tests/helpers/processes.py).
"""

import functools
import os
import tempfile

import pytest

_root = tempfile.mkdtemp(prefix="jaxrlhf-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_root, "datasets")
os.environ["HF_HOME"] = os.path.join(_root, "home")
os.environ["JAXRLHF_COMPILATION_CACHE"] = ""
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"

_GPU_PLATFORMS = ("cuda", "rocm", "gpu")


@functools.cache
def _no_gpu_reason() -> str | None:
    """Why a GPU test cannot run here, or None. Asks JAX only when a `requires_gpu` test comes up, so merely
    collecting one starts no backend (in-process tests set `jax_num_cpu_devices` before the first)."""
    platforms = os.environ.get("JAX_PLATFORMS", "")
    if platforms and not any(p in platforms for p in _GPU_PLATFORMS):
        return f"needs a GPU; JAX_PLATFORMS={platforms}"
    import jax

    try:
        jax.devices("gpu")
    except RuntimeError:
        return f"needs a GPU; JAX has only {jax.default_backend()} devices here"
    return None


@pytest.fixture(autouse=True)
def _requires_gpu(request):
    if request.node.get_closest_marker("requires_gpu") is None:
        yield
        return
    reason = _no_gpu_reason()
    if reason:
        pytest.skip(reason)
    import jax

    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def decoder_tokenizer():
    """The tiny word-level decoder tokenizer (tests.helpers.tokenizers)."""
    from tests.helpers.tokenizers import make_decoder_tokenizer

    return make_decoder_tokenizer()


@pytest.fixture(scope="session")
def hh_rows():
    """The 2,048 HH-RLHF harmless rows shipped in the package."""
    from tests.helpers.data import read_hh_rows

    return read_hh_rows()


@pytest.fixture(scope="session")
def minilm_dir():
    """The fetched all-MiniLM-L6-v2 directory; skips without it (fails under JAXRLHF_REQUIRE_ASSETS=1).
    Mark the tests that use it `real_model`."""
    from tests.helpers.assets import require_asset

    return require_asset("minilm")


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_dir):
    """The real all-MiniLM-L6-v2 BERT WordPiece tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)
