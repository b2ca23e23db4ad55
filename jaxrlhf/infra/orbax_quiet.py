"""Keeps the tracebacks of Orbax's background writers off stderr when a save or restore fails: the failure
they describe is raised once, from the main thread, by `infra.checkpoint.Checkpointer`.
JAXRLHF_TRACEBACK=1 leaves them on.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

import orbax.checkpoint as ocp


class _OrbaxErrors(logging.Filter):
    """Holds back Orbax's error records (each a traceback from a writer thread) and asyncio's "Event loop
    is closed" reports: the failure they describe is raised once from the main thread instead."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []
        self.orbax = os.path.dirname(os.path.dirname(ocp.__file__)) + os.sep  # .../site-packages/orbax/

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage() + str(record.exc_info[1] if record.exc_info else "")
        if "Event loop is closed" in text:
            return False
        if record.name == "asyncio" and (self.orbax in text or _raised_in_orbax(record.exc_info)):
            return False  # "Task/_GatheringFuture exception was never retrieved": an Orbax read abandoned
            # when a restore fell over, or the writes of a save that did
        if record.levelno >= logging.ERROR and record.pathname.startswith(self.orbax):
            self.messages.append(record.getMessage().splitlines()[0][:300] if record.getMessage() else "")
            return False
        return True

    def take(self) -> list[str]:
        out, self.messages = self.messages, []
        return out


HELD_BACK = _OrbaxErrors()
_QUIET_LOCK = threading.Lock()
_quiet_installed = False


def quiet_background_errors() -> None:
    global _quiet_installed
    with _QUIET_LOCK:
        if _quiet_installed or os.environ.get("JAXRLHF_TRACEBACK"):
            return
        _quiet_installed = True
        for name in ("absl", "asyncio"):
            logging.getLogger(name).addFilter(HELD_BACK)
        hook = sys.unraisablehook

        def unraisable(info):
            if not _after_failed_io(info):
                hook(info)

        sys.unraisablehook = unraisable


def _after_failed_io(info) -> bool:
    """An exception Python could not raise, left by a save or restore that failed and was reported: a
    tensorstore callback into the closed event loop of a failed save, or an Orbax read abandoned when a
    restore fell over (collected later as an un-awaited coroutine)."""
    if isinstance(info.exc_value, RuntimeError) and "Event loop is closed" in str(info.exc_value):
        return True
    code = getattr(info.object, "cr_code", None)
    if code is not None and code.co_filename.startswith(HELD_BACK.orbax):
        return True
    return _raised_in_orbax((None, None, info.exc_traceback))


def _raised_in_orbax(exc_info) -> bool:
    """Whether a frame of the traceback in `exc_info` (type, value, traceback) is Orbax's code."""
    tb = exc_info[2] if exc_info else None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename.startswith(HELD_BACK.orbax):
            return True
        tb = tb.tb_next
    return False
