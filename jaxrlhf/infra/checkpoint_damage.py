"""Is a saved checkpoint step intact? A cheap check before restoring it.

Every JSON metadata file parses; the OCDBT manifest and B+tree nodes of the `state` item decode (with their
checksums); every array value they point to lies within an existing file. Array bytes themselves are not
read: a restore that still fails is caught by the caller (`infra.checkpoint.Checkpointer`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_JSON_FILES = ("_CHECKPOINT_METADATA", "meta/metadata", "state/_METADATA", "state/_sharding")


def find_damage(step_dir: str | os.PathLike) -> str | None:
    """None when the step folder looks complete, else what is wrong with it, naming the file.

    Reads only metadata: the JSON files, and the OCDBT manifest and tree nodes (small, checksummed); the
    array values are only checked to lie inside files that exist, not read.
    """
    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return f"{step_dir} is missing"
    if not (step_dir / "meta/metadata").is_file():
        return "meta/metadata is missing"
    metadata = {}
    for name in [*_JSON_FILES, *sorted(p.relative_to(step_dir).as_posix()
                                       for p in (step_dir / "state/array_metadatas").glob("*"))]:
        path = step_dir / name
        if not path.is_file():
            continue  # Orbax restores without these; meta/metadata was required above
        try:
            metadata[name] = json.loads(path.read_bytes())
        except (ValueError, OSError) as e:
            return f"{name} is {'unreadable' if isinstance(e, OSError) else 'not valid JSON (truncated?)'}"
    state = step_dir / "state"
    if not state.is_dir():
        return "state/ is missing"
    tree = metadata.get("state/_METADATA")
    if not isinstance(tree, dict) or tree.get("use_ocdbt", True):
        return _ocdbt_damage(state)
    return None


def _ocdbt_damage(state: Path) -> str | None:
    import tensorstore as ts

    if not (state / "manifest.ocdbt").is_file():
        return "state/manifest.ocdbt is missing"
    base = ts.KvStore.open({"driver": "file", "path": str(state) + "/"}).result()
    try:
        manifest = ts.ocdbt.dump(base).result()
    except Exception as e:  # noqa: BLE001 (tensorstore raises ValueError and others)
        return f"state/manifest.ocdbt cannot be read ({short_message(e)})"
    versions = manifest.get("versions") or []
    if not versions:  # a long history kept in version-tree nodes: not ours; the restore decides
        return None
    pending = [versions[-1].get("root", {}).get("location")]
    sizes: dict[Path, int | None] = {}
    while pending:
        location = pending.pop()
        if not location:
            continue
        try:
            node = ts.ocdbt.dump(base, location).result()
        except Exception as e:  # noqa: BLE001
            return f"state/{location.split(':')[2]} cannot be read ({short_message(e)})"
        for entry in node.get("entries", []):
            if isinstance(entry.get("location"), str):
                pending.append(entry["location"])
            if isinstance(entry.get("indirect_value"), str):
                try:
                    rel, end = _location(entry["indirect_value"])
                except ValueError:  # a layout this check does not know: the restore decides
                    continue
                path = state / rel
                if path not in sizes:
                    sizes[path] = path.stat().st_size if path.is_file() else None
                if sizes[path] is None:
                    return f"state/{rel} is missing"
                if sizes[path] < end:
                    return f"state/{rel} is truncated ({sizes[path]} of at least {end} bytes)"
    return None


def _location(location: str) -> tuple[str, int]:
    """'value:<base path>:<relative path>:<offset>:<length>' -> (the file's path, the end of the range)."""
    kind_and_file, offset, length = location.rsplit(":", 2)
    _, base, rel = kind_and_file.split(":", 2)
    return base + rel, int(offset) + int(length)


def short_message(e: BaseException, limit: int = 300) -> str:
    """Tensorstore's message without the JSON spec it appends, on one line."""
    while e.__cause__ is not None and "See full TensorStore details" in str(e):
        e = e.__cause__
    text = " ".join(str(e).split())
    text = re.split(r" \[tensorstore_spec|See full TensorStore details", text)[0].strip()
    return (text or type(e).__name__)[:limit]
