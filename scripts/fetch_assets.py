"""Fetches the offline model assets: same as `python -m jaxrlhf.assets fetch [minilm] [smollm2]`."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from jaxrlhf.assets import main  # noqa: E402

sys.exit(main(["fetch", *sys.argv[1:]]))
