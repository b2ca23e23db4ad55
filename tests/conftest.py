"""Every test writes Hugging Face caches into a temporary folder, never into the user's cache; and the
fixtures several test modules share (helper functions are in tests/helpers/).

The variables are set at import, before any test module imports `datasets` (which reads them once).
"""

import os
import tempfile

import pytest

_root = tempfile.mkdtemp(prefix="jaxrlhf-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_root, "datasets")
os.environ["HF_HOME"] = os.path.join(_root, "home")


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
