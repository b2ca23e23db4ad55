"""Every test writes Hugging Face caches into a temporary folder, never into ~/.cache."""

import os
import tempfile

import pytest


@pytest.fixture(autouse=True, scope="session")
def _hf_caches_in_tmp():
    root = tempfile.mkdtemp(prefix="jaxrlhf-tests-hf-")
    old = {k: os.environ.get(k) for k in ("HF_DATASETS_CACHE", "HF_HOME")}
    os.environ["HF_DATASETS_CACHE"] = os.path.join(root, "datasets")
    os.environ["HF_HOME"] = os.path.join(root, "home")
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
