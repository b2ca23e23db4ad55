"""A resumed run must be the run that was checkpointed.

Resuming a workdir whose `run_config.json` says another model, data, batch size, objective, schedule or
train mode would silently mix two runs. Only keys that change how a run is watched, saved or placed (the
cadence, the mesh, evaluation batch sizes, export) may differ; any other difference refuses with one line
listing each key with its old and new values. `train.allow_config_change=True` accepts the change.
"""

from __future__ import annotations

import json
from pathlib import Path

from jaxrlhf.infra.precision import DTYPES, compute_dtype

# Dotted keys (or block prefixes ending in ".") that may change between a run and its resume.
MAY_CHANGE = (
    "workdir", "compilation_cache_dir",
    "mesh.", "distributed.",          # a checkpoint restores onto any mesh
    "train.log_every", "train.eval_every", "train.eval_at_start", "train.checkpoint_every",
    "train.keep_checkpoints", "train.resume", "train.allow_config_change", "train.stop_after",
    "train.export", "train.histogram", "train.stats_pairs", "train.sample_every", "train.samples_shown",
    "train.on_nonfinite", "train.profile_steps",
    "data.eval_batch_size", "eval.",
    "model.remat", "policy.remat", "critic.remat",  # memory, not maths
    "loss.reference_logps",           # where the reference's log-probs come from, not what they are
)


def _flatten(tree, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _may_change(key: str) -> bool:
    return any(key.startswith(k) if k.endswith(".") else key == k for k in MAY_CHANGE)


def changed_keys(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(key, old value, new value) for each key that differs and is not in `MAY_CHANGE`. A key that one
    side lacks (a config from before it existed) counts only when the other side is not its default."""
    a, b = _flatten(old), _flatten(new)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key, missing), b.get(key, missing)
        if va is missing or vb is missing or _may_change(key):
            continue
        if isinstance(va, (list, tuple)) and isinstance(vb, (list, tuple)):
            va, vb = list(va), list(vb)
        if va != vb and not (key.endswith(".dtype") and _same_compute_dtype(va, vb)):
            out.append((key, va, vb))
    return out


def _same_compute_dtype(a, b) -> bool:
    """`auto` and the dtype it stands for on this backend are the same run (a run from before `auto`)."""
    names = ("auto", *DTYPES)
    return a in names and b in names and compute_dtype(a) == compute_dtype(b)


def check_resume(config, workdir: Path) -> None:
    """Raises ValueError when `workdir` holds a run whose config differs from `config` in what the run is."""
    saved, checkpoints = workdir / "run_config.json", workdir / "checkpoints"
    resuming = config.train.resume and saved.is_file() and checkpoints.is_dir() and any(checkpoints.iterdir())
    if not resuming or config.train.get("allow_config_change", False):
        return
    try:
        old = json.loads(saved.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{saved}: unreadable ({e}); delete it to resume with this config, or start fresh "
                         "with train.resume=False or another workdir") from None
    new = json.loads(config.to_json_best_effort())
    diffs = changed_keys(old, new)
    if not diffs:
        return
    shown = "; ".join(f"{k}: {v_old!r} -> {v_new!r}" for k, v_old, v_new in diffs[:8])
    more = f" and {len(diffs) - 8} more" if len(diffs) > 8 else ""
    raise ValueError(f"{workdir} holds a run with another config ({shown}{more}): refusing to resume it; start "
                     "fresh with another workdir or train.resume=False, or accept the change with "
                     "train.allow_config_change=True")
