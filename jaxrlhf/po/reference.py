"""The frozen reference's log-probs, cached: one forward pass over the data before training instead of one
in every step, saved in the workdir so a resumed run reads them back instead of recomputing.

The file holds, per data part (train, held out) and per sequence group, the summed response log-prob of
every sequence, with a fingerprint of what produced them (the reference, its compute dtype, the token ids
and response lengths); a file whose fingerprint differs is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import jax
import numpy as np

from jaxrlhf.infra.multihost import to_global, to_host
from jaxrlhf.infra.runtime import progress

MODES = ("auto", "cached", "online")
FILE = "reference_logps.npz"


def use_cache(mode: str, total_steps: int, steps_per_epoch: int, reference_free: bool) -> bool:
    """auto: cached when the run sees every training row at least once (else most of the pass is wasted)."""
    if mode not in MODES:
        raise ValueError(f"loss.reference_logps must be one of {MODES}, got {mode!r}")
    if reference_free:
        return False
    return mode == "cached" or (mode == "auto" and total_steps >= steps_per_epoch)


def fingerprint(parts: dict, reference: str, dtype: str) -> str:
    """sha256 over the reference's name and dtype and every encoded sequence of every data part."""
    h = hashlib.sha256(f"{reference}|{dtype}".encode())
    for name in sorted(parts):
        for enc in _encodings(parts[name]):
            for arr in (enc.ids, enc.offsets, enc.response_len):
                h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _encodings(data):
    for field in ("chosen", "rejected", "seqs", "kl"):
        if hasattr(data, field):
            yield getattr(data, field)


def compute(batcher, ref_fn, mesh, desc: str) -> dict[str, np.ndarray]:
    """Every output of `ref_fn(global batch) -> {group: logp}` over one fixed-order pass of `batcher`,
    placed at the rows (or list slots) `batcher.scored_index` names."""
    plan = batcher.plan(0)
    out: dict[str, np.ndarray] = {}
    bar = progress(len(plan), desc=desc)
    for step in range(len(plan)):
        logps = ref_fn(to_global(batcher.batch(0, step), mesh))
        bar.update(1)
        rows = plan[step]
        real = rows >= 0
        for group, index in batcher.scored_index(np.where(real, rows, rows[0])).items():
            values = to_host(logps[group])
            keep = (index >= 0) & (real if index.ndim == 1 else real[:, None])
            store = out.setdefault(group, np.full(_size(batcher.data, group), np.nan, np.float32))
            store[index[keep]] = values[keep]
    bar.close()
    return out


def _size(data, group: str) -> int:
    enc = data.seqs if group == "seqs" else getattr(data, group)
    return len(enc)


def load_or_compute(workdir: Path, parts: dict, batchers: dict, ref_fn, mesh, key: str) -> dict[str, dict]:
    """{part: {group: logps}} for every part, read from `workdir/FILE` when its fingerprint is `key`,
    else computed (and written by process 0)."""
    path = workdir / FILE
    if path.is_file():
        try:
            with np.load(path) as f:
                if str(f["fingerprint"]) == key:
                    print(f"reference log-probs: read from {path}")
                    return {p: {k.split("/", 1)[1]: f[k] for k in f.files if k.startswith(p + "/")} for p in parts}
        except (OSError, ValueError, KeyError) as e:
            print(f"reference log-probs: {path} unreadable ({e}); recomputing")
    result = {p: compute(batchers[p], ref_fn, mesh, f"reference log-probs ({p})") for p in parts}
    missing = [f"{p}/{g}" for p, groups in result.items() for g, v in groups.items() if np.isnan(v).any()]
    if missing:
        raise RuntimeError(f"reference log-probs: rows left unscored in {missing} (a batching bug)")
    if jax.process_index() == 0:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, fingerprint=np.asarray(key),
                 **{f"{p}/{g}": v for p, groups in result.items() for g, v in groups.items()})
        tmp.replace(path)
    return result
