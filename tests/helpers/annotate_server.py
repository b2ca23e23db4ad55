"""`python -m jaxrlhf.annotate serve` as a subprocess on 127.0.0.1, for tests that need the real server
(uvicorn, a separate process that can be killed): started on a free port, ready once GET /login answers 200.

    with AnnotateServer(db, tasks, per_item=3) as server:
        Client(server.url, token).next()
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.helpers import REPO_ROOT
from tests.helpers.processes import cpu_env, free_port


class AnnotateServer:
    def __init__(self, db: str | Path, tasks: list[str | Path] = (), per_item: int = 3, port: int | None = None,
                 extra: tuple[str, ...] = (), log: str | Path | None = None):
        self.db, self.tasks, self.per_item, self.extra = str(db), [str(t) for t in tasks], per_item, extra
        self.port = port or free_port()
        self.log = Path(log) if log else Path(str(self.db) + ".server.log")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        tasks = [f"--tasks={','.join(self.tasks)}"] if self.tasks else []
        return [sys.executable, "-m", "jaxrlhf.annotate", "serve", f"--db={self.db}", *tasks,
                f"--per_item={self.per_item}", f"--port={self.port}", *self.extra]

    def start(self, timeout: float = 60.0) -> AnnotateServer:
        """Starts the server and waits until it answers; fails with the end of its log if it exits first."""
        assert self.process is None or self.process.poll() is not None, "already running"
        with open(self.log, "ab") as log:  # appends: a restarted server's log follows the first one's
            self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=cpu_env(), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the annotation server exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/login", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the annotation server did not answer in {timeout} s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (uvicorn shuts down cleanly), SIGKILL if it takes longer than `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int | None:
        """SIGKILL: the process dies at once, mid-request, with no shutdown of any kind."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        os.kill(self.process.pid, signal.SIGKILL)
        return self.process.wait(30)

    def __enter__(self) -> AnnotateServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
