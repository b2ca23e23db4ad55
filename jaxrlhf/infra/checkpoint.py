"""Orbax checkpoints of a training state plus a small JSON of host-side progress.

Orbax writes each step into a temporary folder and renames it when complete, so a run killed in the
middle of a save restarts from the last complete step. Restoring takes an abstract target whose
shardings say where each array goes, which also reshards onto a different mesh.

A step folder can still be damaged after the rename: a partial copy from a bucket, a truncated file, a
disk error. Before restoring, `checkpoint_damage.find_damage` checks a step cheaply, and a restore that
still fails is caught too: the newest step that restores is used, with one line naming the ones skipped.

Saves run in the background. A save that fails (disk full, quota, permissions) is raised once, from the
main thread, as one `CheckpointWriteError` naming the step and the file, at the next save, `wait` or
`close`; Orbax's own tracebacks from its writer threads stay off stderr (JAXRLHF_TRACEBACK=1 shows them).
"""

from __future__ import annotations

import os
import re
import sys
import weakref
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxrlhf.infra.checkpoint_damage import find_damage, short_message
from jaxrlhf.infra.orbax_quiet import HELD_BACK, quiet_background_errors

_OPEN: weakref.WeakSet[Checkpointer] = weakref.WeakSet()
# How tensorstore words a failed write (the OS's errno travels as os_error_code).
_IO_FAILURE = re.compile(r"os_error_code|RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAVAILABLE|Failed writing|"
                         r"Error writing")


def finish_pending_saves() -> None:
    """Completes every in-flight asynchronous save. Called before a program ends on an error: Orbax's
    background writer otherwise dies with the interpreter (a half-written, never-restored folder) and
    prints its own traceback over the one-line message."""
    for ckpt in list(_OPEN):
        try:
            ckpt.close()
        except Exception:  # noqa: BLE001 (already closed, or the error being reported came from here)
            pass


class CheckpointWriteError(OSError):
    """A checkpoint save that failed; the message is one line naming the step, the file and the cause."""


# ------------------------------------------------------------------------------------- checkpointer


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3, save_every: int = 1000):
        quiet_background_errors()
        _OPEN.add(self)
        self.save_every = save_every
        self.directory = Path(os.path.abspath(directory))
        self._pending: int | None = None  # the step saving in the background
        self._closed = False
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def should_save(self, step: int) -> bool:
        return self.save_every > 0 and step % self.save_every == 0

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Saves `state` (a pytree of arrays) and `meta` (JSON: data position, metrics) at `step`."""
        self._finish_pending()  # a failure of the previous save is reported as that step's
        HELD_BACK.take()
        try:
            self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                             meta=ocp.args.JsonSave(meta)), force=True)
        except Exception as e:  # noqa: BLE001 (Orbax and tensorstore raise ValueError, OSError and others)
            if not (isinstance(e, OSError) or _IO_FAILURE.search(str(e))):
                raise  # not the disk's doing (a step saved twice, a bug): as it is
            raise self._write_error(step, e) from None
        self._pending = step

    def restore(self, abstract_state: Any, step: int | None = None, *,
                set_aside_damaged: bool = False) -> tuple[Any, dict, int]:
        """Restores onto the shardings of `abstract_state` (arrays or ShapeDtypeStructs with .sharding).

        Without `step`, the newest step that is intact and restores; damaged newer ones are named in one
        line and, with `set_aside_damaged` (a run that goes on to save those step numbers again), moved
        to `<directory>.damaged/`.
        """
        target = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)

        def one(s):
            out = self._manager.restore(s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target),
                                                                   meta=ocp.args.JsonRestore()))
            return out.state, dict(out.meta)

        return self._newest_restorable(one, step, "resuming from", set_aside_damaged,
                                       "move the folder away (or set train.resume=False) to start fresh")

    def restore_params(self, abstract_params: Any, step: int | None = None) -> tuple[Any, dict, int]:
        """Restores only `state["params"]` (e.g. for evaluation), leaving the optimiser state on disk."""
        target = {"params": jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_params)}

        def one(s):
            out = self._manager.restore(s, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item=target, partial_restore=True), meta=ocp.args.JsonRestore()))
            return out.state["params"], dict(out.meta)

        return self._newest_restorable(one, step, "using", False, "copy the checkpoints again, or train anew")

    def wait(self) -> None:
        self._finish_pending()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._finish_pending()
        finally:
            try:
                self._manager.close()
            except Exception:  # noqa: BLE001 (the failed save was reported above)
                pass

    # --------------------------------------------------------------------------------------- inside

    def _newest_restorable(self, restore_one, step: int | None, verb: str, set_aside: bool, hint: str):
        self._finish_pending()
        steps = [step] if step is not None else sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint to restore in {self.directory}")
        from jaxrlhf.infra.multihost import any_process

        damaged: list[tuple[int, str]] = []
        HELD_BACK.take()
        for s in steps:  # every process takes the same path: a step is skipped where any process fails it
            problem = find_damage(self.directory / str(s))
            if any_process(problem is not None) and problem is None:
                problem = "damaged as another process reads it"
            if problem is None:
                try:
                    state, meta = restore_one(s)
                except Exception as e:  # noqa: BLE001 (a read that falls over mid-way: try the next step)
                    problem = f"restoring it failed: {short_message(e)}"
                HELD_BACK.take()  # Orbax's own report of that failure
                if any_process(problem is not None) and problem is None:
                    problem = "restoring it failed on another process"
            if problem is not None:
                damaged.append((s, problem))
                continue
            if damaged:
                moved = self._set_aside([d for d, _ in damaged]) if set_aside else None
                if jax.process_index() == 0:
                    what = "; ".join(f"checkpoint step {d} ({self.directory / str(d)}) is incomplete or corrupt "
                                     f"({p})" for d, p in damaged)
                    print(f"warning: {what}: {verb} step {s}" + (f" (moved the damaged to {moved})" if moved else ""),
                          file=sys.stderr, flush=True)
            return state, meta, s
        listed = "; ".join(f"step {d} ({self.directory / str(d)}: {p})" for d, p in damaged)
        if step is not None:
            raise ValueError(f"checkpoint {listed} is incomplete or corrupt")
        raise ValueError(f"no intact checkpoint in {self.directory}: {listed}; {hint}")

    def _set_aside(self, steps: list[int]) -> Path:
        """Moves damaged step folders out of Orbax's sight, so the run can save those steps again and
        keep-the-newest never deletes the good ones in their favour."""
        aside = self.directory.with_name(self.directory.name + ".damaged")
        if jax.process_index() == 0:
            aside.mkdir(exist_ok=True)
            for s in steps:
                dest, n = aside / str(s), 1
                while dest.exists():
                    dest, n = aside / f"{s}.{n}", n + 1
                (self.directory / str(s)).rename(dest)
        from jaxrlhf.infra.multihost import barrier

        barrier("checkpoint_set_aside")
        self._manager.reload()
        return aside

    def _finish_pending(self) -> None:
        step, self._pending = self._pending, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._write_error(step, e) from None
        held_back = HELD_BACK.take()
        if step is None or not held_back:
            return
        if not (self.directory / str(step)).is_dir():  # Orbax logged the failure but raised nothing
            raise self._write_error(step, RuntimeError(held_back[0]))
        if jax.process_index() == 0:  # the save completed; say what Orbax complained of
            print(f"warning: checkpoint step {step}: {held_back[0]}", file=sys.stderr, flush=True)

    def _write_error(self, step: int | None, e: BaseException) -> CheckpointWriteError:
        text = short_message(e, limit=100_000)
        code = re.search(r"os_error_code='?(\d+)", text)
        errno_ = int(code.group(1)) if code else getattr(e, "errno", None)
        cause = os.strerror(errno_) if errno_ else text[:200]
        files = re.findall(r'"(/[^"]+)"', text) or ([e.filename] if getattr(e, "filename", None) else [])
        where = ""
        if files:
            path = Path(files[-1])
            where = f" (writing {path.relative_to(self.directory) if path.is_relative_to(self.directory) else path})"
        previous = [s for s in self._manager.all_steps() if s != step]
        last = (f"the last complete checkpoint is step {max(previous)}" if previous
                else "no complete checkpoint yet")
        err = CheckpointWriteError(f"checkpoint step {step} could not be saved in {self.directory}: {cause}{where}; "
                                   f"{last}: free space (or fix permissions) and rerun to resume")
        err.errno = errno_
        return err
