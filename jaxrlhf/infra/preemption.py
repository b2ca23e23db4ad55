"""Stop requests: SIGTERM (TPU VMs send it before preemption), Ctrl-C (SIGINT), or a configured step count.

The first signal only sets a flag: the loop finishes the step in flight, saves a checkpoint and returns, so
a rerun resumes where it stopped. A second Ctrl-C raises KeyboardInterrupt at once (the command-line
entry points turn it into one line and exit code 130; a notebook gets its usual interrupt).
"""

from __future__ import annotations

import signal
import sys
import threading

_requested = threading.Event()


def _on_signal(signum, frame):
    del frame
    if signum == signal.SIGINT and _requested.is_set():
        raise KeyboardInterrupt
    if not _requested.is_set():
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after the step in flight and saving a checkpoint"
              f"{' (Ctrl-C again quits at once)' if signum == signal.SIGINT else ''}", file=sys.stderr, flush=True)
    _requested.set()


def install_handlers() -> None:
    """SIGTERM and SIGINT request a stop (only the main thread may install signal handlers)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_signal)
        signal.signal(signal.SIGINT, _on_signal)


def request(reason: str) -> None:
    """A stop asked for by the run itself (a guardrail), said on stderr: saved and stopped like a SIGTERM."""
    if not _requested.is_set():
        print(f"\n{reason}: stopping after this step and saving a checkpoint", file=sys.stderr, flush=True)
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
    """Forgets an earlier request: a new run in the same process (a notebook) starts unstopped."""
    _requested.clear()
