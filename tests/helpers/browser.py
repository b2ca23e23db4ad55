"""Real-browser tests of the annotation app: the system Chromium driven by Playwright, and the app served in-thread.

- `chromium_path()`: Debian's `chromium` (Playwright's own browser download is never used); without it the
  test skips naming `bash scripts/install_browser.sh`, and fails instead under JAXRLHF_REQUIRE_ASSETS=1, as
  the real-model tests do (tests/helpers/assets.py), so CI cannot pass by skipping the browser tests.
- `serve_app(store)`: `jaxrlhf.feedback.app.create_app(store)` under uvicorn in a daemon thread on a free
  127.0.0.1 port, yielding the base URL; the server is stopped on exit.
- `chromium_browser()`: a headless Playwright Chromium launched on `chromium_path()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time

import pytest

from tests.helpers.assets import REQUIRE_ENV

INSTALL_HINT = "bash scripts/install_browser.sh"
_NAMES = ("chromium", "chromium-browser")  # Debian's package, and the name some other distributions use


def chromium_path() -> str:
    """The system Chromium's path; skips the test without it (fails under JAXRLHF_REQUIRE_ASSETS=1)."""
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    message = f"needs the system Chromium (Debian package `chromium`), not found on PATH: run `{INSTALL_HINT}`"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: a missing browser fails the test instead of skipping it)",
                    pytrace=False)
    pytest.skip(message)


@contextlib.contextmanager
def serve_app(store, start_timeout_s: float = 30.0, **app_kwargs):
    """Serves the annotation app over `store` on 127.0.0.1; yields its base URL ("http://127.0.0.1:PORT")."""
    import uvicorn

    from jaxrlhf.feedback.app import create_app

    # The socket is bound here and handed to uvicorn, so no other process can take the port in between.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(store, **app_kwargs), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"annotation-server-{port}")
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the annotation server on port {port} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), f"the annotation server on port {port} did not stop"


@contextlib.contextmanager
def chromium_browser(headless: bool = True):
    """A Playwright `Browser` on the system Chromium (skips without Chromium, see `chromium_path`)."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, headless=headless)
        try:
            yield browser
        finally:
            browser.close()
