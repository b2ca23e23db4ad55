"""One run per workdir: a lock file naming its owner, so a second run refuses instead of both writing
checkpoints into the same folder.

`<workdir>/.lock` holds the owner's host, pid and start time. A lock whose process is gone (same host, pid
not running, as after a kill) is stale and taken over; a lock from another host cannot be checked from
here, so the message says how to remove it. The owner's process releases it at exit.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"
_held: set[Path] = set()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def acquire(workdir: Path) -> None:
    """Takes the workdir's lock for this process (again, if it already holds it); raises ValueError when
    another live run holds it."""
    path = workdir / LOCK_NAME
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):  # a stale lock is removed once, then taken like a free one
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _read(path)
            if owner.get("host") == me["host"] and owner.get("pid") == me["pid"]:
                _held.add(path)
                return
            if owner.get("host") == me["host"] and isinstance(owner.get("pid"), int) and not _alive(owner["pid"]):
                print(f"{path}: stale lock of pid {owner['pid']} (no longer running), taken over")
                path.unlink(missing_ok=True)
                continue
            if not owner:  # unreadable: a crash while writing it, or not ours
                raise ValueError(f"{path}: unreadable lock file; if no run uses {workdir}, delete it "
                                 "and rerun") from None
            raise ValueError(f"{workdir} is in use by another run (pid {owner.get('pid')} on {owner.get('host')}, "
                             f"since {owner.get('started', '?')}); wait for it, use another workdir, or delete "
                             f"{path} if that run is gone") from None
        with os.fdopen(fd, "w") as f:
            json.dump(dict(me, started=time.strftime("%Y-%m-%d %H:%M:%S")), f)
        _held.add(path)
        return
    raise ValueError(f"{path}: could not take the lock")


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def release(workdir: Path) -> None:
    path = workdir / LOCK_NAME
    if path in _held:
        _held.discard(path)
        owner = _read(path)
        if owner.get("pid") == os.getpid():
            path.unlink(missing_ok=True)


@atexit.register
def _release_all() -> None:
    for path in list(_held):
        release(path.parent)
