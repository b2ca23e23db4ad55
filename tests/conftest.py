"""Every test writes Hugging Face caches into a temporary folder, never into ~/.cache.

Set at import, before any test module imports `datasets` (which reads these variables once).
"""

import os
import tempfile

_root = tempfile.mkdtemp(prefix="jaxrlhf-tests-hf-")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_root, "datasets")
os.environ["HF_HOME"] = os.path.join(_root, "home")
