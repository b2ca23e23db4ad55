"""Stop requests: SIGTERM (TPU VMs send it before preemption) or a configured step count.

The trainer polls `should_stop()` after each step; when set, it saves a checkpoint and returns, so a
restart resumes where it left off.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _on_sigterm(signum, frame):
    del signum, frame
    _requested.set()


def install_sigterm_handler() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def request_stop() -> None:
    _requested.set()


def should_stop() -> bool:
    return _requested.is_set()


def should_stop_everywhere(step: int, every: int) -> bool:
    """`should_stop()` agreed by all processes, so they stop (and save) at the same step.

    One process looks every step. Several take a vote every `every` steps (a collective, so it must be
    the same steps on all); a SIGTERM that reaches only some hosts then stops them all.
    """
    import jax

    if jax.process_count() == 1:
        return should_stop()
    if step % max(every, 1):
        return False
    from jaxrlhf.infra.multihost import any_process

    return any_process(should_stop())


def clear() -> None:
    _requested.clear()
