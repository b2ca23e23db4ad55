"""Orbax checkpoints of a training state plus a small JSON of host-side progress.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed in the
middle of a save restarts from the last complete step. Restoring takes an abstract target whose
shardings say where each array goes, which also reshards onto a different mesh.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import jax
import orbax.checkpoint as ocp

_OPEN: weakref.WeakSet[Checkpointer] = weakref.WeakSet()


def finish_pending_saves() -> None:
    """Completes every in-flight asynchronous save. Called before a program ends on an error: Orbax's
    background writer otherwise dies with the interpreter (a half-written, never-restored folder) and
    prints its own traceback over the one-line message."""
    for ckpt in list(_OPEN):
        try:
            ckpt.close()
        except Exception:  # noqa: BLE001 (already closed, or the error being reported came from here)
            pass


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, save_every: int = 1000):
        _OPEN.add(self)
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON: data position, metrics) at `step`."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores onto the shardings of `abstract_state` (arrays or ShapeDtypeStructs with .sharding)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("no checkpoint to restore")
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        out = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                  meta=ocp.args.JsonRestore()))
        return out.state, dict(out.meta), step

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores only `state["params"]` (e.g. for evaluation), leaving the optimiser state on disk."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError("no checkpoint to restore")
        target = {"params": jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_params)}
        out = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=target, partial_restore=True), meta=ocp.args.JsonRestore()))
        return out.state["params"], dict(out.meta), step

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
